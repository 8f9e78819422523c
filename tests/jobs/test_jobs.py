"""The example job specs users copy, and the predict kind (with the registry's champion)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from _stores import matrix_store, planted

from radcluster.spec import load_job

JOBS = sorted((Path(__file__).parents[2] / "jobs").glob("*.yaml"))


def test_every_kind_has_an_example():
    assert {load_job(p).kind for p in JOBS} == {"extract", "train", "predict", "retrain"}


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_example_jobs_validate(path):
    job = load_job(path)
    assert job.store is not None
    if job.kind in ("train", "retrain"):
        assert job.train is not None and job.train.target


def test_predict_job_applies_the_champion(client, tmp_path):
    from radcluster.jobs.retrain import retrain_job
    from radcluster.spec import build_job

    X, columns = planted(80, 8, seed=2)
    store = matrix_store(tmp_path / "store", X, columns)
    retrain_job(
        build_job(
            {
                "kind": "retrain",
                "store": str(store),
                "registry": str(tmp_path / "models"),
                "train": {
                    "target": "outcome",
                    "model": "logistic_regression",
                    "cv": {"folds": 0},
                    "report": False,
                    "metrics": {"bootstrap": 0},
                },
            }
        ),
        client=client,
    )
    job = tmp_path / "predict.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "kind": "predict",
                "store": "store",
                "registry": "models",
                "predict": {"version": "champion", "output": "out/predictions.parquet"},
                "cluster": {"kind": "local", "workers": 1, "dashboard_address": ":0"},
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "radcluster.cli", "run", str(job)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    pred = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    champion = yaml.safe_load((tmp_path / "models" / "champion.json").read_text())
    assert len(pred) == 80 and set(pred["model_version"]) == {Path(champion["version"]).name}

    job.write_text(yaml.safe_dump({"kind": "predict", "store": "store", "registry": "empty-registry"}))
    proc = subprocess.run(
        [sys.executable, "-m", "radcluster.cli", "run", str(job)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "has no champion for predict.version 'champion'" in proc.stderr
