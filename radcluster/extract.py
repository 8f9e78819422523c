"""Per-scan extraction: a pure function of (scan, settings) that returns rows or failures.

:func:`extract_scan` reads one image and its mask on the machine it runs on, extracts every
requested label with pyradiomics, and returns a :class:`ScanResult`. It never raises for a
problem of the scan itself (unreadable file, geometry mismatch, empty mask, absent label,
pyradiomics error): those become failure records naming the case, the file and the reason.
It knows nothing of Dask or of the store; the scheduler only calls it.

Two paths give the same features (relative difference <= 1e-6, asserted by the tests):

* the fast path (default) reads image and mask once, hashes the decoded voxels once, and
  runs pyradiomics' own pipeline steps (``checkMask``, ``resampleImage``, the image-type
  filters, ``computeShape``, ``computeFeatures``) on a crop around each label, computing
  each filtered image once per scan for all labels;
* the plain path calls ``RadiomicsFeatureExtractor.execute(image, mask, label=l)`` once per
  label, exactly as a pyradiomics user would.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _io
from .cohort import ALL_LABELS, Scan, check_scan
from .errors import ScanError

__all__ = ["ExtractionSettings", "ScanResult", "extract_scan", "FAILURE_COLUMNS"]

FAILURE_COLUMNS = ("case_id", "label", "stage", "error_type", "message", "file")

# ITK's own default coordinate and direction tolerance, restored when a params file sets none.
_ITK_DEFAULT_TOLERANCE = 1e-6
# Image types whose output at a voxel does not depend on the label being extracted, so one
# filtered image serves every label of a scan (LBP3D reads the mask, so it is per label).
_LABEL_FREE_TYPES = frozenset(
    {
        "Original",
        "LoG",
        "Wavelet",
        "Square",
        "SquareRoot",
        "Logarithm",
        "Exponential",
        "Gradient",
        "LBP2D",
    }
)
# Extra voxels kept around a label before B-spline resampling: ITK computes B-spline
# coefficients with a recursive (IIR) prefilter whose influence decays as 0.268**d, so 24
# voxels bound the difference from resampling the whole image by ~1e-14 of the intensity range.
_RESAMPLE_MARGIN = 24


@dataclass(frozen=True)
class ExtractionSettings:
    """What every scan task of a run shares (small: it is sent with each task)."""

    params_text: str
    params_hash: str
    label_names: Mapping[int, str] = field(default_factory=dict)
    fast: bool = True
    sitk_threads: int = 1
    ibsi: bool | str = False  # IBSI mode (radcluster.ibsi): True, or a configuration name "A".."E"


@dataclass
class ScanResult:
    """Rows (one per extracted label) and failures (one per failed label or scan)."""

    case_id: str
    rows: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    seconds: float
    image_hash: str | None = None
    mask_hash: str | None = None
    feature_names: list[str] = field(default_factory=list)
    unchanged: bool = False


def _failure(err: ScanError) -> dict[str, Any]:
    return {
        "case_id": err.case_id,
        "label": err.label,
        "stage": err.stage,
        "error_type": type(err.__cause__).__name__ if err.__cause__ is not None else "ScanError",
        "message": str(err),
        "file": err.file,
    }


def _content_hash(image) -> str:
    """Hash of decoded voxels and grid: the same scan hashes the same in any file format."""
    import SimpleITK as sitk
    import xxhash

    h = xxhash.xxh3_128()
    arr = sitk.GetArrayViewFromImage(image)
    h.update(f"{arr.dtype.str}|{arr.shape}|{image.GetSpacing()}|{image.GetOrigin()}|{image.GetDirection()}".encode())
    h.update(np.ascontiguousarray(arr).data)
    return h.hexdigest()


def _read(case_id: str, path: str, role: str):
    from .cohort import read_image

    return read_image(case_id, path, role)


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _check_inputs(scan: Scan, image, mask, extractor, tolerance: float) -> None:
    """The checks ``radcluster cohort check`` runs, then those that depend on the params."""
    settings = extractor.settings
    # correctMask resamples the mask onto the image grid, so only then may the grids differ
    check_scan(scan, image, mask, tolerance=tolerance, geometry=not settings.get("correctMask"))
    reason = _params_mismatch(image, extractor)
    if reason:
        raise ScanError(scan.case_id, "check", reason, file=scan.image)


def _params_mismatch(image, extractor) -> str | None:
    """Why the params cannot give this image the features they give others, or None.

    pyradiomics skips the 3D-only ``shape`` class for 2D input with only a log warning, so
    a 2D scan's row would silently lack features its 3D neighbours have; a resampling
    spacing of the wrong length fails deep inside the resampler.
    """
    dim = image.GetDimension()
    spacing = extractor.settings.get("resampledPixelSpacing")
    if spacing is not None and len(spacing) != dim:
        return (
            f"image is {dim}D but the params' resampledPixelSpacing {list(spacing)} has {len(spacing)} "
            "values; extract it with params for its dimension"
        )
    if dim == 2 and "shape" in extractor.enabledFeatures:
        return (
            "image is 2D but the params are for 3D images: featureClass 'shape' is 3D-only and "
            "pyradiomics would skip it, leaving this row without its features; extract 2D scans "
            "with their own params (shape2D instead of shape)"
        )
    return None


def _labels_of(scan: Scan, present: list[int], default_label: int, part: tuple[int, int] | None) -> list[int]:
    """The labels this task extracts: the manifest's, or every present one, or part i of k of them."""
    if scan.labels == ALL_LABELS:
        labels = present
    elif scan.labels is None:
        labels = [default_label]
    else:
        labels = list(scan.labels)
    return labels[part[0] :: part[1]] if part else labels


