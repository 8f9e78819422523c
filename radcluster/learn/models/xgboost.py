"""XGBoost through ``xgboost.dask``: binary, multiclass, regression and Cox survival, on the cluster.

Early stopping on a validation split; saved as XGBoost UBJSON.
"""

from __future__ import annotations

import logging
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
        yd = da.from_array(y, chunks=(X.chunks[0],))
        if self.task in ("binary", "multiclass"):
            self.n_classes_ = int(y.max()) + 1
            metric = "logloss" if self.n_classes_ == 2 else "mlogloss"
            est = dxgb.DaskXGBClassifier(eval_metric=metric, early_stopping_rounds=stop, **params)
        else:
            self.n_classes_ = 0
            objective = "survival:cox" if self.task == "survival" else "reg:squarederror"
            metric = None if self.task == "survival" else "rmse"
            est = dxgb.DaskXGBRegressor(objective=objective, eval_metric=metric, early_stopping_rounds=stop, **params)
        evals = None
        if eval_set is not None:
            Xv = as_dask(eval_set[0])
            evals = [(Xv, da.from_array(np.asarray(eval_set[1]), chunks=(Xv.chunks[0],)))]
        # With tree_method hist (the default), the estimator bins the rows into a
        # DaskQuantileDMatrix, which keeps no float copy of them, and the validation rows by
        # the training's bins (its ``ref``); tests/learn/test_models.py holds it to that.
        # XGBoost's own warnings (a worker holding no rows of a small matrix: "Empty dataset
        # at worker") follow this logger: shown when the application logs INFO (radcluster -v).
        # xgboost.dask hands this configuration to the workers that train.
        with xgboost.config_context(verbosity=1 if logger.isEnabledFor(logging.INFO) else 0):
            est.fit(X, yd, eval_set=evals, verbose=False)
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
