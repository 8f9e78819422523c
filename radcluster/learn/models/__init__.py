"""Models selectable by name, fitted on the (preprocessed) dask array of one training fold.

Every model is a scikit-learn style estimator: keyword-only parameters stored as given,
validation in ``fit``, fitted attributes ending in ``_``, and ``predict_scores(X)`` returning
what evaluation needs (class probabilities, a regression value, a log-hazard risk or a
cluster index). Saving writes safe formats only:

========================  ==========================================================
xgboost                   ``xgboost.dask`` (``DaskXGBClassifier``/``Regressor``, ``survival:cox``),
                          early stopping on a validation split; saved as XGBoost UBJSON
scikit-learn models       fitted on the reduced matrix gathered to the client (refused above
                          ``max_gather_mb``), predicted blockwise through dask-ml's
                          ``ParallelPostFit``; saved with skops and loaded with an explicit
                          trusted-types list
kmeans                    scikit-learn KMeans on gathered PCA scores (dask-ml KMeans above
                          ``max_gather_mb``); saved as its centres in ``.npz``
========================  ==========================================================
"""

from __future__ import annotations

import difflib
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from ...errors import ModelError, RegistryError
from ...spec.training import MODELS

logger = logging.getLogger(__name__)

__all__ = ["MODELS", "TASKS", "check_model", "make_model", "load_model", "XGBoostModel", "SklearnModel", "KMeansModel"]

TASKS = ("binary", "multiclass", "regression", "survival", "clustering")

# name -> task -> (module, class); "classification" covers binary and multiclass.
_SKLEARN = {
    "logistic_regression": {"classification": ("sklearn.linear_model", "LogisticRegression")},
    "random_forest": {
        "classification": ("sklearn.ensemble", "RandomForestClassifier"),
        "regression": ("sklearn.ensemble", "RandomForestRegressor"),
    },
    "svm": {"classification": ("sklearn.svm", "SVC"), "regression": ("sklearn.svm", "SVR")},
    "naive_bayes": {"classification": ("sklearn.naive_bayes", "GaussianNB")},
    "decision_tree": {
        "classification": ("sklearn.tree", "DecisionTreeClassifier"),
        "regression": ("sklearn.tree", "DecisionTreeRegressor"),
    },
    "ridge": {"regression": ("sklearn.linear_model", "Ridge")},
}

_DEFAULTS: dict[str, dict[str, Any]] = {
    "xgboost": {
        "n_estimators": 300,
        "max_depth": 3,
        "learning_rate": 0.05,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "tree_method": "hist",
    },
    "logistic_regression": {"C": 1.0, "max_iter": 2000},
    "random_forest": {"n_estimators": 300, "min_samples_leaf": 2},
    "svm": {"C": 1.0, "kernel": "rbf"},
    "decision_tree": {"max_depth": 4},
    "kmeans": {"n_clusters": 2, "n_init": 10},
}
# Types skops may rebuild when loading a model of this module; anything else is refused.
TRUSTED_TYPES = (
    "sklearn.tree._tree.Tree",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
)
_XGB_RESERVED = (
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


def _task_family(task: str) -> str:
    return "classification" if task in ("binary", "multiclass") else task


def _valid_params(name: str, task: str) -> list[str]:
    if name == "xgboost":
        import xgboost

        return [p for p in xgboost.XGBRegressor().get_params() if p not in _XGB_RESERVED]
    if name == "kmeans":
        from sklearn.cluster import KMeans

        return list(KMeans().get_params())
    return list(_sklearn_class(name, task)().get_params())


def _sklearn_class(name: str, task: str):
    import importlib

    module, cls = _SKLEARN[name][_task_family(task)]
    return getattr(importlib.import_module(module), cls)


def check_model(name: str, task: str, params: dict[str, Any]) -> None:
    """Raise :class:`ModelError` unless ``name`` fits ``task`` and every param is known to it."""
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"choose one of {', '.join(MODELS)}"
        raise ModelError(f"unknown model {name!r}; {hint}")
    family = _task_family(task)
    if name == "kmeans" and task != "clustering" or task == "clustering" and name != "kmeans":
        raise ModelError(f"model {name!r} does not do task {task!r}: 'kmeans' is the clustering model")
    if name not in ("xgboost", "kmeans") and family not in _SKLEARN[name]:
        able = [m for m in MODELS if m == "xgboost" or family in _SKLEARN.get(m, {})]
        raise ModelError(f"model {name!r} does not do task {task!r}; models that do: {', '.join(able)}")
    valid = _valid_params(name, task)
    for key in params:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(sorted(valid))}"
            raise ModelError(f"params.{name}: unknown parameter {key!r} for task {task!r}; {hint}")


