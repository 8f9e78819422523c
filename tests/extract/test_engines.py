"""Feature engines: the registry (built-in and entry-point engines), the job spec's
``extraction.engines``, and several engines on one read of a scan."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from radcluster.cohort import read_manifest
from radcluster.errors import SpecError
from radcluster.extract import ExtractionSettings, extract_scan
from radcluster.extract.engines import (
    ENTRY_POINT_GROUP,
    Engine,
    combined_key,
    engine_class,
    engine_names,
    from_spec,
    make_engine,
)
from radcluster.spec import build_job, read_params

PLUGIN = '''
import numpy as np
import SimpleITK as sitk
from dataclasses import dataclass
from radcluster.errors import ScanError
from radcluster.extract.engines import Engine


@dataclass(frozen=True)
class VoxelCount(Engine):
    """Counts a label's voxels (times scale); label 2 always fails, to show a label's failure."""

    scale: float = 1.0
    name = "voxels"

    def key(self):
        return f"voxels-{self.scale}"

    def provenance(self):
        return {"voxels_scale": self.scale}

    def extract(self, scan, settings):
        arr = sitk.GetArrayViewFromImage(scan.mask)
        out = {}
        for label in scan.labels(scan.present):
            if label == 2:
                out[label] = ScanError(scan.scan.case_id, "extract", "two is not allowed", label=label)
            else:
                out[label] = {"plugin_voxels": float((arr == label).sum()) * self.scale}
        return out


@dataclass(frozen=True)
class Misnamed(Engine):
    """A deep engine whose columns do not say so."""

    name = "misnamed"
    kind = "deep"

    def extract(self, scan, settings):
        return {label: {"embedding_0": 1.0} for label in scan.labels(scan.present)}
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch):
    """An installed package registering engine 'voxels' through the entry point group."""
    (tmp_path / "voxel_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "voxel_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: voxel-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nvoxels = voxel_plugin:VoxelCount\nmisnamed = voxel_plugin:Misnamed\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("voxel_plugin", None)


def _manifest(tmp_path: Path, labels: str = "all") -> Path:
    import numpy as np
    import pandas as pd
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    arr = rng.normal(40, 20, size=(20, 24, 24))
    mask = np.zeros(arr.shape, np.uint8)
    mask[4:10, 5:12, 5:12] = 1
    mask[12:18, 14:20, 14:20] = 2
    img = sitk.GetImageFromArray(arr.astype(np.int16))
    msk = sitk.GetImageFromArray(mask)
    msk.CopyInformation(img)
    sitk.WriteImage(img, str(tmp_path / "s_image.nrrd"))
    sitk.WriteImage(msk, str(tmp_path / "s_label.nrrd"))
    pd.DataFrame([{"case_id": "s", "image": "s_image.nrrd", "mask": "s_label.nrrd", "label": labels}]).to_csv(
        tmp_path / "m.csv", index=False
    )
    return tmp_path / "m.csv"


def test_builtin_engines_and_their_kinds() -> None:
    assert engine_names()[:3] == ["pyradiomics", "ibsi", "onnx"]
    assert [engine_class(n).kind for n in ("pyradiomics", "ibsi", "onnx")] == ["radiomics", "radiomics", "deep"]
    with pytest.raises(SpecError, match="feature engine 'pyradiomic': unknown; did you mean 'pyradiomics'"):
        engine_class("pyradiomic")


def test_the_job_spec_names_engines_and_rejects_unknown_keys() -> None:
    job = build_job(
        {
            "manifest": "m.csv",
            "store": "s",
            "extraction": {"engines": ["pyradiomics", {"onnx": {"name": "enc", "model": "m.onnx"}}]},
        }
    )
    assert job.extraction.engines[0] == "pyradiomics" and job.extraction.engines[1].onnx.name == "enc"
    assert build_job({"manifest": "m.csv", "store": "s"}).extraction.engines == ("pyradiomics",)
    with pytest.raises(SpecError) as err:
        build_job(
            {
                "manifest": "m.csv",
                "store": "s",
                "extraction": {"engines": [{"onnx": {"name": "enc", "model": "m.onnx", "windw": [0, 1]}}]},
            }
        )
    assert "key 'extraction.engines.0.onnx.windw': unknown key; did you mean 'window'?" in str(err.value)
    with pytest.raises(SpecError, match="engine 'onnx' needs its options"):
        build_job({"manifest": "m.csv", "store": "s", "extraction": {"engines": ["onnx"]}})
    with pytest.raises(SpecError, match="did you mean 'onnx'"):
        build_job({"manifest": "m.csv", "store": "s", "extraction": {"engines": [{"onx": {"model": "m.onnx"}}]}})
    with pytest.raises(SpecError, match="name' .*should match pattern|String should match"):
        build_job(
            {
                "manifest": "m.csv",
                "store": "s",
                "extraction": {"engines": [{"onnx": {"name": "my enc", "model": "m.onnx"}}]},
            }
        )
    with pytest.raises(SpecError, match="at least one engine"):
        build_job({"manifest": "m.csv", "store": "s", "extraction": {"engines": []}})


def test_config_defaults_lists_the_onnx_keys() -> None:
    from radcluster.spec import defaults_yaml

    text = defaults_yaml()
    assert "  engines: [pyradiomics]  #" in text and "  #   - onnx:\n  #       name:   # required" in text
    assert "  #       window: null  # [low, high]: clip and scale to [0, 1] (CT HU)" in text


def test_pyradiomics_and_ibsi_do_not_run_together() -> None:
    text, _ = read_params(None)
    with pytest.raises(SpecError, match="'pyradiomics' and 'ibsi' give the same columns"):
        from_spec(
            build_job(
                {"manifest": "m.csv", "store": "s", "extraction": {"engines": ["pyradiomics", "ibsi"]}}
            ).extraction,
            text,
        )


def test_extraction_ibsi_keeps_its_meaning(tmp_path: Path) -> None:
    params = tmp_path / "ibsi.yaml"
    params.write_text("featureClass:\n  firstorder:\n")
    text, digest = read_params(params)
    (engine,) = from_spec(build_job({"manifest": "m.csv", "store": "s", "extraction": {"ibsi": "B"}}).extraction, text)
    assert engine.name == "ibsi" and engine.config == "B"
    assert combined_key(digest, [engine]) == f"{digest}-ibsi-B"  # the hash IBSI-mode rows had before engines
    (engine,) = from_spec(
        build_job({"manifest": "m.csv", "store": "s", "extraction": {"engines": ["ibsi"]}}).extraction, text
    )
    assert engine.config is True


def test_the_default_engine_keeps_the_params_hash(tmp_path: Path) -> None:
    text, digest = read_params(None)
    engines = from_spec(build_job({"manifest": "m.csv", "store": "s"}).extraction, text)
    assert [e.name for e in engines] == ["pyradiomics"]
    assert combined_key(digest, engines) == digest  # stores extracted before engines existed stay current
    scan = read_manifest(_manifest(tmp_path)).scans[0]
    explicit = extract_scan(scan, ExtractionSettings(text, digest, engines=engines))
    implicit = extract_scan(scan, ExtractionSettings(text, digest))
    drop = ("scan_seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in explicit.rows] == [
        {k: v for k, v in r.items() if k not in drop} for r in implicit.rows
    ]


def test_an_entry_point_engine_runs_beside_pyradiomics_on_one_read(tmp_path: Path, plugin, monkeypatch) -> None:
    import radcluster.extract.readers as extract  # where a scan's files are read

    assert "voxels" in engine_names()
    job = build_job(
        {"manifest": "m.csv", "store": "s", "extraction": {"engines": ["pyradiomics", {"voxels": {"scale": 2}}]}}
    )
    text, digest = read_params(None)
    engines = from_spec(job.extraction, text)
    assert isinstance(engines[1], Engine) and engines[1].scale == 2
    reads = []
    real = extract._read
    monkeypatch.setattr(extract, "_read", lambda *a: (reads.append(a[1:]), real(*a))[1])
    result = extract_scan(
        read_manifest(_manifest(tmp_path)).scans[0],
        ExtractionSettings(text, combined_key(digest, engines), engines=engines),
    )
    assert [role for _, role in reads] == ["image", "mask"]  # one read of each file for both engines
    (row,) = result.rows  # label 1; label 2 failed in the plugin, so it has no (partial) row
    assert row["label"] == 1 and row["plugin_voxels"] == 2 * 6 * 7 * 7 and row["voxels_scale"] == 2
    assert row["original_shape_VoxelVolume"] == 6 * 7 * 7
    assert row["params_hash"] == f"{digest}-voxels-2"
    (failure,) = result.failures
    assert failure.label == 2 and "two is not allowed" in failure.message
    assert "plugin_voxels" in result.feature_names and "voxels_scale" not in result.feature_names


def test_an_engine_option_it_does_not_take_is_named(plugin) -> None:
    with pytest.raises(SpecError, match="feature engine 'voxels': .*unexpected keyword argument 'scael'"):
        make_engine("voxels", {"scael": 2})


def test_a_plugins_columns_must_say_its_kind(tmp_path: Path, plugin) -> None:
    text, digest = read_params(None)
    engines = (make_engine("misnamed").prepare(text),)
    result = extract_scan(
        read_manifest(_manifest(tmp_path, "1")).scans[0], ExtractionSettings(text, digest, engines=engines)
    )
    assert not result.rows
    (failure,) = result.failures
    assert (
        "engine 'misnamed' (kind 'deep') gave columns ['embedding_0']: a deep engine's columns start with 'deep_'"
        in (failure.message)
    )
