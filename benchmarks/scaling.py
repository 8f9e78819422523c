"""Scaling: the same synthetic cohort on 1 and on N local Dask workers, and Dask's per-task overhead.

:func:`radcluster.synth.make_cohort` writes ``--scans`` scans (default 200, default shape).
For each cluster size, radcluster's own local cluster (:func:`radcluster.cluster.connect`,
as ``radcluster extract --workers N`` starts it: worker processes, one thread each, memory
advertised as a resource) runs :func:`radcluster.jobs.extract.run_extract` on the cohort, timed from
the call to its return. A warm-up run of a few scans goes first so every worker has imported
pyradiomics and built its extractor; cluster start-up is not part of the figure (it does not
grow with the cohort). Target: speed-up N workers / 1 worker >= 0.9 N (1.8x for 2).

radcluster groups tiny scans into one task (:mod:`radcluster.plan`), so tasks are fewer
than scans. Dask's overhead comes from the scheduler's task stream (each task's compute
start and stop on its worker) recorded during the run:

* per-task gap: on each worker, the time from one task's end to the next task's start (the
  worker reporting a result, taking the next task, deserialising its arguments), against
  the task's own compute time. Target < 2%.
* run share not in tasks: 1 - (sum of task compute times) / (wall time x workers). This
  also holds the client's own work (planning, writing Parquet parts, building the Zarr
  matrix at the end), the ramp-up before every worker has a task and the tail when one
  worker has finished and the other has not.

Worker CPU time over task wall time tells whether tasks got a core to themselves: well
below 1 means other processes on the machine took CPU from them (a contaminated figure).

Run from the repository root: ``python benchmarks/scaling.py [--help]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _common import BenchError, base_parser, header, main, table, verdict, workdir

TARGET_EFFICIENCY = 0.9  # speed-up >= 0.9 x workers (1.8x for 2)
TARGET_OVERHEAD = 0.02


@dataclass
class Run:
    workers: int
    wall: float
    scans: int
    tasks: int
    compute: float  # sum of task compute times, s
    gaps: list[float]  # per worker, task end -> next task start, s
    to_first_task: float  # run start -> first task starts
    after_last_task: float  # last task ends -> run_extract returns (last rows, matrix, run record)
    worker_cpu: float  # CPU seconds of all worker processes during the run
    load: float

    @property
    def per_scan(self) -> float:
        return self.compute / self.scans

    @property
    def gap_share(self) -> float:
        return float(np.sum(self.gaps)) / self.compute

    @property
    def outside_tasks(self) -> float:
        return 1 - self.compute / (self.wall * self.workers)


def _cpu_seconds() -> float:
    import psutil

    t = psutil.Process().cpu_times()
    return t.user + t.system


def _measure(cohort, settings, folder: Path, n_workers: int, warmup) -> Run:
    from distributed import get_task_stream

    from radcluster import open_store
    from radcluster.cluster import connect
    from radcluster.jobs.extract import run_extract
    from radcluster.spec import LocalClusterSpec

    with connect(LocalClusterSpec(workers=n_workers, dashboard_address=":0")) as client:
        run_extract(warmup, settings, str(folder / f"warmup-{n_workers}"), client)
        cpu_before = sum(client.run(_cpu_seconds).values())
        load = os.getloadavg()[0]
        with get_task_stream(client) as stream:
            start_clock, start = time.time(), time.perf_counter()
            summary = run_extract(cohort, settings, str(folder / f"store-{n_workers}"), client)
            wall = time.perf_counter() - start
            end_clock = start_clock + wall
        cpu = sum(client.run(_cpu_seconds).values()) - cpu_before
    if summary.failures:
        raise BenchError(
            f"scaling: {summary.failures} scan(s) failed with {n_workers} worker(s): {summary.failed_cases[:5]}"
        )

    spans: dict[str, list[tuple[float, float]]] = {}
    for rec in stream.data:
        for ss in rec.get("startstops", ()):
            if ss["action"] == "compute":
                spans.setdefault(rec["worker"], []).append((ss["start"], ss["stop"]))
    n_tasks = int(open_store(str(folder / f"store-{n_workers}")).runs()[-1]["tasks"])
    if sum(len(v) for v in spans.values()) != n_tasks:
        raise BenchError(
            f"scaling: the task stream holds {sum(len(v) for v in spans.values())} tasks, the run record {n_tasks}"
        )
    gaps, compute = [], 0.0
    for worker_spans in spans.values():
        worker_spans.sort()
        compute += sum(b - a for a, b in worker_spans)
        gaps += [nxt[0] - prev[1] for prev, nxt in zip(worker_spans, worker_spans[1:], strict=False)]
    first = min(s[0] for v in spans.values() for s in v)
    last = max(s[1] for v in spans.values() for s in v)
    return Run(n_workers, wall, len(cohort), n_tasks, compute, gaps, first - start_clock, end_clock - last, cpu, load)


def run(args: argparse.Namespace) -> None:
    from radcluster.cohort import Cohort, read_manifest
    from radcluster.extract import ExtractionSettings
    from radcluster.spec import read_params
    from radcluster.synth import make_cohort

    header(f"scaling: 1 vs {args.workers} local Dask workers, run_extract on a synthetic cohort", args)
    # Workers inherit the environment: keep pyradiomics' per-scan warnings out of the output.
    os.environ.setdefault("DASK_LOGGING__RADIOMICS", "error")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    logging.basicConfig(level=logging.WARNING)
    if args.group_max is not None:
        # An experiment knob: how many tiny scans radcluster's plan may put in one task.
        import radcluster.plan

        radcluster.plan._BATCH_MAX = args.group_max
    text, digest = read_params(args.data / "params" / args.params)
    settings = ExtractionSettings(text, digest)
    runs: dict[int, list[Run]] = {1: [], args.workers: []}
    with workdir("radcluster-bench-scaling-", args.keep) as folder:
        cohort = read_manifest(make_cohort(folder / "cohort", args.scans, seed=args.seed))
        warmup = Cohort(cohort.scans[: 2 * args.workers], cohort.source, cohort.carried)
        for i in range(max(1, args.repeat)):
            for n in runs:
                r = _measure(cohort, settings, folder / f"run-{i}", n, warmup)
                print(f"   {n} worker(s), run {i + 1}: {r.wall:.1f} s (load {r.load:.2f})", flush=True)
                runs[n].append(r)
    best = {n: min(rs, key=lambda r: r.wall) for n, rs in runs.items()}

    one, many = best[1], best[args.workers]
    speedup = one.wall / many.wall
    target = TARGET_EFFICIENCY * args.workers
    print()
    print(
        f"Scaling ({args.scans} scans, {args.params}, run_extract wall time, cluster start-up excluded, "
        f"best of {args.repeat}):"
    )
    print(
        table(
            [
                "workers",
                "wall s",
                "scans/s",
                "tasks",
                "task s",
                "s per scan",
                "worker CPU / task time",
                "per-task gap ms (mean / p95)",
                "gap / task time",
                "run share not in tasks",
                "to 1st task s",
                "after last task s",
                "load before",
            ],
            [
                [
                    r.workers,
                    f"{r.wall:.1f}",
                    f"{r.scans / r.wall:.2f}",
                    r.tasks,
                    f"{r.compute / r.tasks:.2f}",
                    f"{r.per_scan:.3f}",
                    f"{r.worker_cpu / r.compute:.2f}",
                    f"{1e3 * np.mean(r.gaps):.1f} / {1e3 * np.percentile(r.gaps, 95):.1f}",
                    f"{100 * r.gap_share:.1f}%",
                    f"{100 * r.outside_tasks:.1f}%",
                    f"{r.to_first_task:.2f}",
                    f"{r.after_last_task:.2f}",
                    f"{r.load:.2f}",
                ]
                for r in best.values()
            ],
        )
    )
    print(
        f"speed-up {args.workers} workers / 1 worker: {speedup:.2f}x (target >= {target:.1f}x): "
        f"{verdict(speedup, target)}"
    )
    print(
        f"task compute time per scan, {args.workers} workers / 1 worker: {many.per_scan / one.per_scan:.2f} "
        "(the same scans: above 1 means the workers competed for cores, with each other or with the client)"
    )
    print(
        f"Dask per-task overhead with {args.workers} workers (gap / task time): {100 * many.gap_share:.2f}% "
        f"(target < {100 * TARGET_OVERHEAD:.0f}%): "
        f"{verdict(many.gap_share, TARGET_OVERHEAD, higher_is_better=False)}"
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0])
    p.set_defaults(workers=2)
    p.add_argument("--scans", type=int, default=200, help="synthetic scans (make_cohort, default shape)")
    p.add_argument("--seed", type=int, default=0, help="make_cohort seed")
    p.add_argument("--params", default="Params.yaml", help="params file in <data>/params")
    p.add_argument(
        "--group-max",
        type=int,
        default=None,
        metavar="N",
        help="experiment: at most N tiny scans per task (radcluster.plan._BATCH_MAX; default: as shipped)",
    )
    args = p.parse_args(argv)
    if args.workers < 2:
        p.error("--workers must be at least 2 (it is compared with 1 worker)")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    main(lambda: run(arguments))
