"""IBSI names, matching rule, IBSI mode and the compliance report, against IBSI's reference values.

The digital phantom (CC BY 4.0) is shipped in tests/data/ibsi_digital_phantom; the CT phantom
(CC BY-NC 3.0) is not: its tests use ../shared/data/ibsi when present and skip otherwise.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from conftest import DATA

from radcluster import ibsi
from radcluster.cli import main
from radcluster.errors import SpecError
from radcluster.ibsi import IBSIConfig, check_compliance, extract_ibsi, matches, rounded_difference, to_ibsi_names
from radcluster.ibsi.mode import discretise, preprocess

DIGITAL = DATA / "ibsi_digital_phantom"
SHARED_IBSI = Path(__file__).resolve().parents[3] / "shared" / "data" / "ibsi"
CT_REASON = f"the IBSI CT phantom (CC BY-NC, not shipped) is not at {SHARED_IBSI}/ct_phantom"
needs_ct = pytest.mark.skipif(not (SHARED_IBSI / "ct_phantom" / "image.nii.gz").is_file(), reason=CT_REASON)


def _phantom(root: Path, name: str) -> tuple[sitk.Image, sitk.Image]:
    image = sitk.Cast(sitk.ReadImage(str(root / name / "image.nii.gz")), sitk.sitkFloat32)
    return image, sitk.ReadImage(str(root / name / "mask.nii.gz"))


@pytest.fixture(scope="module")
def digital_result():
    return check_compliance(DIGITAL)


# --- matching rule ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reference", "tolerance", "expected"),
    [
        (2.1486486, 2.15, 0.0, True),  # difference 0.0014 rounds to 0.00
        (0.5124178, 0.512, 0.0, True),  # a plain abs(diff) <= 0 would fail this
        (9.2449049, 9.31, 0.06, False),  # 0.0651 rounds to 0.07 > 0.06 (pyradiomics' minor axis, N vs N-1)
        (9.2500, 9.31, 0.06, True),  # 0.06 <= 0.06 despite binary floating point
        (8.4781095, 8.54, 0.05, False),  # pyradiomics' least axis length
        (556.333, 556.0, 4.0, True),
        (-0.3546205, -0.355, 0.0, True),  # negative reference
        (-905.0 + 19.4, -905.0, 19.0, True),  # 19.4 rounds to 19 at the units figure of -905
        (-905.0 + 19.6, -905.0, 19.0, False),
        (1.67e9, 1.65e9, 2e7, True),
        (1.675e9, 1.65e9, 2e7, False),  # 2.5e7 rounds half up to 3e7
        (0.0, 0.0, 0.0, True),  # a zero reference is compared unrounded
        (1e-3, 0.0, 0.0, False),
        (float("nan"), 1.0, 0.5, False),
        (None, 1.0, 0.5, False),
    ],
)
def test_matching_rule(value, reference, tolerance, expected):
    assert matches(value, reference, tolerance) is expected


def test_rounded_difference_is_rounded_at_the_third_significant_figure():
    assert rounded_difference(2.1486, 2.15) == 0.0
    assert rounded_difference(9.2449, 9.31) == pytest.approx(0.07)
    assert rounded_difference(0.0180276, 0.0194) == pytest.approx(0.0014)
    assert rounded_difference(23516.8, 25200) == pytest.approx(1700)
    assert rounded_difference(1.675e9, 1.65e9) == pytest.approx(3e7)  # 2.5e7: half up


# --- names --------------------------------------------------------------------------------------


def _features() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "case_id": ["a", "b"],
            "label": [1, 1],
            "diagnostics_Versions_PyRadiomics": ["3.1.4", "3.1.4"],
            "original_firstorder_Kurtosis": [2.5, 4.0],
            "original_firstorder_Mean": [10.0, 20.0],
            "original_shape_LeastAxisLength": [8.5, 9.0],
            "original_glcm_Contrast": [5.3, 5.4],
            "original_glcm_DifferenceAverage": [1.4, 1.5],
            "original_glcm_MCC": [0.2, 0.3],
            "original_gldm_SmallDependenceEmphasis": [0.04, 0.05],
            "wavelet-LLH_glcm_Contrast": [1.0, 2.0],
        }
    )


def test_to_ibsi_names_renames_shifts_kurtosis_and_keeps_other_columns():
    df = _features()
    out = to_ibsi_names(df)
    assert out.columns.tolist() == [
        "case_id",
        "label",
        "diagnostics_Versions_PyRadiomics",
        "stat_kurt",
        "stat_mean",
        "morph_pca_least_axis",
        "cm_contrast_3D_avg",
        "cm_diff_avg_3D_avg",
        "original_glcm_MCC",
        "ngl_lde_3D",
        "wavelet-LLH_glcm_Contrast",
    ]
    assert out["stat_kurt"].tolist() == [-0.5, 1.0]  # IBSI excess kurtosis
    assert out["stat_mean"].tolist() == [10.0, 20.0]
    assert out["case_id"].tolist() == ["a", "b"]
    assert df.columns[3] == "original_firstorder_Kurtosis" and df.iloc[0, 3] == 2.5  # input untouched


def test_to_ibsi_names_drops_unmappable_features_but_not_other_columns():
    out = to_ibsi_names(_features(), unmapped="drop")
    assert "original_glcm_MCC" not in out and "wavelet-LLH_glcm_Contrast" not in out
    assert {"case_id", "label", "diagnostics_Versions_PyRadiomics"} <= set(out.columns)


def test_to_ibsi_names_follows_the_aggregation():
    out = to_ibsi_names(_features(), aggregation="2_5D_comb", unmapped="drop")
    assert "cm_contrast_2_5D_comb" in out and "ngl_lde_2_5D" in out
    assert "stat_kurt" in out  # no aggregation for statistics
    no_texture = to_ibsi_names(_features(), aggregation=None, unmapped="drop")
    assert not any(c.startswith(("cm_", "ngl_")) for c in no_texture.columns)


def test_to_ibsi_names_rejects_bad_arguments():
    with pytest.raises(SpecError, match="'unmapped': must be 'keep' or 'drop'; got 'ignore'"):
        to_ibsi_names(_features(), unmapped="ignore")
    with pytest.raises(SpecError, match="'aggregation': must be one of"):
        to_ibsi_names(_features(), aggregation="3D")


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, "3D_avg"),
        ({"weightingNorm": "no_weighting"}, "3D_comb"),
        ({"force2D": True}, "2_5D_avg"),
        ({"force2D": True, "force2Ddimension": 0, "weightingNorm": "no_weighting"}, "2_5D_comb"),
        ({"weightingNorm": "manhattan"}, None),
        ({"force2D": True, "force2Ddimension": 1}, None),
    ],
)
def test_aggregation_from_settings(settings, expected):
    assert ibsi.aggregation_from_settings(settings) == expected


def test_name_table_names_real_pyradiomics_features_and_real_ibsi_tags():
    from radiomics import firstorder, glcm, gldm, glrlm, glszm, ngtdm, shape

    classes = {
        "shape": shape.RadiomicsShape,
        "firstorder": firstorder.RadiomicsFirstOrder,
        "histogram": firstorder.RadiomicsFirstOrder,
        "glcm": glcm.RadiomicsGLCM,
        "glrlm": glrlm.RadiomicsGLRLM,
        "glszm": glszm.RadiomicsGLSZM,
        "gldm": gldm.RadiomicsGLDM,
        "ngtdm": ngtdm.RadiomicsNGTDM,
    }
    tags = set(ibsi.read_reference(DIGITAL / "reference_values" / "ibsi_1_dig_phantom.csv"))
    for row in ibsi.name_table():
        cls, feature = row.pyradiomics.split("_", 1)
        assert feature in classes[cls].getFeatureNames(), row
        for agg in row.aggregations or ("",):
            tag = f"{row.ibsi_tag}_{agg}" if agg else row.ibsi_tag
            assert tag in tags, (row, tag)
    renamed = [(r.pyradiomics, r.tag("3D_avg")) for r in ibsi.name_table() if r.rename]
    assert len({p for p, _ in renamed}) == len(renamed)  # one IBSI name per pyradiomics column


# --- IBSI config --------------------------------------------------------------------------------


def test_named_configurations_follow_ibsi_table_5_1():
    a, b, c, d, e = (IBSIConfig.named(n) for n in "ABCDE")
    assert (a.spacing, a.resegment_range, a.bin_width, a.aggregation) == (None, (-500, 400), 25, "2D_avg")
    assert (b.spacing, b.round_intensities, b.bin_count) == ((2, 2, None), True, 32)
    assert (c.spacing, c.resegment_range, c.bin_width, c.aggregation) == ((2, 2, 2), (-1000, 400), 25, "3D_avg")
    assert (d.resegment_range, d.outlier_sigma, d.bin_count, d.interpolation) == (None, 3, 32, "linear")
    assert (e.resegment_range, e.outlier_sigma, e.interpolation) == ((-1000, 400), 3, "cubic")


def test_config_errors_name_the_key_and_the_fix():
    with pytest.raises(SpecError, match="key 'bin_widht': unknown key; did you mean 'bin_width'"):
        IBSIConfig.from_dict({"bin_widht": 25})
    with pytest.raises(SpecError, match="set exactly one of 'bin_width'"):
        IBSIConfig(bin_width=25, bin_count=32)
    with pytest.raises(SpecError, match="key 'interpolation': must be one of"):
        IBSIConfig(bin_count=32, interpolation="tricubic")
    with pytest.raises(SpecError, match="key 'resegment_range': must be"):
        IBSIConfig(bin_count=32, resegment_range=(400, -1000))
    with pytest.raises(SpecError, match="IBSI configuration 'F': unknown"):
        IBSIConfig.named("F")


def test_config_round_trips_and_reads_pyradiomics_params():
    c = IBSIConfig.named("E")
    assert IBSIConfig.from_dict(c.to_dict()) == c
    p = IBSIConfig.from_params(
        {
            "setting": {
                "binCount": 32,
                "resampledPixelSpacing": [2, 2, 0],
                "interpolator": "sitkLinear",
                "resegmentRange": [-3, 3],
                "resegmentMode": "sigma",
                "force2D": True,
                "weightingNorm": "no_weighting",
            }
        }
    )
    assert (p.spacing, p.outlier_sigma, p.bin_count, p.aggregation) == ((2, 2, None), 3, 32, "2_5D_comb")
    with pytest.raises(SpecError, match="'setting.weightingNorm' in IBSI mode: 'manhattan' has no IBSI aggregation"):
        IBSIConfig.from_params({"setting": {"weightingNorm": "manhattan"}})


def test_params_ibsi_mode_cannot_honour_are_rejected_up_front():
    with pytest.raises(SpecError, match=r"enables \['Wavelet'\], but IBSI mode computes features of the original"):
        ibsi.check_ibsi_params({"imageType": {"Original": {}, "Wavelet": {}}})
    with pytest.raises(SpecError, match="'featureClass.shape2D' in IBSI mode: not supported"):
        ibsi.check_ibsi_params({"featureClass": {"shape2D": None}})
    classes, settings = ibsi.check_ibsi_params(
        {"featureClass": {"glcm": ["Contrast"]}, "setting": {"binWidth": 10, "distances": [1, 2]}}
    )
    assert classes == {"glcm": ["Contrast"]} and settings == {"distances": [1, 2], "symmetricalGLCM": True, "gldm_a": 0}


# --- IBSI mode building blocks ------------------------------------------------------------------


def test_fixed_bin_size_counts_from_the_lower_bound_and_fixed_bin_number_ends_at_n():
    fbs = IBSIConfig(bin_width=25, resegment_range=(-1000, 400))
    assert discretise(np.array([-939.0, -925.0, -900.0, 393.0]), fbs, lower=-1000).tolist() == [3, 4, 5, 56]
    fbn = IBSIConfig(bin_count=32)
    assert discretise(np.array([-10.0, 0.0, 10.0]), fbn).tolist() == [1, 17, 32]
    assert discretise(np.array([5.0, 5.0]), fbn).tolist() == [1, 1]


def test_texture_features_see_ibsi_bin_numbers_not_renumbered_ones():
    # ROI intensities -100 and -75, lower bound -1000, width 25: IBSI bins 37 and 38; stock
    # pyradiomics would renumber them 1 and 2
    values = np.where(np.indices((4, 6, 6)).sum(0) % 2 == 0, -100.0, -75.0)
    image = sitk.GetImageFromArray(values)
    mask = sitk.GetImageFromArray(np.ones(values.shape, np.uint8))
    cfg = IBSIConfig(bin_width=25, resegment_range=(-1000, 400))
    f = extract_ibsi(image, mask, 1, {"featureClass": {"glcm": ["JointAverage"], "firstorder": ["Mean"]}}, cfg)
    assert f["original_histogram_Minimum"] == 37.0 and f["original_histogram_Maximum"] == 38.0
    assert 37.0 <= f["original_glcm_JointAverage"] <= 38.0
    assert f["original_firstorder_Mean"] == pytest.approx(-87.5)


def test_resampling_grid_is_centred_on_the_image():
    image = sitk.Image(204, 201, 60, sitk.sitkFloat32)
    image.SetSpacing((0.977, 0.977, 3.0))
    image.SetOrigin((-174.4, -79.6, -100.4))
    mask = sitk.Image(204, 201, 60, sitk.sitkUInt8)
    mask.CopyInformation(image)
    mask[100, 100, 30] = 1
    mask[101, 100, 30] = 1
    pre = preprocess(image, mask, 1, IBSIConfig(spacing=(2, 2, 2), bin_count=8), crop=False)
    assert [pre.diagnostics[f"img_dim_{a}_interp_img"] for a in "xyz"] == [100, 99, 90]
    from radcluster.ibsi.mode import _grid

    sb, nb, ob = _grid(image, (2, 2, 2))
    old_centre = np.array(image.GetOrigin()) + np.array(image.GetSpacing()) * (np.array(image.GetSize()) - 1) / 2
    assert np.allclose(ob + sb * (nb - 1) / 2, old_centre)


@pytest.mark.parametrize("interpolation", ["linear", "cubic"])
def test_cropping_before_resampling_changes_nothing(interpolation):
    rng = np.random.default_rng(7)
    arr = rng.normal(0, 300, (30, 40, 36)).round()
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.9, 0.8, 2.5))
    image.SetOrigin((-12.0, 3.5, 40.0))
    marr = np.zeros(arr.shape, np.uint8)
    marr[10:20, 12:30, 8:25] = 1
    mask = sitk.GetImageFromArray(marr)
    mask.CopyInformation(image)
    cfg = IBSIConfig(
        spacing=(2, 2, 2),
        interpolation=interpolation,
        round_intensities=True,
        resegment_range=(-500, 400),
        outlier_sigma=3,
        bin_count=16,
    )
    a, b = preprocess(image, mask, 1, cfg, crop=True), preprocess(image, mask, 1, cfg, crop=False)
    assert np.array_equal(a.morph_mask, b.morph_mask) and np.array_equal(a.bins, b.bins)
    assert np.array_equal(a.intensities[a.morph_mask], b.intensities[b.morph_mask])


def test_preprocess_reports_what_went_wrong():
    image = sitk.GetImageFromArray(np.zeros((3, 3, 3)))
    mask = sitk.GetImageFromArray(np.ones((3, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="label 2 is not present in the mask"):
        preprocess(image, mask, 2, IBSIConfig(bin_count=8))
    with pytest.raises(ValueError, match="0 voxel\\(s\\) left after resegmentation"):
        preprocess(image, mask, 1, IBSIConfig(bin_count=8, resegment_range=(100, 200)))


def test_mask_on_another_grid_is_refused():
    image = sitk.GetImageFromArray(np.zeros((3, 3, 3)))
    mask = sitk.GetImageFromArray(np.ones((3, 3, 3), np.uint8))
    mask.SetOrigin((0.0, 0.0, 5.0))
    with pytest.raises(ValueError, match="image/mask geometry mismatch: origin differs"):
        extract_ibsi(image, mask, 1, None, IBSIConfig(bin_count=8))


def test_ibsi_mode_leaves_stock_pyradiomics_unchanged():
    """Default unchanged: IBSI mode subclasses pyradiomics' classes and patches nothing."""
    from radiomics import base, featureextractor, glcm

    image, mask = _phantom(DIGITAL, "digital_phantom")

    def stock() -> dict:
        ex = featureextractor.RadiomicsFeatureExtractor(binWidth=1, voxelArrayShift=0)
        ex.disableAllFeatures()
        ex.enableFeaturesByName(glcm=["JointAverage"], firstorder=["Kurtosis"], shape=["LeastAxisLength"])
        return {k: float(v) for k, v in ex.execute(image, mask).items() if k.startswith("original_")}

    before = stock()
    extract_ibsi(image, mask, 1, None, IBSIConfig(bin_width=10, resegment_range=(-5, 100)))
    assert stock() == before
    assert before["original_shape_LeastAxisLength"] == pytest.approx(8.4781095, abs=1e-6)  # N, not N-1
    assert glcm.RadiomicsGLCM._applyBinning is base.RadiomicsFeaturesBase._applyBinning


