"""The store on its own: current rows, the appended matrix, compaction (with kills), fast reads.

Stores are written through the store's API (no extraction), so every value is known.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _stores import matrix_store

from radcluster.errors import FailureRecord, StoreError
from radcluster.store import open_store

NAMES = [f"original_firstorder_F{j}" for j in range(6)]


def fill(url: str, parts: int, per_part: int = 4, *, params: str = "P", start: int = 0) -> None:
    """``parts`` parts of ``per_part`` cases each; case i's features are i, i+1, ... (known)."""
    store = open_store(url, must_exist=False)
    store.claim_params(params)
    for seq in range(parts):
        stamp = pd.Timestamp.now("UTC").isoformat()
        rows = []
        for k in range(per_part):
            i = (start + seq) * per_part + k
            rows.append(
                {
                    "case_id": f"c{i:05d}",
                    "label": 1,
                    "params_hash": params,
                    "extracted_at": stamp,
                    "site": "AB"[i % 2],
                    **{n: float(i + j) for j, n in enumerate(NAMES)},
                }
            )
        store.write_part(
            "features", rows, run_id="r0", seq=start + seq, metadata={"features": NAMES, "params_hash": params}
        )
        frame = pd.DataFrame(rows)
        store.append_matrix(frame[["case_id", "label", "extracted_at"]], frame[NAMES].to_numpy(), NAMES)


def _ids(url: str) -> list[str]:
    return sorted(open_store(url).features(["original_firstorder_F0"], all_versions=True)["case_id"])


def test_reads_push_columns_and_rows_down(tmp_path):
    url = str(tmp_path / "store")
    fill(url, parts=5)
    store = open_store(url)
    frame = store.features(["original_firstorder_F2"], filters=[("site", "==", "B")])
    assert list(frame.columns) == ["case_id", "label", "extracted_at", "original_firstorder_F2"]
    assert frame["case_id"].tolist() == [f"c{i:05d}" for i in range(1, 20, 2)]
    assert frame["original_firstorder_F2"].tolist() == [float(i + 2) for i in range(1, 20, 2)]
    lazy = store.features(["original_firstorder_F2", "site"], filters=[("site", "==", "B")], as_dask=True)
    assert lazy.npartitions == 5
    pd.testing.assert_frame_equal(
        lazy.compute().sort_values("case_id").reset_index(drop=True)[frame.columns], frame, check_dtype=False
    )


def test_newest_extraction_of_a_case_is_current_and_a_filter_never_brings_back_an_old_row(tmp_path):
    url = str(tmp_path / "store")
    fill(url, parts=1)  # c00000..c00003, label 1, site A/B by parity
    store = open_store(url)
    # c00001 re-extracted with two labels, now at site A; c00002 with label 2 only (label 1 retired)
    stamp = pd.Timestamp.now("UTC").isoformat()
    rows = [
        {
            "case_id": "c00001",
            "label": lab,
            "params_hash": "P",
            "extracted_at": stamp,
            "site": "A",
            **dict.fromkeys(NAMES, 100.0 + lab),
        }
        for lab in (1, 2)
    ]
    rows.append(
        {
            "case_id": "c00002",
            "label": 2,
            "params_hash": "P",
            "extracted_at": stamp,
            "site": "A",
            **dict.fromkeys(NAMES, 200.0),
        }
    )
    store.write_part("features", rows, run_id="r1", seq=0, metadata={"features": NAMES, "params_hash": "P"})
    frame = pd.DataFrame(rows)
    store.append_matrix(frame[["case_id", "label", "extracted_at"]], frame[NAMES].to_numpy(), NAMES)

    current = store.features()
    assert list(zip(current["case_id"], current["label"], strict=True)) == [
        ("c00000", 1),
        ("c00001", 1),
        ("c00001", 2),
        ("c00002", 2),
        ("c00003", 1),
    ]
    assert current["original_firstorder_F0"].tolist() == [0.0, 101.0, 102.0, 200.0, 3.0]
    # the old c00001 row was at site B: a filter on site must not make it current again
    assert store.features(filters=[("site", "==", "B")])["case_id"].tolist() == ["c00003"]
    X, ids, names = store.matrix()
    assert sorted(zip(ids["case_id"], ids["label"], strict=True)) == sorted(
        zip(current["case_id"], current["label"], strict=True)
    )
    by_key = current.set_index(["case_id", "label"])
    np.testing.assert_array_equal(
        X.compute(), by_key.loc[list(zip(ids["case_id"], ids["label"], strict=True))][names].to_numpy()
    )
    assert len(store.features(all_versions=True)) == 7


