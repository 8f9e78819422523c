"""Create a uniquely named DaskJob from a template and wait until it finishes.

Run by the ``radcluster-retrain`` CronJob (deploy/kubernetes/base/retrain-cronjob.yaml) inside the
radcluster image, with the ``radcluster-launcher`` ServiceAccount. A CronJob cannot create a DaskJob by
itself, and a DaskJob runs once under a fixed name, so each scheduled run:

1. refuses to start while an earlier DaskJob of the same schedule is still active (the CronJob's
   ``concurrencyPolicy: Forbid`` only sees this pod, not a DaskJob that outlived it);
2. renders the template (:func:`render_daskjob`, a pure function the tests validate offline):
   name ``<prefix>-<UTC timestamp>``, scheduler Service selector, worker replicas and resources, labels,
   an ownerReference to this pod's Job so the DaskJob is garbage-collected with the Job history, and
   this pod's own image for every container (read from the API), so an overlay's ``images:`` override
   reaches the DaskJob too although kustomize cannot see into the template;
3. creates it and follows ``status.jobStatus`` until ``Successful`` (exit 0) or ``Failed`` (exit 1, after
   printing the tail of the runner pod's log), or until ``--timeout`` (exit 2).

Usage::

    python launch_daskjob.py --template retrain-daskjob.yaml --prefix radcluster-retrain [--timeout S]
    python launch_daskjob.py --template retrain-daskjob.yaml --prefix radcluster-retrain --dry-run

Environment: ``POD_NAMESPACE``, ``POD_NAME``, ``OWNER_JOB_NAME``, ``OWNER_JOB_UID`` (downward API) and the
optional ``RADCLUSTER_WORKER_REPLICAS``, ``RADCLUSTER_WORKER_CPU``, ``RADCLUSTER_WORKER_MEMORY``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

import yaml

GROUP, VERSION, PLURAL = "kubernetes.dask.org", "v1", "daskjobs"
SCHEDULE_LABEL = "radcluster.io/schedule"
TERMINAL = {"Successful": 0, "Failed": 1}
# dask-kubernetes refuses cluster names that are not RFC 1123 labels short enough for "<name>-scheduler"
MAX_NAME_LEN = 63 - len("-scheduler")
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")

__all__ = ["unique_name", "render_daskjob", "is_active", "main"]


class LaunchError(Exception):
    """A bad template, setting or API answer; the message says which and what to change."""


def unique_name(prefix: str, now: dt.datetime) -> str:
    """``<prefix>-YYYYmmdd-HHMMSS`` in UTC, checked against dask-kubernetes' cluster-name rule."""
    name = f"{prefix}-{now.astimezone(dt.UTC):%Y%m%d-%H%M%S}"
    if len(name) > MAX_NAME_LEN or not _NAME_RE.match(name):
        raise LaunchError(
            f"DaskJob name {name!r} is not a valid Dask cluster name (lower-case letters, digits and '-', "
            f"at most {MAX_NAME_LEN} characters): shorten --prefix {prefix!r}"
        )
    return name


def _worker_container(job: dict[str, Any]) -> dict[str, Any]:
    try:
        containers = job["spec"]["cluster"]["spec"]["worker"]["spec"]["containers"]
    except (KeyError, TypeError):
        raise LaunchError("template has no spec.cluster.spec.worker.spec.containers") from None
    for c in containers:
        if c.get("name") == "worker":
            return c
    raise LaunchError(f"template has no worker container named 'worker' (found {[c.get('name') for c in containers]})")


