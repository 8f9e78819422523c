"""Cox proportional-hazards models from scikit-survival: ``cox`` and ``coxnet``.

========  ===================================================================================
cox       ``CoxPHSurvivalAnalysis``: Cox regression on the preprocessed (selected or PCA)
          features, with a small ridge penalty ``alpha`` so collinear inputs still converge
coxnet    ``CoxnetSurvivalAnalysis``: elastic-net penalised Cox (``l1_ratio``) for many
          features; unless ``alpha`` is given, the penalty is chosen on the training rows by
          an inner k-fold cross-validation over the regularisation path (Harrell's C), so the
          outer folds never see it
========  ===================================================================================

Both are fitted on the reduced matrix gathered to the client (refused above
``max_gather_mb``, like the scikit-learn models) and saved with skops under an explicit list
of trusted scikit-survival types. Their score is the linear predictor (log relative hazard),
computed blockwise from the coefficients; :meth:`CoxModel.predict_survival` gives survival
curves from the Breslow baseline (for the integrated Brier score).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from ...errors import ModelError
from .._arrays import blockwise, gather
from . import ModelFamily, check_model, register, skops_dump, skops_load

# What skops may rebuild when loading a Cox model; anything else is refused.
TRUSTED_TYPES = (
    "sksurv.functions.StepFunction",
    "sksurv.linear_model.coxph.BreslowEstimator",
    "sksurv.linear_model.coxph.CoxPHSurvivalAnalysis",
    "sksurv.linear_model.coxnet.CoxnetSurvivalAnalysis",
)
# coxnet parameters of radcluster's own: a fixed penalty instead of the inner search, and
# the inner folds of that search.
_COXNET_OWN = ("alpha", "inner_folds")


def split_target(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Times and events from radcluster's signed survival target (negative: censored)."""
    y = np.asarray(y, dtype=float)
    return np.abs(y), (y > 0).astype(int)


