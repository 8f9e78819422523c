"""The cohort: reading a manifest, discovering one from a folder, checking it up front.

A manifest is a CSV or Parquet table with one row per scan: ``case_id``, ``image``,
``mask``, optionally ``label`` (one value, a list such as ``1;2;5`` or ``[1, 2]``, or
``all`` for every non-zero label of the mask) and ``patient_id``; every other column
(outcome, survival, site, ...) is carried into the store unchanged. Paths are relative to
the manifest's folder, absolute, or fsspec URLs (``file://``, ``s3://``, ...).

Nothing here knows about Dask or pyradiomics: a :class:`Scan` is plain data that the
extraction task receives.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from . import _io
from .errors import ManifestError, ScanError

__all__ = [
    "Scan",
    "Cohort",
    "ALL_LABELS",
    "read_manifest",
    "read_label_table",
    "scan_directory",
    "check_cohort",
    "check_scan",
    "read_image",
    "geometry_mismatch",
    "RESERVED_COLUMNS",
]

ALL_LABELS: Literal["all"] = "all"

REQUIRED_COLUMNS = ("case_id", "image", "mask")
# Columns radcluster writes itself: a manifest column of the same name would be overwritten.
RESERVED_COLUMNS = frozenset(
    {
        "label",
        "label_name",
        "patient_id",
        "image_hash",
        "mask_hash",
        "params_hash",
        "row_key",
        "run_id",
        "extracted_at",
        "scan_seconds",
        "radcluster_version",
        "pyradiomics_version",
        "simpleitk_version",
        "image_path",
        "mask_path",
        "image_stat",
        "mask_stat",
    }
)

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".tif", ".tiff")


@dataclass(frozen=True)
class Scan:
    """One row of the manifest, with paths resolved.

    ``labels`` is a tuple of label values, :data:`ALL_LABELS`, or ``None`` for the params
    file's ``label`` setting (pyradiomics' default, 1).
    """

    case_id: str
    image: str
    mask: str
    labels: tuple[int, ...] | Literal["all"] | None = None
    patient_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Cohort:
    """The scans of a manifest, in manifest order, and the names of its carried columns."""

    scans: tuple[Scan, ...]
    source: str
    carried: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.scans)


def _parse_labels(value: Any) -> tuple[int, ...] | Literal["all"] | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, int | np.integer):
        return (int(value),)
    if isinstance(value, float) and value.is_integer():
        return (int(value),)
    text = str(value).strip()
    if not text:
        return None
    if text.lower() == ALL_LABELS:
        return ALL_LABELS
    if text.startswith("["):
        items = json.loads(text)
    else:
        items = [p for p in re.split(r"[;,\s]+", text) if p]
    labels = tuple(int(float(x)) for x in items)
    if any(v <= 0 for v in labels) or any(float(x) != int(float(x)) for x in items):
        raise ValueError(f"labels must be positive integers, got {text!r}")
    return labels


def _read_table(path: str) -> pd.DataFrame:
    lower = path.lower()
    if lower.endswith(".parquet") or lower.endswith(".pq"):
        return pd.read_parquet(path)
    sep = "\t" if lower.endswith(".tsv") else ","
    # Every column as text: case ids like 007 must keep their zeros; carried columns are
    # converted back to numbers below where the whole column is numeric.
    return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""])


def _restore_numeric(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    for col in columns:
        if pd.api.types.is_string_dtype(frame[col]) or frame[col].dtype == object:
            converted = pd.to_numeric(frame[col], errors="coerce")
            if converted.notna().sum() == frame[col].notna().sum():
                frame[col] = converted
    return frame


def read_manifest(path: str | os.PathLike) -> Cohort:
    """Read and validate a manifest's structure (not its files: see :func:`check_cohort`).

    Raises
    ------
    ManifestError
        Listing every problem at once: missing columns, empty or duplicate case ids, empty
        paths, unparsable labels, columns that clash with radcluster's own.
    """
    source = os.fspath(path)
    try:
        frame = _read_table(source)
    except FileNotFoundError:
        raise ManifestError(source, ["file does not exist"]) from None
    except Exception as err:  # pandas/pyarrow raise many types for unreadable tables
        raise ManifestError(source, [f"not a readable CSV/Parquet table: {err}"]) from None

    frame.columns = [str(c).strip() for c in frame.columns]
    problems: list[str] = []
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        problems.append(f"missing required column(s) {', '.join(missing)}; found {', '.join(frame.columns) or 'none'}")
        raise ManifestError(source, problems)

    carried = [c for c in frame.columns if c not in (*REQUIRED_COLUMNS, "label", "patient_id")]
    clash = sorted(set(carried) & RESERVED_COLUMNS)
    if clash:
        problems.append(f"column(s) {', '.join(clash)} are written by radcluster itself; rename them")
    frame = _restore_numeric(frame, carried)

    ids = frame["case_id"].astype("string").str.strip().fillna("")
    for row, cid in enumerate(ids, start=2):
        if not cid:
            problems.append(f"row {row}: empty case_id")
    dup = ids[ids.duplicated(keep=False) & (ids != "")]
    for cid in sorted(set(dup)):
        rows = [str(i + 2) for i in np.flatnonzero((ids == cid).to_numpy())]
        problems.append(f"case {cid!r}: duplicate case_id (rows {', '.join(rows)})")

    base = os.path.dirname(source) if not _io.is_url(source) else source.rsplit("/", 1)[0]
    base = os.path.abspath(base or ".") if not _io.is_url(source) else base
    scans = []
    for i, rec in enumerate(frame.to_dict("records")):
        cid = str(ids.iloc[i])
        paths = {}
        for col in ("image", "mask"):
            value = rec[col]
            if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip():
                problems.append(f"case {cid!r}: empty {col} path")
                paths[col] = ""
            else:
                paths[col] = _io.join(base, str(value).strip())
        try:
            labels = _parse_labels(rec.get("label"))
        except (ValueError, json.JSONDecodeError) as err:
            problems.append(f"case {cid!r}: label {rec.get('label')!r} is not a label, a list or 'all' ({err})")
            labels = None
        pid = rec.get("patient_id")
        pid = None if pid is None or (isinstance(pid, float) and math.isnan(pid)) else str(pid)
        extra = {c: (None if isinstance(rec[c], float) and math.isnan(rec[c]) else rec[c]) for c in carried}
        scans.append(Scan(cid, paths["image"], paths["mask"], labels, pid, extra))
    if problems:
        raise ManifestError(source, problems)
    return Cohort(tuple(scans), source, tuple(carried))


def read_label_table(path: str | os.PathLike | None) -> dict[int, str]:
    """Label value -> region name from a CSV/TSV with columns ``label`` and ``name``.

    Atlas users pass this so that every row of the store carries the region's name.
    """
    if path is None:
        return {}
    source = os.fspath(path)
    try:
        frame = _read_table(source)
    except FileNotFoundError:
        raise ManifestError(source, ["label table does not exist"]) from None
    cols = {c.lower().strip(): c for c in frame.columns}
    value_col = cols.get("label") or cols.get("value")
    name_col = cols.get("name") or cols.get("region")
    if value_col is None or name_col is None:
        raise ManifestError(source, [f"label table needs columns 'label' and 'name'; found {list(frame.columns)}"])
    table: dict[int, str] = {}
    problems = []
    for row, (value, name) in enumerate(zip(frame[value_col], frame[name_col], strict=True), start=2):
        try:
            table[int(float(value))] = str(name)
        except (TypeError, ValueError):
            problems.append(f"row {row}: label value {value!r} is not an integer")
    if problems:
        raise ManifestError(source, problems)
    return table


def _strip_suffix(name: str) -> tuple[str, str] | None:
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], suffix
    return None


_IMAGE_WORDS = ("image", "img", "scan", "ct", "mr", "pet", "t1", "t2")
_MASK_WORDS = ("label", "labels", "mask", "seg", "segmentation", "roi")


def scan_directory(root: str | os.PathLike) -> pd.DataFrame:
    """Build a manifest from a folder in one of the common layouts.

    Recognised layouts, tried in this order:

    * nnU-Net: ``imagesTr/<id>_0000.nii.gz`` with ``labelsTr/<id>.nii.gz`` (also ``imagesTs``/``labelsTs``);
    * pairs in one folder: ``<id>_image.*`` with ``<id>_label.*`` (or ``_mask``, ``_seg``);
    * one folder per case holding one image and one mask (named ``image*``/``mask*``,
      ``*label*``, ``*seg*``).

    Returns a DataFrame with ``case_id, image, mask`` (paths relative to ``root``), sorted by
    case id. Raises :class:`ManifestError` when nothing matches.
    """
    base = Path(root)
    if not base.is_dir():
        raise ManifestError(str(base), ["not a folder"])
    rows: list[tuple[str, str, str]] = []

    for images_dir, labels_dir in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        if (base / images_dir).is_dir() and (base / labels_dir).is_dir():
            for img in sorted((base / images_dir).iterdir()):
                split = _strip_suffix(img.name)
                if split is None:
                    continue
                stem, suffix = split
                case = re.sub(r"_\d{4}$", "", stem)
                if stem != f"{case}_0000" and stem != case:
                    continue  # other modalities (_0001, ...) of a case already listed
                label = base / labels_dir / f"{case}{suffix}"
                if label.exists():
                    rows.append((case, str(img.relative_to(base)), str(label.relative_to(base))))

    if not rows:
        files = sorted(p.name for p in base.iterdir() if p.is_file())
        for name in files:
            split = _strip_suffix(name)
            if split is None:
                continue
            stem, suffix = split
            m = re.match(rf"(.+?)[_-]({'|'.join(_IMAGE_WORDS)})$", stem, re.IGNORECASE)
            if not m:
                continue
            case = m.group(1)
            for word in _MASK_WORDS:
                cand = [
                    n
                    for n in files
                    if n.lower() == f"{case}_{word}{suffix}".lower() or n.lower() == f"{case}-{word}{suffix}".lower()
                ]
                if cand:
                    rows.append((case, name, cand[0]))
                    break

    if not rows:
        for case_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            found = [p for p in case_dir.iterdir() if p.is_file() and _strip_suffix(p.name)]
            masks = [p for p in found if any(w in p.name.lower() for w in _MASK_WORDS)]
            images = [p for p in found if p not in masks]
            if len(images) == 1 and len(masks) == 1:
                rows.append((case_dir.name, str(images[0].relative_to(base)), str(masks[0].relative_to(base))))

    if not rows:
        raise ManifestError(
            str(base),
            [
                "no cases found: expected nnU-Net imagesTr/labelsTr, <id>_image.*/<id>_label.* pairs, "
                "or one folder per case with one image and one mask"
            ],
        )
    return pd.DataFrame(rows, columns=["case_id", "image", "mask"]).sort_values("case_id", ignore_index=True)


def geometry_mismatch(image, mask, tolerance: float = 1e-6) -> str | None:
    """Why ``image`` and ``mask`` (SimpleITK images or readers) do not share a grid, or None.

    Follows ITK's own rule (the one pyradiomics' checks trip on): origins and spacings agree
    within ``tolerance`` times the image spacing, directions within ``tolerance``.
    """
    if tuple(image.GetSize()) != tuple(mask.GetSize()):
        return f"size differs: image {tuple(image.GetSize())}, mask {tuple(mask.GetSize())}"
    spacing = np.asarray(image.GetSpacing())
    scale = tolerance * float(spacing.min() if spacing.size else 1.0)
    if not np.allclose(spacing, mask.GetSpacing(), rtol=0, atol=scale):
        return f"spacing differs: image {tuple(image.GetSpacing())}, mask {tuple(mask.GetSpacing())}"
    if not np.allclose(image.GetOrigin(), mask.GetOrigin(), rtol=0, atol=scale):
        return f"origin differs: image {tuple(image.GetOrigin())}, mask {tuple(mask.GetOrigin())}"
    if not np.allclose(image.GetDirection(), mask.GetDirection(), rtol=0, atol=tolerance):
        return "direction differs between image and mask"
    return None


def read_image(case_id: str, path: str, role: str, *, header_only: bool = False):
    """The SimpleITK image at ``path``, or with ``header_only`` a reader holding its header.

    Shared by :func:`check_cohort` and the extraction task, so both give the same reason for
    the same file. Besides what SimpleITK rejects, a file that SimpleITK reads without
    complaint but that is cut short is rejected: a truncated gzip stream or NIfTI file (ITK's
    NIfTI reader fills the missing voxels with zeros).

    Raises
    ------
    ScanError
        Stage ``read``, naming the case, the file and why it cannot be used.
    """
    import SimpleITK as sitk

    def unusable(reason: str) -> ScanError:
        return ScanError(case_id, "read", reason, file=path)

    if not _io.exists(path):
        raise unusable(f"{role} file does not exist")
    with _io.local_file(path) as local:
        reader = sitk.ImageFileReader()
        reader.SetFileName(local)
        try:
            reader.ReadImageInformation()
        except RuntimeError as err:
            raise unusable(f"{role} is not a readable image ({itk_error_reason(err)})") from err
        if header_only:
            return reader
        try:
            image = reader.Execute()
        except RuntimeError as err:
            raise unusable(
                f"{role} is not a readable image: its header reads but its voxel data does not "
                f"(truncated or corrupt file; {itk_error_reason(err)})"
            ) from err
        short = _cut_short(local)
        if short:
            raise unusable(f"{role} file is truncated or corrupt: {short}")
    return image


def _cut_short(local: str) -> str | None:
    """Why a gzip or NIfTI file is incomplete, or None.

    A gzip file's trailer records its inflated size: when that is the size the NIfTI header
    describes, the file is whole and nothing more is read. Otherwise (another gzip file, or
    a trailer that disagrees) the stream is inflated to its end to find where it breaks.
    """
    if not local.lower().endswith((".gz", ".nii")):
        return None
    gz = False
    try:
        with open(local, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            head = (gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw).read(540)
            needed = _nifti_bytes(head)
            if not gz:
                have = os.fstat(raw.fileno()).st_size
            else:
                raw.seek(-4, os.SEEK_END)
                if needed is not None and int.from_bytes(raw.read(4), "little") == needed % 2**32:
                    return None
                raw.seek(0)
                stream, have = gzip.GzipFile(fileobj=raw, mode="rb"), 0
                while chunk := stream.read(1 << 22):
                    have += len(chunk)
    except EOFError:
        return "the gzip stream ends before its end marker (the file was cut short)"
    except (OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        return f"the gzip stream is corrupt ({err})" if gz else f"it cannot be read back ({err})"
    if needed is not None and have < needed:
        return f"its NIfTI header describes {needed} bytes of header and voxels, the file holds {have}"
    return None


def _nifti_bytes(head: bytes) -> int | None:
    """Bytes a single-file NIfTI-1 or NIfTI-2 image needs, from its header; None if not one."""
    for order in "<>":
        if len(head) >= 348 and struct.unpack(f"{order}i", head[:4])[0] == 348 and head[344:347] == b"n+1":
            dims = struct.unpack(f"{order}8h", head[40:56])
            bitpix = struct.unpack(f"{order}h", head[72:74])[0]
            offset = int(struct.unpack(f"{order}f", head[108:112])[0])
            break
        if len(head) >= 540 and struct.unpack(f"{order}i", head[:4])[0] == 540 and head[4:7] == b"n+2":
            bitpix = struct.unpack(f"{order}h", head[14:16])[0]
            dims = struct.unpack(f"{order}8q", head[16:80])
            offset = struct.unpack(f"{order}q", head[168:176])[0]
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or bitpix <= 0:
        return None
    return offset + math.prod(max(int(d), 1) for d in dims[1 : dims[0] + 1]) * bitpix // 8


def _components(image) -> int:
    """Components per voxel of a SimpleITK image or of an image file reader."""
    if hasattr(image, "GetNumberOfComponentsPerPixel"):
        return image.GetNumberOfComponentsPerPixel()
    return image.GetNumberOfComponents()


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
    if _components(image) != 1:
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
    if isinstance(mask, sitk.Image) and _components(mask) == 1:
        marr = sitk.GetArrayViewFromImage(mask)
        if np.issubdtype(marr.dtype, np.floating) and not np.all(np.mod(marr, 1) == 0):
            raise bad("mask", f"mask voxels are not integers (pixel type {marr.dtype})")


def check_cohort(
    cohort: Cohort, *, tolerance: float = 1e-6, default_label: int = 1, check_labels: bool = True
) -> list[str]:
    """Every problem of every scan, one line per problem, without extracting anything.

    Runs the checks the extraction task runs (:func:`read_image`, :func:`check_scan`), so a
    scan is reported here for the reason its extraction would fail. With ``check_labels``
    (the default) both files are read whole: images for truncated data and NaN or infinite
    voxels, masks for integer values and the requested labels (present, more than one voxel);
    without it only headers are read (existence, format, dimensions, grid).
    """
    import SimpleITK as sitk

    problems: list[str] = []
    for scan in cohort.scans:
        files, errors = {}, []
        for role, path in (("image", scan.image), ("mask", scan.mask)):
            try:
                files[role] = read_image(scan.case_id, path, role, header_only=not check_labels)
            except ScanError as err:
                errors.append(err)
        if not errors:
            try:
                check_scan(scan, files["image"], files["mask"], tolerance=tolerance)
                if check_labels and _components(files["mask"]) == 1:
                    _check_labels(scan, sitk.GetArrayViewFromImage(files["mask"]), default_label)
            except ScanError as err:
                errors.append(err)
        problems.extend(f"case {scan.case_id!r}: {err.file}: {err.reason}" for err in errors)
    return problems


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


def itk_error_reason(err: BaseException) -> str:
    """The reason in an ITK/SimpleITK error, without its source-file preamble and object address.

    NRRD errors carry their cause on the last line (``expected 226800 bytes but received
    5856``); it is appended.
    """
    text = str(err).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    reason = next((ln.split("ERROR:", 1)[1].strip() for ln in lines if "ERROR:" in ln), None)
    if reason is None:
        rest = [ln for ln in lines if "Exception thrown in" not in ln]
        reason = rest[0] if rest else (text or type(err).__name__)
    reason = re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", reason)
    nrrd = [ln for ln in lines if ln.startswith("[nrrd]")]
    if nrrd:
        reason = f"{reason.rstrip(':')}: {nrrd[-1].removeprefix('[nrrd]').strip()}"
    return reason
