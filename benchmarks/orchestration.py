"""Orchestration at cohort scale: 1k, 10k and 100k scans whose compute is small and known.

What is measured is radcluster's own cost around the per-scan work: planning (stats, skip
decisions), Dask scheduling, results streamed into Parquet parts and the Zarr matrix,
compaction, the run record; and what a user then pays to read the store.

The per-scan work is a documented cost model (:func:`cost_model_scan`), passed to
:func:`radcluster.jobs.extract.run_extract` in place of :func:`radcluster.extract.extract_scan`:
it reads the scan's image file (a few hundred bytes, a real file on the local disk; on the
S3 server only with ``--s3-read``, as moto's request rate here would be the figure), hashes
it, spins the CPU for ``--task-ms`` milliseconds, and returns one row as wide as real output
(``--features``, default 1,218 like ``exampleCT.yaml``) with the same provenance columns.
Its time is known and recorded (``scan_seconds``), so

    overhead per scan = (wall time x workers - sum of the tasks' own seconds) / scans

is everything else: the driver, the scheduler, Dask's per-task cost, idle workers at the
start and end. The scans are tiny files, so the plan groups them (up to 64 per task), as it
would a cohort of small scans.

For each size and each storage (a local folder; ``--s3``: moto's S3 server on loopback, as
tests/test_s3.py starts it, images and store both on it), the script starts a process of
its own (so each size's driver peak is its own, not what earlier sizes left allocated) that:

1. writes the cohort (``--folder-size`` images per folder, one shared mask) and its manifest;
2. starts radcluster's local cluster (``--workers`` processes, one thread each) and runs the
   extraction: wall time, the driver's peak RSS (sampled every 20 ms; the driver process also
   hosts the scheduler, as ``radcluster extract`` does), part files and bytes written, and
   after the run's automatic compaction;
3. opens the store fresh and times ``features(columns=[10 feature names])`` and ``matrix()``;
4. runs again with nothing changed: manifest read + plan + skip of every scan.

Cluster start-up (a few seconds, constant) is not in the figures. Targets (issue 13, this
2-core machine): overhead < 2 ms/scan; driver peak RSS < 1 GiB and within 10% from 10k to
100k; unchanged re-run of 100k < 15 s locally, < 60 s on S3; features(10 columns) of 100k
rows < 2 s; matrix() open < 1 s; at most a few dozen part files per 100k rows.

Run from the repository root: ``python benchmarks/orchestration.py [--sizes 1000 10000 100000] [--s3]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from _common import PeakSampler

_BIN = Path(sys.executable).parent
# How a child process hands its figures to the parent: one line of JSON after this prefix.
_RESULT = "FIGURES "
TARGETS = {
    "overhead_ms": 2.0,
    "rss_gib": 1.0,
    "rss_flat": 0.10,
    "rerun_local": 15.0,
    "rerun_s3": 60.0,
    "features_s": 2.0,
    "matrix_s": 1.0,
    "parts_per_100k": 36,
}


def cost_model_scan(scan, settings, unchanged_if=None, part=None, threads=1):
    """The cost model of one scan: read and hash the image file, spin ``TASK_MS``, one wide row.

    Module-level and argument-compatible with :func:`radcluster.extract.extract_scan`; its
    knobs come from the environment (``RADCLUSTER_BENCH_TASK_MS``, ``RADCLUSTER_BENCH_FEATURES``,
    ``RADCLUSTER_BENCH_READ``), which the workers inherit.
    """
    import numpy as np
    import xxhash

    from radcluster import _io
    from radcluster.extract import ScanResult
    from radcluster.extract._radiomics import versions

    start = time.perf_counter()
    read = os.environ.get("RADCLUSTER_BENCH_READ", "1") == "1"
    image_hash = xxhash.xxh3_128_hexdigest(_io.read_bytes(scan.image) if read else scan.image.encode())
    mask_hash = "shared-mask"
    if unchanged_if == (image_hash, mask_hash):
        return ScanResult(scan.case_id, [], [], time.perf_counter() - start, image_hash, mask_hash, unchanged=True)
    n = int(os.environ.get("RADCLUSTER_BENCH_FEATURES", "1218"))
    names = feature_names(n)
    values = np.random.default_rng(zlib.crc32(scan.case_id.encode())).random(n).tolist()
    until = start + float(os.environ.get("RADCLUSTER_BENCH_TASK_MS", "1")) / 1000
    while time.perf_counter() < until:  # the scan's known compute
        pass
    seconds = time.perf_counter() - start
    row = {
        "case_id": scan.case_id,
        "label": 1,
        "label_name": None,
        "patient_id": scan.patient_id,
        "image_hash": image_hash,
        "mask_hash": mask_hash,
        "params_hash": settings.params_hash,
        "scan_seconds": seconds,
        **versions(),
        **dict(scan.extra),
        **dict(zip(names, values, strict=True)),
    }
    return ScanResult(scan.case_id, [row], [], seconds, image_hash, mask_hash, names)


def _warm_up() -> None:
    import xxhash  # noqa: F401

    import radcluster.jobs.extract  # noqa: F401
    from radcluster.extract._radiomics import versions

    versions()  # imports SimpleITK


_NAMES: dict[int, list[str]] = {}


def feature_names(n: int) -> list[str]:
    """``n`` feature names shaped like pyradiomics' (image type, class, feature)."""
    if n not in _NAMES:
        types = ["original", "log-sigma-1-0-mm-3D", "log-sigma-3-0-mm-3D"] + [
            f"wavelet-{a}{b}{c}" for a in "LH" for b in "LH" for c in "LH"
        ]
        _NAMES[n] = [f"{types[i % len(types)]}_glcm_F{i:04d}" for i in range(n)]
    return _NAMES[n]


