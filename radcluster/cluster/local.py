"""A LocalCluster on this machine: worker processes forked from a server that has imported
what an extraction task needs (Dask, pyradiomics, radcluster's task module), each advertising
its memory limit as a Dask resource."""

from __future__ import annotations

import logging
import multiprocessing
import os

from ..spec.cluster import LocalClusterSpec

logger = logging.getLogger(__name__)


def local_cluster(spec: LocalClusterSpec):
    import dask
    from distributed import LocalCluster
    from distributed.worker_memory import parse_memory_limit

    workers = spec.workers or max(1, (os.cpu_count() or 1) // spec.threads_per_worker)
    limit = parse_memory_limit(
        spec.memory_limit, spec.threads_per_worker, total_cores=workers * spec.threads_per_worker, logger=logger
    )
    tls = {"protocol": "tls", "security": spec.tls.security()} if spec.tls else {}
    # Each nanny hands its worker the Dask config current when the cluster is made (also to
    # a worker it restarts). The profiler's sampling thread took ~8% of each busy worker's
    # CPU when workers fill the cores (2-worker scaling benchmark: 1.61x -> 1.78x without it).
    with dask.config.set({"distributed.worker.profile.enabled": spec.profile}):
        return LocalCluster(
            **tls,
            # Each worker advertises its memory as a resource; radcluster's plan gives every
            # task its scan's estimated need, so big scans do not share a worker they cannot fit.
            resources={"MEMORY": limit} if limit else None,
            n_workers=workers,
            threads_per_worker=spec.threads_per_worker,
            processes=spec.processes,
            memory_limit=spec.memory_limit,
            dashboard_address=spec.dashboard_address,
            # Loopback unless the user binds the dashboard elsewhere: a laptop's scheduler
            # should not listen on the network (thread workers talk in-process, no host).
            host="127.0.0.1"
            if spec.processes and spec.dashboard_address.startswith(("127.", "localhost", ":"))
            else None,
        )


# What a worker imports for its first extraction task, imported once by the fork server so
# no worker pays it: Dask, pyradiomics, the task's module (radcluster.jobs.extract: the store
# and plan modules, pyarrow's dataset and Parquet readers) and scipy.ndimage (labels are found
# with find_objects); the last two were ~0.3 s of CPU in each worker's first task.
WORKER_PRELOAD = ("distributed", "radcluster.extract._radiomics", "radcluster.jobs.extract", "scipy.ndimage")

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
    context.set_forkserver_preload(list(WORKER_PRELOAD))
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
