"""Every SpecError reads the same way, whichever module raises it: ``where: what; fix``.

One bad input per module that raises SpecError; each message must name where the problem is
(the key as written, or the file or argument), what is wrong, and the fix (the closest valid
name, what is accepted, or the value given).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

import radcluster
from radcluster.errors import Problem, SpecError

PACKAGE = Path(radcluster.__file__).parent


def _job_spec(tmp_path: Path) -> None:
    from radcluster.spec import build_job

    build_job({"manifest": "m.csv", "store": "s", "cluster": {"wrokers": 2, "threads_per_worker": 0}})


def _job_file(tmp_path: Path) -> None:
    from radcluster.spec import load_job

    load_job(tmp_path / "missing.yaml")


def _train_section(tmp_path: Path) -> None:
    from radcluster.spec.training import parse_train_spec

    parse_train_spec({"target": "y", "preprocess": {"pca": 0}})


def _params_file(tmp_path: Path) -> None:
    from radcluster.extract._radiomics import validate_params

    validate_params("setting:\n  binWidht: 25\n  force2D: 1\n", source="p.yaml")


def _engine(tmp_path: Path) -> None:
    from radcluster.extract.engines import engine_class

    engine_class("pyradiomic")


def _onnx_model(tmp_path: Path) -> None:
    from radcluster.extract.engines.onnx import inspect_model
    from radcluster.spec import OnnxEngineSpec

    inspect_model(OnnxEngineSpec(name="m", model=str(tmp_path / "missing.onnx")))


def _ibsi_config(tmp_path: Path) -> None:
    from radcluster.ibsi import IBSIConfig

    IBSIConfig(bin_count=32, interpolation="tricubic")


def _ibsi_mode(tmp_path: Path) -> None:
    from radcluster.ibsi.mode import check_ibsi_params

    check_ibsi_params({"featureClass": {"shape2D": None}})


def _ibsi_names(tmp_path: Path) -> None:
    from radcluster.ibsi import to_ibsi_names

    to_ibsi_names(pd.DataFrame({"case_id": ["a"]}), unmapped="ignore")


def _ibsi_compliance(tmp_path: Path) -> None:
    from radcluster.ibsi.compliance import read_reference

    (tmp_path / "ref.csv").write_text("value,tolerance,tag\n")
    read_reference(tmp_path / "ref.csv")


def _model(tmp_path: Path) -> None:
    from radcluster.learn.models import check_model

    check_model("xgboost", "binary", {"max_dpeth": 3})


def _screen(tmp_path: Path) -> None:
    from radcluster.jobs.screen import screen_store

    screen_store(str(tmp_path / "store"), time="t")


def _predict(tmp_path: Path) -> None:
    from radcluster.jobs.predict import predict_job
    from radcluster.spec import build_job

    job = build_job({"kind": "predict", "store": str(tmp_path / "s"), "registry": str(tmp_path)})
    predict_job(job, use_cluster=False)


def _synth(tmp_path: Path) -> None:
    from radcluster.synth import make_cohort

    make_cohort(tmp_path, signal=7)


BAD_INPUTS: dict[str, Callable[[Path], None]] = {
    "spec": _job_spec,
    "spec (file)": _job_file,
    "spec.training": _train_section,
    "extract._radiomics": _params_file,
    "extract.engines": _engine,
    "extract.engines.onnx": _onnx_model,
    "ibsi.config": _ibsi_config,
    "ibsi.mode": _ibsi_mode,
    "ibsi.names": _ibsi_names,
    "ibsi.compliance": _ibsi_compliance,
    "learn.models": _model,
    "jobs.screen": _screen,
    "jobs.predict": _predict,
    "synth": _synth,
}


@pytest.mark.parametrize("module", list(BAD_INPUTS))
def test_every_message_says_where_what_and_the_fix(module: str, tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        BAD_INPUTS[module](tmp_path)
    err = info.value
    assert err.problems
    for p in err.problems:
        assert all(isinstance(part, str) and part.strip() for part in (p.where, p.what, p.fix)), p
        assert p.where[-1] not in ":;" and not p.what.startswith(p.where), p
    lines = [str(p) for p in err.problems]
    if err.source is None:
        assert [str(err)] == lines
    else:  # every problem of one file, a line each under it
        head, *rest = str(err).splitlines()
        assert head == f"{err.source} has {len(lines)} problem(s):" and rest == [f"  - {line}" for line in lines]


def test_a_job_spec_lists_every_problem_with_its_key() -> None:
    from radcluster.spec import build_job

    with pytest.raises(SpecError) as info:
        build_job({"manifest": "m.csv", "store": "s", "cluster": {"wrokers": 2, "threads_per_worker": 0}})
    assert info.value.source == "job spec (arguments)"
    assert set(info.value.problems) == {
        Problem("key 'cluster.wrokers'", "unknown key", "did you mean 'workers'?"),
        Problem("key 'cluster.threads_per_worker'", "Input should be greater than or equal to 1", "got 0"),
    }


def test_a_cluster_kind_spelled_like_a_key_is_not_taken_for_the_key() -> None:
    """pydantic names the member ``address`` in the location; the user wrote ``cluster.adress``."""
    from radcluster.spec import AddressClusterSpec, build_job

    with pytest.raises(SpecError) as info:
        build_job({"manifest": "m.csv", "store": "s", "cluster": {"kind": "address", "adress": "x"}})
    described = AddressClusterSpec.model_fields["address"].description
    assert set(info.value.problems) == {
        Problem("key 'cluster.address'", "missing", f"required: {described}"),
        Problem("key 'cluster.adress'", "unknown key", "did you mean 'address'?"),
    }


def test_a_check_a_validator_borrows_keeps_its_words_under_the_key() -> None:
    from radcluster.spec import build_job

    with pytest.raises(SpecError) as info:
        build_job({"manifest": "m", "store": "s", "extraction": {"engines": ["pyradiomic"]}})
    assert info.value.problems == (
        Problem("key 'extraction.engines.0'", "feature engine 'pyradiomic' unknown", "did you mean 'pyradiomics'?"),
    )


def test_a_spec_error_survives_pickling_with_all_its_problems() -> None:
    import pickle

    err = SpecError.listing("params file 'p.yaml'", [Problem("key 'a'", "unknown key", "valid keys: b")] * 2)
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.problems == err.problems


def test_every_spec_error_in_the_package_is_built_from_where_what_and_fix() -> None:
    """A raise site that writes its own sentence would escape the template: none may."""
    calls = [
        (path.relative_to(PACKAGE), node)
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "SpecError"
    ]
    assert len(calls) > 60  # the scan sees the raise sites
    assert [f"{path}:{node.lineno}" for path, node in calls if len(node.args) != 3 or node.keywords] == []
