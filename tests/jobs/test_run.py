"""End to end on a real LocalCluster with worker processes: manifest -> tasks -> store."""

from __future__ import annotations

import json
import subprocess
import sys

import dask.array as da
import numpy as np
import pytest
import SimpleITK as sitk
import zarr
from conftest import PARAMS, SMALL_CASES, case_paths, write_manifest

from radcluster import open_store
from radcluster.cohort import read_manifest
from radcluster.errors import StoreError
from radcluster.extract import ExtractionSettings
from radcluster.jobs.extract import run_extract
from radcluster.spec import read_params


def _settings(params="Params.yaml", **kw):
    text, digest = read_params(PARAMS / params)
    return ExtractionSettings(text, digest, **kw)


@pytest.fixture
def cohort_with_corrupt(tmp_path):
    rows = [
        {
            "case_id": c,
            "image": str(case_paths(c)[0]),
            "mask": str(case_paths(c)[1]),
            "outcome": i % 2,
            "site": "AB"[i % 2],
        }
        for i, c in enumerate(SMALL_CASES)
    ]
    corrupt = tmp_path / "corrupt_image.nrrd"
    corrupt.write_bytes(case_paths("brain2")[0].read_bytes()[:5000])
    rows.append(
        {"case_id": "broken", "image": str(corrupt), "mask": str(case_paths("brain2")[1]), "outcome": 1, "site": "A"}
    )
    return write_manifest(tmp_path / "cohort.csv", rows)


def test_corrupt_scan_fails_alone_and_store_is_complete(client, cohort_with_corrupt, tmp_path):
    store_dir = tmp_path / "store"
    # flush_rows=1: every result becomes its own part file, as in a long run
    summary = run_extract(
        read_manifest(cohort_with_corrupt), _settings(), str(store_dir), client, flush_rows=1, flush_seconds=3600
    )
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
    # matrix rows are in the order they were appended; the same rows as the Parquet parts
    features = (
        store.features().set_index(["case_id", "label"]).loc[list(zip(rows["case_id"], rows["label"], strict=True))]
    )
    assert sorted(rows["case_id"]) == sorted(SMALL_CASES)
    np.testing.assert_array_equal(X.compute(), features[names].to_numpy(dtype="float64"))
    group = zarr.open_group(str(store_dir / "matrix.zarr"), mode="r")
    assert group.attrs["feature_names"] == names
    # dask.array.from_zarr on the array itself, as a user would
    np.testing.assert_array_equal(da.from_zarr(str(store_dir / "matrix.zarr"), component="X").compute(), X.compute())


