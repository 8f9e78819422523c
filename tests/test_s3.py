"""Remote storage against a real S3-compatible server on 127.0.0.1 (moto's standalone server).

Images are read from S3 by the workers, the store is written to S3, and a re-run reads it back
and skips what is there. The model registry lives on S3 too: training, listing, retraining
with a champion, prediction with it, and refusal of a modified version. Credentials and the
endpoint come from the environment, as on a cloud.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml
from _stores import matrix_store, planted
from conftest import PARAMS, SMALL_CASES, case_paths

pytestmark = pytest.mark.slow  # starts a server


@pytest.fixture(scope="module")
def s3_env():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.2)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_extract_from_and_into_s3(s3_env, tmp_path):
    import s3fs

    from radcluster import open_store

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("cohort")
    fs.mkdir("results")
    lines = ["case_id,image,mask,outcome"]
    for i, case in enumerate(SMALL_CASES):
        image, mask = case_paths(case)
        fs.put_file(str(image), f"cohort/scans/{image.name}")
        fs.put_file(str(mask), f"cohort/scans/{mask.name}")
        lines.append(f"{case},scans/{image.name},scans/{mask.name},{i % 2}")  # relative to the manifest
    fs.pipe("cohort/cohort.csv", ("\n".join(lines) + "\n").encode())

    cmd = [
        sys.executable,
        "-m",
        "radcluster.cli",
        "extract",
        "s3://cohort/cohort.csv",
        "--out",
        "s3://results/store",
        "--params",
        str(PARAMS / "Params.yaml"),
        "--workers",
        "2",
        "--dashboard-address",
        ":0",
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **s3_env})
    assert first.returncode == 0, first.stderr
    assert "3 new, 0 changed, 0 unchanged" in first.stdout

    store = open_store("s3://results/store")
    features = store.features()
    assert sorted(features["case_id"]) == sorted(SMALL_CASES)
    assert features["image_hash"].notna().all()
    X, rows, names = store.matrix()
    assert X.shape == (3, 100) and sorted(rows["case_id"]) == features["case_id"].tolist()
    assert not [p for p in fs.find("results/store") if "/.tmp-" in p]

    # the same values as a local extraction of the same files
    from radcluster.cohort import Scan
    from radcluster.extract import ExtractionSettings, extract_scan
    from radcluster.spec import read_params

    text, digest = read_params(PARAMS / "Params.yaml")
    image, mask = case_paths("brain1")
    local = extract_scan(Scan("brain1", str(image), str(mask)), ExtractionSettings(text, digest)).rows[0]
    remote = features.set_index("case_id").loc["brain1"]
    assert remote["original_glcm_Contrast"] == local["original_glcm_Contrast"]
    assert remote["image_hash"] == local["image_hash"]

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **s3_env})
    assert again.returncode == 0, again.stderr
    assert "0 new, 0 changed, 3 unchanged (skipped)" in again.stdout
    assert len(open_store("s3://results/store").features(all_versions=True)) == 3


def test_store_compaction_on_s3_killed_before_and_after_its_commit(s3_env):
    """Compaction on S3: the commit is one conditional PUT of the next generation file; a
    compaction killed on either side of it leaves every row readable exactly once."""
    import s3fs
    from test_store import _KILL, _ids, fill

    from radcluster import open_store

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("compact")
    url = "s3://compact/store"
    fill(url, parts=12, per_part=2)
    expected = [f"c{i:05d}" for i in range(24)]
    assert _ids(url) == expected
    for where in ("create_exclusive", "remove"):
        proc = subprocess.run([sys.executable, "-c", _KILL, url, where], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 9, proc.stderr
        assert _ids(url) == expected
    assert open_store(url).compact(target_bytes=1 << 20)["features"][1] == 1
    assert _ids(url) == expected
    fs.invalidate_cache()
    assert len([p for p in fs.ls("compact/store/features") if p.endswith(".parquet")]) == 1
    X, rows, _ = open_store(url).matrix()
    assert sorted(rows["case_id"]) == expected and X.shape == (24, 6)


def test_remote_headers_are_read_by_a_ranged_read_and_stats_by_listing(s3_env, tmp_path):
    import s3fs

    from radcluster.plan import file_stat, read_headers, stat_many
    from radcluster.synth import make_cohort

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("headers")
    manifest = make_cohort(tmp_path / "cohort", 2, shape=(30, 20, 16))
    image, mask = case_paths("brain1")
    local = [str(image), *sorted(str(p) for p in (tmp_path / "cohort").rglob("*.nii.gz"))]
    urls = []
    for path in local:
        url = f"s3://headers/scans/{os.path.basename(os.path.dirname(path))}-{os.path.basename(path)}"
        fs.put_file(path, url)
        urls.append(url)
    remote = read_headers(urls)
    assert [remote[u] for u in urls] == [read_headers([p])[p] for p in local]
    assert remote[urls[1]][0] == 30 * 20 * 16 and remote[urls[0]] is not None
    assert manifest.exists()
    listed = stat_many(urls + ["s3://headers/scans/missing.nrrd"])
    assert listed == {**{u: file_stat(u) for u in urls}, "s3://headers/scans/missing.nrrd": None}


def test_stats_of_files_in_several_folders_come_from_their_listings(s3_env):
    import s3fs

    from radcluster.plan import file_stat, stat_many

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("folders")
    urls = [f"s3://folders/scans/{i % 3:02d}/s{i:02d}.nrrd" for i in range(60)]
    fs.pipe({u: bytes(i + 1) for i, u in enumerate(urls)})
    listed = stat_many([*urls, "s3://folders/scans/01/missing.nrrd"])
    assert listed == {**{u: file_stat(u) for u in urls}, "s3://folders/scans/01/missing.nrrd": None}
    assert len(set(listed.values())) == 61  # sizes 1..60 differ: every file its own stat, and None


# --- the model registry on S3 ------------------------------------------------------------------
TRAIN = {"target": "outcome", "model": "logistic_regression", "cv": {"folds": 3}, "metrics": {"bootstrap": 0}}


@pytest.fixture(scope="module")
def s3_cluster(s3_env):
    """A 2-process LocalCluster whose workers have the S3 endpoint and credentials in their
    environment (they read the store's matrix), as workers on a cloud would."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", host="127.0.0.1", env=s3_env
    ) as cluster:
        yield cluster.scheduler_address