# --- digital phantom: the shipped copy ----------------------------------------------------------


def test_digital_phantom_ibsi_mode_values_under_pyradiomics_names():
    image, mask = _phantom(DIGITAL, "digital_phantom")
    f = extract_ibsi(image, mask, 1, None, "digital_phantom")
    # IBSI reference values: stat_kurt -0.355, morph_pca_least_axis 8.54 +/- 0.05, cm_joint_avg_3D_avg 2.14
    assert f["original_firstorder_Kurtosis"] - 3 == pytest.approx(-0.35462, abs=1e-5)
    assert f["original_shape_LeastAxisLength"] == pytest.approx(8.4781095 * math.sqrt(74 / 73))
    assert f["original_glcm_JointAverage"] == pytest.approx(2.1429950, abs=1e-6)
    assert f["original_histogram_Mean"] == pytest.approx(2.1486486, abs=1e-6)
    renamed = to_ibsi_names(pd.DataFrame([f]), unmapped="drop")
    ref = ibsi.read_reference(DIGITAL / "reference_values" / "ibsi_1_dig_phantom.csv")
    compared = [t for t in renamed.columns if t in ref]
    # 11 shape (pyradiomics' 3 deprecated ones are off by default), 15 statistics, 2 + 13 histogram,
    # 23 GLCM, 16 GLRLM, 16 GLSZM, 15 NGLDM, 5 NGTDM: each has a reference value...
    assert len(compared) == 116
    assert all(matches(renamed[t].iloc[0], *ref[t]) for t in compared)  # ...and matches it


