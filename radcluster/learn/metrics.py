"""Evaluation metrics on out-of-fold predictions: plain numpy/scikit-learn, no Dask.

Every function takes small in-memory arrays (one value per evaluated row), so metrics never
touch the feature matrix. Confidence intervals are percentile bootstraps that resample
*groups* (patients) rather than rows when a patient has several rows, so that the interval
reflects the number of independent patients. Survival metrics (scikit-survival's) are in
:mod:`.survival` and re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .survival import concordance_index, survival_metrics

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


def _resample_rows(group_codes: np.ndarray, n_groups: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices of one group-level bootstrap resample (rows of a drawn group repeat together)."""
    counts = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)
    return np.repeat(np.arange(group_codes.size), counts[group_codes])


def bootstrap_intervals(
    values: Callable[[np.ndarray], dict[str, float]],
    n: int,
    *,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Percentile bootstrap interval of every value ``values(rows)`` returns, over resamples
    of the ``n`` rows (of whole ``groups`` when given).

    Resamples where a value is undefined (one class drawn) are skipped for it; a value with
    fewer than ten defined resamples gets NaN bounds; none at all when ``n_boot`` is 0.
    """
    if n_boot <= 0:
        return {}
    codes = np.unique(np.asarray(groups), return_inverse=True)[1] if groups is not None else np.arange(n)
    n_groups = int(codes.max()) + 1 if n else 0
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n_boot):
        for key, value in values(_resample_rows(codes, n_groups, rng)).items():
            if np.isfinite(value):
                draws.setdefault(key, []).append(value)
    tail = (1 - level) / 2 * 100
    return {
        k: [float(x) for x in np.percentile(v, [tail, 100 - tail])] if len(v) >= 10 else [math.nan, math.nan]
        for k, v in draws.items()
    }


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
    return bootstrap_cis({"metric": metric}, arrays, groups=groups, n_boot=n_boot, level=level, seed=seed)["metric"]


def bootstrap_cis(
    metrics: dict[str, Callable[..., float]],
    arrays: tuple[np.ndarray, ...],
    *,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """:func:`bootstrap_ci` of several metrics, each computed on the same resamples (drawn
    once: on 40,000 rows drawing them cost as much as the metrics)."""

    def values(idx: np.ndarray) -> dict[str, float]:
        drawn = [a[idx] for a in arrays]
        return {name: metric(*drawn) for name, metric in metrics.items()}

    ci = bootstrap_intervals(values, len(arrays[0]), groups=groups, n_boot=n_boot, level=level, seed=seed)
    nan = (math.nan, math.nan)
    return {name: (ci[name][0], ci[name][1]) if name in ci else nan for name in metrics}


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
    """ROC AUC, balanced accuracy, F1, Brier score (each with a bootstrap CI), calibration.

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

        def auc_of(yy: np.ndarray, pp: np.ndarray) -> float:
            return roc_auc(yy, pp[:, 1])

        out["f1"] = float(f1_score(y, pred, zero_division=0))
        out["brier"] = float(np.mean((p1 - y) ** 2))
        out["calibration"] = _calibration(y, p1, bins)
    else:

        def auc_of(yy: np.ndarray, pp: np.ndarray) -> float:
            if len(np.unique(yy)) < k:
                return math.nan
            return float(roc_auc_score(yy, pp, multi_class="ovr", average="macro", labels=np.arange(k)))

        auc = auc_of(y, proba)
        out["f1"] = float(f1_score(y, pred, average="macro", zero_division=0))
        out["brier"] = float(np.mean(np.sum((proba - np.eye(k)[y]) ** 2, axis=1)))
    out["roc_auc"] = auc
    out["balanced_accuracy"] = float(balanced_accuracy_score(y, pred))
    out["confusion_matrix"] = confusion_matrix(y, pred, labels=np.arange(k)).tolist()

    # Every reported metric gets its patient-bootstrap interval, all on the same resamples.
    # Binary F1 and balanced accuracy are counted here: scikit-learn's functions (the same
    # formulas) spend milliseconds checking their input, hundreds of times per interval.
    def f1(yy: np.ndarray, pp: np.ndarray) -> float:
        hat = pp.argmax(axis=1)
        if k > 2:
            return float(f1_score(yy, hat, average="macro", zero_division=0))
        tp, wrong = np.count_nonzero(hat & yy), np.count_nonzero(hat != yy)
        return 2 * tp / (2 * tp + wrong) if tp + wrong else 0.0

    def balanced(yy: np.ndarray, pp: np.ndarray) -> float:
        hat = pp.argmax(axis=1)
        if k > 2:
            return float(balanced_accuracy_score(yy, hat)) if len(np.unique(yy)) > 1 else math.nan
        positives = np.count_nonzero(yy)
        if positives in (0, yy.size):
            return math.nan
        tp, tn = np.count_nonzero(hat & yy), np.count_nonzero((hat | yy) == 0)
        return (tn / (yy.size - positives) + tp / positives) / 2

    def brier(yy: np.ndarray, pp: np.ndarray) -> float:
        return (
            float(np.mean(np.sum((pp - np.eye(k)[yy]) ** 2, axis=1))) if k > 2 else float(np.mean((pp[:, 1] - yy) ** 2))
        )

    cis = bootstrap_cis(
        {"roc_auc": auc_of, "f1": f1, "balanced_accuracy": balanced, "brier": brier},
        (y, proba),
        groups=groups,
        n_boot=n_boot,
        level=level,
        seed=seed,
    )
    for key, ci in cis.items():
        out[f"{key}_ci"] = list(ci)
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
    """R2, MAE and RMSE, each with a bootstrap CI."""
    from sklearn.metrics import mean_absolute_error, r2_score

    y = np.asarray(y, dtype=float)
    yhat = np.asarray(yhat, dtype=float)

    def r2(a: np.ndarray, b: np.ndarray) -> float:
        return float(r2_score(a, b)) if np.ptp(a) > 0 else math.nan

    def rmse(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.sqrt(np.mean((a - b) ** 2)))

    return {
        "n": int(y.size),
        "r2": r2(y, yhat),
        "r2_ci": list(bootstrap_ci(r2, (y, yhat), groups=groups, n_boot=n_boot, level=level, seed=seed)),
        "mae": float(mean_absolute_error(y, yhat)),
        "mae_ci": list(
            bootstrap_ci(mean_absolute_error, (y, yhat), groups=groups, n_boot=n_boot, level=level, seed=seed)
        ),
        "rmse": float(np.sqrt(np.mean((y - yhat) ** 2))),
        "rmse_ci": list(bootstrap_ci(rmse, (y, yhat), groups=groups, n_boot=n_boot, level=level, seed=seed)),
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
