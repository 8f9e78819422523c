"""IBSI mode through the extraction pipeline, and IBSI names on export."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import SimpleITK as sitk
import yaml
from conftest import DATA, PARAMS, write_manifest

from radcluster import open_store
from radcluster.cohort import Scan
from radcluster.extract import ExtractionSettings, extract_scan
from radcluster.ibsi import extract_ibsi
from radcluster.spec import read_params

PHANTOM = DATA / "ibsi_digital_phantom" / "digital_phantom"


def test_ibsi_mode_in_extract_scan_equals_extract_ibsi(tmp_path):
    params = {"setting": {"binWidth": 1, "label": 1}, "featureClass": {"firstorder": [], "glcm": []}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(params))
    text, digest = read_params(path)
    scan = Scan("phantom", str(PHANTOM / "image.nii.gz"), str(PHANTOM / "mask.nii.gz"))
    result = extract_scan(scan, ExtractionSettings(text, digest, ibsi="A"))
    assert result.failures == []
    expected = extract_ibsi(
        sitk.ReadImage(str(PHANTOM / "image.nii.gz")), sitk.ReadImage(str(PHANTOM / "mask.nii.gz")), 1, params, "A"
    )
    row = result.rows[0]
    assert {k: row[k] for k in expected} == pytest.approx(expected)
    stock = extract_scan(scan, ExtractionSettings(text, digest))
    assert "original_histogram_Mean" in row and "original_histogram_Mean" not in stock.rows[0]


def test_cli_ibsi_mode_and_export_with_ibsi_names(tmp_path):
    manifest = write_manifest(
        tmp_path / "m.csv",
        [{"case_id": "phantom", "image": str(PHANTOM / "image.nii.gz"), "mask": str(PHANTOM / "mask.nii.gz")}],
    )
    store = tmp_path / "store"
    base = [sys.executable, "-m", "radcluster.cli"]
    run = subprocess.run(
        [
            *base,
            "extract",
            str(manifest),
            "--out",
            str(store),
            "--params",
            str(PARAMS / "Params.yaml"),
            "--workers",
            "1",
            "--dashboard-address",
            ":0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    out = tmp_path / "ibsi.csv"
    exp = subprocess.run(
        [*base, "export", str(store), "-o", str(out), "--names", "ibsi"], capture_output=True, text=True, timeout=120
    )
    assert exp.returncode == 0, exp.stderr
    frame = pd.read_csv(out)
    stock = open_store(store).features()
    assert "stat_kurt" in frame.columns and "original_firstorder_Kurtosis" not in frame.columns
    # IBSI kurtosis is excess kurtosis: pyradiomics' value minus 3
    assert frame.loc[0, "stat_kurt"] == pytest.approx(stock.loc[0, "original_firstorder_Kurtosis"] - 3)
    assert frame.loc[0, "case_id"] == "phantom"
    # the store carries the mapping itself, as metadata of its part files
    mapping = open_store(store).ibsi_names()
    assert mapping["original_firstorder_Kurtosis"] == "stat_kurt"
    assert mapping["original_glcm_SumSquares"].startswith("cm_joint_var")

    ibsi_store = tmp_path / "ibsi-store"
    run = subprocess.run(
        [
            *base,
            "extract",
            str(manifest),
            "--out",
            str(ibsi_store),
            "--params",
            str(PARAMS / "Params.yaml"),
            "--ibsi",
            "--workers",
            "1",
            "--dashboard-address",
            ":0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    rows = open_store(ibsi_store).features()
    assert rows.loc[0, "params_hash"].endswith("-ibsi-True")
    assert "original_histogram_Mean" in rows.columns
