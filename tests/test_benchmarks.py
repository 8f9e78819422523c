"""The benchmark scripts stay runnable against the package they measure: nothing in the test
suite runs them (they time things), so a moved or renamed name broke them unnoticed twice
(the profile's patch targets after the layout move, the versions line after ``_software``)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_script_imports_and_parses_its_arguments(script):
    run = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage:"), run.stdout


def test_the_versions_line_and_every_profile_patch_target_exist(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _common
    import extract_throughput

    assert _common._versions().startswith("radcluster ")
    assert ", pyradiomics-bhklab " in _common._versions()
    stages = extract_throughput._Stages()
    with contextlib.ExitStack() as stack:  # every attribute it patches must exist
        extract_throughput._instrument(stack, stages)
