"""Making or reaching a Dask cluster from a cluster spec; nothing here knows radiomics.

One function, :func:`connect`, turns any :mod:`radcluster.spec` cluster section into a
connected :class:`distributed.Client` (a context manager that also tears down what it
started). Batch-system clusters come from dask-jobqueue, whose ``job_script()`` is exposed
through :func:`render_job_script` so a user can see the sbatch/qsub script without submitting.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from .errors import ClusterError
from .spec import (
    AddressClusterSpec,
    KubernetesClusterSpec,
    LocalClusterSpec,
    PBSClusterSpec,
    SlurmClusterSpec,
)

logger = logging.getLogger(__name__)

__all__ = ["connect", "dashboard_link", "render_job_script", "make_jobqueue_cluster"]


def _local_cluster(spec: LocalClusterSpec):
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


def _jobqueue_kwargs(spec: SlurmClusterSpec | PBSClusterSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "cores": spec.cores,
        "memory": spec.memory,
        "processes": spec.processes,
        "walltime": spec.walltime,
        "job_extra_directives": list(spec.job_extra_directives),
        "job_script_prologue": list(spec.job_script_prologue),
        "scheduler_options": {"dashboard_address": spec.dashboard_address},
    }
    optional = {
        "queue": spec.queue,
        "account": spec.account,
        "interface": spec.interface,
        "local_directory": spec.local_directory,
        "python": spec.python,
    }
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    return kwargs


def make_jobqueue_cluster(spec: SlurmClusterSpec | PBSClusterSpec):
    """The dask-jobqueue cluster object for a ``slurm`` or ``pbs`` section (jobs not yet submitted)."""
    if isinstance(spec, SlurmClusterSpec):
        from dask_jobqueue import SLURMCluster as cls
    else:
        from dask_jobqueue import PBSCluster as cls
    return cls(**_jobqueue_kwargs(spec))


def render_job_script(spec: SlurmClusterSpec | PBSClusterSpec) -> str:
    """The batch script dask-jobqueue would submit for each worker job (nothing is submitted)."""
    cluster = make_jobqueue_cluster(spec)
    try:
        return cluster.job_script()
    finally:
        cluster.close()


def dashboard_link(client) -> str | None:
    with contextlib.suppress(Exception):
        return client.dashboard_link
    return None


@contextlib.contextmanager
def connect(spec, *, timeout: float = 60) -> Iterator[Any]:
    """A connected client for ``spec``; whatever was started is closed on exit.

    Raises
    ------
    ClusterError
        When the scheduler cannot be reached or the cluster cannot start; the message
        names the address or the batch system's error.
    """
    from distributed import Client

    cluster = None
    try:
        if isinstance(spec, LocalClusterSpec):
            cluster = _local_cluster(spec)
            client = Client(cluster, security=spec.tls.security() if spec.tls else None)
        elif isinstance(spec, SlurmClusterSpec | PBSClusterSpec):
            cluster = make_jobqueue_cluster(spec)
            cluster.adapt(minimum_jobs=spec.minimum_jobs, maximum_jobs=spec.maximum_jobs)
            client = Client(cluster)
        elif isinstance(spec, AddressClusterSpec | KubernetesClusterSpec):
            if isinstance(spec, KubernetesClusterSpec):
                address = os.environ.get(spec.address_env)
                if not address:
                    raise ClusterError(
                        f"cluster kind 'kubernetes' reads the scheduler address from ${spec.address_env}, "
                        "which is not set: run inside a DaskJob runner pod, or use kind 'address'"
                    )
            else:
                address = spec.address
            tls = getattr(spec, "tls", None)
            client = Client(address, timeout=timeout, security=tls.security() if tls else None)
        else:  # pragma: no cover - the spec's discriminated union admits nothing else
            raise ClusterError(f"unknown cluster spec {spec!r}")
    except ClusterError:
        raise
    except (OSError, TimeoutError) as err:
        if cluster is not None:
            cluster.close()
        target = getattr(spec, "address", None) or spec.kind
        raise ClusterError(f"cannot reach Dask scheduler {target!r}: {err}") from err
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
