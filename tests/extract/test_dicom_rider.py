"""The whole RIDER series through the commands a user types: scan, extract, compare.

`radcluster cohort scan` finds one CT series with one RTSTRUCT (2 ROIs) and one SEG (2
segments); `radcluster extract` with the default params gives 4 named rows; the SEG rows equal
pyradiomics' ``execute()`` on SimpleITK's ImageSeriesReader image with highdicom's decoded
frames as the mask, bit for bit.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from _dicom import RIDER_SERIES, decoded_seg, rider
from radiomics import featureextractor

from radcluster import open_store
from radcluster.cli import main
from radcluster.spec import read_params

pytestmark = pytest.mark.slow  # 236 slices, all feature classes, four ROIs of ~140,000 voxels


def test_scan_and_extract_rider_then_seg_rows_equal_the_reference(tmp_path, capsys):
    manifest = tmp_path / "cohort.csv"
    assert main(["cohort", "scan", str(rider()), "-o", str(manifest)]) == 0
    assert "found 1 image series, 1 RTSTRUCT (2 ROIs) and 1 SEG (2 segments)" in capsys.readouterr().out
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "radcluster.cli", "extract", str(manifest), "--out", str(store)]
    proc = subprocess.run(cmd + ["--workers", "2", "--dashboard-address", ":0"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = open_store(store).features()
    assert len(rows) == 4 and set(rows["series_uid"]) == {RIDER_SERIES}
    named = sorted(zip(rows["segmentation"], rows["label"], rows["label_name"], strict=True))
    assert named == [
        ("RTSTRUCT", 1, "GTVp_test_auto"),
        ("RTSTRUCT", 2, "GTVp_test_man"),
        ("SEG", 1, "GTVp_test_man"),
        ("SEG", 2, "GTVp_test_auto"),
    ]

    text, _ = read_params(None)
    extractor = featureextractor.RadiomicsFeatureExtractor(yaml.safe_load(text))
    image, masks = decoded_seg(sorted((rider() / "CT").iterdir()))
    seg = rows[rows["segmentation"] == "SEG"].set_index("label")
    for label, mask in masks.items():
        direct = extractor.execute(image, mask, label=1)
        features = {k: float(v) for k, v in direct.items() if not k.startswith("diagnostics_")}
        assert len(features) > 100
        assert {k: seg.loc[label, k] for k in features} == features
    rt = rows[rows["segmentation"] == "RTSTRUCT"].set_index("label")
    for label in (1, 2):  # RTSTRUCT ROI n outlines the tumour of SEG segment n
        a, b = rt.loc[label, "original_shape_MeshVolume"], seg.loc[label, "original_shape_MeshVolume"]
        assert abs(a - b) / b < 0.01
