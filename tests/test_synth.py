"""Tests of radcluster.synth: determinism, file layout, and that the planted signal is there."""

from __future__ import annotations

import doctest
import itertools
import pathlib
import tempfile

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import SimpleITK as sitk
from scipy import ndimage

from radcluster import synth
from radcluster.errors import SpecError
from radcluster.synth import make_atlas, make_cohort

MANIFEST_COLUMNS = ["case_id", "image", "mask", "patient_id", "outcome", "survival_time", "event", "site"]
# Small enough to be fast, large enough for lesions of a few hundred voxels.
SMALL = {"shape": (40, 40, 20), "spacing": (1.0, 1.0, 2.0)}
TINY = {"shape": (24, 24, 16), "spacing": (1.0, 1.0, 2.0)}


def _read(manifest: pathlib.Path, row: pd.Series) -> tuple[sitk.Image, sitk.Image]:
    folder = manifest.parent
    return sitk.ReadImage(str(folder / row["image"])), sitk.ReadImage(str(folder / row["mask"]))


def _arrays(manifest: pathlib.Path) -> list[tuple[np.ndarray, np.ndarray]]:
    table = pd.read_csv(manifest)
    return [tuple(sitk.GetArrayFromImage(im) for im in _read(manifest, row)) for _, row in table.iterrows()]


def _lesion_stats(manifest: pathlib.Path) -> pd.DataFrame:
    table = pd.read_csv(manifest)
    rows = []
    for image, mask in _arrays(manifest):
        lesion = image[mask == 1].astype(float)
        # Fat and soft tissue of the body, away from the lesion: where the site offset shows.
        body = image[(mask == 0) & (image > -300) & (image < 300)].astype(float)
        rows.append(
            {
                "voxels": int(mask.sum()),
                "mean": lesion.mean(),
                "sd": lesion.std(),
                "skew": scipy.stats.skew(lesion),
                "body": body.mean(),
            }
        )
    return pd.concat([table, pd.DataFrame(rows)], axis=1)


def _cohens_d(stats: pd.DataFrame, column: str) -> float:
    a = stats.loc[stats["outcome"] == 0, column]
    b = stats.loc[stats["outcome"] == 1, column]
    return float((b.mean() - a.mean()) / np.sqrt((a.var() + b.var()) / 2))


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[float, pd.DataFrame]:
    """The same 40-case cohort with the signal on and off."""
    out = {}
    for signal in (1.0, 0.0):
        folder = tmp_path_factory.mktemp(f"signal{signal}")
        out[signal] = _lesion_stats(make_cohort(folder, 40, seed=0, signal=signal, **SMALL))
    return out


# --- make_cohort -------------------------------------------------------------------------


def test_same_seed_gives_identical_cohort(tmp_path):
    first = make_cohort(tmp_path / "a", 5, seed=7, **TINY)
    second = make_cohort(tmp_path / "b", 5, seed=7, **TINY)
    pd.testing.assert_frame_equal(pd.read_csv(first), pd.read_csv(second))
    for (im_a, mk_a), (im_b, mk_b) in zip(_arrays(first), _arrays(second), strict=True):
        np.testing.assert_array_equal(im_a, im_b)
        np.testing.assert_array_equal(mk_a, mk_b)


def test_different_seed_gives_different_cohort(tmp_path):
    first = make_cohort(tmp_path / "a", 5, seed=1, **TINY)
    second = make_cohort(tmp_path / "b", 5, seed=2, **TINY)
    a, b = pd.read_csv(first), pd.read_csv(second)
    assert a["case_id"].tolist() == b["case_id"].tolist()
    assert not np.array_equal(a["survival_time"], b["survival_time"])
    for (im_a, mk_a), (im_b, mk_b) in zip(_arrays(first), _arrays(second), strict=True):
        assert not np.array_equal(im_a, im_b)
        assert not np.array_equal(mk_a, mk_b)


def test_manifest_layout_and_geometry(tmp_path):
    manifest = make_cohort(tmp_path / "cohort", 4, seed=3, shape=(32, 28, 16), spacing=(0.7, 0.9, 2.5))
    assert manifest == tmp_path / "cohort" / "manifest.csv"
    table = pd.read_csv(manifest)
    assert table.columns.tolist() == MANIFEST_COLUMNS
    assert table["case_id"].tolist() == ["synth-0001", "synth-0002", "synth-0003", "synth-0004"]
    assert table["image"].tolist() == [f"images/{c}.nii.gz" for c in table["case_id"]]
    assert table["mask"].tolist() == [f"masks/{c}.nii.gz" for c in table["case_id"]]
    assert table["outcome"].dtype.kind == "i" and table["event"].dtype.kind == "i"
    assert set(table["outcome"]) <= {0, 1} and set(table["event"]) <= {0, 1}
    assert (table["survival_time"] > 0).all()
    assert set(table["site"]) <= {"A", "B"}
    for _, row in table.iterrows():
        assert not pathlib.Path(row["image"]).is_absolute()
        image, mask = _read(manifest, row)
        assert image.GetPixelID() == sitk.sitkInt16
        assert mask.GetPixelID() == sitk.sitkUInt8
        assert image.GetSize() == mask.GetSize() == (32, 28, 16)
        np.testing.assert_allclose(image.GetSpacing(), (0.7, 0.9, 2.5))
        assert image.GetSpacing() == mask.GetSpacing()
        assert image.GetOrigin() == mask.GetOrigin()
        assert image.GetDirection() == mask.GetDirection()
        labels = sitk.GetArrayViewFromImage(mask)
        assert set(np.unique(labels).tolist()) == {0, 1}
        hu = sitk.GetArrayViewFromImage(image)
        assert hu.min() >= -1024 and hu.max() <= 3071
        # Air around the body, soft tissue inside it.
        assert hu[0, 0, 0] < -900 and -50 < np.median(hu[hu > -300]) < 100


