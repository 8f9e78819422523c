"""Per-scan extraction against pyradiomics itself, on the real sample cases."""

from __future__ import annotations

import ast
import functools

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml
from conftest import DATA, PARAMS, SAMPLES, SMALL_CASES, assert_same_features, case_paths, multilabel_case
from radiomics import featureextractor

from radcluster.cohort import ALL_LABELS, Scan
from radcluster.extract import ExtractionSettings, extract_scan
from radcluster.spec import params_hash, read_params

ALL_CASES = (*SMALL_CASES, "lung1", "lung2")


def settings_for(params_file, **kw) -> ExtractionSettings:
    text, digest = read_params(params_file)
    return ExtractionSettings(text, digest, **kw)


def direct(params_file, image, mask, label=1) -> dict[str, float]:
    """What a pyradiomics user gets: execute() on the files, diagnostics dropped."""
    return dict(_execute(str(params_file), str(image), str(mask), label))


@functools.cache
def _execute(params_file: str, image: str, mask: str, label: int) -> dict[str, float]:
    """execute() once per params, files and label: the fast and the plain path of a case compare
    with one reference (files a test writes are in its own tmp_path, never rewritten)."""
    result = featureextractor.RadiomicsFeatureExtractor(params_file).execute(image, mask, label=label)
    return {k: float(v) for k, v in result.items() if not k.startswith("diagnostics_")}


@pytest.mark.parametrize("params", ["Params.yaml", "exampleCT.yaml"])
@pytest.mark.parametrize("case", ALL_CASES)
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_parity_with_direct_pyradiomics(case, params, fast):
    if not fast and params == "exampleCT.yaml" and case not in SMALL_CASES:
        pytest.skip("the plain path is execute() itself; the CT cases are covered by the fast path")
    image, mask = case_paths(case)
    result = extract_scan(Scan(case, str(image), str(mask)), settings_for(PARAMS / params, fast=fast))
    assert result.failures == []
    assert len(result.rows) == 1
    row = result.rows[0]
    assert row["case_id"] == case and row["label"] == 1
    assert_same_features(row, direct(PARAMS / params, image, mask))
    n_expected = {"Params.yaml": 100, "exampleCT.yaml": 1218}[params]
    assert len(result.feature_names) == n_expected


def _baseline_columns() -> dict[str, dict]:
    """pyradiomics' own baseline: every column (a case and its settings, the same in every class
    CSV) with its settings and the values of every class."""
    out: dict[str, dict] = {}
    for csv in sorted((DATA / "baseline").glob("baseline_*.csv")):
        cls = csv.stem.removeprefix("baseline_")
        table = pd.read_csv(csv, index_col=0)
        for col in table.columns:
            settings = ast.literal_eval(table.loc["diagnostics_Configuration_Settings", col])
            entry = out.setdefault(col, {"settings": settings, "classes": {}})
            entry["classes"][cls] = {n: float(v) for n, v in table[col].items() if n.startswith("original_")}
    return out


BASELINE = _baseline_columns()
# The baseline CSVs were made by an older pyradiomics whose surface mesh differed slightly: on
# brain1 alone (not on its resampled column, nor on any other case) these four mesh features
# now differ by up to 9e-4 relative (Sphericity 0.47982 vs 0.48024). Every other value of every
# column must match to 1e-6 (the CSVs print 12 significant digits).
LOOSENED = {("brain1", "shape"): {"MeshVolume", "SurfaceArea", "SurfaceVolumeRatio", "Sphericity"}}


def _largest_slice_mask(case: str, tmp_path):
    """The mask pyradiomics' shape2D baseline used: the label's largest axial slice, one slice thick."""
    _, mask = case_paths(case)
    m = sitk.ReadImage(str(mask))
    arr = sitk.GetArrayFromImage(m)
    z = int((arr == 1).sum(axis=(1, 2)).argmax())
    one = sitk.GetImageFromArray(arr[z : z + 1])
    one.SetSpacing(m.GetSpacing())
    one.SetDirection(m.GetDirection())
    one.SetOrigin(m.TransformIndexToPhysicalPoint((0, 0, z)))
    path = tmp_path / f"{case}_slice.nrrd"
    sitk.WriteImage(one, str(path))
    return path


