"""Survival analysis: metrics, Kaplan-Meier risk groups and univariate Cox screening.

Estimation and metrics come from maintained libraries, never our own formulas:

- scikit-survival: Harrell's C (``concordance_index_censored``), Uno's C
  (``concordance_index_ipcw``), the time-dependent (cumulative/dynamic) AUC
  (``cumulative_dynamic_auc``), the integrated Brier score, Kaplan-Meier curves
  (``kaplan_meier_estimator``) and the log-rank test (``compare_survival``); the Cox models
  in :mod:`radcluster.learn.models.cox`.
- statsmodels: the univariate Cox fits of :func:`screen_survival` (``PHReg``), because it
  gives the standard errors, Wald p-values and Schoenfeld residuals that scikit-survival's
  estimators do not expose.

lifelines has all of the above in one package but pins ``pandas<3``, which would take
radcluster's pandas back a major version.

The one formula written here is the Grambsch-Therneau test of proportional hazards
(Grambsch & Therneau 1994, the statistic of R's ``cox.zph`` and lifelines'
``proportional_hazard_test``): neither scikit-survival nor statsmodels has it, and it is the
correlation of the scaled Schoenfeld residuals (from statsmodels) with the rank of the event
time, tested against chi-square with one degree of freedom.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "surv_array",
    "concordance_index",
    "survival_metrics",
    "evaluation_grid",
    "risk_groups",
    "default_horizons",
    "screen_survival",
    "screen_binary",
    "finish_screen",
    "ph_test",
]


def surv_array(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """scikit-survival's structured ``(event, time)`` array."""
    from sksurv.util import Surv

    return Surv.from_arrays(np.asarray(event).astype(bool), np.asarray(time, dtype=float))


def concordance_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C-index (scikit-survival): NaN when no pair is comparable.

    Examples
    --------
    >>> concordance_index(np.array([1., 2., 3.]), np.array([1, 1, 0]), np.array([3., 2., 1.]))
    1.0
    """
    from sksurv.metrics import concordance_index_censored

    event = np.asarray(event).astype(bool)
    if not event.any():
        return math.nan
    try:
        return float(concordance_index_censored(event, np.asarray(time, dtype=float), np.asarray(risk, dtype=float))[0])
    except Exception:  # scikit-survival raises when no pair is comparable
        return math.nan


def default_horizons(time: np.ndarray, event: np.ndarray) -> list[float]:
    """The 25th, 50th and 75th percentiles of the event times: inside everyone's follow-up."""
    t = np.asarray(time, dtype=float)[np.asarray(event).astype(bool)]
    return [float(v) for v in np.unique(np.round(np.quantile(t, [0.25, 0.5, 0.75]), 2))] if t.size else []


def evaluation_grid(time: np.ndarray, event: np.ndarray, n: int = 15) -> np.ndarray:
    """Times at which survival curves are compared (integrated Brier score): ``n`` points from
    the 10th to the 80th percentile of the event times."""
    t = np.asarray(time, dtype=float)[np.asarray(event).astype(bool)]
    if t.size < 2:
        return np.zeros(0)
    return np.unique(np.quantile(t, np.linspace(0.1, 0.8, n)))


def _usable(horizons, time, event) -> np.ndarray:
    """Horizons scikit-survival can evaluate on this set: within its follow-up, after an event."""
    t = np.asarray(time, dtype=float)
    e = np.asarray(event).astype(bool)
    h = np.asarray(horizons, dtype=float)
    if not e.any():
        return h[:0]
    return h[(h >= t[e].min()) & (h < t.max())]


def _uno_c(time, event, risk, tau) -> float:
    from sksurv.metrics import concordance_index_ipcw

    y = surv_array(time, event)
    try:
        return float(concordance_index_ipcw(y, y, np.asarray(risk, dtype=float), tau=tau)[0])
    except Exception:  # no comparable pair, or censoring survival zero inside tau
        return math.nan


def _td_auc(time, event, risk, horizons) -> np.ndarray:
    from sksurv.metrics import cumulative_dynamic_auc

    h = _usable(horizons, time, event)
    out = np.full(len(horizons), np.nan)
    if h.size == 0:
        return out
    y = surv_array(time, event)
    try:
        auc, _ = cumulative_dynamic_auc(y, y, np.asarray(risk, dtype=float), h)
    except Exception:  # a resample with no case or no control at a horizon
        return out
    out[np.isin(np.asarray(horizons, dtype=float), h)] = auc
    return out