def test_default_geometry_is_fast_sized_and_balanced(tmp_path):
    table = pd.read_csv(make_cohort(tmp_path))
    assert len(table) == 40
    assert table["outcome"].sum() == 20
    image, mask = _read(tmp_path / "manifest.csv", table.iloc[0])
    assert image.GetSize() == (64, 64, 32)
    np.testing.assert_allclose(image.GetSpacing(), (0.8, 0.8, 2.5))
    assert 50 < sitk.GetArrayViewFromImage(mask).sum() < 20_000


@pytest.mark.parametrize("n_cases, n_positive", [(10, {5}), (9, {4, 5})])
def test_outcome_is_balanced_and_site_independent_of_it(tmp_path, n_cases, n_positive):
    table = pd.read_csv(make_cohort(tmp_path, n_cases, seed=11, n_sites=2, **TINY))
    assert int(table["outcome"].sum()) in n_positive
    counts = pd.crosstab(table["outcome"], table["site"])
    # Sites are dealt evenly within each outcome class.
    assert counts.columns.tolist() == ["A", "B"]
    assert (counts.max(axis=1) - counts.min(axis=1) <= 1).all()


def test_three_sites_are_named_in_order(tmp_path):
    table = pd.read_csv(make_cohort(tmp_path, 12, seed=4, n_sites=3, **TINY))
    assert sorted(table["site"].unique()) == ["A", "B", "C"]
    assert table["site"].value_counts().tolist() == [4, 4, 4]


@pytest.mark.parametrize("column, threshold", [("voxels", 1.2), ("sd", 1.2), ("mean", 0.8)])
def test_signal_separates_the_classes(planted, column, threshold):
    # Outcome 1: larger, denser, more heterogeneous lesions, by a large effect size.
    assert _cohens_d(planted[1.0], column) > threshold


@pytest.mark.parametrize("column", ["voxels", "sd", "mean"])
def test_signal_zero_plants_nothing(planted, column):
    assert abs(_cohens_d(planted[0.0], column)) < 0.6


def test_signal_one_lesions_are_bigger_and_rougher(planted):
    by_class = planted[1.0].groupby("outcome")[["voxels", "sd", "mean"]].median()
    assert by_class.loc[1, "voxels"] > 2 * by_class.loc[0, "voxels"]
    assert by_class.loc[1, "sd"] > 1.8 * by_class.loc[0, "sd"]
    assert by_class.loc[1, "mean"] - by_class.loc[0, "mean"] > 15


@pytest.mark.parametrize("signal", [1.0, 0.0])
def test_site_b_is_brighter_by_about_15_hu(planted, signal):
    body = planted[signal].groupby("site")["body"].mean()
    assert 10 < body["B"] - body["A"] < 20


@pytest.mark.slow  # writes 440 scans
def test_about_a_third_censored_and_survival_follows_lesion_skewness(tmp_path):
    table = pd.read_csv(make_cohort(tmp_path / "tiny", 200, seed=5, shape=(16, 16, 16)))
    assert 0.2 < 1 - table["event"].mean() < 0.4
    # The hazard grows with the lesion's intensity skewness (one of the two survival factors);
    # small lesions make the measured skewness a noisy proxy, so 120 of them.
    rho = {}
    for signal in (1.0, 0.0):
        stats = _lesion_stats(make_cohort(tmp_path / str(signal), 120, seed=1, signal=signal, **SMALL))
        rho[signal] = scipy.stats.spearmanr(stats["skew"], stats["survival_time"]).statistic
    assert rho[1.0] < -0.18 and abs(rho[0.0]) < 0.15, rho


def test_retest_scans_repeat_a_patient_and_can_shift_the_lesion(tmp_path):
    manifest = make_cohort(tmp_path, 6, seed=3, retests=2, retest_shift_hu=60.0, **SMALL)
    table = _lesion_stats(manifest)
    assert table["case_id"].tolist()[-2:] == ["synth-0001-retest", "synth-0002-retest"]
    retest = table[table["retest_of"].notna()].set_index("retest_of")
    first = table.set_index("case_id").loc[retest.index]
    assert (retest["patient_id"] == first["patient_id"]).all()
    assert (retest[["survival_time", "event", "site"]] == first[["survival_time", "event", "site"]]).all().all()
    assert retest["voxels"].to_numpy() == pytest.approx(first["voxels"].to_numpy(), rel=0.25)
    assert (np.abs(retest["mean"].to_numpy() - first["mean"].to_numpy()) > 1).all()
    assert "retest_of" not in pd.read_csv(make_cohort(tmp_path / "plain", 3, seed=3, **TINY)).columns


