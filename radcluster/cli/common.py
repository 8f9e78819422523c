"""What every ``radcluster`` sub-command module shares: exit codes and the cluster flags."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from ..errors import ClusterError, ManifestError, ModelError, RadclusterError, RegistryError, SpecError, StoreError

# 0 all done, 1 some scans failed (the rest is in the store), 2 bad input (spec, manifest,
# params, a model that does not fit the data) found before any work started, 3 cluster,
# store or registry problems, 130 interrupted.
EXIT_OK, EXIT_FAILURES, EXIT_INVALID, EXIT_RUNTIME = 0, 1, 2, 3

# The one error -> exit code table: the first class an error is an instance of decides.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (SpecError, EXIT_INVALID),
    (ManifestError, EXIT_INVALID),
    (ModelError, EXIT_INVALID),
    (ClusterError, EXIT_RUNTIME),
    (StoreError, EXIT_RUNTIME),
    (RegistryError, EXIT_RUNTIME),
    (RadclusterError, EXIT_RUNTIME),
)


def exit_code(err: RadclusterError) -> int:
    """The exit code of a command that ended with ``err`` (see :data:`EXIT_CODES`)."""
    return next(code for cls, code in EXIT_CODES if isinstance(err, cls))


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


def progress(iterator, total: int):
    """A progress bar over finished scan tasks: on a terminal, nothing in CI logs."""
    from tqdm import tqdm

    return tqdm(iterator, total=total, unit="scan", file=sys.stderr, dynamic_ncols=True, disable=None)


def fmt_score(value: Any) -> str:
    """A metric as printed: three decimals, or '-' when there is none."""
    return f"{value:.3f}" if isinstance(value, float) and math.isfinite(value) else "-"


def _print_fold(k: int, m: dict[str, Any]) -> None:
    main = m.get("roc_auc", m.get("c_index", m.get("r2")))
    print(f"fold {k + 1}: {fmt_score(main)} on {m.get('n')} row(s) (trained on {m.get('n_train')})", flush=True)


def run(job) -> int:
    """Run any job spec, showing the dashboard link, progress and folds; print its result.

    Exit code 0, or 1 when some scans failed (every other one is in the store).
    """
    from ..cluster.local import prestart_local_workers
    from ..jobs import run_job

    if job.kind in ("extract", "retrain"):
        prestart_local_workers(job)
    result = run_job(job, progress=progress, on_dashboard=print_dashboard, on_fold=_print_fold)
    print(result.text())
    return EXIT_FAILURES if getattr(result, "ok", True) is False else EXIT_OK