def test_other_params_are_refused(tmp_path):
    url = str(tmp_path / "store")
    fill(url, parts=1, params="P")
    with pytest.raises(StoreError, match="holds features extracted with params P.*these params are Q"):
        open_store(url).claim_params("Q")


def test_matrix_is_appended_and_a_missed_append_is_synced(tmp_path):
    url = str(tmp_path / "store")
    fill(url, parts=3)
    store = open_store(url)
    assert store.matrix_attrs()["rows"] == 12
    # a run killed between its part and the matrix append: the next sync appends just that
    rows = [
        {
            "case_id": "late",
            "label": 1,
            "params_hash": "P",
            "extracted_at": pd.Timestamp.now("UTC").isoformat(),
            **dict.fromkeys(NAMES, 7.0),
        }
    ]
    store.write_part("features", rows, run_id="r9", seq=0, metadata={"features": NAMES, "params_hash": "P"})
    assert store.sync_matrix() == 1 and store.sync_matrix() == 0
    X, ids, _ = store.matrix()
    assert X.shape == (13, 6) and ids["case_id"].iloc[-1] == "late"
    np.testing.assert_array_equal(X[-1].compute(), np.full(6, 7.0))
    assert store.build_matrix() == 13  # rebuilt from the parts: the same rows


def test_compaction_merges_parts_and_a_concurrent_reader_sees_every_row_once(tmp_path):
    url = str(tmp_path / "store")
    fill(url, parts=40, per_part=3)
    expected = [f"c{i:05d}" for i in range(120)]
    seen: list[list[str]] = []
    stop = threading.Event()

    def read_all():
        while not stop.is_set():
            seen.append(_ids(url))

    reader = threading.Thread(target=read_all)
    reader.start()
    try:
        result = open_store(url).compact(target_bytes=1 << 20, min_parts=2)
        fill(url, parts=10, per_part=3, start=40)  # a run goes on writing after it
        again = open_store(url).compact(target_bytes=1 << 20, min_parts=2)
    finally:
        stop.set()
        reader.join()
    assert result["features"] == (40, 1) and again["features"] == (11, 1)
    # each read saw every row written so far exactly once: the first 120, or those and whole
    # parts written since, never a row twice or missing
    assert seen and all(ids == [f"c{i:05d}" for i in range(len(ids))] and len(ids) % 3 == 0 for ids in seen)
    assert min(len(ids) for ids in seen) == len(expected)
    assert _ids(url) == [f"c{i:05d}" for i in range(150)]
    files = sorted(p.name for p in (Path(url) / "features").iterdir())
    assert [f for f in files if f.endswith(".parquet")] == [next(f for f in files if f.startswith("compact-000002"))]
    assert open_store(url).info()["tables"]["features"] == {
        "rows": 150,
        "parts": 1,
        "bytes": open_store(url).info()["tables"]["features"]["bytes"],
        "compacted": 1,
        "generation": 2,
    }


_KILL = """
import os, sys
from radcluster import _io
from radcluster.store import open_store
where = sys.argv[2]
real = getattr(_io, where)
def die(*args, **kwargs):
    os._exit(9)  # killed at this point, as a kill -9 would
setattr(_io, where, die)
open_store(sys.argv[1]).compact(target_bytes=1 << 20)
"""


