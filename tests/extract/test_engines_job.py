"""A job with engines [pyradiomics, onnx] on the demo cohort: one row per ROI with both kinds of
columns, from one read of each file; a model that does not fit is refused before any cluster."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
from _onnx_models import encoder  # noqa: E402

from radcluster.demo import prepare_demo  # noqa: E402
from radcluster.errors import SpecError, StoreError  # noqa: E402
from radcluster.jobs.extract import extract_job  # noqa: E402
from radcluster.spec import build_job  # noqa: E402
from radcluster.store import open_store  # noqa: E402


@pytest.fixture(scope="module")
def threads_client():
    """Workers as threads of this process, so the test can count what a task reads; two
    threads, so the ONNX Runtime sessions must follow them."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster,
        Client(cluster) as c,
    ):
        yield c


def _job(tmp_path: Path, manifest: Path, model: str, **onnx) -> object:
    entry = {"name": "enc", "model": model, "window": [-1000, 400], "spacing": [1.0, 1.0, 1.0], "margin": 5, **onnx}
    return build_job(
        {
            "kind": "extract",
            "manifest": str(manifest),
            "store": "store",
            "extraction": {"engines": ["pyradiomics", {"onnx": entry}]},
        },
        base_dir=str(tmp_path),
    )


def test_pyradiomics_and_onnx_on_the_demo_cohort_from_one_read(tmp_path: Path, threads_client, monkeypatch) -> None:
    import radcluster.extract.readers as extract  # where a scan's files are read
    from radcluster.extract.engines import onnx as onnx_engine

    manifest = prepare_demo(tmp_path / "demo", n_cases=6)
    encoder(tmp_path / "enc.onnx", size=(16, 16, 16), channels=8)
    reads: Counter = Counter()
    real_read = extract._read
    monkeypatch.setattr(
        extract, "_read", lambda case, path, role: (reads.update([(case, role)]), real_read(case, path, role))[1]
    )
    threads = []
    real_session = onnx_engine.load_session
    monkeypatch.setattr(
        onnx_engine, "load_session", lambda m, s, t, p=None: (threads.append(t), real_session(m, s, t, p))[1]
    )

    summary = extract_job(_job(tmp_path, manifest, "enc.onnx"), client=threads_client)  # a path relative to the job

    assert summary.ok, summary.failed_cases
    frame = open_store(tmp_path / "store").features()
    cases = sorted(frame["case_id"])
    assert len(frame) == summary.scans == len(set(cases))  # one row per ROI (one label per scan here)
    assert "brain1" in cases  # the demo's real sample cases too
    deep = [f"deep_enc_{i}" for i in range(8)]
    assert frame[deep].notna().all().all() and frame["original_firstorder_Mean"].notna().all()
    assert (frame[deep].to_numpy() >= 0).all()  # after ReLU and pooling
    assert frame["onnx_enc_sha256"].nunique() == 1 and frame["params_hash"].str.contains("-onnx-enc-").all()
    # every file read once, for both engines
    assert set(reads.values()) == {1} and len(reads) == 2 * summary.scans
    assert set(threads) == {2}  # ONNX Runtime's threads follow the worker's
    X, rows, names = open_store(tmp_path / "store").matrix()
    assert names[-8:] == deep and any(n.startswith("original_") for n in names)
    assert np.isfinite(X.compute()).all()
    # the same job again: nothing to extract, the engines' hash is stable
    again = extract_job(_job(tmp_path, manifest, "enc.onnx"), client=threads_client)
    assert again.skipped == summary.scans and again.rows == 0
    # another preprocessing is another params set: refused before any task, naming both
    with pytest.raises(StoreError, match="holds features extracted with params .*-onnx-enc-"):
        extract_job(_job(tmp_path, manifest, "enc.onnx", margin=6), client=threads_client)


def test_a_model_that_does_not_fit_is_refused_before_any_cluster_starts(tmp_path: Path, monkeypatch) -> None:
    import radcluster.cluster as cluster

    def no_cluster(*a, **k):
        raise AssertionError("a cluster was started")

    monkeypatch.setattr(cluster, "connect", no_cluster)
    manifest = prepare_demo(tmp_path / "demo", n_cases=2)
    encoder(tmp_path / "enc2d.onnx", dims=2, size=(16, 16))
    with pytest.raises(SpecError) as err:
        extract_job(_job(tmp_path, manifest, "enc2d.onnx"))
    assert "input 'image' has shape ['N', 1, 16, 16] (rank 4); mode '3d' needs" in str(err.value)
