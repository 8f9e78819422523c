"""radcluster: cohort-scale radiomics on Dask.

Scans and masks in; a Parquet/Zarr feature store and trained models out. The public entry
points are :func:`open_store` (read what a run wrote) and the ``radcluster`` command.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "open_store"]


def __getattr__(name: str):
    # Importing radcluster must stay cheap (the CLI's --help, a worker's unpickling);
    # the store pulls in pyarrow and zarr only when asked for.
    if name == "open_store":
        from .store import open_store

        return open_store
    raise AttributeError(f"module 'radcluster' has no attribute {name!r}")