@pytest.mark.parametrize("where", ["create_exclusive", "remove"])  # before and after the commit
def test_a_compaction_killed_midway_loses_and_doubles_nothing(tmp_path, where):
    url = str(tmp_path / "store")
    fill(url, parts=20, per_part=2)
    expected = [f"c{i:05d}" for i in range(40)]
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILL), url, where],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    assert proc.returncode == 9, proc.stderr
    folder = Path(url) / "features"
    names = sorted(p.name for p in folder.iterdir())
    assert any(n.startswith("compact-") for n in names)  # it got as far as writing merged rows
    assert _ids(url) == expected  # every row once, whichever side of the commit it died on
    assert open_store(url).compact(target_bytes=1 << 20)["features"][1] == 1
    assert _ids(url) == expected
    assert len([p for p in folder.iterdir() if p.suffix == ".parquet"]) == 1  # the leftovers are gone


def test_store_commands_print_info_and_compact(tmp_path):
    url = str(tmp_path / "store")
    fill(url, parts=6, per_part=2)
    cmd = [sys.executable, "-m", "radcluster.cli", "store"]
    info = subprocess.run([*cmd, "info", url], capture_output=True, text=True, timeout=120)
    assert info.returncode == 0, info.stderr
    assert "rows      12 current (12 case(s)), 12 stored in all" in info.stdout
    assert "matrix    12 current of 12 row(s) x 6 features" in info.stdout
    assert "features  6 part file(s)" in info.stdout and "params    P" in info.stdout
    compact = subprocess.run([*cmd, "compact", url], capture_output=True, text=True, timeout=120)
    assert compact.returncode == 0, compact.stderr
    assert "features: 6 -> 1 part file(s)" in compact.stdout
    after = subprocess.run([*cmd, "info", url], capture_output=True, text=True, timeout=120)
    assert "features  1 part file(s)" in after.stdout and "(1 compacted, generation 1)" in after.stdout
    assert _ids(url) == [f"c{i:05d}" for i in range(12)]


def test_store_info_lists_every_table_and_summarises_the_stability_table(tmp_path, capsys):
    """Four scans, each with two perturbed copies (k = 3), written as an extraction with
    extraction.perturb leaves them, and the ICC table the extract job writes from them."""
    from radcluster.cli import main
    from radcluster.learn.stability import store_stability

    x = np.array([0.0, 10.0, 20.0, 30.0])
    copies = {  # feature -> (scan, copy 1, copy 2) of each scan
        "stable": np.stack([x, x, x], 1),  # ICC(1,1) 1
        "spread": np.stack([x, x + 1, x - 1], 1),  # MS_rows 500, MS_within 1: 499 / 502
        "noisy": np.stack([x / 10, x / 10 + 5, x / 10 - 5], 1),  # MS_rows 5, MS_within 25: -20 / 55
        "constant": np.full((4, 3), 5.0),  # no variance: NaN
    }
    names = [f"original_firstorder_{n}" for n in copies]
    X = np.concatenate([np.stack([v[:, j] for v in copies.values()], 1) for j in range(3)])
    scans = ["a", "b", "c", "d"]
    url = matrix_store(
        tmp_path / "store",
        X,
        {
            "perturbation_of": [None] * 4 + scans * 2,
            "perturbation": [None] * 4 + ["p1"] * 4 + ["p2"] * 4,
        },
        names=names,
        case_ids=scans + [f"{c}~p1" for c in scans] + [f"{c}~p2" for c in scans],
    )
    store = open_store(url)
    failure = FailureRecord("e", None, "read", "FileNotFoundError", "case 'e': read failed (e.nrrd)", "e.nrrd")
    store.write_part("failures", [failure.row(run_id="test", failed_at="2026-01-01T00:00:00")], run_id="test", seq=0)
    store.write_stability(store_stability(store))

    info = open_store(url).info()
    tables = info["tables"]
    assert list(tables) == ["features", "failures", "stability"]
    assert (tables["features"]["rows"], tables["features"]["parts"]) == (12, 1)
    assert (tables["failures"]["rows"], tables["failures"]["parts"]) == (1, 1)
    assert (tables["stability"]["rows"], tables["stability"]["parts"]) == (4, 1)
    assert tables["stability"]["bytes"] == (Path(url) / "stability.parquet").stat().st_size
    icc = store.stability().set_index("feature")["icc"]
    np.testing.assert_allclose(icc[names[:3]], [1.0, 499 / 502, -20 / 55], rtol=1e-12)
    assert np.isnan(icc[names[3]])
    bands = {"ICC >= 0.9": 2, "0.75-0.9": 0, "0.5-0.75": 0, "< 0.5": 1, "undefined": 1}
    assert info["stability"] == {"perturbation": {"features": 4, "scans": [4, 4], "k": 3, "icc": bands}}

    assert main(["store", "info", str(url)]) == 0
    out = capsys.readouterr().out
    assert "features  1 part file(s), 12 row(s)" in out and "failures  1 part file(s), 1 row(s)" in out
    assert "failed    1 case(s)" in out
    assert f"stability 1 part file(s), 4 row(s), {tables['stability']['bytes'] / 1024:.1f} KiB\n" in out
    assert (
        "  perturbation: ICC of 4 feature(s) over 4 scan(s), 3 measurements each; "
        "ICC >= 0.9: 2, 0.75-0.9: 0, 0.5-0.75: 0, < 0.5: 1, undefined: 1\n"
    ) in out


