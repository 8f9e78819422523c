"""Perturbed copies of a scan (extraction.perturb): the images are what was declared, they go
through the same per-scan function into the same store, and their ICC drops a feature that
does not survive them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage

from radcluster.cohort import Cohort, Scan
from radcluster.errors import SpecError
from radcluster.extract import ExtractionSettings, extract_scan
from radcluster.extract.perturb import Perturbation, perturbations, perturbed_cohort
from radcluster.spec import build_job, read_params


def _image(arr: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(spacing)
    image.SetOrigin((-3.0, 7.5, 12.0))
    return image


def _cube(n: int = 9, lo: int = 3, hi: int = 6) -> np.ndarray:
    mask = np.zeros((n, n, n), dtype=np.uint8)
    mask[lo:hi, lo:hi, lo:hi] = 1
    return mask


def _apply(p: Perturbation, image: np.ndarray, mask: np.ndarray, case: str = "c1", spacing=(1.0, 1.0, 1.0)):
    out, (m,) = p.apply(case, _image(image, spacing), [_image(mask, spacing)])
    return sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(m)


def test_dilation_by_one_voxel_adds_exactly_the_face_border_and_erosion_removes_it():
    image = np.zeros((9, 9, 9), dtype=np.int16)
    cube = _cube()
    _, grown = _apply(Perturbation("dilate", 1), image, cube)
    face = ndimage.generate_binary_structure(3, 1)  # the 6 face neighbours
    assert np.array_equal(grown, ndimage.binary_dilation(cube, face).astype(np.uint8))
    assert grown.sum() - cube.sum() == 6 * 9  # a 3x3 layer on each of the six faces
    _, shrunk = _apply(Perturbation("erode", 1), image, cube)
    assert shrunk.sum() == 1 and shrunk[4, 4, 4] == 1  # only the centre has no face on the outside
    # by two voxels: every voxel within Euclidean distance 2 (centre to centre) of the cube
    _, grown2 = _apply(Perturbation("dilate", 2), image, cube)
    assert np.array_equal(grown2 > 0, ndimage.distance_transform_edt(cube == 0) <= 2)


def test_dilation_grows_each_label_into_the_background_only():
    mask = _cube()
    mask[6, 4, 4] = 2  # touches the cube's face
    _, grown = _apply(Perturbation("dilate", 1), np.zeros((9, 9, 9), np.int16), mask)
    assert grown[6, 4, 4] == 2  # not taken by label 1
    assert grown[7, 4, 4] == 2  # label 2 grew too, where it was alone
    assert grown[6, 5, 4] == 1  # a voxel both labels reach goes to the first (lower) label
    assert (grown == 1).sum() == 27 + 54 - 1  # label 1's border, less the voxel label 2 holds


def test_translation_by_one_voxel_shifts_image_and_mask_by_one_index():
    rng = np.random.default_rng(0)
    image = rng.integers(-100, 100, size=(6, 7, 8)).astype(np.int16)
    mask = (rng.random((6, 7, 8)) > 0.5).astype(np.uint8)
    out, m = _apply(Perturbation("translate", 1), image, mask, spacing=(0.7, 0.9, 2.5))
    assert np.allclose(out[:-1, :-1, :-1], image[1:, 1:, 1:], atol=1e-4)
    assert np.array_equal(m[:-1, :-1, :-1], mask[1:, 1:, 1:])
    assert out[-1, -1, -1] == image.min()  # outside the field of view: the image's minimum
    half, _ = _apply(Perturbation("translate", 0.5), image, mask, spacing=(0.7, 0.9, 2.5))
    corners = [image[a : a + 5, b : b + 6, c : c + 7] for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    assert np.allclose(half[:-1, :-1, :-1], np.mean(corners, axis=0), atol=1e-4)  # trilinear midpoints


def test_rotation_by_90_degrees_about_z_turns_each_slice():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(3, 9, 9)).astype(np.float32)
    mask = (rng.random((3, 9, 9)) > 0.6).astype(np.uint8)
    out, m = _apply(Perturbation("rotate", 90), image, mask, spacing=(0.8, 0.8, 3.0))
    assert np.allclose(out, np.rot90(image, 1, axes=(1, 2)), atol=1e-5)
    assert np.array_equal(m, np.rot90(mask, 1, axes=(1, 2)))


def test_noise_has_the_declared_sd_is_seeded_per_case_and_leaves_the_mask():
    image = np.full((8, 64, 64), 100, dtype=np.int16)
    mask = np.zeros(image.shape, np.uint8)
    mask[2:6, 10:30, 10:30] = 1
    p = Perturbation("noise", 10, seed=3)
    out, m = _apply(p, image, mask)
    assert abs(out.mean() - 100) < 0.2 and abs(out.std() - 10) < 0.3
    assert np.array_equal(m, mask)
    again, _ = _apply(p, image, mask)
    other, _ = _apply(p, image, mask, case="c2")
    assert np.array_equal(out, again) and not np.array_equal(out, other)


def test_a_perturbed_scan_goes_through_extract_scan_on_the_perturbed_voxels(tmp_path):
    rng = np.random.default_rng(2)
    arr = rng.integers(0, 200, size=(20, 20, 20)).astype(np.int16)
    mask = np.zeros(arr.shape, np.uint8)
    mask[6:11, 6:11, 6:11] = 1  # 125 voxels; a face-connected layer adds 6 x 25
    sitk.WriteImage(_image(arr), str(tmp_path / "img.nrrd"))
    sitk.WriteImage(_image(mask), str(tmp_path / "msk.nrrd"))
    text, digest = read_params(None)
    scan = Scan("c1", str(tmp_path / "img.nrrd"), str(tmp_path / "msk.nrrd"))
    for fast in (True, False):  # the plain path (execute()) must get the perturbed images, not the files
        settings = ExtractionSettings(text, digest, fast=fast)
        plain = extract_scan(scan, settings).rows[0]
        grown = extract_scan(dataclasses.replace(scan, perturbation=Perturbation("dilate", 1)), settings)
        assert not grown.failures, grown.failures
        assert plain["original_shape_VoxelVolume"] == 125.0
        assert grown.rows[0]["original_shape_VoxelVolume"] == 275.0
        assert grown.image_hash == extract_scan(scan, settings).image_hash  # the image is untouched
        assert grown.mask_hash != extract_scan(scan, settings).mask_hash


def test_the_perturb_section_is_typed_and_expands_the_cohort():
    job = build_job(
        {"extraction": {"perturb": {"rotate": [-5, 5], "noise": [20], "dilate": [1], "seed": 4}}},
        overrides={"manifest": "m.csv", "store": "s"},
    )
    assert [p.name for p in perturbations(job.extraction.perturb)] == ["rotate-5", "rotate5", "noise20", "dilate1"]
    scans = (Scan("a", "i", "m", extra={"outcome": 1}), Scan("b", "i", "m", extra={"retest_of": "a"}))
    cohort = perturbed_cohort(Cohort(scans, "m.csv", ("outcome", "retest_of")), job.extraction.perturb)
    added = cohort.scans[2:]
    assert [s.case_id for s in added] == ["a~rotate-5", "a~rotate5", "a~noise20", "a~dilate1"]  # retests: not
    assert added[0].extra == {"outcome": 1, "perturbation_of": "a", "perturbation": "rotate-5"}
    assert added[3].perturbation == Perturbation("dilate", 1.0, 4)
    with pytest.raises(SpecError, match=r"key 'extraction.perturb.rotation': unknown key.*rotate"):
        build_job({"extraction": {"perturb": {"rotation": [5]}}}, overrides={"manifest": "m.csv", "store": "s"})
    with pytest.raises(SpecError, match="declares no perturbation"):
        build_job({"extraction": {"perturb": {"seed": 1}}}, overrides={"manifest": "m.csv", "store": "s"})
    with pytest.raises(SpecError, match="extraction.perturb.erode"):
        build_job({"extraction": {"perturb": {"erode": [0]}}}, overrides={"manifest": "m.csv", "store": "s"})


@pytest.mark.slow  # extracts 16 synthetic scans and 32 noisy copies on the cluster, then trains
def test_perturbations_are_extracted_on_the_cluster_and_filter_unstable_features(tmp_path, client):
    from radcluster.jobs.extract import extract_job
    from radcluster.jobs.train import train_store
    from radcluster.store import open_store
    from radcluster.synth import make_cohort

    manifest = make_cohort(tmp_path / "cohort", n_cases=16, shape=(32, 32, 16))
    job = build_job(
        {"extraction": {"perturb": {"noise": [60, 120]}}},
        overrides={"manifest": str(manifest), "store": str(tmp_path / "store")},
    )
    summary = extract_job(job, client=client)
    assert summary.ok and summary.scans == 16 * 3, summary.text()
    store = open_store(tmp_path / "store")
    rows = store.features(["perturbation_of", "perturbation"])
    assert rows["perturbation"].value_counts().to_dict() == {"noise60": 16, "noise120": 16}
    assert rows.loc[rows["perturbation"] == "noise60", "case_id"].str.endswith("~noise60").all()
    table = store.stability()
    icc = table.set_index("feature")["icc"]
    assert (table["source"] == "perturbation").all() and (table["n"] == 16).all() and (table["k"] == 3).all()
    # noise leaves the mask alone: every shape feature is the same in each copy
    assert np.allclose(icc[icc.index.str.startswith("original_shape_")], 1.0, rtol=0, atol=1e-9)
    assert icc["original_firstorder_Minimum"] < 0.75  # the darkest voxel is the noise's
    again = extract_job(job, client=client)  # nothing changed: every perturbed copy is skipped too
    assert again.skipped == 48 and again.rows == 0
    spec = {
        "target": "outcome",
        "model": "logistic_regression",
        "select": {"icc_min": 0.75},
        "cv": {"folds": 2},
        "metrics": {"bootstrap": 0},
        "report": False,
    }
    result = train_store(str(tmp_path / "store"), spec, client, tmp_path / "models")
    dropped = result.metrics["stability"]["dropped"]
    assert "original_firstorder_Minimum" in dropped and "original_shape_VoxelVolume" not in dropped
    assert result.metrics["n_development"] == 16  # the copies are never trained on
    saved = pd.read_parquet(Path(result.version) / "stability.parquet").set_index("feature")["icc"]
    assert np.allclose(saved.to_numpy(), icc.reindex(saved.index).to_numpy(), equal_nan=True)