def _all_containers(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                found += [c for c in value if isinstance(c, dict)]
            else:
                found += _all_containers(value)
    elif isinstance(node, list):
        for item in node:
            found += _all_containers(item)
    return found


def render_daskjob(
    template: Mapping[str, Any],
    name: str,
    *,
    schedule: str,
    owner: Mapping[str, str] | None = None,
    replicas: int | None = None,
    cpu: str | None = None,
    memory: str | None = None,
    image: str | None = None,
) -> dict[str, Any]:
    """The DaskJob to create: ``template`` renamed to ``name``; nothing is sent anywhere.

    Parameters
    ----------
    template : mapping
        A DaskJob manifest (``kind: DaskJob``).
    name : str
        The new name (see :func:`unique_name`); also written into the scheduler Service selector,
        which must name the cluster the operator creates (named after the DaskJob).
    schedule : str
        Value of the ``radcluster.io/schedule`` label, used to find still-active runs.
    owner : mapping, optional
        ``{"name": ..., "uid": ...}`` of the batch/v1 Job to own the DaskJob; skipped when either is empty.
    replicas, cpu, memory : optional
        Worker count and per-worker ``requests = limits``; the worker's ``--memory-limit`` follows the
        memory limit when it is wired through the downward API (as in the shipped template).
    image : str, optional
        Image for every container (runner, scheduler, workers).
    """
    if template.get("kind") != "DaskJob" or template.get("apiVersion") != f"{GROUP}/{VERSION}":
        raise LaunchError(
            f"template is a {template.get('apiVersion')}/{template.get('kind')}, expected {GROUP}/{VERSION}/DaskJob"
        )
    job = copy.deepcopy(dict(template))
    meta = job.setdefault("metadata", {})
    meta["name"] = name
    for key in ("namespace", "resourceVersion", "uid", "creationTimestamp", "generateName"):
        meta.pop(key, None)
    meta.setdefault("labels", {})[SCHEDULE_LABEL] = schedule
    if owner and owner.get("name") and owner.get("uid"):
        meta["ownerReferences"] = [
            {"apiVersion": "batch/v1", "kind": "Job", "name": owner["name"], "uid": owner["uid"], "controller": False}
        ]
    job.pop("status", None)
    service = job.get("spec", {}).get("cluster", {}).get("spec", {}).get("scheduler", {}).get("service", {})
    selector = service.get("selector")
    if isinstance(selector, dict) and "dask.org/cluster-name" in selector:
        selector["dask.org/cluster-name"] = name
    worker = job["spec"]["cluster"]["spec"]["worker"]
    if replicas is not None:
        if replicas < 0:
            raise LaunchError(f"worker replicas must be >= 0, got {replicas}")
        worker["replicas"] = int(replicas)
    if image:
        for c in _all_containers(job.get("spec")):
            c["image"] = image
    container = _worker_container(job)
    for key, value in (("cpu", cpu), ("memory", memory)):
        if value is None:
            continue
        if not _QUANTITY_RE.match(str(value)):
            raise LaunchError(f"worker {key} {value!r} is not a Kubernetes quantity (e.g. '1', '500m', '4Gi')")
        res = container.setdefault("resources", {})
        res.setdefault("requests", {})[key] = str(value)
        res.setdefault("limits", {})[key] = str(value)
    return job


def is_active(daskjob: Mapping[str, Any]) -> bool:
    """True until the operator marks the DaskJob ``Successful`` or ``Failed``."""
    return (daskjob.get("status") or {}).get("jobStatus") not in TERMINAL


def _env_int(env: Mapping[str, str], key: str) -> int | None:
    value = env.get(key, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"{key}={value!r} is not an integer") from None


def _settings(env: Mapping[str, str]) -> dict[str, Any]:
    return {
        "replicas": _env_int(env, "RADCLUSTER_WORKER_REPLICAS"),
        "cpu": env.get("RADCLUSTER_WORKER_CPU", "").strip() or None,
        "memory": env.get("RADCLUSTER_WORKER_MEMORY", "").strip() or None,
    }


def _namespace(env: Mapping[str, str]) -> str:
    if env.get("POD_NAMESPACE"):
        return env["POD_NAMESPACE"]
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        raise LaunchError(f"no POD_NAMESPACE and no {path}: not running in a pod?") from None


def own_image(core: Any, namespace: str, pod_name: str | None) -> str | None:
    """The image this launcher runs in (so the DaskJob runs the same radcluster), or None."""
    if not pod_name:
        return None
    try:
        pod = core.read_namespaced_pod(pod_name, namespace)
    except Exception as err:  # no RBAC for pods/get: keep the template's images, say so
        print(f"warning: cannot read pod {pod_name} ({err}); the DaskJob keeps the template's images", file=sys.stderr)
        return None
    containers = pod.spec.containers if hasattr(pod, "spec") else pod["spec"]["containers"]
    images = [c.image if hasattr(c, "image") else c["image"] for c in containers]
    return images[0] if images else None


def _wait(api, core, namespace: str, name: str, timeout: float, poll: float) -> int:
    from kubernetes import watch

    deadline = time.monotonic() + timeout
    last = None
    while True:
        obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        state = (obj.get("status") or {}).get("jobStatus", "Pending")
        if state != last:
            stamp = f"{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ}"
            print(f"{stamp} DaskJob {name}: {state}", flush=True)
            last = state
        if state in TERMINAL:
            if state == "Failed":
                runner = (obj.get("status") or {}).get("jobRunnerPodName") or f"{name}-runner"
                try:
                    log = core.read_namespaced_pod_log(runner, namespace, tail_lines=200)
                    print(f"--- last lines of pod {runner} ---\n{log}", flush=True)
                except Exception as err:  # the log is a courtesy; the exit code is the answer
                    print(f"(could not read the log of pod {runner}: {err})", flush=True)
            return TERMINAL[state]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            print(
                f"DaskJob {name} still {state} after {timeout:.0f} s; it keeps running "
                f"(kubectl -n {namespace} get daskjob {name})",
                file=sys.stderr,
            )
            return 2
        # wake on the next change, or after `poll` seconds at most (a watch can drop silently)
        w = watch.Watch()
        try:
            for _ in w.stream(
                api.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                field_selector=f"metadata.name={name}",
                resource_version=obj["metadata"].get("resourceVersion"),
                timeout_seconds=int(max(1, min(poll, remaining))),
            ):
                break
        except Exception:
            time.sleep(min(poll, max(remaining, 0)))
        finally:
            w.stop()


def main(
    argv: list[str] | None = None, env: Mapping[str, str] | None = None, *, api: Any = None, core: Any = None
) -> int:
    """Command line entry; ``api``/``core`` replace the in-cluster API clients (tests)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--template", required=True, help="DaskJob manifest to copy")
    p.add_argument("--prefix", required=True, help="name prefix; also the radcluster.io/schedule label")
    p.add_argument("--timeout", type=float, default=23 * 3600, help="seconds to wait for the DaskJob")
    p.add_argument("--poll", type=float, default=60, help="longest pause between status reads (seconds)")
    p.add_argument("--dry-run", action="store_true", help="print the DaskJob and create nothing")
    args = p.parse_args(argv)
    env = os.environ if env is None else env
    try:
        with open(args.template) as fh:
            template = yaml.safe_load(fh)
        name = unique_name(args.prefix, dt.datetime.now(dt.UTC))
        owner = {"name": env.get("OWNER_JOB_NAME", ""), "uid": env.get("OWNER_JOB_UID", "")}
        if args.dry_run:
            job = render_daskjob(template, name, schedule=args.prefix, owner=owner, **_settings(env))
            yaml.safe_dump(job, sys.stdout, sort_keys=False)
            return 0
        namespace = _namespace(env)

        if api is None or core is None:
            from kubernetes import client, config

            config.load_incluster_config()
            api, core = client.CustomObjectsApi(), client.CoreV1Api()
        image = own_image(core, namespace, env.get("POD_NAME"))
        job = render_daskjob(template, name, schedule=args.prefix, owner=owner, image=image, **_settings(env))
        running = [
            j["metadata"]["name"]
            for j in api.list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, label_selector=f"{SCHEDULE_LABEL}={args.prefix}"
            )["items"]
            if is_active(j)
        ]
        if running:
            print(
                f"not starting: DaskJob {', '.join(running)} of schedule {args.prefix!r} is still active "
                f"(kubectl -n {namespace} get daskjobs -l {SCHEDULE_LABEL}={args.prefix})",
                file=sys.stderr,
            )
            return 3
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job)
        print(f"created DaskJob {namespace}/{name}", flush=True)
        return _wait(api, core, namespace, name, args.timeout, args.poll)
    except (LaunchError, OSError, yaml.YAMLError) as err:
        print(f"launch_daskjob: {err}", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(main())
