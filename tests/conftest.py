"""Shared fixtures: the shipped real cases, manifests over them, and one real LocalCluster.

The cluster has two worker *processes* (not threads): extraction tasks are pickled, sent to
other processes and read files there, as on a real cluster. It is shared by the session
because starting one costs seconds on a 2-core machine.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from radcluster.demo import SAMPLE_CASES as SMALL_CASES
from radcluster.demo import SAMPLES

DATA = Path(__file__).parent / "data"
PARAMS = DATA / "params"
SHARED_CASES = Path(__file__).resolve().parents[2] / "shared" / "data" / "pyradiomics-cases"


def case_paths(case: str) -> tuple[Path, Path]:
    """Image and mask of a real case: the package's samples (radcluster/data/samples), CT ones from ../shared."""
    folder = SAMPLES if case in SMALL_CASES else SHARED_CASES
    image, mask = folder / f"{case}_image.nrrd", folder / f"{case}_label.nrrd"
    if not image.exists():
        pytest.skip(f"{case} is not one of radcluster's samples and {SHARED_CASES} is not present")
    return image, mask


def same_value(a: float, b: float, rtol: float) -> bool:
    """Equal, or within rtol of the larger magnitude; NaN equals only NaN."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or abs(a - b) <= rtol * max(abs(a), abs(b))


def feature_differences(row: dict, reference: dict[str, float], rtol: float = 1e-12) -> list[str]:
    """Every feature of ``reference`` that ``row`` lacks or gives differently, as text."""
    out = [f"{k}: missing" for k in reference if k not in row]
    for k, v in reference.items():
        if k in row and not same_value(float(row[k]), float(v), rtol):
            out.append(f"{k}: radcluster {row[k]!r}, reference {v!r}")
    return out


def assert_same_features(row: dict, reference: dict[str, float], rtol: float = 1e-12) -> None:
    """Every value compared (a NaN where the reference has a number fails, and vice versa)."""
    assert reference, "reference produced no features"
    differences = feature_differences(row, reference, rtol)
    assert not differences, f"{len(differences)} of {len(reference)} features differ: " + "; ".join(differences[:10])


# Every line a configured handler writes starts with its record's time: the CLI's format and
# Dask's (its workers' log) both begin with asctime.
_LOGGED_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def bare_lines(stderr: str) -> list[str]:
    """The lines of a command's stderr that no configured log handler wrote.

    A library that logs where nothing is configured (a worker process) reaches the terminal
    through ``logging.lastResort``, the bare message; ``warnings.warn`` is bare text too.
    """
    return [line for line in stderr.splitlines() if line.strip() and not _LOGGED_LINE.match(line)]


def write_manifest(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def sample_manifest(tmp_path: Path) -> Path:
    rows = [
        {"case_id": c, "image": str(case_paths(c)[0]), "mask": str(case_paths(c)[1]), "outcome": i % 2, "site": "A"}
        for i, c in enumerate(SMALL_CASES)
    ]
    return write_manifest(tmp_path / "cohort.csv", rows)


@pytest.fixture(scope="session")
def client():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", host="127.0.0.1"
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


def multilabel_case(tmp_path: Path, case: str = "brain1") -> tuple[Path, Path]:
    """brain1's lesion split into two labels, plus a third region elsewhere in the head."""
    image, mask = case_paths(case)
    m = sitk.ReadImage(str(mask))
    arr = sitk.GetArrayFromImage(m).astype(np.uint16)
    z, y, x = np.nonzero(arr)
    arr[(arr == 1) & (np.arange(arr.shape[2])[None, None, :] > np.median(x))] = 2
    arr[arr.shape[0] // 2 - 2 : arr.shape[0] // 2 + 2, 100:120, 100:125] = 3
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(m)
    path = tmp_path / "multi_label.nrrd"
    sitk.WriteImage(out, str(path))
    return image, path