def _s3():
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)


def _run(args: list[str], s3_env) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "radcluster.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **s3_env},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _job(tmp_path, name: str, spec: dict, address: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**spec, "cluster": {"kind": "address", "address": address}}))
    return path


def _cli(argv: list[str]) -> int:
    from radcluster.cli.models import add_commands

    parser = argparse.ArgumentParser(prog="radcluster")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def s3_version(s3_env, s3_cluster, tmp_path_factory):
    """A planted-signal store on S3 and one version trained on it by `radcluster run` into an
    S3 registry: ``(store URL, registry URL, version URL)``."""
    _s3().mkdir("radiomics")
    store, registry = "s3://radiomics/store", "s3://radiomics/models"
    X, columns = planted(120, 10, seed=1)
    matrix_store(store, X, columns)
    job = _job(
        tmp_path_factory.mktemp("jobs"),
        "train",
        {"kind": "train", "store": store, "registry": registry, "train": TRAIN},
        s3_cluster,
    )
    out = _run(["run", str(job)], s3_env)
    version = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("model version: "))
    assert version.startswith(f"{registry}/")
    return store, registry, version


def test_registry_on_s3_lists_retrains_and_predicts_with_the_champion(s3_env, s3_cluster, s3_version, tmp_path, capsys):
    from radcluster.jobs.retrain import retrain_job
    from radcluster.registry.champion import read_champion
    from radcluster.registry.versions import list_versions, open_version
    from radcluster.spec import load_job

    store, registry, version = s3_version
    fs = _s3()
    name = version.rsplit("/", 1)[1]
    meta = json.loads(fs.cat(f"{version}/version.json"))
    metrics = json.loads(fs.cat(f"{version}/metrics.json"))
    assert meta["version"] == name and meta["store"] == store
    assert set(meta["files"]) == {p.rsplit("/", 1)[1] for p in fs.ls(version)} - {
        "version.json",
        "report.html",
        "checklist.md",
    }
    assert not [p for p in fs.ls(registry) if ".tmp-" in p]

    # `radcluster models list` reads the version.json on S3 and prints its metrics
    assert _cli(["models", "list", registry]) == 0
    [row] = [line for line in capsys.readouterr().out.splitlines() if line.startswith(name)]
    assert row.split()[1:4] == ["logistic_regression", "binary", "outcome"]
    assert f"{metrics['cv']['roc_auc']:.3f}" in row and metrics["cv"]["roc_auc"] > 0.8
    # `radcluster report` checks the remote version and re-renders its report.html in place
    report = f"{version}/report.html"
    fs.rm(report)
    assert _cli(["report", version]) == 0
    assert f"wrote {report}" in capsys.readouterr().out and b"<h1>Model " + name.encode() in fs.cat(report)
    assert open_version(version).meta == meta

    # a retrain on the S3 registry: hold-out drawn and stored there, the challenger promoted
    retrain = _job(
        tmp_path,
        "retrain",
        {
            "kind": "retrain",
            "store": store,
            "registry": registry,
            "train": {**TRAIN, "cv": {"folds": 0}, "report": False},
            "retrain": {"holdout_fraction": 0.25, "margin": 0.02},
        },
        s3_cluster,
    )
    assert "PROMOTED: no champion yet" in _run(["retrain", str(retrain)], s3_env)
    champion = json.loads(fs.cat(f"{registry}/champion.json"))
    holdout = fs.cat(f"{registry}/holdout.json")
    assert champion["version"].startswith(f"{registry}/") and champion["version"] != version
    assert json.loads(fs.cat(f"{champion['version']}/version.json"))["model"] == "logistic_regression"
    assert champion["holdout"] == json.loads(holdout)["version"] and len(json.loads(holdout)["case_ids"]) == 30
    assert not fs.exists(f"{registry}/.retrain.lock")

    # predict with the champion named by champion.json on S3
    predict = _job(
        tmp_path,
        "predict",
        {
            "kind": "predict",
            "store": store,
            "registry": registry,
            "predict": {"version": "champion", "output": str(tmp_path / "p.parquet")},
        },
        s3_cluster,
    )
    assert "120 prediction(s)" in _run(["run", str(predict)], s3_env)
    pred = pd.read_parquet(tmp_path / "p.parquet")
    assert len(pred) == 120 and pred["case_id"].is_unique and pred["probability"].between(0, 1).all()
    assert set(pred["model_version"]) == {champion["version"].rsplit("/", 1)[1]}

    # a second retrain reuses the hold-out and judges both models on it
    from distributed import Client

    with Client(s3_cluster) as client:
        second = retrain_job(load_job(retrain), client=client)
    assert second.champion == champion["version"].rsplit("/", 1)[1] and second.champion_score > 0.8
    assert fs.cat(f"{registry}/holdout.json") == holdout
    decisions = [json.loads(fs.cat(d)) for d in sorted(fs.ls(f"{registry}/decisions"))]
    assert [(d["promoted"], d["holdout"]) for d in decisions] == [
        (True, champion["holdout"]),
        (second.promoted, champion["holdout"]),
    ]
    now = read_champion(registry)["version"]
    assert now.endswith(second.challenger) if second.promoted else now == champion["version"]
    assert {m["version"] for m in list_versions(registry)} >= {name, second.challenger}
    assert len(list_versions(registry)) == 3


