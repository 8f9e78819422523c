"""DICOM trees: crawl headers, group instances into series, pair segmentations, select ROIs.

:func:`crawl` reads only headers (``stop_before_pixels``) of every file under a folder,
through a ``mapper`` the caller chooses (the built-in ``map``, a process pool, a Dask
client's ``map``), so a large tree can be read in parallel, where the files are. Instances
are grouped by SeriesInstanceUID; every RTSTRUCT and DICOM-SEG is paired with the image
series it references (ReferencedSeriesSequence, then the SOP instances its frames or
contours reference, then a FrameOfReferenceUID that exactly one image series has), never
by file name or folder. :func:`scan_dicom` turns that into manifest rows: one per (image
series, segmentation object).

No identifying header leaves this module: ``patient_id`` is a hash of PatientID (a grouping
key for cross-validation), ``case_id`` a hash of the series and segmentation UIDs.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import pandas as pd

from .. import _io
from ..errors import ManifestError

__all__ = [
    "Header",
    "Problem",
    "Selected",
    "crawl",
    "group_series",
    "pair",
    "scan_dicom",
    "DicomTree",
    "is_dicom_tree",
    "list_files",
    "url_fs",
    "read_dataset",
    "roi_names",
    "read_aliases",
    "select_rois",
    "roi_table",
]

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


@dataclass(frozen=True)
class Header:
    """What the crawl keeps of one file: no identifier but a hash of the patient's."""

    path: str
    sop_class: str
    sop_uid: str
    series_uid: str
    study_uid: str
    modality: str
    frame_of_reference: str | None
    patient_key: str
    referenced_series: tuple[str, ...] = ()
    referenced_instances: tuple[str, ...] = ()
    rois: tuple[tuple[int, str], ...] = ()
    image: bool = False


@dataclass(frozen=True)
class Problem:
    file: str
    reason: str


def patient_key(patient_id: str) -> str:
    """A grouping key for a PatientID that does not show it (sha256, 12 hex digits)."""
    return hashlib.sha256(patient_id.encode()).hexdigest()[:12] if patient_id else ""


def list_files(location: str) -> list[str]:
    """Every file under a local folder or an fsspec URL prefix, sorted (a single file: itself)."""
    local = _io.local_path(location)
    if local is not None:
        if os.path.isfile(local):
            return [local]
        out = []
        for folder, dirs, files in os.walk(local):
            dirs.sort()
            out.extend(os.path.join(folder, f) for f in sorted(files))
        return out
    fs, root = url_fs(location)
    if fs.isfile(root):
        return [location]
    protocol = location.split("://", 1)[0]
    return [f"{protocol}://{p}" for p in sorted(fs.find(root))]


def url_fs(url: str):
    """fsspec's file system and path for a local path or URL (``s3://`` anonymous without credentials)."""
    import fsspec

    options = {}
    if url.startswith(("s3://", "s3a://")) and not (
        os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")
    ):
        # Without credentials, read anonymously: the Imaging Data Commons' buckets are public
        # and botocore would otherwise fail looking for credentials.
        options["anon"] = True
    return fsspec.core.url_to_fs(url, **options)


