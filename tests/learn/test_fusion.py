"""Training on deep features alone, radiomics alone, or both (``features:``), and the report
saying which."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
from _onnx_models import encoder  # noqa: E402

from radcluster.cli.models import add_commands  # noqa: E402
from radcluster.errors import ModelError, SpecError  # noqa: E402
from radcluster.jobs.extract import extract_job  # noqa: E402
from radcluster.jobs.train import train_store  # noqa: E402
from radcluster.spec import build_job  # noqa: E402
from radcluster.spec.training import parse_train_spec  # noqa: E402
from radcluster.synth import make_cohort  # noqa: E402

SPEC = {
    "target": "outcome",
    "model": "logistic_regression",
    "preprocess": {"pca": None},
    "cv": {"folds": 3, "seed": 0},
    "metrics": {"bootstrap": 0},
}


@pytest.fixture(scope="module")
def fused_store(tmp_path_factory, client) -> Path:
    """A synthetic cohort extracted with [pyradiomics, onnx] on the session's worker processes."""
    root = tmp_path_factory.mktemp("fusion")
    manifest = make_cohort(root / "cohort", 12, seed=1)
    encoder(root / "enc.onnx", size=(16, 16, 16), channels=6, seed=5)
    job = build_job(
        {
            "kind": "extract",
            "manifest": str(manifest),
            "store": str(root / "store"),
            "extraction": {
                "engines": [
                    "pyradiomics",
                    {"onnx": {"name": "enc", "model": str(root / "enc.onnx"), "window": [-1000, 400], "margin": 8}},
                ]
            },
        }
    )
    assert extract_job(job, client=client).ok
    return root / "store"


@pytest.mark.parametrize(("features", "counts"), [(["deep"], {"deep": 6}), (["radiomics", "deep"], None)])
def test_training_on_deep_alone_and_fused_is_reported(
    fused_store: Path, tmp_path: Path, client, features, counts
) -> None:
    result = train_store(str(fused_store), {**SPEC, "features": features}, client, tmp_path / "models")
    version = Path(result.version)
    meta = json.loads((version / "version.json").read_text())
    kinds = meta["feature_kinds"]
    assert kinds["selected"] == features
    inputs = json.loads((version / "features.json").read_text())["input"]
    if counts is not None:
        assert kinds["counts"] == counts and inputs == [f"deep_enc_{i}" for i in range(6)]
    else:
        assert kinds["counts"]["deep"] == 6 and kinds["counts"]["radiomics"] > 50
        assert inputs[-6:] == [f"deep_enc_{i}" for i in range(6)] and len(inputs) == 6 + kinds["counts"]["radiomics"]
    assert 0.0 <= result.metrics["cv"]["roc_auc"] <= 1.0
    report = (version / "report.html").read_text()
    shown = " + ".join(f"{k} ({n})" for k, n in kinds["counts"].items())
    assert f"{shown}; features: [{', '.join(features)}]" in report


def test_every_feature_by_default_and_radiomics_alone(fused_store: Path, tmp_path: Path, client) -> None:
    everything = train_store(str(fused_store), SPEC, client, tmp_path / "models")
    meta = json.loads((Path(everything.version) / "version.json").read_text())
    assert meta["feature_kinds"]["selected"] == "all" and meta["feature_kinds"]["counts"]["deep"] == 6
    # radiomics alone, through `radcluster train --features radiomics`
    parser = argparse.ArgumentParser(prog="radcluster")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            "train",
            str(fused_store),
            "--target",
            "outcome",
            "--model",
            "logistic_regression",
            "--folds",
            "3",
            "--pca",
            "2",
            "--features",
            "radiomics",
            "--registry",
            str(tmp_path / "cli"),
            "--scheduler-address",
            client.scheduler.address,
        ]
    )
    assert args.func(args) == 0
    (version,) = (tmp_path / "cli").glob("*/version.json")
    assert json.loads(version.read_text())["feature_kinds"]["selected"] == ["radiomics"]
    inputs = json.loads((version.parent / "features.json").read_text())["input"]
    assert inputs and not any(n.startswith("deep_") for n in inputs)


def test_deep_features_asked_of_a_store_without_them(tmp_path: Path, client) -> None:
    manifest = make_cohort(tmp_path / "cohort", 4, seed=2)
    job = build_job({"kind": "extract", "manifest": str(manifest), "store": str(tmp_path / "store")})
    assert extract_job(job, client=client).ok
    with pytest.raises(ModelError, match="has no deep features; deep features come from an onnx engine"):
        train_store(str(tmp_path / "store"), {**SPEC, "features": ["deep"]}, client, tmp_path / "models")


def test_the_features_key_is_checked() -> None:
    with pytest.raises(SpecError, match="features"):
        parse_train_spec({"target": "y", "features": ["deep", "deep"]})
    with pytest.raises(SpecError, match="features"):
        parse_train_spec({"target": "y", "features": ["pixels"]})
