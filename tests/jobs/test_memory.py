"""Memory claims at work: a CT-sized scan on a worker whose memory cannot hold it beside another."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from radcluster.cohort import Cohort, Scan
from radcluster.extract import ExtractionSettings
from radcluster.jobs.extract import run_extract
from radcluster.plan import make_plan
from radcluster.spec import read_params

pytestmark = pytest.mark.slow  # writes and extracts a 512 x 512 x 150 CT (78 MB)


def _scan(folder, name: str, shape: tuple[int, int, int], seed: int) -> Scan:
    """An uncompressed int16 CT-like volume (so its file size is its voxel size) and a cube mask."""
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.normal(40, 30, size=shape).astype(np.int16))
    image.SetSpacing((0.7, 0.7, 1.0))
    mask = np.zeros(shape, np.uint8)
    z, y, x = (s // 2 for s in shape)
    mask[z - 5 : z + 5, y - 12 : y + 12, x - 12 : x + 12] = 1
    labels = sitk.GetImageFromArray(mask)
    labels.CopyInformation(image)
    sitk.WriteImage(image, str(folder / f"{name}.nrrd"), useCompression=False)
    sitk.WriteImage(labels, str(folder / f"{name}_mask.nrrd"), useCompression=True)
    return Scan(name, str(folder / f"{name}.nrrd"), str(folder / f"{name}_mask.nrrd"))


def test_a_large_scan_never_runs_beside_another_and_no_worker_is_killed(tmp_path):
    from distributed import Client, LocalCluster, get_task_stream

    params = tmp_path / "params.yaml"
    params.write_text("imageType: {Original: {}}\nfeatureClass: {firstorder: []}\nsetting: {binWidth: 25, label: 1}\n")
    settings = ExtractionSettings(*read_params(params))
    big = _scan(tmp_path, "big", (150, 512, 512), seed=0)  # a chest CT's size
    small = [_scan(tmp_path, f"small{i}", (48, 128, 128), seed=i + 1) for i in range(6)]
    cohort = Cohort((*small, big), "test")
    # The plan's claims, from the headers: the worker's memory is set so that the big scan
    # fits alone, two small ones fit together, and the big one beside any other does not.
    claims = {t.scans[0].case_id: t.memory for t in make_plan(cohort, pd.DataFrame(), "p", ["Original"], slots=2).tasks}
    assert claims["big"] > 500 * 2**20 and claims["big"] > 40 * max(claims[s.case_id] for s in small)
    budget = claims["big"] + min(claims[s.case_id] for s in small) // 2

    # One worker with two threads: without claims it would run the big scan beside a small one.
    # Its MEMORY resource is the budget for scans; its process limit leaves room for the
    # worker's own ~200 MB, so a kill here would mean a claim was ignored.
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=True,
            memory_limit=budget + (768 << 20),
            resources={"MEMORY": budget},
            dashboard_address=":0",
            host="127.0.0.1",
        ) as cluster,
        Client(cluster) as client,
    ):
        pid = client.run(os.getpid)
        with get_task_stream(client) as stream:
            summary = run_extract(cohort, settings, str(tmp_path / "store"), client)
        assert client.run(os.getpid) == pid, "the worker was restarted"
    assert (summary.rows, summary.failures) == (7, 0)

    spans = {}
    for rec in stream.data:
        if rec["key"].startswith("extract-"):
            compute = [s for s in rec["startstops"] if s["action"] == "compute"]
            spans[rec["key"]] = (compute[0]["start"], compute[-1]["stop"])
    [big_key] = [k for k in spans if k.startswith("extract-big-")]
    start, stop = spans.pop(big_key)
    assert len(spans) == 6
    # The worker stamps a task's stop after it has handed the result over, ~10 ms after the
    # next task may start: a start within 50 ms of the stop is after it. Without claims the
    # small scans run beside the large one for its whole 2+ seconds.
    overlapping = [k for k, (s, e) in spans.items() if s < stop - 0.05 and e > start + 0.05]
    assert not overlapping, f"ran beside the large scan ({start}, {stop}): {overlapping}; all: {spans}; {claims}"