def extract_scan(
    scan: Scan,
    settings: ExtractionSettings,
    *,
    unchanged_if: tuple[str, str] | None = None,
    part: tuple[int, int] | None = None,
) -> ScanResult:
    """Extract every requested label of one scan.

    Parameters
    ----------
    scan : Scan
        Paths are read on the machine this runs on (a Dask worker), never on the client.
    settings : ExtractionSettings
        The params text (parsed once per process), label names, fast or plain path.
    unchanged_if : (image_hash, mask_hash), optional
        The content hashes of the stored extraction of this case with the same params: when
        the files still hash the same, nothing is extracted and the result is marked
        ``unchanged`` (a touched but identical file costs one read, not an extraction).
    part : (i, k), optional
        Extract only every k-th of the scan's labels, starting at the i-th (in label order):
        the plan splits a many-label scan over otherwise idle workers this way.

    Returns
    -------
    ScanResult
        One row per extracted label with all features (pyradiomics names), the label and
        its name, the scan's carried manifest columns and provenance; one failure record per
        label that failed, or a single one when the scan as a whole failed.
    """
    import SimpleITK as sitk

    from ._radiomics import get_extractor, versions

    start = time.perf_counter()
    extractor = get_extractor(settings.params_text)
    # pyradiomics sets SimpleITK's process-wide tolerance from a module singleton, so a
    # worker shared by tasks with different params would keep the last one: set it per task.
    tolerance = float(extractor.settings.get("geometryTolerance") or _ITK_DEFAULT_TOLERANCE)
    sitk.ProcessObject.SetGlobalDefaultCoordinateTolerance(tolerance)
    sitk.ProcessObject.SetGlobalDefaultDirectionTolerance(tolerance)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(settings.sitk_threads)

    failures: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    image_hash = mask_hash = None
    try:
        image = _read(scan.case_id, scan.image, "image")
        mask = _read(scan.case_id, scan.mask, "mask")
        image_hash, mask_hash = _content_hash(image), _content_hash(mask)
        if unchanged_if is not None and (image_hash, mask_hash) == tuple(unchanged_if):
            return ScanResult(scan.case_id, [], [], time.perf_counter() - start, image_hash, mask_hash, unchanged=True)
        _check_inputs(scan, image, mask, extractor, tolerance)
        per_label = _extract_labels(scan, image, mask, extractor, settings, part)
    except ScanError as err:
        failures.append(_failure(err))
        per_label = {}

    elapsed = time.perf_counter() - start
    base = {
        "case_id": scan.case_id,
        "patient_id": scan.patient_id,
        **scan.extra,
        "image_hash": image_hash,
        "mask_hash": mask_hash,
        "params_hash": settings.params_hash,
        "scan_seconds": elapsed,
        **versions(),
    }
    names: dict[str, None] = {}
    for label, features in per_label.items():
        if isinstance(features, ScanError):
            failures.append(_failure(features))
            continue
        values = {k: _as_float(v) for k, v in features.items() if not k.startswith("diagnostics_")}
        names.update(dict.fromkeys(values))
        rows.append({"label": int(label), "label_name": settings.label_names.get(int(label)), **base, **values})
    return ScanResult(scan.case_id, rows, failures, elapsed, image_hash, mask_hash, list(names))