def make_model(
    name: str,
    task: str,
    params: dict[str, Any] | None = None,
    *,
    early_stopping_rounds: int | None = 20,
    max_gather_mb: float = 512.0,
    random_state: int = 0,
) -> BaseEstimator:
    """An unfitted model wrapper for ``name`` and ``task`` (parameters checked in ``fit``)."""
    params = {**_DEFAULTS.get(name, {}), **(params or {})}
    if name == "xgboost":
        return XGBoostModel(
            task=task, params=params, early_stopping_rounds=early_stopping_rounds, random_state=random_state
        )
    if name == "kmeans":
        return KMeansModel(params=params, max_gather_mb=max_gather_mb, random_state=random_state)
    return SklearnModel(name=name, task=task, params=params, max_gather_mb=max_gather_mb, random_state=random_state)


def _as_dask(X):
    import dask.array as da

    return X if isinstance(X, da.Array) else da.from_array(np.asarray(X, dtype=float))


def _blockwise(X, fn, n_out: int | None):
    """``fn`` applied to every row block of dask ``X``: (n,) when ``n_out`` is None, else (n, n_out)."""
    X = _as_dask(X).rechunk({1: -1})
    if n_out is None:
        return X.map_blocks(fn, drop_axis=1, dtype=float, meta=np.empty((0,), float))
    return X.map_blocks(fn, chunks=(X.chunks[0], (n_out,)), dtype=float, meta=np.empty((0, 0), float))


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
        import xgboost.dask as dxgb

        if self.task not in ("binary", "multiclass", "regression", "survival"):
            raise ModelError(f"xgboost: task must be binary, multiclass, regression or survival; got {self.task!r}")
        params = dict(self.params or {})
        check_model("xgboost", self.task, params)
        params.setdefault("random_state", self.random_state)
        X = _as_dask(X)
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
            Xv = _as_dask(eval_set[0])
            evals = [(Xv, da.from_array(np.asarray(eval_set[1]), chunks=(Xv.chunks[0],)))]
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

            return _blockwise(X, proba, k)
        margin = self.task == "survival"
        return _blockwise(X, lambda b: booster.inplace_predict(b, predict_type="margin" if margin else "value"), None)

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


