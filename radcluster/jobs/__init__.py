"""One runner per job kind: extract, train, predict, retrain; each takes a validated job spec."""
