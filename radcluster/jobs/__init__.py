"""One runner per job kind (extract, train, predict, retrain), and :func:`run_job` for any.

Each runner takes a validated job spec (:func:`radcluster.spec.load_job`), checks what it
reads before a cluster starts, starts or uses one, and returns a result whose ``text()`` is
what the command prints.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_job", "dry_run"]


def run_job(job, *, client=None, progress=None, on_dashboard=None, on_fold=None) -> Any:
    """Run ``job``; returns a RunSummary (extract), TrainResult (train), PredictResult
    (predict) or RetrainDecision (retrain). ``client``: use this cluster instead of the job's."""
    if job.kind == "extract":
        from .extract import extract_job

        return extract_job(job, progress=progress, on_dashboard=on_dashboard, client=client)
    if job.kind == "train":
        from .train import train_job

        return train_job(job, client=client, on_dashboard=on_dashboard, on_fold=on_fold)
    if job.kind == "predict":
        from .predict import predict_job

        return predict_job(job, client=client)
    from .retrain import retrain_job

    return retrain_job(job, client=client, on_dashboard=on_dashboard)


def dry_run(job) -> str:
    """What running ``job`` would start and submit, without starting anything: the cluster
    (a SLURM/PBS worker job's script, the Kubernetes DaskJob manifest) and, for a job that
    extracts, the plan's counts against its store as it is now."""
    import yaml

    cluster = job.cluster
    lines = [f"# job: kind {job.kind}, cluster kind {cluster.kind}"]
    if cluster.kind in ("slurm", "pbs"):
        from ..cluster.jobqueue import render_job_script

        lines += [
            f"# each worker job (adaptive, {cluster.minimum_jobs} to {cluster.maximum_jobs} jobs) is submitted with:",
            render_job_script(cluster).rstrip(),
        ]
    elif cluster.kind == "kubernetes":
        from ..cluster.kubernetes import render_daskjob

        lines += [
            f"# run inside this DaskJob (job spec in ConfigMap radcluster-{job.kind}-job):",
            yaml.safe_dump(render_daskjob(job.kind), sort_keys=False).rstrip(),
        ]
    elif cluster.kind == "local":
        workers = cluster.workers or "one per core"
        lines.append(
            f"# a LocalCluster on this machine: {workers} worker(s), {cluster.threads_per_worker} thread(s) each"
        )
    else:
        lines.append(f"# the running scheduler at {cluster.address}")
    if job.kind == "extract" or job.kind == "retrain" and job.manifest is not None:
        from ..errors import RadclusterError
        from .extract import plan_job

        try:
            plan = plan_job(job)
        except RadclusterError as err:
            # a manifest on the cluster's file system (a pod's /data) may not be readable here
            lines.append("# plan: not computed here: " + " ".join(str(err).split()))
        else:
            lines.append(
                f"# plan: {len(plan.new)} new, {len(plan.changed)} changed, {len(plan.skipped)} unchanged scan(s); "
                f"{len(plan.tasks)} task(s); {len(plan.too_large)} too large for any worker"
            )
    return "\n".join(lines)
