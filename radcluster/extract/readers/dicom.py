"""DICOM inputs on the worker: an image series, and its RTSTRUCT or DICOM-SEG as one mask per ROI.

An image series is read from its files (a local folder or an fsspec URL prefix) with pydicom,
whose pixel-data plugins (pylibjpeg: JPEG, JPEG-LS, JPEG 2000, RLE) decode compressed
transfer syntaxes. Slices are sorted by ImagePositionPatient projected on the slice normal,
never by file name or InstanceNumber, and RescaleSlope/Intercept are applied. The result is
the SimpleITK image that ``sitk.ImageSeriesReader`` gives for the same files, voxel for voxel
and with the same pixel type and geometry (the tests compare them), so features equal those
of pyradiomics on that image.

Masks come out on the series' grid, one ``UInt8`` image (0/1) per ROI, because segments may
overlap and so cannot share one label map:

* DICOM-SEG is decoded with highdicom, frames matched to the series' slices through their
  referenced SOP instances; a FRACTIONAL segment is thresholded at 0.5 of its maximum value.
* RTSTRUCT contours are filled with scikit-image (``polygon2mask``: a voxel is inside when its
  centre is inside the polygon). A contour lies on the slice whose plane is nearest (a
  contour farther than half a slice spacing from every slice is refused); contours are not
  interpolated between slices. On one slice, a contour that lies inside another one is a hole,
  one inside a hole is an island again (even-odd by nesting depth), and overlapping contours
  that do not nest are united.

Every problem of the files raises :class:`ScanError` naming the series, the file and the
reason; a problem of one ROI (no contours, no frames) is returned for that ROI alone.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ...cohort.dicom import (
    RTSTRUCT_SOP_CLASS,
    SEG_SOP_CLASS,
    list_files,
    read_dataset,
    roi_names,
    segmentation_file,
    select_rois,
)
from ...errors import ScanError

__all__ = ["Series", "Roi", "Segmentation", "read_series", "read_segmentation", "rasterise"]

# Slices whose gap differs from the series' median gap by more than this share of it are
# a missing or an extra slice: ITK reads such a series with one spacing and misplaces them.
SPACING_TOLERANCE = 0.01
# Orientation cosines and pixel spacings that differ by less than this are the same (headers
# carry them as decimal strings with ~6 significant digits).
_HEADER_TOLERANCE = 1e-4
# FRACTIONAL DICOM-SEG: a voxel belongs to the segment when its value is at least this share
# of the maximum fractional value (highdicom rescales them to 0..1).
FRACTIONAL_THRESHOLD = 0.5


@dataclass(frozen=True)
class Series:
    """An image series read into a SimpleITK image, with what provenance needs."""

    image: object  # SimpleITK.Image
    series_uid: str
    frame_of_reference: str | None
    sop_uids: tuple[str, ...]  # in slice order
    positions: np.ndarray  # each slice's position along the normal, ascending
    instances_hash: str  # sha256 of the sorted SOPInstanceUIDs: which instances made the image


@dataclass(frozen=True)
class Roi:
    number: int
    name: str  # as in the file
    label_name: str  # as the selector names it
    mask: object  # SimpleITK.Image, UInt8 0/1 on the series' grid


@dataclass(frozen=True)
class Segmentation:
    """An RTSTRUCT or SEG read onto a series: a mask per selected ROI, or why that ROI has none."""

    sop_uid: str
    kind: str  # SEG or RTSTRUCT
    rois: list  # Roi, or ScanError (with the ROI number as label) for an ROI that cannot be used


def _floats(value, n: int) -> np.ndarray | None:
    try:
        out = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return out if out.size == n else None


def _pixel_type(ds, slope: float, intercept: float) -> np.dtype:
    """The pixel type SimpleITK (GDCM) gives this series, so the images are the same bit for bit.

    GDCM keeps the stored type without rescaling, uses float64 for a non-integer slope or
    intercept, and otherwise the smallest integer type that holds the rescaled range of the
    stored bits.
    """
    bits, signed = int(ds.BitsStored), int(ds.PixelRepresentation) == 1
    if slope == 1 and intercept == 0:
        return np.dtype(f"{'int' if signed else 'uint'}{max(8, int(ds.BitsAllocated))}")
    if slope != int(slope) or intercept != int(intercept):
        return np.dtype(np.float64)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    ends = sorted((lo * slope + intercept, hi * slope + intercept))
    kinds = ("uint8", "uint16", "uint32") if ends[0] >= 0 else ("int8", "int16", "int32")
    for kind in kinds:
        info = np.iinfo(kind)
        if info.min <= ends[0] and ends[1] <= info.max:
            return np.dtype(kind)
    return np.dtype(np.float64)


def read_series(case_id: str, location: str, series_uid: str | None = None) -> Series:
    """The image series under ``location`` (a folder or URL prefix; only ``series_uid``'s files).

    Raises
    ------
    ScanError
        Stage ``read``: no such series, two series and no UID to choose, a corrupt or
        truncated slice, a localiser or a slice of another orientation or pixel spacing,
        duplicated or missing slices, a transfer syntax that cannot be decoded.
    """
    import SimpleITK as sitk

    def fail(reason: str, file: str | None = None) -> ScanError:
        what = f"series {series_uid}" if series_uid else "image series"
        return ScanError(case_id, "read", f"{what}: {reason}", file=file or location)

    files = list_files(location)
    if not files:
        raise fail("no file under this location")
    slices, other = [], Counter()
    for path in files:
        try:
            ds = read_dataset(path)
        except ValueError as err:
            if str(err).startswith("not a DICOM file"):
                continue  # not part of any series (a README, a thumbnail): nothing to read
            raise fail(str(err), path) from err
        uid = str(ds.get("SeriesInstanceUID", ""))
        if series_uid is not None and uid != series_uid:
            continue
        if ds.SOPClassUID in (SEG_SOP_CLASS, RTSTRUCT_SOP_CLASS) or "PixelData" not in ds:
            other[uid] += 1
            continue
        slices.append((path, ds))
    if series_uid is None:
        found = Counter(str(ds.get("SeriesInstanceUID", "")) for _, ds in slices)
        if len(found) > 1:
            listed = ", ".join(f"{uid} ({n} files)" for uid, n in found.most_common())
            raise fail(f"the folder mixes {len(found)} image series: {listed}; name one in the manifest's series_uid")
        series_uid = next(iter(found), None)
    if not slices:
        raise fail("no image instance of this series under this location")

    for path, ds in slices:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise fail(f"multi-frame image ({frames} frames); only single-frame slices are supported", path)
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds or "PixelSpacing" not in ds:
            raise fail("slice without ImagePositionPatient, ImageOrientationPatient or PixelSpacing", path)
    _refuse_localisers(slices, fail)
    first = slices[0][1]
    iop = _floats(first.ImageOrientationPatient, 6)
    spacing = _floats(first.PixelSpacing, 2)
    for path, ds in slices[1:]:
        for attribute, what, ref in (
            ("ImageOrientationPatient", "orientations", iop),
            ("PixelSpacing", "pixel spacings", spacing),
        ):
            value = _floats(ds[attribute].value, ref.size)
            if value is None or np.abs(value - ref).max() > _HEADER_TOLERANCE:
                raise fail(
                    f"slices have different {what}: {list(ds[attribute].value)} here, "
                    f"{list(first[attribute].value)} in {os.path.basename(slices[0][0])}",
                    path,
                )
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise fail(f"slices have different sizes: {ds.Rows}x{ds.Columns} here, {first.Rows}x{first.Columns}", path)

    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    pos = np.array([float(np.dot(normal, _floats(ds.ImagePositionPatient, 3))) for _, ds in slices])
    order = np.argsort(pos, kind="stable")
    slices = [slices[i] for i in order]
    pos = pos[order]
    _check_positions(slices, pos, fail)

    arrays, dtype = [], None
    for path, ds in slices:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        if dtype is None:
            dtype = _pixel_type(ds, slope, intercept)
        try:
            raw = ds.pixel_array
        except Exception as err:  # pydicom raises many types for undecodable pixel data
            raise fail(_pixel_reason(ds, err), path) from err
        if slope == 1 and intercept == 0:
            arrays.append(raw.astype(dtype, copy=False))
        else:
            arrays.append((raw.astype(np.float64) * slope + intercept).astype(dtype))
    image = sitk.GetImageFromArray(np.stack(arrays))
    ipp0 = [float(v) for v in slices[0][1].ImagePositionPatient]
    image.SetOrigin(ipp0)
    if len(slices) > 1:
        # as ITK's ImageSeriesReader: the distance from the first slice to the last over n-1
        last = np.array([float(v) for v in slices[-1][1].ImagePositionPatient])
        dz = float(np.linalg.norm(last - np.array(ipp0))) / (len(slices) - 1)
    else:
        dz = float(first.get("SliceThickness", 1) or 1)
    image.SetSpacing((float(spacing[1]), float(spacing[0]), dz))
    image.SetDirection(tuple(np.column_stack([row, col, normal]).ravel().tolist()))
    sops = tuple(str(ds.SOPInstanceUID) for _, ds in slices)
    digest = hashlib.sha256("\n".join(sorted(sops)).encode()).hexdigest()[:32]
    return Series(image, series_uid, str(first.get("FrameOfReferenceUID", "")) or None, sops, pos, digest)


def _refuse_localisers(slices, fail) -> None:
    for path, ds in slices:
        kinds = "\\".join(str(v).upper() for v in (ds.get("ImageType") or []))
        if "LOCALIZER" in kinds or "SCOUT" in kinds:
            raise fail(f"a localiser/scout image is among the slices (ImageType {kinds})", path)


def _check_positions(slices, pos: np.ndarray, fail) -> None:
    if len(pos) < 2:
        return
    gaps = np.diff(pos)
    dup = np.flatnonzero(gaps < _HEADER_TOLERANCE)
    if dup.size:
        a, b = slices[dup[0]][0], slices[dup[0] + 1][0]
        raise fail(
            f"duplicated slice: {os.path.basename(a)} and {os.path.basename(b)} are at the same position "
            f"({pos[dup[0]]:.3f} mm along the normal)",
            b,
        )
    nominal = float(np.median(gaps))
    off = np.flatnonzero(np.abs(gaps - nominal) > SPACING_TOLERANCE * nominal)
    if off.size:
        i = off[0]
        raise fail(
            f"uneven slice spacing: {gaps[i]:.3f} mm between {os.path.basename(slices[i][0])} and "
            f"{os.path.basename(slices[i + 1][0])}, {nominal:.3f} mm elsewhere (a missing or extra slice)",
            slices[i + 1][0],
        )


def _pixel_reason(ds, err: Exception) -> str:
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    name = getattr(syntax, "name", None) or str(syntax)
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if syntax is not None and not syntax.is_private and syntax.is_compressed:
        return f"pixel data in transfer syntax '{name}' ({syntax}) cannot be decoded: {text}"
    return f"pixel data cannot be read (transfer syntax '{name}'): {text}"


def read_segmentation(
    case_id: str, location: str, series: Series, selector: str | None = None, aliases=None
) -> Segmentation:
    """The ROIs a selector picks from the RTSTRUCT or DICOM-SEG at ``location``, on ``series``' grid.

    ``location`` is the file, or a folder holding only it (IDC's layout). Raises
    :class:`ScanError` when the object as a whole cannot be used: not a SEG or RTSTRUCT, it
    references another series or frame of reference, or the selector picks nothing.
    """

    def fail(reason: str, label: int | None = None, file: str | None = None) -> ScanError:
        return ScanError(case_id, "read", f"series {series.series_uid}: {reason}", file=file or location, label=label)

    try:
        path = segmentation_file(location)
        ds = read_dataset(path)
    except ValueError as err:
        raise fail(str(err)) from err
    if ds.SOPClassUID not in (SEG_SOP_CLASS, RTSTRUCT_SOP_CLASS):
        raise fail(f"not a DICOM-SEG or RTSTRUCT (SOP class {getattr(ds.SOPClassUID, 'name', ds.SOPClassUID)})")
    kind = "SEG" if ds.SOPClassUID == SEG_SOP_CLASS else "RTSTRUCT"
    names = roi_names(ds)
    selected, unmatched = select_rois(names, selector, aliases)
    if not selected:
        listed = ", ".join(f"{n} '{name}'" for n, name in names) or "none"
        raise fail(f"the selector {selector!r} picks no ROI of this {kind} (its ROIs: {listed})")
    read = _seg_rois if kind == "SEG" else _rtstruct_rois
    rois = read(ds, series, selected, lambda reason, label=None: fail(reason, label, path))
    rois.extend(fail(f"the selector item {item!r} matches no ROI of this {kind}", file=path) for item in unmatched)
    return Segmentation(str(ds.SOPInstanceUID), kind, rois)


def _check_reference(kind: str, referenced: set[str], frame: str | None, series: Series, fail) -> None:
    if referenced and series.series_uid not in referenced:
        raise fail(f"the {kind} references series {', '.join(sorted(referenced))}, not this image series")
    if frame and series.frame_of_reference and frame != series.frame_of_reference:
        raise fail(f"the {kind}'s frame of reference {frame} is not the image series' {series.frame_of_reference}")


def _mask_image(mask: np.ndarray, series: Series):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(mask.astype(np.uint8, copy=False))
    image.CopyInformation(series.image)
    return image


def _seg_rois(ds, series: Series, selected, fail):
    import highdicom as hd

    referenced = {str(r.SeriesInstanceUID) for r in ds.get("ReferencedSeriesSequence", [])}
    _check_reference("SEG", referenced, str(ds.get("FrameOfReferenceUID", "")) or None, series, fail)
    frames = Counter(
        int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        for f in ds.get("PerFrameFunctionalGroupsSequence", [])
        if "SegmentIdentificationSequence" in f
    )
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and "SegmentIdentificationSequence" in shared[0]:
        frames[int(shared[0].SegmentIdentificationSequence[0].ReferencedSegmentNumber)] += int(ds.NumberOfFrames)
    out: list = []
    numbers = [s.number for s in selected if frames[s.number]]
    volume = None
    if numbers:
        try:
            seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
            volume = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=list(series.sop_uids),
                segment_numbers=numbers,
                combine_segments=False,
                ignore_spatial_locations=True,
                assert_missing_frames_are_empty=True,
                rescale_fractional=True,
            )
        except (ValueError, KeyError, AttributeError) as err:
            raise fail(f"the SEG's frames cannot be matched to this series' slices ({err})") from err
    for s in selected:
        number, name = s.number, s.name
        if not frames[number]:
            out.append(fail(f"SEG segment {number} '{name}' has no frames", number))
            continue
        values = volume[..., numbers.index(number)]
        mask = values >= FRACTIONAL_THRESHOLD if values.dtype.kind == "f" else values > 0
        if not mask.any():
            out.append(fail(f"SEG segment {number} '{name}' is empty on this series' slices", number))
            continue
        out.append(Roi(number, name, s.label_name, _mask_image(mask, series)))
    return out


def _rtstruct_rois(ds, series: Series, selected, fail):
    referenced = {
        str(s.SeriesInstanceUID)
        for f in ds.get("ReferencedFrameOfReferenceSequence", [])
        for st in f.get("RTReferencedStudySequence", [])
        for s in st.get("RTReferencedSeriesSequence", [])
    }
    frames = {str(f.FrameOfReferenceUID) for f in ds.get("ReferencedFrameOfReferenceSequence", [])}
    _check_reference("RTSTRUCT", referenced, next(iter(frames)) if len(frames) == 1 else None, series, fail)
    contours = {int(rc.ReferencedROINumber): rc.get("ContourSequence", []) for rc in ds.get("ROIContourSequence", [])}
    frame_of = {
        int(r.ROINumber): str(r.get("ReferencedFrameOfReferenceUID", "")) for r in ds.get("StructureSetROISequence", [])
    }
    out: list = []
    for s in selected:
        number, name = s.number, s.name
        frame = frame_of.get(number)
        if frame and series.frame_of_reference and frame != series.frame_of_reference:
            out.append(
                fail(f"RTSTRUCT ROI {number} '{name}' is in frame of reference {frame}, not the series'", number)
            )
            continue
        closed = [c for c in contours.get(number, []) if str(c.get("ContourGeometricType", "")) == "CLOSED_PLANAR"]
        if not closed:
            out.append(fail(f"RTSTRUCT ROI {number} '{name}' has no closed planar contours", number))
            continue
        try:
            mask = rasterise(closed, series)
        except ValueError as err:
            out.append(fail(f"RTSTRUCT ROI {number} '{name}': {err}", number))
            continue
        if not mask.any():
            out.append(fail(f"RTSTRUCT ROI {number} '{name}' covers no voxel centre", number))
            continue
        out.append(Roi(number, name, s.label_name, _mask_image(mask, series)))
    return out


def rasterise(contours, series: Series) -> np.ndarray:
    """Fill CLOSED_PLANAR contours into a boolean (z, y, x) array on the series' grid."""
    from skimage.draw import polygon2mask
    from skimage.measure import points_in_poly

    image = series.image
    origin = np.array(image.GetOrigin())
    sx, sy, dz = image.GetSpacing()
    direction = np.array(image.GetDirection()).reshape(3, 3)
    shape = tuple(reversed(image.GetSize()))
    positions = series.positions
    per_slice: dict[int, list[np.ndarray]] = {}
    for contour in contours:
        points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3) - origin
        local = points @ direction  # columns: along rows (x), along columns (y), along the normal
        level = float(np.mean(local[:, 2])) + positions[0]
        k = int(np.argmin(np.abs(positions - level)))
        if abs(positions[k] - level) > dz / 2:
            raise ValueError(f"a contour at {level:.2f} mm along the normal is outside the image's slices")
        per_slice.setdefault(k, []).append(np.column_stack([local[:, 1] / sy, local[:, 0] / sx]))
    mask = np.zeros(shape, dtype=bool)
    for k, polygons in per_slice.items():
        depth = [
            sum(bool(points_in_poly(p, q).all()) for j, q in enumerate(polygons) if j != i)
            for i, p in enumerate(polygons)
        ]
        plane = np.zeros(shape[1:], dtype=bool)
        for d, polygon in sorted(zip(depth, polygons, strict=True), key=lambda t: t[0]):
            filled = polygon2mask(shape[1:], polygon)
            if d % 2:
                plane &= ~filled
            else:
                plane |= filled
        mask[k] = plane
    return mask
