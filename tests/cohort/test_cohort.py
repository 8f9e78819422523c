"""Manifest reading, directory discovery and up-front checks."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SAMPLES, case_paths, write_manifest

from radcluster.cohort import ALL_LABELS, read_label_table, read_manifest
from radcluster.cohort.check import check_cohort
from radcluster.cohort.discover import scan_directory
from radcluster.errors import ManifestError


def test_relative_paths_labels_and_carried_columns(tmp_path):
    (tmp_path / "scans").mkdir()
    for c in ("brain1", "breast1"):
        for p in case_paths(c):
            shutil.copy(p, tmp_path / "scans" / p.name)
    manifest = write_manifest(
        tmp_path / "m.csv",
        [
            {
                "case_id": "007",
                "image": "scans/brain1_image.nrrd",
                "mask": "scans/brain1_label.nrrd",
                "label": "all",
                "patient_id": "P1",
                "outcome": 1,
                "age": 63.5,
            },
            {
                "case_id": "008",
                "image": f"file://{tmp_path}/scans/breast1_image.nrrd",
                "mask": "scans/breast1_label.nrrd",
                "label": "1;2",
                "patient_id": "P2",
                "outcome": 0,
                "age": 70,
            },
            {
                "case_id": "009",
                "image": "scans/breast1_image.nrrd",
                "mask": "scans/breast1_label.nrrd",
                "label": "[3, 4]",
                "patient_id": "",
                "outcome": 0,
                "age": 41,
            },
        ],
    )
    cohort = read_manifest(manifest)
    a, b, c = cohort.scans
    assert a.case_id == "007"  # ids are text: leading zeros survive
    assert a.image == str(tmp_path / "scans" / "brain1_image.nrrd")
    assert b.image == str(tmp_path / "scans" / "breast1_image.nrrd")  # file:// made local
    assert (a.labels, b.labels, c.labels) == (ALL_LABELS, (1, 2), (3, 4))
    assert (a.patient_id, c.patient_id) == ("P1", None)
    assert cohort.carried == ("outcome", "age")
    assert a.extra == {"outcome": 1, "age": 63.5}


def test_every_manifest_problem_reported_at_once(tmp_path):
    manifest = write_manifest(
        tmp_path / "m.csv",
        [
            {"case_id": "a", "image": "x.nrrd", "mask": "y.nrrd", "label": "two"},
            {"case_id": "a", "image": "x.nrrd", "mask": "", "label": 1},
            {"case_id": "", "image": "x.nrrd", "mask": "y.nrrd", "label": "1"},
        ],
    )
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)
    problems = info.value.problems
    assert any("duplicate case_id (rows 2, 3)" in p for p in problems)
    assert any("row 4: empty case_id" in p for p in problems)
    assert any("empty mask path" in p for p in problems)
    assert any("label 'two'" in p for p in problems)
    assert "m.csv" in str(info.value)


def test_missing_columns_and_reserved_names(tmp_path):
    with pytest.raises(ManifestError, match="missing required column.*mask"):
        read_manifest(write_manifest(tmp_path / "a.csv", [{"case_id": "a", "image": "x"}]))
    with pytest.raises(ManifestError, match="params_hash are written by radcluster"):
        read_manifest(
            write_manifest(tmp_path / "b.csv", [{"case_id": "a", "image": "x", "mask": "y", "params_hash": 1}])
        )
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "none.csv")


def test_parquet_manifest(tmp_path):
    import pandas as pd

    image, mask = case_paths("breast1")
    path = tmp_path / "m.parquet"
    pd.DataFrame({"case_id": ["b"], "image": [str(image)], "mask": [str(mask)], "y": [1.5]}).to_parquet(path)
    cohort = read_manifest(path)
    assert cohort.scans[0].extra == {"y": 1.5}


def _write(path, arr, like=None, spacing=(1.0, 1.0, 1.0)):
    img = sitk.GetImageFromArray(arr)
    if like is not None:
        img.CopyInformation(like)
    else:
        img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return path


def test_check_cohort_names_case_file_and_reason(tmp_path):
    image, mask = case_paths("breast1")
    ref = sitk.ReadImage(str(mask))
    shape = sitk.GetArrayViewFromImage(ref).shape
    bad_size = _write(tmp_path / "small.nrrd", np.ones((3, 4, 5), np.uint8))
    empty = _write(tmp_path / "empty.nrrd", np.zeros(shape, np.uint8), like=ref)
    floaty = _write(tmp_path / "float.nrrd", np.full(shape, 0.5, np.float32), like=ref)
    manifest = write_manifest(
        tmp_path / "m.csv",
        [
            {"case_id": "ok", "image": str(image), "mask": str(mask)},
            {"case_id": "gone", "image": str(tmp_path / "gone.nrrd"), "mask": str(mask)},
            {"case_id": "text", "image": str(SAMPLES / "LICENSE.txt"), "mask": str(mask)},
            {"case_id": "size", "image": str(image), "mask": str(bad_size)},
            {"case_id": "empty", "image": str(image), "mask": str(empty)},
            {"case_id": "float", "image": str(image), "mask": str(floaty)},
            {"case_id": "label", "image": str(image), "mask": str(mask), "label": "2"},
        ],
    )
    problems = check_cohort(read_manifest(manifest))
    by_case = {p.case_id: f"{p.file}: {p.reason}" for p in problems}
    assert set(by_case) == {"gone", "text", "size", "empty", "float", "label"}
    assert "gone.nrrd: image file does not exist" in by_case["gone"]
    assert "LICENSE.txt: image is not a readable image" in by_case["text"]
    assert "size differs" in by_case["size"] and "small.nrrd" in by_case["size"]
    assert "mask is empty" in by_case["empty"]
    assert "not integers" in by_case["float"]
    assert "label(s) [2] not present in mask; present: [1]" in by_case["label"]

    proc = subprocess.run(
        [sys.executable, "-m", "radcluster.cli", "cohort", "check", str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "7 case(s) checked, 6 with problems" in proc.stdout


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


@pytest.mark.parametrize("layout", ["nnunet", "pairs", "folders"])
def test_scan_directory_layouts(tmp_path, layout):
    root = tmp_path / layout
    for case in ("c1", "c2"):
        if layout == "nnunet":
            _touch(root / "imagesTr" / f"{case}_0000.nii.gz")
            _touch(root / "imagesTr" / f"{case}_0001.nii.gz")  # second modality: not a new case
            _touch(root / "labelsTr" / f"{case}.nii.gz")
        elif layout == "pairs":
            _touch(root / f"{case}_image.nrrd")
            _touch(root / f"{case}_label.nrrd")
        else:
            _touch(root / case / "ct.nii.gz")
            _touch(root / case / "segmentation.nii.gz")
    frame = scan_directory(root)
    assert frame["case_id"].tolist() == ["c1", "c2"]
    expected = {
        "nnunet": ("imagesTr/c1_0000.nii.gz", "labelsTr/c1.nii.gz"),
        "pairs": ("c1_image.nrrd", "c1_label.nrrd"),
        "folders": ("c1/ct.nii.gz", "c1/segmentation.nii.gz"),
    }[layout]
    assert (frame.loc[0, "image"], frame.loc[0, "mask"]) == expected


def test_cohort_scan_cli_writes_a_manifest_that_reads(tmp_path):
    out = tmp_path / "out" / "cohort.csv"
    out.parent.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "radcluster.cli", "cohort", "scan", str(SAMPLES), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    cohort = read_manifest(out)
    assert [s.case_id for s in cohort.scans] == ["brain1", "brain2", "breast1"]
    assert cohort.scans[0].image == str(SAMPLES / "brain1_image.nrrd")
    assert check_cohort(cohort) == []


def test_label_table(tmp_path):
    path = tmp_path / "labels.tsv"
    path.write_text("label\tname\n1\thippocampus\n2\tamygdala\n")
    assert read_label_table(path) == {1: "hippocampus", 2: "amygdala"}
    csv = tmp_path / "labels.csv"
    csv.write_text("value,region\nx,foo\n")
    with pytest.raises(ManifestError, match="row 2: label value 'x'"):
        read_label_table(csv)
