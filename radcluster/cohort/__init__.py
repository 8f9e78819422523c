"""The cohort manifest: what a scan is and how a manifest table becomes a :class:`Cohort`.

Discovery from a folder is :mod:`.discover`, the up-front checks :mod:`.check`, image files
(reading, headers, grids) :mod:`.images`.

A manifest is a CSV or Parquet table with one row per scan: ``case_id``, ``image``,
``mask``, optionally ``label`` (one value, a list such as ``1;2;5`` or ``[1, 2]``, or
``all`` for every non-zero label of the mask) and ``patient_id``; every other column
(outcome, survival, site, ...) is carried into the store unchanged. Paths are relative to
the manifest's folder, absolute, or fsspec URLs (``file://``, ``s3://``, ...).

Nothing here knows about Dask or pyradiomics: a :class:`Scan` is plain data that the
extraction task receives.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from .. import _io
from ..errors import ManifestError

__all__ = [
    "Scan",
    "Cohort",
    "ALL_LABELS",
    "read_manifest",
    "read_label_table",
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
        # provenance of DICOM rows (series_uid, a manifest column, is written back too)
        "segmentation_uid",
        "roi_number",
        "roi_name",
        "instances_hash",
        "mask_reoriented",  # a mask stored with flipped axes, resampled onto the image grid
    }
)
# Columns of DICOM rows (cohort.dicom writes them): the image series in the ``image`` folder,
# and the selector of the segmentation's ROIs (cohort.dicom.select_rois).
DICOM_COLUMNS = ("series_uid", "roi")


@dataclass(frozen=True, slots=True)  # slots: 100k of them are held by the driver for a run
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
    series_uid: str | None = None
    roi: str | None = None
    # a radcluster.extract.perturb.Perturbation applied to image and mask after reading
    # (extraction.perturb: a perturbed copy of a manifest's scan), or None
    perturbation: Any = None

    @property
    def dicom(self) -> bool:
        """A DICOM image series (a folder or URL prefix) with an RTSTRUCT or SEG as ``mask``."""
        if self.series_uid is not None or self.roi is not None or self.image.endswith("/"):
            return True
        local = _io.local_path(self.image)
        return local is not None and os.path.isdir(local)


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
    # Every column as text: case ids like 007 must keep their zeros; carried columns are
    # converted back to numbers below where the whole column is numeric.
    return _io.read_table(path, dtype=str, keep_default_na=False, na_values=[""])


def _restore_numeric(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    for col in columns:
        if pd.api.types.is_string_dtype(frame[col]) or frame[col].dtype == object:
            converted = pd.to_numeric(frame[col], errors="coerce")
            if converted.notna().sum() == frame[col].notna().sum():
                frame[col] = converted
    return frame


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip():
        return None
    return str(value).strip()


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

    carried = [c for c in frame.columns if c not in (*REQUIRED_COLUMNS, "label", "patient_id", *DICOM_COLUMNS)]
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
    # Column lists, read by row number: not ids.iloc[i] (a pandas lookup per row was most of
    # a 100k-row read), nor a dict per row (100k transient dicts, freed between the scans kept,
    # left the driver's heap fragmented for the rest of the run).
    column = {c: frame[c].tolist() for c in frame.columns}
    absent = [None] * len(frame)
    id_list = ids.tolist()
    for i in range(len(frame)):
        cid = str(id_list[i])
        paths = {}
        for col in ("image", "mask"):
            value = column[col][i]
            if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip():
                problems.append(f"case {cid!r}: empty {col} path")
                paths[col] = ""
            else:
                paths[col] = _io.join(base, str(value).strip())
        label = column.get("label", absent)[i]
        try:
            labels = _parse_labels(label)
        except (ValueError, json.JSONDecodeError) as err:
            problems.append(f"case {cid!r}: label {label!r} is not a label, a list or 'all' ({err})")
            labels = None
        pid, series_uid, roi = (_text(column.get(c, absent)[i]) for c in ("patient_id", *DICOM_COLUMNS))
        extra = {c: (None if isinstance(v, float) and math.isnan(v) else v) for c in carried for v in [column[c][i]]}
        scan = Scan(cid, paths["image"], paths["mask"], labels, pid, extra, series_uid, roi)
        if scan.dicom and labels is not None:
            problems.append(f"case {cid!r}: 'label' does not apply to a DICOM series; select its ROIs with 'roi'")
        scans.append(scan)
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
