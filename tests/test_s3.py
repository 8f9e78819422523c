"""Remote storage against a real S3-compatible server on 127.0.0.1 (moto's standalone server).

Images are read from S3 by the workers, the store is written to S3, and a re-run reads it back
and skips what is there. Credentials and the endpoint come from the environment, as on a cloud.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import PARAMS, SMALL_CASES, case_paths

pytestmark = pytest.mark.slow  # starts a server


@pytest.fixture(scope="module")
def s3_env():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.2)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_extract_from_and_into_s3(s3_env, tmp_path):
    import s3fs

    from radcluster import open_store

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("cohort")
    fs.mkdir("results")
    lines = ["case_id,image,mask,outcome"]
    for i, case in enumerate(SMALL_CASES):
        image, mask = case_paths(case)
        fs.put_file(str(image), f"cohort/scans/{image.name}")
        fs.put_file(str(mask), f"cohort/scans/{mask.name}")
        lines.append(f"{case},scans/{image.name},scans/{mask.name},{i % 2}")  # relative to the manifest
    fs.pipe("cohort/cohort.csv", ("\n".join(lines) + "\n").encode())

    cmd = [sys.executable, "-m", "radcluster.cli", "extract", "s3://cohort/cohort.csv", "--out",
           "s3://results/store", "--params", str(PARAMS / "Params.yaml"), "--workers", "2",
           "--dashboard-address", ":0"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **s3_env})
    assert first.returncode == 0, first.stderr
    assert "3 new, 0 changed, 0 unchanged" in first.stdout

    store = open_store("s3://results/store")
    features = store.features()
    assert sorted(features["case_id"]) == sorted(SMALL_CASES)
    assert features["image_hash"].notna().all()
    X, rows, names = store.matrix()
    assert X.shape == (3, 100) and rows["case_id"].tolist() == features["case_id"].tolist()
    assert not [p for p in fs.find("results/store") if "/.tmp-" in p]

    # the same values as a local extraction of the same files
    from radcluster.cohort import Scan
    from radcluster.extract import ExtractionSettings, extract_scan
    from radcluster.spec import read_params

    text, digest = read_params(PARAMS / "Params.yaml")
    image, mask = case_paths("brain1")
    local = extract_scan(Scan("brain1", str(image), str(mask)), ExtractionSettings(text, digest)).rows[0]
    remote = features.set_index("case_id").loc["brain1"]
    assert remote["original_glcm_Contrast"] == local["original_glcm_Contrast"]
    assert remote["image_hash"] == local["image_hash"]

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **s3_env})
    assert again.returncode == 0, again.stderr
    assert "0 new, 0 changed, 3 unchanged (skipped)" in again.stdout
    assert len(open_store("s3://results/store").features(all_versions=True)) == 3
