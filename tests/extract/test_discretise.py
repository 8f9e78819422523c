"""Discretising once gives pyradiomics' own features, bit for bit, on the real cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import PARAMS, SMALL_CASES, case_paths
from radiomics import featureextractor, glcm, imageoperations

from radcluster.extract.discretise import bin_edges, compute_features, discretise

ALL_CASES = (*SMALL_CASES, "lung1", "lung2")


def _same(a: dict, b: dict) -> list[str]:
    """Keys whose values differ in any bit (NaN equals NaN); an empty list when identical."""
    assert list(a) == list(b), "different features or order"
    return [k for k in a if not (a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])))]


def _crops(case: str, params: str):
    """(image crop, mask crop, image type name, settings) for each image type the params enable."""
    image_path, mask_path = case_paths(case)
    extractor = featureextractor.RadiomicsFeatureExtractor(str(PARAMS / params))
    image, mask = extractor.loadImage(str(image_path), str(mask_path), None, **extractor.settings)
    bbox, _ = imageoperations.checkMask(image, mask, **extractor.settings)
    for name, custom in extractor.enabledImagetypes.items():
        args = dict(extractor.settings, **custom)
        for filtered, type_name, type_kw in getattr(imageoperations, f"get{name}Image")(image, mask, **args):
            img_c, msk_c = imageoperations.cropToTumorMask(filtered, mask, bbox)
            yield extractor, img_c, msk_c, type_name, type_kw


@pytest.mark.parametrize("params", ["Params.yaml", "exampleCT.yaml"])
@pytest.mark.parametrize("case", ALL_CASES)
def test_same_features_as_compute_features(case, params):
    n = 0
    for extractor, image, mask, type_name, settings in _crops(case, params):
        ours = compute_features(extractor, image, mask, type_name, **settings)
        theirs = extractor.computeFeatures(image, mask, type_name, **settings)
        assert _same(ours, theirs) == [], f"{case} {type_name}"
        n += len(ours)
    assert n == {"Params.yaml": 86, "exampleCT.yaml": 1204}[params]


@pytest.mark.parametrize("case", ALL_CASES)
def test_bin_edges_are_pyradiomics_edges(case):
    for _, image, mask, type_name, _ in _crops(case, "exampleCT.yaml"):
        values = sitk.GetArrayFromImage(image)[sitk.GetArrayFromImage(mask) == 1]
        for settings in ({"binWidth": 25}, {"binWidth": 0.37}, {"binCount": 16}):
            ours, theirs = bin_edges(values, **settings), imageoperations.getBinEdges(values, **settings)
            assert np.asarray(ours).dtype == np.asarray(theirs).dtype
            assert np.array_equal(ours, theirs), (type_name, settings)


@pytest.mark.parametrize(
    "values",
    [
        np.array([3.0, np.nan, 80.0, -12.5], dtype=np.float32),  # builtins' answer depends on the NaN
        np.array([np.nan, 3.0, 80.0, -12.5]),
        np.full(7, 50, dtype=np.int16),  # a flat region
        np.array([-0.0, 0.0, 24.999, 25.0], dtype=np.float32),
    ],
    ids=["nan-middle", "nan-first", "flat", "signed-zero"],
)
def test_bin_edges_on_awkward_values(values):
    def edges(function, settings):
        try:
            return np.asarray(function(values, **settings))
        except ValueError as err:  # a bin count over NaN: numpy's histogram refuses, for both
            return str(err)

    for settings in ({"binWidth": 25}, {"binCount": 3}):
        ours, theirs = edges(bin_edges, settings), edges(imageoperations.getBinEdges, settings)
        assert type(ours) is type(theirs)
        assert ours == theirs if isinstance(ours, str) else np.array_equal(ours, theirs, equal_nan=True), settings


def test_discretised_arrays_match_binimage_and_are_read_only():
    extractor, image, mask, _, settings = next(_crops("brain1", "Params.yaml"))
    shared = discretise(image, mask, **settings)
    roi = sitk.GetArrayFromImage(mask) == 1
    expected, _ = imageoperations.binImage(sitk.GetArrayFromImage(image), roi, **settings)
    assert np.array_equal(shared.binned, expected) and shared.binned.dtype == expected.dtype
    assert shared.ng == int(expected[roi].max())
    with pytest.raises(ValueError, match="read-only"):
        shared.binned[0, 0, 0] = 1


def test_a_class_with_its_own_hooks_is_used_as_it_is():
    class OwnBinning(glcm.RadiomicsGLCM):
        def _applyBinning(self, matrix):
            self.coefficients["grayLevels"] = np.array([1])
            self.coefficients["Ng"] = 1
            return np.where(self.maskArray, 1, 0)

    from radcluster.extract import discretise as module

    assert module._precomputed_class(OwnBinning) is None
    assert module._precomputed_class(glcm.RadiomicsGLCM).__mro__[2] is glcm.RadiomicsGLCM
