"""What the parity matrix does not show by itself: the LBP3D regression of issue 12, params
refused for a missing package, filters that produced nothing, pyradiomics' warnings."""

from __future__ import annotations

import importlib.util

import pytest
import scipy.special
import yaml
from conftest import PARAMS, assert_same_features, case_paths
from radiomics import featureextractor

from radcluster.cohort import Scan
from radcluster.errors import SpecError
from radcluster.extract import ExtractionSettings, extract_scan
from radcluster.extract._radiomics import expected_groups, get_extractor, validate_params
from radcluster.spec import params_hash

# pyradiomics' note on every scan when Sum Average is enabled with a symmetrical GLCM (the default)
SUM_AVERAGE = "GLCM is symmetrical, therefore Sum Average = 2 * Joint Average, only 1 needs to be calculated"


def _run(case: str, params: dict):
    image, mask = case_paths(case)
    text = yaml.safe_dump(params)
    return image, mask, extract_scan(Scan(case, str(image), str(mask)), ExtractionSettings(text, params_hash(text)))


def _execute(params: dict, image, mask) -> dict[str, float]:
    result = featureextractor.RadiomicsFeatureExtractor(params).execute(str(image), str(mask))
    return {k: float(v) for k, v in result.items() if not k.startswith("diagnostics_")}


@pytest.mark.parametrize("other", ["Square", "Wavelet", "LoG"])
@pytest.mark.parametrize("case", ["brain1", "breast1"])
def test_lbp3d_beside_other_filters_equals_execute(case, other):
    """Issue 12: with LBP3D, no preCrop and no resampling, every filter ran on a one-voxel-padded
    crop (square_glcm_ClusterProminence 14.7 relative off). Now LBP3D alone takes execute()'s
    route (whole image, per label) and the run says so."""
    custom = {"sigma": [1.0, 3.0]} if other == "LoG" else {}
    params = {"imageType": {"Original": {}, other: custom, "LBP3D": {}}}
    image, mask, result = _run(case, params)
    assert result.failures == []
    assert result.plain_filters == ["LBP3D"]
    [row] = result.rows
    reference = _execute(params, image, mask)
    assert any(k.startswith("lbp-3D-k_") for k in reference)
    assert_same_features(row, reference)


def test_without_lbp3d_no_filter_takes_the_plain_route():
    _, _, result = _run("breast1", {"imageType": {"Original": {}, "Square": {}, "LBP2D": {}}})
    assert result.failures == [] and result.plain_filters == []


@pytest.mark.parametrize(
    ("image_type", "module", "package"),
    [("LBP2D", "skimage", "scikit-image"), ("LBP3D", "trimesh", "trimesh")],
)
def test_params_needing_a_missing_package_are_refused_naming_it(monkeypatch, image_type, module, package):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else find_spec(name, *a))
    text = yaml.safe_dump({"imageType": {"Original": {}, image_type: {}}})
    with pytest.raises(SpecError, match=f"imageType {image_type}, which needs the package '{package}'"):
        validate_params(text, source="p.yaml")


def test_lbp3d_refused_when_scipy_has_no_sph_harm(monkeypatch):
    monkeypatch.delattr(scipy.special, "sph_harm")
    with pytest.raises(SpecError, match=r"'scipy<1.17 \(scipy.special.sph_harm was removed in SciPy 1.17\)'"):
        validate_params(yaml.safe_dump({"imageType": {"LBP3D": {}}}), source="p.yaml")


def test_lbp_filters_are_installed_with_radcluster():
    for image_type in ("LBP2D", "LBP3D"):
        validate_params(yaml.safe_dump({"imageType": {image_type: {}}}), source="p.yaml")


def test_a_filter_that_produced_nothing_is_a_failure_not_a_short_row():
    """breast1 is 45 voxels wide at 0.66 mm: pyradiomics skips LoG sigma 40 with a warning."""
    image, mask, result = _run("breast1", {"imageType": {"Original": {}, "LoG": {"sigma": [1.0, 40.0]}}})
    reference = _execute({"imageType": {"Original": {}, "LoG": {"sigma": [1.0, 40.0]}}}, image, mask)
    assert any(k.startswith("log-sigma-1-0-mm-3D_") for k in reference)
    assert not any(k.startswith("log-sigma-40-0-mm-3D_") for k in reference)  # what a pyradiomics user gets
    assert result.rows == []
    [failure] = result.failures
    assert failure.case_id == "breast1" and failure.label == 1 and failure.stage == "extract"
    assert "pyradiomics computed no log-sigma-40-0-mm-3D_firstorder" in failure.message
    assert "applyLoG: sigma(40)" in failure.message  # pyradiomics' own reason


def test_pyradiomics_warnings_come_back_with_the_scan():
    """A filter's warning (imageoperations) and a feature class's: the classes that share one
    discretisation log through pyradiomics' own logger ('radiomics.glcm'), as execute()'s do."""
    params = {"imageType": {"Original": {}, "LBP2D": {}}, "featureClass": {"glcm": ["SumAverage"]}}
    _, _, result = _run("brain1", params)
    assert result.failures == []
    assert result.warnings == [
        "Calculating Local Binary Pattern in 2D, but extracting features in 3D. Use with caution!",
        SUM_AVERAGE,
    ]


