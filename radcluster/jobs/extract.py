"""Turning a cohort into Dask tasks and streaming their results into the store.

:func:`run_extract` plans the run (:mod:`radcluster.plan`), keeps a bounded window of tasks
submitted (a few per worker thread, so the client's memory and the scheduler's task count do
not grow with the cohort), and as each task finishes writes its rows and failures into Parquet
part files in batches, appending the rows to the store's matrix with each part. The client
holds at most one batch of rows; voxels never reach it.

Worker loss is Dask's: the tasks of a lost worker are rescheduled, and a task whose workers
die ``distributed.scheduler.allowed-failures`` times raises ``KilledWorker``. A group of tiny
scans that does so is split into one task per scan, so only the scan that kills its worker on
its own is recorded as failed and its neighbours are extracted.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as _dt
import logging
import operator
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..cohort import Cohort, Scan, read_label_table, read_manifest
from ..errors import FailureRecord
from ..extract import ExtractionSettings, ScanResult, extract_scan
from ..extract.engines import combined_key, from_spec
from ..extract.perturb import perturbed_cohort
from ..plan import Plan, Task, file_stat, make_plan, part_key, read_headers
from ..spec import JobSpec
from ..spec.extraction import read_params
from ..store import Store, open_store

logger = logging.getLogger(__name__)

__all__ = ["RunSummary", "run_task", "run_extract", "extract_job"]

# Tasks kept submitted: this many per worker thread, and at least _MIN_WINDOW, so an adaptive
# cluster that starts with no workers still sees enough queued work to scale up.
_WINDOW_PER_SLOT = 4
_MIN_WINDOW = 64
# A run that leaves more small part files than this compacts the store at its end.
AUTO_COMPACT_PARTS = 64
# Feature values a part file holds (unless ``flush_rows`` says otherwise): Parquet's cost is
# per column chunk, so a part of 256 rows x 1,218 features took ~180 ms to write and ~220 ms
# to read back when compacted, against the same for 8-16 times the rows; 32 MiB is ~3,400
# such rows (30 parts per 100k scans, no compaction needed) or 42,000 rows of 100 features.
PART_BYTES = 32 << 20


@dataclass
class RunSummary:
    """What a run did; also written to ``runs/<run_id>.json``."""

    run_id: str
    store: str
    scans: int
    rows: int = 0
    failed_cases: list[str] = field(default_factory=list)
    failures: int = 0
    seconds: float = 0.0
    dashboard: str | None = None
    matrix_rows: int = 0
    new: int = 0
    changed: int = 0
    skipped: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures

    def text(self) -> str:
        lines = [
            f"run {self.run_id}: {self.scans} scan(s), {self.scans - len(self.failed_cases)} done, "
            f"{len(self.failed_cases)} failed, {self.rows} feature row(s), {self.seconds:.1f} s",
            f"scans: {self.new} new, {self.changed} changed, {self.skipped} unchanged (skipped)"
            + ("; nothing to extract: the store is up to date" if not (self.new or self.changed) else ""),
            f"store: {self.store} (features/, failures/, matrix.zarr with {self.matrix_rows} row(s))",
        ]
        if self.failed_cases:
            shown = ", ".join(self.failed_cases[:10]) + (" ..." if len(self.failed_cases) > 10 else "")
            lines.append(f"failed: {shown}; see `radcluster failures {self.store}`")
        return "\n".join(lines)


@dataclass
class _Packed:
    """What a task returns for one scan: its ScanResult, with the feature values of its rows
    taken out into one float64 matrix (rows x ``result.feature_names``). A quarter of the
    bytes of a dict per row to pickle, and nothing for the driver to unpack."""

    result: ScanResult  # its rows hold the other columns (ids, provenance, carried)
    values: Any  # numpy.ndarray


@dataclass
class _TaskResults:
    """What a task returns: its scans' packed results. A container of its own, not a list,
    because Dask pickles a list's items one by one, each with its own copy of the feature
    names (1,218 strings a scan, three times the bytes of its values); pickled as one object,
    the scans' shared name list is sent once per task."""

    packed: list[_Packed]