def read_dataset(path: str, *, header_only: bool = False):
    """The pydicom dataset of one file; ``ValueError`` saying why it is not a usable DICOM file."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    local = _io.local_path(path)
    try:
        if local is not None:
            ds = pydicom.dcmread(local, stop_before_pixels=header_only)
        else:
            fs, p = url_fs(path)
            ds = pydicom.dcmread(io.BytesIO(fs.cat_file(p)), stop_before_pixels=header_only)
    except InvalidDicomError:
        raise ValueError("not a DICOM file (no DICM prefix)") from None
    except (OSError, EOFError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"unreadable DICOM file ({err})") from err
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID") if k not in ds]
    if missing:
        raise ValueError(f"truncated or incomplete DICOM file (no {', '.join(missing)})")
    return ds


def roi_names(ds) -> list[tuple[int, str]]:
    """(number, name) of every ROI of an RTSTRUCT or segment of a SEG dataset (headers only)."""
    if ds.SOPClassUID == SEG_SOP_CLASS:
        # SegmentLabel is often a category ("Neoplasm, Primary" for every segment of a dcmqi
        # SEG); the description, when there is one, is what tells segments apart.
        return [
            (int(s.SegmentNumber), str(s.get("SegmentDescription") or s.get("SegmentLabel", "")))
            for s in ds.get("SegmentSequence", [])
        ]
    return [(int(r.ROINumber), str(r.get("ROIName", ""))) for r in ds.get("StructureSetROISequence", [])]


def read_header(path: str) -> Header | Problem:
    """The crawl's view of one file (headers only), or why it is not a usable DICOM file."""
    try:
        ds = read_dataset(path, header_only=True)
    except ValueError as err:
        return Problem(path, str(err))
    sop_class = str(ds.SOPClassUID)
    refs_series: set[str] = set()
    refs_instances: set[str] = set()
    frame = str(ds.get("FrameOfReferenceUID", "")) or None
    if sop_class == SEG_SOP_CLASS:
        refs_series = {str(r.SeriesInstanceUID) for r in ds.get("ReferencedSeriesSequence", [])}
        for item in ds.get("PerFrameFunctionalGroupsSequence", []):
            for der in item.get("DerivationImageSequence", []):
                refs_instances.update(str(s.ReferencedSOPInstanceUID) for s in der.get("SourceImageSequence", []))
    elif sop_class == RTSTRUCT_SOP_CLASS:
        for f in ds.get("ReferencedFrameOfReferenceSequence", []):
            frame = frame or str(f.get("FrameOfReferenceUID", "")) or None
            for st in f.get("RTReferencedStudySequence", []):
                for s in st.get("RTReferencedSeriesSequence", []):
                    refs_series.add(str(s.SeriesInstanceUID))
                    refs_instances.update(str(i.ReferencedSOPInstanceUID) for i in s.get("ContourImageSequence", []))
    # pixels are not read here: an image is an instance with rows that is no segmentation
    image = "Rows" in ds and sop_class not in (SEG_SOP_CLASS, RTSTRUCT_SOP_CLASS)
    uid = str(ds.get("SeriesInstanceUID", ""))
    if not uid:
        return Problem(path, "no SeriesInstanceUID (truncated or incomplete header)")
    segmentation = sop_class in (SEG_SOP_CLASS, RTSTRUCT_SOP_CLASS)
    return Header(
        path=path,
        sop_class=sop_class,
        sop_uid=str(ds.SOPInstanceUID),
        series_uid=uid,
        study_uid=str(ds.get("StudyInstanceUID", "")),
        modality=str(ds.get("Modality", "")),
        frame_of_reference=frame,
        patient_key=patient_key(str(ds.get("PatientID", ""))),
        referenced_series=tuple(sorted(refs_series)),
        referenced_instances=tuple(sorted(refs_instances)),
        rois=tuple(roi_names(ds)) if segmentation else (),
        image=image,
    )


def _read_headers(paths: list[str]) -> list[Header | Problem]:
    return [read_header(p) for p in paths]


def crawl(root: str, mapper: Callable = map, chunk: int = 256) -> tuple[list[Header], list[Problem]]:
    """Every file's header under ``root``, read in chunks through ``mapper``.

    Files that are not DICOM or whose header is cut short are returned as problems, with the
    file and the reason; they never stop the crawl.
    """
    files = list_files(root)
    chunks = [files[i : i + chunk] for i in range(0, len(files), chunk)]
    headers: list[Header] = []
    problems: list[Problem] = []
    for part in mapper(_read_headers, chunks):
        for item in part:
            (problems if isinstance(item, Problem) else headers).append(item)
    return headers, problems


@dataclass(frozen=True)
class SeriesInfo:
    series_uid: str
    folder: str
    files: tuple[str, ...]
    modality: str
    frame_of_reference: str | None
    study_uid: str
    patient_key: str


