"""Explanations of a fitted model and its clinical usefulness.

- :func:`contributions`: per-row, per-input contributions to the model's output, where the
  model has an exact additive decomposition: XGBoost's own TreeSHAP (``pred_contribs``, on
  the margin: log-odds, value or log-hazard), and for Cox models ``coef_j * (x_j - mean_j)``
  (the SHAP values of a linear predictor with independent inputs). Computed blockwise on
  the dask matrix; only the (rows x inputs) result comes back.
- :func:`permutation_importance`: for the other models, scikit-learn's permutation
  importance on (a sample of) the gathered development rows.
- :func:`decision_curve`: net benefit of treating by the predicted probability across
  thresholds (Vickers & Elkin 2006), with treat-all and treat-none.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._arrays import as_dask

__all__ = ["contributions", "permutation_importance", "decision_curve"]


def contributions(model, Z, names: list[str]):
    """``DataFrame`` (rows x inputs, plus ``bias``) of additive contributions, or None when
    the model has none (see the module docstring)."""
    booster = getattr(model, "booster_", None)
    if booster is not None and getattr(model, "task", None) != "multiclass":
        import xgboost

        def block_contribs(block: np.ndarray) -> np.ndarray:
            return booster.predict(xgboost.DMatrix(block), pred_contribs=True)

        Zd = as_dask(Z).rechunk({1: -1})
        out = Zd.map_blocks(
            block_contribs, chunks=(Zd.chunks[0], (len(names) + 1,)), dtype=float, meta=np.empty((0, 0), float)
        ).compute()
        return pd.DataFrame(out, columns=[*names, "bias"])
    coef = getattr(model, "coef_", None)
    if coef is not None and hasattr(model, "offset_"):  # the Cox models
        Zn = np.asarray(as_dask(Z).compute(), dtype=float)
        centre = Zn.mean(axis=0)
        frame = pd.DataFrame((Zn - centre) * coef, columns=names)
        frame["bias"] = float(centre @ coef - model.offset_)
        return frame
    return None


def permutation_importance(
    model, Z, y: np.ndarray, task: str, names: list[str], *, max_rows: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Mean and sd drop of the task's main metric when each input is permuted (5 repeats)."""
    from sklearn.inspection import permutation_importance as sk_permutation

    from .metrics import roc_auc
    from .survival import concordance_index

    Zn = np.asarray(as_dask(Z).compute(), dtype=float)[:max_rows]
    y = np.asarray(y)[:max_rows]

    class _Scored:  # what scikit-learn's permutation importance calls: fit is never needed
        def fit(self, *args):
            return self

        def score(self, X, yy):
            s = np.asarray(model.predict_scores(X).compute())
            if task == "binary":
                return roc_auc(yy, s[:, 1])
            if task == "survival":
                return concordance_index(np.abs(yy), (yy > 0).astype(int), s)
            if task == "multiclass":
                return float((s.argmax(axis=1) == yy).mean())
            return float(1 - ((yy - s) ** 2).sum() / ((yy - yy.mean()) ** 2).sum())

    res = sk_permutation(_Scored(), Zn, y, n_repeats=5, random_state=seed)
    return pd.DataFrame({"feature": names, "importance": res.importances_mean, "sd": res.importances_std})


def decision_curve(y: np.ndarray, p: np.ndarray, thresholds: np.ndarray | None = None) -> dict[str, list[float]]:
    """Net benefit ``TP/n - FP/n * t / (1 - t)`` of treating when ``p >= t``, for the model,
    treat-all and treat-none (0), at ``thresholds`` (default 0.01 to 0.99)."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    t = np.linspace(0.01, 0.99, 99) if thresholds is None else np.asarray(thresholds, dtype=float)
    n = y.size
    odds = t / (1 - t)
    treat = p[None, :] >= t[:, None]
    tp = (treat & (y[None, :] == 1)).sum(axis=1) / n
    fp = (treat & (y[None, :] == 0)).sum(axis=1) / n
    prevalence = y.mean()
    return {
        "threshold": t.tolist(),
        "model": (tp - fp * odds).tolist(),
        "treat_all": (prevalence - (1 - prevalence) * odds).tolist(),
        "treat_none": [0.0] * t.size,
    }
