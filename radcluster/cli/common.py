"""What every ``radcluster`` sub-command module shares: exit codes and the cluster flags."""

from __future__ import annotations

import argparse
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
