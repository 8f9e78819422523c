"""The parity matrix: radcluster's fast path against ``RadiomicsFeatureExtractor.execute()``.

Every setting and image type pyradiomics documents is a factor with a few levels (its
default first). The matrix is every factor at each of its other levels alone, plus a
pairwise design over all of them (allpairspy: every pair of levels of any two factors in at
least one params file), the case being one more factor: the real sample cases, a multi-label
mask (all its labels) and a two-channel vector mask. For each params file, every label must
give what ``execute(image, mask, label=l)`` gives: every feature bit for bit or within 1e-12
relative, NaN only where execute has NaN; where execute raises, or silently leaves out
columns the params ask for, radcluster must record a failure for that label.
"""

from __future__ import annotations

import collections
import itertools

import numpy as np
import pytest
import SimpleITK as sitk
import yaml
from allpairspy import AllPairs
from conftest import case_paths, feature_differences, multilabel_case

from radcluster.cohort import ALL_LABELS, Scan
from radcluster.extract import ExtractionSettings, extract_scan
from radcluster.extract._radiomics import expected_groups, get_extractor
from radcluster.spec import params_hash

RTOL = 1e-12


def _s(**kw):
    return {"setting": kw}


def _t(name, **kw):
    return {"imageType": {name: kw}}


# factor -> levels; each level is a fragment of a params file, the first is pyradiomics' default
FACTORS: dict[str, list] = {
    "case": ["brain1", "brain2", "breast1", "multi", "vector", "lung1", "lung2"],
    "Original": [_t("Original"), {}],
    "Wavelet": [{}, _t("Wavelet"), _t("Wavelet", wavelet="haar", level=2), _t("Wavelet", wavelet="db2", start_level=1)],
    "LoG": [{}, _t("LoG", sigma=[1.0, 3.0]), _t("LoG", sigma=[2.5]), _t("LoG", sigma=[0.5, 40.0])],
    "Square": [{}, _t("Square")],
    "SquareRoot": [{}, _t("SquareRoot")],
    "Logarithm": [{}, _t("Logarithm")],
    "Exponential": [{}, _t("Exponential")],
    "Gradient": [{}, _t("Gradient"), _t("Gradient", gradientUseSpacing=False)],
    "LBP2D": [{}, _t("LBP2D"), _t("LBP2D", lbp2DRadius=2, lbp2DSamples=8, lbp2DMethod="default")],
    "LBP3D": [{}, _t("LBP3D"), _t("LBP3D", lbp3DLevels=3, lbp3DIcosphereRadius=2, lbp3DIcosphereSubdivision=0)],
    "discretisation": [{}, _s(binWidth=10), _s(binCount=32)],
    # preCrop is ignored when resampling (pyradiomics' loadImage), so they are one factor
    "crop": [
        {},
        _s(preCrop=True),
        _s(interpolator="sitkBSpline", resampledPixelSpacing=[2, 2, 2]),
        _s(interpolator="sitkLinear", resampledPixelSpacing=[1, 1, 0]),
        _s(interpolator="sitkNearestNeighbor", resampledPixelSpacing=[3, 3, 3]),
        _s(interpolator="sitkGaussian", resampledPixelSpacing=[2, 2, 2]),
        _s(interpolator="sitkLanczosWindowedSinc", resampledPixelSpacing=[1.5, 1.5, 1.5]),
        _s(interpolator=2, resampledPixelSpacing=[0, 0, 0]),  # 2: sitkLinear as a number; 0 keeps the spacing
    ],
    "padDistance": [{}, _s(padDistance=0), _s(padDistance=10)],
    "normalize": [{}, _s(normalize=True), _s(normalize=True, normalizeScale=100, removeOutliers=3)],
    "resegment": [
        {},
        _s(resegmentRange=[-3, 3], resegmentMode="sigma"),
        _s(resegmentRange=[0.25, 0.95], resegmentMode="relative"),
        _s(resegmentRange=[-500]),
    ],
    "resegmentShape": [{}, _s(resegmentShape=True)],
    "force2D": [{}, _s(force2D=True), _s(force2D=True, force2Ddimension=1)],
    "minimumROIDimensions": [{}, _s(minimumROIDimensions=1), _s(minimumROIDimensions=3)],
    "minimumROISize": [{}, _s(minimumROISize=50), _s(minimumROISize=200)],
    "correctMask": [{}, _s(correctMask=True)],
    "geometryTolerance": [{}, _s(geometryTolerance=1e-3)],
    "label_channel": [{}, _s(label_channel=1)],
    "voxelArrayShift": [{}, _s(voxelArrayShift=1000)],
    "distances": [{}, _s(distances=[1, 2, 3])],
    "symmetricalGLCM": [{}, _s(symmetricalGLCM=False)],
    "weightingNorm": [
        {},
        _s(weightingNorm="manhattan"),
        _s(weightingNorm="euclidean"),
        _s(weightingNorm="infinity"),
        _s(weightingNorm="no_weighting"),
    ],
    "gldm_a": [{}, _s(gldm_a=2)],
    "featureClass": [
        {},
        {
            "featureClass": {
                "firstorder": ["Mean", "Entropy", "Kurtosis"],
                "glcm": ["Contrast", "Idmn"],
                "shape": ["Sphericity", "MeshVolume"],
            }
        },
        {"featureClass": {"glszm": None, "gldm": None, "ngtdm": None, "glrlm": None, "shape2D": None}},
    ],
}


