"""A one-label scan split by filtered image over idle workers: the same row, bit for bit."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import yaml
from conftest import PARAMS, case_paths

from radcluster import open_store
from radcluster.cohort import Cohort, Scan
from radcluster.extract import ExtractionSettings, extract_scan
from radcluster.jobs.extract import run_extract
from radcluster.plan import make_plan
from radcluster.spec import params_hash, read_params

FILTERS = ["Original", "LoG", "Wavelet"]


def _settings(resample: bool = True) -> ExtractionSettings:
    text, digest = read_params(PARAMS / "exampleCT.yaml")
    if resample:
        return ExtractionSettings(text, digest)
    params = yaml.safe_load(text)
    for key in ("interpolator", "resampledPixelSpacing"):
        params["setting"].pop(key)
    text = yaml.safe_dump(params)
    return ExtractionSettings(text, params_hash(text))


class _Named:
    def __init__(self, name: str):
        self.name = name

    def memory_bytes(self, voxels: int) -> int:
        return 0


def test_plan_splits_a_one_label_scan_by_filter_only_for_pyradiomics():
    image, mask = case_paths("brain1")
    scan = Scan("one", str(image), str(mask))

    def parts(image_types, slots, engines=()):
        plan = make_plan(Cohort((scan,), "t"), pd.DataFrame(), "p", image_types, slots=slots, engines=engines)
        return [t.part for t in plan.tasks]

    assert parts(FILTERS, 2) == [(0, 2), (1, 2)]
    assert parts(FILTERS, 2, [_Named("pyradiomics")]) == [(0, 2), (1, 2)]
    assert parts(FILTERS, 1) == [None]
    assert parts(["Original"], 4) == [None]  # one filtered image: nothing to split
    assert parts(FILTERS, 2, [_Named("ibsi")]) == [None]  # other engines would repeat their work
    assert parts(FILTERS, 2, [_Named("pyradiomics"), _Named("onnx")]) == [None]
    assert len(parts(FILTERS, 64)) == 1 + 3 + 7  # at most one part per unit: shape, Original, LoG, 8 sub-bands


@pytest.mark.parametrize("resample", [True, False], ids=["resampled", "whole-image-filters"])
def test_parts_together_are_the_whole_row(resample):
    image, mask = case_paths("breast1")
    scan = Scan("breast1", str(image), str(mask))
    settings = _settings(resample)
    whole = extract_scan(scan, settings)
    assert whole.failures == []
    names = whole.feature_names
    parts = [extract_scan(scan, settings, part=(i, 3)) for i in range(3)]
    got: dict[str, float] = {}
    for i, part in enumerate(parts):
        assert part.failures == [] and [r["label"] for r in part.rows] == [1]
        mine = list(part.feature_names)
        assert not set(mine) & set(got), "a unit in two parts"
        assert any(n.startswith("original_shape_") for n in mine) == (i == 0), "shape is part 0's"
        got.update({n: part.rows[0][n] for n in mine})
    assert sorted(got) == sorted(names)
    differ = [
        n for n in names if not (got[n] == whole.rows[0][n] or (math.isnan(got[n]) and math.isnan(whole.rows[0][n])))
    ]
    assert differ == []


def test_one_big_scan_on_two_workers_is_one_row_from_two_tasks(client, tmp_path):
    image, mask = case_paths("breast1")
    scan = Scan("breast1", str(image), str(mask))
    whole = extract_scan(scan, _settings())
    store = str(tmp_path / "store")
    summary = run_extract(Cohort((scan,), "test"), _settings(), store, client)
    assert (summary.rows, summary.failures) == (1, 0)
    assert open_store(store).runs()[0]["tasks"] == 2
    row = open_store(store).features().iloc[0]
    names = whole.feature_names
    assert sorted(open_store(store).feature_names()) == sorted(names)
    assert [
        n for n in names if not (row[n] == whole.rows[0][n] or (math.isnan(row[n]) and math.isnan(whole.rows[0][n])))
    ] == []
