"""Preprocessing fitted on training rows only, on dask arrays without gathering the matrix.

:class:`Preprocessor`: finite check and imputation, dropping of mostly-missing, constant and
near-constant features, optional ComBat harmonisation, optional correlation filter, scaling
to zero mean and unit variance, PCA (dask's SVD solvers on one persisted float32 copy of the scaled
training rows). Only per-feature statistics (vectors, and a features x features matrix for
the correlation filter) and the components come back to the client.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from ..errors import ModelError
from ..spec.training import pca_option
from ._arrays import array_module, as_dask
from .combat import ComBat

logger = logging.getLogger(__name__)


def _single_column_block(X):
    """dask-ml wants every row block to hold all columns (a pivoted matrix has several);
    rows per block are then chosen by dask to keep blocks near its default size."""
    if array_module(X) is np or X.numblocks[1] == 1:
        return X
    return X.rechunk({0: "auto", 1: -1})


def _column_medians(X):
    """NaN-ignoring median of every column of dask ``X`` (all rows of a few columns per task).

    ``dask.array.nanmedian`` passes its axis to numpy as a list, which numpy 2 rejects.
    """
    import warnings

    def block_median(b: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: NaN, dropped later
            return np.nanmedian(b, axis=0, keepdims=True)

    cols = X.rechunk({0: -1, 1: "auto"})
    return cols.map_blocks(block_median, chunks=((1,), cols.chunks[1]), dtype=float)[0]


class Preprocessor(BaseEstimator, TransformerMixin):
    """Everything between the stored features and the model, fitted on training rows only.

    Steps, in order: non-finite values become missing; features missing in more than
    ``max_missing_fraction`` of the rows are dropped, the rest imputed (median or mean);
    optional ComBat by batch; features are dropped when constant or near-constant (standard
    deviation at most ``min_relative_std`` times the absolute mean, or at least
    ``max_mode_fraction`` of the rows equal to the feature's median); an optional
    correlation filter keeps the first feature (store order) of every pair with
    ``|r| > max_correlation``; scaling (as scikit-learn's ``StandardScaler``); PCA with ``pca`` components (an
    int) or as many as explain that share of the variance (a float in (0, 1); at most
    ``pca_max_components`` are fitted, since the randomized solver needs a number).

    Parameters
    ----------
    impute : {'median', 'mean'}, default 'median'
    max_missing_fraction : float, default 0.5
    max_mode_fraction : float or None, default 0.95
    min_relative_std : float, default 1e-6
    max_correlation : float or None, default None
    scale : bool, default True
    pca : int, float or None, default None
    pca_max_components : int, default 50
    pca_solver : {'auto', 'tsqr', 'randomized'}, default 'auto'
        'auto' takes the exact 'tsqr' unless the matrix is large and few components are
        wanted.
    select : dict or None, default None
        Parameters of a :class:`~.select.Selector` (``task``, ``method``, ``k``, ``q``,
        ``cluster``) run on the scaled training rows after the filters, before PCA; needs
        ``y`` in :meth:`fit`.
    random_state : int, default 0

    Attributes
    ----------
    n_features_in_ : int
    columns_ : ndarray of int
        Input columns kept after the missing-value check.
    impute_values_ : ndarray
        One per kept column.
    combat_ : ComBat or None
    support_ : ndarray of int
        Indices into ``columns_`` kept by the variance and correlation filters.
    scale_mean_, scale_scale_ : ndarray or None
    pca_components_, pca_mean_ : ndarray or None
        All fitted components; the first ``n_components_`` are used.
    explained_variance_ratio_ : ndarray or None
    n_components_ : int or None
    dropped_ : dict
        How many features each step removed.
    """

    def __init__(
        self,
        *,
        impute: str = "median",
        max_missing_fraction: float = 0.5,
        max_mode_fraction: float | None = 0.95,
        min_relative_std: float = 1e-6,
        max_correlation: float | None = None,
        scale: bool = True,
        pca: int | float | None = None,
        pca_max_components: int = 50,
        pca_solver: str = "auto",
        select: dict[str, Any] | None = None,
        random_state: int = 0,
    ):
        self.impute = impute
        self.max_missing_fraction = max_missing_fraction
        self.max_mode_fraction = max_mode_fraction
        self.min_relative_std = min_relative_std
        self.max_correlation = max_correlation
        self.scale = scale
        self.pca = pca
        self.pca_max_components = pca_max_components
        self.pca_solver = pca_solver
        self.select = select
        self.random_state = random_state

    def _validate(self) -> None:
        if self.impute not in ("median", "mean"):
            raise ModelError(f"Preprocessor: 'impute' must be 'median' or 'mean'; got {self.impute!r}")
        if self.pca_solver not in ("auto", "tsqr", "randomized"):
            raise ModelError(f"Preprocessor: 'pca_solver' must be auto, tsqr or randomized; got {self.pca_solver!r}")
        try:
            pca_option(self.pca)
        except ValueError as err:
            raise ModelError(f"Preprocessor: 'pca' {err}; got {self.pca!r}") from None

    def fit(self, X, y=None, *, batch: np.ndarray | None = None):
        self._fit(X, y, batch)
        return self

    def fit_transform(self, X, y=None, *, batch: np.ndarray | None = None):
        """Fit on ``X`` and return ``X`` preprocessed (dask in, dask out).

        With PCA, the scores come from the scaled matrix the fit already holds in worker
        memory, so ``X`` is not read and preprocessed a second time.
        """
        centred = self._fit(X, y, batch)
        if centred is None or array_module(X) is np:
            return self.transform(X, batch=batch)
        return centred @ self.pca_components_[: self.n_components_].T

    def _fit(self, X, y, batch: np.ndarray | None):
        """Fit; with PCA, returns the centred training rows it was fitted on (persisted)."""
        import dask
        import dask.array as da

        self._validate()
        X = _single_column_block(as_dask(X).astype(float))
        n, p = X.shape
        if n < 3:
            raise ModelError(f"Preprocessor: {n} training row(s); need at least 3")
        self.n_features_in_ = p
        dropped: dict[str, int] = {}
        Xf = da.where(da.isfinite(X), X, np.nan)
        missing = da.isnan(Xf).sum(axis=0)
        need_median = self.impute == "median" or self.max_mode_fraction is not None
        median = _column_medians(Xf) if need_median else None
        mean = da.nanmean(Xf, axis=0)
        spread = da.nanvar(Xf, axis=0) if batch is None else None  # see the scaler below
        with np.errstate(all="ignore"):
            missing, median, mean, spread = dask.compute(missing, median, mean, spread)
        centre = median if self.impute == "median" else mean
        ok = (missing / n <= self.max_missing_fraction) & np.isfinite(centre)
        dropped["missing"] = int((~ok).sum())
        self.columns_ = np.flatnonzero(ok)
        self.impute_values_ = centre[self.columns_]
        # Imputation is cheap elementwise work, recomputed by the few passes below rather than
        # held in worker memory beside the (persisted) input.
        Xi = self._impute(X)

        self.combat_ = None
        if batch is not None:
            self.combat_ = ComBat().fit(Xi, batch=batch)
            Xi = self.combat_.transform(Xi, batch=batch)

        # The mean and standard deviation of every remaining column scale it and drive the
        # constant and correlation filters. Without ComBat they follow from the observed
        # values' (parallel axes: c rows observed with mean m and variance v, n - c set to f),
        # with no second pass over the data; ComBat's output goes through dask-ml's scaler.
        if self.combat_ is None:
            observed, m, f = n - missing[self.columns_], mean[self.columns_], self.impute_values_
            mu = (observed * m + (n - observed) * f) / n
            var = (observed * (spread[self.columns_] + (m - mu) ** 2) + (n - observed) * (f - mu) ** 2) / n
        else:
            from dask_ml.preprocessing import StandardScaler

            scaler = StandardScaler().fit(Xi)
            mu, var = (np.asarray(v, dtype=float) for v in dask.compute(scaler.mean_, scaler.var_))
        sd = np.sqrt(var)
        keep = sd > np.maximum(self.min_relative_std * np.abs(mu), 1e-12)
        dropped["constant"] = int((~keep).sum())
        if self.max_mode_fraction is not None:
            at_median = dask.compute((self._impute(X) == median[self.columns_]).mean(axis=0))[0]
            near = keep & (at_median >= self.max_mode_fraction)
            dropped["near_constant"] = int(near.sum())
            keep &= ~near
        support = np.flatnonzero(keep)
        if self.max_correlation is not None and support.size > 1:
            support = self._correlation_filter(Xi, support, mu, sd)
            dropped["correlated"] = int(keep.sum() - support.size)
        if support.size == 0:
            raise ModelError("Preprocessor: every feature was dropped as missing, constant or near-constant")
        if self.select is not None and y is not None:
            from .select import Selector

            # The selection sees the fold's scaled training rows, gathered (features x rows
            # left after the filters; selection methods are in-memory scikit-learn/scipy).
            Z = (Xi[:, support] - mu[support]) / sd[support]
            Z = dask.compute(Z)[0] if array_module(Z) is not np else Z
            chosen = Selector(**self.select, random_state=self.random_state).fit(Z, y).support_
            dropped["not_selected"] = int(support.size - chosen.size)
            support = support[chosen]
        self.support_ = support
        self.dropped_ = dropped
        Xs = Xi[:, support]

        self.scale_mean_ = self.scale_scale_ = None
        if self.scale:
            self.scale_mean_ = mu[support]
            self.scale_scale_ = sd[support]  # all > 0: constant features are gone
            Xs = (Xs - self.scale_mean_) / self.scale_scale_

        self.pca_components_ = self.pca_mean_ = self.explained_variance_ratio_ = self.n_components_ = None
        if self.pca is None:
            return None
        # PCA's mean is the mean of the rows it sees: 0 once scaled, the feature means if not;
        # its total variance follows from the scaler's variances (no pass over the data).
        self.pca_mean_ = np.zeros(support.size) if self.scale else mu[support]
        variance = np.ones(support.size) if self.scale else sd[support] ** 2
        return self._fit_pca(Xs if self.scale else Xs - self.pca_mean_, variance)

    def _impute(self, X):
        xp = array_module(X)
        X = X[:, self.columns_]
        X = xp.where(xp.isfinite(X), X, np.nan)
        return xp.where(xp.isnan(X), self.impute_values_, X)

    def _correlation_filter(self, X, support, mu, sd) -> np.ndarray:
        import dask

        Z = (X[:, support] - mu[support]) / sd[support]
        corr = dask.compute(Z.T @ Z)[0] / X.shape[0] if array_module(X) is not np else Z.T @ Z / X.shape[0]
        kept: list[int] = []
        for j in range(support.size):
            if all(abs(corr[j, i]) <= self.max_correlation for i in kept):
                kept.append(j)
        return support[kept]

    def _fit_pca(self, Xc, variance: np.ndarray):
        """PCA of the centred (lazy) training rows ``Xc``, whose columns have ``variance``
        (ddof 0); returns ``Xc`` as persisted.

        ``Xc`` is computed once, fused with the imputation and scaling, and held in float32:
        every pass of the SVD (about ten for the randomized solver) reads that one copy. The
        values are scaled or centred, so float32 keeps 7 significant digits of each (XGBoost
        reads its input as float32 anyway). dask-ml's PCA is not used: it centres its input
        again inside the solver's graph, and dask holds that second, float64 copy through all
        the passes.
        """
        import dask
        import dask.array as da

        n, p = Xc.shape
        wanted = self.pca if isinstance(self.pca, int) else self.pca_max_components
        k = int(min(wanted, n - 1, p))
        if isinstance(self.pca, int) and k < self.pca:
            logger.warning("PCA: %d components asked, only %d possible with %d rows and %d features", self.pca, k, n, p)
        solver = self.pca_solver
        if solver == "auto":
            solver = "randomized" if n * p > 5_000_000 and k < 0.2 * min(n, p) else "tsqr"
        Xc = Xc.astype(np.float32).rechunk({1: -1})
        if solver == "tsqr" and Xc.chunks[0][0] < p:  # tsqr wants tall blocks
            Xc = Xc.rechunk({0: max(p, min(n, 4096))})
        Xc = Xc.persist()
        if solver == "tsqr":
            _, s, v = da.linalg.svd(Xc)
        else:
            # Orthonormalised between the power iterations ("QR"): unnormalised ones, dask's
            # default, lose the smaller components to rounding, and in float32 can overflow.
            _, s, v = da.linalg.svd_compressed(
                Xc, k, iterator="QR", n_power_iter=4, seed=self.random_state, compute=True
            )
        s, v = dask.compute(s[:k], v[:k])
        self.pca_components_ = np.asarray(v, dtype=float)
        # explained variance s^2 / (n - 1) over the total, sum(variance) * n / (n - 1)
        ratio = np.asarray(s, dtype=float) ** 2 / (n * variance.sum())
        self.explained_variance_ratio_ = ratio
        if isinstance(self.pca, float):
            cum = np.cumsum(ratio)
            reached = np.flatnonzero(cum >= self.pca - 1e-12)
            if reached.size == 0:
                logger.warning(
                    "PCA: %d components explain %.3f of the variance, below %.3f; raise pca_max_components to reach it",
                    k,
                    cum[-1],
                    self.pca,
                )
                self.n_components_ = k
            else:
                self.n_components_ = int(reached[0]) + 1
        else:
            self.n_components_ = k
        return Xc

    def transform(self, X, *, batch: np.ndarray | None = None):
        """The preprocessed matrix (dask in, dask out; numpy in, numpy out)."""
        if not hasattr(self, "support_"):
            raise ModelError("Preprocessor is not fitted")
        if X.shape[1] != self.n_features_in_:
            raise ModelError(f"Preprocessor was fitted on {self.n_features_in_} features, got {X.shape[1]}")
        X = self._impute(_single_column_block(X.astype(float)))
        if self.combat_ is not None:
            if batch is None:
                raise ModelError("Preprocessor was fitted with ComBat: the batch of every row is needed")
            X = self.combat_.transform(X, batch=batch)
        X = X[:, self.support_]
        if self.scale_mean_ is not None:
            X = (X - self.scale_mean_) / self.scale_scale_
        if self.pca_components_ is not None:
            X = (X - self.pca_mean_) @ self.pca_components_[: self.n_components_].T
        return X

    def feature_names_out(self, names: list[str]) -> list[str]:
        if self.pca_components_ is not None:
            return [f"PC{i + 1}" for i in range(self.n_components_)]
        return [names[i] for i in self.columns_[self.support_]]

    def kept_inputs(self) -> np.ndarray:
        """Indices of the input features that reach the model (or its PCA)."""
        return self.columns_[self.support_]

    def input_importance(self, importances: np.ndarray) -> np.ndarray:
        """Importances of the model's inputs carried back to the input features.

        Through PCA, a feature gets the importance-weighted sum of its absolute loadings;
        dropped features get 0.
        """
        imp = np.asarray(importances, dtype=float)
        if self.pca_components_ is not None:
            imp = np.abs(self.pca_components_[: self.n_components_]).T @ imp
        out = np.zeros(self.n_features_in_)
        out[self.columns_[self.support_]] = imp
        total = out.sum()
        return out / total if total > 0 else out

    # -- safe serialisation: arrays and JSON, never pickles --------------------------------
    _ARRAYS = (
        "columns_",
        "impute_values_",
        "support_",
        "scale_mean_",
        "scale_scale_",
        "pca_components_",
        "pca_mean_",
        "explained_variance_ratio_",
    )
    _COMBAT = ("batches_", "alpha_", "sd_", "gamma_", "delta_")

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Fitted state as ``(arrays for .npz, JSON-able dict)``."""
        arrays = {k: getattr(self, k) for k in self._ARRAYS if getattr(self, k) is not None}
        if self.combat_ is not None:
            arrays.update({f"combat_{k}": getattr(self.combat_, k) for k in self._COMBAT})
        meta = {
            "params": self.get_params(),
            "n_features_in": self.n_features_in_,
            "n_components": self.n_components_,
            "dropped": self.dropped_,
            "combat": self.combat_ is not None,
        }
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Preprocessor:
        pre = cls(**meta["params"])
        for k in cls._ARRAYS:
            setattr(pre, k, arrays.get(k))
        pre.n_features_in_ = meta["n_features_in"]
        pre.n_components_ = meta["n_components"]
        pre.dropped_ = meta.get("dropped", {})
        pre.combat_ = None
        if meta.get("combat"):
            pre.combat_ = ComBat()
            for k in cls._COMBAT:
                setattr(pre.combat_, k, arrays[f"combat_{k}"])
            pre.combat_.batches_ = pre.combat_.batches_.astype(str)
        return pre
