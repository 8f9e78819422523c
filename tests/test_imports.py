"""What ``radcluster extract`` imports before its cluster starts: the command waits for every
import on its path, so a module it does not need there is start-up time of every run."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import PARAMS

# Modules of other commands and engines (DICOM, ONNX, survival models, reports) and scipy.special,
# which only the LBP3D check needs (importing it cost ~0.5 s of every extract command).
NOT_ON_THE_EXTRACT_PATH = (
    "scipy.special",
    "pydicom",
    "highdicom",
    "nibabel",
    "onnxruntime",
    "statsmodels",
    "sksurv",
    "skops",
    "sklearn",
    "matplotlib",
    "duckdb",
)

_PROBE = """
import json, sys
from radcluster.cli import build_parser
import radcluster.jobs.extract
from radcluster.spec import read_params

build_parser()
read_params({params!r})
print(json.dumps(sorted(m for m in {names!r} if m in sys.modules)))
"""


def test_extract_command_path_imports_no_module_it_does_not_use():
    """The CLI, the extract job's module and the params check (what runs before the cluster)."""
    code = _PROBE.format(params=str(PARAMS / "Params.yaml"), names=NOT_ON_THE_EXTRACT_PATH)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
