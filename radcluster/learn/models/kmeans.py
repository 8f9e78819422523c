"""k-means clustering of the (PCA) scores: scikit-learn's on gathered scores, dask-ml's above
``max_gather_mb``; saved as its centres in ``.npz``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from .._arrays import as_dask, blockwise
from . import ModelFamily, check_model, register


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
        X = as_dask(X).rechunk({1: -1})
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

        return blockwise(X, nearest, None)

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


def _param_names(task: str) -> list[str]:
    from sklearn.cluster import KMeans

    return list(KMeans().get_params())


register(
    ModelFamily(
        name="kmeans",
        tasks=("clustering",),
        description="k-means clusters of the PCA scores (no target needed)",
        make=lambda task, params, *, early_stopping_rounds, max_gather_mb, random_state: KMeansModel(
            params=params, max_gather_mb=max_gather_mb, random_state=random_state
        ),
        param_names=_param_names,
        format="npz",
        load=lambda folder, meta, trusted: KMeansModel.load(folder, meta),
        defaults={"n_clusters": 2, "n_init": 10},
    )
)