def _pack(result: ScanResult, names_seen: dict[tuple[str, ...], list[str]]) -> _Packed:
    """``result`` with its feature values taken out of its rows; its feature names are the
    list in ``names_seen`` with the same names (one list object for a task's scans)."""
    import numpy as np

    names = names_seen.setdefault(tuple(result.feature_names), result.feature_names)
    values = np.full((len(result.rows), len(names)), np.nan)
    get = operator.itemgetter(*names) if len(names) > 1 else None
    for i, row in enumerate(result.rows):
        try:
            values[i] = get(row) if get else [row[n] for n in names]
        except KeyError:  # a row without some feature: NaN there
            values[i] = [row.get(n, np.nan) for n in names]
    feature_set = set(names)
    rows = [{k: v for k, v in row.items() if k not in feature_set} for row in result.rows]
    return _Packed(dataclasses.replace(result, rows=rows, feature_names=names), values)


def _aligned(values, have: Sequence[str], want: Sequence[str]):
    """``values`` (rows x ``have``) as rows x ``want``: NaN for a feature a row lacks."""
    import numpy as np

    if have == want:  # the usual case: every scan of a run has the same features
        return values
    out = np.full((len(values), len(want)), np.nan)
    where = {n: j for j, n in enumerate(want)}
    for j, name in enumerate(have):
        out[:, where[name]] = values[:, j]
    return out


def _merged(parts: list[_Packed]) -> _Packed:
    """The parts of a split scan as the one result an unsplit task would have returned.

    Every part reads the scan, so a problem of the scan itself (unreadable, empty mask) is
    reported by each: it is kept once. A scan split by label has each label in one part; a
    scan split by filtered image has each label's features spread over the parts (in part
    order), joined here into one row; a label that failed in any part has no row (no partial
    rows), only its first failure.
    """
    import numpy as np

    results = [p.result for p in parts]
    first = results[0]
    failures = [f for f in first.failures if f.label is None]
    label_failures: dict[int, FailureRecord] = {}
    for r in results:
        for f in r.failures:
            if f.label is not None:
                label_failures.setdefault(f.label, f)
    names = list(dict.fromkeys(n for r in results for n in r.feature_names))
    where = {n: j for j, n in enumerate(names)}
    rows: dict[int, dict[str, Any]] = {}
    values: dict[int, Any] = {}
    for part in parts:
        columns = [where[n] for n in part.result.feature_names]
        for row, vector in zip(part.result.rows, part.values, strict=True):
            label = row["label"]
            if label not in rows:  # the first part's ids and provenance
                rows[label], values[label] = row, np.full(len(names), np.nan)
            values[label][columns] = vector
    labels = [label for label in sorted(rows) if label not in label_failures]
    merged = ScanResult(
        first.case_id,
        [rows[label] for label in labels],
        failures + list(label_failures.values()),
        max(r.seconds for r in results),
        first.image_hash,
        first.mask_hash,
        names,
        unchanged=all(r.unchanged for r in results),
        warnings=list(dict.fromkeys(w for r in results for w in r.warnings)),
        plain_filters=list(dict.fromkeys(f for r in results for f in r.plain_filters)),
    )
    return _Packed(merged, np.array([values[label] for label in labels]).reshape(len(labels), len(names)))


FAULT_ENV = "RADCLUSTER_FAULT_EXIT_CASE"


