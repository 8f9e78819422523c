"""Evaluation metrics on out-of-fold predictions: plain numpy/scikit-learn, no Dask.

Every function takes small in-memory arrays (one value per evaluated row), so metrics never
touch the feature matrix. Confidence intervals are percentile bootstraps that resample
*groups* (patients) rather than rows when a patient has several rows, so that the interval
reflects the number of independent patients.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "roc_auc",
    "concordance_index",
    "bootstrap_ci",
    "classification_metrics",
    "regression_metrics",
    "survival_metrics",
    "clustering_metrics",
]


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of a binary ``y`` (0/1) by the rank (Mann-Whitney) formula.

    Ties in ``score`` count one half. NaN when ``y`` holds a single class.

    Examples
    --------
    >>> roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    """
    from scipy.stats import rankdata

    y = np.asarray(y).astype(bool)
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return math.nan
    ranks = rankdata(np.asarray(score, dtype=float))
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def concordance_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C-index: share of comparable pairs whose higher risk fails first.

    A pair (i, j) is comparable when ``time[i] < time[j]`` and ``i`` had the event, or when
    the times are equal, ``i`` had the event and ``j`` was censored. Ties in ``risk`` count
    one half. O(n log n) (a Fenwick tree over risk ranks), so it scales to large test sets.

    Examples
    --------
    >>> concordance_index(np.array([1., 2., 3.]), np.array([1, 1, 0]), np.array([3., 2., 1.]))
    1.0
    """
    time = np.asarray(time, dtype=float)
    event = np.asarray(event).astype(bool)
    risk = np.asarray(risk, dtype=float)
    _, rank = np.unique(risk, return_inverse=True)
    size = int(rank.max()) + 2 if rank.size else 1
    tree = np.zeros(size + 1, dtype=np.int64)

    def add(i: int) -> None:
        i += 1
        while i <= size:
            tree[i] += 1
            i += i & -i

    def below(i: int) -> int:  # how many inserted ranks are < i
        total = 0
        while i > 0:
            total += tree[i]
            i -= i & -i
        return int(total)

    order = np.lexsort((event, -time))  # by decreasing time; censored before events at a time
    concordant = 0.0
    comparable = 0
    inserted = 0
    k = 0
    n = order.size
    while k < n:
        t = time[order[k]]
        end = k
        while end < n and time[order[end]] == t:
            end += 1
        group = order[k:end]
        censored = group[~event[group]]
        events = group[event[group]]
        for j in censored:  # censored at t count as surviving past events at t
            add(int(rank[j]))
            inserted += 1
        for i in events:
            r = int(rank[i])
            less = below(r)
            tie = below(r + 1) - less
            concordant += less + 0.5 * tie
            comparable += inserted
        for i in events:
            add(int(rank[i]))
            inserted += 1
        k = end
    return float(concordant / comparable) if comparable else math.nan


def _resample_rows(group_codes: np.ndarray, n_groups: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices of one group-level bootstrap resample (rows of a drawn group repeat together)."""
    counts = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)
    return np.repeat(np.arange(group_codes.size), counts[group_codes])


