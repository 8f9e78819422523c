"""Survival metrics, risk groups and univariate screening (radcluster.learn.survival)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from radcluster.learn import survival


def _cohort(n: int = 300, seed: int = 0, p: int = 30):
    """Hazard exp(0.8 x3 - 0.6 x7); the other columns are noise; about a third censored."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    lin = 0.8 * X[:, 3] - 0.6 * X[:, 7]
    t = rng.exponential(np.exp(-lin))
    c = rng.exponential(3, size=n)
    return X, lin, np.minimum(t, c), (t <= c).astype(int)


def test_metrics_of_the_true_risk_and_of_noise():
    X, lin, time, event = _cohort()
    good = survival.survival_metrics(time, event, lin, n_boot=100)
    noise = survival.survival_metrics(time, event, X[:, 0], n_boot=100)
    assert 0.68 < good["c_index"] < 0.8
    assert good["c_index_ci"][0] < good["c_index"] < good["c_index_ci"][1]
    assert abs(good["c_index_uno"] - good["c_index"]) < 0.05
    assert len(good["horizons"]) == 3 and all(0.65 < a < 0.9 for a in good["time_auc"])
    assert abs(noise["c_index"] - 0.5) < 0.06 and abs(noise["time_auc"][1] - 0.5) < 0.1
    km = good["km"]
    assert [c["group"] for c in km["curves"]] == ["low", "high"]
    assert sum(c["n"] for c in km["curves"]) == time.size
    assert km["logrank_p"] < 1e-6 and noise["km"]["logrank_p"] > 0.01
    # the low-risk group survives longer: its curve lies above at the median time
    t_mid = float(np.median(time))
    low, high = (np.interp(t_mid, c["time"], c["survival"]) for c in km["curves"])
    assert low > high + 0.15


def test_integrated_brier_score_prefers_the_right_survival_curves():
    _, lin, time, event = _cohort()
    grid = np.quantile(time, np.linspace(0.1, 0.8, 12))
    right = np.exp(-np.outer(np.exp(lin), grid) * 1.0)  # the generating model's S(t | x)
    flat = np.tile(np.exp(-grid / np.mean(time)), (time.size, 1))  # the same curve for everyone
    ibs_right = survival.survival_metrics(time, event, lin, n_boot=0, survival=right, grid=grid)["ibs"]
    ibs_flat = survival.survival_metrics(time, event, lin, n_boot=0, survival=flat, grid=grid)["ibs"]
    assert 0 < ibs_right < ibs_flat < 0.3


def test_concordance_is_scikit_survival_and_nan_without_events():
    from sksurv.metrics import concordance_index_censored

    _, lin, time, event = _cohort(80, seed=3)
    assert survival.concordance_index(time, event, lin) == concordance_index_censored(event > 0, time, lin)[0]
    assert math.isnan(survival.concordance_index(time, np.zeros_like(event), lin))


def test_screen_ranks_the_planted_features_and_matches_scikit_survival():
    from sksurv.linear_model import CoxPHSurvivalAnalysis

    X, _, time, event = _cohort()
    names = [f"f{j}" for j in range(X.shape[1])]
    table = survival.finish_screen(survival.screen_survival(X, time, event, names))
    assert table["feature"].tolist()[:2] == ["f3", "f7"]
    assert table["rank"].tolist() == list(range(1, X.shape[1] + 1))
    top = table.set_index("feature")
    assert top.loc["f3", "hr"] > 1.5 and top.loc["f7", "hr"] < 0.75
    assert top.loc["f3", "hr_lo"] < top.loc["f3", "hr"] < top.loc["f3", "hr_hi"]
    assert top.loc["f3", "q"] < 1e-6 and top.loc["f3", "c_index"] > 0.6 and top.loc["f7", "c_index"] < 0.4
    # per-SD hazard ratio: the coefficient of a Cox fit on the standardised feature (another library)
    z = (X[:, 3] - X[:, 3].mean()) / X[:, 3].std()
    coef = CoxPHSurvivalAnalysis().fit(z[:, None], survival.surv_array(time, event)).coef_[0]
    assert math.log(top.loc["f3", "hr"]) == pytest.approx(coef, rel=1e-3)
    # BH q >= p and monotone in p
    assert (table["q"] >= table["p"] - 1e-15).all() and table["q"].is_monotonic_increasing


def test_proportional_hazards_test_flags_an_effect_that_fades():
    rng = np.random.default_rng(5)
    n = 600
    x = rng.normal(size=n)
    # hazard exp(1.5 x) until t = 0.3, then no effect: non-proportional
    t1 = rng.exponential(np.exp(-1.5 * x))
    late = rng.exponential(1.0, size=n)
    t = np.where(t1 < 0.3, t1, 0.3 + late)
    c = rng.exponential(4, size=n)
    time, event = np.minimum(t, c), (t <= c).astype(int)
    fading = survival.screen_survival(x[:, None], time, event, ["x"]).iloc[0]
    X, _, time2, event2 = _cohort(600, seed=6)
    steady = survival.screen_survival(X[:, [3]], time2, event2, ["f3"]).iloc[0]
    assert fading["ph_p"] < 0.001
    assert steady["ph_p"] > 0.05


def test_screen_binary_and_a_constant_feature():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 200)
    X = np.column_stack([y + rng.normal(size=200), rng.normal(size=200), np.ones(200)])
    table = survival.finish_screen(survival.screen_binary(X, y, ["signal", "noise", "constant"]))
    assert table["feature"].tolist() == ["signal", "noise", "constant"]
    assert table.loc[0, "auc"] > 0.7 and table.loc[0, "p"] < 1e-6
    assert math.isnan(table.loc[2, "p"]) and math.isnan(table.loc[2, "q"])
    const = survival.screen_survival(np.ones((50, 1)), np.arange(1.0, 51), np.ones(50, int), ["c"]).iloc[0]
    assert math.isnan(const["hr"]) and const["n"] == 50