def run_task(
    scans: tuple[Scan, ...],
    settings: ExtractionSettings,
    known: dict[str, tuple[str, str]],
    part: tuple[int, int] | None = None,
    extract: Callable[..., ScanResult] = extract_scan,
    stats: dict[str, str | None] | None = None,
) -> _TaskResults:
    """The Dask task: extract each scan of a group (or a part of one scan's labels), recording
    the files' stats with the rows.

    ``extract`` is the per-scan function (:func:`radcluster.extract.extract_scan`; the
    orchestration benchmark passes a cost model of known compute). ``stats`` are the files'
    stats the plan took in bulk (a request per file saved on object stores); files missing
    from it are stat-ed here."""
    from ..extract._radiomics import captured_warnings, get_extractor

    # What pyradiomics says of the params when it builds their extractor (once per process:
    # cached), e.g. that a fixed bin count is not recommended, is not news from a worker: the
    # driver built the same extractor from the same text before submitting any task, and its
    # log said it once. Built here unheard, each worker process no longer prints it bare.
    with captured_warnings():
        get_extractor(settings.params_text)
    fault = os.environ.get(FAULT_ENV)
    results = []
    names_seen: dict[tuple[str, ...], list[str]] = {}
    for scan in scans:
        if fault and fault in (scan.case_id, part and part_key(scan.case_id, part)):
            # Fault injection for the crash tests: a scan that kills its worker process every
            # time, as a segfault in a native library would.
            os._exit(70)
        stats = stats or {}
        stat = {
            "image_stat": stats[scan.image] if scan.image in stats else file_stat(scan.image),
            "mask_stat": stats[scan.mask] if scan.mask in stats else file_stat(scan.mask),
        }
        result = extract(scan, settings, unchanged_if=known.get(scan.case_id), part=part, threads=_worker_threads())
        for row in result.rows:
            row.update(stat)
        results.append(_pack(result, names_seen))
    return _TaskResults(results)


def _task_result(outcome):
    """What a future of ``as_completed(with_results=True, raise_errors=False)`` gave:
    the task's results, or its error raised here."""
    if isinstance(outcome, _TaskResults):
        return outcome.packed
    if isinstance(outcome, tuple):  # an erred task: (type, exception, traceback)
        raise outcome[1].with_traceback(outcome[2])
    raise outcome  # cancelled: the exception itself


def _worker_threads() -> int:
    """The threads of the Dask worker running this task (1 outside one): what a task's engines
    may use for their own thread pools (ONNX Runtime's), as the worker runs that many tasks."""
    from distributed import get_worker

    try:
        return int(get_worker().state.nthreads)
    except ValueError:  # not inside a worker
        return 1


class _Writer:
    """Buffers rows and failures and writes them as part files when a batch is full (``flush_rows``
    rows, or ``part_bytes`` of feature values) or old (``flush_seconds``)."""

    def __init__(
        self,
        store: Store,
        run_id: str,
        metadata: dict[str, Any],
        flush_rows: int | None,
        flush_seconds: float,
        part_bytes: int = PART_BYTES,
    ):
        self.store, self.run_id, self.metadata = store, run_id, metadata
        self.flush_rows, self.flush_seconds, self.part_bytes = flush_rows, flush_seconds, part_bytes
        self.nbytes = 0  # of the buffered feature values
        self.rows: list[dict[str, Any]] = []  # the other columns of each row
        self.blocks: list[tuple[list[str], Any]] = []  # (feature names, values) of the rows, in order
        self.failures: list[dict[str, Any]] = []
        self.features: dict[str, None] = {}
        self.seq = 0
        self.last_flush = time.monotonic()
        self.rows_written = 0
        self.failures_written = 0
        self.parts_written = 0
        self.bytes_written = 0
        self._ibsi_cache: tuple[list[str], dict[str, str]] = ([], {})
        self._names_seen: list[str] | None = None

    def _ibsi_names(self) -> dict[str, str]:
        """pyradiomics name -> IBSI tag of this part's features, so the store describes itself."""
        import pandas as pd

        from ..ibsi.names import to_ibsi_names

        names = list(self.features)
        if self._ibsi_cache[0] == names:  # the same features part after part: mapped once
            return self._ibsi_cache[1]
        renamed = to_ibsi_names(
            pd.DataFrame(columns=names), aggregation=self.metadata.get("ibsi_aggregation"), unmapped="keep"
        ).columns
        self._ibsi_cache = (names, {a: b for a, b in zip(names, renamed, strict=True) if a != b})
        return self._ibsi_cache[1]

    def add(self, packed: _Packed | None, failures: list[FailureRecord]) -> None:
        now = _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")
        if packed is not None and packed.result.rows:
            result = packed.result
            names = result.feature_names
            if names == self._names_seen:
                # the one list this writer holds, not each task's unpickled copy of it (a
                # batch of 3,400 scans held 4 million name strings, ~300 MB)
                names = self._names_seen
            else:
                self.features.update(dict.fromkeys(names))
                self._names_seen = names
            self.rows.extend({**r, "run_id": self.run_id, "extracted_at": now} for r in result.rows)
            self.blocks.append((names, packed.values))
            self.nbytes += packed.values.nbytes
        self.failures.extend(f.row(run_id=self.run_id, failed_at=now) for f in failures)
        if (
            (self.flush_rows is not None and len(self.rows) + len(self.failures) >= self.flush_rows)
            or self.nbytes >= self.part_bytes
            or time.monotonic() - self.last_flush >= self.flush_seconds
        ):
            self.flush()

    def flush(self) -> None:
        meta = {**self.metadata, "features": list(self.features), "ibsi_names": self._ibsi_names()}
        if self.rows:
            import numpy as np

            names = list(self.features)
            values = np.vstack([_aligned(v, have, names) for have, v in self.blocks])
            table = _arrow_table(self.rows, values, names)
            self.bytes_written += self.store.write_part(
                "features", table, run_id=self.run_id, seq=self.seq, metadata=meta
            )
            self.parts_written += 1
            # after the part: a run killed in between leaves rows the next run's sync appends
            self.store.append_matrix(table.select(["case_id", "label", "extracted_at"]).to_pandas(), values, names)
            self.rows_written += len(self.rows)
        if self.failures:
            self.store.write_part("failures", self.failures, run_id=self.run_id, seq=self.seq, metadata=meta)
            self.failures_written += len(self.failures)
        self.seq += 1
        self.rows, self.blocks, self.failures = [], [], []
        self.nbytes = 0
        _return_freed_memory()
        self.last_flush = time.monotonic()


