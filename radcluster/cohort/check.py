"""Up-front checks of a cohort's scans: the checks the extraction task runs, without extracting."""

from __future__ import annotations

import numpy as np

from ..errors import ScanError
from . import ALL_LABELS, Cohort, Scan
from .images import components, geometry_mismatch, read_image, reorientation


def check_scan(scan: Scan, image, mask, *, tolerance: float = 1e-6, geometry: bool = True) -> None:
    """Raise :class:`ScanError` (stage ``check``) for the first problem of an image and its mask.

    ``image`` and ``mask`` are SimpleITK images, or readers holding their headers only (then
    the voxel checks are skipped). Shared by :func:`check_cohort` and the extraction task.
    Checks, in this order: 2D or 3D image, same dimension, one component per image voxel,
    the same grid (unless ``geometry`` is false: pyradiomics' ``correctMask`` resamples the
    mask), finite image voxels, integer mask voxels. A vector mask passes: pyradiomics picks
    its ``label_channel``.
    """
    import SimpleITK as sitk

    def bad(role: str, reason: str):
        return ScanError(scan.case_id, "check", reason, file=scan.image if role == "image" else scan.mask)

    dim, mask_dim = image.GetDimension(), mask.GetDimension()
    if dim not in (2, 3):
        raise bad("image", f"image is {dim}D; only 2D and 3D images are supported")
    if mask_dim != dim:
        raise bad("mask", f"mask is {mask_dim}D but image is {dim}D")
    if components(image) != 1:
        raise bad("image", "image has several components per voxel (a vector image)")
    reason = geometry_mismatch(image, mask, tolerance) if geometry else None
    if reason:
        raise bad("mask", f"image/mask geometry mismatch: {reason}")
    if isinstance(image, sitk.Image):
        arr = sitk.GetArrayViewFromImage(image)
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            counts = [
                f"{n} {kind}"
                for n, kind in ((int(np.isnan(arr).sum()), "NaN"), (int(np.isinf(arr).sum()), "infinite"))
                if n
            ]
            raise bad("image", f"image has {' and '.join(counts)} voxel(s); features would be NaN or wrong")
    if isinstance(mask, sitk.Image) and components(mask) == 1:
        marr = sitk.GetArrayViewFromImage(mask)
        if np.issubdtype(marr.dtype, np.floating) and not np.all(np.mod(marr, 1) == 0):
            raise bad("mask", f"mask voxels are not integers (pixel type {marr.dtype})")


def check_cohort(
    cohort: Cohort,
    *,
    tolerance: float = 1e-6,
    default_label: int = 1,
    check_labels: bool = True,
    notes: list[str] | None = None,
) -> list[ScanError]:
    """Every problem of every scan (case, file, stage, reason), without extracting anything.

    Runs the checks the extraction task runs (:func:`read_image`, :func:`check_scan`), so a
    scan is reported here for the reason its extraction would fail. With ``check_labels``
    (the default) both files are read whole: images for truncated data and NaN or infinite
    voxels, masks for integer values and the requested labels (present, more than one voxel);
    without it only headers are read (existence, format, dimensions, grid). A DICOM series
    and its RTSTRUCT or SEG are always read whole, as extraction reads them. What extraction
    handles but a user should know (a mask stored with flipped axes, resampled onto the
    image's grid) is appended to ``notes``.
    """
    import SimpleITK as sitk

    problems: list[ScanError] = []
    for scan in cohort.scans:
        if scan.dicom:
            problems.extend(_check_dicom(scan))
            continue
        files, errors = {}, []
        for role, path in (("image", scan.image), ("mask", scan.mask)):
            try:
                files[role] = read_image(scan.case_id, path, role, header_only=not check_labels)
            except ScanError as err:
                errors.append(err)
        if not errors:
            flipped = geometry_mismatch(files["image"], files["mask"], tolerance) and reorientation(
                files["image"], files["mask"]
            )
            if flipped and notes is not None:
                notes.append(
                    f"case {scan.case_id!r}: {scan.mask}: mask is stored with {flipped} relative to the image; "
                    "extraction resamples it onto the image grid (nearest neighbour)"
                )
            try:
                check_scan(scan, files["image"], files["mask"], tolerance=tolerance, geometry=not flipped)
                if check_labels and components(files["mask"]) == 1:
                    _check_labels(scan, sitk.GetArrayViewFromImage(files["mask"]), default_label)
            except ScanError as err:
                errors.append(err)
        problems.extend(errors)
    return problems


def _check_dicom(scan: Scan) -> list[ScanError]:
    """The DICOM reader's own failures: reading is the check (series, references, ROIs)."""
    from ..extract.readers import read_scan  # the readers hold the DICOM checks; cohort has no copy

    try:
        errors = read_scan(scan).failures
    except ScanError as err:
        errors = [err]
    return list(errors)


def _check_labels(scan: Scan, arr: np.ndarray, default_label: int) -> None:
    values, counts = np.unique(arr, return_counts=True)
    keep = values != 0
    present = dict(zip(values[keep].astype(np.int64).tolist(), counts[keep].tolist(), strict=True))
    if not present:
        raise ScanError(scan.case_id, "check", "mask is empty (no non-zero voxel)", file=scan.mask)
    wanted = (default_label,) if scan.labels is None else tuple(present) if scan.labels == ALL_LABELS else scan.labels
    missing = [v for v in wanted if v not in present]
    if missing:
        raise ScanError(
            scan.case_id,
            "check",
            f"label(s) {missing} not present in mask; present: {list(present)[:20]}",
            file=scan.mask,
        )
    single = [v for v in wanted if present[v] == 1]
    if single:
        raise ScanError(
            scan.case_id,
            "check",
            f"label(s) {single}: mask only contains 1 segmented voxel; features cannot be extracted for a single voxel",
            file=scan.mask,
        )