class CoxModel(BaseEstimator):
    """Cox regression (``cox``) or elastic-net Cox (``coxnet``) from scikit-survival.

    Parameters
    ----------
    name : {'cox', 'coxnet'}
    params : dict, optional
        scikit-survival parameters; for ``coxnet`` also ``alpha`` (a fixed penalty; default:
        chosen by inner cross-validation) and ``inner_folds`` (default 5).
    max_gather_mb : float, default 512
        Refuse to gather a larger training matrix.
    random_state : int, default 0
        Seeds the inner folds.

    Attributes
    ----------
    estimator_ : CoxPHSurvivalAnalysis or CoxnetSurvivalAnalysis
    coef_ : ndarray of shape (n_features,)
        Log hazard ratio per unit of each input (per SD when the inputs are standardised).
    offset_ : float
        Subtracted from ``X @ coef_`` (coxnet centres its inputs).
    alpha_ : float or None
        The penalty coxnet used.
    inner_c_index_ : list of float
        coxnet: mean inner-fold C-index along the path (when the penalty was searched).
    importances_ : ndarray of shape (n_features,)
        ``|coef_|``, normalised to sum 1.
    """

    def __init__(
        self,
        *,
        name: str = "cox",
        params: dict[str, Any] | None = None,
        max_gather_mb: float = 512.0,
        random_state: int = 0,
    ):
        self.name = name
        self.params = params
        self.max_gather_mb = max_gather_mb
        self.random_state = random_state

    def fit(self, X, y: np.ndarray, *, eval_set=None):
        from sksurv.linear_model import CoxPHSurvivalAnalysis

        from ..survival import surv_array

        params = dict(self.params or {})
        check_model(self.name, "survival", params)
        Xn = gather(X, model=self.name, max_mb=self.max_gather_mb)
        time, event = split_target(y)
        if not event.any():
            raise ModelError(f"model {self.name!r}: the training rows hold no event")
        self.alpha_ = None
        self.offset_ = 0.0
        with warnings.catch_warnings():
            # scikit-survival's Breslow baseline overflows harmlessly to survival 0 far out
            warnings.simplefilter("ignore", RuntimeWarning)
            if self.name == "cox":
                self.estimator_ = CoxPHSurvivalAnalysis(**params).fit(Xn, surv_array(time, event))
                coef = self.estimator_.coef_
            else:
                self.estimator_, self.alpha_ = self._coxnet(Xn, time, event, params)
                # coxnet centres its inputs: its linear predictor is X @ coef - offset at alpha_
                base = float(self.estimator_.predict(np.zeros((1, Xn.shape[1])), alpha=self.alpha_)[0])
                coef = self.estimator_.predict(np.eye(Xn.shape[1]), alpha=self.alpha_) - base
                self.offset_ = -base
        self.coef_ = np.asarray(coef, dtype=float).ravel()
        self.n_features_in_ = Xn.shape[1]
        total = np.abs(self.coef_).sum()
        self.importances_ = np.abs(self.coef_) / total if total > 0 else np.abs(self.coef_)
        return self

    def _coxnet(self, Xn, time, event, params):
        from sklearn.model_selection import StratifiedKFold
        from sksurv.linear_model import CoxnetSurvivalAnalysis

        from ..survival import concordance_index, surv_array

        alpha = params.pop("alpha", None)
        k = int(params.pop("inner_folds", 5))
        if alpha is not None:
            est = CoxnetSurvivalAnalysis(alphas=[float(alpha)], fit_baseline_model=True, **params)
            return est.fit(Xn, surv_array(time, event)), float(alpha)
        path = CoxnetSurvivalAnalysis(fit_baseline_model=True, **params).fit(Xn, surv_array(time, event))
        alphas = np.asarray(path.alphas_)
        k = max(2, min(k, int(event.sum()), int((1 - event).sum()) or k))
        scores = np.zeros(alphas.size)
        folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=self.random_state)
        for tr, te in folds.split(Xn, event):
            inner = CoxnetSurvivalAnalysis(alphas=alphas, **params).fit(Xn[tr], surv_array(time[tr], event[tr]))
            reached = set(np.asarray(inner.alphas_).tolist())
            for i, a in enumerate(alphas):
                # a fold whose path stopped early (all coefficients settled) scores chance there
                c = concordance_index(time[te], event[te], inner.predict(Xn[te], alpha=a)) if a in reached else 0.5
                scores[i] += 0.5 if np.isnan(c) else c
        self.inner_c_index_ = (scores / k).tolist()
        return path, float(alphas[int(np.argmax(scores))])

    def _linear(self, block: np.ndarray) -> np.ndarray:
        return np.asarray(block, dtype=float) @ self.coef_ - self.offset_

    def predict_scores(self, X):
        """Dask array (n,): the linear predictor (log relative hazard)."""
        return blockwise(X, self._linear, None)

    def predict_survival(self, X: np.ndarray, times: np.ndarray) -> np.ndarray:
        """(n, len(times)) survival probabilities from the Breslow baseline (numpy in and out);
        times beyond the training follow-up get the last value."""
        kw = {"alpha": self.alpha_} if self.name == "coxnet" else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            fns = self.estimator_.predict_survival_function(np.asarray(X, dtype=float), **kw)
        if not len(fns):
            return np.zeros((0, len(times)))
        lo, hi = fns[0].domain
        t = np.clip(np.asarray(times, dtype=float), lo, hi)
        return np.vstack([f(t) for f in fns])

    def save(self, folder: Path) -> dict[str, Any]:
        return {
            **skops_dump(self.estimator_, folder, self.name, TRUSTED_TYPES),
            "n_features": self.n_features_in_,
            "importances": self.importances_.tolist(),
            "coef": self.coef_.tolist(),
            "hazard_ratio": np.exp(self.coef_).tolist(),
            "offset": self.offset_,
            "alpha": self.alpha_,
        }

    @classmethod
    def load(cls, folder: Path, meta: dict[str, Any], trusted: tuple[str, ...]) -> CoxModel:
        """The fitted model of ``folder``; skops rebuilds only the ``trusted`` types."""
        loaded = skops_load(folder, meta, trusted)
        model = cls(name=meta["name"], params=meta.get("params"))
        model.estimator_ = loaded
        model.coef_ = np.asarray(meta["coef"], dtype=float)
        model.offset_ = float(meta.get("offset") or 0.0)
        model.alpha_ = meta.get("alpha")
        model.n_features_in_ = meta["n_features"]
        model.importances_ = np.asarray(meta.get("importances", []), dtype=float)
        return model


def _param_names(name: str, task: str) -> list[str]:
    from sksurv.linear_model import CoxnetSurvivalAnalysis, CoxPHSurvivalAnalysis

    if name == "cox":
        return list(CoxPHSurvivalAnalysis().get_params())
    fixed = ("alphas", "fit_baseline_model")
    return [p for p in CoxnetSurvivalAnalysis().get_params() if p not in fixed] + list(_COXNET_OWN)


def _make(name: str):
    def make(task, params, *, early_stopping_rounds, max_gather_mb, random_state):
        return CoxModel(name=name, params=params, max_gather_mb=max_gather_mb, random_state=random_state)

    return make


for _name, _description, _defaults in (
    ("cox", "Cox proportional hazards on the selected or PCA features (scikit-survival)", {"alpha": 0.01}),
    (
        "coxnet",
        "elastic-net penalised Cox, penalty chosen by inner CV (scikit-survival)",
        {"l1_ratio": 0.5, "alpha_min_ratio": 0.01, "n_alphas": 50},
    ),
):
    register(
        ModelFamily(
            name=_name,
            tasks=("survival",),
            description=_description,
            make=_make(_name),
            param_names=lambda task, _n=_name: _param_names(_n, task),
            format="skops",
            load=CoxModel.load,
            defaults=_defaults,
            trusted_types=TRUSTED_TYPES,
        )
    )
