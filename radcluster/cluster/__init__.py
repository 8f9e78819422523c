"""Making or reaching a Dask cluster from a cluster spec; nothing here knows radiomics.

One function, :func:`connect`, turns any :mod:`radcluster.spec` cluster section into a
connected :class:`distributed.Client` (a context manager that also tears down what it
started). A local cluster is made by :mod:`.local`; batch-system clusters come from
dask-jobqueue (:mod:`.jobqueue`, whose :func:`~.jobqueue.render_job_script` shows the
sbatch/qsub script without submitting).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from ..errors import ClusterError
from ..spec.cluster import (
    AddressClusterSpec,
    KubernetesClusterSpec,
    LocalClusterSpec,
    PBSClusterSpec,
    SlurmClusterSpec,
)
from .jobqueue import make_jobqueue_cluster
from .local import local_cluster

__all__ = ["connect", "dashboard_link"]

# Dask's developer logs (distributed.admin.low-level-log-length, default 1,000 entries): each
# comm's log of recent batches keeps the messages themselves, so the scheduler kept the last
# 1,000 tasks sent to each worker, arguments and function included, and the client its last
# 1,000 graphs (~30 kB a task in the orchestration benchmark: 20 MB at 10k scans, growing to
# ~65 MB); the scheduler's transition log has the same length. A run of 100k tasks needs
# neither; a user's own setting (DASK_DISTRIBUTED__ADMIN__LOW_LEVEL_LOG_LENGTH) is kept.
_LOW_LEVEL_LOG_LENGTH = 64


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
    import dask
    import distributed  # noqa: F401  (its config defaults first: else config.set's exit drops the section)

    logs = {}
    if "DASK_DISTRIBUTED__ADMIN__LOW_LEVEL_LOG_LENGTH" not in os.environ:
        logs = {"distributed.admin.low-level-log-length": _LOW_LEVEL_LOG_LENGTH}
    # for the whole connection: an adaptive cluster's workers connect (and get their comm) later
    with dask.config.set(logs):
        yield from _connect(spec, timeout)


def _connect(spec, timeout: float) -> Iterator[Any]:
    from distributed import Client

    cluster = None
    try:
        if isinstance(spec, LocalClusterSpec):
            cluster = local_cluster(spec)
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
