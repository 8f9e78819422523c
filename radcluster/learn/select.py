"""Feature selection fitted on one training fold: the ``select:`` step of a training.

:class:`Selector` runs on the fold's preprocessed (imputed, harmonised, scaled) training
matrix, gathered to the client, after the variance filters and before PCA; the
:class:`~.preprocess.Preprocessor` keeps only what it selects, so the held-out rows, the
saved version and predictions see exactly the fold's choice. Steps, in order:

1. ``cluster``: hierarchical clustering (scipy, average linkage on ``1 - |r|``) cut at
   ``|r| >= cluster``; each cluster keeps its most relevant feature.
2. ``method``:

   - ``univariate``: the ``k`` most relevant features, after a Benjamini-Hochberg ``q``
     threshold when one is set. Relevance: ``|AUC - 0.5|`` (binary; Mann-Whitney p),
     the ANOVA F (multiclass), ``|r|`` (regression), ``|C - 0.5|`` with Harrell's C
     (survival; the ``q`` threshold then fits a Cox model per feature, statsmodels).
   - ``lasso``: the non-zero coefficients of an L1 model whose penalty is chosen by an
     inner 3-fold cross-validation on the fold (scikit-learn's ``LogisticRegressionCV`` /
     ``LassoCV``; survival: scikit-survival's Coxnet with ``l1_ratio=1``), at most ``k``
     (the largest ``|coef|``).
   - ``mrmr``: minimum redundancy maximum relevance, the difference form (MID, Peng et al.
     2005), with mutual information estimated under a Gaussian copula (Ince et al. 2017):
     relevance ``I(x; y)``, redundancy the mean ``I(x; s)`` over the features already
     selected, ``k`` features greedily. Classification and regression targets only.

``mrmr-selection`` (PyPI) was not used: its default quotient score divides relevance by
redundancy floored at 0.001, so a noise feature uncorrelated with the selected ones beats a
relevant one (it picks noise second and third on a simple planted example), and importing
it silences every warning of the process (``warnings.filterwarnings("ignore")``).
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.base import BaseEstimator

from ..errors import ModelError

__all__ = ["Selector", "relevance"]

METHODS = ("none", "univariate", "lasso", "mrmr")


def _split(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=float)
    return np.abs(y), (y > 0).astype(int)


def relevance(Z: np.ndarray, y: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(relevance, p)`` of every column of ``Z`` for the target ``y`` (p None when not computed).

    ``y`` is radcluster's model-ready target: class indices, values, or signed survival
    times (negative: censored).
    """
    from scipy.stats import mannwhitneyu

    Z = np.asarray(Z, dtype=float)
    if task == "binary":
        from sklearn.metrics import roc_auc_score

        y = np.asarray(y).astype(int)
        auc = np.array([roc_auc_score(y, z) if np.ptp(z) > 0 else 0.5 for z in Z.T])
        p = mannwhitneyu(Z[y == 1], Z[y == 0], axis=0).pvalue
        return np.abs(auc - 0.5), np.nan_to_num(p, nan=1.0)
    if task == "multiclass":
        from sklearn.feature_selection import f_classif

        f, p = f_classif(Z, np.asarray(y).astype(int))
        return np.nan_to_num(f), np.nan_to_num(p, nan=1.0)
    if task == "regression":
        from sklearn.feature_selection import f_regression, r_regression

        r = r_regression(Z, np.asarray(y, dtype=float))
        return np.nan_to_num(np.abs(r)), np.nan_to_num(f_regression(Z, y)[1], nan=1.0)
    if task == "survival":
        from .survival import concordance_index

        time, event = _split(y)
        c = np.array([concordance_index(time, event, z) for z in Z.T])
        return np.abs(np.nan_to_num(c, nan=0.5) - 0.5), None
    raise ModelError(f"select: no feature relevance for task {task!r}")


def _copula_normal(a: np.ndarray) -> np.ndarray:
    """Columns of ``a`` turned into standard normal scores by their ranks (Gaussian copula)."""
    from scipy.special import ndtri
    from scipy.stats import rankdata

    return ndtri(rankdata(a, axis=0) / (a.shape[0] + 1))