@pytest.mark.parametrize("params", ["Params.yaml", "exampleCT.yaml"])
def test_expected_groups_are_exactly_what_execute_gives(params):
    """The columns radcluster demands of a row are the ones execute() gives on a case it fully extracts."""
    image, mask = case_paths("brain1")
    text = (PARAMS / params).read_text()
    reference = _execute(yaml.safe_load(text), image, mask)
    groups = expected_groups(get_extractor(text), 3)
    assert len(groups) == len(set(groups))
    assert {k[: k.rindex("_") + 1] for k in reference} == set(groups)


def test_an_interpolator_number_simpleitk_does_not_have_is_refused():
    """pyradiomics' schema allows 1-10; 3 was B-spline in SimpleITK 1 and is nothing in SimpleITK 2."""
    text = yaml.safe_dump({"setting": {"interpolator": 3, "resampledPixelSpacing": [2, 2, 2]}})
    with pytest.raises(SpecError, match="interpolator 3 is not an interpolator in this SimpleITK"):
        validate_params(text, source="p.yaml")
    validate_params(text.replace("interpolator: 3", "interpolator: 2"), source="p.yaml")


@pytest.mark.parametrize("case", ["brain1", "brain2", "breast1", "lung1", "lung2"])
@pytest.mark.parametrize("spacing", [[2, 2, 2], [0.5, 0.5, 3]])
def test_bspline_from_a_crop_gives_the_whole_image_voxels(case, spacing):
    """The one step of the fast path that is not execute()'s computation: a B-spline resampling
    interpolates from a crop with a margin (its prefilter over a whole CT is most of a task)."""
    import numpy as np
    import SimpleITK as sitk
    from radiomics import imageoperations

    from radcluster.extract.fast import _RESAMPLE_MARGIN, _bounds, _crop, find_labels

    image, mask = (sitk.ReadImage(str(p)) for p in case_paths(case))
    mask = sitk.Cast(mask, sitk.sitkUInt32)
    lower, upper = _bounds(find_labels(Scan(case, "", ""), mask)[0])
    kw = {"interpolator": "sitkBSpline", "resampledPixelSpacing": spacing, "padDistance": 5, "label": 1}
    pad = np.ceil(6 * np.array(spacing) / np.array(image.GetSpacing())).astype(int) + _RESAMPLE_MARGIN
    whole, _ = imageoperations.resampleImage(image, mask, **kw)
    cropped, _ = imageoperations.resampleImage(_crop(image, lower, upper, pad), mask, **kw)
    assert whole.GetSize() == cropped.GetSize() and whole.GetOrigin() == cropped.GetOrigin()
    assert np.array_equal(sitk.GetArrayViewFromImage(whole), sitk.GetArrayViewFromImage(cropped))


def test_run_record_names_the_plain_route_and_pyradiomics_warnings_are_logged(client, tmp_path, caplog):
    import json
    import logging

    from conftest import write_manifest

    from radcluster.cohort import read_manifest
    from radcluster.jobs.extract import run_extract

    rows = [
        {"case_id": c, "image": str(case_paths(c)[0]), "mask": str(case_paths(c)[1])} for c in ("brain2", "breast1")
    ]
    manifest = write_manifest(tmp_path / "cohort.csv", rows)
    text = yaml.safe_dump(
        {"imageType": {"Original": {}, "LBP2D": {}, "LBP3D": {}}, "featureClass": {"glcm": ["SumAverage"]}}
    )
    with caplog.at_level(logging.INFO, logger="radcluster"):
        summary = run_extract(
            read_manifest(manifest), ExtractionSettings(text, params_hash(text)), str(tmp_path / "s"), client
        )
    assert summary.failures == 0 and summary.rows == 2
    record = json.loads(next((tmp_path / "s" / "runs").glob("*.json")).read_text())
    assert record["plain_route"] == {"LBP3D": 2}
    lbp2d = "Calculating Local Binary Pattern in 2D, but extracting features in 3D. Use with caution!"
    assert record["pyradiomics_warnings"] == {lbp2d: 2, SUM_AVERAGE: 2}
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name.startswith("radcluster")]
    # once per run, not once per scan; a note about the params at INFO (-v), not as a warning
    assert [level for level, m in logged if lbp2d in m] == [logging.WARNING]
    assert [level for level, m in logged if SUM_AVERAGE in m] == [logging.INFO]


def test_cli_refuses_params_with_a_missing_package_before_a_cluster_starts(
    monkeypatch, tmp_path, sample_manifest, capsys
):
    from radcluster.cli import main

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "skimage" else find_spec(name, *a)
    )
    params = tmp_path / "lbp.yaml"
    params.write_text(yaml.safe_dump({"imageType": {"Original": {}, "LBP2D": {}}}))
    code = main(["extract", str(sample_manifest), "--out", str(tmp_path / "s"), "--params", str(params)])
    assert code == 2
    err = capsys.readouterr()
    assert "imageType LBP2D, which needs the package 'scikit-image'" in err.err
    assert "Dask dashboard" not in err.out and not (tmp_path / "s").exists()
