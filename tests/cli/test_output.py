"""What `radcluster train` prints on a user's terminal: its own lines, not xgboost's internals."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from _stores import matrix_store, planted

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