class SklearnModel(BaseEstimator):
    """A scikit-learn model fitted on the reduced matrix gathered to the client.

    Parameters
    ----------
    name : str
        One of ``logistic_regression``, ``random_forest``, ``svm``, ``naive_bayes``,
        ``decision_tree``, ``ridge``.
    task : {'binary', 'multiclass', 'regression'}
    params : dict, optional
        Parameters of the scikit-learn estimator.
    max_gather_mb : float, default 512
        Refuse to gather a larger training matrix (use PCA or xgboost instead).
    random_state : int, default 0

    Attributes
    ----------
    estimator_ : dask_ml.wrappers.ParallelPostFit
        The fitted estimator, predicting block by block on dask arrays.
    importances_ : ndarray of shape (n_features,)
        Impurity importances, mean absolute coefficients, or permutation importances.
    """

    def __init__(
        self,
        *,
        name: str = "logistic_regression",
        task: str = "binary",
        params: dict[str, Any] | None = None,
        max_gather_mb: float = 512.0,
        random_state: int = 0,
    ):
        self.name = name
        self.task = task
        self.params = params
        self.max_gather_mb = max_gather_mb
        self.random_state = random_state

    def _build(self):
        params = dict(self.params or {})
        check_model(self.name, self.task, params)
        cls = _sklearn_class(self.name, self.task)
        if "random_state" in cls().get_params() and "random_state" not in params:
            params["random_state"] = self.random_state
        est = cls(**params)
        if self.name == "svm" and self.task != "regression":
            # SVC's own probability=True is deprecated in scikit-learn 1.9: Platt scaling instead.
            from sklearn.calibration import CalibratedClassifierCV

            est = CalibratedClassifierCV(est, ensemble=False, cv=3)
        return est

    def fit(self, X, y: np.ndarray, *, eval_set=None):
        from dask_ml.wrappers import ParallelPostFit

        est = self._build()
        X = _as_dask(X)
        mb = X.shape[0] * X.shape[1] * 8 / 2**20
        if mb > self.max_gather_mb:
            raise ModelError(
                f"model {self.name!r} is fitted in one process on the gathered matrix, which would be "
                f"{mb:.0f} MB (max_gather_mb={self.max_gather_mb:g}): reduce it with preprocess.pca, "
                "raise max_gather_mb, or use model 'xgboost'"
            )
        Xn = X.compute()
        y = np.asarray(y)
        self.estimator_ = ParallelPostFit(estimator=est).fit(Xn, y)
        self.n_features_in_ = Xn.shape[1]
        self.importances_ = self._importances(Xn, y)
        return self

    def _importances(self, Xn: np.ndarray, y: np.ndarray) -> np.ndarray:
        est = self.estimator_.estimator
        if hasattr(est, "feature_importances_"):
            imp = np.asarray(est.feature_importances_, dtype=float)
        elif hasattr(est, "coef_"):
            imp = np.abs(np.atleast_2d(est.coef_)).mean(axis=0)
        else:
            from sklearn.inspection import permutation_importance

            sample = slice(0, min(len(y), 2000))
            result = permutation_importance(est, Xn[sample], y[sample], n_repeats=5, random_state=self.random_state)
            imp = np.clip(result.importances_mean, 0, None)
        total = imp.sum()
        return imp / total if total > 0 else imp

    def predict_scores(self, X):
        X = _as_dask(X).rechunk({1: -1})
        if self.task == "regression":
            return self.estimator_.predict(X).astype(float)
        return self.estimator_.predict_proba(X)

    def save(self, folder: Path) -> dict[str, Any]:
        import skops.io as sio

        path = folder / "model.skops"
        sio.dump(self.estimator_.estimator, path)
        untrusted = sio.get_untrusted_types(file=path)
        unknown = sorted(set(untrusted) - set(TRUSTED_TYPES))
        if unknown:  # pragma: no cover - only if scikit-learn changes its internals
            raise RegistryError(f"model {self.name!r} holds types not on radcluster's trusted list: {unknown}")
        return {
            "format": "skops",
            "file": "model.skops",
            "trusted_types": sorted(untrusted),
            "n_features": self.n_features_in_,
            "importances": self.importances_.tolist(),
        }

    @classmethod
    def load(cls, folder: Path, meta: dict[str, Any], *, trust: tuple[str, ...] = ()) -> SklearnModel:
        import skops.io as sio
        from dask_ml.wrappers import ParallelPostFit

        path = folder / meta["file"]
        untrusted = sio.get_untrusted_types(file=path)
        unknown = sorted(set(untrusted) - set(TRUSTED_TYPES) - set(trust))
        if unknown:
            raise RegistryError(
                f"{path}: refusing to load types not on radcluster's trusted list: {', '.join(unknown)}; "
                "if you trust this file, pass them explicitly (trust=...)"
            )
        est = sio.load(path, trusted=[*TRUSTED_TYPES, *trust])
        model = cls(name=meta["name"], task=meta["task"], params=meta.get("params"))
        model.estimator_ = ParallelPostFit(estimator=est)
        model.n_features_in_ = meta["n_features"]
        model.importances_ = np.asarray(meta.get("importances", []), dtype=float)
        return model