def test_a_modified_s3_version_is_refused(s3_env, s3_version):
    from radcluster.errors import RegistryError
    from radcluster.registry.versions import list_versions, open_version

    _, _, version = s3_version
    fs = _s3()
    copy = "s3://radiomics/tampered/v1"
    fs.copy(version, copy, recursive=True)
    open_version(copy)  # intact
    config = json.loads(fs.cat(f"{copy}/config.json"))
    fs.pipe(f"{copy}/config.json", json.dumps({**config, "model": "svm"}).encode())
    with pytest.raises(RegistryError, match="config.json was modified after training"):
        open_version(copy)
    fs.rm(f"{copy}/model.ubj" if fs.exists(f"{copy}/model.ubj") else f"{copy}/model.skops")
    with pytest.raises(RegistryError, match="incomplete|modified"):
        open_version(copy)
    meta = json.loads(fs.cat(f"{copy}/version.json"))
    fs.pipe(f"{copy}/version.json", json.dumps({**meta, "files": {"../../escape": "0"}}).encode())
    with pytest.raises(RegistryError, match="unsafe file names"):
        open_version(copy)
    with pytest.raises(RegistryError, match="not a model version: no version.json"):
        open_version("s3://radiomics/tampered/nothing")
    # objects without a version.json (an interrupted upload) are not a version
    fs.pipe("radiomics/tampered/half/config.json", b"{}")
    assert [m["version"] for m in list_versions("s3://radiomics/tampered")] == [meta["version"]]


