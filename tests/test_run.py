"""End to end on a real LocalCluster with worker processes: manifest -> tasks -> store."""

from __future__ import annotations

import json
import subprocess
import sys

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import zarr
from conftest import PARAMS, SMALL_CASES, case_paths, write_manifest

from radcluster import open_store
from radcluster.cohort import read_manifest
from radcluster.errors import StoreError
from radcluster.extract import ExtractionSettings
from radcluster.run import run_extract
from radcluster.spec import read_params


def _settings(params="Params.yaml", **kw):
    text, digest = read_params(PARAMS / params)
    return ExtractionSettings(text, digest, **kw)


@pytest.fixture
def cohort_with_corrupt(tmp_path):
    rows = [{"case_id": c, "image": str(case_paths(c)[0]), "mask": str(case_paths(c)[1]),
             "outcome": i % 2, "site": "AB"[i % 2]} for i, c in enumerate(SMALL_CASES)]
    corrupt = tmp_path / "corrupt_image.nrrd"
    corrupt.write_bytes(case_paths("brain2")[0].read_bytes()[:5000])
    rows.append({"case_id": "broken", "image": str(corrupt), "mask": str(case_paths("brain2")[1]),
                 "outcome": 1, "site": "A"})
    return write_manifest(tmp_path / "cohort.csv", rows)


def test_corrupt_scan_fails_alone_and_store_is_complete(client, cohort_with_corrupt, tmp_path):
    store_dir = tmp_path / "store"
    # flush_rows=1: every result becomes its own part file, as in a long run
    summary = run_extract(read_manifest(cohort_with_corrupt), _settings(), str(store_dir), client,
                          flush_rows=1, flush_seconds=3600)
    assert summary.failed_cases == ["broken"] and not summary.ok
    assert summary.rows == 3

    store = open_store(store_dir)
    features = store.features()
    assert sorted(features["case_id"]) == sorted(SMALL_CASES)
    assert features["outcome"].tolist() == [0, 1, 0]  # carried manifest column, sorted by case
    assert len(list((store_dir / "features").glob("part-*.parquet"))) == 3
    assert not list(store_dir.rglob(".tmp-*"))

    fails = store.failures()
    assert fails["case_id"].tolist() == ["broken"]
    rec = fails.iloc[0]
    assert rec["stage"] == "read" and rec["file"] == str(tmp_path / "corrupt_image.nrrd")
    assert "'broken'" in rec["message"] and "corrupt_image.nrrd" in rec["message"]

    [run] = store.runs()
    assert run["scans"] == 4 and run["rows"] == 3 and run["failed_cases"] == ["broken"]
    assert run["versions"]["pyradiomics_version"].startswith("pyradiomics-bhklab")


def test_matrix_matches_parquet_rows(client, sample_manifest, tmp_path):
    store_dir = tmp_path / "store"
    run_extract(read_manifest(sample_manifest), _settings(), str(store_dir), client)
    store = open_store(store_dir)
    X, rows, names = store.matrix()
    assert isinstance(X, da.Array) and X.dtype == np.float64
    assert X.shape == (3, 100) and len(names) == 100
    assert names[0].startswith("original_shape_")
    features = store.features()
    assert rows["case_id"].tolist() == features["case_id"].tolist()
    np.testing.assert_array_equal(X.compute(), features[names].to_numpy(dtype="float64"))
    group = zarr.open_group(str(store_dir / "matrix.zarr"), mode="r")
    assert group.attrs["feature_names"] == names
    # dask.array.from_zarr on the array itself, as a user would
    np.testing.assert_array_equal(da.from_zarr(str(store_dir / "matrix.zarr"), component="X").compute(),
                                  X.compute())


def test_rerun_supersedes_instead_of_duplicating(client, sample_manifest, tmp_path):
    store_dir = tmp_path / "store"
    cohort = read_manifest(sample_manifest)
    run_extract(cohort, _settings(), str(store_dir), client)
    first = open_store(store_dir).features()
    run_extract(cohort, _settings(), str(store_dir), client)
    store = open_store(store_dir)
    assert len(store.features(all_versions=True)) == 6
    current = store.features()
    assert len(current) == 3
    assert (current["run_id"] != first["run_id"]).all()
    pd.testing.assert_series_equal(current["original_glcm_Contrast"], first["original_glcm_Contrast"])
    assert store.matrix()[0].shape[0] == 3


def test_open_store_errors(tmp_path):
    with pytest.raises(StoreError, match="no feature store"):
        open_store(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="no matrix.zarr"):
        open_store(tmp_path / "empty").matrix()


def test_cli_extract_real_cluster(tmp_path, cohort_with_corrupt):
    """The command a user types, with its own LocalCluster of worker processes."""
    store_dir = tmp_path / "cli-store"
    proc = subprocess.run(
        [sys.executable, "-m", "radcluster.cli", "extract", str(cohort_with_corrupt), "--out", str(store_dir),
         "--params", str(PARAMS / "Params.yaml"), "--workers", "2", "--dashboard-address", ":0"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr  # one scan failed: non-zero, the rest is stored
    assert "Dask dashboard: http://127.0.0.1:" in proc.stdout
    assert "4 scan(s), 3 done, 1 failed" in proc.stdout
    assert "broken" in proc.stdout
    assert len(open_store(store_dir).features()) == 3
    run = json.loads(next((store_dir / "runs").glob("*.json")).read_text())
    assert run["cluster"]["workers"] == 2


def test_cli_rejects_bad_params_before_starting_a_cluster(tmp_path, sample_manifest):
    bad = tmp_path / "bad.yaml"
    bad.write_text("setting:\n  binWidth: twentyfive\n")
    proc = subprocess.run(
        [sys.executable, "-m", "radcluster.cli", "extract", str(sample_manifest), "--out", str(tmp_path / "s"),
         "--params", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "bad.yaml" in proc.stderr and "binWidth" in proc.stderr
    assert "Dask dashboard" not in proc.stdout
    assert not (tmp_path / "s").exists()