def _params(levels: dict[str, int]) -> dict:
    params: dict = {"setting": {}, "imageType": {}}
    for factor, index in levels.items():
        if factor == "case":
            continue
        for section, values in FACTORS[factor][index].items():
            params.setdefault(section, {}).update(values)
    if not params["imageType"]:
        params["imageType"] = {"Original": {}}
    return params


def _design() -> list[dict[str, int]]:
    """Each non-default level alone (cases in turn), then a pairwise design over every factor."""
    names = list(FACTORS)
    rows, cases = [], FACTORS["case"]
    for factor in names[1:]:
        for index in range(1, len(FACTORS[factor])):
            row = dict.fromkeys(names, 0)
            row[factor] = index
            row["case"] = len(rows) % len(cases)
            rows.append(row)
    pairs = AllPairs(collections.OrderedDict((n, list(range(len(FACTORS[n])))) for n in names))
    return rows + _sparse([dict(zip(names, combo, strict=True)) for combo in pairs])


def _sparse(rows: list[dict[str, int]]) -> list[dict[str, int]]:
    """The same pair coverage with as many factors as possible back at their default.

    allpairspy fills the factors a row does not need for a new pair with arbitrary levels,
    often the plain-route ones (correctMask, the vector mask): resetting them to the default
    keeps every pair covered and leaves more of the matrix on the fast path (and cheaper).
    """

    def pairs(row):
        return [((f, row[f]), (g, row[g])) for f, g in itertools.combinations(row, 2)]

    count = collections.Counter(p for row in rows for p in pairs(row))
    for row in rows:
        for factor in [f for f in row if f != "case" and row[f]]:
            trial = dict(row, **{factor: 0})
            lost = collections.Counter(pairs(row)) - collections.Counter(pairs(trial))
            if all(count[p] > n for p, n in lost.items()):
                count.subtract(pairs(row))
                count.update(pairs(trial))
                row[factor] = 0
    return rows


DESIGN = _design()


def _vector(tmp_path):
    """A two-channel segmentation of brain1: the lesion, and the lesion's lateral half as label 1."""
    image, mask = multilabel_case(tmp_path)
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(mask)))
    channels = np.stack([(arr == 1) | (arr == 2), arr == 2], axis=-1).astype(np.uint8)
    vec = sitk.GetImageFromArray(channels, isVector=True)
    vec.CopyInformation(sitk.ReadImage(str(mask)))
    path = tmp_path / "vector_mask.nrrd"
    sitk.WriteImage(vec, str(path))
    return image, path


