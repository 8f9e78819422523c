"""Manifests of Imaging Data Commons series, from the index that ``idc-index-data`` ships.

``idc-index-data`` (the index behind ``idc-index``) installs IDC's series-level index as a
Parquet file, so choosing series works offline: :func:`idc_manifest` queries it with DuckDB
for the image series of a collection and its DICOM-SEG or RTSTRUCT series, and writes their
``s3://`` folders as a manifest. Extraction reads those folders through fsspec, anonymously
when no AWS credentials are set (IDC's buckets are public).

The shipped index has no references between series. A segmentation is paired with the one
image series of the modality in its study; when its study holds several (a test-retest
pair), the segmentation's header is read from its bucket to find the series it references
(``resolve=True``), or the segmentation is reported as a problem (``resolve=False``: offline).
"""

from __future__ import annotations

import hashlib
import os

import pandas as pd

from .. import _io
from .dicom import Problem, list_files, patient_key, read_header

__all__ = ["idc_manifest", "index_path"]

_KINDS = {"seg": "SEG", "rtstruct": "RTSTRUCT"}
MANIFEST_COLUMNS = ["case_id", "patient_id", "image", "mask", "series_uid", "roi", "segmentation"]


def index_path() -> str:
    """The IDC series index installed with ``idc-index-data``."""
    import idc_index_data

    return str(idc_index_data.IDC_INDEX_PARQUET_FILEPATH)


def _folder(url: str) -> str:
    """IDC writes a series' files as ``s3://bucket/<series uuid>/*``: the folder is the prefix."""
    return url[:-1] if url.endswith("*") else url.rstrip("/") + "/"


def idc_manifest(
    collection: str,
    *,
    modality: str = "CT",
    segmentation: str = "seg",
    analysis_results: bool = False,
    studies: list[str] | None = None,
    resolve: bool = True,
    index: str | os.PathLike | None = None,
) -> tuple[pd.DataFrame, list[Problem]]:
    """One manifest row per (image series, segmentation series) of an IDC collection.

    Parameters
    ----------
    segmentation : ``seg`` or ``rtstruct``
    analysis_results : bool
        Also take segmentations IDC holds as separate analysis results (model outputs,
        other groups' annotations) besides the collection's own.
    studies : list of StudyInstanceUID, optional
        Only these studies.
    index : path, optional
        Another copy of IDC's index (default: the one ``idc-index-data`` installed).
    """
    import duckdb

    kind = _KINDS.get(segmentation.lower())
    if kind is None:
        raise ValueError(f"segmentation must be 'seg' or 'rtstruct', got {segmentation!r}")
    query = (
        "SELECT analysis_result_id, PatientID, StudyInstanceUID, SeriesInstanceUID, Modality, series_aws_url "
        "FROM read_parquet(?) WHERE collection_id = ? AND Modality IN (?, ?)"
    )
    rows = duckdb.execute(query, [os.fspath(index or index_path()), collection, modality, kind]).df()
    if rows.empty:
        raise ValueError(f"no {modality} or {kind} series of collection {collection!r} in the IDC index")
    if studies:
        rows = rows[rows["StudyInstanceUID"].isin(studies)]
    images = rows[rows["Modality"] == modality]
    segs = rows[rows["Modality"] == kind]
    if not analysis_results:
        segs = segs[segs["analysis_result_id"].isna()]
    by_study = {study: group for study, group in images.groupby("StudyInstanceUID")}
    out, problems = [], []
    for seg in segs.itertuples(index=False):
        where = _folder(seg.series_aws_url)
        candidates = by_study.get(seg.StudyInstanceUID)
        if candidates is None:
            problems.append(Problem(where, f"{kind} series {seg.SeriesInstanceUID}: no {modality} series in its study"))
            continue
        if len(candidates) > 1:
            if not resolve:
                reason = (
                    f"{kind} series {seg.SeriesInstanceUID}: its study has {len(candidates)} {modality} series and "
                    "the index does not say which one it segments (pairing needs its header)"
                )
                problems.append(Problem(where, reason))
                continue
            refs = _referenced_series(where)
            if isinstance(refs, Problem):
                problems.append(refs)
                continue
            candidates = candidates[candidates["SeriesInstanceUID"].isin(refs)]
            if candidates.empty:
                problems.append(
                    Problem(
                        where, f"{kind} series {seg.SeriesInstanceUID} references no {modality} series of its study"
                    )
                )
                continue
        image = candidates.iloc[0]
        key = f"{image.SeriesInstanceUID}|{seg.SeriesInstanceUID}"
        out.append(
            {
                "case_id": "dcm-" + hashlib.sha256(key.encode()).hexdigest()[:12],
                "patient_id": patient_key(str(seg.PatientID)),
                "image": _folder(image.series_aws_url),
                "mask": where,
                "series_uid": image.SeriesInstanceUID,
                "roi": "",
                "segmentation": kind,
            }
        )
    frame = pd.DataFrame(out, columns=MANIFEST_COLUMNS)
    return frame.sort_values(["patient_id", "case_id"]).reset_index(drop=True), problems


def _referenced_series(folder: str) -> set[str] | Problem:
    try:
        files = list_files(folder)
    except _io.storage_errors() as err:
        return Problem(folder, f"cannot list the segmentation's folder ({err})")
    if not files:
        return Problem(folder, "the segmentation's folder is empty")
    header = read_header(files[0])
    return header if isinstance(header, Problem) else set(header.referenced_series)