def _ibs(time, event, surv: np.ndarray, grid: np.ndarray) -> float:
    from sksurv.metrics import integrated_brier_score

    ok = (grid >= np.min(time)) & (grid < np.max(time))
    if ok.sum() < 2:
        return math.nan
    y = surv_array(time, event)
    try:
        return float(integrated_brier_score(y, y, surv[:, ok], grid[ok]))
    except Exception:
        return math.nan


def risk_groups(time: np.ndarray, event: np.ndarray, risk: np.ndarray, *, n_groups: int = 2) -> dict[str, Any]:
    """Kaplan-Meier curve of each predicted-risk group (split at risk quantiles) and the
    log-rank test between them (scikit-survival)."""
    from sksurv.compare import compare_survival
    from sksurv.nonparametric import kaplan_meier_estimator

    time = np.asarray(time, dtype=float)
    event = np.asarray(event).astype(bool)
    risk = np.asarray(risk, dtype=float)
    cuts = np.quantile(risk, np.linspace(0, 1, n_groups + 1)[1:-1])
    group = np.searchsorted(cuts, risk, side="right")
    names = ["low", "high"] if n_groups == 2 else [f"Q{i + 1}" for i in range(n_groups)]
    curves = []
    for g in range(n_groups):
        sel = group == g
        if not sel.any():
            continue
        t, s = kaplan_meier_estimator(event[sel], time[sel])
        curves.append(
            {
                "group": names[g],
                "n": int(sel.sum()),
                "events": int(event[sel].sum()),
                "time": [0.0, *t.tolist()],
                "survival": [1.0, *s.tolist()],
            }
        )
    p = math.nan
    if len(np.unique(group)) > 1 and event.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(compare_survival(surv_array(time, event), group)[1])
    return {"curves": curves, "logrank_p": p, "cuts": cuts.tolist()}


def survival_metrics(
    time: np.ndarray,
    event: np.ndarray,
    risk: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    horizons: list[float] | None = None,
    survival: np.ndarray | None = None,
    grid: np.ndarray | None = None,
) -> dict[str, Any]:
    """Harrell's and Uno's C-index, time-dependent AUC at ``horizons``, the integrated Brier
    score (when ``survival``, the predicted survival of each row at the times ``grid``, is
    given), Kaplan-Meier risk groups with the log-rank p; patient-bootstrap intervals on each.

    ``horizons`` default to the quartiles of the event times (:func:`default_horizons`); a
    horizon outside this set's follow-up gives NaN.
    """
    from .metrics import bootstrap_intervals  # metrics imports this module

    time = np.asarray(time, dtype=float)
    event = np.asarray(event).astype(int)
    risk = np.asarray(risk, dtype=float)
    hz = default_horizons(time, event) if horizons is None else [float(h) for h in horizons]
    tau = float(np.quantile(time, 0.8)) if time.size else math.nan

    def values(idx: np.ndarray | slice) -> dict[str, float]:
        t, e, r = time[idx], event[idx], risk[idx]
        out = {"c_index": concordance_index(t, e, r), "c_index_uno": _uno_c(t, e, r, tau)}
        auc = _td_auc(t, e, r, hz)
        out.update({f"auc@{h:g}": float(a) for h, a in zip(hz, auc, strict=True)})
        if survival is not None and grid is not None:
            out["ibs"] = _ibs(t, e, survival[idx], grid)
        return out

    point = values(slice(None))
    ci = bootstrap_intervals(values, time.size, groups=groups, n_boot=n_boot, level=level, seed=seed)
    out: dict[str, Any] = {"n": int(time.size), "events": int(event.sum()), "horizons": hz, "tau": tau}
    for key, value in point.items():
        out[key] = value
        out[f"{key}_ci"] = ci.get(key, [math.nan, math.nan])
    out["time_auc"] = [point[f"auc@{h:g}"] for h in hz]
    if time.size >= 4 and event.any():
        out["km"] = risk_groups(time, event, risk)
    return out


# --- univariate screening --------------------------------------------------------------------
def ph_test(result) -> tuple[float, float]:
    """Grambsch-Therneau test of a univariate statsmodels ``PHReg`` fit: (chi2, p).

    The scaled Schoenfeld residuals of the event rows are correlated with the rank of their
    event times; under proportional hazards the slope is zero.
    """
    from scipy.stats import chi2, rankdata

    resid = np.asarray(result.schoenfeld_residuals)[:, 0]
    ok = np.isfinite(resid)
    d = int(ok.sum())
    if d < 3:
        return math.nan, math.nan
    g = rankdata(np.asarray(result.model.endog)[ok])
    g = g - g.mean()
    var = float(result.cov_params()[0, 0])
    denom = float((g**2).sum())
    if denom <= 0 or not np.isfinite(var):
        return math.nan, math.nan
    stat = d * var * float((g * resid[ok]).sum()) ** 2 / denom
    return stat, float(chi2.sf(stat, 1))