def _common_folder(paths: Iterable[str]) -> str:
    folders = {p.rsplit("/", 1)[0] for p in paths}
    return os.path.commonpath(sorted(folders)) if len(folders) > 1 else folders.pop()


def group_series(headers: list[Header]) -> dict[str, SeriesInfo]:
    """Image series by SeriesInstanceUID (segmentation objects are not image series)."""
    files: dict[str, list[Header]] = defaultdict(list)
    for h in headers:
        if h.image:
            files[h.series_uid].append(h)
    out = {}
    for uid, members in files.items():
        first = members[0]
        out[uid] = SeriesInfo(
            uid,
            _common_folder(m.path for m in members),
            tuple(sorted(m.path for m in members)),
            first.modality,
            first.frame_of_reference,
            first.study_uid,
            first.patient_key,
        )
    return out


def pair(
    headers: list[Header], series: Mapping[str, SeriesInfo]
) -> tuple[list[tuple[SeriesInfo, Header]], list[Problem]]:
    """Each RTSTRUCT and SEG with the image series it references.

    In order: its referenced series UIDs; if it names none, the series holding the SOP
    instances its frames or contours reference, else the one image series with its
    FrameOfReferenceUID. A segmentation that references no series of the tree, or whose
    frame of reference several series share, is a problem.
    """
    by_instance = {h.sop_uid: h.series_uid for h in headers if h.image}
    by_frame: dict[str, list[str]] = defaultdict(list)
    for uid, info in series.items():
        if info.frame_of_reference:
            by_frame[info.frame_of_reference].append(uid)
    pairs, problems = [], []
    for h in headers:
        if h.sop_class not in (SEG_SOP_CLASS, RTSTRUCT_SOP_CLASS):
            continue
        kind = "SEG" if h.sop_class == SEG_SOP_CLASS else "RTSTRUCT"
        # a series it names is the one it segments; only an object that names none is paired
        # through the instances it references, then through its frame of reference
        found = [u for u in h.referenced_series if u in series]
        if not found and not h.referenced_series:
            found = sorted({by_instance[i] for i in h.referenced_instances if i in by_instance})
        if not found and not h.referenced_series and h.frame_of_reference:
            candidates = by_frame.get(h.frame_of_reference, [])
            if len(candidates) > 1:
                reason = f"{kind} references no series and {len(candidates)} series share its frame of reference"
                problems.append(Problem(h.path, reason))
                continue
            found = candidates
        if not found:
            wanted = ", ".join(h.referenced_series) or f"frame of reference {h.frame_of_reference}"
            problems.append(Problem(h.path, f"{kind} references {wanted}, which is not an image series of this tree"))
            continue
        pairs.extend((series[u], h) for u in found)
    return pairs, problems


@dataclass(frozen=True)
class Selected:
    number: int
    name: str
    label_name: str


def read_aliases(path: str | os.PathLike | None) -> dict[str, str]:
    """ROI name -> canonical name from a CSV/TSV with columns ``alias`` and ``name``.

    Matched case-insensitively: ``GTV``, ``GTVp`` and ``gtv_primary`` can all map to ``gtv``.
    """
    if path is None:
        return {}
    source = os.fspath(path)
    frame = pd.read_csv(source, sep="\t" if source.lower().endswith(".tsv") else ",", dtype=str)
    cols = {c.lower().strip(): c for c in frame.columns}
    if "alias" not in cols or "name" not in cols:
        raise ManifestError(source, [f"alias table needs columns 'alias' and 'name'; found {list(frame.columns)}"])
    pairs = zip(frame[cols["alias"]], frame[cols["name"]], strict=True)
    return {str(a).strip().lower(): str(n).strip() for a, n in pairs}


