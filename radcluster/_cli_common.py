"""What every ``radcluster`` sub-command module shares: exit codes and the cluster flags."""

from __future__ import annotations

import argparse
import multiprocessing
import os
from typing import Any

# 0 all done, 1 some scans failed (the rest is in the store), 2 bad input (spec, manifest,
# params) found before any work started, 3 cluster/store problems.
EXIT_OK, EXIT_FAILURES, EXIT_INVALID, EXIT_RUNTIME = 0, 1, 2, 3


def add_cluster_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster (default: a LocalCluster sized to this machine)")
    g.add_argument("--scheduler-address", help="use a running Dask scheduler, e.g. tcp://host:8786")
    g.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    g.add_argument("--threads-per-worker", type=int, help="tasks run at once per worker (default 1)")
    g.add_argument("--memory-limit", help="per-worker memory limit, e.g. 4GiB (default auto)")
    g.add_argument("--dashboard-address", help="dashboard bind (default 127.0.0.1:8787; ':0' any port)")


def cluster_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Job-spec overrides (see :func:`radcluster.spec.build_job`) from the cluster flags."""
    if getattr(args, "scheduler_address", None):
        return {"cluster": {"kind": "address", "address": args.scheduler_address}}
    out: dict[str, Any] = {}
    for flag in ("workers", "threads_per_worker", "memory_limit", "dashboard_address"):
        value = getattr(args, flag, None)
        if value is not None:
            out[f"cluster.{flag}"] = value
    return out


def print_dashboard(link: str | None) -> None:
    print(f"Dask dashboard: {link or 'not available (install bokeh>=3.1)'}", flush=True)


# What Dask's nanny puts in a spawned worker's environment before it imports anything
# (distributed.nanny.pre-spawn-environ); a forked worker inherits the fork server's instead.
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def prestart_local_workers(job) -> None:
    """Have a job's LocalCluster fork its workers from a server that has imported Dask and pyradiomics.

    By default Dask spawns each worker as a fresh interpreter that imports distributed at
    start and pyradiomics at its first task, about 2 s of CPU a worker, which on a small
    machine is a large share of a short command. A fork server started here, before the
    manifest and params are read, imports them once while this process goes on, and the
    cluster then forks ready workers. The user's own choice
    (``DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD`` or Dask config) is kept.
    """
    import dask

    cluster = job.cluster
    if (
        cluster.kind != "local"
        or not cluster.processes
        or "forkserver" not in multiprocessing.get_all_start_methods()
        or "DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD" in os.environ
        or dask.config.get("distributed.worker.multiprocessing-method", "spawn") != "spawn"
    ):
        return
    dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["distributed", "radcluster._radiomics"])
    # BLAS reads its thread count when numpy is imported, which now happens in the server:
    # give it the single-thread setting Dask would give a spawned worker.
    environ = dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {}
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    try:
        for key in _THREAD_VARS:
            if key in environ and key not in os.environ:
                os.environ[key] = str(environ[key])
        from multiprocessing import forkserver

        forkserver.ensure_running()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
