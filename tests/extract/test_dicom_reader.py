"""Reading DICOM on the worker: series, SEG and RTSTRUCT against SimpleITK, highdicom and the
RIDER reference figures, and features equal to pyradiomics' on the same voxels.

Most tests use the 55 slices around the tumour (all of its contours and SEG frames); the
whole 236-slice series is read by the tests marked slow.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from _dicom import QUICK_PARAMS, TUMOUR_SLICES, ct_files, decoded_seg, rewrite, rider, subset
from radiomics import featureextractor

from radcluster.cohort import Scan
from radcluster.extract import ExtractionSettings, extract_scan
from radcluster.extract.readers import read_scan
from radcluster.extract.readers.dicom import read_segmentation, read_series

# README of the RIDER data: voxel counts and mean HU of the two SEG segments on the CT grid.
SEG_VOXELS = {1: 132_507, 2: 147_522}
SEG_MEAN_HU = {1: -32.25, 2: -30.33}
# What scikit-image's fill gives for the RTSTRUCT ROIs (1: GTVp_test_auto, 2: GTVp_test_man),
# nested contours as holes; the SEG segment with the same voxels has the same number.
RTSTRUCT_VOXELS = {1: 132_395, 2: 147_321}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return subset(tmp_path_factory.mktemp("rider-subset"))


@pytest.fixture(scope="module")
def series(tree):
    return read_series("rider", str(tree / "CT"))


def _same_image(ours, reference):
    assert ours.GetPixelIDTypeAsString() == reference.GetPixelIDTypeAsString()
    assert ours.GetSize() == reference.GetSize()
    assert ours.GetOrigin() == reference.GetOrigin()
    assert ours.GetSpacing() == reference.GetSpacing()
    assert ours.GetDirection() == reference.GetDirection()
    assert np.array_equal(sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(reference))


def _series_reader(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def test_series_equals_simpleitk_image_series_reader(tree, series):
    _same_image(series.image, _series_reader(tree / "CT"))
    assert series.series_uid == pydicom.dcmread(ct_files()[0], stop_before_pixels=True).SeriesInstanceUID
    assert len(series.sop_uids) == len(TUMOUR_SLICES)


@pytest.mark.slow  # 236 slices of 512 x 512, read twice; the default tier reads the tumour's slices
def test_whole_series_equals_simpleitk_image_series_reader():
    ours = read_series("rider", str(rider() / "CT")).image
    _same_image(ours, _series_reader(rider() / "CT"))
    assert ours.GetSize() == (512, 512, 236)


def test_slices_sorted_by_position_not_file_name_or_instance_number(tmp_path):
    """Files named and numbered against the slice order still give the ImageSeriesReader image."""
    slices = list(range(150, 156))

    def scramble(ds, k):
        ds.InstanceNumber = 100 - k  # numbered backwards

    folder = rewrite(tmp_path / "ct", slices, scramble)
    for i, f in enumerate(sorted(folder.iterdir())):
        f.rename(folder / f"{(7 * i) % 6:02d}-{i}.dcm")  # names in no order
    _same_image(read_series("c", str(folder)).image, _series_reader(folder))


@pytest.mark.parametrize(
    "change",
    [
        {"RescaleSlope": "0.5"},  # non-integer rescale: float64, as GDCM
        {"RescaleIntercept": "0"},  # no rescale: the stored type
        {"RescaleIntercept": "-1024.5"},
        "unsigned12",  # 12-bit unsigned with an integer rescale: the smallest type that holds it
    ],
    ids=["slope", "no-rescale", "fractional-intercept", "unsigned12"],
)
def test_pixel_type_and_values_follow_simpleitk(tmp_path, change):
    def edit(ds, k):
        if change == "unsigned12":
            raw = np.clip(ds.pixel_array.astype(np.int32) + 1024, 0, 4095).astype(np.uint16)
            ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
            ds.PixelData = raw.tobytes()
            del ds.PixelPaddingValue
        else:
            for key, value in change.items():
                setattr(ds, key, value)

    folder = rewrite(tmp_path / "ct", range(160, 163), edit)
    _same_image(read_series("c", str(folder)).image, _series_reader(folder))


def test_slice_spacing_computed_as_itk_does(tmp_path):
    """An irregular-looking but even spacing (0.7 mm written with 6 decimals) matches ITK's value."""

    def move(ds, k):
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], f"{-100 + 0.7 * k:.6f}"]

    folder = rewrite(tmp_path / "ct", range(150, 157), move)
    _same_image(read_series("c", str(folder)).image, _series_reader(folder))