def select_rois(
    rois: Iterable[tuple[int, str]], selector: str | None, aliases: Mapping[str, str] | None = None
) -> tuple[list[Selected], list[str]]:
    """The ROIs a selector picks, each with its label name, and the selector items that matched none.

    A selector is items separated by ``;``: an exact name, ``re:PATTERN`` (a regular expression
    matched against the whole name, ignoring case), or ``#N`` (ROI or segment number), each
    optionally followed by ``=NAME``, the label name to give it. Empty or ``all`` selects
    every ROI. Without ``=NAME``, the label name is the alias table's name for the ROI's name,
    else the ROI's own name.
    """
    rois = list(rois)

    def default(name: str) -> str:
        return aliases_name(name, aliases)

    text = (selector or "").strip()
    if not text or text.lower() == "all":
        return [Selected(n, name, default(name)) for n, name in rois], []
    chosen: dict[int, Selected] = {}
    unmatched = []
    for item in (p.strip() for p in text.split(";")):
        if not item:
            continue
        pattern, _, rename = item.partition("=")
        pattern = pattern.strip()
        if pattern.startswith("re:"):
            rx = re.compile(pattern[3:], re.IGNORECASE)
            hits = [(n, name) for n, name in rois if rx.fullmatch(name)]
        elif re.fullmatch(r"#\d+", pattern):
            hits = [(n, name) for n, name in rois if n == int(pattern[1:])]
        else:
            hits = [(n, name) for n, name in rois if name == pattern]
        if not hits:
            unmatched.append(item)
        for n, name in hits:
            chosen.setdefault(n, Selected(n, name, rename.strip() or default(name)))
    return sorted(chosen.values(), key=lambda s: s.number), unmatched


def explicit_selector(selected: Iterable[Selected], rois: Iterable[tuple[int, str]]) -> str:
    """A selector picking exactly these ROIs, with their label names (what a scanned manifest keeps).

    ROIs are named by name where the name is unique in their object and plain, else by number.
    """
    counts = Counter(name for _, name in rois)
    items = []
    for s in selected:
        plain = counts[s.name] == 1 and not re.search(r"[;=]|^\s|\s$|^re:|^#", s.name)
        item = s.name if plain else f"#{s.number}"
        items.append(item if s.label_name == s.name else f"{item}={s.label_name}")
    return ";".join(items)


def _relative(path: str, root: str) -> str:
    if "://" in root:
        return path[len(root.rstrip("/")) + 1 :] if path.startswith(root.rstrip("/") + "/") else path
    return os.path.relpath(path, root)


@dataclass(frozen=True)
class DicomTree:
    """What :func:`scan_dicom` found: the manifest, and what it says about the tree."""

    manifest: pd.DataFrame
    problems: list[Problem]
    series: int  # image series
    segmentations: list[tuple[str, int]]  # (SEG or RTSTRUCT, ROIs) of each paired object
    unsegmented: int  # image series no segmentation references

    def summary(self) -> str:
        kinds = Counter(kind for kind, _ in self.segmentations)
        parts = []
        for kind in ("RTSTRUCT", "SEG"):
            rois = [n for k, n in self.segmentations if k == kind]
            if rois:
                word = "ROIs" if kind == "RTSTRUCT" else "segments"
                parts.append(f"{kinds[kind]} {kind} ({', '.join(map(str, rois))} {word})")
        return (
            f"{self.series} image series, {' and '.join(parts) or 'no segmentation'}; "
            f"{self.unsegmented} series without segmentation; {len(self.problems)} file(s) skipped"
        )