def _gc_mi_features(G: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Gaussian-copula mutual information (nats) of every column of ``G`` with ``g``."""
    r = np.clip(np.corrcoef(G.T, g)[-1, :-1], -0.999999, 0.999999)
    return -0.5 * np.log1p(-(r**2))


def _gc_mi_classes(G: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Gaussian-copula MI of every column with a discrete ``y``: H(x) - sum_c p(c) H(x | c)."""
    total = np.log(G.var(axis=0) + 1e-12)
    within = np.zeros(G.shape[1])
    for c in np.unique(y):
        rows = y == c
        within += rows.mean() * np.log(G[rows].var(axis=0) + 1e-12)
    return np.maximum(0.5 * (total - within), 0.0)


class Selector(BaseEstimator):
    """Feature selection on one training fold (see the module docstring).

    Parameters
    ----------
    task : str
        The training task (binary, multiclass, regression, survival).
    method : {'none', 'univariate', 'lasso', 'mrmr'}, default 'none'
    k : int or None, default 10
    q : float or None, default None
    cluster : float or None, default None
    random_state : int, default 0

    Attributes
    ----------
    support_ : ndarray of int
        Columns kept, in input order.
    relevance_ : ndarray of shape (n_features,)
    """

    def __init__(
        self,
        *,
        task: str = "binary",
        method: str = "none",
        k: int | None = 10,
        q: float | None = None,
        cluster: float | None = None,
        random_state: int = 0,
    ):
        self.task = task
        self.method = method
        self.k = k
        self.q = q
        self.cluster = cluster
        self.random_state = random_state

    def fit(self, Z: np.ndarray, y: np.ndarray):
        if self.method not in METHODS:
            raise ModelError(f"select.method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.method == "mrmr" and self.task not in ("binary", "multiclass", "regression"):
            raise ModelError(
                f"select.method 'mrmr' needs a classification or regression target, not {self.task!r}: "
                "use 'univariate' or 'lasso'"
            )
        Z = np.asarray(Z, dtype=float)
        rel, p = relevance(Z, y, self.task)
        self.relevance_ = rel
        keep = np.arange(Z.shape[1])
        if self.cluster is not None and keep.size > 1:
            keep = self._cluster(Z, rel)
        if self.method == "univariate":
            keep = self._univariate(Z, y, rel, p, keep)
        elif self.method == "lasso":
            keep = self._lasso(Z, y, keep)
        elif self.method == "mrmr":
            keep = self._mrmr(Z, y, keep)
        if keep.size == 0:
            raise ModelError(f"select: no feature passed ({self.method}, q={self.q}) on this training fold")
        self.support_ = np.sort(keep)
        return self

    def _cluster(self, Z: np.ndarray, rel: np.ndarray) -> np.ndarray:
        from scipy.cluster.hierarchy import fcluster, linkage
        from scipy.spatial.distance import squareform

        with np.errstate(invalid="ignore"):
            corr = np.nan_to_num(np.corrcoef(Z.T))
        dist = np.clip(1 - np.abs(corr), 0, None)
        np.fill_diagonal(dist, 0)
        labels = fcluster(linkage(squareform(dist, checks=False), "average"), 1 - self.cluster, "distance")
        return np.array([np.flatnonzero(labels == c)[np.argmax(rel[labels == c])] for c in np.unique(labels)])

    def _univariate(self, Z, y, rel, p, keep) -> np.ndarray:
        if self.q is not None:
            from scipy.stats import false_discovery_control

            if p is None:  # survival: Cox Wald p of each remaining feature
                from .survival import screen_survival

                time, event = _split(y)
                table = screen_survival(Z[:, keep], time, event, [str(j) for j in keep])
                p_keep = table["p"].fillna(1.0).to_numpy()
            else:
                p_keep = p[keep]
            keep = keep[false_discovery_control(p_keep, method="bh") <= self.q]
        order = keep[np.argsort(-rel[keep], kind="stable")]
        return order[: self.k] if self.k else order

    def _lasso(self, Z, y, keep) -> np.ndarray:
        Zk = Z[:, keep]
        if self.task == "survival":
            from .models import make_model

            lasso = make_model("coxnet", "survival", {"l1_ratio": 1.0}, random_state=self.random_state)
            coef = lasso.fit(Zk, y).coef_
        elif self.task in ("binary", "multiclass"):
            from sklearn.linear_model import LogisticRegressionCV

            est = LogisticRegressionCV(
                Cs=10,
                l1_ratios=(1.0,),
                solver="saga",
                cv=3,
                max_iter=5000,
                scoring="neg_log_loss",
                random_state=self.random_state,
                use_legacy_attributes=False,
            ).fit(Zk, np.asarray(y).astype(int))
            coef = np.abs(np.atleast_2d(est.coef_)).max(axis=0)
        else:
            from sklearn.linear_model import LassoCV

            coef = LassoCV(cv=3, random_state=self.random_state).fit(Zk, np.asarray(y, dtype=float)).coef_
        nz = np.flatnonzero(np.abs(coef) > 1e-10)
        nz = nz[np.argsort(-np.abs(coef[nz]), kind="stable")]
        return keep[nz[: self.k] if self.k else nz]

    def _mrmr(self, Z, y, keep) -> np.ndarray:
        G = _copula_normal(Z[:, keep])
        if self.task == "regression":
            rel = _gc_mi_features(G, _copula_normal(np.asarray(y, dtype=float)[:, None])[:, 0])
        else:
            rel = _gc_mi_classes(G, np.asarray(y).astype(int))
        with np.errstate(invalid="ignore"):
            corr = np.nan_to_num(np.corrcoef(G.T))
        mi = -0.5 * np.log1p(-(np.clip(corr, -0.999999, 0.999999) ** 2))
        k = min(self.k or keep.size, keep.size)
        chosen = [int(np.argmax(rel))]
        while len(chosen) < k:
            score = rel - mi[:, chosen].mean(axis=1)
            score[chosen] = -math.inf
            chosen.append(int(np.argmax(score)))
        return keep[np.array(chosen)]