def _cox_one(x: np.ndarray, time: np.ndarray, event: np.ndarray) -> dict[str, float]:
    from statsmodels.duration.hazard_regression import PHReg

    nan = {
        "hr": math.nan,
        "hr_lo": math.nan,
        "hr_hi": math.nan,
        "p": math.nan,
        "c_index": math.nan,
        "ph_chi2": math.nan,
        "ph_p": math.nan,
    }
    ok = np.isfinite(x)
    x, time, event = x[ok], time[ok], event[ok]
    sd = x.std()
    if x.size < 3 or sd <= 0 or not event.any():
        return nan
    z = (x - x.mean()) / sd
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels' convergence chatter for separable features
        try:
            res = PHReg(time, z[:, None], status=event, ties="breslow").fit(disp=False)
        except Exception:  # singular information (a feature that separates events perfectly)
            return nan
    beta, se = float(res.params[0]), float(res.bse[0])
    chi, p_ph = ph_test(res)
    return {
        "hr": math.exp(beta),
        "hr_lo": math.exp(beta - 1.959963984540054 * se),
        "hr_hi": math.exp(beta + 1.959963984540054 * se),
        "p": float(res.pvalues[0]),
        "c_index": concordance_index(time, event, z),
        "ph_chi2": chi,
        "ph_p": p_ph,
    }


def screen_survival(X: np.ndarray, time: np.ndarray, event: np.ndarray, names: list[str]) -> pd.DataFrame:
    """One univariate Cox model per column of ``X`` (standardised: hazard ratio per SD).

    Columns: ``feature, n, hr, hr_lo, hr_hi`` (95% Wald interval), ``p`` (Wald),
    ``c_index`` (Harrell's, of the feature itself as the risk: below 0.5 when the hazard
    falls with it), ``ph_chi2, ph_p`` (:func:`ph_test`). ``q`` is added by :func:`finish_screen`
    once every block is in. Rows with a non-finite value are left out of that feature's fit.
    """
    time = np.asarray(time, dtype=float)
    event = np.asarray(event).astype(int)
    rows = []
    for j, name in enumerate(names):
        x = np.asarray(X[:, j], dtype=float)
        rows.append({"feature": name, "n": int(np.isfinite(x).sum()), **_cox_one(x, time, event)})
    return pd.DataFrame(rows)


def screen_binary(X: np.ndarray, y: np.ndarray, names: list[str]) -> pd.DataFrame:
    """One univariate test per column for a binary ``y`` (0/1): ``auc`` (scikit-learn's ROC
    AUC of the feature as the score), Mann-Whitney ``p`` (scipy), and the mean of each class."""
    from scipy.stats import mannwhitneyu
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).astype(int)
    rows = []
    for j, name in enumerate(names):
        x = np.asarray(X[:, j], dtype=float)
        ok = np.isfinite(x)
        xo, yo = x[ok], y[ok]
        auc = p = math.nan
        if len(np.unique(yo)) == 2 and np.ptp(xo) > 0:
            auc = float(roc_auc_score(yo, xo))
            p = float(mannwhitneyu(xo[yo == 1], xo[yo == 0]).pvalue)
        rows.append(
            {
                "feature": name,
                "n": int(ok.sum()),
                "auc": auc,
                "p": p,
                "mean_0": float(xo[yo == 0].mean()) if (yo == 0).any() else math.nan,
                "mean_1": float(xo[yo == 1].mean()) if (yo == 1).any() else math.nan,
            }
        )
    return pd.DataFrame(rows)


def finish_screen(table: pd.DataFrame) -> pd.DataFrame:
    """Benjamini-Hochberg ``q`` over the features with a p-value (scipy), sorted by p."""
    from scipy.stats import false_discovery_control

    table = table.copy()
    table["q"] = np.nan
    ok = table["p"].notna().to_numpy()
    if ok.any():
        table.loc[ok, "q"] = false_discovery_control(table.loc[ok, "p"].to_numpy(), method="bh")
    table.insert(0, "rank", 0)
    table = table.sort_values(["p", "feature"], na_position="last", kind="stable").reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    return table
