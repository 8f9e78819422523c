"""Turning a cohort into Dask tasks and streaming their results into the store.

:func:`plan` orders the scans (largest first, so the last task to finish is a short one);
:func:`run_extract` submits one task per scan, and as each finishes writes its rows and
failures into Parquet part files in batches. The client holds at most one batch of rows;
voxels never reach it. Scheduling, retries and worker loss are Dask's own
(``as_completed``, ``retries``, ``allowed-failures``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import _io
from .cohort import Cohort, Scan, read_label_table, read_manifest
from .extract import ExtractionSettings, ScanResult, extract_scan
from .spec import JobSpec, read_params
from .store import Store, open_store

logger = logging.getLogger(__name__)

__all__ = ["RunSummary", "plan", "run_extract", "extract_job"]


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

    @property
    def ok(self) -> bool:
        return not self.failures

    def text(self) -> str:
        lines = [
            f"run {self.run_id}: {self.scans} scan(s), {self.scans - len(self.failed_cases)} done, "
            f"{len(self.failed_cases)} failed, {self.rows} feature row(s), {self.seconds:.1f} s",
            f"store: {self.store} (features/, failures/, matrix.zarr with {self.matrix_rows} row(s))",
        ]
        if self.failed_cases:
            shown = ", ".join(self.failed_cases[:10]) + (" ..." if len(self.failed_cases) > 10 else "")
            lines.append(f"failed: {shown}; see `radcluster failures {self.store}`")
        return "\n".join(lines)


def _size(path: str) -> int:
    try:
        if _io.is_url(path):
            import fsspec

            fs, p = fsspec.core.url_to_fs(path)
            return int(fs.size(p) or 0)
        return os.path.getsize(path)
    except (OSError, ValueError):
        return 0


def plan(cohort: Cohort) -> list[Scan]:
    """Scans in submission order: largest image first, so the tail of a run is short."""
    return sorted(cohort.scans, key=lambda s: -_size(s.image))


def _task_failure(scan: Scan, err: BaseException) -> dict[str, Any]:
    # A task that raised instead of returning a ScanResult: the worker died on it
    # repeatedly (KilledWorker) or radcluster itself has a bug; either way it is recorded.
    stage = "worker" if type(err).__name__ == "KilledWorker" else "task"
    return {
        "case_id": scan.case_id, "label": None, "stage": stage, "error_type": type(err).__name__,
        "message": f"case {scan.case_id!r}: {stage} failed ({scan.image}): {err}", "file": scan.image,
    }


class _Writer:
    """Buffers rows and failures and writes them as part files when a batch is full or old."""

    def __init__(self, store: Store, run_id: str, metadata: dict[str, Any], flush_rows: int,
                 flush_seconds: float):
        self.store, self.run_id, self.metadata = store, run_id, metadata
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self.rows: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.features: dict[str, None] = {}
        self.seq = 0
        self.last_flush = time.monotonic()
        self.rows_written = 0
        self.failures_written = 0

    def add(self, result: ScanResult | None, failures: list[dict[str, Any]]) -> None:
        now = _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")
        if result is not None:
            self.features.update(dict.fromkeys(result.feature_names))
            self.rows.extend({**r, "run_id": self.run_id, "extracted_at": now} for r in result.rows)
        self.failures.extend({**f, "run_id": self.run_id, "failed_at": now} for f in failures)
        if (len(self.rows) + len(self.failures) >= self.flush_rows
                or time.monotonic() - self.last_flush >= self.flush_seconds):
            self.flush()

    def flush(self) -> None:
        meta = {**self.metadata, "features": list(self.features)}
        if self.rows:
            self.store.write_part("features", self.rows, run_id=self.run_id, seq=self.seq, metadata=meta)
            self.rows_written += len(self.rows)
        if self.failures:
            self.store.write_part("failures", self.failures, run_id=self.run_id, seq=self.seq, metadata=meta)
            self.failures_written += len(self.failures)
        self.seq += 1
        self.rows, self.failures = [], []
        self.last_flush = time.monotonic()


def run_extract(cohort: Cohort, settings: ExtractionSettings, store_url: str, client, *,
                progress: Callable[[Iterator[Any], int], Iterator[Any]] | None = None,
                flush_rows: int = 256, flush_seconds: float = 30.0,
                cluster_info: dict[str, Any] | None = None) -> RunSummary:
    """Extract every scan of ``cohort`` on ``client``'s cluster into the store at ``store_url``.

    One task per scan; results are written as they arrive, so an interrupted run keeps every
    batch already flushed. Returns the run's :class:`RunSummary` (also saved under ``runs/``).
    """
    store = open_store(store_url, must_exist=False)
    run_id = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    started = time.perf_counter()
    started_at = _dt.datetime.now(_dt.UTC).isoformat()
    from ._radiomics import versions

    meta = {"params_hash": settings.params_hash, "run_id": run_id, **versions()}
    writer = _Writer(store, run_id, meta, flush_rows, flush_seconds)
    summary = RunSummary(run_id, store_url, len(cohort))
    failed: dict[str, None] = {}

    from distributed import as_completed

    ordered = plan(cohort)
    futures = {}
    for i, scan in enumerate(ordered):
        fut = client.submit(extract_scan, scan, settings, key=f"extract-{i:06d}-{uuid.uuid4().hex[:8]}",
                            pure=False)
        futures[fut] = scan
    iterator: Iterator[Any] = as_completed(futures)
    if progress is not None:
        iterator = progress(iterator, len(futures))
    try:
        for fut in iterator:
            scan = futures.pop(fut)
            try:
                result: ScanResult = fut.result()
            except Exception as err:  # the task itself died; see _task_failure
                writer.add(None, [_task_failure(scan, err)])
                failed[scan.case_id] = None
                continue
            finally:
                fut.release()
            if result.failures:
                failed[scan.case_id] = None
            summary.rows += len(result.rows)
            writer.add(result, result.failures)
    finally:
        # Whatever happened (Ctrl-C, a lost scheduler), what finished is written.
        writer.flush()
        for fut in futures:
            fut.cancel()
    summary.failures = writer.failures_written
    summary.failed_cases = list(failed)
    summary.matrix_rows = store.build_matrix()
    summary.seconds = time.perf_counter() - started
    summary.dashboard = (cluster_info or {}).get("dashboard")
    store.write_run(run_id, {
        "run_id": run_id, "kind": "extract", "started_at": started_at,
        "finished_at": _dt.datetime.now(_dt.UTC).isoformat(), "seconds": summary.seconds,
        "manifest": cohort.source, "scans": len(cohort), "rows": summary.rows,
        "failures": summary.failures, "failed_cases": summary.failed_cases,
        "params_hash": settings.params_hash, "params": settings.params_text,
        "fast_path": settings.fast, "versions": versions(), "cluster": cluster_info or {},
    })
    return summary


def extract_job(job: JobSpec, *, progress=None, on_dashboard: Callable[[str | None], None] | None = None,
                client=None) -> RunSummary:
    """Validate everything a job needs, then start (or use) a cluster and run the extraction.

    The manifest, params file and label table are checked before any cluster resource is
    requested, so a typo costs seconds, not a queue wait.
    """
    from .cluster import connect, dashboard_link
    from .errors import SpecError

    if job.manifest is None or job.store is None:
        raise SpecError("an extract job needs 'manifest' and 'store'")
    cohort = read_manifest(job.resolve(job.manifest))
    params_text, params_hash = read_params(job.resolve(job.extraction.params))
    labels = read_label_table(job.resolve(job.extraction.label_table))
    settings = ExtractionSettings(params_text, params_hash, labels, job.extraction.fast,
                                  job.extraction.sitk_threads)
    store_url = job.resolve(job.store)
    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(connect(job.cluster))
        link = dashboard_link(client)
        if on_dashboard is not None:
            on_dashboard(link)
        info = {"kind": job.cluster.kind, "dashboard": link,
                "workers": len(client.scheduler_info().get("workers", {}))}
        return run_extract(cohort, settings, store_url, client, progress=progress,
                           flush_rows=job.extraction.flush_rows,
                           flush_seconds=job.extraction.flush_seconds, cluster_info=info)
