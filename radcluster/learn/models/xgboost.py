"""XGBoost through ``xgboost.dask``: binary, multiclass, regression and Cox survival, on the cluster.

Early stopping on a validation split; saved as XGBoost UBJSON.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from .._arrays import as_dask, blockwise
from . import ModelFamily, check_model, register

logger = logging.getLogger(__name__)

# Parameters radcluster sets itself from the task and the job (objective, metric, early stopping).
_RESERVED = (
    "objective",
    "eval_metric",
    "early_stopping_rounds",
    "callbacks",
    "enable_categorical",
    "feature_types",
    "missing",
    "importance_type",
    "device",
    "n_jobs",
)


class XGBoostModel(BaseEstimator):
    """Distributed XGBoost (``xgboost.dask``) for binary, multiclass, regression and Cox survival.

    Parameters
    ----------
    task : {'binary', 'multiclass', 'regression', 'survival'}
    params : dict, optional
        scikit-learn style XGBoost parameters (``n_estimators``, ``max_depth``, ...).
    early_stopping_rounds : int or None, default 20
        Stop when the validation loss has not improved for this many rounds (needs
        ``eval_set`` in :meth:`fit`); the saved booster keeps the best iteration only.
    random_state : int, default 0

    Attributes
    ----------
    booster_ : xgboost.Booster
    best_iteration_ : int or None
    n_classes_ : int
    importances_ : ndarray of shape (n_features,)
        Total gain of each input.
    """

    def __init__(
        self,
        *,
        task: str = "binary",
        params: dict[str, Any] | None = None,
        early_stopping_rounds: int | None = 20,
        random_state: int = 0,
    ):
        self.task = task
        self.params = params
        self.early_stopping_rounds = early_stopping_rounds
        self.random_state = random_state

    def fit(self, X, y: np.ndarray, *, eval_set: tuple[Any, np.ndarray] | None = None):
        """Fit on dask ``X``; ``y`` holds class indices, values, or signed times for survival
        (negative: censored, XGBoost's Cox convention)."""
        import dask.array as da
        import xgboost
        import xgboost.dask as dxgb
        from distributed import default_client

        params = dict(self.params or {})
        check_model("xgboost", self.task, params)
        params.setdefault("random_state", self.random_state)
        X = as_dask(X)
        if self.task == "survival":
            # The Cox partial likelihood compares each event with every row still at risk: on
            # row blocks spread over workers each would see only its own risk sets, so the
            # (reduced) matrix goes to one block. XGBoost cannot evaluate the Cox metric across
            # workers, so no validation set: n_estimators rounds are boosted.
            X = X.rechunk({0: -1})
            if eval_set is not None and self.early_stopping_rounds:
                logger.info("xgboost survival:cox: no early stopping (the Cox metric is not distributed)")
            eval_set = None
        stop = self.early_stopping_rounds if eval_set is not None else None
        y = np.asarray(y)
        client = default_client()  # the one xgboost.dask trains on
        evals = None
        if eval_set is None:
            yd = da.from_array(y, chunks=(X.chunks[0],))
        else:
            X, yd, Xv, yv = _colocated(client, X, y, as_dask(eval_set[0]), np.asarray(eval_set[1]))
            evals = [(Xv, yv)]
        if self.task in ("binary", "multiclass"):
            self.n_classes_ = int(y.max()) + 1
            metric = "logloss" if self.n_classes_ == 2 else "mlogloss"
            est = dxgb.DaskXGBClassifier(eval_metric=metric, early_stopping_rounds=stop, **params)
        else:
            self.n_classes_ = 0
            objective = "survival:cox" if self.task == "survival" else "reg:squarederror"
            metric = None if self.task == "survival" else "rmse"
            est = dxgb.DaskXGBRegressor(objective=objective, eval_metric=metric, early_stopping_rounds=stop, **params)
        client.run(_keep_native_output)
        # With tree_method hist (the default), the estimator bins the rows into a
        # DaskQuantileDMatrix, which keeps no float copy of them, and the validation rows by
        # the training's bins (its ``ref``); tests/learn/test_models.py holds it to that.
        # XGBoost's own warnings follow this logger: shown when the application logs INFO
        # (radcluster -v). xgboost.dask hands this configuration to the workers that train.
        try:
            with xgboost.config_context(verbosity=1 if logger.isEnabledFor(logging.INFO) else 0):
                est.fit(X, yd, eval_set=evals, verbose=False)
        finally:
            _log_native_output(client)
        booster = est.get_booster()
        best = getattr(est, "best_iteration", None) if stop else None
        if best is not None:
            booster = booster[: best + 1]
        self.best_iteration_ = best
        self._set_booster(booster, X.shape[1])
        return self

    def _set_booster(self, booster, n_features: int) -> None:
        booster.set_param({"nthread": 1})  # one thread per block: the scheduler gives the parallelism
        self.booster_ = booster
        gain = booster.get_score(importance_type="total_gain")
        imp = np.zeros(n_features)
        for key, value in gain.items():
            imp[int(key.lstrip("f"))] = value
        self.importances_ = imp / imp.sum() if imp.sum() > 0 else imp
        self.n_features_in_ = n_features

    def predict_scores(self, X):
        """Dask array: (n, K) class probabilities, or (n,) values / log-hazard risks."""
        booster = self.booster_
        if self.task in ("binary", "multiclass"):
            k = self.n_classes_

            def proba(block: np.ndarray) -> np.ndarray:
                out = booster.inplace_predict(block)
                return np.column_stack([1 - out, out]) if out.ndim == 1 else out

            return blockwise(X, proba, k)
        margin = self.task == "survival"
        return blockwise(X, lambda b: booster.inplace_predict(b, predict_type="margin" if margin else "value"), None)

    def save(self, folder: Path) -> dict[str, Any]:
        self.booster_.save_model(str(folder / "model.ubj"))
        return {
            "format": "xgboost-ubj",
            "file": "model.ubj",
            "best_iteration": self.best_iteration_,
            "n_classes": self.n_classes_,
            "n_features": self.n_features_in_,
        }

    @classmethod
    def load(cls, folder: Path, meta: dict[str, Any]) -> XGBoostModel:
        import xgboost

        model = cls(task=meta["task"], params=meta.get("params"))
        booster = xgboost.Booster()
        booster.load_model(str(folder / meta["file"]))
        model.best_iteration_ = meta.get("best_iteration")
        model.n_classes_ = meta["n_classes"]
        model._set_booster(booster, meta["n_features"])
        return model


# xgboost's native library prints through a callback registered per thread: Python's print()
# in the thread that imported xgboost, stderr in any other, such as a Dask worker's task
# threads. Each training worker's collective start-up line ("Task [xgboost.dask-0]:tcp://...
# got rank 0") is printed whatever the verbosity, onto the terminal of a local cluster's
# workers. So the thread that joins the collective keeps that output, and the client logs it
# after training to the "xgboost" logger (INFO; WARNING for xgboost's warnings): the
# application decides what it shows (radcluster -v: INFO).
_native_logger = logging.getLogger("xgboost")
_native_lines: deque[str] = deque(maxlen=1000)
_native_callback = None


def _keep_native_line(message: bytes) -> None:
    _native_lines.append(message.decode(errors="replace").strip())


def _keep_native_output() -> None:
    """In this (worker) process, have xgboost.dask's collective context keep the native output
    of the thread that enters it in :data:`_native_lines`. Idempotent."""
    import ctypes

    import xgboost.dask as dxgb
    from xgboost.core import _LIB

    global _native_callback
    if _native_callback is not None:
        return
    _native_callback = ctypes.CFUNCTYPE(None, ctypes.c_char_p)(_keep_native_line)

    class KeptOutputCommunicatorContext(dxgb.CommunicatorContext):
        def __enter__(self):
            _LIB.XGBRegisterLogCallback(_native_callback)
            return super().__enter__()

    dxgb.CommunicatorContext = KeptOutputCommunicatorContext


def _take_native_output() -> list[str]:
    lines = list(_native_lines)
    _native_lines.clear()
    return lines


def _log_native_output(client) -> None:
    for lines in client.run(_take_native_output).values():
        for line in lines:
            _native_logger.log(logging.WARNING if "WARNING:" in line else logging.INFO, "%s", line)


def _colocated(client, X, y: np.ndarray, Xv, yv: np.ndarray):
    """Training and validation rows, and their labels, placed so that every worker xgboost
    trains on holds some of both.

    xgboost.dask trains on each worker that holds a partition of either set; a worker holding
    only one of them builds an empty DMatrix for the other (a warning from that worker, and
    rows of one set that cannot join the other's loss there). Left to the scheduler, a small
    matrix's one training block and one validation block often land on two workers. So with
    k = as many workers as the training rows have blocks (at most), training block i goes to
    worker i mod k, the validation rows are cut into at least k blocks, block j to worker j
    mod k, and each label block is computed beside its rows.
    """
    workers = sorted(client.nthreads())
    k = max(1, min(len(workers), X.numblocks[0], Xv.shape[0]))
    if Xv.numblocks[0] < k:
        n = Xv.shape[0]
        Xv = Xv.rechunk({0: tuple(n // k + (i < n % k) for i in range(k))})
    return (*_spread(client, X, y, workers[:k]), *_spread(client, Xv, yv, workers[:k]))


def _spread(client, X, y: np.ndarray, workers: list[str]):
    """``X`` and ``y`` as dask arrays whose row block i, rows and labels, is held by worker
    ``workers[i % len(workers)]`` (strictly: work stealing would undo it)."""
    import dask.array as da

    bounds = np.cumsum((0, *X.chunks[0]))
    xs: list = [None] * X.numblocks[0]
    ys: list = [None] * X.numblocks[0]
    for j, worker in enumerate(workers):
        mine = range(j, X.numblocks[0], len(workers))
        # a random name: equal label slices would otherwise share one key, held by one worker
        labels = [da.from_array(y[bounds[i] : bounds[i + 1]], name=False) for i in mine]
        placed = client.persist([X.blocks[i] for i in mine] + labels, workers=[worker], allow_other_workers=False)
        for i, xb, yb in zip(mine, placed[: len(mine)], placed[len(mine) :], strict=True):
            xs[i], ys[i] = xb, yb
    return da.concatenate(xs), da.concatenate(ys)


def _param_names(task: str) -> list[str]:
    import xgboost

    return [p for p in xgboost.XGBRegressor().get_params() if p not in _RESERVED]


register(
    ModelFamily(
        name="xgboost",
        tasks=("binary", "multiclass", "regression", "survival"),
        description="distributed gradient-boosted trees (xgboost.dask); survival: Cox",
        make=lambda task, params, *, early_stopping_rounds, max_gather_mb, random_state: XGBoostModel(
            task=task, params=params, early_stopping_rounds=early_stopping_rounds, random_state=random_state
        ),
        param_names=_param_names,
        format="xgboost-ubj",
        load=lambda folder, meta, trusted: XGBoostModel.load(folder, meta),
        defaults={
            "n_estimators": 300,
            "max_depth": 3,
            "learning_rate": 0.05,
            "subsample": 0.8,
            "colsample_bytree": 0.8,
            "tree_method": "hist",
        },
    )
)