def test_digital_phantom_compliance_counts(digital_result):
    (d,) = digital_result.datasets
    assert d.name == "digital phantom"
    # stock pyradiomics: every mappable feature matches but the two PCA axes (N vs N-1)
    assert d.counts("stock") == (265, 267, 215)
    mismatched = {c.tag: c for c in d.mismatches("stock")}
    assert sorted(mismatched) == ["morph_pca_least_axis", "morph_pca_min_axis"]
    assert mismatched["morph_pca_least_axis"].value == pytest.approx(8.4781095, abs=1e-6)
    assert mismatched["morph_pca_least_axis"].difference == pytest.approx(0.06)
    assert all(c.reason.startswith("definition: pyradiomics divides the covariance by N") for c in mismatched.values())
    # IBSI mode: also the 2D aggregations, the intensity histogram, N-1 axes: all match
    assert d.counts("ibsi") == (398, 398, 84)
    assert d.counts("ibsi", "cm") == (150, 150, 0) and d.counts("ibsi", "ih") == (15, 15, 8)
    assert d.counts("stock", "cm") == (100, 100, 50)  # stock has no per-slice 2D aggregation
    assert digital_result.unexplained() == []


def test_report_and_entry_point(tmp_path, digital_result, capsys):
    text = ibsi.render_report(digital_result)
    assert "| digital phantom | 482 | 265 / 267 | 398 / 398 | 215 / 84 | - |" in text
    assert "Every mismatch has a documented cause." in text
    assert "| `morph_pca_least_axis` | `original_shape_LeastAxisLength` | 8.54 | 0.05 | 8.47811 | 0.06 |" in text
    out = tmp_path / "docs" / "ibsi.md"
    assert main(["ibsi", "--reference", str(DIGITAL), "--out", str(out)]) == 0
    assert out.read_text() == text
    assert "digital phantom: stock 265/267, IBSI mode 398/398" in capsys.readouterr().out
    assert main(["ibsi", "--reference", str(tmp_path), "--out", str(out)]) == 2
    assert "lacks" in capsys.readouterr().err