def test_scans_of_a_patient_share_patient_data_and_a_similar_lesion(tmp_path):
    manifest = make_cohort(tmp_path, 7, seed=2, scans_per_patient=3, **SMALL)
    table = _lesion_stats(manifest)
    assert table["patient_id"].value_counts().sort_index().tolist() == [3, 3, 1]
    assert table["patient_id"].iloc[:3].nunique() == 1
    patient_columns = ["outcome", "survival_time", "event", "site"]
    assert (table.groupby("patient_id")[patient_columns].nunique() == 1).all().all()
    arrays = _arrays(manifest)
    for first, second in itertools.combinations(range(3), 2):
        # New noise on every scan, but the same lesion give or take a few percent.
        assert not np.array_equal(arrays[first][0], arrays[second][0])
        assert table["voxels"][second] == pytest.approx(table["voxels"][first], rel=0.25)
        centroids = [np.array(ndimage.center_of_mass(arrays[i][1])) for i in (first, second)]
        assert np.abs(centroids[0] - centroids[1]).max() < 3


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_cases": 1}, "n_cases"),
        ({"seed": -1}, "seed"),
        ({"scans_per_patient": 0}, "scans_per_patient"),
        ({"n_sites": 27}, "n_sites"),
        ({"shape": (8, 64, 32)}, "shape"),
        ({"shape": (64, 64)}, "shape"),
        ({"spacing": (0.8, 0.0, 2.5)}, "spacing"),
        ({"signal": -0.5}, "signal"),
        ({"retests": -1}, "retests"),
        ({"n_cases": 4, "retests": 5}, "retests"),
        ({"retest_shift_hu": -1.0}, "retest_shift_hu"),
    ],
)
def test_make_cohort_rejects_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(SpecError, match=f"'{name}'"):
        make_cohort(tmp_path, **kwargs)
    assert not (tmp_path / "manifest.csv").exists()


# --- make_atlas --------------------------------------------------------------------------

ATLAS = {"n_labels": 12, "shape": (32, 40, 36), "spacing": (1.2, 1.0, 1.0)}


def test_atlas_has_every_label_and_a_matching_table(tmp_path):
    image_path, mask_path, table_path = make_atlas(tmp_path, seed=1, **ATLAS)
    assert (image_path.name, mask_path.name, table_path.name) == (
        "atlas_image.nii.gz",
        "atlas_mask.nii.gz",
        "atlas_labels.tsv",
    )
    image, mask = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(mask_path))
    assert mask.GetPixelID() == sitk.sitkUInt16
    assert image.GetSize() == mask.GetSize() == (32, 40, 36)
    np.testing.assert_allclose(mask.GetSpacing(), (1.2, 1.0, 1.0))
    assert image.GetSpacing() == mask.GetSpacing() and image.GetOrigin() == mask.GetOrigin()
    assert image.GetDirection() == mask.GetDirection()

    labels = sitk.GetArrayFromImage(mask)
    counts = np.bincount(labels.ravel())
    assert counts.size == 13 and (counts[1:] >= 200).all()
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        _, n_parts = ndimage.label(labels[box] == label, structure=np.ones((3, 3, 3)))
        assert n_parts == 1, f"label {label} is split into {n_parts} pieces"
    # Labels cover brain tissue, not air.
    assert sitk.GetArrayViewFromImage(image)[labels > 0].min() > 0
    assert labels[0, 0, 0] == 0

    table = pd.read_csv(table_path, sep="\t")
    assert table.columns.tolist() == ["label", "name"]
    assert table["label"].tolist() == list(range(1, 13))
    assert table["name"].tolist()[:2] == ["region_001", "region_002"]


def test_atlas_is_deterministic_per_seed(tmp_path):
    def arrays(folder, seed):
        paths = make_atlas(tmp_path / folder, seed=seed, **ATLAS)
        return [sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in paths[:2]]

    a, b, c = arrays("a", 0), arrays("b", 0), arrays("c", 1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[1], c[1])


def test_atlas_rejects_more_labels_than_the_brain_holds(tmp_path):
    with pytest.raises(SpecError, match="n_labels=500"):
        make_atlas(tmp_path, n_labels=500, shape=(32, 40, 36))


def test_docstring_examples_run(tmp_path, monkeypatch):
    # The examples write to tempfile.mkdtemp(); keep those files inside pytest's tmp_path.
    counter = itertools.count()
    monkeypatch.setattr(tempfile, "mkdtemp", lambda: str(tmp_path / f"example{next(counter)}"))
    result = doctest.testmod(synth, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 8
    assert result.failed == 0
