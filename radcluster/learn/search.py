"""Hyperparameter search inside one training fold: the inner loop of nested cross-validation.

``train.search`` declares a grid (every combination, scikit-learn's ``ParameterGrid``) or a
random search (``n_iter`` draws from lists or distributions, scikit-learn's
``ParameterSampler``, the sampler ``RandomizedSearchCV`` uses). :func:`tune` runs on the
preprocessed training rows of one outer fold: scikit-learn's ``GridSearchCV`` fits a clone of
the fold's model for every candidate on grouped, stratified inner folds of those rows
(:func:`~.cv.make_splits`: no patient on both sides) and scores it on the inner held-out rows
with the task's main metric, computed as the outer folds compute it; the best candidate's
parameters are then fitted on the whole training fold, and only the outer held-out rows score
that model. The outer rows are never seen by the search.

Every model family goes through the same ``GridSearchCV``: radcluster's models are
scikit-learn estimators (``get_params``/``set_params``, ``fit(X, y)``) whose ``params`` hold
the library's parameters, so each candidate is one ``params`` value, the job's parameters
updated by the candidate's. A random search draws its candidates with ``ParameterSampler``
first and lets ``GridSearchCV`` score that list: the same candidates ``RandomizedSearchCV``
would score, with the parameters nested in ``params``.

XGBoost (``xgboost.dask``): ``GridSearchCV`` only drives the loop (``n_jobs=1``, in the
client). The training matrix stays a dask array: each inner split is a row selection of it and
each candidate is fitted by ``xgboost.dask`` on the workers, as the outer fits are, so the
matrix is never gathered; inner fits boost ``n_estimators`` rounds (no early stopping, which
would need a third split). The scikit-learn and Cox models, which are fitted in one process on
the gathered matrix anyway (their ``max_gather_mb``), get the fold's rows gathered once and
their inner fits run in the client with dask's synchronous scheduler.

Preprocessing and the ``select:`` step are fitted once per outer fold, before the search: the
inner scores are then a little optimistic about selection, which changes which candidate wins
at most, never the outer score.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .cv import Target, evaluate, make_splits

logger = logging.getLogger(__name__)

__all__ = ["candidates", "tune"]


def candidates(search) -> list[dict[str, Any]]:
    """The parameter sets a :class:`~radcluster.spec.training.SearchSpec` tries, in order."""
    from sklearn.model_selection import ParameterGrid, ParameterSampler

    if search.grid is not None:
        return [dict(c) for c in ParameterGrid(search.grid)]
    return [
        {k: v.item() if isinstance(v, np.generic) else v for k, v in c.items()}
        for c in ParameterSampler(_distributions(search.random), search.n_iter, random_state=search.seed)
    ]


def _distributions(random: dict[str, Any]) -> dict[str, Any]:
    from scipy import stats

    out = {}
    for key, value in random.items():
        if isinstance(value, dict):
            (name, (low, high)) = next(iter(value.items()))
            if name == "uniform":
                value = stats.uniform(low, high - low)
            elif name == "loguniform":
                value = stats.loguniform(low, high)
            else:
                value = stats.randint(int(low), int(high) + 1)
        out[key] = value
    return out


def _inner_target(template: Target, y: np.ndarray) -> Target:
    """A :class:`Target` for the rows of an inner split, from their model-ready ``y``."""
    task = template.task
    if task == "survival":
        y = np.asarray(y, dtype=float)
        event = (y > 0).astype(int)
        return Target(task, y, time=np.abs(y), event=event, strata=event)
    if task in ("binary", "multiclass"):
        return Target(task, np.asarray(y).astype(int), classes=template.classes, strata=y)
    return Target(task, np.asarray(y, dtype=float))


def tune(model, Z, target: Target, groups: np.ndarray, search, *, seed: int = 0) -> dict[str, Any]:
    """Choose ``model``'s parameters among ``search``'s candidates on the rows ``Z`` (one outer
    training fold, preprocessed); ``model`` itself is not fitted.

    Returns
    -------
    dict
        ``params`` (the chosen candidate), ``inner_score`` (its mean inner-fold main metric),
        ``metric`` and ``scores`` (every candidate's mean, in candidate order).
    """
    from sklearn.model_selection import GridSearchCV

    from .models import main_metric

    tried = candidates(search)
    base = dict(model.params or {})
    metric = main_metric(target.task)
    inner = make_splits(search.inner_folds, target.strata, groups, seed=seed, what="inner search folds")

    def score(estimator, X, y) -> float:
        out = estimator.predict_scores(X)
        out = np.asarray(out.compute() if hasattr(out, "compute") else out)
        value = evaluate(_inner_target(target, y), out, n_boot=0).get(metric)
        return float("nan") if value is None else float(value)

    grid = GridSearchCV(
        model,
        {"params": [{**base, **c} for c in tried]},
        scoring=score,
        cv=inner,
        refit=False,
        error_score="raise",
    )
    if "max_gather_mb" in model.get_params():
        # a model fitted in one process on the gathered matrix (scikit-learn, Cox): gathered
        # once, each inner fit and score then runs here instead of a round trip to the cluster
        import dask

        rows = np.asarray(Z.compute() if hasattr(Z, "compute") else Z)
        with dask.config.set(scheduler="synchronous"):
            grid.fit(rows, target.y)
    else:
        grid.fit(Z, target.y)  # xgboost.dask: every inner fit on the workers, Z never gathered
    means = np.asarray(grid.cv_results_["mean_test_score"], dtype=float)
    best = int(np.nanargmax(means)) if np.isfinite(means).any() else 0
    logger.info("search: %s chosen (inner %s %.3f) among %d candidate(s)", tried[best], metric, means[best], len(tried))
    return {
        "params": tried[best],
        "inner_score": float(means[best]),
        "metric": metric,
        "scores": [None if not np.isfinite(m) else float(m) for m in means],
    }