def _return_freed_memory() -> None:
    """Give the memory a flush freed back to the system (glibc's ``malloc_trim``, as Dask's
    own ``trim_memory`` does on workers). A flush's copies of its ~32 MiB of values are made
    by several threads (Arrow's, Zarr's codec pool), each in its own malloc arena, which glibc
    keeps: without this the driver's resident memory crept up flush after flush."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _arrow_table(rows: Sequence[dict[str, Any]], values, names: Sequence[str]):
    """Rows as an Arrow table: the other columns from the rows' dicts, the features from
    ``values`` (rows x ``names``) column by column, several times faster than a pandas frame."""
    import numpy as np
    import pyarrow as pa

    others = list(dict.fromkeys(k for r in rows for k in r))
    columns = []
    for k in others:
        try:
            columns.append(pa.array([r.get(k) for r in rows], from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types in a carried column: as text
            columns.append(pa.array([None if r.get(k) is None else str(r.get(k)) for r in rows]))
    by_feature = np.ascontiguousarray(values.T)  # each feature's column contiguous: no strided copies
    columns += [pa.array(by_feature[j]) for j in range(len(names))]
    return pa.Table.from_arrays(columns, names=[*others, *names])


def _headers_on_workers(client, paths: list[str], batch: int = 256) -> dict[str, tuple[int, int] | None]:
    """Voxel counts from the image headers of ``paths``, read by the workers in batches (a
    header read is a decompression or a ranged request; 100k of them one by one in the
    client would delay the first task by minutes)."""
    if not paths:
        return {}
    batches = [paths[i : i + batch] for i in range(0, len(paths), batch)]
    out: dict[str, tuple[int, int] | None] = {}
    for part in client.gather(client.map(read_headers, batches, pure=False)):
        out.update(part)
    return out


def _claims_memory(spec) -> bool | None:
    """Whether the batch workers radcluster starts run several tasks at once (they advertise
    ``MEMORY``): known from the spec before an adaptive cluster has any worker. None where the
    workers connected at the start tell (local ones, a running cluster's)."""
    from ..spec.cluster import PBSClusterSpec, SlurmClusterSpec

    if isinstance(spec, SlurmClusterSpec | PBSClusterSpec):
        return spec.cores // spec.processes > 1
    return None


def _worker_memory(client) -> tuple[int | None, bool, int]:
    """(largest worker's memory in bytes, whether tasks should claim memory as a resource,
    worker threads in all).

    Claiming is needed only where a worker runs several tasks at once: a one-thread worker
    never holds two scans, and the plan already keeps scans larger than any worker out. It
    also has a cost: Dask assigns resource-restricted tasks to workers at submission instead
    of queueing them, so the workers' backlogs are fixed up front and one can idle at the end
    of a run while the other works through its own.
    """
    workers = list(client.scheduler_info(n_workers=-1).get("workers", {}).values())
    limits = [w.get("memory_limit") or 0 for w in workers]
    with_resource = [w.get("resources", {}).get("MEMORY") for w in workers]
    advertised = bool(with_resource) and all(with_resource)
    largest = max(with_resource) if advertised else (max(limits) if limits and all(limits) else None)
    threads = sum(int(w.get("nthreads", 1)) for w in workers)
    claim = advertised and any(int(w.get("nthreads", 1)) > 1 for w in workers)
    return (int(largest) if largest else None), claim, threads


def run_extract(
    cohort: Cohort,
    settings: ExtractionSettings,
    store_url: str,
    client,
    *,
    progress: Callable[[Iterator[Any], int], Iterator[Any]] | None = None,
    flush_rows: int | None = None,
    flush_seconds: float = 30.0,
    cluster_info: dict[str, Any] | None = None,
    extract: Callable[..., ScanResult] = extract_scan,
    claim_memory: bool | None = None,
) -> RunSummary:
    """Extract what the store does not hold yet of ``cohort`` into the store at ``store_url``.

    Scans already extracted with the same params from unchanged files are skipped (see
    :mod:`radcluster.plan`); results are written as they arrive, so an interrupted run keeps
    every batch already flushed and a re-run goes on from there. Returns the run's
    :class:`RunSummary` (also saved under ``runs/``). ``extract`` is the per-scan function
    (see :func:`run_task`). ``claim_memory`` says whether tasks claim their scans' memory from
    the workers' ``MEMORY`` resource; by default, if the workers connected now advertise it and
    run several tasks at once (see :func:`_worker_memory`).

    Raises
    ------
    StoreError
        The store holds features of other params (see :meth:`radcluster.store.Store.claim_params`).
    """
    from distributed import as_completed

    from ..extract._radiomics import PARAMS_NOTES, get_extractor, versions

    store = open_store(store_url, must_exist=False)
    run_id = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    started = time.perf_counter()
    started_at = _dt.datetime.now(_dt.UTC).isoformat()
    from ..ibsi.names import aggregation_from_settings

    parsed = yaml.safe_load(settings.params_text) or {}
    meta = {
        "params_hash": settings.params_hash,
        "run_id": run_id,
        **versions(),
        "ibsi_aggregation": aggregation_from_settings(parsed.get("setting") or {}),
    }
    store.claim_params(settings.params_hash, settings.params_text)
    store.sync_matrix()  # rows a killed run wrote but did not append
    writer = _Writer(store, run_id, meta, flush_rows, flush_seconds)
    summary = RunSummary(run_id, store_url, len(cohort))
    failed: dict[str, None] = {}
    # per run: scans whose image types took execute()'s own route, and pyradiomics' warnings
    plain_route: collections.Counter[str] = collections.Counter()
    warned: collections.Counter[str] = collections.Counter()

    memory, use_resources, threads = _worker_memory(client)
    if claim_memory is not None:  # the cluster's kind knows (an adaptive one may have no worker yet)
        use_resources = claim_memory
    plan: Plan = make_plan(
        cohort,
        store.current_keys(),
        settings.params_hash,
        get_extractor(settings.params_text).enabledImagetypes,
        worker_memory=memory,
        slots=threads,
        headers=lambda paths: _headers_on_workers(client, paths),
        engines=settings.engine_list(),
    )
    logger.info(
        "run %s: %d new, %d changed, %d unchanged (skipped), %d in %d task(s)",
        run_id,
        len(plan.new),
        len(plan.changed),
        len(plan.skipped),
        len(plan.new) + len(plan.changed) - len(plan.too_large),
        len(plan.tasks),
    )
    summary.new, summary.changed, summary.skipped = len(plan.new), len(plan.changed), len(plan.skipped)
    for scan, need in plan.too_large:
        writer.add(None, [FailureRecord.too_large(scan.case_id, scan.image, need, memory)])
        failed[scan.case_id] = None

    futures: dict[Any, Task] = {}
    pending = collections.deque(plan.tasks)
    window = max(_MIN_WINDOW, _WINDOW_PER_SLOT * threads)
    # with_results: each result is fetched by the client's event loop as its task finishes,
    # concurrently with the others, instead of one fetch at a time by this thread; a fetch
    # waits for the worker's event loop, which a busy task (holding the GIL) delays by
    # milliseconds, so one at a time kept this thread waiting most of a run of tiny scans.
    done = as_completed(with_results=True, raise_errors=False)

    def submit_more() -> None:
        while pending and len(futures) < window:
            task = pending.popleft()
            fut = client.submit(
                run_task,
                task.scans,
                settings,
                task.known,
                task.part,
                extract,
                {p: plan.stats.get(p) for scan in task.scans for p in (scan.image, scan.mask)},
                pure=False,
                key=f"extract-{task.key}-{uuid.uuid4().hex[:8]}",
                resources={"MEMORY": task.memory} if use_resources else None,
            )
            futures[fut] = task
            done.add(fut)

    submit_more()
    parts: dict[str, list[tuple[int, _Packed]]] = {}  # split scans: (part, result) so far
    iterator: Iterator[Any] = iter(done)
    if progress is not None:
        iterator = progress(iterator, len(plan.tasks))
    try:
        for fut, outcome in iterator:
            task = futures.pop(fut)
            try:
                results: list[_Packed] = _task_result(outcome)
            except Exception as err:  # the task itself died (FailureRecord.from_task_error)
                if len(task.scans) > 1:
                    # One of the group killed its worker (or hit a bug): retry each scan
                    # alone, first, so only the culprit is given up.
                    logger.warning(
                        "task %s failed (%s): retrying its %d scans one per task",
                        task.key,
                        type(err).__name__,
                        len(task.scans),
                    )
                    pending.extendleft(Task((scan,), task.known, task.memory) for scan in reversed(task.scans))
                    submit_more()
                    continue
                for scan in task.scans:
                    if scan.case_id not in failed:  # the other parts of a split scan: once
                        writer.add(None, [FailureRecord.from_task_error(scan.case_id, scan.image, err)])
                    failed[scan.case_id] = None
                    parts.pop(scan.case_id, None)
                submit_more()
                continue
            finally:
                fut.release()
            submit_more()
            if task.part:
                # A split scan is written as one result once every part is in, as if it had
                # been one task: all its labels or, when a part died, none (and the next run
                # extracts it again rather than trusting a case half done).
                case = task.scans[0].case_id
                if case in failed:  # another part of it died: nothing of it is written
                    continue
                parts.setdefault(case, []).extend((task.part[0], r) for r in results)
                if len(parts[case]) < task.part[1]:
                    continue
                # in part order, so a row split by filter has the same columns in every run
                results = [_merged([r for _, r in sorted(parts.pop(case), key=lambda p: p[0])])]
            for packed in results:
                result = packed.result
                if result.unchanged:
                    summary.skipped += 1
                    summary.changed -= 1
                    continue
                if result.failures:
                    failed[result.case_id] = None
                plain_route.update(result.plain_filters)
                for message in result.warnings:
                    if not warned[message]:
                        level = logging.INFO if message in PARAMS_NOTES else logging.WARNING
                        logger.log(level, "pyradiomics (case %s and maybe others): %s", result.case_id, message)
                    warned[message] += 1
                summary.rows += len(result.rows)
                writer.add(packed, result.failures)
    finally:
        # Whatever happened (Ctrl-C, a lost scheduler), what finished is written.
        writer.flush()
        for fut in futures:
            fut.cancel()
    summary.failures = writer.failures_written
    summary.failed_cases = list(failed)
    compacted = store.compact(min_parts=AUTO_COMPACT_PARTS) if writer.rows_written or writer.failures_written else {}
    summary.matrix_rows = store.matrix_rows()
    summary.seconds = time.perf_counter() - started
    summary.dashboard = (cluster_info or {}).get("dashboard")
    store.write_run(
        run_id,
        {
            "run_id": run_id,
            "kind": "extract",
            "started_at": started_at,
            "finished_at": _dt.datetime.now(_dt.UTC).isoformat(),
            "seconds": summary.seconds,
            "manifest": cohort.source,
            "scans": len(cohort),
            "rows": summary.rows,
            "new": summary.new,
            "changed": summary.changed,
            "skipped": summary.skipped,
            "tasks": len(plan.tasks),
            "parts": {"features": writer.parts_written, "features_bytes": writer.bytes_written},
            "compaction": compacted,
            "failures": summary.failures,
            "failed_cases": summary.failed_cases,
            "params_hash": settings.params_hash,
            "params": settings.params_text,
            "fast_path": settings.fast,
            # image type -> scans it was computed for per label on the whole image, as
            # execute() does, instead of once per scan (radcluster.extract.fast)
            "plain_route": dict(plain_route),
            "pyradiomics_warnings": dict(warned),
            "versions": versions(),
            "cluster": cluster_info or {},
        },
    )
    return summary


def extract_job(
    job: JobSpec, *, progress=None, on_dashboard: Callable[[str | None], None] | None = None, client=None
) -> RunSummary:
    """Validate everything a job needs, then start (or use) a cluster and run the extraction.

    The manifest, params file and label table are checked before any cluster resource is
    requested, so a typo costs seconds, not a queue wait.
    """
    from ..cluster import connect, dashboard_link

    cohort, settings = _prepare(job)
    store_url = job.resolve(job.store)
    open_store(store_url, must_exist=False).check_params(settings.params_hash)  # before any cluster starts
    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(connect(job.cluster))
        link = dashboard_link(client)
        if on_dashboard is not None:
            on_dashboard(link)
        info = {"kind": job.cluster.kind, "dashboard": link, "workers": len(client.scheduler_info().get("workers", {}))}
        summary = run_extract(
            cohort,
            settings,
            store_url,
            client,
            progress=progress,
            flush_rows=job.extraction.flush_rows,
            flush_seconds=job.extraction.flush_seconds,
            cluster_info=info,
            claim_memory=_claims_memory(job.cluster),
        )
        if job.extraction.perturb is not None:
            _write_stability(store_url)
        return summary


def _write_stability(store_url: str) -> None:
    """The store's ICC table after a run with perturbations; a cohort too small for one (fewer
    than 3 scans with every perturbation) is logged, not an error: its rows are all written."""
    from ..errors import ModelError
    from ..learn.stability import store_stability

    store = open_store(store_url)
    if not store.has_matrix():  # every scan failed
        return
    try:
        table = store_stability(store)
    except ModelError as err:
        logger.warning("no stability table written: %s", err)
        return
    store.write_stability(table)
    logger.info("stability.parquet: ICC of %d feature(s) over the perturbed copies", table["feature"].nunique())


def _prepare(job: JobSpec) -> tuple[Cohort, ExtractionSettings]:
    """The cohort and the settings of an extract job: manifest, params, label table and every
    engine read and checked (an ONNX model is read and run once); no cluster needed."""
    cohort = perturbed_cohort(read_manifest(job.resolve(job.manifest)), job.extraction.perturb)
    params_text, params_hash = read_params(job.resolve(job.extraction.params))
    labels = read_label_table(job.resolve(job.extraction.label_table))
    engines = from_spec(job.extraction, params_text, job.resolve)
    settings = ExtractionSettings(
        params_text,
        combined_key(params_hash, engines),
        labels,
        job.extraction.fast,
        job.extraction.sitk_threads,
        job.extraction.ibsi,
        engines,
    )
    return cohort, settings


def plan_job(job: JobSpec) -> Plan:
    """What an extract job would submit against its store as it is now (``radcluster run
    --dry-run``): nothing is extracted and no cluster starts."""
    from ..extract._radiomics import get_extractor

    cohort, settings = _prepare(job)
    store = open_store(job.resolve(job.store), must_exist=False)
    return make_plan(
        cohort,
        store.current_keys(),
        settings.params_hash,
        get_extractor(settings.params_text).enabledImagetypes,
        engines=settings.engine_list(),
    )
