"""The model registry: immutable versions in safe formats, prediction, ``models list``."""

from __future__ import annotations

import argparse
import json
import operator
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _stores import matrix_store, planted, trained_as

from radcluster.cli import main
from radcluster.cli.models import add_commands
from radcluster.errors import ModelError, RegistryError, StoreError
from radcluster.jobs.predict import predict_store
from radcluster.registry.versions import list_versions, new_version, open_version

JOBS = Path(__file__).resolve().parents[2] / "jobs"


@pytest.fixture
def binary(tmp_path_factory, client):
    return trained_as(tmp_path_factory, client, "binary")


@pytest.fixture
def forest(tmp_path_factory, client):
    return trained_as(tmp_path_factory, client, "forest")


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="radcluster")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_a_version_holds_safe_files_and_their_hashes(binary):
    root, result = binary
    folder = result.version
    meta = json.loads((folder / "version.json").read_text())
    expected = {
        "cases.json",
        "config.json",
        "features.json",
        "importance.json",
        "metrics.json",
        "model.json",
        "model.ubj",
        "contributions.parquet",
        "pca_scores.parquet",
        "predictions.parquet",
        "preprocess.json",
        "preprocess.npz",
    }
    assert set(meta["files"]) == expected
    assert (folder / "report.html").exists() and "report.html" not in meta["files"]
    assert meta["config_hash"] and meta["versions"]["xgboost"] and meta["model"] == "xgboost"
    assert meta["store"] == str(root / "store") and meta["metrics"]["cv"]["roc_auc"] > 0.8
    with np.load(folder / "preprocess.npz", allow_pickle=False) as data:  # arrays only, no pickles
        assert {"scale_mean_", "scale_scale_", "pca_components_", "pca_mean_"} <= set(data.files)
    import xgboost

    xgboost.Booster().load_model(str(folder / "model.ubj"))  # XGBoost's own format
    cases = json.loads((folder / "cases.json").read_text())
    assert len(cases["development"]) + len(cases["test"]) == 120 and len(cases["test"]) == 30
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".tmp-")]


def test_predict_reproduces_the_recorded_test_predictions(binary, tmp_path):
    root, result = binary
    out = predict_store(result.version, str(root / "store"), out=tmp_path / "pred.parquet")
    recorded = pd.read_parquet(result.version / "predictions.parquet")
    test = recorded[recorded["split"] == "test"].merge(out, on=["case_id", "label"], suffixes=("_train", ""))
    assert len(test) == 30
    assert np.allclose(test["probability_train"], test["probability"], atol=1e-6)
    written = pd.read_parquet(tmp_path / "pred.parquet")
    assert list(written.columns) == ["case_id", "label", "probability", "predicted", "model_version"]
    assert (written["model_version"] == result.version.name).all()


def test_predict_reorders_features_and_names_missing_ones(binary, tmp_path):
    root, result = binary
    X, columns = planted(120, 12)
    names = [f"original_firstorder_F{j:03d}" for j in range(12)]
    order = np.r_[11:-1:-1]  # reversed columns, and one extra feature
    matrix_store(
        tmp_path / "shuffled",
        np.column_stack([X[:, order], np.ones(120)]),
        columns,
        names=[names[j] for j in order] + ["original_extra"],
    )
    same = predict_store(result.version, str(tmp_path / "shuffled"))
    reference = predict_store(result.version, str(root / "store"))
    assert np.allclose(same["probability"], reference["probability"])
    matrix_store(tmp_path / "short", X[:, 2:], columns, names=names[2:])
    with pytest.raises(ModelError, match=r"lacks 2 feature\(s\).*F000, original_firstorder_F001"):
        predict_store(result.version, str(tmp_path / "short"))


def test_a_modified_version_is_refused(binary, tmp_path):
    _, result = binary
    copy = tmp_path / result.version.name
    shutil.copytree(result.version, copy)
    open_version(copy)  # intact
    config = json.loads((copy / "config.json").read_text())
    config["model"] = "svm"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(RegistryError, match="config.json was modified after training"):
        open_version(copy)
    (copy / "model.ubj").unlink()
    with pytest.raises(RegistryError, match="not a model version|incomplete|modified"):
        open_version(copy)
    with pytest.raises(RegistryError, match="not a model version"):
        open_version(tmp_path)


def test_a_failed_write_leaves_no_version(tmp_path):
    with pytest.raises(RuntimeError), new_version(tmp_path / "reg", "xgboost") as v:
        (v.path / "model.json").write_text("{}")
        raise RuntimeError("crash halfway")
    assert list((tmp_path / "reg").iterdir()) == []
    assert list_versions(tmp_path / "reg") == []


def test_a_file_url_registry_is_its_local_folder(binary, tmp_path):
    from radcluster.registry.champion import read_champion, registry_lock

    _, result = binary
    folder = tmp_path / "reg"
    shutil.copytree(result.version, folder / result.version.name)
    url = f"file://{folder}"
    assert [m["version"] for m in list_versions(url)] == [result.version.name]
    assert open_version(f"{url}/{result.version.name}").path == folder / result.version.name
    with new_version(url, "xgboost") as v:  # written into the folder and renamed into place
        (v.path / "model.json").write_text("{}")
    assert v.location == folder / v.name and json.loads((v.location / "version.json").read_text())["files"]
    with registry_lock(url) as lock:
        assert lock == folder / ".retrain.lock" and lock.exists()
    assert not lock.exists() and read_champion(url) is None