def _ibsi(
    scan: Scan, image, mask, params_text: str, ibsi: bool | str, default_label: int, part: tuple[int, int] | None
) -> dict[int, Any]:
    """IBSI mode: radcluster.ibsi's preprocessing around pyradiomics' feature classes."""
    import SimpleITK as sitk
    import yaml

    from .ibsi import extract_ibsi

    params = yaml.safe_load(params_text) or {}
    arr = sitk.GetArrayViewFromImage(mask)
    present = [int(v) for v in np.unique(arr) if v != 0]
    out: dict[int, Any] = {}
    for label in _labels_of(scan, present, default_label, part):
        try:
            out[label] = extract_ibsi(image, mask, label, params, None if ibsi is True else ibsi)
        except ValueError as err:
            out[label] = _label_error(scan, label, err)
    return out


def _extract_labels(
    scan: Scan, image, mask, extractor, settings: ExtractionSettings, part: tuple[int, int] | None
) -> dict[int, Any]:
    """features or a ScanError, per label."""
    import SimpleITK as sitk

    default_label = int(extractor.settings.get("label", 1))
    vector_mask = mask.GetNumberOfComponentsPerPixel() > 1
    if settings.ibsi:
        return _ibsi(scan, image, mask, settings.params_text, settings.ibsi, default_label, part)
    if vector_mask or not settings.fast or extractor.settings.get("correctMask"):
        # Masks resampled onto the image (correctMask) or picked from a vector image take
        # pyradiomics' own route; the fast path assumes a shared scalar grid.
        present = [default_label]
        if scan.labels == ALL_LABELS and not vector_mask:
            present = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(mask)) if v != 0]
        labels = _labels_of(scan, present, default_label, part)
        return {label: _plain(scan, image, mask, extractor, label) for label in labels}

    objects = _find_labels(scan, mask)
    present = [i + 1 for i, sl in enumerate(objects) if sl is not None]
    if not present:
        raise ScanError(scan.case_id, "check", "mask is empty (no non-zero voxel)", file=scan.mask)
    labels = _labels_of(scan, present, default_label, part)
    return _fast(scan, image, mask, extractor, labels, objects, present)


def _find_labels(scan: Scan, mask) -> list[tuple[slice, ...] | None]:
    """``ndimage.find_objects`` of the mask as pyradiomics sees it (cast to UInt32).

    Casting a whole CT-sized mask and scanning it label by label was over a third of a lung
    task; the non-zero bounding box (one pass) is usually a small block, so the labels are
    found in that block only and the slices shifted back to the whole volume.
    """
    import SimpleITK as sitk
    from scipy import ndimage

    arr = sitk.GetArrayViewFromImage(mask)
    if arr.dtype.kind not in "ui":
        # a float mask's values are truncated by the cast, so find labels after it (the
        # cast image must outlive the view of its buffer)
        mask = sitk.Cast(mask, sitk.sitkUInt32)
        arr = sitk.GetArrayViewFromImage(mask)
    nonzero = arr != 0
    box = []
    for axis in range(arr.ndim):
        hit = np.flatnonzero(nonzero.any(axis=tuple(a for a in range(arr.ndim) if a != axis)))
        if hit.size == 0:
            return []
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    block = arr[tuple(box)]
    if block.dtype.kind == "i" and block.min() < 0:
        raise ScanError(
            scan.case_id,
            "check",
            f"mask has negative values (minimum {block.min()}); labels must be non-negative integers",
            file=scan.mask,
        )
    return [
        None if sl is None else tuple(slice(s.start + b.start, s.stop + b.start) for s, b in zip(sl, box, strict=True))
        for sl in ndimage.find_objects(block)
    ]


def _plain(scan: Scan, image, mask, extractor, label: int):
    try:
        with _io.local_file(scan.image) as img, _io.local_file(scan.mask) as msk:
            return extractor.execute(img, msk, label=label)
    except Exception as err:  # pyradiomics raises ValueError, AssertionError, RuntimeError
        return _label_error(scan, label, err)


def _bounds(slices: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) inclusive index bounds in SimpleITK's (x, y, z) order."""
    lower = np.array([s.start for s in reversed(slices)])
    upper = np.array([s.stop - 1 for s in reversed(slices)])
    return lower, upper


def _crop(image, lower: np.ndarray, upper: np.ndarray, pad: np.ndarray | int):
    import SimpleITK as sitk

    size = np.array(image.GetSize())
    lo = np.maximum(lower - pad, 0)
    hi = np.minimum(upper + pad, size - 1)
    return sitk.RegionOfInterest(image, (hi - lo + 1).tolist(), lo.tolist())


