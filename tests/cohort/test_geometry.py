"""Geometry traps of real NIfTI/NRRD files: a qform that disagrees with the sform, and a mask
stored with flipped or permuted index axes on the image's grid."""

from __future__ import annotations

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import PARAMS, case_paths, write_manifest

from radcluster.cohort import read_manifest
from radcluster.cohort.check import check_cohort
from radcluster.cohort.images import read_image, reorientation
from radcluster.errors import ScanError
from radcluster.extract import ExtractionSettings, extract_scan
from radcluster.spec import read_params


def _nifti(path, qform_shift=(0.0, 0.0, 0.0), codes=(1, 1)):
    data = np.zeros((12, 10, 8), dtype=np.int16)
    data[3:8, 3:7, 2:6] = 100
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    affine[:3, 3] = [-10.0, -20.0, -30.0]
    img = nibabel.Nifti1Image(data, affine)
    qform = affine.copy()
    qform[:3, 3] += qform_shift
    img.set_qform(qform, code=codes[0])
    img.set_sform(affine, code=codes[1])
    nibabel.save(img, path)
    return str(path)


def test_qform_and_sform_that_disagree_are_refused_naming_both(tmp_path):
    path = _nifti(tmp_path / "scan.nii.gz", qform_shift=(0.0, 0.0, 4.0))
    with pytest.raises(ScanError) as err:
        read_image("c", path, "image")
    assert err.value.stage == "read" and err.value.file == path
    assert "qform (code 1, scanner) and sform (code 1, scanner) disagree: origins 4.000 mm apart" in err.value.reason
    assert "SimpleITK used the sform" in err.value.reason
    assert sitk.ReadImage(path).GetOrigin()[2] == pytest.approx(-30.0)  # which is what it read

    # the qform wins in ITK when the sform is only 'aligned' (code 2): the message says so
    path = _nifti(tmp_path / "aligned.nii.gz", qform_shift=(0.0, 0.0, 4.0), codes=(1, 2))
    with pytest.raises(ScanError, match="SimpleITK used the qform"):
        read_image("c", path, "image", header_only=True)


def test_agreeing_or_single_transforms_pass(tmp_path):
    assert read_image("c", _nifti(tmp_path / "same.nii.gz"), "image").GetSize() == (12, 10, 8)
    assert read_image("c", _nifti(tmp_path / "q.nii", qform_shift=(0, 0, 4.0), codes=(1, 0)), "image")


def test_cohort_check_reports_the_transform_conflict(tmp_path):
    image = _nifti(tmp_path / "scan.nii.gz", qform_shift=(1.0, 0.0, 0.0))
    mask = _nifti(tmp_path / "mask.nii.gz")
    cohort = read_manifest(write_manifest(tmp_path / "c.csv", [{"case_id": "a", "image": image, "mask": mask}]))
    [problem] = check_cohort(cohort, default_label=100)
    line = f"case {problem.case_id!r}: {problem.file}: {problem.reason}"
    assert line.startswith(f"case 'a': {image}: image: the NIfTI qform") and "origins 1.000 mm apart" in line


def _flipped(mask: sitk.Image, axis: int) -> sitk.Image:
    """The same voxels in the same places, stored with ``axis`` running the other way."""
    arr = sitk.GetArrayFromImage(mask)
    flipped = sitk.GetImageFromArray(np.flip(arr, axis=2 - axis).copy())
    direction = np.array(mask.GetDirection()).reshape(3, 3)
    size = mask.GetSize()[axis]
    origin = np.array(mask.GetOrigin()) + direction[:, axis] * mask.GetSpacing()[axis] * (size - 1)
    direction[:, axis] *= -1
    flipped.SetSpacing(mask.GetSpacing())
    flipped.SetOrigin(tuple(origin))
    flipped.SetDirection(tuple(direction.ravel()))
    return flipped


def test_flipped_mask_is_resampled_and_gives_the_same_features(tmp_path):
    image_path, mask_path = case_paths("brain1")
    mask = sitk.ReadImage(str(mask_path))
    flipped = _flipped(mask, axis=0)
    assert reorientation(sitk.ReadImage(str(image_path)), flipped) == "x flipped"
    sitk.WriteImage(flipped, str(tmp_path / "flipped.nrrd"))
    rows = [
        {"case_id": "orig", "image": str(image_path), "mask": str(mask_path)},
        {"case_id": "flip", "image": str(image_path), "mask": str(tmp_path / "flipped.nrrd")},
    ]
    cohort = read_manifest(write_manifest(tmp_path / "c.csv", rows))
    notes: list[str] = []
    assert check_cohort(cohort, notes=notes) == []
    assert notes == [
        f"case 'flip': {tmp_path / 'flipped.nrrd'}: mask is stored with x flipped relative to the image; "
        "extraction resamples it onto the image grid (nearest neighbour)"
    ]
    text, digest = read_params(PARAMS / "Params.yaml")
    for fast in (True, False):
        orig, flip = (extract_scan(s, ExtractionSettings(text, digest, fast=fast)) for s in cohort.scans)
        assert not flip.failures
        features = [k for k in orig.rows[0] if k.startswith("original_")]
        assert [flip.rows[0][k] for k in features] == [orig.rows[0][k] for k in features]
        assert flip.rows[0]["mask_reoriented"] == "x flipped"


def test_permuted_axes_are_named_and_a_shifted_mask_is_refused(tmp_path):
    image_path, mask_path = case_paths("brain1")
    image, mask = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(mask_path))
    both = _flipped(_flipped(mask, 0), 2)
    assert reorientation(image, both) == "x, z flipped"
    permuted = sitk.PermuteAxes(mask, [1, 0, 2])
    assert reorientation(image, permuted) == "axes (y, x, z)"
    shifted = sitk.Image(mask)
    shifted.SetOrigin(tuple(np.array(mask.GetOrigin()) + np.array(mask.GetSpacing()) / 2))
    assert reorientation(image, shifted) is None
    sitk.WriteImage(shifted, str(tmp_path / "shifted.nrrd"))
    cohort = read_manifest(
        write_manifest(
            tmp_path / "c.csv", [{"case_id": "s", "image": str(image_path), "mask": str(tmp_path / "shifted.nrrd")}]
        )
    )
    [problem] = check_cohort(cohort)
    line = f"case {problem.case_id!r}: {problem.file}: {problem.reason}"
    assert "image/mask geometry mismatch: origin differs" in line