def test_sklearn_models_load_through_skops_with_a_trusted_list(forest, tmp_path):
    root, result = forest
    meta = json.loads((result.version / "model.json").read_text())
    assert meta["format"] == "skops" and meta["trusted_types"] == ["sklearn.tree._tree.Tree"]
    version = open_version(result.version)
    assert version.model.estimator_.estimator.n_estimators == 30
    # A skops file holding a type radcluster does not trust is refused unless the caller opts in.
    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    copy = tmp_path / "v"
    shutil.copytree(result.version, copy)
    sio.dump(FunctionTransformer(func=operator.add), copy / "model.skops")  # a function as payload
    from radcluster.learn.models import load_model

    with pytest.raises(RegistryError, match="refusing to load types not on radcluster's trusted list: _operator.add"):
        load_model(copy)
    assert load_model(copy, trust=("_operator.add",)).estimator_.estimator.func is operator.add


def test_cli_predict_and_models_list(binary, forest, tmp_path, capsys, client):
    root, result = binary
    out = tmp_path / "p.parquet"
    code = _cli(
        [
            "predict",
            str(result.version),
            str(root / "store"),
            "-o",
            str(out),
            "--scheduler-address",
            client.scheduler.address,
        ]
    )
    assert code == 0 and len(pd.read_parquet(out)) == 120
    assert f"wrote {out}: 120 prediction(s)" in capsys.readouterr().out
    assert _cli(["models", "list", str(result.version.parent)]) == 0
    listing = capsys.readouterr().out
    assert result.version.name in listing and "roc_auc" in listing and "[" in listing
    with pytest.raises(StoreError, match="no feature store"):  # cli.main turns it into exit code 3
        _cli(["predict", str(result.version), str(tmp_path / "nowhere"), "-o", str(out), "--no-cluster"])


def test_cli_train_from_the_example_job(tmp_path, client, capsys):
    X, columns = planted(60, 8)
    matrix_store(tmp_path / "store", X, columns)
    code = _cli(
        [
            "train",
            str(tmp_path / "store"),
            "--config",
            str(JOBS / "train.yaml"),
            "--registry",
            str(tmp_path / "models"),
            "--model",
            "logistic_regression",
            "--folds",
            "3",
            "--no-report",
            "--scheduler-address",
            client.scheduler.address,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "fold 3:" in out and "cv: roc_auc" in out
    [meta] = list_versions(tmp_path / "models")
    assert meta["model"] == "logistic_regression" and meta["target"] == "outcome"
    config = json.loads((tmp_path / "models" / meta["version"] / "config.json").read_text())
    assert config["preprocess"]["pca_max_components"] == 20  # from jobs/train.yaml
    argv = ["train", str(tmp_path / "store"), "--scheduler-address", client.scheduler.address]
    assert main([*argv, "--target", "nothing", "--registry", str(tmp_path / "models")]) == 2  # a ModelError
    assert "column 'nothing' is not in" in capsys.readouterr().err

    # --pca none: no PCA (it once died with "TypeError: 'TrainSpec' object is not a mapping")
    registry = tmp_path / "no-pca"
    assert (
        main([*argv, "--target", "outcome", "--pca", "none", "--folds", "2", "--no-report", "-r", str(registry)]) == 0
    )
    [meta] = list_versions(registry)
    config = json.loads((registry / meta["version"] / "config.json").read_text())
    assert config["preprocess"]["pca"] is None
    assert json.loads((registry / meta["version"] / "preprocess.json").read_text())["n_components"] is None


def test_training_computes_on_the_client_it_is_given(tmp_path, client):
    """With another client current (here the session's), training still runs on the one it
    was given: persisting through one connection and computing through another raced at the
    scheduler ('User asked for computation on lost data')."""
    from distributed import Client

    from radcluster.jobs.train import train_store

    X, columns = planted(60, 8)
    matrix_store(tmp_path / "store", X, columns)
    seen = []
    other = Client(client.scheduler.address, set_as_default=False)
    try:
        with client.as_current():
            train_store(
                str(tmp_path / "store"),
                {
                    "target": "outcome",
                    "model": "logistic_regression",
                    "cv": {"folds": 3},
                    "report": False,
                    "metrics": {"bootstrap": 0},
                },
                other,
                tmp_path / "models",
                on_fold=lambda k, m: seen.append(Client.current()),
            )
    finally:
        other.close()
    assert len(seen) == 3 and all(c is other for c in seen)


def test_one_default_registry_for_train_models_list_and_the_docs(tmp_path, monkeypatch, capsys):
    """With no registry named anywhere, `train` writes where `models list` reads, and the help
    and `config defaults` name that folder: all of them read DEFAULT_REGISTRY."""
    import radcluster.jobs.train as train_module
    from radcluster.registry import DEFAULT_REGISTRY
    from radcluster.spec import build_job, defaults_yaml

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RADCLUSTER_REGISTRY", raising=False)
    written_to = []
    monkeypatch.setattr(train_module, "load_training_data", lambda *a, **k: None)
    monkeypatch.setattr(train_module, "train_store", lambda url, spec, client, reg, **k: written_to.append(reg))
    job = build_job({"kind": "train", "store": str(tmp_path / "s"), "train": {"target": "y"}})
    train_module.train_job(job, client=object())
    assert written_to == [DEFAULT_REGISTRY]

    (tmp_path / DEFAULT_REGISTRY).mkdir()  # an empty registry, as the first train finds it
    assert _cli(["models", "list"]) == 0
    assert capsys.readouterr().out == f"no model versions in {DEFAULT_REGISTRY}\n"

    parser = argparse.ArgumentParser(prog="radcluster")
    add_commands(parser.add_subparsers(dest="command", required=True))
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    assert f"else ./{DEFAULT_REGISTRY})" in " ".join(capsys.readouterr().out.split())
    registry_line = next(line for line in defaults_yaml().splitlines() if line.startswith("registry:"))
    assert f"./{DEFAULT_REGISTRY})" in registry_line