def _inputs(case, tmp_path):
    if case == "multi":
        image, mask = multilabel_case(tmp_path)
        return image, mask, ALL_LABELS, [1, 2, 3]
    if case == "vector":
        image, mask = _vector(tmp_path)
        return image, mask, None, [1]
    image, mask = case_paths(case)
    return image, mask, None, [1]


def _execute(params: dict, image, mask, label):
    from radiomics import featureextractor

    try:
        result = featureextractor.RadiomicsFeatureExtractor(params).execute(str(image), str(mask), label=label)
    except Exception as err:  # pyradiomics raises ValueError, AssertionError, RuntimeError
        return err
    return {k: float(v) for k, v in result.items() if not k.startswith("diagnostics_")}


def compare(params: dict, case: str, tmp_path) -> tuple[list[str], int]:
    """Every difference between radcluster's rows and execute() per label, as text, and how
    many labels had features to compare (the others failed on both sides)."""
    image, mask, labels, expect = _inputs(case, tmp_path)
    text = yaml.safe_dump(params)
    result = extract_scan(Scan(case, str(image), str(mask), labels), ExtractionSettings(text, params_hash(text)))
    rows = {r["label"]: r for r in result.rows}
    failed = {f.label: f for f in result.failures}
    problems, compared = [], 0
    extractor = get_extractor(text)
    for label in expect:
        reference = _execute(params, image, mask, label)
        if isinstance(reference, Exception):
            if label in rows:
                problems.append(f"label {label}: execute() raised {reference!r} but radcluster gave a row")
            continue
        absent = [g for g in expected_groups(extractor, 3) if not any(k.startswith(g) for k in reference)]
        if absent:
            # execute() skipped a filter or class with a log warning: radcluster must not give a short row
            if label in rows:
                problems.append(f"label {label}: execute() lacks {absent[:3]} but radcluster gave a row")
            continue
        if label not in rows:
            problems.append(
                f"label {label}: radcluster failed ({failed.get(label) or failed.get(None)}) "
                f"where execute() gave {len(reference)} features"
            )
            continue
        problems += [f"label {label}: {d}" for d in feature_differences(rows[label], reference, RTOL)]
        compared += 1
    return problems, compared


# The default run takes every third params file of the design (each image type and setting
# alone is among them in turn, and a third of the pairwise rows); CI's slow tier the others.
DEFAULT_TIER = range(0, len(DESIGN), 3)


def _row_id(index: int) -> str:
    levels = DESIGN[index]
    changed = [f"{f}{i}" for f, i in levels.items() if f != "case" and i]
    return f"{index}-{FACTORS['case'][levels['case']]}-" + ("-".join(changed[:4]) or "defaults")


@pytest.mark.parametrize(
    "index",
    [i if i in DEFAULT_TIER else pytest.param(i, marks=pytest.mark.slow) for i in range(len(DESIGN))],
    ids=_row_id,
)
def test_matrix(index, tmp_path):
    levels = DESIGN[index]
    problems, _ = compare(_params(levels), FACTORS["case"][levels["case"]], tmp_path)
    assert not problems, yaml.safe_dump(_params(levels)) + "\n".join(problems[:20])


def test_design_covers_every_pair():
    """Every level of every factor meets every level of every other factor in some params file."""
    names = list(FACTORS)
    wanted = {
        ((f, a), (g, b))
        for f, g in itertools.combinations(names, 2)
        for a in range(len(FACTORS[f]))
        for b in range(len(FACTORS[g]))
    }
    covered = {((f, row[f]), (g, row[g])) for row in DESIGN for f, g in itertools.combinations(names, 2)}
    assert wanted - covered == set()
    alone = {(f, row[f]) for row in DESIGN if sum(1 for g in names[1:] if row[g]) == 1 for f in names[1:] if row[f]}
    assert alone == {(f, i) for f in names[1:] for i in range(1, len(FACTORS[f]))}