def scan_dicom(
    root: str,
    *,
    roi: str | None = None,
    aliases: Mapping[str, str] | None = None,
    mapper: Callable = map,
) -> DicomTree:
    """A manifest of a DICOM tree: one row per (image series, RTSTRUCT or SEG).

    Columns: ``case_id`` (a hash of the series and segmentation UIDs), ``patient_id`` (a
    hash of PatientID), ``image`` (the series' folder), ``mask`` (the segmentation file),
    ``series_uid``, ``roi`` (the selected ROIs with their label names; empty: all),
    ``segmentation`` (SEG or RTSTRUCT). Paths are relative to ``root``. Problems: files that
    are not DICOM or are cut short, segmentations without their series in the tree, objects
    where the selector picks nothing.
    """
    headers, problems = crawl(root, mapper)
    series = group_series(headers)
    pairs, pair_problems = pair(headers, series)
    problems.extend(pair_problems)
    rows, found = [], []
    for info, seg in pairs:
        selected, _ = select_rois(seg.rois, roi, aliases)
        if not selected:
            names = ", ".join(name for _, name in seg.rois) or "none"
            problems.append(Problem(seg.path, f"no ROI matches the selector {roi!r} (ROIs: {names})"))
            continue
        kind = "SEG" if seg.sop_class == SEG_SOP_CLASS else "RTSTRUCT"
        found.append((kind, len(seg.rois)))
        rows.append(
            {
                "case_id": "dcm-" + hashlib.sha256(f"{info.series_uid}|{seg.sop_uid}".encode()).hexdigest()[:12],
                "patient_id": info.patient_key,
                "image": _relative(info.folder, root),
                "mask": _relative(seg.path, root),
                "series_uid": info.series_uid,
                "roi": "" if not roi and not aliases else explicit_selector(selected, seg.rois),
                "segmentation": kind,
            }
        )
    columns = ["case_id", "patient_id", "image", "mask", "series_uid", "roi", "segmentation"]
    frame = pd.DataFrame(rows, columns=columns).sort_values(["patient_id", "series_uid", "segmentation", "mask"])
    unsegmented = len(set(series) - {info.series_uid for info, _ in pairs})
    return DicomTree(frame.reset_index(drop=True), problems, len(series), found, unsegmented)


def is_dicom_tree(root: str | os.PathLike, probe: int = 50) -> bool:
    """Whether a folder holds DICOM files (the DICM prefix in one of the first ``probe`` files)."""
    seen = 0
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            try:
                with open(os.path.join(folder, name), "rb") as f:
                    if f.read(132)[128:] == b"DICM":
                        return True
            except OSError:
                pass
            seen += 1
            if seen >= probe:
                return False
    return False


def segmentation_file(location: str) -> str:
    """The one file of a segmentation: ``location`` itself, or the only file under a folder
    (an IDC series folder holds its single instance)."""
    files = list_files(location)
    if len(files) != 1:
        raise ValueError(f"expected one segmentation file here, found {len(files)}")
    return files[0]


def roi_table(scans: Iterable, aliases: Mapping[str, str] | None = None) -> tuple[pd.DataFrame, list[Problem]]:
    """Every ROI/segment name of the cohort's segmentation objects, with counts.

    Columns: ``name``, ``label_name`` (the alias table's name, else the name), ``kind``
    (SEG/RTSTRUCT), ``objects`` (segmentation objects that have it), ``selected`` (rows whose
    ``roi`` selector picks it). Only DICOM rows (with ``series_uid``) are read, headers only.
    """
    counts: Counter = Counter()
    chosen: Counter = Counter()
    problems = []
    for scan in scans:
        if not getattr(scan, "dicom", False):
            continue
        try:
            header = read_header(segmentation_file(scan.mask))
        except ValueError as err:
            problems.append(Problem(scan.mask, str(err)))
            continue
        if isinstance(header, Problem):
            problems.append(header)
            continue
        kind = "SEG" if header.sop_class == SEG_SOP_CLASS else "RTSTRUCT"
        picked = {s.number for s in select_rois(header.rois, scan.roi, aliases)[0]}
        for number, name in header.rois:
            key = (name, aliases_name(name, aliases), kind)
            counts[key] += 1
            chosen[key] += number in picked
    rows = [
        {"name": n, "label_name": ln, "kind": k, "objects": counts[(n, ln, k)], "selected": chosen[(n, ln, k)]}
        for n, ln, k in sorted(counts, key=lambda key: (-counts[key], key))
    ]
    return pd.DataFrame(rows, columns=["name", "label_name", "kind", "objects", "selected"]), problems


def aliases_name(name: str, aliases: Mapping[str, str] | None) -> str:
    """The alias table's name for an ROI name (case-insensitive), else the name itself."""
    if not aliases:
        return name
    return {k.lower(): v for k, v in aliases.items()}.get(name.strip().lower(), name)
