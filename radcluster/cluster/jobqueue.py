"""Workers as batch jobs (SLURM, PBS) through dask-jobqueue, and the job script they would be submitted with."""

from __future__ import annotations

from typing import Any

from ..spec.cluster import PBSClusterSpec, SlurmClusterSpec


def _jobqueue_kwargs(spec: SlurmClusterSpec | PBSClusterSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "cores": spec.cores,
        "memory": spec.memory,
        "processes": spec.processes,
        "walltime": spec.walltime,
        "job_extra_directives": list(spec.job_extra_directives),
        "job_script_prologue": list(spec.job_script_prologue),
        "scheduler_options": {"dashboard_address": spec.dashboard_address},
        # Each worker process advertises its share of the job's memory as a Dask resource;
        # radcluster's tasks claim their scan's estimated need from it, so a large scan does
        # not run beside others on a worker (of several threads) that cannot hold them.
        "worker_extra_args": ["--resources", f"MEMORY={worker_memory(spec)}"],
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


def worker_memory(spec: SlurmClusterSpec | PBSClusterSpec) -> int:
    """Bytes of memory of one worker process: the job's memory split over its processes, as
    dask-jobqueue sets each worker's ``--memory-limit``."""
    from dask.utils import parse_bytes

    return parse_bytes(spec.memory) // spec.processes


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