def _fast(scan: Scan, image, mask, extractor, labels: list[int], objects, present: list[int]):
    """pyradiomics' ``execute`` steps on per-label crops, with shared work done once."""
    import SimpleITK as sitk
    from radiomics import imageoperations

    base = dict(extractor.settings)
    base["additionalInfo"] = False
    if base.get("normalize"):
        # normalisation uses whole-image statistics, so it runs before any crop, once
        image = imageoperations.normalizeImage(image, **base)
        base["normalize"] = False
    resample = base.get("interpolator") is not None and base.get("resampledPixelSpacing") is not None
    pre_crop = bool(base.get("preCrop")) and not resample
    types = extractor.enabledImagetypes
    shared_filters = not resample and not pre_crop and set(types) <= _LABEL_FREE_TYPES

    out: dict[int, Any] = {}
    state: dict[int, tuple] = {}
    spacing = np.array(image.GetSpacing())
    # pyradiomics casts every mask to UInt32; a crop is cast after cropping (the same voxels),
    # but resampling computes its grid from the whole mask, which is then cast once.
    whole_mask = sitk.Cast(mask, sitk.sitkUInt32) if resample else None
    for label in labels:
        kw = dict(base, label=label)
        if label not in present:
            out[label] = ScanError(
                scan.case_id,
                "check",
                f"label {label} not present in mask; present: {present[:20]}",
                file=scan.mask,
                label=label,
            )
            continue
        lower, upper = _bounds(objects[label - 1])
        try:
            if resample:
                new = np.array(base["resampledPixelSpacing"], dtype=float)
                new = np.where(new == 0, spacing, new)
                pad = np.ceil((int(base.get("padDistance", 5)) + 1) * new / spacing).astype(int) + _RESAMPLE_MARGIN
                # The output grid is computed by pyradiomics from the full mask, exactly as in
                # execute(); only the image it interpolates from is cropped.
                image_l, mask_l = imageoperations.resampleImage(_crop(image, lower, upper, pad), whole_mask, **kw)
            elif pre_crop:
                image_l = _crop(image, lower, upper, int(base.get("padDistance", 5)))
                mask_l = sitk.Cast(_crop(mask, lower, upper, int(base.get("padDistance", 5))), sitk.sitkUInt32)
            else:
                image_l = _crop(image, lower, upper, 1)
                mask_l = sitk.Cast(_crop(mask, lower, upper, 1), sitk.sitkUInt32)
            bbox, _ = imageoperations.checkMask(image_l, mask_l, **kw)
            reseg = None
            if base.get("resegmentRange") is not None:
                reseg = imageoperations.resegmentMask(image_l, mask_l, **kw)
                bbox, _ = imageoperations.checkMask(image_l, reseg, **kw)
            shape_mask = reseg if (reseg is not None and base.get("resegmentShape")) else mask_l
            features = collections.OrderedDict(extractor.computeShape(image_l, shape_mask, bbox, **kw))
            feature_mask = reseg if reseg is not None else mask_l
            if not shared_filters:
                for name, custom in types.items():
                    args = dict(kw, **custom)
                    gen = getattr(imageoperations, f"get{name}Image")(image_l, feature_mask, **args)
                    for filtered, type_name, type_kw in gen:
                        img_c, msk_c = imageoperations.cropToTumorMask(filtered, feature_mask, bbox)
                        features.update(extractor.computeFeatures(img_c, msk_c, type_name, **type_kw))
            out[label] = features
            state[label] = (lower, upper, bbox, feature_mask)
        except Exception as err:  # pyradiomics raises ValueError, AssertionError, RuntimeError
            out[label] = _label_error(scan, label, err)

    if shared_filters and state:
        # Each filtered image is computed once on the whole (normalised) image, as
        # pyradiomics does per call, then cropped for every label.
        for name, custom in types.items():
            args = dict(base, **custom)
            for filtered, type_name, type_kw in getattr(imageoperations, f"get{name}Image")(image, mask, **args):
                for label, (lower, upper, bbox, feature_mask) in list(state.items()):
                    try:
                        img_c, msk_c = imageoperations.cropToTumorMask(
                            _crop(filtered, lower, upper, 1), feature_mask, bbox
                        )
                        out[label].update(
                            extractor.computeFeatures(img_c, msk_c, type_name, **dict(type_kw, label=label))
                        )
                    except Exception as err:
                        out[label] = _label_error(scan, label, err)
                        del state[label]
    return out


def _label_error(scan: Scan, label: int, err: Exception) -> ScanError:
    wrapped = ScanError(scan.case_id, "extract", str(err).strip() or type(err).__name__, file=scan.mask, label=label)
    wrapped.__cause__ = err
    return wrapped
