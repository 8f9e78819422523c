"""The ``cluster`` section of a job spec: where the Dask workers run.

One section per kind (``local``, the default; ``address``, a running scheduler; ``slurm``
and ``pbs`` through dask-jobqueue; ``kubernetes``, inside a Dask operator DaskJob), told
apart by ``kind``; :mod:`radcluster.cluster` turns one into a running cluster.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ._base import Section


class TLSSpec(Section):
    """Certificates for TLS between client, scheduler and workers (``distributed.Security``)."""

    ca_file: str = Field(..., description="CA certificate (PEM) that signed the others")
    cert_file: str = Field(..., description="certificate (PEM) of this process")
    key_file: str = Field(..., description="private key (PEM) of cert_file")

    def security(self):
        from distributed import Security

        return Security(
            tls_ca_file=self.ca_file,
            tls_client_cert=self.cert_file,
            tls_client_key=self.key_file,
            tls_scheduler_cert=self.cert_file,
            tls_scheduler_key=self.key_file,
            tls_worker_cert=self.cert_file,
            tls_worker_key=self.key_file,
            require_encryption=True,
        )


class LocalClusterSpec(Section):
    """An in-process :class:`distributed.LocalCluster` (the default)."""

    kind: Literal["local"] = "local"
    workers: int | None = Field(None, ge=1, description="worker processes; default: one per core")
    threads_per_worker: int = Field(1, ge=1, description="threads (concurrent scans) per worker")
    memory_limit: str = Field("auto", description="per-worker memory limit, e.g. '4GiB' or 'auto'")
    processes: bool = Field(True, description="worker processes (True) or threads in this process")
    dashboard_address: str = Field("127.0.0.1:8787", description="dashboard bind; ':0' picks a port")
    tls: TLSSpec | None = Field(None, description="encrypt scheduler/worker/client traffic (certificates)")
    profile: bool = Field(
        False,
        description="Dask's statistical profiler in each worker (the dashboard's "
        "Profile page); it samples every 10 ms and costs ~8% of a busy worker",
    )


class AddressClusterSpec(Section):
    """An already running scheduler."""

    kind: Literal["address"] = "address"
    address: str = Field(..., description="scheduler address, e.g. tcp://10.0.0.5:8786 or tls://...")
    tls: TLSSpec | None = Field(None, description="client certificates for a tls:// scheduler")


class _JobQueueSpec(Section):
    cores: int = Field(1, ge=1, description="cores per batch job")
    memory: str = Field("4GiB", description="memory per batch job")
    processes: int = Field(1, ge=1, description="worker processes per batch job")
    walltime: str = Field("01:00:00", description="batch job walltime")
    queue: str | None = Field(None, description="partition / queue")
    account: str | None = Field(None, description="account / project to charge")
    job_extra_directives: tuple[str, ...] = Field((), description="extra #SBATCH / #PBS lines")
    job_script_prologue: tuple[str, ...] = Field((), description="shell lines run before the worker")
    interface: str | None = Field(None, description="network interface of workers and scheduler")
    local_directory: str | None = Field(None, description="worker scratch directory")
    python: str | None = Field(None, description="python on the compute nodes; default: this one")
    minimum_jobs: int = Field(0, ge=0, description="adaptive scaling lower bound")
    maximum_jobs: int = Field(4, ge=1, description="adaptive scaling upper bound")
    dashboard_address: str = Field("127.0.0.1:8787", description="dashboard bind")


class SlurmClusterSpec(_JobQueueSpec):
    """Workers as SLURM jobs through :class:`dask_jobqueue.SLURMCluster`."""

    kind: Literal["slurm"] = "slurm"


class PBSClusterSpec(_JobQueueSpec):
    """Workers as PBS jobs through :class:`dask_jobqueue.PBSCluster`."""

    kind: Literal["pbs"] = "pbs"


class KubernetesClusterSpec(Section):
    """Inside a Dask operator DaskJob: the scheduler address comes from the environment."""

    kind: Literal["kubernetes"] = "kubernetes"
    address_env: str = Field("DASK_SCHEDULER_ADDRESS", description="variable holding the address")


ClusterSpec = Annotated[
    LocalClusterSpec | AddressClusterSpec | SlurmClusterSpec | PBSClusterSpec | KubernetesClusterSpec,
    Field(discriminator="kind"),
]


# kind -> section, in the order `radcluster config defaults` lists them (local, the default, first)
CLUSTER_KINDS: dict[str, type[Section]] = {
    "local": LocalClusterSpec,
    "address": AddressClusterSpec,
    "slurm": SlurmClusterSpec,
    "pbs": PBSClusterSpec,
    "kubernetes": KubernetesClusterSpec,
}
