"""Cox models (cox, coxnet), leave-site-out validation, ComBat on a new site, stability (ICC),
explanations and the report's study sections, on matrix stores and on the extracted synthetic
survival cohort (the issue's numbers)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _stores import PLANTED_SURVIVAL, matrix_store, planted, survival_store

from radcluster.jobs.predict import predict_store
from radcluster.jobs.train import train_store
from radcluster.learn.combat import ComBat
from radcluster.learn.explain import decision_curve
from radcluster.learn.models.cox import CoxModel
from radcluster.learn.stability import icc_3_1, icc_table
from radcluster.registry.versions import open_version

SURVIVAL = {"target": "survival_time", "event": "event", "metrics": {"bootstrap": 100}}


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    X, columns = planted(120, 15, seed=4)
    return matrix_store(tmp_path_factory.mktemp("cox") / "store", X, columns)


@pytest.mark.parametrize("model", ["cox", "coxnet"])
def test_cox_models_train_register_explain_and_predict(client, planted_store, tmp_path, model):
    spec = {**SURVIVAL, "model": model, "cv": {"folds": 3}, "validation": {"leave_out": "site"}}
    result = train_store(str(planted_store), spec, client, tmp_path / "models")
    cv = result.metrics["cv"]
    # planted(): the hazard grows with F000 + F001
    assert cv["c_index"] > 0.75 and cv["c_index_uno"] > 0.75
    assert cv["c_index_ci"][0] < cv["c_index"] < cv["c_index_ci"][1]
    assert 0 < cv["ibs"] < 0.25 and len(cv["time_auc"]) == 3
    assert cv["km"]["logrank_p"] < 1e-4
    sites = {s["site"]: s for s in result.metrics["leave_out"]["sites"]}
    assert set(sites) == {"A", "B"} and all(s["c_index"] > 0.7 and s["n"] == 60 for s in sites.values())
    assert "site A held out: c_index" in result.text()
    version = open_version(result.version)
    saved = json.loads((Path(result.version) / "model.json").read_text())
    assert len(saved["hazard_ratio"]) == len(version.features["model_inputs"])
    contributions = pd.read_parquet(Path(result.version) / "contributions.parquet")
    assert len(contributions) == 120 and "bias" in contributions
    predicted = predict_store(result.version, str(planted_store))
    # the contributions add up to the model's output (the linear predictor)
    terms = contributions.drop(columns=["case_id", "bias"]).sum(axis=1) + contributions["bias"]
    assert np.allclose(terms.to_numpy(), predicted["risk"].to_numpy())
    page = (Path(result.version) / "report.html").read_text()
    for marker in ('id="km"', 'id="contributions"', "Cox coefficients", "Leave-one-site-out", "id='checklist'"):
        assert marker in page
    markdown = (Path(result.version) / "checklist.md").read_text()
    assert "| Validation | Validation on unseen sites | leave-one-site-out |" in markdown
    assert "*open: to be answered by the authors*" in markdown


def test_cox_is_at_chance_with_the_target_shuffled(client, planted_store, tmp_path):
    spec = {**SURVIVAL, "model": "cox", "cv": {"folds": 3}, "shuffle_target": True, "report": False}
    values = [
        train_store(str(planted_store), {**spec, "cv": {"folds": 3, "seed": s}}, client, tmp_path / "m").metrics["cv"][
            "c_index"
        ]
        for s in range(3)
    ]
    assert abs(np.mean(values) - 0.5) < 0.07 and all(abs(v - 0.5) < 0.12 for v in values), values


def test_coxnet_chooses_its_penalty_inside_the_training_rows_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 30))
    t = rng.exponential(np.exp(-(X[:, 0] - X[:, 1])))
    c = rng.exponential(3, size=200)
    y = np.where(t <= c, np.minimum(t, c), -np.minimum(t, c))
    model = CoxModel(name="coxnet").fit(X, y)
    assert model.alpha_ in model.estimator_.alphas_ and len(model.inner_c_index_) == len(model.estimator_.alphas_)
    assert np.allclose(model.predict_scores(X).compute(), model.estimator_.predict(X, alpha=model.alpha_))
    assert np.argsort(-np.abs(model.coef_))[:2].tolist() in ([0, 1], [1, 0])
    meta = {**model.save(tmp_path), "name": "coxnet", "params": None}
    from radcluster.learn.models.cox import TRUSTED_TYPES

    again = CoxModel.load(tmp_path, meta, TRUSTED_TYPES)
    assert np.allclose(again.predict_scores(X).compute(), model.predict_scores(X).compute())
    curves = again.predict_survival(X[:3], np.array([0.1, 0.5, 1.0]))
    assert curves.shape == (3, 3) and (np.diff(curves, axis=1) <= 0).all()
    from radcluster.errors import RegistryError

    with pytest.raises(RegistryError, match="refusing to load"):
        CoxModel.load(tmp_path, meta, ())


def test_combat_harmonises_a_site_it_never_saw():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    site = np.repeat(["A", "B", "C"], 100)
    X[site == "B"] += 2.0
    X[site == "C"] = X[site == "C"] * 3 - 4.0
    train = site != "C"
    fitted = ComBat().fit(X[train], batch=site[train])
    out = fitted.transform(X, batch=site)
    means = pd.DataFrame(out).groupby(site).mean()
    sds = pd.DataFrame(out).groupby(site).std()
    assert (means.max() - means.min()).max() < 0.3 and (sds.max() / sds.min()).max() < 1.3
    from radcluster.errors import ModelError

    with pytest.raises(ModelError, match="cannot be harmonised"):
        ComBat(new_batches="error").fit(X[train], batch=site[train]).transform(X, batch=site)


def test_icc_of_stable_noisy_and_constant_features():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(40, 1))
    first = np.hstack([truth + 0.1 * rng.normal(size=(40, 1)), truth + rng.normal(size=(40, 1)) * 2])
    retest = np.hstack([truth + 0.1 * rng.normal(size=(40, 1)), truth + rng.normal(size=(40, 1)) * 2])
    table = icc_table(first, retest, ["stable", "noisy"])
    assert table["icc"][0] > 0.95 and table["icc"][1] < 0.4 and (table["n_pairs"] == 40).all()
    # Shrout & Fleiss (1979) Table 2, four judges: ICC(3,1) = 0.71
    ratings = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])
    assert icc_3_1(ratings[:, :, None])[0] == pytest.approx(0.7148, abs=1e-4)


def test_decision_curve_net_benefit():
    y = np.array([1, 1, 0, 0])
    curve = decision_curve(y, np.array([0.9, 0.6, 0.4, 0.1]), thresholds=np.array([0.5, 0.2]))
    assert curve["model"] == pytest.approx([0.5, 0.5 - 0.25 * 0.25])  # at 0.2 one false positive
    assert curve["treat_all"] == pytest.approx([0.0, 0.5 - 0.5 * 0.25])
    assert curve["treat_none"] == [0.0, 0.0]


def test_binary_report_has_a_decision_curve_and_permutation_importance(client, planted_store, tmp_path):
    spec = {"target": "outcome", "model": "svm", "cv": {"folds": 3}, "metrics": {"bootstrap": 50}}
    result = train_store(str(planted_store), spec, client, tmp_path / "models")
    dc = result.metrics["decision_curve"]
    assert max(dc["model"]) > max(dc["treat_all"][:50])
    table = pd.read_parquet(Path(result.version) / "permutation_importance.parquet")
    assert len(table) > 0 and table["importance"].max() > 0
    page = (Path(result.version) / "report.html").read_text()
    assert 'id="decision_curve"' in page and 'id="contributions"' in page


# --- the numbers, on the extracted synthetic survival cohort ------------------------
@pytest.mark.slow  # extracts the 170-scan survival cohort (_stores.SURVIVAL_COHORT)
@pytest.mark.parametrize("model", ["cox", "coxnet"])
def test_cox_models_on_the_synthetic_cohort(tmp_path_factory, client, tmp_path, model):
    store = str(survival_store(tmp_path_factory, client))
    spec = {**SURVIVAL, "model": model, "cv": {"folds": 5}, "report": False}
    if model == "cox":  # Cox on a few selected features; coxnet on all of them
        spec.update(preprocess={"pca": None}, select={"method": "univariate", "k": 5})
    else:
        spec.update(preprocess={"pca": None})
    result = train_store(store, spec, client, tmp_path / "models")
    assert result.metrics["cv"]["c_index"] > 0.75
    shuffled = train_store(store, {**spec, "shuffle_target": True}, client, tmp_path / "models")
    assert abs(shuffled.metrics["cv"]["c_index"] - 0.5) < 0.1
    if model == "cox":
        freq = {f["feature"]: f["folds"] for f in result.metrics["selection"]}
        assert all(freq.get(f) == 5 for f in PLANTED_SURVIVAL)


@pytest.mark.slow  # the survival cohort, and a stability filter and leave-site-out CV on it
def test_stability_filter_and_leave_site_out_on_the_synthetic_cohort(tmp_path_factory, client, tmp_path):
    store = str(survival_store(tmp_path_factory, client))
    spec = {
        **SURVIVAL,
        "model": "cox",
        "preprocess": {"pca": None, "combat": "site"},
        "select": {"icc_min": 0.75, "method": "univariate", "k": 5},
        "validation": {"leave_out": "site"},
        "cv": {"folds": 5},
    }
    result = train_store(store, spec, client, tmp_path / "models")
    stability = result.metrics["stability"]
    assert stability["n_pairs"] == 20
    # the retest scans' lesion was shifted by 40 HU x N: the intensity level does not reproduce
    assert "original_firstorder_Mean" in stability["dropped"]
    assert not set(PLANTED_SURVIVAL) & set(stability["dropped"])
    icc = pd.read_parquet(Path(result.version) / "stability.parquet").set_index("feature")["icc"]
    assert icc["original_firstorder_Mean"] < 0.75 and (icc[PLANTED_SURVIVAL] > 0.75).all()
    sites = result.metrics["leave_out"]["sites"]
    assert [s["site"] for s in sites] == ["A", "B"]
    assert all(s["c_index"] > 0.7 and not math.isnan(s["c_index_ci"][0]) for s in sites)
    page = (Path(result.version) / "report.html").read_text()
    assert "Stability" in page and "Leave-one-site-out" in page
