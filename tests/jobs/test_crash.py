"""Crash safety with real processes killed: the driver, a worker, a scan that kills its worker.

Each test runs the real command (`radcluster run`) in its own process group with its own
LocalCluster of worker processes, so a kill -9 hits exactly what a user's crash would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import PARAMS

from radcluster import open_store
from radcluster.synth import make_cohort

N_CASES = 24
pytestmark = pytest.mark.slow  # each test starts its own cluster and kills processes


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("crash-cohort"), N_CASES, seed=3, shape=(40, 40, 20))


def _job(tmp_path: Path, manifest: Path, **extraction) -> Path:
    job = {
        "kind": "extract",
        "manifest": str(manifest),
        "store": str(tmp_path / "store"),
        "extraction": {"params": str(PARAMS / "exampleCT.yaml"), "flush_rows": 1, **extraction},
        "cluster": {"kind": "local", "workers": 2, "dashboard_address": ":0"},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _start(job: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "radcluster.cli", "run", str(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )


def _parts(store: Path) -> list[Path]:
    return sorted((store / "features").glob("part-*.parquet")) if (store / "features").exists() else []


def _wait_for_parts(proc: subprocess.Popen, store: Path, n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while len(_parts(store)) < n:
        assert proc.poll() is None, f"run ended before {n} part(s) were written: {proc.communicate()}"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.05)


def _assert_each_key_once(store: Path) -> None:
    rows = open_store(store).features(all_versions=True)
    assert not rows.duplicated(["case_id", "label"]).any(), "a key was written twice"
    assert sorted(rows["case_id"]) == sorted(f"synth-{i:04d}" for i in range(1, N_CASES + 1))


def test_kill_driver_then_rerun_goes_on(tmp_path, cohort):
    job = _job(tmp_path, cohort)
    store = tmp_path / "store"
    proc = _start(job)
    _wait_for_parts(proc, store, 3)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, its scheduler and its workers
    proc.wait()
    done_before = len(open_store(store).features())
    assert 3 <= done_before < N_CASES, "the kill came too late to test anything"
    for part in _parts(store):  # every visible part is complete, readable Parquet
        import pyarrow.parquet as pq

        assert pq.read_table(part).num_rows >= 1

    rerun = subprocess.run(
        [sys.executable, "-m", "radcluster.cli", "run", str(job)], capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr
    assert f"{N_CASES - done_before} new, 0 changed, {done_before} unchanged (skipped)" in rerun.stdout
    _assert_each_key_once(store)


def test_killed_worker_is_rescheduled(tmp_path, cohort):
    job = _job(tmp_path, cohort)
    store = tmp_path / "store"
    proc = _start(job)
    _wait_for_parts(proc, store, 1)
    workers = [
        p
        for p in psutil.Process(proc.pid).children(recursive=True)
        if "spawn_main" in " ".join(p.cmdline()) or "multiprocessing" in " ".join(p.cmdline())
    ]
    assert workers, "no worker process found"
    workers[-1].kill()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert f"{N_CASES} scan(s), {N_CASES} done, 0 failed" in out
    _assert_each_key_once(store)


def test_poison_scan_is_given_up_and_recorded(tmp_path, cohort):
    job = _job(tmp_path, cohort)
    store = tmp_path / "store"
    proc = _start(job, env={"RADCLUSTER_FAULT_EXIT_CASE": "synth-0005"})
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 1, err
    fails = open_store(store).failures()
    assert "synth-0005" in set(fails["case_id"])
    poison = fails[fails["case_id"] == "synth-0005"].iloc[0]
    assert poison["stage"] == "worker" and poison["error_type"] == "KilledWorker"
    # only the poison scan is lost: the scans that shared its task were retried one per task
    assert len(fails) == 1
    features = open_store(store).features()
    assert sorted(features["case_id"]) == [f"synth-{i:04d}" for i in range(1, N_CASES + 1) if i != 5]
    assert f"{N_CASES} scan(s), {N_CASES - 1} done, 1 failed" in out


def test_scan_larger_than_any_worker_fails_up_front(tmp_path, cohort):
    # A 512 x 512 x 1000 CT as a detached NRRD header: the plan reads only the header.
    big = tmp_path / "big.nhdr"
    (tmp_path / "big.raw").write_bytes(b"")
    big.write_text(
        "NRRD0004\ntype: short\ndimension: 3\nsizes: 512 512 1000\nspacings: 0.7 0.7 1\n"
        "encoding: raw\nendian: little\ndata file: big.raw\n"
    )
    import pandas as pd

    frame = pd.read_csv(cohort).head(3)
    for col in ("image", "mask"):
        frame[col] = [str(cohort.parent / p) for p in frame[col]]
    frame.loc[len(frame)] = {"case_id": "huge", "image": str(big), "mask": str(big)}
    manifest = tmp_path / "with_big.csv"
    frame.to_csv(manifest, index=False)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "radcluster.cli",
            "extract",
            str(manifest),
            "--out",
            str(tmp_path / "store"),
            "--workers",
            "2",
            "--memory-limit",
            "1GiB",
            "--dashboard-address",
            ":0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stderr
    fails = open_store(tmp_path / "store").failures()
    [huge] = fails.to_dict("records")
    assert huge["case_id"] == "huge" and huge["stage"] == "plan" and huge["error_type"] == "ScanTooLarge"
    assert "the largest worker has 1.0 GiB" in huge["message"] and "big.nhdr" in huge["message"]
    assert len(open_store(tmp_path / "store").features()) == 3


def test_split_scan_with_a_poisoned_part_is_written_whole_or_not_at_all(tmp_path):
    """An atlas scan split over both workers, one part of which kills its worker every time:
    the other part's labels are not written beside the failure (a case half done would be
    skipped by the next run); the next run extracts every label, each once."""
    from radcluster.synth import make_atlas

    image, mask, _ = make_atlas(tmp_path / "atlas", n_labels=8, seed=4, shape=(24, 40, 36))
    manifest = tmp_path / "atlas.csv"
    manifest.write_text(f"case_id,image,mask,label\natlas,{image},{mask},all\n")
    job = _job(tmp_path, manifest, params=str(PARAMS / "Params.yaml"))
    store = tmp_path / "store"
    proc = _start(job, env={"RADCLUSTER_FAULT_EXIT_CASE": "atlas-part2of2"})
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 1, err
    assert open_store(store).features().empty
    [failure] = open_store(store).failures().to_dict("records")
    assert (failure["case_id"], failure["stage"], failure["error_type"]) == ("atlas", "worker", "KilledWorker")

    rerun = subprocess.run(
        [sys.executable, "-m", "radcluster.cli", "run", str(job)], capture_output=True, text=True, timeout=900
    )
    assert rerun.returncode == 0, rerun.stderr
    rows = open_store(store).features(all_versions=True)
    assert sorted(rows["label"]) == list(range(1, 9)) and set(rows["case_id"]) == {"atlas"}
    assert open_store(store).failures().empty  # superseded by the complete extraction