@pytest.mark.parametrize("column", sorted(BASELINE))
def test_reproduces_pyradiomics_baseline(column, tmp_path):
    """Every column of pyradiomics' baseline CSVs, every class: default settings, 2D, bin count,
    combined, flat region, normalisation, resampling, resegmentation, one-slice shape2D masks."""
    entry = BASELINE[column]
    case = column.split("_")[0]
    settings = {k: v for k, v in entry["settings"].items() if v is not None and k != "additionalInfo"}
    params = {
        "setting": settings,
        "imageType": {"Original": {}},
        "featureClass": {cls: sorted(n.split("_", 2)[2] for n in f) for cls, f in entry["classes"].items()},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    image, mask = case_paths(case)
    if "shape2D" in entry["classes"]:
        mask = _largest_slice_mask(case, tmp_path)
    result = extract_scan(Scan(column, str(image), str(mask)), settings_for(path))
    assert result.failures == []
    [row] = result.rows
    for cls, features in entry["classes"].items():
        loose = LOOSENED.get((column, cls), set())
        strict = {k: v for k, v in features.items() if k.rsplit("_", 1)[1] not in loose}
        assert_same_features(row, strict, rtol=1e-6)
        if loose:
            assert_same_features(row, {k: v for k, v in features.items() if k not in strict}, rtol=1e-3)


@pytest.mark.parametrize("params", ["Params.yaml", "exampleCT.yaml"])
def test_multilabel_every_label_equals_direct_call(tmp_path, params):
    image, mask = multilabel_case(tmp_path)
    scan = Scan("multi", str(image), str(mask), ALL_LABELS)
    names = {1: "lesion-medial", 2: "lesion-lateral", 3: "region-3"}
    result = extract_scan(scan, settings_for(PARAMS / params, label_names=names))
    assert result.failures == []
    assert [r["label"] for r in result.rows] == [1, 2, 3]
    assert [r["label_name"] for r in result.rows] == ["lesion-medial", "lesion-lateral", "region-3"]
    for row in result.rows:
        assert_same_features(row, direct(PARAMS / params, image, mask, label=row["label"]))


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint32])
def test_mask_pixel_type_does_not_change_features(tmp_path, dtype):
    """Labels are found without casting the whole mask; every type still gives execute()'s values."""
    image, mask = multilabel_case(tmp_path)
    m = sitk.ReadImage(str(mask))
    typed = sitk.GetImageFromArray(sitk.GetArrayFromImage(m).astype(dtype))
    typed.CopyInformation(m)
    path = tmp_path / f"mask_{np.dtype(dtype).name}.nrrd"
    sitk.WriteImage(typed, str(path))
    result = extract_scan(Scan("typed", str(image), str(path), ALL_LABELS), settings_for(PARAMS / "Params.yaml"))
    assert result.failures == []
    assert [r["label"] for r in result.rows] == [1, 2, 3]
    for row in result.rows:
        assert_same_features(row, direct(PARAMS / "Params.yaml", image, path, label=row["label"]))


def test_negative_mask_values_are_a_clear_failure(tmp_path):
    image, mask = case_paths("brain1")
    m = sitk.ReadImage(str(mask))
    arr = sitk.GetArrayFromImage(m).astype(np.int16)
    arr[0, 0, 0] = -1
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(m)
    path = tmp_path / "negative.nrrd"
    sitk.WriteImage(bad, str(path))
    result = extract_scan(Scan("neg", str(image), str(path)), settings_for(PARAMS / "Params.yaml"))
    assert result.rows == []
    [failure] = result.failures
    assert failure.stage == "check" and failure.file == str(path)
    assert "negative values (minimum -1)" in failure.message and "neg" in failure.message


def test_requested_label_list_and_absent_label(tmp_path):
    image, mask = multilabel_case(tmp_path)
    result = extract_scan(Scan("multi", str(image), str(mask), (3, 7)), settings_for(PARAMS / "Params.yaml"))
    assert [r["label"] for r in result.rows] == [3]
    [failure] = result.failures
    assert failure.label == 7 and failure.stage == "check"
    assert "label 7 not present" in failure.message and "multi" in failure.message
    assert failure.file == str(mask)


def test_provenance_columns(tmp_path):
    image, mask = case_paths("breast1")
    text, digest = read_params(PARAMS / "Params.yaml")
    result = extract_scan(
        Scan("breast1", str(image), str(mask), extra={"outcome": 1}), ExtractionSettings(text, digest)
    )
    row = result.rows[0]
    assert row["params_hash"] == digest == params_hash(text)
    assert row["pyradiomics_version"].startswith("pyradiomics-bhklab 3.1.")
    assert row["simpleitk_version"] == sitk.Version_VersionString()
    assert row["outcome"] == 1
    assert len(row["image_hash"]) == 32 and row["image_hash"] != row["mask_hash"]
    # the content hash is of the voxels and grid, not the file: the same scan in another
    # format (MetaImage, uncompressed) hashes the same, and features are unchanged
    mha = tmp_path / "breast1.mha"
    sitk.WriteImage(sitk.ReadImage(str(image)), str(mha), useCompression=False)
    again = extract_scan(Scan("breast1", str(mha), str(mask)), ExtractionSettings(text, digest))
    assert again.failures == []
    assert again.rows[0]["image_hash"] == row["image_hash"]
    assert again.rows[0]["original_glcm_Contrast"] == row["original_glcm_Contrast"]


def test_bad_inputs_become_failure_records(tmp_path):
    image, mask = case_paths("breast1")
    settings = settings_for(PARAMS / "Params.yaml")
    corrupt = tmp_path / "corrupt.nrrd"
    corrupt.write_bytes(image.read_bytes()[:3000])
    empty = tmp_path / "empty.nrrd"
    m = sitk.ReadImage(str(mask))
    e = sitk.GetImageFromArray(np.zeros(sitk.GetArrayViewFromImage(m).shape, np.uint8))
    e.CopyInformation(m)
    sitk.WriteImage(e, str(empty))
    shifted = tmp_path / "shifted.nrrd"
    s = sitk.ReadImage(str(mask))
    s.SetOrigin(tuple(o + 5.0 for o in s.GetOrigin()))
    sitk.WriteImage(s, str(shifted))
    cases = {
        "missing": (tmp_path / "nope.nrrd", mask, "read", "does not exist"),
        "corrupt": (corrupt, mask, "read", "not a readable image"),
        "empty": (image, empty, "check", "mask is empty"),
        "shifted": (image, shifted, "check", "origin differs"),
        "not-an-image": (SAMPLES / "LICENSE.txt", mask, "read", "not a readable image"),
    }
    for case_id, (img, msk, stage, reason) in cases.items():
        result = extract_scan(Scan(case_id, str(img), str(msk)), settings)
        assert result.rows == [], case_id
        [failure] = result.failures
        assert failure.case_id == case_id
        assert failure.stage == stage, (case_id, failure)
        assert reason in failure.message, (case_id, failure.message)
        assert f"'{case_id}'" in failure.message
        assert failure.file in (str(img), str(msk))
