"""DICOM test cases derived from the RIDER Lung CT files in ../shared (CC BY 4.0).

The real series, RTSTRUCT and SEG are read from ``../shared/data/dicom-rider-lung``; tests
that need them skip when it is absent. Small cases (a subset of slices) and broken ones (a
missing or duplicated slice, modified headers, another transfer syntax) are written by the
tests into their ``tmp_path`` with pydicom.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

RIDER = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom-rider-lung"
# Identifiers in the RIDER headers that must never reach a store, a run record or a log.
RIDER_PATIENT_ID = "RIDER-1129164940"
RIDER_BIRTH_DATE = "19461119"
RIDER_SERIES = "1.3.6.1.4.1.9328.50.1.83304264089411327530730818890072724533"
# The tumour's contours lie on slices 146..188 (in position order, 0-based) of 236.
TUMOUR_SLICES = range(140, 195)


def rider() -> Path:
    if not (RIDER / "CT").is_dir():
        pytest.skip(f"the RIDER Lung CT DICOM files are not present at {RIDER}")
    return RIDER


def ct_files() -> list[Path]:
    """The CT slices in position order (their file names happen to sort the same way)."""
    import pydicom

    files = sorted((rider() / "CT").iterdir())
    return sorted(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))


def subset(dest: Path, slices=TUMOUR_SLICES, *, seg: bool = True, rtstruct: bool = True) -> Path:
    """A tree with some of the CT's slices (linked, not copied) and the SEG and RTSTRUCT."""
    files = ct_files()
    (dest / "CT").mkdir(parents=True)
    for i in slices:
        os.symlink(files[i], dest / "CT" / files[i].name)
    for kind, wanted in (("SEG", seg), ("RTSTRUCT", rtstruct)):
        if wanted:
            (dest / kind).mkdir()
            shutil.copyfile(rider() / kind / "1-1.dcm", dest / kind / "1-1.dcm")
    return dest


def rewrite(folder: Path, slices, change: Callable | None = None) -> Path:
    """Slices of the CT written into ``folder``; ``change(ds, k)`` edits the k-th before it is saved."""
    import pydicom

    files = ct_files()
    folder.mkdir(parents=True, exist_ok=True)
    for k, i in enumerate(slices):
        ds = pydicom.dcmread(files[i])
        if change is not None:
            change(ds, k)
        ds.save_as(folder / files[i].name)
    return folder


def edit(src: Path, dest: Path, change: Callable) -> Path:
    """A copy of the DICOM file ``src`` at ``dest`` with ``change(ds)`` applied."""
    import pydicom

    ds = pydicom.dcmread(src)
    change(ds)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest)
    return dest


# Feature classes that keep a DICOM test quick (the RIDER tumour has ~130,000 voxels; the
# texture classes take seconds each) while covering intensities and the mesh.
QUICK_PARAMS = """\
setting:
  binWidth: 25
featureClass:
  firstorder:
  shape:
"""


def decoded_seg(series_files: list[Path]):
    """SimpleITK's ImageSeriesReader image of ``series_files`` and the SEG's decoded frames on it.

    The reference of the parity tests: what a pyradiomics user gets with SimpleITK and
    highdicom, without radcluster.
    """
    import highdicom as hd
    import numpy as np
    import pydicom
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    folder = str(series_files[0].parent)
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder))
    image = reader.Execute()
    sops = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in reader.GetFileNames()]
    seg = hd.seg.segread(str(rider() / "SEG" / "1-1.dcm"))
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=sops,
        segment_numbers=[1, 2],
        combine_segments=False,
        ignore_spatial_locations=True,
        assert_missing_frames_are_empty=True,
    )
    masks = {}
    for k in (1, 2):
        mask = sitk.GetImageFromArray(np.ascontiguousarray(frames[..., k - 1]).astype(np.uint8))
        mask.CopyInformation(image)
        masks[k] = mask
    return image, masks
