"""numpy or dask: the small helpers every learner shares for taking either."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import ModelError


def array_module(X):
    """``dask.array`` for a dask array, else ``numpy``: code written once serves both."""
    import dask.array as da

    return da if isinstance(X, da.Array) else np


def as_dask(X):
    """``X`` as a float dask array (a dask array passes unchanged)."""
    import dask.array as da

    return X if isinstance(X, da.Array) else da.from_array(np.asarray(X, dtype=float))


def blockwise(X, fn: Callable[[np.ndarray], np.ndarray], n_out: int | None):
    """``fn`` applied to every row block of ``X``: (n,) when ``n_out`` is None, else (n, n_out)."""
    X = as_dask(X).rechunk({1: -1})
    if n_out is None:
        return X.map_blocks(fn, drop_axis=1, dtype=float, meta=np.empty((0,), float))
    return X.map_blocks(fn, chunks=(X.chunks[0], (n_out,)), dtype=float, meta=np.empty((0, 0), float))


def gather(X, *, model: str, max_mb: float) -> np.ndarray:
    """``X`` (numpy or dask) as one float array in this process, for a model fitted in memory;
    a :class:`ModelError` naming the ways out when it would be larger than ``max_mb``."""
    X = as_dask(X)
    mb = X.shape[0] * X.shape[1] * 8 / 2**20
    if mb > max_mb:
        raise ModelError(
            f"model {model!r} is fitted in one process on the gathered matrix, which would be "
            f"{mb:.0f} MB (max_gather_mb={max_mb:g}): reduce it with preprocess.pca or select, "
            "raise max_gather_mb, or use model 'xgboost'"
        )
    return np.asarray(X.compute(), dtype=float)