def test_seg_segments_match_the_reference_figures(tree, series):
    seg = read_segmentation("rider", str(tree / "SEG" / "1-1.dcm"), series)
    assert seg.kind == "SEG"
    image = sitk.GetArrayViewFromImage(series.image)
    for roi in seg.rois:
        voxels = sitk.GetArrayViewFromImage(roi.mask) > 0
        assert int(voxels.sum()) == SEG_VOXELS[roi.number]
        assert round(float(image[voxels].mean()), 2) == SEG_MEAN_HU[roi.number]
    # the descriptions as written (swapped relative to the RTSTRUCT: see the data's README)
    assert [(r.number, r.name) for r in seg.rois] == [(1, "GTVp_test_man"), (2, "GTVp_test_auto")]


def test_rtstruct_rasterised_agrees_with_seg(tree, series):
    seg = {r.number: r for r in read_segmentation("rider", str(tree / "SEG" / "1-1.dcm"), series).rois}
    rt = read_segmentation("rider", str(tree / "RTSTRUCT" / "1-1.dcm"), series)
    assert rt.kind == "RTSTRUCT"
    for roi in rt.rois:
        ours = sitk.GetArrayViewFromImage(roi.mask) > 0
        theirs = sitk.GetArrayViewFromImage(seg[roi.number].mask) > 0  # same voxels: same number
        dice = 2 * (ours & theirs).sum() / (ours.sum() + theirs.sum())
        assert int(ours.sum()) == RTSTRUCT_VOXELS[roi.number]
        assert dice > 0.999
        # the SEG's extra voxels are the holes: contours nested inside another one
        assert not (ours & ~theirs).any()


def test_nested_contour_is_a_hole_and_an_island_in_it_is_filled(series):
    """Three nested squares on one slice: outer filled, middle a hole, inner an island."""
    from types import SimpleNamespace

    from radcluster.extract.readers.dicom import rasterise

    origin = np.array(series.image.GetOrigin())
    sx, sy, _ = series.image.GetSpacing()
    z = origin[2] + (series.positions[3] - series.positions[0])

    def square(lo, hi):
        corners = [(lo, lo), (hi, lo), (hi, hi), (lo, hi)]
        return SimpleNamespace(ContourData=[v for c, r in corners for v in (origin[0] + c * sx, origin[1] + r * sy, z)])

    mask = rasterise([square(100, 140), square(110, 130), square(115, 125)], series)
    plane = mask[3]
    assert plane[105, 105] and not plane[112, 112] and plane[120, 120]
    assert mask.sum() == plane.sum()  # only that slice


def test_overlapping_segments_are_separate_label_maps(tree):
    found = read_scan(Scan("rider", str(tree / "CT"), str(tree / "SEG" / "1-1.dcm"), series_uid=None, roi=None))
    assert [layer.labels for layer in found.layers] == [(1,), (2,)]
    assert found.label_names == {1: "GTVp_test_man", 2: "GTVp_test_auto"}
    assert set(found.provenance) == {"series_uid", "segmentation_uid", "instances_hash"}


def _rows(scan, params=QUICK_PARAMS):
    result = extract_scan(scan, ExtractionSettings(params, "p"))
    assert not result.failures, result.failures
    return {row["label"]: row for row in result.rows}


@pytest.fixture(scope="module")
def seg_reference(tree) -> dict[int, dict[str, float]]:
    """execute() on each decoded SEG segment, once for the fast and the plain path."""
    image, masks = decoded_seg(sorted((tree / "CT").iterdir()))
    extractor = featureextractor.RadiomicsFeatureExtractor(_params_dict())
    out = {}
    for label, mask in masks.items():
        direct = extractor.execute(image, mask, label=1)
        out[label] = {k: float(v) for k, v in direct.items() if not k.startswith("diagnostics_")}
    return out


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_seg_rows_equal_pyradiomics_on_series_reader_and_decoded_frames(tree, seg_reference, fast):
    scan = Scan("rider", str(tree / "CT"), str(tree / "SEG" / "1-1.dcm"), roi=None)
    rows = extract_scan(scan, ExtractionSettings(QUICK_PARAMS, "p", fast=fast)).rows
    assert sorted(row["label"] for row in rows) == sorted(seg_reference)
    for row in rows:
        features = seg_reference[row["label"]]
        assert features and {k: row[k] for k in features} == features  # bit for bit


