"""scikit-learn models, fitted on the reduced matrix gathered to the client.

Refused above ``max_gather_mb``; predicted blockwise through dask-ml's ``ParallelPostFit``;
saved with skops and loaded with an explicit trusted-types list.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from .._arrays import as_dask, gather
from . import ModelFamily, check_model, register, skops_dump, skops_load

# Types skops may rebuild when loading a model of this module; anything else is refused.
TRUSTED_TYPES = (
    "sklearn.tree._tree.Tree",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
)


def _task_family(task: str) -> str:
    return "classification" if task in ("binary", "multiclass") else task


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
        cls = _estimator_class(self.name, self.task)
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
        Xn = gather(X, model=self.name, max_mb=self.max_gather_mb)
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
        X = as_dask(X).rechunk({1: -1})
        if self.task == "regression":
            return self.estimator_.predict(X).astype(float)
        return self.estimator_.predict_proba(X)

    def save(self, folder: Path) -> dict[str, Any]:
        return {
            **skops_dump(self.estimator_.estimator, folder, self.name, TRUSTED_TYPES),
            "n_features": self.n_features_in_,
            "importances": self.importances_.tolist(),
        }

    @classmethod
    def load(cls, folder: Path, meta: dict[str, Any], trusted: tuple[str, ...]) -> SklearnModel:
        """The fitted model of ``folder``; skops rebuilds only the ``trusted`` types."""
        from dask_ml.wrappers import ParallelPostFit

        loaded = skops_load(folder, meta, trusted)
        model = cls(name=meta["name"], task=meta["task"], params=meta.get("params"))
        model.estimator_ = ParallelPostFit(estimator=loaded)
        model.n_features_in_ = meta["n_features"]
        model.importances_ = np.asarray(meta.get("importances", []), dtype=float)
        return model


# name -> (description, {"classification"/"regression": (module, class)}, defaults)
_MODELS: dict[str, tuple[str, dict[str, tuple[str, str]], dict[str, Any]]] = {
    "logistic_regression": (
        "L2-penalised logistic regression",
        {"classification": ("sklearn.linear_model", "LogisticRegression")},
        {"C": 1.0, "max_iter": 2000},
    ),
    "random_forest": (
        "random forest",
        {
            "classification": ("sklearn.ensemble", "RandomForestClassifier"),
            "regression": ("sklearn.ensemble", "RandomForestRegressor"),
        },
        {"n_estimators": 300, "min_samples_leaf": 2},
    ),
    "svm": (
        "support vector machine (classification: Platt-scaled probabilities)",
        {"classification": ("sklearn.svm", "SVC"), "regression": ("sklearn.svm", "SVR")},
        {"C": 1.0, "kernel": "rbf"},
    ),
    "naive_bayes": ("Gaussian naive Bayes", {"classification": ("sklearn.naive_bayes", "GaussianNB")}, {}),
    "decision_tree": (
        "a single decision tree",
        {
            "classification": ("sklearn.tree", "DecisionTreeClassifier"),
            "regression": ("sklearn.tree", "DecisionTreeRegressor"),
        },
        {"max_depth": 4},
    ),
    "ridge": ("ridge regression", {"regression": ("sklearn.linear_model", "Ridge")}, {}),
}


def _estimator_class(name: str, task: str):
    import importlib

    module, cls = _MODELS[name][1][_task_family(task)]
    return getattr(importlib.import_module(module), cls)


def _make(name: str, task: str, params: dict[str, Any], *, early_stopping_rounds, max_gather_mb, random_state):
    return SklearnModel(name=name, task=task, params=params, max_gather_mb=max_gather_mb, random_state=random_state)


def _param_names(name: str, task: str) -> list[str]:
    return list(_estimator_class(name, task)().get_params())


for _name, (_description, _classes, _defaults) in _MODELS.items():
    register(
        ModelFamily(
            name=_name,
            tasks=tuple(t for t in ("binary", "multiclass", "regression") if _task_family(t) in _classes),
            description=f"{_description} (scikit-learn)",
            make=functools.partial(_make, _name),
            param_names=functools.partial(_param_names, _name),
            format="skops",
            load=SklearnModel.load,
            defaults=_defaults,
            trusted_types=TRUSTED_TYPES,
        )
    )
