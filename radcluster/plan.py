"""Turning a cohort into tasks: what to skip, what each scan needs, how to group them.

Nothing is computed twice: a scan whose stored rows were extracted with the same params from
files that have not changed (same size and modification time) is skipped without being
read; a scan whose files were touched is sent with the stored content hashes, and the task
extracts only if the voxels really changed. New scans, scans with changed files or params,
and scans that failed before are extracted.

Each task carries an estimate of the memory its scan needs (from the image header and the
enabled filters), used as a Dask resource on workers that run several tasks at once, so a
large scan does not run beside others on a worker that cannot hold them; a scan larger than
any worker fails up front with a message instead of killing workers. Tiny scans are grouped
so that task overhead stays small against task time, in groups that shrink towards the end
of the run (guided self-scheduling); the largest scans go first, so the tail of a run is
short. When a cohort has fewer tasks than the cluster has slots (an atlas: one scan, a
hundred labels), each many-label scan is split into parts, part i of k extracting every k-th
label, so no worker idles; a scan with fewer labels than parts (one big CT) is split by
filtered image instead when its params give several (LoG sigmas, wavelet sub-bands).
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pandas as pd

from . import _io
from .cohort import ALL_LABELS, Cohort, Scan
from .store import latest_extractions

__all__ = ["Task", "Plan", "make_plan", "part_key", "file_stat", "stat_many", "read_headers", "estimate_bytes"]

# Scans whose image file is smaller than this are grouped into one task, up to
# _BATCH_BYTES of input per task: below ~1 MB a scan extracts in tens of milliseconds,
# comparable to Dask's per-task cost (about 10 ms of the driver's CPU per task, scheduler
# included, measured by benchmarks/orchestration.py: 64 scans a task keep it near 0.2 ms a
# scan, where 16 left 0.6 ms).
_SMALL_FILE = 1 << 20
_BATCH_BYTES = 4 << 20
_BATCH_MAX = 64
_GUIDED_SHARE = 4  # a group is at most 1/(4 x slots) of the tiny scans left
_LISTINGS = 16  # folder listings of an object store in flight at once (stat_many)

# Working copies per voxel, in float64-equivalents, by image type: the decoded image and its
# uint32 mask, one filtered image at a time, and pywt's stationary wavelet transform, which
# holds every sub-band of a level at once.
_FILTER_COPIES = {"Original": 1, "LoG": 2, "Wavelet": 10, "LBP3D": 4}


@dataclass(frozen=True)
class Task:
    """One Dask task: one scan, or a group of tiny ones."""

    scans: tuple[Scan, ...]
    known: dict[str, tuple[str, str]] = field(default_factory=dict)  # case -> stored hashes
    memory: int = 0  # bytes the largest scan of the task needs
    part: tuple[int, int] | None = None  # (i, k): the one scan's every k-th label from the i-th

    @property
    def key(self) -> str:
        if self.part:
            return part_key(self.scans[0].case_id, self.part)
        return self.scans[0].case_id if len(self.scans) == 1 else f"{self.scans[0].case_id}+{len(self.scans) - 1}"


def part_key(case_id: str, part: tuple[int, int]) -> str:
    """How a part of a split scan is named in task keys and logs: ``atlas-part2of4``."""
    return f"{case_id}-part{part[0] + 1}of{part[1]}"


@dataclass
class Plan:
    tasks: list[Task]
    skipped: list[str]  # unchanged: same params, same files
    new: list[str]  # never extracted (or only failed) before
    changed: list[str]  # files or params differ from the stored rows
    too_large: list[tuple[Scan, int]]
    stats: dict[str, str | None] = field(default_factory=dict)  # path -> file_stat, taken in bulk


def _stat_text(info: dict[str, Any]) -> str:
    tag = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime")
    return f"{info.get('size')}:{tag}"


def file_stat(path: str) -> str | None:
    """A cheap identity of a file: size and modification time (or ETag) without reading it.

    A folder (a DICOM series) is identified by its files' total size and a hash of every
    file's name, size and modification time, so an added, removed or rewritten slice shows.
    """
    try:
        if path.endswith("/") or (not _io.is_url(path) and os.path.isdir(path)):
            return _folder_stat(path)
        if _io.is_url(path):
            fs, p = fsspec.core.url_to_fs(path)
            return _stat_text(fs.info(p))
        st = os.stat(path)
        return f"{st.st_size}:{st.st_mtime_ns}"
    except (OSError, ValueError):
        return None


def _folder_stat(path: str) -> str:
    import hashlib

    from .cohort.dicom import url_fs

    fs, root = url_fs(path)
    found = fs.find(root, detail=True)
    h = hashlib.sha256()
    for name in sorted(found):
        h.update(f"{name}|{_stat_text(found[name])}\n".encode())
    return f"{sum(int(i.get('size') or 0) for i in found.values())}:{h.hexdigest()[:16]}"


def stat_many(paths: Iterable[str]) -> dict[str, str | None]:
    """:func:`file_stat` of many files: local ones one ``stat`` each (microseconds), remote
    ones from listings of their folders (one request per 1,000 objects instead of one per
    file: 100k scans on S3 are 100 requests, not 100,000)."""
    out: dict[str, str | None] = {}
    remote: dict[str, list[str]] = {}
    for path in dict.fromkeys(paths):
        if _io.is_url(path) and not path.endswith("/"):  # a folder (DICOM series): file_stat
            remote.setdefault(path.split("://", 1)[0], []).append(path)
        else:
            out[path] = file_stat(path)
    for urls in remote.values():
        fs, _ = fsspec.core.url_to_fs(urls[0])
        roots = {fs._strip_protocol(u): u for u in urls}
        folders = {r.rsplit("/", 1)[0] for r in roots}
        listed: dict[str, str] = {}
        try:
            if len(folders) <= max(1, len(roots) // 20):  # a few folders: list each
                for entries in _listings(fs, sorted(folders)):
                    listed.update({e["name"]: _stat_text(e) for e in entries})
            else:  # a folder per scan: one recursive listing of their common prefix
                prefix = os.path.commonpath(list(folders))
                fs.invalidate_cache(prefix)
                listed.update({name: _stat_text(e) for name, e in fs.find(prefix, detail=True).items()})
        except _io.storage_errors():
            listed = {}
        for root, url in roots.items():
            out[url] = listed.get(root) or file_stat(url)
    return out


def _listings(fs, folders: list[str]) -> Iterator[list[dict]]:
    """Each folder's listing, _LISTINGS at a time: a listing is a round trip (or several, of
    1,000 objects each) that an object store answers in tens of milliseconds, so 100 folders
    one after another would wait seconds for nothing."""
    from concurrent.futures import ThreadPoolExecutor

    def listing(folder: str) -> list[dict]:
        fs.invalidate_cache(folder)
        return fs.ls(folder, detail=True)

    with ThreadPoolExecutor(min(_LISTINGS, len(folders))) as pool:
        yield from pool.map(listing, folders)


def _local_header(path: str) -> tuple[int, int] | None:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None  # the task will read it and record why it cannot
    voxels = math.prod(reader.GetSize())
    itemsize = sitk.GetArrayViewFromImage(sitk.Image([1] * reader.GetDimension(), reader.GetPixelID())).itemsize
    return voxels, itemsize * reader.GetNumberOfComponents()


# Bytes per voxel of the element types of NRRD, MetaImage and NIfTI headers.
_NRRD_TYPES = {
    "char": 1,
    "uchar": 1,
    "int8": 1,
    "uint8": 1,
    "short": 2,
    "ushort": 2,
    "int16": 2,
    "uint16": 2,
    "int": 4,
    "uint": 4,
    "int32": 4,
    "uint32": 4,
    "float": 4,
    "double": 8,
    "int64": 8,
    "uint64": 8,
    "signed char": 1,
    "unsigned char": 1,
    "unsigned short": 2,
    "signed short": 2,
    "short int": 2,
    "unsigned int": 4,
    "signed int": 4,
    "long long": 8,
    "unsigned long long": 8,
}
_MET_TYPES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
    "MET_LONG": 8,
    "MET_ULONG": 8,
}
_HEAD_BYTES = 1 << 16


def _remote_header(path: str) -> tuple[int, int] | None:
    """(voxels, bytes per voxel) from one ranged read of the start of a remote NRRD, MetaImage
    or NIfTI file (gzip-compressed too: the header is at the start of the stream)."""
    fs, p = fsspec.core.url_to_fs(path)
    head = fs.cat_file(p, start=0, end=_HEAD_BYTES)
    name = path.lower()
    if name.endswith(".gz") or head[:2] == b"\x1f\x8b":
        head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, _HEAD_BYTES)
    if name.endswith((".nii", ".nii.gz")):
        for endian in "<>":
            if struct.unpack(f"{endian}i", head[:4])[0] == 348:
                dims = struct.unpack(f"{endian}8h", head[40:56])
                bitpix = struct.unpack(f"{endian}h", head[72:74])[0]
                return math.prod(dims[1 : 1 + dims[0]]), max(bitpix // 8, 1)
        return None
    text = head.split(b"\n\n", 1)[0].decode("latin-1")
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":" if head.startswith(b"NRRD") else "=")
        if sep:
            fields[key.strip().lower()] = value.strip()
    if head.startswith(b"NRRD") and "sizes" in fields and fields.get("type", "").lower() in _NRRD_TYPES:
        return math.prod(int(v) for v in fields["sizes"].split()), _NRRD_TYPES[fields["type"].lower()]
    if "dimsize" in fields and fields.get("elementtype") in _MET_TYPES:
        channels = int(fields.get("elementnumberofchannels", 1))
        return math.prod(int(v) for v in fields["dimsize"].split()), _MET_TYPES[fields["elementtype"]] * channels
    return None


def read_headers(paths: Sequence[str]) -> dict[str, tuple[int, int] | None]:
    """(voxels, bytes per voxel) of each image from its header; None where it cannot be read
    (the task will read the file and record why). Local files through SimpleITK; remote ones
    by one ranged read of their first 64 KiB, never the whole file."""
    out: dict[str, tuple[int, int] | None] = {}
    for path in paths:
        try:
            out[path] = _remote_header(path) if _io.is_url(path) else _local_header(path)
        except (*_io.storage_errors(), ValueError, struct.error, zlib.error):
            out[path] = None
    return out


def _needs_header(path: str, file_size: int) -> bool:
    """Whether the estimate reads the header: files of 1 MB and more and detached headers
    (``.nhdr``, ``.mhd``, ``.hdr``, whose own size says nothing of the data). Reading a
    compressed header costs milliseconds, which across thousands of tiny scans would delay the
    first task; those are taken as four times their file size (typical compression of
    CT/MR), which errs on the side of caution."""
    return path.lower().endswith((".nhdr", ".mhd", ".hdr")) or file_size >= _SMALL_FILE


def estimate_bytes(
    image_types: Iterable[str], file_size: int, header: tuple[int, int] | None, engines: Iterable = ()
) -> int:
    """Peak memory of extracting a scan: image + uint32 mask + float64 working copies, plus
    what each feature engine adds (an ONNX model's session and activations)."""
    voxels, itemsize = header if header else (max(file_size, 1) * 4 // 2, 2)
    copies = max((_FILTER_COPIES.get(t, 2) for t in image_types), default=1)
    return int(voxels * (itemsize + 4 + 8 * copies)) + sum(e.memory_bytes(voxels) for e in engines)


def make_plan(
    cohort: Cohort,
    stored: pd.DataFrame,
    params_hash: str,
    image_types: Iterable[str],
    *,
    worker_memory: int | None = None,
    slots: int = 1,
    headers: Callable[[list[str]], dict[str, tuple[int, int] | None]] | None = None,
    engines: Iterable = (),
) -> Plan:
    """Decide, for every scan, whether and how it is extracted.

    Parameters
    ----------
    stored : DataFrame
        The store's current row keys (:meth:`radcluster.store.Store.row_keys`).
    worker_memory : int, optional
        Bytes the largest worker may use; scans estimated above it are not submitted.
    slots : int
        Tasks the cluster runs at once (worker threads); groups of tiny scans shrink towards
        the end of the run in proportion to it, so no worker idles while another finishes a
        long group, and the scans of a cohort with fewer tasks than slots are split.
    headers : callable, optional
        Reads the headers of a list of images (default: :func:`read_headers` here);
        :func:`radcluster.jobs.extract.run_extract` has the workers read them.
    engines : iterable of radcluster.extract.engines.Engine
        The run's feature engines; each one's ``memory_bytes`` joins every scan's estimate.
    """
    image_types = list(image_types)
    latest, labels = _latest_by_case(stored, params_hash)
    known_cases = set(stored["case_id"]) if not stored.empty else set()
    stats = stat_many(p for scan in cohort.scans for p in (scan.image, scan.mask))

    todo: list[tuple[Scan, int, dict]] = []
    skipped, new, changed, too_large = [], [], [], []
    for scan in cohort.scans:
        image_stat, mask_stat = stats.get(scan.image), stats.get(scan.mask)
        size = int(image_stat.split(":")[0]) if image_stat else 0
        prev = latest.get(scan.case_id)
        known: dict[str, tuple[str, str]] = {}
        if prev is not None and _labels_covered(scan, labels[scan.case_id]):
            if (prev[0], prev[1]) == (image_stat, mask_stat):
                skipped.append(scan.case_id)
                continue
            known[scan.case_id] = (prev[2], prev[3])
            changed.append(scan.case_id)
        elif scan.case_id in known_cases:
            changed.append(scan.case_id)
        else:
            new.append(scan.case_id)
        todo.append((scan, size, known))

    # Memory estimates from the headers of the scans to extract (on the workers when the
    # caller passes ``headers``), then the scans no worker can hold are set aside.
    wanted = list(
        dict.fromkeys(scan.image for scan, size, _ in todo if not scan.dicom and _needs_header(scan.image, size))
    )
    header = (headers or read_headers)(wanted) if wanted else {}
    sized: list[tuple[Scan, int, int, dict]] = []
    for scan, size, known in todo:
        # a DICOM series folder: mostly uncompressed 16-bit slices, stacked as 32-bit (rescaled
        # CT) and copied once into SimpleITK
        voxels = (max(size, 1) // 2, 8) if scan.dicom else header.get(scan.image)
        need = estimate_bytes(image_types, size, voxels, engines)
        if worker_memory is not None and need > worker_memory:
            too_large.append((scan, need))
            continue
        sized.append((scan, size, need, known))
    todo = sized

    todo.sort(key=lambda t: -t[1])  # largest first: the last task to finish is a short one
    # Guided self-scheduling for the tiny scans: each group takes a share of the tiny scans
    # still to be grouped, so groups shrink from _BATCH_MAX towards single scans at the end
    # of the run; early tasks keep Dask's per-task cost small, late ones let every worker
    # finish at about the same time.
    remaining = sum(1 for t in todo if t[1] < _SMALL_FILE)
    tasks: list[Task] = []
    group: list[tuple[Scan, int, int, dict]] = []
    size = 1
    for item in todo:
        if item[1] >= _SMALL_FILE:
            tasks.append(Task((item[0],), item[3], item[2]))
            continue
        if not group:
            size = max(1, min(_BATCH_MAX, math.ceil(remaining / (_GUIDED_SHARE * max(slots, 1)))))
        group.append(item)
        remaining -= 1
        if sum(g[1] for g in group) >= _BATCH_BYTES or len(group) >= size:
            tasks.append(_grouped(group))
            group = []
    if group:
        tasks.append(_grouped(group))
    return Plan(
        _split_labels(tasks, slots, _filter_units(image_types, engines)), skipped, new, changed, too_large, stats
    )


def _filter_units(image_types: list[str], engines: Iterable) -> int:
    """The parts a one-label scan may be split into by filtered image (1: not at all).

    Only pyradiomics' fast path splits by filter (other engines would repeat their work in
    every part), and only when the params give several filtered images: shape is one unit,
    each image type at least one (a LoG is one per sigma, counted once here), a wavelet eight.
    """
    names = [getattr(e, "name", "") for e in engines]
    if names not in ([], ["pyradiomics"]) or not (len(image_types) > 1 or {"LoG", "Wavelet"} & set(image_types)):
        return 1
    return 1 + len(image_types) + 7 * ("Wavelet" in image_types)


def _split_labels(tasks: list[Task], slots: int, filter_units: int = 1) -> list[Task]:
    """Spread the slots the tasks leave idle over the many-label scans, as parts of them.

    Every part reads and hashes the scan again, which costs little against a label's
    features (tens of milliseconds each); the labels of an ``all`` mask are only known once
    it is read, so a part takes every k-th of them rather than a list. With
    ``filter_units`` > 1 a scan with fewer labels than parts is split by filtered image too
    (:attr:`radcluster.extract.engines.ScanImage.filter_part`), into at most that many parts
    per label.
    """

    def most(scan: Scan) -> float:
        count = _label_count(scan)
        return count if count == math.inf else count * filter_units

    many = [i for i, t in enumerate(tasks) if len(t.scans) == 1 and most(t.scans[0]) > 1]
    idle = slots - len(tasks)
    if idle <= 0 or not many:
        return tasks
    parts = dict.fromkeys(many, 1)
    for n in range(idle):  # round robin, largest scans (first in the list) first
        i = many[n % len(many)]
        parts[i] = min(parts[i] + 1, most(tasks[i].scans[0]))
    out: list[Task] = []
    for i, task in enumerate(tasks):
        k = parts.get(i, 1)
        out.extend([Task(task.scans, task.known, task.memory, (j, k)) for j in range(k)] if k > 1 else [task])
    return out


def _label_count(scan: Scan) -> float:
    if scan.labels == ALL_LABELS:
        return math.inf  # unknown until the mask is read
    return len(scan.labels) if scan.labels else 1


def _grouped(group: list[tuple[Scan, int, int, dict]]) -> Task:
    known: dict[str, tuple[str, str]] = {}
    for item in group:
        known.update(item[3])
    return Task(tuple(g[0] for g in group), known, max(g[2] for g in group))


def _labels_covered(scan: Scan, stored: set[int]) -> bool:
    """Whether the stored rows hold every label the manifest asks for now."""
    if scan.labels is None or scan.labels == ALL_LABELS:
        return True  # 'all' and the default label were extracted in full when stored
    return set(scan.labels) <= stored


def _latest_by_case(stored: pd.DataFrame, params_hash: str):
    """Of each case's latest extraction with ``params_hash``: (image_stat, mask_stat,
    image_hash, mask_hash), and its labels. Vectorised: 100k cases in well under a second."""
    if stored.empty:
        return {}, {}
    same = stored[stored["params_hash"] == params_hash]
    same = same.merge(latest_extractions(same), on=["case_id", "extracted_at"])
    cols = [
        same[c] if c in same else pd.Series([None] * len(same), index=same.index)
        for c in ("image_stat", "mask_stat", "image_hash", "mask_hash")
    ]
    first = ~same["case_id"].duplicated()
    latest = dict(zip(same["case_id"][first], zip(*(c[first] for c in cols), strict=True), strict=True))
    labels: dict[str, set[int]] = {}
    for case, label in zip(same["case_id"], same["label"], strict=True):
        labels.setdefault(case, set()).add(int(label))
    return latest, labels
