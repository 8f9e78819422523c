"""Readers: a scan's files -> image + masks on one grid.

One module per input kind (SimpleITK-readable files here, a DICOM series with RTSTRUCT or
SEG in :mod:`.dicom`). :func:`read_scan` takes a :class:`radcluster.cohort.Scan` and returns
a :class:`ScanInput`: SimpleITK images on one grid, or it raises
:class:`radcluster.errors.ScanError` naming the case, the file and the reason; it knows
nothing of Dask or of the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...cohort import Scan
from ...errors import ScanError

__all__ = ["Layer", "ScanInput", "read_scan", "REORIENTED"]

# Metadata key of a mask resampled onto its image's grid (its value says how it was stored).
REORIENTED = "radcluster_reoriented"


@dataclass(frozen=True)
class Layer:
    """A label map on the image grid and the labels to extract from it (None: the manifest's)."""

    mask: Any  # SimpleITK.Image
    labels: tuple[int, ...] | None = None


@dataclass
class ScanInput:
    """An image and its masks on one grid, with what the rows of this scan record of them.

    Overlapping ROIs (two outlines of one tumour) cannot share a label map, so a scan has one
    or more layers, each a label map of ROIs that do not overlap.
    """

    image: Any  # SimpleITK.Image
    layers: list[Layer]
    label_names: dict[int, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)  # columns of every row of the scan
    per_label: dict[int, dict[str, Any]] = field(default_factory=dict)  # columns of one label's row
    failures: list[ScanError] = field(default_factory=list)  # labels that could not be read
    mask_file: str | None = None


def read_scan(scan: Scan) -> ScanInput:
    """Read a scan's image and masks on the machine this runs on."""
    if scan.dicom:
        return _read_dicom(scan)
    return _read_files(scan)


def _read_files(scan: Scan) -> ScanInput:
    """An image file and a mask file (NRRD, NIfTI, ...); a mask stored with flipped or
    permuted index axes on the image's grid is resampled onto it (nearest neighbour: each
    voxel moves, none is interpolated)."""
    import SimpleITK as sitk

    from ...cohort.images import geometry_mismatch, reorientation

    image = _read(scan.case_id, scan.image, "image")
    mask = _read(scan.case_id, scan.mask, "mask")
    provenance = {}
    if geometry_mismatch(image, mask) and mask.GetNumberOfComponentsPerPixel() == 1:
        how = reorientation(image, mask)
        if how:
            mask = sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())
            # the mask is no longer its file: pyradiomics' own path must be given the image
            mask.SetMetaData(REORIENTED, how)
            provenance["mask_reoriented"] = how
    return ScanInput(image, [Layer(mask)], provenance=provenance, mask_file=scan.mask)


def _read(case_id: str, path: str, role: str):
    """One image file (the tests count the reads of a scan through this)."""
    from ...cohort.images import read_image

    return read_image(case_id, path, role)


def _read_dicom(scan: Scan) -> ScanInput:
    import SimpleITK as sitk

    from .dicom import read_segmentation, read_series

    series = read_series(scan.case_id, scan.image, scan.series_uid)
    seg = read_segmentation(scan.case_id, scan.mask, series, scan.roi)
    rois = [r for r in seg.rois if not isinstance(r, ScanError)]
    layers = []
    for group in _non_overlapping(rois):
        top = max(r.number for r in group)
        label_map = np.zeros(sitk.GetArrayViewFromImage(group[0].mask).shape, dtype=_label_type(top))
        for roi in group:
            label_map[sitk.GetArrayViewFromImage(roi.mask) > 0] = roi.number
        mask = sitk.GetImageFromArray(label_map)
        mask.CopyInformation(series.image)
        layers.append(Layer(mask, tuple(sorted(r.number for r in group))))
    return ScanInput(
        series.image,
        layers,
        label_names={r.number: r.label_name for r in rois},
        provenance={
            "series_uid": series.series_uid,
            "segmentation_uid": seg.sop_uid,
            "instances_hash": series.instances_hash,
        },
        per_label={r.number: {"roi_number": r.number, "roi_name": r.name} for r in rois},
        failures=[r for r in seg.rois if isinstance(r, ScanError)],
        mask_file=scan.mask,
    )


def _label_type(top: int) -> type:
    return np.uint8 if top <= np.iinfo(np.uint8).max else np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32


def _non_overlapping(rois: list) -> list[list]:
    """ROIs in groups whose masks do not overlap (greedy, in ROI order): one label map each."""
    import SimpleITK as sitk

    groups: list[tuple[np.ndarray, list]] = []
    for roi in sorted(rois, key=lambda r: r.number):
        voxels = sitk.GetArrayViewFromImage(roi.mask) > 0
        for taken, members in groups:
            if not (taken & voxels).any():
                taken |= voxels
                members.append(roi)
                break
        else:
            groups.append((voxels.copy(), [roi]))
    return [members for _, members in groups]
