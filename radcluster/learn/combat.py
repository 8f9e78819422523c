"""ComBat harmonisation of batch (site, scanner) effects on dask or numpy arrays."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from ..errors import ModelError
from ._arrays import array_module

__all__ = ["ComBat"]


def _codes_like(X, codes: np.ndarray):
    """``codes`` as an (n, 1) array chunked like the rows of ``X`` (dask) or as is (numpy)."""
    import dask.array as da

    codes = np.asarray(codes, dtype=np.int64)[:, None]
    return da.from_array(codes, chunks=(X.chunks[0], 1)) if isinstance(X, da.Array) else codes


class ComBat(BaseEstimator, TransformerMixin):
    """Parametric empirical-Bayes ComBat (Johnson, Li & Rabinovic 2007) without covariates.

    Each feature is standardised by the pooled within-batch variance; per-batch location
    (gamma) and scale (delta) estimates are shrunk towards priors shared by all features of
    the batch, and removed. Only per-batch sums and sums of squares are computed on the
    (dask) matrix. Fitted on training rows only; a batch absent from the training rows
    cannot be harmonised and is an error at transform time.

    Attributes
    ----------
    batches_ : ndarray of str
    alpha_ : ndarray of shape (n_features,)
        Grand mean.
    sd_ : ndarray of shape (n_features,)
        Pooled within-batch standard deviation.
    gamma_, delta_ : ndarray of shape (n_batches, n_features)
        Empirical-Bayes location and scale of each batch on the standardised scale.
    """

    def __init__(self, *, max_iter: int = 100, tol: float = 1e-4):
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X, y=None, *, batch: np.ndarray):
        import dask

        batch = np.asarray(batch).astype(str)
        if len(batch) != X.shape[0]:
            raise ModelError(f"ComBat: {len(batch)} batch labels for {X.shape[0]} rows")
        self.batches_, codes = np.unique(batch, return_inverse=True)
        counts = np.bincount(codes).astype(float)
        small = [str(b) for b, c in zip(self.batches_, counts, strict=True) if c < 2]
        if small:
            raise ModelError(f"ComBat needs at least 2 training rows per batch; batch(es) {small} have fewer")
        if len(self.batches_) < 2:
            raise ModelError(
                f"ComBat needs at least 2 batches; the training rows hold only {[str(b) for b in self.batches_]}"
            )
        xp = array_module(X)
        Xd = X.rechunk({1: -1}) if xp is not np else X
        onehot = _codes_like(Xd, codes)
        eye = np.eye(len(self.batches_))
        sums = (
            xp.map_blocks(lambda c: eye[c[:, 0]], onehot, chunks=(Xd.chunks[0], (len(eye),)), dtype=float)
            if xp is not np
            else eye[codes]
        ).T @ Xd
        sums = dask.compute(sums)[0] if xp is not np else sums
        means = sums / counts[:, None]

        def sq(x, c):
            return (x - means[c[:, 0]]) ** 2

        resid = xp.map_blocks(sq, Xd, onehot, dtype=float) if xp is not np else sq(Xd, onehot)
        ind = (
            xp.map_blocks(lambda c: eye[c[:, 0]], onehot, chunks=(Xd.chunks[0], (len(eye),)), dtype=float)
            if xp is not np
            else eye[codes]
        )
        ss = ind.T @ resid
        ss = dask.compute(ss)[0] if xp is not np else ss
        n = counts.sum()
        alpha = counts @ means / n
        var = ss.sum(axis=0) / n
        sd = np.sqrt(var)
        sd[~(sd > 0)] = 1.0
        g_hat = (means - alpha) / sd
        d_hat = ss / (counts[:, None] - 1) / sd**2
        self.gamma_, self.delta_ = self._shrink(g_hat, d_hat, ss, means, alpha, sd, counts)
        self.alpha_, self.sd_ = alpha, sd
        self.n_features_in_ = X.shape[1]
        return self

    def _shrink(self, g_hat, d_hat, ss, means, alpha, sd, counts):
        g_bar = g_hat.mean(axis=1, keepdims=True)
        t2 = g_hat.var(axis=1, ddof=1, keepdims=True) + 1e-12
        m = d_hat.mean(axis=1, keepdims=True)
        s2 = d_hat.var(axis=1, ddof=1, keepdims=True) + 1e-12
        a = (2 * s2 + m**2) / s2
        b = (m * s2 + m**3) / s2
        nb = counts[:, None]
        g, d = g_hat.copy(), d_hat.copy()
        for _ in range(self.max_iter):
            g_new = (nb * t2 * g_hat + d * g_bar) / (nb * t2 + d)
            sum2 = (ss + nb * (means - alpha - g_new * sd) ** 2) / sd**2
            d_new = (b + 0.5 * sum2) / (nb / 2 + a - 1)
            change = max(
                np.max(np.abs(g_new - g) / (np.abs(g) + 1e-12)), np.max(np.abs(d_new - d) / (np.abs(d) + 1e-12))
            )
            g, d = g_new, d_new
            if change < self.tol:
                break
        return g, np.maximum(d, 1e-12)

    def transform(self, X, *, batch: np.ndarray):
        batch = np.asarray(batch).astype(str)
        unseen = sorted(str(b) for b in set(batch) - set(self.batches_))
        if unseen:
            raise ModelError(
                f"ComBat: batch(es) {unseen} were not among the training batches "
                f"{[str(b) for b in self.batches_]}; they cannot be harmonised"
            )
        codes = np.searchsorted(self.batches_, batch)
        alpha, sd, g, sqrt_d = self.alpha_, self.sd_, self.gamma_, np.sqrt(self.delta_)

        def adjust(x, c):
            c = c[:, 0]
            return ((x - alpha) / sd - g[c]) / sqrt_d[c] * sd + alpha

        xp = array_module(X)
        if xp is np:
            return adjust(np.asarray(X, dtype=float), codes[:, None])
        X = X.rechunk({1: -1})
        return xp.map_blocks(adjust, X, _codes_like(X, codes), dtype=float)
