"""Per-scan extraction: a pure function of (scan, settings) that returns rows or failures.

:func:`extract_scan` reads one image and its mask on the machine it runs on, runs the job's
feature engines (:mod:`.engines`: pyradiomics by default, IBSI mode, ONNX models, plugins) on
that one read for every requested label, and returns a :class:`ScanResult`. It never raises for
a problem of the scan itself (unreadable file, geometry mismatch, empty mask, absent label,
pyradiomics error): those become failure records naming the case, the file and the reason.
It knows nothing of Dask or of the store; the scheduler only calls it.

The pyradiomics engine has two paths that give the same features (every feature equal or
within 1e-12 relative, NaN where execute() gives NaN: tests/extract/test_parity_matrix.py):

* the fast path (default, :mod:`.fast`) reads image and mask once, hashes the decoded voxels once, and
  runs pyradiomics' own pipeline steps (``checkMask``, ``resampleImage``, the image-type
  filters, ``computeShape``, ``computeFeatures``) on a crop around each label, computing
  each filtered image once per scan for all labels;
* the plain path calls ``RadiomicsFeatureExtractor.execute(image, mask, label=l)`` once per
  label, exactly as a pyradiomics user would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..cohort import Scan
from ..cohort.check import check_scan
from ..errors import FailureRecord, ScanError
from .engines import ScanImage, run_engines
from .readers import ScanInput, read_scan

__all__ = ["ExtractionSettings", "ScanResult", "extract_scan"]

# ITK's own default coordinate and direction tolerance, restored when a params file sets none.
_ITK_DEFAULT_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ExtractionSettings:
    """What every scan task of a run shares (small: it is sent with each task)."""

    params_text: str
    params_hash: str
    label_names: Mapping[int, str] = field(default_factory=dict)
    fast: bool = True
    sitk_threads: int = 1
    ibsi: bool | str = False  # IBSI mode (radcluster.ibsi): True, or a configuration name "A".."E"
    # the feature engines (radcluster.extract.engines), prepared; () is the one the flags above
    # choose: pyradiomics, or IBSI mode when ``ibsi`` is set
    engines: tuple = ()

    def engine_list(self) -> tuple:
        if self.engines:
            return self.engines
        from .engines.ibsi import IBSIEngine
        from .engines.pyradiomics import PyradiomicsEngine

        return (IBSIEngine(self.ibsi),) if self.ibsi else (PyradiomicsEngine(),)


@dataclass
class ScanResult:
    """Rows (one per extracted label) and failures (one per failed label or scan)."""

    case_id: str
    rows: list[dict[str, Any]]
    failures: list[FailureRecord]
    seconds: float
    image_hash: str | None = None
    mask_hash: str | None = None
    feature_names: list[str] = field(default_factory=list)
    unchanged: bool = False
    # pyradiomics' warnings for this scan (distinct, in order), for the driver to log
    warnings: list[str] = field(default_factory=list)
    # image types that took execute()'s own route instead of the fast path's (engines/pyradiomics.py)
    plain_filters: list[str] = field(default_factory=list)


def _content_hash(image) -> str:
    """Hash of decoded voxels and grid: the same scan hashes the same in any file format."""
    import SimpleITK as sitk
    import xxhash

    h = xxhash.xxh3_128()
    arr = sitk.GetArrayViewFromImage(image)
    h.update(f"{arr.dtype.str}|{arr.shape}|{image.GetSpacing()}|{image.GetOrigin()}|{image.GetDirection()}".encode())
    h.update(np.ascontiguousarray(arr).data)
    return h.hexdigest()


def _masks_hash(hashes: list[str]) -> str | None:
    """One mask's content hash, or a hash of the hashes of a scan's several label maps."""
    import xxhash

    if len(hashes) == 1:
        return hashes[0]
    return xxhash.xxh3_128("|".join(hashes).encode()).hexdigest() if hashes else None


def _layers(scan: Scan, found: ScanInput):
    """(scan, mask) per label map: the manifest's labels, or one layer's ROIs.

    A split task (``part``) applies within each layer: a layer with fewer ROIs than parts is
    split by filtered image, one with more by ROI, as the plan splits a scan.
    """
    for layer in found.layers:
        yield (scan if layer.labels is None else replace(scan, labels=layer.labels)), layer.mask


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


def extract_scan(
    scan: Scan,
    settings: ExtractionSettings,
    *,
    unchanged_if: tuple[str, str] | None = None,
    part: tuple[int, int] | None = None,
    threads: int = 1,
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
    threads : int
        CPU threads the task may use (its Dask worker's threads); engines with a thread pool
        of their own (ONNX Runtime) size it by this.

    Returns
    -------
    ScanResult
        One row per extracted label with all features (pyradiomics names), the label and
        its name, the scan's carried manifest columns and provenance; one failure record per
        label that failed, or a single one when the scan as a whole failed.
    """
    import SimpleITK as sitk

    from ._radiomics import captured_warnings, expected_groups, get_extractor, versions
    from .engines.pyradiomics import PyradiomicsEngine, plain_filters
    from .fast import group_unit, owned_units

    start = time.perf_counter()
    extractor = get_extractor(settings.params_text)
    # pyradiomics sets SimpleITK's process-wide tolerance from a module singleton, so a
    # worker shared by tasks with different params would keep the last one: set it per task.
    tolerance = float(extractor.settings.get("geometryTolerance") or _ITK_DEFAULT_TOLERANCE)
    sitk.ProcessObject.SetGlobalDefaultCoordinateTolerance(tolerance)
    sitk.ProcessObject.SetGlobalDefaultDirectionTolerance(tolerance)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(settings.sitk_threads)

    failures: list[FailureRecord] = []
    rows: list[dict[str, Any]] = []
    image_hash = mask_hash = None
    groups: dict[int, list[str]] = {}  # per label: the feature groups its row must have
    plain: list[str] = []
    found = None
    per_label: dict[int, Any] = {}
    provenance: dict[str, Any] = {}
    with captured_warnings() as warned:
        try:
            found = read_scan(scan)
            if scan.perturbation is not None:  # a perturbed copy (extraction.perturb): hashed as extracted
                image, masks = scan.perturbation.apply(scan.case_id, found.image, [lay.mask for lay in found.layers])
                found = replace(
                    found,
                    image=image,
                    layers=[replace(lay, mask=m) for lay, m in zip(found.layers, masks, strict=True)],
                )
            image = found.image
            image_hash = _content_hash(image)
            mask_hash = _masks_hash([_content_hash(layer.mask) for layer in found.layers])
            if unchanged_if is not None and (image_hash, mask_hash) == tuple(unchanged_if):
                return ScanResult(
                    scan.case_id, [], [], time.perf_counter() - start, image_hash, mask_hash, unchanged=True
                )
            failures.extend(FailureRecord.from_scan_error(err) for err in found.failures)
            default_label = int(extractor.settings.get("label", 1))
            for layer_scan, mask in _layers(scan, found):
                _check_inputs(layer_scan, image, mask, extractor, tolerance)
                one_read = ScanImage(layer_scan, image, mask, default_label, part, threads)
                if any(isinstance(e, PyradiomicsEngine) for e in settings.engine_list()):
                    # every row must have the features the params ask for: pyradiomics skips a
                    # filter it cannot apply to a scan with only a warning (a part of a scan split
                    # by filter answers for its own units; the parts' rows are joined into one)
                    expected = expected_groups(extractor, image.GetDimension())
                    owned = owned_units(extractor, image.GetDimension(), one_read.filter_part)
                    expected = [g for g in expected if owned is None or group_unit(g) in owned]
                    plain = list(dict.fromkeys([*plain, *plain_filters(extractor, settings, mask)]))
                extracted, provenance = run_engines(settings.engine_list(), one_read, settings)
                per_label.update(extracted)
                if any(isinstance(e, PyradiomicsEngine) for e in settings.engine_list()):
                    groups.update(dict.fromkeys(extracted, expected))
        except ScanError as err:
            failures.append(FailureRecord.from_scan_error(err))

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
        **provenance,
        **(found.provenance if found else {}),
    }
    names: dict[str, None] = {}
    for label, features in per_label.items():
        if isinstance(features, ScanError):
            failures.append(FailureRecord.from_scan_error(features))
            continue
        values = {k: _as_float(v) for k, v in features.items() if not k.startswith("diagnostics_")}
        present = {k[: k.rindex("_") + 1] for k in values if "_" in k}  # "<image>_<class>_"
        absent = [g for g in groups.get(label, []) if g not in present]
        if absent:
            failures.append(FailureRecord.from_scan_error(_incomplete(scan, label, absent, warned)))
            continue
        names.update(dict.fromkeys(values))
        label = int(label)
        name = found.label_names.get(label) or settings.label_names.get(label)
        rows.append({"label": label, "label_name": name, **base, **found.per_label.get(label, {}), **values})
    return ScanResult(
        scan.case_id,
        rows,
        failures,
        elapsed,
        image_hash,
        mask_hash,
        list(names),
        warnings=list(warned),
        plain_filters=plain,
    )


def _incomplete(scan: Scan, label: int, absent: list[str], warned) -> ScanError:
    """A label whose row would lack features the params ask for: a failure, not a short row."""
    groups = ", ".join(g.rstrip("_") for g in absent[:5]) + (" ..." if len(absent) > 5 else "")
    return ScanError(
        scan.case_id,
        "extract",
        f"pyradiomics computed no {groups} features for this scan (pyradiomics: "
        f"{'; '.join(warned) or 'no reason logged'})",
        file=scan.image,
        label=label,
    )
