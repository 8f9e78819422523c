"""Nested hyperparameter search (train.search): chosen inside each training fold, scored on the
outer folds only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _stores import matrix_store, planted

from radcluster.errors import SpecError
from radcluster.jobs.train import train_store
from radcluster.learn import search as search_module
from radcluster.learn.cv import make_splits
from radcluster.spec.training import parse_train_spec

GRID = {"grid": {"C": [0.001, 1.0, 100.0]}, "inner_folds": 3}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    X, columns = planted(90, 10, seed=7, scans_per_patient=2)
    return str(matrix_store(tmp_path_factory.mktemp("search") / "store", X, columns))


def test_the_inner_search_sees_only_each_outer_fold_training_patients(store, client, tmp_path, monkeypatch):
    seen: list[set[str]] = []
    tune = search_module.tune

    def spy(model, Z, target, groups, search, *, seed=0):
        seen.append(set(groups))
        return tune(model, Z, target, groups, search, seed=seed)

    monkeypatch.setattr(search_module, "tune", spy)
    spec = {
        "target": "outcome",
        "model": "logistic_regression",
        "search": GRID,
        "preprocess": {"pca": None},
        "cv": {"folds": 3, "seed": 2},
        "metrics": {"bootstrap": 0},
    }
    result = train_store(store, spec, client, tmp_path / "models")
    X, columns = planted(90, 10, seed=7, scans_per_patient=2)
    patients = np.asarray(columns["patient_id"])
    outer = make_splits(3, np.asarray(columns["outcome"]), patients, seed=2)
    assert len(seen) == 4  # three outer folds, then the final model on every row
    for groups, (train, test) in zip(seen, outer, strict=False):
        assert groups == set(patients[train]) and not groups & set(patients[test])
    assert seen[3] == set(patients)
    folds = result.metrics["folds"]
    grid = [{"C": c} for c in GRID["grid"]["C"]]
    assert all(f["search"]["params"] in grid and len(f["search"]["scores"]) == 3 for f in folds)
    assert result.metrics["search"]["candidates"] == grid
    assert result.metrics["cv"]["roc_auc"] > 0.85
    assert f"search: fold 0: {folds[0]['search']['params']}" in result.text()
    saved = json.loads((Path(result.version) / "model.json").read_text())
    assert saved["params"]["C"] == result.metrics["search"]["final"]["params"]["C"]  # the final model's choice
    page = (Path(result.version) / "report.html").read_text()
    assert "Hyperparameter search (nested)" in page and "Hyperparameter tuning" in page


@pytest.mark.slow  # five trainings, each with a nested search in every fold
def test_search_with_the_target_shuffled_stays_at_chance(store, client, tmp_path):
    aucs = []
    for seed in range(5):
        spec = {
            "target": "outcome",
            "model": "decision_tree",
            "search": {"random": {"max_depth": {"randint": [1, 6]}, "min_samples_leaf": [1, 5, 10]}, "n_iter": 4},
            "shuffle_target": True,
            "preprocess": {"pca": None},
            "cv": {"folds": 3, "seed": seed},
            "metrics": {"bootstrap": 0},
            "report": False,
        }
        result = train_store(store, spec, client, tmp_path / "models")
        aucs.append(result.metrics["cv"]["roc_auc"])
        for fold in result.metrics["folds"]:
            chosen = fold["search"]["params"]
            assert 1 <= chosen["max_depth"] <= 6 and chosen["min_samples_leaf"] in (1, 5, 10)
        assert len(result.metrics["search"]["candidates"]) == 4
    assert abs(np.mean(aucs) - 0.5) < 0.07 and max(abs(a - 0.5) for a in aucs) < 0.2, aucs


def test_search_spec_is_checked_before_training():
    spec = parse_train_spec({"target": "y", "model": "svm", "search": {"random": {"C": {"loguniform": [0.01, 10]}}}})
    assert spec.search.parameters() == ["C"] and spec.search.inner_folds == 3
    draws = search_module.candidates(spec.search)
    assert len(draws) == 10 and all(0.01 <= d["C"] <= 10 for d in draws)
    assert draws == search_module.candidates(spec.search)  # seeded
    with pytest.raises(SpecError, match="either 'grid' or 'random'"):
        parse_train_spec({"target": "y", "search": {"grid": {"max_depth": [2]}, "random": {"max_depth": [3]}}})
    with pytest.raises(SpecError, match=r"key 'train.search.folds': unknown key.*inner_folds"):
        parse_train_spec({"target": "y", "search": {"grid": {"max_depth": [2]}, "folds": 3}})
    with pytest.raises(SpecError, match="unknown distribution 'lognormal'"):
        parse_train_spec({"target": "y", "search": {"random": {"C": {"lognormal": [1, 2]}}}})
    with pytest.raises(SpecError, match="not with model 'kmeans'"):
        parse_train_spec({"model": "kmeans", "search": {"grid": {"n_clusters": [2, 3]}}})


def test_a_searched_parameter_the_model_does_not_have_is_refused(store):
    from radcluster.learn.dataset import load_training_data

    spec = parse_train_spec({"target": "outcome", "model": "random_forest", "search": {"grid": {"max_dept": [2]}}})
    with pytest.raises(SpecError, match="parameter 'max_dept': unknown.*max_depth"):
        load_training_data(store, spec)


@pytest.mark.slow  # every candidate of every inner fold is an xgboost.dask fit on the cluster
def test_xgboost_search_runs_each_candidate_on_the_cluster(store, client, tmp_path):
    spec = {
        "target": "outcome",
        "model": "xgboost",
        "params": {"xgboost": {"n_estimators": 40}},
        "search": {"grid": {"max_depth": [1, 3]}, "inner_folds": 2},
        "preprocess": {"pca": None},
        "cv": {"folds": 2},
        "metrics": {"bootstrap": 0},
        "report": False,
    }
    result = train_store(store, spec, client, tmp_path / "models")
    assert all(f["search"]["params"]["max_depth"] in (1, 3) for f in result.metrics["folds"])
    assert result.metrics["cv"]["roc_auc"] > 0.85
