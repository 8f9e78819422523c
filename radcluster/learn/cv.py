"""Leak-free cross-validation: grouped, stratified folds; fit, final fit and evaluation.

The flow of one fold: a :class:`~.preprocess.Preprocessor` is fitted on the training rows
only, the model (:mod:`radcluster.learn.models`) on the preprocessed training rows, and both
are applied to the held-out rows. Folds come from :func:`make_splits`: stratified and grouped
(scans of one patient never on both sides). Only per-row predictions come back to the client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ModelError
from . import metrics
from .preprocess import Preprocessor

logger = logging.getLogger(__name__)


@dataclass
class Target:
    """What the model is trained on, row-aligned with the matrix.

    ``y`` is model-ready: class indices (classification), values (regression), times with
    the sign of censoring (survival, XGBoost's Cox convention) or None (clustering).
    ``strata`` drives stratified folds (class, or event for survival).
    """

    task: str
    y: np.ndarray | None
    classes: np.ndarray | None = None
    time: np.ndarray | None = None
    event: np.ndarray | None = None
    strata: np.ndarray | None = None
    raw: np.ndarray | None = None

    def subset(self, idx: np.ndarray) -> Target:
        def take(a):
            return None if a is None else a[idx]

        return Target(
            self.task, take(self.y), self.classes, take(self.time), take(self.event), take(self.strata), take(self.raw)
        )


_SGKF_MAX_GROUPS = 2000


def make_splits(
    n_splits: int, strata: np.ndarray | None, groups: np.ndarray, *, seed: int = 0, what: str = "cross-validation"
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grouped (and, given ``strata``, stratified) k-fold splits: no group on both sides.

    Stratified splits use scikit-learn's ``StratifiedGroupKFold``, except when every group
    has one stratum (a patient-level outcome) or there are more than 2,000 groups: then the
    groups themselves are split by ``StratifiedKFold`` on their (most frequent) stratum,
    which is exact in the first case and avoids ``StratifiedGroupKFold``'s cost, which grows
    with the square of the number of groups (minutes at 10^5), in the second.
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold, StratifiedKFold

    uniq, codes = np.unique(groups, return_inverse=True)
    n_groups = len(uniq)
    if n_groups < n_splits:
        raise ModelError(f"{what}: {n_splits} folds need at least {n_splits} patients/groups; found {n_groups}")
    index = np.zeros(len(groups))
    if strata is None:
        splitter = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return [(np.sort(a), np.sort(b)) for a, b in splitter.split(index, None, groups)]
    s_uniq, s_codes = np.unique(strata, return_inverse=True)
    table = np.zeros((n_groups, len(s_uniq)), dtype=np.int64)
    np.add.at(table, (codes, s_codes), 1)
    per_class = (table > 0).sum(axis=0)
    if per_class.min() < n_splits:
        logger.warning(
            "%s: the smallest class spans %d group(s), fewer than %d folds; some folds lack it",
            what,
            int(per_class.min()),
            n_splits,
        )
    if (table > 0).sum(axis=1).max() == 1 or n_groups > _SGKF_MAX_GROUPS:
        group_stratum = table.argmax(axis=1)
        if np.bincount(group_stratum).min() >= n_splits:
            folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            out = []
            for _, test_groups in folds.split(np.zeros(n_groups), group_stratum):
                in_test = np.isin(codes, test_groups)
                out.append((np.flatnonzero(~in_test), np.flatnonzero(in_test)))
            return out
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [(np.sort(a), np.sort(b)) for a, b in splitter.split(index, strata, groups)]


@dataclass
class FoldFit:
    """A fitted preprocessor and model, with the training matrix the model saw."""

    pre: Preprocessor
    model: Any
    scores_train: Any = None
    search: dict[str, Any] | None = None  # the inner search's choice (train.search), if any


@dataclass
class CVResult:
    scores: np.ndarray  # out-of-fold model output, row-aligned with the evaluated rows
    fold: np.ndarray  # fold of each row (-1: not evaluated)
    fold_metrics: list[dict[str, Any]] = field(default_factory=list)
    # survival models that predict curves (cox, coxnet): out-of-fold S(t) at the times grid
    survival: np.ndarray | None = None
    grid: np.ndarray | None = None


def _fit_once(
    X,
    target: Target,
    groups: np.ndarray,
    *,
    make_pre: Callable[[], Preprocessor],
    make_mdl: Callable[[], Any],
    batch: np.ndarray | None,
    validation_fraction: float,
    seed: int,
    search=None,
) -> FoldFit:
    pre = make_pre()
    Z = pre.fit_transform(X, target.y, batch=batch).persist()  # y: for a select step only
    model = make_mdl()
    chosen = None
    if search is not None and target.y is not None:
        from .search import tune

        # the inner loop: these training rows only, split again
        chosen = tune(model, Z, target, groups, search, seed=seed)
        model.set_params(params={**(model.params or {}), **chosen["params"]})
    if (
        target.y is None
        or not hasattr(model, "early_stopping_rounds")
        or not model.early_stopping_rounds
        or validation_fraction <= 0
    ):
        model.fit(Z, target.y)
        return FoldFit(pre, model, Z, chosen)
    # Early stopping watches a validation split carved from the training rows only.
    n_val = max(2, round(1 / validation_fraction))
    try:
        fit_idx, val_idx = make_splits(
            n_val, target.strata, groups, seed=seed + 1, what="early-stopping validation split"
        )[0]
    except ModelError:
        model.fit(Z, target.y)
        return FoldFit(pre, model, Z, chosen)
    model.fit(Z[fit_idx], target.y[fit_idx], eval_set=(Z[val_idx], target.y[val_idx]))
    return FoldFit(pre, model, Z, chosen)


def cross_validate(
    X,
    target: Target,
    groups: np.ndarray,
    splits: list[tuple[np.ndarray, np.ndarray]],
    *,
    make_pre: Callable[[], Preprocessor],
    make_mdl: Callable[[], Any],
    batch: np.ndarray | None = None,
    validation_fraction: float = 0.2,
    seed: int = 0,
    on_fold: Callable[[int, dict[str, Any]], None] | None = None,
    metric_options: dict[str, Any] | None = None,
    search=None,
) -> CVResult:
    """Out-of-fold model outputs: every fold refits preprocessing and model (and, with a
    ``search``, chooses the model's parameters: :func:`.search.tune`) on its training rows."""
    from .survival import evaluation_grid

    n = X.shape[0]
    scores: np.ndarray | None = None
    fold_of = np.full(n, -1)
    per_fold = []
    grid = evaluation_grid(target.time, target.event) if target.task == "survival" else None
    curves: np.ndarray | None = None
    for k, (tr, te) in enumerate(splits):
        fitted = _fit_once(
            X[tr],
            target.subset(tr),
            groups[tr],
            make_pre=make_pre,
            make_mdl=make_mdl,
            batch=None if batch is None else batch[tr],
            validation_fraction=validation_fraction,
            seed=seed + k,
            search=search,
        )
        Z = fitted.pre.transform(X[te], batch=None if batch is None else batch[te])
        fold_curves = None
        if grid is not None and hasattr(fitted.model, "predict_survival"):
            Z = np.asarray(Z.compute() if hasattr(Z, "compute") else Z)
            fold_curves = fitted.model.predict_survival(Z, grid)
            if curves is None:
                curves = np.full((n, grid.size), np.nan)
            curves[te] = fold_curves
        out = np.asarray(fitted.model.predict_scores(Z).compute())
        if scores is None:
            scores = np.full((n, *out.shape[1:]), np.nan)
        scores[te] = out
        fold_of[te] = k
        m = evaluate(
            target.subset(te), out, groups[te], n_boot=0, survival=fold_curves, grid=grid, **(metric_options or {})
        )
        m["fold"] = k
        m["n_train"] = int(len(tr))
        m["inputs_kept"] = fitted.pre.kept_inputs().tolist()
        if fitted.search is not None:
            m["search"] = fitted.search
        per_fold.append(m)
        if on_fold is not None:
            on_fold(k, m)
    assert scores is not None
    return CVResult(scores, fold_of, per_fold, curves, grid if curves is not None else None)


def fit_final(
    X,
    target: Target,
    groups: np.ndarray,
    *,
    make_pre: Callable[[], Preprocessor],
    make_mdl: Callable[[], Any],
    batch: np.ndarray | None = None,
    validation_fraction: float = 0.2,
    seed: int = 0,
    search=None,
) -> FoldFit:
    """Preprocessing and model fitted on all the given (development) rows."""
    return _fit_once(
        X,
        target,
        groups,
        make_pre=make_pre,
        make_mdl=make_mdl,
        batch=batch,
        validation_fraction=validation_fraction,
        seed=seed,
        search=search,
    )


def evaluate(
    target: Target,
    scores: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    bins: int = 10,
    seed: int = 0,
    clustering_inputs: np.ndarray | None = None,
    survival: np.ndarray | None = None,
    grid: np.ndarray | None = None,
) -> dict[str, Any]:
    """The task's metrics of ``scores`` (a model's :meth:`predict_scores` output); survival
    curves at ``grid`` (models that predict them) add the integrated Brier score."""
    task = target.task
    if task in ("binary", "multiclass"):
        return metrics.classification_metrics(
            target.y, scores, target.classes, groups=groups, n_boot=n_boot, level=level, bins=bins, seed=seed
        )
    if task == "regression":
        return metrics.regression_metrics(target.y, scores, groups=groups, n_boot=n_boot, level=level, seed=seed)
    if task == "survival":
        return metrics.survival_metrics(
            target.time,
            target.event,
            scores,
            groups=groups,
            n_boot=n_boot,
            level=level,
            seed=seed,
            survival=survival,
            grid=grid if survival is not None else None,
        )
    if task == "clustering":
        inputs = clustering_inputs if clustering_inputs is not None else scores[:, None]
        return metrics.clustering_metrics(inputs, scores.astype(int), target=target.raw, seed=seed)
    raise ModelError(f"unknown task {task!r}")  # pragma: no cover


def score_columns(task: str, scores: np.ndarray, classes: np.ndarray | None) -> dict[str, np.ndarray]:
    """A model's scores as the named columns of a predictions table (probability, risk, ...)."""
    if task == "binary":
        return {"probability": scores[:, 1]}
    if task == "multiclass":
        return {f"p_{c}": scores[:, i] for i, c in enumerate(classes)}
    if task == "survival":
        return {"risk": scores}
    if task == "clustering":
        return {"cluster": scores.astype(int)}
    return {"predicted": scores}
