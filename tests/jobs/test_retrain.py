"""Scheduled retraining: champion/challenger on a fixed hold-out, atomic promotion, one retrain at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from _stores import matrix_store, planted

from radcluster.errors import RegistryError
from radcluster.jobs.retrain import retrain_job
from radcluster.registry.champion import read_champion, registry_lock
from radcluster.spec import build_job

TRAIN = {
    "target": "outcome",
    "model": "logistic_regression",
    "cv": {"folds": 0},
    "report": False,
    "metrics": {"bootstrap": 0},
}


@pytest.fixture
def store(tmp_path):
    X, columns = planted(120, 10, seed=1)
    return matrix_store(tmp_path / "store", X, columns)


def _job(store, registry, **train):
    return build_job(
        {
            "kind": "retrain",
            "store": str(store),
            "registry": str(registry),
            "train": {**TRAIN, **train},
            "retrain": {"holdout_fraction": 0.25, "margin": 0.02},
        }
    )


def test_first_challenger_promoted_worse_one_kept(client, store, tmp_path):
    registry = tmp_path / "models"
    first = retrain_job(_job(store, registry), client=client)
    assert first.promoted and first.reason == "no champion yet"
    assert first.challenger_score > 0.85  # planted signal, judged on patients it never saw
    champion = read_champion(registry)
    assert champion["score"] == pytest.approx(first.challenger_score)
    holdout = json.loads((registry / "holdout.json").read_text())
    assert len(holdout["case_ids"]) == 30 and champion["holdout"] == holdout["version"]
    cases = json.loads((registry / os.path.basename(champion["version"]) / "cases.json").read_text())
    trained_on = set(cases["development"]) | set(cases["test"])
    assert len(trained_on) == 90
    assert {c["case_id"] for c in cases["left_out"]} == set(holdout["case_ids"])  # left out: no target
    assert not trained_on & set(holdout["case_ids"])

    # a challenger trained on a shuffled target is worse on the same hold-out: not promoted
    worse = retrain_job(_job(store, registry, shuffle_target=True), client=client)
    assert not worse.promoted
    assert worse.champion == os.path.basename(champion["version"])
    assert worse.challenger_score < worse.champion_score - 0.02
    assert read_champion(registry) == champion
    assert json.loads((registry / "holdout.json").read_text()) == holdout  # the hold-out stays fixed

    # an equally good challenger is not worse: promoted
    again = retrain_job(_job(store, registry), client=client)
    assert again.promoted and again.champion_score == pytest.approx(first.challenger_score)
    decisions = sorted((registry / "decisions").glob("*.json"))
    assert [json.loads(d.read_text())["promoted"] for d in decisions] == [True, False, True]
    assert not list(registry.glob(".champion.json.*"))  # no temporary left behind


def test_a_second_retrain_cannot_run_while_one_holds_the_lock(client, store, tmp_path):
    registry = tmp_path / "models"
    with registry_lock(registry):
        with pytest.raises(RegistryError, match=f"locked by another retrain \\(pid {os.getpid()}"):
            retrain_job(_job(store, registry), client=client)
    assert read_champion(registry) is None
    assert not (registry / ".retrain.lock").exists()


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    registry = tmp_path / "models"
    registry.mkdir()
    import socket

    (registry / ".retrain.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with registry_lock(registry) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_retrain_job_file_runs_from_the_cli(tmp_path, store):
    job = tmp_path / "retrain.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "kind": "retrain",
                "store": "store",
                "registry": "models",
                "train": TRAIN,
                "cluster": {"kind": "local", "workers": 1, "dashboard_address": ":0"},
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "radcluster.cli", "retrain", str(job)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    assert "PROMOTED: no champion yet" in proc.stdout
    assert read_champion(tmp_path / "models") is not None


def test_retrain_rejects_tasks_it_cannot_compare(store, tmp_path):
    from radcluster.errors import SpecError

    with pytest.raises(SpecError, match="retrain compares models on"):
        retrain_job(_job(store, tmp_path / "m", target="grade", model="random_forest"))
