"""What `radcluster train` and `extract` print on a user's terminal: their own lines, not
xgboost's internals or pyradiomics' per-scan log from the workers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _stores import matrix_store, planted
from conftest import bare_lines

# xgboost's collective start-up line on each training worker ("Task [xgboost.dask-0]:tcp://...
# got rank 0") and the warning of a worker left without rows of one set.
_XGBOOST_LINES = re.compile(r"got rank \d|connected to the tracker|empty DMatrix")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    X, columns = planted(120, 8)
    return matrix_store(tmp_path_factory.mktemp("quiet") / "store", X, columns)


def _train(store: Path, registry: Path, *flags: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "radcluster.cli", *flags, "train", str(store), "--target", "outcome"]
        + ["--folds", "2", "--no-report", "--workers", "2", "--dashboard-address", ":0", "-r", str(registry)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "fold 2:" in proc.stdout  # it trained xgboost, on two worker processes
    return proc.stdout + proc.stderr


def test_xgboost_collective_lines_stay_off_the_terminal(store, tmp_path):
    out = _train(store, tmp_path / "models")
    assert not _XGBOOST_LINES.findall(out), out


@pytest.mark.slow  # a second whole `radcluster train` in a fresh process, for the -v side only
def test_with_v_they_are_logged(store, tmp_path):
    out = _train(store, tmp_path / "models", "-v")
    assert re.search(r"INFO xgboost.*got rank \d", out), out


def _extract(manifest: Path, store: Path, *flags: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "radcluster.cli", "extract", str(manifest), "--out", str(store), *flags]
        + ["--workers", "1", "--dashboard-address", ":0"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "3 done, 0 failed" in proc.stdout, proc.stdout
    return proc


def test_extract_with_the_default_params_prints_no_worker_lines(sample_manifest, tmp_path):
    """The default params (pyradiomics' example Params.yaml) enable GLCM Sum Average, on which
    pyradiomics warns on every scan; the workers printed it bare, once per scan (logging's
    last resort: the shared-discretisation classes logged outside pyradiomics' logger, so
    outside the per-task capture). It is a note about the params: in the run record, at -v."""
    proc = _extract(sample_manifest, tmp_path / "store")
    assert not bare_lines(proc.stderr), proc.stderr
    assert "Sum Average" not in proc.stderr, proc.stderr
    record = json.loads(next((tmp_path / "store" / "runs").glob("*.json")).read_text())
    note = "GLCM is symmetrical, therefore Sum Average = 2 * Joint Average, only 1 needs to be calculated"
    assert record["pyradiomics_warnings"] == {note: 3}


def test_a_params_warning_is_printed_once_by_the_command_not_by_each_worker(sample_manifest, tmp_path):
    """pyradiomics warns about a fixed bin count when it builds the extractor: the command does
    when it checks the params; each worker process, building it again, printed it bare too."""
    params = tmp_path / "bincount.yaml"
    params.write_text("imageType: {Original: {}}\nfeatureClass: {firstorder: [Mean]}\nsetting: {binCount: 16}\n")
    proc = _extract(sample_manifest, tmp_path / "store", "--params", str(params))
    assert not bare_lines(proc.stderr), proc.stderr
    assert proc.stderr.count("Fixed bin Count enabled!") == 1, proc.stderr
    assert "WARNING radiomics.featureextractor: Fixed bin Count enabled!" in proc.stderr
