"""Learning on the store's feature matrix, on dask arrays without gathering it to the client.

- :mod:`.preprocess`: the :class:`~.preprocess.Preprocessor` fitted on training rows only;
- :mod:`.combat`: ComBat harmonisation of a batch (site) effect;
- :mod:`.models`: the model families, by name;
- :mod:`.cv`: grouped, stratified folds, cross-validation, final fit and evaluation;
- :mod:`.metrics`: ROC AUC, C-index, ... with patient-bootstrap intervals;
- :mod:`.dataset`: the training matrix and target from a store and a clinical table.
"""