@dataclass
class Figures:
    storage: str
    scans: int
    tasks: int
    wall: float
    compute: float
    workers: int
    rss_peak: float  # bytes
    parts_before: int
    bytes_before: int
    parts_after: int
    bytes_after: int
    features_s: float
    matrix_s: float
    rerun_s: float
    rerun_skipped: int
    load: float
    task_ms: float

    @property
    def overhead_ms(self) -> float:
        return (self.wall * self.workers - self.compute) / self.scans * 1000

    @property
    def overhead_nominal_ms(self) -> float:
        """Against the scans' nominal compute (``--task-ms``) instead of their measured seconds,
        which grow when the driver preempts a worker's spinning task on a shared core: an
        upper bound of the overhead (it also counts the task's file read and hash)."""
        return (self.wall * self.workers - self.scans * self.task_ms / 1000) / self.scans * 1000


def _write_cohort(root: str, n: int, folder_size: int, fs=None) -> None:
    """n images of a few hundred bytes in folders of ``folder_size``, one shared mask, and the
    manifest ``cohort.csv``; ``root`` is a local folder or an s3:// prefix."""
    import pandas as pd

    local = tempfile.mkdtemp(prefix="orch-cohort-") if fs is not None else root
    os.makedirs(local, exist_ok=True)
    open(os.path.join(local, "mask.nrrd"), "wb").write(b"mask" * 64)
    rows = []
    for i in range(n):
        rel = f"scans/{i // folder_size:04d}/s{i:06d}.nrrd"
        path = os.path.join(local, rel)
        if i % folder_size == 0:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(i.to_bytes(8, "little") * 48)
        rows.append((f"s{i:06d}", rel, "mask.nrrd", i % 2))
    pd.DataFrame(rows, columns=["case_id", "image", "mask", "outcome"]).to_csv(
        os.path.join(local, "cohort.csv"), index=False
    )
    if fs is not None:
        fs.put(local, root.removeprefix("s3://"), recursive=True)  # s3fs uploads concurrently
        shutil.rmtree(local)