def test_retrain_lock_on_s3_is_exclusive(s3_env):
    from radcluster import _io
    from radcluster.errors import RegistryError
    from radcluster.registry.champion import registry_lock

    fs = _s3()
    fs.mkdir("locks")
    # the server itself refuses the second create (s3fs sends it without looking first)
    _io.create_exclusive("s3://locks/once", b"first")
    with pytest.raises(FileExistsError):
        _io.create_exclusive("s3://locks/once", b"second")
    assert fs.cat("locks/once") == b"first"

    registry = "s3://locks/models"
    with registry_lock(registry) as lock:
        assert lock == f"{registry}/.retrain.lock"
        assert json.loads(fs.cat(lock))["pid"] == os.getpid()
        with (
            pytest.raises(RegistryError, match=f"locked by another retrain \\(pid {os.getpid()}"),
            registry_lock(registry),
        ):
            pass
    assert not fs.exists(f"{registry}/.retrain.lock")
    # a lock of a dead process on this host is taken over; one from another host is not
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    fs.pipe(f"{registry}/.retrain.lock", json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}).encode())
    with registry_lock(registry) as lock:
        assert json.loads(fs.cat(lock))["pid"] == os.getpid()
    fs.pipe(f"{registry}/.retrain.lock", json.dumps({"pid": int(dead.stdout), "host": "elsewhere"}).encode())
    with pytest.raises(RegistryError, match="on elsewhere"), registry_lock(registry):
        pass


def test_an_onnx_model_given_by_url_is_checked_and_loaded(s3_env, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import hashlib

    import s3fs
    from _onnx_models import encoder

    from radcluster.extract.engines import make_engine
    from radcluster.extract.engines.onnx import load_session
    from radcluster.spec import OnnxEngineSpec, read_params

    encoder(tmp_path / "enc.onnx", seed=31)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("encoders")
    fs.put_file(str(tmp_path / "enc.onnx"), "encoders/enc.onnx")
    text, _ = read_params(None)
    engine = make_engine("onnx", OnnxEngineSpec(name="u", model="s3://encoders/enc.onnx")).prepare(text)
    assert engine.model.sha256 == hashlib.sha256((tmp_path / "enc.onnx").read_bytes()).hexdigest()
    session = load_session("s3://encoders/enc.onnx", engine.model.sha256, 1)  # as a worker reads it
    assert [i.name for i in session.get_inputs()] == ["image"]