def test_matrix_append_places_reordered_and_new_features_by_name(tmp_path):
    """Rows whose features come in the stored order are written as they are; rows in another
    order, or with a feature the matrix lacks, land in their columns by name (NaN where a row
    has no value)."""
    store = open_store(tmp_path / "store", must_exist=False)
    keys = pd.DataFrame({"case_id": ["a", "b"], "label": [1, 1], "extracted_at": ["t1", "t1"]})
    store.append_matrix(keys, np.array([[1.0, 2.0], [3.0, 4.0]]), ["f1", "f2"])
    keys2 = pd.DataFrame({"case_id": ["c"], "label": [1], "extracted_at": ["t2"]})
    store.append_matrix(keys2, np.array([[9.0, 5.0, 6.0]]), ["f3", "f2", "f1"])
    store.append_matrix(keys.assign(case_id=["d", "e"]), np.array([[7.0, 8.0], [0.5, 0.25]]), ["f1", "f2"])
    X, rows, names = store.matrix()
    assert names == ["f1", "f2", "f3"] and list(rows["case_id"]) == ["a", "b", "c", "d", "e"]
    np.testing.assert_array_equal(
        X.compute(),
        [[1, 2, np.nan], [3, 4, np.nan], [6, 5, 9], [7, 8, np.nan], [0.5, 0.25, np.nan]],
    )


def test_current_rows_are_those_of_each_cases_latest_extraction():
    """One rule finds current rows, by sorting: for the matrix's key arrays (numpy text, no
    pandas frame of 100k keys) and for the Parquet keys (latest_extractions). On random keys,
    a row is current exactly when its stamp is its case's latest."""
    from numpy.dtypes import StringDType

    from radcluster.store import _of_latest_extraction, latest_extractions

    rng = np.random.default_rng(0)
    for n in [0, 1, *rng.integers(2, 60, 200)]:
        cases = [f"c{x}" for x in rng.integers(0, 8, n)]
        stamps = [f"2026-12-0{x}" for x in rng.integers(1, 5, n)]
        newest = {c: max(t for c2, t in zip(cases, stamps, strict=True) if c2 == c) for c in cases}
        expected = [t == newest[c] for c, t in zip(cases, stamps, strict=True)]
        got = _of_latest_extraction(np.array(cases, dtype=StringDType()), np.array(stamps, dtype=StringDType()))
        assert got.tolist() == expected
        latest = latest_extractions(pd.DataFrame({"case_id": cases, "extracted_at": stamps}, dtype=object))
        assert list(latest.itertuples(index=False, name=None)) == sorted(newest.items())
