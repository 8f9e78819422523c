"""The ISA-L reader returns what sitk.ReadImage returns, or nothing (and SimpleITK reads the file)."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import DATA, SHARED_CASES

from radcluster.cohort.images import read_image
from radcluster.errors import ScanError
from radcluster.extract.readers.fastread import read_gzip_voxels

SAMPLE_FILES = sorted(DATA.glob("*.nrrd")) + sorted(SHARED_CASES.glob("*.nrrd"))


def _fast(path) -> sitk.Image | None:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return read_gzip_voxels(str(path), reader)


def assert_identical(ours: sitk.Image, path) -> None:
    theirs = sitk.ReadImage(str(path))
    assert ours.GetPixelID() == theirs.GetPixelID()
    assert ours.GetSize() == theirs.GetSize()
    assert ours.GetSpacing() == theirs.GetSpacing()
    assert ours.GetOrigin() == theirs.GetOrigin()
    assert ours.GetDirection() == theirs.GetDirection()
    assert ours.GetNumberOfComponentsPerPixel() == theirs.GetNumberOfComponentsPerPixel()
    a, b = sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(theirs)
    assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_sample_file_reads_identically_as_nifti(tmp_path, path):
    """Each sample case (NRRD, left to SimpleITK: see the next test) rewritten as gzip NIfTI."""
    assert _fast(path) is None
    nifti = tmp_path / "case.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(path)), str(nifti), useCompression=True)
    image = _fast(nifti)
    assert image is not None, "a gzip NIfTI this reader should take"
    assert_identical(image, nifti)


def test_gzip_nrrd_is_read_by_simpleitk(tmp_path):
    """ITK's NRRD reader inflates as fast as ISA-L on CTs and 4-5x faster on label maps, so a
    gzip NRRD never takes this path (it made every real-case task slower)."""
    path = tmp_path / "mask.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), dtype=np.uint8)), str(path), useCompression=True)
    assert _fast(path) is None
    assert_identical(read_image("c", str(path), "mask"), path)


def _geometry(image: sitk.Image) -> sitk.Image:
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-120.5, 33.25, -700.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return image


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"])
def test_written_by_simpleitk_reads_identically(tmp_path, dtype):
    rng = np.random.default_rng(1)
    arr = (rng.normal(0, 50, (7, 9, 11)) + (0 if dtype.startswith("u") else -20)).clip(
        0 if dtype.startswith("u") else None
    )
    path = tmp_path / "image.nii.gz"
    sitk.WriteImage(_geometry(sitk.GetImageFromArray(arr.astype(dtype))), str(path), useCompression=True)
    image = _fast(path)
    assert image is not None
    assert_identical(image, path)


@pytest.mark.parametrize("order", ["<", ">"])
def test_nifti_in_either_byte_order(tmp_path, order):
    arr = np.arange(5 * 6 * 7, dtype=f"{order}i2").reshape(5, 6, 7) - 100
    affine = np.diag([0.9, 1.1, 3.0, 1.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    img = nib.Nifti1Image(arr, affine)
    img.header.set_data_dtype(np.dtype(f"{order}i2"))
    img.header.set_slope_inter(1.0, 0.0)
    path = tmp_path / "image.nii.gz"
    nib.save(img, str(path))
    image = _fast(path)
    assert image is not None
    assert_identical(image, path)


def test_scaled_nifti_is_left_to_simpleitk(tmp_path):
    img = nib.Nifti1Image(np.arange(60, dtype=np.int16).reshape(3, 4, 5), np.eye(4))
    img.header.set_slope_inter(2.0, -1.0)
    path = tmp_path / "scaled.nii.gz"
    nib.save(img, str(path))
    assert _fast(path) is None
    image = read_image("c", str(path), "image")
    assert image.GetPixelID() == sitk.ReadImage(str(path)).GetPixelID() == sitk.sitkFloat32
    assert sitk.GetArrayViewFromImage(image).max() == 2.0 * 59 - 1


def test_other_encodings_and_layouts_are_left_to_simpleitk(tmp_path):
    arr = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    raw = tmp_path / "raw.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(raw), useCompression=False)
    vector = tmp_path / "vector.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([arr, arr], axis=-1), isVector=True), str(vector), True)
    plain_nifti = tmp_path / "plain.nii"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(plain_nifti))
    for path in (raw, vector, plain_nifti):
        assert _fast(path) is None, path.name
        assert_identical(read_image("c", str(path), "image"), path)


def test_damaged_gzip_is_left_to_simpleitk_and_fails_as_before(tmp_path):
    good = tmp_path / "good.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(4096, dtype=np.int16).reshape(16, 16, 16)), str(good), True)
    data = good.read_bytes()
    cut = tmp_path / "cut.nrrd"
    cut.write_bytes(data[:-40])
    assert _fast(cut) is None
    with pytest.raises(ScanError, match="voxel data does not"):
        read_image("c", str(cut), "image")

    nifti = tmp_path / "cut.nii.gz"
    nifti.write_bytes(gzip.compress(gzip.decompress(_nifti_bytes(tmp_path)))[:-30])
    assert _fast(nifti) is None
    with pytest.raises(ScanError, match="truncated or corrupt"):
        read_image("c", str(nifti), "image")


def _nifti_bytes(tmp_path) -> bytes:
    path = tmp_path / "whole.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(4096, dtype=np.int16).reshape(16, 16, 16)), str(path), True)
    return path.read_bytes()