def test_incremental_reruns_extract_only_what_changed(client, tmp_path):
    """Same cohort: nothing extracted; grown cohort: only the new scan; touched file with the
    same voxels: read, not extracted; changed mask or params: re-extracted and superseded."""
    import os
    import shutil

    for c in SMALL_CASES:
        for p in case_paths(c):
            shutil.copy(p, tmp_path / p.name)
    rows = [{"case_id": c, "image": f"{c}_image.nrrd", "mask": f"{c}_label.nrrd"} for c in SMALL_CASES[:2]]
    manifest = write_manifest(tmp_path / "cohort.csv", rows)
    store_dir = str(tmp_path / "store")
    first = run_extract(read_manifest(manifest), _settings(), store_dir, client)
    assert (first.new, first.changed, first.skipped, first.rows) == (2, 0, 0, 2)

    again = run_extract(read_manifest(manifest), _settings(), store_dir, client)
    assert (again.new, again.changed, again.skipped, again.rows) == (0, 0, 2, 0)
    assert "nothing to extract: the store is up to date" in again.text()

    write_manifest(
        manifest, rows + [{"case_id": "breast1", "image": "breast1_image.nrrd", "mask": "breast1_label.nrrd"}]
    )
    grown = run_extract(read_manifest(manifest), _settings(), store_dir, client)
    assert (grown.new, grown.skipped, grown.rows) == (1, 2, 1)

    os.utime(tmp_path / "brain2_image.nrrd", ns=(1, 1))  # touched, same voxels
    touched = run_extract(read_manifest(manifest), _settings(), store_dir, client)
    assert (touched.skipped, touched.rows) == (3, 0)

    image = sitk.ReadImage(str(tmp_path / "breast1_label.nrrd"))
    arr = sitk.GetArrayFromImage(image)
    arr[np.nonzero(arr)[0][0], np.nonzero(arr)[1][0], np.nonzero(arr)[2][0]] = 0  # one voxel less
    edited = sitk.GetImageFromArray(arr)
    edited.CopyInformation(image)
    sitk.WriteImage(edited, str(tmp_path / "breast1_label.nrrd"))
    changed = run_extract(read_manifest(manifest), _settings(), store_dir, client)
    assert (changed.changed, changed.skipped, changed.rows) == (1, 2, 1)

    store = open_store(store_dir)
    assert len(store.features(all_versions=True)) == 4  # nothing duplicated, the old breast1 row kept
    current = store.features()
    assert current["case_id"].tolist() == ["brain1", "brain2", "breast1"]
    assert (
        current.set_index("case_id").loc["breast1", "original_shape_VoxelVolume"]
        < store.features(all_versions=True).query("case_id == 'breast1'")["original_shape_VoxelVolume"].max()
    )

    # other params: refused, naming both, and nothing of the store changes
    with pytest.raises(StoreError, match=f"holds features extracted with params {_settings().params_hash}"):
        run_extract(read_manifest(manifest), _settings("exampleCT.yaml"), store_dir, client)
    assert len(open_store(store_dir).features(all_versions=True)) == 4
    X, _, names = open_store(store_dir).matrix()
    assert X.shape == (3, 100) and len(names) == 100


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
        [
            sys.executable,
            "-m",
            "radcluster.cli",
            "extract",
            str(cohort_with_corrupt),
            "--out",
            str(store_dir),
            "--params",
            str(PARAMS / "Params.yaml"),
            "--workers",
            "2",
            "--dashboard-address",
            ":0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
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
        [
            sys.executable,
            "-m",
            "radcluster.cli",
            "extract",
            str(sample_manifest),
            "--out",
            str(tmp_path / "s"),
            "--params",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "bad.yaml" in proc.stderr and "binWidth" in proc.stderr
    assert "Dask dashboard" not in proc.stdout
    assert not (tmp_path / "s").exists()


def test_current_rows_follow_each_cases_latest_extraction(client, tmp_path):
    """A label removed from the mask is retired; an image changed and changed back is current
    again with its first values; the matrix holds exactly the current rows."""
    import shutil

    from radcluster.synth import make_atlas

    image, mask, _ = make_atlas(tmp_path / "atlas", n_labels=3, seed=5, shape=(24, 40, 36))
    brain, brain_mask = case_paths("brain1")
    shutil.copy(brain, tmp_path / "brain.nrrd")
    manifest = write_manifest(
        tmp_path / "cohort.csv",
        [
            {"case_id": "atlas", "image": str(image), "mask": str(mask), "label": "all"},
            {"case_id": "brain", "image": str(tmp_path / "brain.nrrd"), "mask": str(brain_mask), "label": ""},
        ],
    )
    store_dir = str(tmp_path / "store")
    run_extract(read_manifest(manifest), _settings(), store_dir, client)
    first = open_store(store_dir).features()
    assert list(zip(first["case_id"], first["label"], strict=True)) == [
        ("atlas", 1),
        ("atlas", 2),
        ("atlas", 3),
        ("brain", 1),
    ]

    # label 3 removed from the mask; the brain image changed
    atlas = sitk.ReadImage(str(mask))
    arr = sitk.GetArrayFromImage(atlas)
    arr[arr == 3] = 0
    edited = sitk.GetImageFromArray(arr)
    edited.CopyInformation(atlas)
    sitk.WriteImage(edited, str(mask))
    img = sitk.ReadImage(str(brain))
    brighter = sitk.Cast(img, sitk.sitkFloat32) * 1.5
    sitk.WriteImage(sitk.Cast(brighter, img.GetPixelID()), str(tmp_path / "brain.nrrd"))
    second = run_extract(read_manifest(manifest), _settings(), store_dir, client)
    assert (second.changed, second.rows) == (2, 3)
    now = open_store(store_dir).features()
    assert list(zip(now["case_id"], now["label"], strict=True)) == [("atlas", 1), ("atlas", 2), ("brain", 1)]
    mean = "original_firstorder_Mean"
    assert now[mean].iloc[2] != first[mean].iloc[3]

    shutil.copy(brain, tmp_path / "brain.nrrd")  # the image changed back
    third = run_extract(read_manifest(manifest), _settings(), store_dir, client)
    assert (third.changed, third.skipped, third.rows) == (1, 1, 1)
    back = open_store(store_dir).features()
    assert back[mean].iloc[2] == first[mean].iloc[3]
    assert len(open_store(store_dir).features(all_versions=True)) == 8

    X, rows, names = open_store(store_dir).matrix()
    assert sorted(zip(rows["case_id"], rows["label"], strict=True)) == [("atlas", 1), ("atlas", 2), ("brain", 1)]
    by_key = back.set_index(["case_id", "label"]).loc[list(zip(rows["case_id"], rows["label"], strict=True))]
    np.testing.assert_array_equal(X.compute(), by_key[names].to_numpy(dtype="float64"))


def test_parts_are_cut_by_size_unless_flush_rows_is_given(tmp_path):
    """Without ``flush_rows`` a part holds about ``part_bytes`` of feature values (Parquet's cost
    is per column chunk: wide rows want many rows a part); with it, that many rows."""
    from radcluster.extract import ScanResult
    from radcluster.jobs.extract import _Packed, _Writer

    names = [f"original_firstorder_F{j}" for j in range(100)]

    def write(flush_rows, part_bytes):
        store = open_store(tmp_path / f"store-{flush_rows}-{part_bytes}", must_exist=False)
        writer = _Writer(store, "r1", {"params_hash": "p"}, flush_rows, 3600, part_bytes=part_bytes)
        for i in range(10):
            row = {"case_id": f"c{i}", "label": 1, "params_hash": "p"}
            writer.add(_Packed(ScanResult(f"c{i}", [row], [], 0.0, "h", "m", names), np.full((1, 100), i, float)), [])
        writer.flush()
        assert sorted(store.features(names[:1])["case_id"]) == [f"c{i}" for i in range(10)]
        return [store._dataset([p]).count_rows() for p in sorted(store.parts())]  # rows of each part, in order

    # 100 float64 features are 800 bytes a row: 2,400 bytes is three rows
    assert write(None, 2400) == [3, 3, 3, 1]
    assert write(4, 2400 * 100) == [4, 4, 2]
    assert write(None, 2400 * 100) == [10]
