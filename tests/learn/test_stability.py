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
from radcluster.learn.stability import describe, icc_1_1, icc_3_1, icc_table, stability_table, store_stability
from radcluster.store import open_store

PERTURBATIONS = ("rotate5", "noise20", "dilate1")


def perturbed_store(path: Path, *, seed: int = 0, undefined=()) -> tuple[Path, np.ndarray, np.ndarray]:
    """60 cases of :func:`planted` and three perturbed copies of each: every feature moves by
    0.02 sd under a perturbation except F006, which moves by 3 sd (half the cases also keep
    their copies of case 59 out, so only complete sets count). ``undefined``: (copy, case,
    feature) positions whose value is NaN, as a feature undefined on one perturbed ROI."""
    X, columns = planted(60, 8, seed=seed)
    rng = np.random.default_rng(seed + 1)
    copies = X[None] + 0.02 * rng.normal(size=(3, *X.shape))
    copies[:, :, 6] = X[None, :, 6] + 3.0 * rng.normal(size=(3, 60))
    copies[:, :, 7] = X[None, :, 7]  # the constant feature stays constant
    for at in undefined:
        copies[at] = np.nan
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


def _icc_1_1_by_hand(Y: np.ndarray) -> float:
    """Shrout & Fleiss' ICC(1,1) of one feature's n x k table, written out."""
    n, k = Y.shape
    ms_rows = k * ((Y.mean(axis=1) - Y.mean()) ** 2).sum() / (n - 1)
    ms_within = ((Y - Y.mean(axis=1, keepdims=True)) ** 2).sum() / (n * (k - 1))
    return (ms_rows - ms_within) / (ms_rows + (k - 1) * ms_within)


def test_a_nan_removes_a_scan_from_that_features_icc_only():
    x = np.array([0.0, 10.0, 20.0, 30.0])
    spread = np.stack([x, x + 1, x - 1], axis=1)  # 4 scans x (scan, 2 copies)
    Y = np.repeat(spread[:, :, None], 3, axis=2)
    Y[3, 2, 1] = np.nan  # feature 1: scan 3 incomplete, 3 scans left
    Y[[0, 1, 2], [1, 2, 0], 2] = np.nan  # feature 2: only scan 3 complete
    icc = icc_1_1(Y)
    # feature 0: MS_rows 3 * 500 / 3 = 500, MS_within 8 / 8 = 1; feature 1 (scans 0-2): 300 and 1
    np.testing.assert_allclose(icc[:2], [499 / 502, 299 / 302], rtol=1e-12)
    assert icc[1] == pytest.approx(_icc_1_1_by_hand(spread[:3]), rel=1e-12)
    assert np.isnan(icc[2])
    # ICC(3,1) the same way: feature 1 over its 3 complete scans, feature 2 undefined
    expected = icc_3_1(spread[:3, :, None])[0]
    assert icc_3_1(Y)[1] == pytest.approx(expected, rel=1e-12) and np.isnan(icc_3_1(Y)[2])
    table = icc_table(Y[:, 0], Y[:, 1], ["a", "b", "c"])  # scan and first copy as a retest pair
    assert table["n_pairs"].tolist() == [4, 4, 2] and table["icc"].notna().all()


def test_store_stability_counts_complete_scans_per_feature(tmp_path):
    # F005 undefined on case 3's noise20 copy and on case 8's rotate5 copy, F007 (constant) on case 5's
    holes = [(1, 3, 5), (0, 8, 5), (1, 5, 7)]
    path, X, copies = perturbed_store(tmp_path / "store", undefined=holes)
    table = store_stability(open_store(path)).set_index("feature")
    Y = np.concatenate([X[:59, None, :], copies[:, :59].transpose(1, 0, 2)], axis=1)  # 59 complete sets x 4
    n = table["n"].to_numpy()
    assert n.tolist() == [59, 59, 59, 59, 59, 57, 59, 58]
    keep = np.setdiff1d(np.arange(59), [3, 8])
    assert table["icc"].iloc[5] == pytest.approx(_icc_1_1_by_hand(Y[keep, :, 5]), rel=1e-12)
    # every other feature keeps all 59 scans: ICC(1,1) over the complete sets, by hand
    others = [0, 1, 2, 3, 4, 6]
    by_hand = [_icc_1_1_by_hand(Y[:, :, j]) for j in others]
    np.testing.assert_allclose(table["icc"].to_numpy()[others], by_hand, rtol=1e-12)
    assert np.isnan(table["icc"].iloc[7])  # constant: no variance


def test_describe_says_how_many_scans_and_which_features_have_no_icc():
    record = {
        "icc_min": 0.75,
        "dropped": ["f1"],
        "sources": {"perturbation": {"n": 59, "n_min": 57, "k": 4, "dropped": 1, "undefined": 2}},
    }
    assert describe(record) == (
        "ICC >= 0.75 (ICC(1,1) over 57-59 scan(s) and 3 perturbed copies of each (counted per feature: those "
        "complete for it), undefined for 2 feature(s)): 1 feature(s) dropped; a feature without an ICC (no "
        "variance, or fewer than 2 complete scans) is kept"
    )


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
    assert stability["sources"] == {"perturbation": {"n": 59, "n_min": 59, "k": 4, "dropped": 1, "undefined": 1}}
    assert result.metrics["n_development"] == 60  # the 179 copies are never trained on
    assert result.metrics["cv"]["roc_auc"] > 0.8  # F000-F004 (the planted signal) were kept
    saved = pd.read_parquet(Path(result.version) / "stability.parquet")
    assert saved.loc[saved["feature"] == "original_firstorder_F006", "kept"].tolist() == [False]
    page = (Path(result.version) / "report.html").read_text()
    assert (
        "(ICC(1,1) over 59 scan(s) and 3 perturbed copies of each, undefined for 1 feature(s)): 1 feature(s) dropped"
        in page
    )
    assert 'id="stability"' in page
    predicted = predict_store(result.version, str(path))  # the copies are no scans of a patient
    assert predicted["case_id"].tolist() == [f"case-{i:04d}" for i in range(60)]
    assert predicted["probability"].between(0, 1).all()
