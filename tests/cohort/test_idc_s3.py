"""An IDC manifest read from S3: the RIDER files under IDC's key layout on a loopback S3 server.

``cohort idc`` picks the series from the index ``idc-index-data`` ships; the RIDER study holds
the test and the retest CT, so the SEG's header is read from the bucket to pair it. Then
``radcluster extract`` reads the series and the SEG from ``s3://`` without credentials
(anonymously, as from IDC's public buckets).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pydicom
import pytest
from _dicom import QUICK_PARAMS, RIDER_SERIES, TUMOUR_SLICES, ct_files, rider
from test_s3 import s3_env  # noqa: F401  (the loopback S3 server fixture)

from radcluster import open_store
from radcluster.cohort.idc import idc_manifest

pytestmark = pytest.mark.slow  # starts a server


def test_idc_manifest_resolved_from_s3_and_extracted_anonymously(s3_env, tmp_path, monkeypatch):  # noqa: F811
    import s3fs

    seg_file = rider() / "SEG" / "1-1.dcm"
    study = pydicom.dcmread(seg_file, stop_before_pixels=True).StudyInstanceUID
    offline, _ = idc_manifest(
        "rider_lung_ct", segmentation="seg", analysis_results=True, studies=[study], resolve=False
    )
    assert offline.empty  # two CT series in the study: the index alone cannot pair its SEGs

    import duckdb

    from radcluster.cohort.idc import index_path

    urls = dict(
        duckdb.execute(
            "SELECT SeriesInstanceUID, series_aws_url FROM read_parquet(?) WHERE StudyInstanceUID = ?",
            [index_path(), study],
        ).fetchall()
    )
    seg_uid = pydicom.dcmread(seg_file, stop_before_pixels=True).SeriesInstanceUID
    # IDC's buckets and objects are public: readable without credentials
    fs = s3fs.S3FileSystem(skip_instance_cache=True, s3_additional_kwargs={"ACL": "public-read"})
    for uid, files in ((RIDER_SERIES, [ct_files()[i] for i in TUMOUR_SLICES]), (seg_uid, [seg_file])):
        prefix = urls[uid].removeprefix("s3://").removesuffix("*")
        if not fs.exists(prefix.split("/")[0]):
            fs.mkdir(prefix.split("/")[0], acl="public-read")
        for i, f in enumerate(files):
            fs.put_file(str(f), f"{prefix}{i:04d}.dcm")  # IDC: s3://bucket/<series uuid>/<instance uuid>.dcm

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")  # from here on, anonymous
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    frame, problems = idc_manifest("rider_lung_ct", segmentation="seg", analysis_results=True, studies=[study])
    ours = frame[frame["mask"] == urls[seg_uid].removesuffix("*")]
    assert list(ours["series_uid"]) == [RIDER_SERIES] and list(ours["image"]) == [urls[RIDER_SERIES][:-1]]
    # the study's other SEGs are not on this server: each is named, none stops the rest
    assert problems and all(p.reason == "the segmentation's folder is empty" for p in problems)

    manifest = tmp_path / "idc.csv"
    ours.to_csv(manifest, index=False)
    params = tmp_path / "quick.yaml"
    params.write_text(QUICK_PARAMS)
    cmd = [sys.executable, "-m", "radcluster.cli", "extract", str(manifest), "--out", str(tmp_path / "store")]
    cmd += ["--params", str(params), "--workers", "1", "--dashboard-address", ":0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = open_store(tmp_path / "store").features().sort_values("label")
    assert list(rows["label_name"]) == ["GTVp_test_man", "GTVp_test_auto"]
    voxel = 0.576172 * 0.576172 * 1.25  # mm3: the README's voxel counts of the two segments
    assert list(rows["original_shape_VoxelVolume"] / voxel) == pytest.approx([132_507, 147_522], rel=1e-9)
    assert set(rows["series_uid"]) == {RIDER_SERIES}