# --- CT phantom, configurations A-E (not shipped) -----------------------------------------------


@needs_ct
@pytest.mark.parametrize(
    ("config", "counts"),
    [
        ("A", (280, 280, 66)),
        ("B", (280, 280, 66)),
        ("C", (162, 162, 48)),
        ("D", (162, 162, 48)),
        ("E", (162, 162, 48)),
    ],
)
def test_ct_phantom_ibsi_mode_matches_every_mappable_feature(config, counts):
    (d,) = check_compliance(SHARED_IBSI, modes=("ibsi",), configs=(config,)).datasets
    assert d.mismatches("ibsi") == []
    assert d.counts("ibsi") == counts
    # grid sizes, voxel counts and intensity ranges after interpolation and resegmentation
    assert d.counts("ibsi", "diag") == (28, 28, 32)


@needs_ct
def test_ct_phantom_configuration_c_through_the_extraction_hook():
    image, mask = _phantom(SHARED_IBSI, "ct_phantom")
    ref = ibsi.read_reference(SHARED_IBSI / "reference_values" / "ibsi_1_chest_config_c.csv")
    f = extract_ibsi(image, mask, 1, None, "C")
    # FBS 25 from -1000: the ROI (min -939 HU) starts at bin 3, which stock pyradiomics renumbers to 1
    assert f["original_histogram_Minimum"] == 3.0
    assert f["original_glcm_JointAverage"] == pytest.approx(ref["cm_joint_avg_3D_avg"][0], abs=0.05)
    renamed = to_ibsi_names(pd.DataFrame([f]), aggregation="3D_avg", unmapped="drop")
    compared = [t for t in renamed.columns if t in ref]
    assert len(compared) == 116  # as for the digital phantom
    assert [t for t in compared if not matches(renamed[t].iloc[0], *ref[t])] == []


@needs_ct
@pytest.mark.slow  # every dataset, mode and config again; the default tier checks the CT phantom config by config
def test_committed_report_is_what_the_code_generates():
    """docs/ibsi-compliance.md is regenerated, not edited: it must equal a fresh run (bar versions)."""
    committed = Path(__file__).resolve().parents[2] / "docs" / "ibsi-compliance.md"
    fresh = ibsi.render_report(check_compliance(SHARED_IBSI))

    def body(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith("Features computed by")]

    assert body(committed.read_text()) == body(fresh)