class KMeansModel(BaseEstimator):
    """k-means clustering of the (PCA) scores.

    Parameters
    ----------
    params : dict, optional
        scikit-learn ``KMeans`` parameters (``n_clusters``, ``n_init``, ...).
    max_gather_mb : float, default 512
        Larger score matrices are clustered with dask-ml's ``KMeans`` on the cluster.
    random_state : int, default 0

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
    importances_ : ndarray of shape (n_features,)
        Spread of the centres along each input (what separates the clusters).
    """

    def __init__(self, *, params: dict[str, Any] | None = None, max_gather_mb: float = 512.0, random_state: int = 0):
        self.params = params
        self.max_gather_mb = max_gather_mb
        self.random_state = random_state

    def fit(self, X, y=None, *, eval_set=None):
        params = dict(self.params or {})
        check_model("kmeans", "clustering", params)
        params.setdefault("random_state", self.random_state)
        X = _as_dask(X).rechunk({1: -1})
        mb = X.shape[0] * X.shape[1] * 8 / 2**20
        if mb <= self.max_gather_mb:
            from sklearn.cluster import KMeans

            fitted = KMeans(**params).fit(X.compute())
        else:
            from dask_ml.cluster import KMeans

            keep = {k: v for k, v in params.items() if k in ("n_clusters", "max_iter", "tol", "random_state")}
            fitted = KMeans(**keep).fit(X)
        self.cluster_centers_ = np.asarray(fitted.cluster_centers_, dtype=float)
        self.n_features_in_ = X.shape[1]
        self.importances_ = self._importances()
        return self

    def _importances(self) -> np.ndarray:
        spread = self.cluster_centers_.std(axis=0)
        return spread / spread.sum() if spread.sum() > 0 else spread

    def predict_scores(self, X):
        centers = self.cluster_centers_

        def nearest(block: np.ndarray) -> np.ndarray:
            d = ((block[:, None, :] - centers[None]) ** 2).sum(axis=2)
            return d.argmin(axis=1).astype(float)

        return _blockwise(X, nearest, None)

    def save(self, folder: Path) -> dict[str, Any]:
        np.savez(folder / "kmeans.npz", cluster_centers=self.cluster_centers_)
        return {"format": "npz", "file": "kmeans.npz", "n_features": self.n_features_in_}

    @classmethod
    def load(cls, folder: Path, meta: dict[str, Any]) -> KMeansModel:
        model = cls(params=meta.get("params"))
        with np.load(folder / meta["file"], allow_pickle=False) as data:
            model.cluster_centers_ = data["cluster_centers"]
        model.n_features_in_ = meta["n_features"]
        model.importances_ = model._importances()
        return model


def save_model(model: BaseEstimator, folder: Path, *, name: str, task: str) -> dict[str, Any]:
    """Write ``model`` into ``folder`` in a safe format; returns its ``model.json`` record."""
    meta = {"name": name, "task": task, "params": getattr(model, "params", None), **model.save(folder)}
    (folder / "model.json").write_text(json.dumps(meta, indent=2, default=_json_default))
    return meta


def load_model(folder: Path, *, trust: tuple[str, ...] = ()) -> BaseEstimator:
    """Rebuild the model saved in ``folder`` (see :func:`save_model`); never unpickles."""
    try:
        meta = json.loads((folder / "model.json").read_text())
    except FileNotFoundError:
        raise RegistryError(f"{folder}: no model.json (not a model version folder)") from None
    fmt = meta.get("format")
    if fmt == "xgboost-ubj":
        return XGBoostModel.load(folder, meta)
    if fmt == "skops":
        return SklearnModel.load(folder, meta, trust=trust)
    if fmt == "npz":
        return KMeansModel.load(folder, meta)
    raise RegistryError(f"{folder}/model.json: unknown model format {fmt!r}")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)
