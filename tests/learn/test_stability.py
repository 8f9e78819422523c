"""Stability over perturbed copies (extraction.perturb's rows, written here through the store's
API): ICC(1,1) per feature, and select.icc_min dropping what does not survive them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _stores import matrix_store, planted

from radcluster.errors import ModelError
from radcluster.jobs.predict import predict_store
from radcluster.jobs.train import train_store
from radcluster.learn.stability import icc_1_1, stability_table, store_stability
from radcluster.store import open_store

PERTURBATIONS = ("rotate5", "noise20", "dilate1")


def perturbed_store(path: Path, *, seed: int = 0) -> tuple[Path, np.ndarray, np.ndarray]:
    """60 cases of :func:`planted` and three perturbed copies of each: every feature moves by
    0.02 sd under a perturbation except F006, which moves by 3 sd (half the cases also keep
    their copies of case 59 out, so only complete sets count)."""
    X, columns = planted(60, 8, seed=seed)
    rng = np.random.default_rng(seed + 1)
    copies = X[None] + 0.02 * rng.normal(size=(3, *X.shape))
    copies[:, :, 6] = X[None, :, 6] + 3.0 * rng.normal(size=(3, 60))
    copies[:, :, 7] = X[None, :, 7]  # the constant feature stays constant
    frame = pd.DataFrame(columns)
    cases = [f"case-{i:04d}" for i in range(60)]
    rows = [frame.assign(perturbation_of=None, perturbation=None)]
    ids = list(cases)
    for j, name in enumerate(PERTURBATIONS):
        keep = slice(None) if j < 2 else slice(0, 59)  # case 59 lacks its dilate1 copy
        rows.append(frame.iloc[keep].assign(perturbation_of=cases[keep], perturbation=name))
        ids += [f"{c}~{name}" for c in cases[keep]]
    stacked = np.vstack([X, copies[0], copies[1], copies[2][:59]])
    matrix_store(path, stacked, pd.concat(rows, ignore_index=True), case_ids=ids)
    return path, X, copies


def test_icc_over_perturbations_is_icc_1_1_of_the_complete_sets(tmp_path):
    path, X, copies = perturbed_store(tmp_path / "store")
    table = store_stability(open_store(path)).set_index("feature")  # what an extraction writes
    Y = np.concatenate([X[:59, None, :], copies[:, :59].transpose(1, 0, 2)], axis=1)  # 59 complete sets x 4
    expected = icc_1_1(Y)
    assert np.allclose(table["icc"].to_numpy()[:7], expected[:7], rtol=1e-12)
    assert (table["n"] == 59).all() and (table["k"] == 4).all() and (table["source"] == "perturbation").all()
    assert table.loc["original_firstorder_F000", "icc"] > 0.99 and table.loc["original_firstorder_F006", "icc"] < 0.2
    assert np.isnan(table.loc["original_firstorder_F007", "icc"])  # no variance: left to the constant filter
    X0, rows, names = open_store(path).matrix()
    with pytest.raises(ModelError, match="found 0 test-retest pair"):
        stability_table(X0, rows, names, retest=(X0[:0], rows.iloc[:0].assign(retest_of=[])))
    with pytest.raises(ModelError, match=r"no retest scans \('retest_of'\) and no perturbed scans"):
        stability_table(X0, rows, names)


def test_icc_min_drops_the_feature_perturbations_move_and_keeps_the_rest(tmp_path, client):
    path, _, _ = perturbed_store(tmp_path / "store")
    spec = {
        "target": "outcome",
        "model": "logistic_regression",
        "select": {"icc_min": 0.75},
        "preprocess": {"pca": None},
        "cv": {"folds": 3},
        "metrics": {"bootstrap": 0},
    }
    result = train_store(str(path), spec, client, tmp_path / "models")
    stability = result.metrics["stability"]
    assert stability["dropped"] == ["original_firstorder_F006"]
    assert stability["sources"] == {"perturbation": {"n": 59, "k": 4, "dropped": 1}}
    assert result.metrics["n_development"] == 60  # the 179 copies are never trained on
    assert result.metrics["cv"]["roc_auc"] > 0.8  # F000-F004 (the planted signal) were kept
    saved = pd.read_parquet(Path(result.version) / "stability.parquet")
    assert saved.loc[saved["feature"] == "original_firstorder_F006", "kept"].tolist() == [False]
    page = (Path(result.version) / "report.html").read_text()
    assert "(ICC(1,1) over 59 scan(s) and 3 perturbed copies of each): 1 feature(s) dropped" in page
    assert 'id="stability"' in page
    predicted = predict_store(result.version, str(path))  # the copies are no scans of a patient
    assert predicted["case_id"].tolist() == [f"case-{i:04d}" for i in range(60)]
    assert predicted["probability"].between(0, 1).all()
