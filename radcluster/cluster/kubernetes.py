"""A job on Kubernetes: the Dask operator's DaskJob that runs it (rendered, never applied here).

The runner pod runs ``radcluster run /config/job.yaml`` on the job spec mounted from a
ConfigMap; the operator starts the scheduler and workers from the same image and injects
``$DASK_SCHEDULER_ADDRESS``, which a ``cluster: {kind: kubernetes}`` section reads. The
manifests ``deploy/kubernetes`` ships (security contexts, volumes, autoscaler) build on this.
"""

from __future__ import annotations

from typing import Any

from .. import __version__

__all__ = ["render_daskjob", "IMAGE"]

IMAGE = f"ghcr.io/radcluster/radcluster:{__version__}"


def render_daskjob(kind: str, *, name: str | None = None, image: str = IMAGE, workers: int = 2) -> dict[str, Any]:
    """The DaskJob manifest running a ``kind`` job spec from the ConfigMap ``<name>-job``."""
    from dask_kubernetes.operator import make_cluster_spec

    name = name or f"radcluster-{kind}"
    cluster = make_cluster_spec(name, image=image, n_workers=workers, worker_command="dask worker")
    scheduler = cluster["spec"]["scheduler"]["spec"]["containers"][0]
    # the operator's template calls the old dask-scheduler entry point; the image has `dask`
    scheduler["args"] = ["dask", "scheduler", *scheduler["args"][1:]]
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskJob",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/name": "radcluster", "app.kubernetes.io/component": kind},
        },
        "spec": {
            "job": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "job",
                            "image": image,
                            "command": ["radcluster", "run", "/config/job.yaml"],
                            "volumeMounts": [{"name": "job-spec", "mountPath": "/config", "readOnly": True}],
                        }
                    ],
                    "volumes": [{"name": "job-spec", "configMap": {"name": f"{name}-job"}}],
                }
            },
            "cluster": {"spec": cluster["spec"]},
        },
    }
