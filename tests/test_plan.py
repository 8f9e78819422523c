"""How a cohort becomes tasks: a many-label scan split over idle workers, on a real LocalCluster."""

from __future__ import annotations

import pandas as pd
from conftest import PARAMS, case_paths

from radcluster import open_store
from radcluster.cohort import ALL_LABELS, Cohort, Scan
from radcluster.extract import ExtractionSettings, extract_scan
from radcluster.jobs.extract import run_extract
from radcluster.plan import make_plan
from radcluster.spec import read_params
from radcluster.synth import make_atlas


def _settings() -> ExtractionSettings:
    return ExtractionSettings(*read_params(PARAMS / "Params.yaml"))


def _plan(scans, slots):
    return make_plan(Cohort(tuple(scans), "test"), pd.DataFrame(), "p", ["Original"], slots=slots)


def test_an_atlas_scan_is_split_over_idle_slots():
    image, mask = case_paths("brain1")
    atlas = Scan("atlas", str(image), str(mask), ALL_LABELS)
    assert [t.part for t in _plan([atlas], 1).tasks] == [None]
    tasks = _plan([atlas], 3).tasks
    assert [t.part for t in tasks] == [(0, 3), (1, 3), (2, 3)]
    assert [t.key for t in tasks] == ["atlas-part1of3", "atlas-part2of3", "atlas-part3of3"]
    # a listed set of labels is split into at most one part per label
    listed = Scan("two", str(image), str(mask), (1, 2))
    assert [t.part for t in _plan([listed], 8).tasks] == [(0, 2), (1, 2)]
    # a one-label scan is never split; with as many tasks as slots, nothing is
    single = Scan("one", str(image), str(mask))
    assert [t.part for t in _plan([single], 4).tasks] == [None]
    assert [t.part for t in _plan([atlas, single], 2).tasks] == [None, None]


def _tiny_cohort(folder, n: int, big: int = 0) -> Cohort:
    """n tiny scans (a few KiB, never read by the plan) and ``big`` scans of 1 MiB."""
    scans = []
    for i in range(n + big):
        path = folder / f"s{i:03d}.nii.gz"
        path.write_bytes(b"x" * ((1 << 20) + i if i >= n else 2000 + i))
        scans.append(Scan(f"s{i:03d}", str(path), str(path)))
    return Cohort(tuple(scans), "test")


def test_tiny_scans_are_grouped_in_shrinking_groups(tmp_path):
    tasks = make_plan(_tiny_cohort(tmp_path, 600), pd.DataFrame(), "p", ["Original"], slots=2).tasks
    sizes = [len(t.scans) for t in tasks]
    assert sum(sizes) == 600 and len({s.case_id for t in tasks for s in t.scans}) == 600
    assert sizes == sorted(sizes, reverse=True)  # groups shrink towards the end of the run
    # at most _BATCH_MAX (64), then 1/(4 x 2 slots) of what is left, single scans last
    assert sizes[:4] == [64, 64, 59, 52] and sizes[-4:] == [1, 1, 1, 1]
    assert 30 <= len(tasks) <= 50  # a few dozen tasks, not 600
    # the largest files first, within and across groups
    order = [s.case_id for t in tasks for s in t.scans]
    assert order == [f"s{i:03d}" for i in range(599, -1, -1)]


def test_large_scans_are_never_grouped(tmp_path):
    tasks = make_plan(_tiny_cohort(tmp_path, 30, big=3), pd.DataFrame(), "p", ["Original"], slots=2).tasks
    assert [t.scans[0].case_id for t in tasks[:3]] == ["s032", "s031", "s030"]
    assert all(len(t.scans) == 1 for t in tasks[:3]) and sum(len(t.scans) for t in tasks) == 33


def test_split_atlas_gives_every_label_once_and_the_same_features(client, tmp_path):
    image, mask, table = make_atlas(tmp_path / "atlas", n_labels=9, seed=2, shape=(24, 40, 36))
    scan = Scan("atlas", str(image), str(mask), ALL_LABELS)
    whole = extract_scan(scan, _settings())
    assert [r["label"] for r in whole.rows] == list(range(1, 10))

    parts = [extract_scan(scan, _settings(), part=(i, 2)) for i in range(2)]
    assert [r["label"] for r in parts[0].rows] == [1, 3, 5, 7, 9]
    assert [r["label"] for r in parts[1].rows] == [2, 4, 6, 8]

    store = str(tmp_path / "store")
    summary = run_extract(Cohort((scan,), "test"), _settings(), store, client)  # 2 workers: 2 parts
    assert (summary.rows, summary.failures) == (9, 0)
    assert open_store(store).runs()[0]["tasks"] == 2
    rows = open_store(store).features().sort_values("label").reset_index(drop=True)
    assert rows["label"].tolist() == list(range(1, 10))
    expected = pd.DataFrame(whole.rows)
    names = whole.feature_names
    pd.testing.assert_frame_equal(rows[names], expected[names], check_exact=False, rtol=1e-12)

    again = run_extract(Cohort((scan,), "test"), _settings(), store, client)
    assert (again.new, again.changed, again.skipped, again.rows) == (0, 0, 1, 0)


def test_an_unreadable_split_scan_is_one_failure(client, tmp_path):
    image, _ = case_paths("brain1")
    broken = tmp_path / "broken_mask.nrrd"
    broken.write_bytes(b"NRRD0004\nnot a mask\n")
    scan = Scan("atlas", str(image), str(broken), ALL_LABELS)
    store = str(tmp_path / "store")
    summary = run_extract(Cohort((scan,), "test"), _settings(), store, client)
    assert summary.failed_cases == ["atlas"] and summary.failures == 1
    assert open_store(store).runs()[0]["tasks"] == 2
    [failure] = open_store(store).failures().to_dict("records")
    assert failure["case_id"] == "atlas" and failure["file"] == str(broken)
    assert failure["stage"] == "read"


def test_tasks_claim_memory_only_where_a_worker_runs_several(client):
    """One-thread workers never hold two scans, so their tasks stay unrestricted and Dask
    queues them (balancing the end of a run); several threads share a worker's memory."""
    from radcluster.cluster import connect
    from radcluster.jobs.extract import _worker_memory
    from radcluster.spec import LocalClusterSpec

    memory, claim, threads = _worker_memory(client)  # 2 workers x 1 thread, no MEMORY resource
    assert (claim, threads) == (False, 2) and memory > 0
    for n_threads, expected in ((1, False), (2, True)):
        spec = LocalClusterSpec(
            workers=1, threads_per_worker=n_threads, processes=False, dashboard_address=":0", memory_limit="2GiB"
        )
        with connect(spec) as local:
            memory, claim, threads = _worker_memory(local)
        assert (memory, claim, threads) == (2 * 2**30, expected, n_threads)


def test_batch_workers_claim_memory_before_any_has_joined():
    """An adaptive SLURM/PBS cluster starts with no worker: whether tasks claim memory comes
    from the spec (threads per worker process), not from the workers connected at the start."""
    from radcluster.jobs.extract import _claims_memory
    from radcluster.spec import AddressClusterSpec, LocalClusterSpec, PBSClusterSpec, SlurmClusterSpec

    assert _claims_memory(SlurmClusterSpec(cores=4, processes=2, memory="8GiB")) is True
    assert _claims_memory(PBSClusterSpec(cores=2, processes=2, memory="8GiB")) is False
    assert _claims_memory(LocalClusterSpec(threads_per_worker=2)) is None
    assert _claims_memory(AddressClusterSpec(address="tcp://127.0.0.1:8786")) is None