def _params_dict():
    import yaml

    return yaml.safe_load(QUICK_PARAMS)


def test_rtstruct_features_close_to_seg_features(tree):
    seg = _rows(Scan("s", str(tree / "CT"), str(tree / "SEG" / "1-1.dcm"), roi=None))
    rt = _rows(Scan("r", str(tree / "CT"), str(tree / "RTSTRUCT" / "1-1.dcm"), roi=None))
    for number in (1, 2):
        # same tumour: RTSTRUCT ROI n has SEG segment n's voxels (not its description)
        a, b = rt[number]["original_shape_MeshVolume"], seg[number]["original_shape_MeshVolume"]
        assert abs(a - b) / b < 0.01
        assert rt[number]["roi_name"] == ("GTVp_test_auto", "GTVp_test_man")[number - 1]


def test_fractional_seg_thresholded_at_half(tmp_path):
    """A FRACTIONAL segment: voxels at 0.75 are in the mask, voxels at 0.4 are not."""
    import warnings

    import highdicom as hd
    from pydicom.sr.codedict import codes

    slices = (150, 151, 152)
    folder = rewrite(tmp_path / "ct", slices)
    sources = [pydicom.dcmread(folder / ct_files()[i].name) for i in slices]
    fractions = np.zeros((3, 512, 512), dtype=np.float32)
    fractions[:, 200:210, 200:210] = 0.4
    fractions[:, 205:215, 205:215] = 0.75
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="probability",
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    with warnings.catch_warnings():  # RIDER's one-component PatientName, copied from the CT
        warnings.simplefilter("ignore", UserWarning)
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=fractions,
            segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
            segment_descriptions=[segment],
            series_instance_uid=hd.UID(),
            series_number=99,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="radcluster tests",
            manufacturer_model_name="fractional",
            software_versions="0",
            device_serial_number="0",
        )
    seg.save_as(tmp_path / "fractional.dcm")
    series = read_series("c", str(folder))
    [roi] = read_segmentation("c", str(tmp_path / "fractional.dcm"), series).rois
    mask = sitk.GetArrayViewFromImage(roi.mask) > 0
    assert mask.sum() == 3 * 10 * 10 and mask[:, 205:215, 205:215].all()


SPLIT_PARAMS = """\
setting:
  binWidth: 25
imageType:
  Original: {}
  Square: {}
featureClass:
  firstorder:
  shape:
"""


def test_one_dicom_scan_split_over_two_workers_equals_one_task(tree, tmp_path, client):
    """One SEG row and two worker slots: the plan splits it by filtered image; the parts are
    extracted per label map (the overlapping segments) and joined into the unsplit rows."""
    from conftest import write_manifest

    from radcluster import open_store
    from radcluster.cohort import read_manifest
    from radcluster.jobs.extract import run_extract
    from radcluster.plan import make_plan

    manifest = write_manifest(
        tmp_path / "c.csv", [{"case_id": "seg", "image": str(tree / "CT"), "mask": str(tree / "SEG" / "1-1.dcm")}]
    )
    cohort = read_manifest(manifest)
    settings = ExtractionSettings(SPLIT_PARAMS, "split")
    plan = make_plan(cohort, pd.DataFrame(), "split", ["Original", "Square"], slots=2)
    assert [task.part for task in plan.tasks] == [(0, 2), (1, 2)]
    run_extract(cohort, settings, str(tmp_path / "store"), client)
    stored = open_store(tmp_path / "store").features().set_index("label")
    whole = {row["label"]: row for row in extract_scan(cohort.scans[0], settings).rows}
    assert sorted(stored.index) == [1, 2]
    for label, row in whole.items():
        features = [k for k in row if k.startswith(("original_", "square_"))]
        assert len(features) > 30
        assert [stored.loc[label, k] for k in features] == [row[k] for k in features]
