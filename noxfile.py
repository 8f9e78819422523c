"""The parity tests against the other pyradiomics-bhklab releases the dependency range allows.

``nox -s parity`` runs two sessions: ``oldest`` installs radcluster with the range's lower
bound (``pyradiomics-bhklab>=X`` in pyproject.toml), ``newest`` with the newest release pip
resolves in the range; each runs the parity tests (the matrix's default tier, the targeted
parity tests and the baseline) in its own virtualenv. A session whose release is the one
installed where nox runs is skipped: the main test run has just tested it. ``.ci/run`` runs
this, so an upstream release that changes a feature fails CI instead of reaching a user.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

import nox
from packaging.utils import parse_sdist_filename, parse_wheel_filename

nox.options.sessions = ["parity"]

TESTS = ["tests/extract/test_parity_matrix.py", "tests/extract/test_parity.py", "tests/extract/test_extract.py"]


def _requirement() -> str:
    """The pyradiomics-bhklab requirement of pyproject.toml (the one place the range is written)."""
    deps = tomllib.loads(Path("pyproject.toml").read_text())["project"]["dependencies"]
    return next(d for d in deps if re.match(r"pyradiomics-bhklab\b", d))


def _release(which: str) -> str:
    """The version ``which`` (oldest or newest) of the range names, asking the package index for newest."""
    requirement = _requirement()
    if which == "oldest":
        return re.search(r">=\s*([\w.]+)", requirement).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, requirement], check=True
        )
        [dist] = Path(tmp).iterdir()
    if dist.suffix == ".whl":
        return str(parse_wheel_filename(dist.name)[1])
    return str(parse_sdist_filename(dist.name)[1])


@nox.session
@nox.parametrize("which", ["oldest", "newest"])
def parity(session: nox.Session, which: str) -> None:
    version = _release(which)
    installed = metadata.version("pyradiomics-bhklab")
    if version == installed and "--force" not in session.posargs:
        session.skip(f"pyradiomics-bhklab {version} ({which} in the range) is the one installed here and tested")
    session.install("-e", ".[test]", f"pyradiomics-bhklab=={version}")
    session.run("python", "-c", "from importlib.metadata import version; print(version('pyradiomics-bhklab'))")
    session.run("python", "-m", "pytest", *TESTS, "-m", "not slow", *[a for a in session.posargs if a != "--force"])
