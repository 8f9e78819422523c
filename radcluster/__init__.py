"""radcluster: cohort-scale radiomics on Dask.

Scans and masks in; a Parquet/Zarr feature store and trained models out. What a notebook
needs is here, imported on first use (importing radcluster stays cheap for the CLI's
``--help`` and for a worker unpickling a task)::

    import radcluster
    job = radcluster.load_job("jobs/extract.yaml")   # validated before anything starts
    radcluster.run_job(job)                          # extract, train, predict or retrain
    store = radcluster.open_store("store/")          # features(), matrix(), failures()
    version = radcluster.open_version("models/<version>")
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {
    "open_store": "store",
    "load_job": "spec",
    "build_job": "spec",
    "run_job": "jobs",
    "dry_run": "jobs",
    "read_manifest": "cohort",
    "check_cohort": "cohort.check",
    "extract_scan": "extract",
    "train_store": "jobs.train",
    "predict_store": "jobs.predict",
    "open_version": "registry.versions",
    "list_versions": "registry.versions",
    "read_champion": "registry.champion",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'radcluster' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
