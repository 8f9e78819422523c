"""Job specs: validated before anything starts, errors naming the key."""

from __future__ import annotations

import pytest
import yaml
from conftest import PARAMS

from radcluster.errors import SpecError
from radcluster.spec import (
    LocalClusterSpec,
    SlurmClusterSpec,
    build_job,
    defaults_yaml,
    load_job,
    params_hash,
    read_params,
)


def test_unknown_key_suggests_closest():
    with pytest.raises(SpecError, match=r"key 'extraction.fsat': unknown key; did you mean 'fast'\?"):
        build_job({"manifest": "m.csv", "extraction": {"fsat": True}})
    with pytest.raises(SpecError, match=r"key 'cluster.wrokers': unknown key; did you mean 'workers'\?"):
        build_job({"cluster": {"kind": "local", "wrokers": 2}})
    with pytest.raises(SpecError, match=r"key 'manifets': unknown key; did you mean 'manifest'\?"):
        build_job({"manifets": "m.csv"})


def test_each_kind_names_what_it_needs(monkeypatch):
    monkeypatch.delenv("RADCLUSTER_REGISTRY", raising=False)
    with pytest.raises(SpecError, match=r"the job: an extract job needs 'manifest' and 'store'"):
        build_job({})
    with pytest.raises(SpecError, match=r"a retrain job needs 'registry' and 'train'"):
        build_job({"kind": "retrain", "store": "s"})
    with pytest.raises(SpecError, match=r"a retrain job needs 'train.target'"):
        build_job({"kind": "retrain", "store": "s", "registry": "r", "train": {"model": "kmeans"}})
    with pytest.raises(SpecError, match=r"predict.version 'champion' needs a 'registry'"):
        build_job({"kind": "predict", "store": "s"})
    assert build_job({"kind": "predict", "store": "s", "registry": "r"}).predict.version == "champion"
    assert build_job({"kind": "predict", "store": "s", "predict": {"version": "v1"}}).registry is None


def test_wrong_type_names_key_and_value():
    with pytest.raises(SpecError, match=r"key 'cluster.workers'.*got 'many'"):
        build_job({"cluster": {"kind": "local", "workers": "many"}})
    with pytest.raises(SpecError, match=r"'kind'.*'extract', 'train', 'predict' or 'retrain'"):
        build_job({"kind": "extrct"})


def test_overrides_win_and_none_is_ignored(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "manifest": "cohort.csv",
                "store": "s3://bucket/store",
                "cluster": {"kind": "slurm", "cores": 4, "queue": "gpu"},
            }
        )
    )
    job = load_job(path, overrides={"cluster.cores": 8, "cluster.queue": None})
    assert isinstance(job.cluster, SlurmClusterSpec)
    assert job.cluster.cores == 8 and job.cluster.queue == "gpu"
    assert job.resolve(job.manifest) == str(tmp_path / "cohort.csv")  # relative to the YAML
    assert job.resolve(job.store) == "s3://bucket/store"
    assert isinstance(build_job({"manifest": "m.csv", "store": "s"}).cluster, LocalClusterSpec)


def test_spec_is_frozen():
    job = build_job({"manifest": "m.csv", "store": "s"})
    with pytest.raises(Exception, match="frozen"):
        job.manifest = "other.csv"


def test_params_validated_by_pyradiomics_schema(tmp_path):
    text, digest = read_params(PARAMS / "Params.yaml")
    assert "binWidth" in text and len(digest) == 16
    # comments and key order do not change the hash; a value does
    assert params_hash("# c\nsetting: {binWidth: 25, label: 1}\n") == params_hash("setting: {label: 1, binWidth: 25}")
    assert params_hash("setting: {binWidth: 25}") != params_hash("setting: {binWidth: 10}")
    bad = tmp_path / "bad.yaml"
    bad.write_text("setting:\n  binWidth: -3\n")
    with pytest.raises(SpecError, match="bad.yaml.*rejected by pyradiomics' schema"):
        read_params(bad)
    bad.write_text("imageType:\n  Orignal: {}\n")
    with pytest.raises(SpecError, match="bad.yaml"):
        read_params(bad)
    with pytest.raises(SpecError, match="cannot be read"):
        read_params(tmp_path / "none.yaml")


def test_defaults_document_every_key():
    text = defaults_yaml()
    for key in (
        "manifest:",
        "flush_rows: null",
        "threads_per_worker: 1",
        "maximum_jobs: 4",
        "kind: slurm",
        "address_env: DASK_SCHEDULER_ADDRESS",
    ):
        assert key in text
    assert yaml.safe_load(text) is not None


def test_precedence_flag_then_job_file_then_environment_then_default(monkeypatch):
    base = {"kind": "predict", "store": "s", "predict": {"version": "v1"}}
    assert build_job(base).registry is None and isinstance(build_job(base).cluster, LocalClusterSpec)
    monkeypatch.setenv("RADCLUSTER_REGISTRY", "env-models")
    monkeypatch.setenv("RADCLUSTER_SCHEDULER_ADDRESS", "tcp://10.0.0.5:8786")
    job = build_job(base)
    assert job.registry == "env-models" and job.cluster.address == "tcp://10.0.0.5:8786"
    job = build_job({**base, "registry": "file-models", "cluster": {"kind": "local"}})
    assert job.registry == "file-models" and isinstance(job.cluster, LocalClusterSpec)
    job = build_job({**base, "registry": "file-models"}, overrides={"registry": "flag-models", "cluster.workers": 2})
    assert job.registry == "flag-models" and job.cluster.workers == 2