def bootstrap_ci(
    metric: Callable[..., float],
    arrays: tuple[np.ndarray, ...],
    *,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(*arrays)``, resampling ``groups`` when given.

    Resamples where the metric is undefined (one class drawn) are skipped; NaN bounds when
    ``n_boot`` is 0 or fewer than ten resamples were defined.
    """
    if n_boot <= 0:
        return (math.nan, math.nan)
    n = len(arrays[0])
    codes = np.unique(np.asarray(groups), return_inverse=True)[1] if groups is not None else np.arange(n)
    n_groups = int(codes.max()) + 1 if n else 0
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = _resample_rows(codes, n_groups, rng)
        value = metric(*(a[idx] for a in arrays))
        if np.isfinite(value):
            values.append(value)
    if len(values) < 10:
        return (math.nan, math.nan)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return (float(lo), float(hi))


def _calibration(y: np.ndarray, p: np.ndarray, bins: int) -> dict[str, Any]:
    """Reliability curve (quantile bins), intercept and slope of logit calibration."""
    from sklearn.calibration import calibration_curve
    from sklearn.linear_model import LogisticRegression

    n_bins = max(2, min(bins, len(np.unique(p))))
    frac_pos, mean_pred = calibration_curve(y, p, n_bins=n_bins, strategy="quantile")
    eps = 1e-6
    logit = np.log(np.clip(p, eps, 1 - eps) / (1 - np.clip(p, eps, 1 - eps)))
    slope = intercept = math.nan
    if len(np.unique(y)) == 2 and np.ptp(logit) > 0:
        fit = LogisticRegression(C=1e6, max_iter=1000).fit(logit[:, None], y)
        slope, intercept = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    return {
        "mean_predicted": mean_pred.tolist(),
        "fraction_positive": frac_pos.tolist(),
        "slope": slope,
        "intercept": intercept,
    }


def classification_metrics(
    y: np.ndarray,
    proba: np.ndarray,
    classes: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    bins: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """ROC AUC (with a bootstrap CI), balanced accuracy, F1, Brier score, calibration.

    ``y`` holds class indices (0..K-1), ``proba`` the (n, K) class probabilities. Binary
    tasks threshold the positive class (index 1) at 0.5; multiclass ones take the argmax and
    report one-vs-rest macro AUC and macro F1.
    """
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score

    y = np.asarray(y, dtype=int)
    proba = np.asarray(proba, dtype=float)
    k = len(classes)
    pred = proba.argmax(axis=1)
    out: dict[str, Any] = {
        "n": int(y.size),
        "classes": [str(c) for c in classes],
        "class_counts": np.bincount(y, minlength=k).tolist(),
    }
    if k == 2:
        p1 = proba[:, 1]
        auc = roc_auc(y, p1)
        ci = bootstrap_ci(roc_auc, (y, p1), groups=groups, n_boot=n_boot, level=level, seed=seed)
        out["f1"] = float(f1_score(y, pred, zero_division=0))
        out["brier"] = float(np.mean((p1 - y) ** 2))
        out["calibration"] = _calibration(y, p1, bins)
    else:

        def auc_ovr(yy: np.ndarray, pp: np.ndarray) -> float:
            if len(np.unique(yy)) < k:
                return math.nan
            return float(roc_auc_score(yy, pp, multi_class="ovr", average="macro", labels=np.arange(k)))

        auc = auc_ovr(y, proba)
        ci = bootstrap_ci(auc_ovr, (y, proba), groups=groups, n_boot=n_boot, level=level, seed=seed)
        out["f1"] = float(f1_score(y, pred, average="macro", zero_division=0))
        out["brier"] = float(np.mean(np.sum((proba - np.eye(k)[y]) ** 2, axis=1)))
    out["roc_auc"] = auc
    out["roc_auc_ci"] = list(ci)
    out["balanced_accuracy"] = float(balanced_accuracy_score(y, pred))
    out["confusion_matrix"] = confusion_matrix(y, pred, labels=np.arange(k)).tolist()
    return out


def regression_metrics(
    y: np.ndarray,
    yhat: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """R2 (with a bootstrap CI), MAE and RMSE."""
    from sklearn.metrics import mean_absolute_error, r2_score

    y = np.asarray(y, dtype=float)
    yhat = np.asarray(yhat, dtype=float)

    def r2(a: np.ndarray, b: np.ndarray) -> float:
        return float(r2_score(a, b)) if np.ptp(a) > 0 else math.nan

    return {
        "n": int(y.size),
        "r2": r2(y, yhat),
        "r2_ci": list(bootstrap_ci(r2, (y, yhat), groups=groups, n_boot=n_boot, level=level, seed=seed)),
        "mae": float(mean_absolute_error(y, yhat)),
        "rmse": float(np.sqrt(np.mean((y - yhat) ** 2))),
    }


def survival_metrics(
    time: np.ndarray,
    event: np.ndarray,
    risk: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Harrell's C-index (with a bootstrap CI) and the number of events."""
    time = np.asarray(time, dtype=float)
    event = np.asarray(event).astype(int)
    risk = np.asarray(risk, dtype=float)
    return {
        "n": int(time.size),
        "events": int(event.sum()),
        "c_index": concordance_index(time, event, risk),
        "c_index_ci": list(
            bootstrap_ci(concordance_index, (time, event, risk), groups=groups, n_boot=n_boot, level=level, seed=seed)
        ),
    }


def clustering_metrics(
    scores: np.ndarray, labels: np.ndarray, *, target: np.ndarray | None = None, max_rows: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """Silhouette on the PCA scores (on at most ``max_rows`` sampled rows), cluster sizes,
    and the adjusted Rand index against ``target`` when one is given."""
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    labels = np.asarray(labels, dtype=int)
    out: dict[str, Any] = {"n": int(labels.size), "cluster_sizes": np.bincount(labels).tolist()}
    n_clusters = len(np.unique(labels))
    out["silhouette"] = (
        float(silhouette_score(scores, labels, sample_size=min(max_rows, labels.size), random_state=seed))
        if 1 < n_clusters < labels.size
        else math.nan
    )
    if target is not None:
        out["adjusted_rand"] = float(adjusted_rand_score(np.asarray(target), labels))
    return out
