"""Per-scan extraction against pyradiomics itself, on the real sample cases."""

from __future__ import annotations

import ast

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml
from conftest import DATA, PARAMS, SMALL_CASES, case_paths
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
    result = featureextractor.RadiomicsFeatureExtractor(str(params_file)).execute(str(image), str(mask), label=label)
    return {k: float(v) for k, v in result.items() if not k.startswith("diagnostics_")}


def assert_same_features(row: dict, reference: dict[str, float], rtol: float = 1e-6) -> None:
    assert reference, "reference produced no features"
    missing = set(reference) - set(row)
    assert not missing, f"features missing from radcluster's row: {sorted(missing)[:5]}"
    worst = max(abs(row[k] - v) / max(abs(v), 1e-12) for k, v in reference.items())
    assert worst <= rtol, f"largest relative difference {worst:.3g}"


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


def _baseline_columns() -> dict[str, dict[str, float]]:
    """pyradiomics' own baseline: {column: {feature: value}} and each column's settings."""
    out: dict[str, dict] = {}
    for csv in sorted((DATA / "baseline").glob("baseline_*.csv")):
        cls = csv.stem.removeprefix("baseline_")
        table = pd.read_csv(csv, index_col=0)
        for col in table.columns:
            if col.split("_")[0] not in SMALL_CASES:
                continue
            settings = ast.literal_eval(table.loc["diagnostics_Configuration_Settings", col])
            entry = out.setdefault((col, cls), {"settings": settings, "features": {}})
            for name, value in table[col].items():
                if name.startswith("original_") and pd.notna(value):
                    entry["features"][name] = float(value)
    return out


BASELINE = _baseline_columns()
# The baseline CSVs date from pyradiomics 1.3; its surface mesh has changed since, which moves
# mesh-derived shape features by < 0.1% (brain1: Sphericity 0.4798 vs 0.4802). Every other
# feature must match to 1e-6.
MESH_FEATURES = {
    "MeshVolume",
    "SurfaceArea",
    "SurfaceVolumeRatio",
    "Sphericity",
    "Compactness1",
    "Compactness2",
    "SphericalDisproportion",
}


@pytest.mark.parametrize("column,cls", sorted(k for k in BASELINE if k[0] in SMALL_CASES), ids=lambda v: str(v))
def test_reproduces_pyradiomics_baseline(column, cls, tmp_path):
    """The default settings columns (brain1, brain2, breast1) of pyradiomics' baseline CSVs."""
    entry = BASELINE[(column, cls)]
    settings = {k: v for k, v in entry["settings"].items() if v is not None and k != "additionalInfo"}
    params = {
        "setting": settings,
        "imageType": {"Original": {}},
        "featureClass": {cls: sorted(n.split("_", 2)[2] for n in entry["features"])},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    image, mask = case_paths(column)
    result = extract_scan(Scan(column, str(image), str(mask)), settings_for(path))
    assert result.failures == []
    row = result.rows[0]
    for name, expected in entry["features"].items():
        mesh = name.split("_")[-1] in MESH_FEATURES
        assert row[name] == pytest.approx(expected, rel=1e-3 if mesh else 1e-6, abs=1e-9), name


def _multilabel(tmp_path, case="brain1"):
    """brain1's lesion split into two labels, plus a third region elsewhere in the head."""
    image, mask = case_paths(case)
    m = sitk.ReadImage(str(mask))
    arr = sitk.GetArrayFromImage(m).astype(np.uint16)
    z, y, x = np.nonzero(arr)
    arr[(arr == 1) & (np.arange(arr.shape[2])[None, None, :] > np.median(x))] = 2
    arr[arr.shape[0] // 2 - 2 : arr.shape[0] // 2 + 2, 100:120, 100:125] = 3
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(m)
    path = tmp_path / "multi_label.nrrd"
    sitk.WriteImage(out, str(path))
    return image, path


@pytest.mark.parametrize("params", ["Params.yaml", "exampleCT.yaml"])
def test_multilabel_every_label_equals_direct_call(tmp_path, params):
    image, mask = _multilabel(tmp_path)
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
    image, mask = _multilabel(tmp_path)
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
    assert failure["stage"] == "check" and failure["file"] == str(path)
    assert "negative values (minimum -1)" in failure["message"] and "neg" in failure["message"]


def test_requested_label_list_and_absent_label(tmp_path):
    image, mask = _multilabel(tmp_path)
    result = extract_scan(Scan("multi", str(image), str(mask), (3, 7)), settings_for(PARAMS / "Params.yaml"))
    assert [r["label"] for r in result.rows] == [3]
    [failure] = result.failures
    assert failure["label"] == 7 and failure["stage"] == "check"
    assert "label 7 not present" in failure["message"] and "multi" in failure["message"]
    assert failure["file"] == str(mask)


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
        "not-an-image": (DATA / "LICENSE.txt", mask, "read", "not a readable image"),
    }
    for case_id, (img, msk, stage, reason) in cases.items():
        result = extract_scan(Scan(case_id, str(img), str(msk)), settings)
        assert result.rows == [], case_id
        [failure] = result.failures
        assert failure["case_id"] == case_id
        assert failure["stage"] == stage, (case_id, failure)
        assert reason in failure["message"], (case_id, failure["message"])
        assert f"'{case_id}'" in failure["message"]
        assert failure["file"] in (str(img), str(msk))