def _measure(storage: str, n: int, manifest: str, store_url: str, args) -> Figures:
    from radcluster import open_store
    from radcluster.cluster import connect
    from radcluster.cohort import read_manifest
    from radcluster.extract import ExtractionSettings
    from radcluster.jobs.extract import run_extract
    from radcluster.spec import LocalClusterSpec, read_params

    settings = ExtractionSettings(*read_params(Path(__file__).parents[1] / "tests/data/params/exampleCT.yaml"))
    with connect(LocalClusterSpec(workers=args.workers, dashboard_address=":0")) as client:
        client.run(_warm_up)  # imports before the clock: the tasks' own seconds are their compute
        load = os.getloadavg()[0]
        with PeakSampler({"driver": os.getpid()}, interval=0.02) as rss:
            start = time.perf_counter()
            cohort = read_manifest(manifest)
            summary = run_extract(
                cohort, settings, store_url, client, extract=cost_model_scan, flush_rows=args.flush_rows
            )
            wall = time.perf_counter() - start
        del cohort
        if summary.failures:
            raise RuntimeError(f"{summary.failures} scan(s) failed: {summary.failed_cases[:5]}")
        store = open_store(store_url)
        record = store.runs()[-1]
        compute = float(store.features(["scan_seconds"])["scan_seconds"].sum())
        start = time.perf_counter()
        again = run_extract(read_manifest(manifest), settings, store_url, client, extract=cost_model_scan)
        rerun = time.perf_counter() - start
    import dask.array  # noqa: F401  (imports are a session's one-off cost, not the store's)

    fresh = open_store(store_url)
    names = feature_names(args.features)
    wanted = [names[i] for i in range(0, len(names), max(1, len(names) // 10))][:10]
    start = time.perf_counter()
    frame = fresh.features(wanted)
    features_s = time.perf_counter() - start
    if len(frame) != n or list(frame.columns[-10:]) != wanted:
        raise RuntimeError(f"features() returned {len(frame)} rows, {list(frame.columns)}")
    start = time.perf_counter()
    X, rows, _ = open_store(store_url).matrix()
    matrix_s = time.perf_counter() - start
    if X.shape != (n, args.features):
        raise RuntimeError(f"matrix() is {X.shape}, not {(n, args.features)}")
    info = fresh.info()["tables"]["features"]
    return Figures(
        storage,
        n,
        int(record["tasks"]),
        wall,
        compute,
        args.workers,
        rss.peak["driver"],
        record["parts"]["features"],
        record["parts"]["features_bytes"],
        info["parts"],
        info["bytes"],
        features_s,
        matrix_s,
        rerun,
        again.skipped,
        load,
        args.task_ms,
    )


@contextlib.contextmanager
def _s3_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [str(_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    os.environ.update(env)  # read by s3fs here and in the workers, which inherit it
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        yield
    finally:
        server.terminate()
        server.wait(timeout=30)


def _row(f: Figures) -> list[str]:
    return [
        f.storage,
        f"{f.scans:,}",
        f"{f.tasks:,}",
        f"{f.wall:.1f}",
        f"{f.compute:.1f}",
        f"{f.overhead_ms:.2f}",
        f"{f.overhead_nominal_ms:.2f}",
        f"{f.rss_peak / 2**30:.2f}",
        f"{f.parts_before} ({f.bytes_before / 2**20:.0f} MB)",
        f"{f.parts_after} ({f.bytes_after / 2**20:.0f} MB)",
        f"{f.features_s:.2f}",
        f"{f.matrix_s:.2f}",
        f"{f.rerun_s:.1f}",
        f"{f.load:.1f}",
    ]


COLUMNS = [
    "storage",
    "scans",
    "tasks",
    "wall s",
    "task s",
    "overhead ms/scan",
    "vs nominal ms/scan",
    "driver peak GiB",
    "parts written",
    "parts after compaction",
    "features(10) s",
    "matrix() s",
    "unchanged re-run s",
    "load before",
]


def _verdicts(figures: list[Figures]) -> list[str]:
    lines = []
    for storage in dict.fromkeys(f.storage for f in figures):
        mine = {f.scans: f for f in figures if f.storage == storage}
        big = mine[max(mine)]
        checks = [
            (
                f"overhead {big.overhead_ms:.2f} ms/scan < {TARGETS['overhead_ms']}",
                big.overhead_ms < TARGETS["overhead_ms"],
            ),
            (
                f"driver peak {big.rss_peak / 2**30:.2f} GiB < {TARGETS['rss_gib']}",
                big.rss_peak < TARGETS["rss_gib"] * 2**30,
            ),
            (f"re-run {big.rerun_s:.1f} s < {TARGETS['rerun_' + storage]}", big.rerun_s < TARGETS["rerun_" + storage]),
            (f"features(10) {big.features_s:.2f} s < {TARGETS['features_s']}", big.features_s < TARGETS["features_s"]),
            (f"matrix() {big.matrix_s:.2f} s < {TARGETS['matrix_s']}", big.matrix_s < TARGETS["matrix_s"]),
            (
                f"{big.parts_after} part files for {big.scans:,} rows (a few dozen per 100k)",
                big.parts_after <= TARGETS["parts_per_100k"] * max(1, big.scans / 100_000),
            ),
        ]
        if 10_000 in mine and max(mine) > 10_000:
            growth = big.rss_peak / mine[10_000].rss_peak - 1
            checks.append(
                (
                    f"driver peak {growth:+.0%} from 10k to {big.scans // 1000}k (flat: within 10%)",
                    abs(growth) <= TARGETS["rss_flat"],
                )
            )
        for text, ok in checks:
            lines.append(f"{storage:5s} {'met   ' if ok else 'MISSED'} {text}")
    return lines


def _one(args) -> Figures:
    """One size on one storage, in this process (started by :func:`main` for each size, after
    it wrote the cohort, so each size's driver peak is its own run's, not what writing the
    cohort or earlier sizes left allocated)."""
    storage, n = args.one[0], int(args.one[1])
    # moto serves a few hundred GETs a second on this machine: reading 100k images from it
    # would measure moto, so on S3 the tasks do not read them (--s3-read does)
    os.environ["RADCLUSTER_BENCH_READ"] = "1" if storage == "local" or args.s3_read else "0"
    root = _root(storage, n, args.workdir)
    return _measure(storage, n, f"{root}/cohort.csv", f"{root}/store", args)


def _root(storage: str, n: int, workdir: str) -> str:
    return f"s3://bench/n{n}" if storage == "s3" else os.path.join(workdir, f"n{n}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--features", type=int, default=1218, help="feature columns per row (exampleCT.yaml: 1,218)")
    p.add_argument("--task-ms", type=float, default=1.0, help="each scan's known compute, milliseconds")
    p.add_argument("--folder-size", type=int, default=1000, help="images per folder (prefix on S3)")
    p.add_argument("--flush-rows", type=int, default=None, help="rows per part (default: the library's, by size)")
    p.add_argument("--s3", action="store_true", help="also on moto's S3 server on loopback")
    p.add_argument("--no-local", action="store_true", help="only on S3")
    p.add_argument("--s3-read", action="store_true", help="on S3, tasks read their image too")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--one", nargs=2, metavar=("STORAGE", "N"), help=argparse.SUPPRESS)  # a child's size
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ["RADCLUSTER_BENCH_TASK_MS"] = str(args.task_ms)
    os.environ["RADCLUSTER_BENCH_FEATURES"] = str(args.features)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    if args.one:
        print(_RESULT + json.dumps(dataclasses.asdict(_one(args))), flush=True)
        return 0
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    print(
        f"orchestration benchmark, {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC, commit {commit}, "
        f"{os.cpu_count()} cores, {args.workers} workers, {args.features} features/row, "
        f"{args.task_ms} ms/scan of known compute, flush_rows {args.flush_rows}; each size in its own process",
        flush=True,
    )
    work = tempfile.mkdtemp(prefix="radcluster-orch-")
    figures: list[Figures] = []
    try:
        storages = ([] if args.no_local else ["local"]) + (["s3"] if args.s3 else [])
        for storage in storages:
            with _s3_server() if storage == "s3" else contextlib.nullcontext():
                fs = None
                if storage == "s3":
                    import s3fs

                    fs = s3fs.S3FileSystem(skip_instance_cache=True)
                    fs.mkdir("bench")
                for n in args.sizes:
                    root = _root(storage, n, work)
                    started = time.perf_counter()
                    _write_cohort(root, n, args.folder_size, fs)
                    print(f"{storage} {n:,}: cohort written in {time.perf_counter() - started:.0f} s", flush=True)
                    child = [sys.executable, __file__, *(argv or sys.argv[1:]), "--one", storage, str(n)]
                    out = subprocess.run([*child, "--workdir", work], stdout=subprocess.PIPE, text=True, check=True)
                    for line in out.stdout.splitlines():
                        if line.startswith(_RESULT):
                            figures.append(Figures(**json.loads(line.removeprefix(_RESULT))))
                        else:
                            print(line, flush=True)
                    print(
                        "  " + " | ".join(f"{c}: {v}" for c, v in zip(COLUMNS, _row(figures[-1]), strict=True)),
                        flush=True,
                    )
                    if fs is None and not args.keep:
                        shutil.rmtree(root)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for f in figures:
        print("| " + " | ".join(_row(f)) + " |")
    print()
    print("\n".join(_verdicts(figures)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
