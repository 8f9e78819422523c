"""Feature selection inside the folds (radcluster.learn.select) and its leak test."""

from __future__ import annotations

import numpy as np
import pytest
from _stores import matrix_store

from radcluster.errors import ModelError
from radcluster.jobs.train import train_store
from radcluster.learn.select import Selector


def _data(n: int = 300, p: int = 40, seed: int = 0):
    """Binary y driven by columns 3 and 7; column p-1 duplicates column 3 (r > 0.999)."""
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, p))
    Z[:, p - 1] = Z[:, 3] + 0.01 * rng.normal(size=n)
    y = (Z[:, 3] + Z[:, 7] + 0.5 * rng.normal(size=n) > 0).astype(int)
    return Z, y


def test_univariate_and_lasso_find_the_planted_features():
    Z, y = _data()
    uni = Selector(task="binary", method="univariate", k=3).fit(Z, y).support_
    assert set(uni) == {3, 7, 39}
    lasso = Selector(task="binary", method="lasso", k=2).fit(Z, y).support_
    assert 7 in lasso and len(set(lasso) & {3, 39}) == 1
    q = Selector(task="binary", method="univariate", k=None, q=0.01).fit(Z, y).support_
    assert set(q) == {3, 7, 39}


def test_clustering_and_mrmr_keep_one_of_a_duplicated_feature():
    Z, y = _data()
    clustered = Selector(task="binary", method="univariate", k=2, cluster=0.9).fit(Z, y).support_
    assert len(set(clustered) & {3, 39}) == 1 and 7 in clustered
    mrmr = Selector(task="binary", method="mrmr", k=3).fit(Z, y).support_
    # relevance minus redundancy: the duplicate of the first pick is never second
    assert len(set(mrmr) & {3, 39}) == 1 and 7 in mrmr
    reg = Selector(task="regression", method="mrmr", k=2).fit(Z, Z[:, 5] + Z[:, 11]).support_
    assert set(reg) == {5, 11}


def test_survival_selection_and_mrmr_refused_for_survival():
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(200, 20))
    t = rng.exponential(np.exp(-(Z[:, 2] - Z[:, 9])))
    c = rng.exponential(3, size=200)
    y = np.where(t <= c, np.minimum(t, c), -np.minimum(t, c))
    assert set(Selector(task="survival", method="univariate", k=2).fit(Z, y).support_) == {2, 9}
    assert {2, 9} <= set(Selector(task="survival", method="lasso", k=4).fit(Z, y).support_)
    with pytest.raises(ModelError, match="mrmr"):
        Selector(task="survival", method="mrmr").fit(Z, y)


def test_selection_frequency_is_reported(client, tmp_path):
    from radcluster.registry.versions import open_version

    Z, y = _data(150, 30)
    matrix_store(tmp_path / "store", Z, {"outcome": y, "patient_id": [f"p{i}" for i in range(150)]})
    spec = {
        "target": "outcome",
        "model": "logistic_regression",
        "preprocess": {"pca": None},
        "select": {"method": "univariate", "k": 2, "cluster": 0.9},
        "cv": {"folds": 4},
        "metrics": {"bootstrap": 0},
        "report": False,
    }
    result = train_store(str(tmp_path / "store"), spec, client, tmp_path / "models")
    freq = {f["feature"]: f["folds"] for f in result.metrics["selection"]}
    assert freq["original_firstorder_F007"] == 4
    assert freq.get("original_firstorder_F003", 0) + freq.get("original_firstorder_F029", 0) == 4
    assert sum(freq.values()) == 8
    version = open_version(result.version)
    assert len(version.features["model_inputs"]) == 2
    assert result.metrics["cv"]["roc_auc"] > 0.85


# slow for cox: Cox fits on 150 features in every fold
@pytest.mark.parametrize("model", ["logistic_regression", pytest.param("cox", marks=pytest.mark.slow)])
def test_selection_inside_folds_stays_at_chance_with_the_target_shuffled(client, tmp_path, model):
    """The leak test: 240 noise-only rows x 150 features; the target permuted across patients.

    Selecting the 5 "best" of 150 features on all rows before cross-validating gives an
    AUC far above 0.5 (checked below); selecting inside each training fold must not.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    rng = np.random.default_rng(3)
    n, p = 240, 150
    Z = rng.normal(size=(n, p))
    y = rng.integers(0, 2, n)
    time = rng.exponential(10, n) + 0.1
    event = (rng.random(n) < 0.7).astype(int)
    matrix_store(
        tmp_path / "store",
        Z,
        {"outcome": y, "survival_time": time, "event": event, "patient_id": [f"p{i}" for i in range(n)]},
    )
    target = {"target": "outcome"} if model != "cox" else {"target": "survival_time", "event": "event"}
    main = "roc_auc" if model != "cox" else "c_index"
    values = []
    for seed in range(3):
        spec = {
            **target,
            "model": model,
            "preprocess": {"pca": None},
            "select": {"method": "univariate", "k": 5},
            "cv": {"folds": 5, "seed": seed},
            "shuffle_target": True,
            "metrics": {"bootstrap": 0},
            "report": False,
        }
        values.append(train_store(str(tmp_path / "store"), spec, client, tmp_path / "models").metrics["cv"][main])
    assert abs(np.mean(values) - 0.5) < 0.07, values
    assert all(abs(v - 0.5) < 0.12 for v in values), values
    if model == "logistic_regression":
        # the same five-of-150 selection made once on every row leaks: far from chance
        best = np.argsort(-np.abs(np.corrcoef(Z.T, y)[-1, :-1]))[:5]
        leaky = cross_val_predict(LogisticRegression(), Z[:, best], y, cv=5, method="predict_proba")[:, 1]
        from sklearn.metrics import roc_auc_score

        assert roc_auc_score(y, leaky) > 0.6
