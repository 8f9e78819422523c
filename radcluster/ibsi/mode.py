"""IBSI mode: IBSI 1 preprocessing around pyradiomics' feature classes.

Stock pyradiomics departs from the IBSI 1 reference manual in its preprocessing, not in its
feature formulas. This module does the preprocessing the IBSI way and hands the result to
pyradiomics' own feature classes:

1. **Resampling** on a grid whose centre coincides with the centre of the original grid
   (IBSI 1, section 2.4): ``n_b = ceil(n_a s_a / s_b)`` voxels per axis, origin shifted by
   ``(s_a (n_a - 1) - s_b (n_b - 1)) / 2``. pyradiomics instead aligns the grid to a corner of
   the mask's bounding box. The image is interpolated with (bi/tri)linear or cubic B-spline
   interpolation, the mask with linear interpolation and a partial-volume threshold of 0.5.
2. **Rounding** of interpolated intensities to the nearest integer (halves up) when the
   configuration asks for it.
3. **Resegmentation** that combines a range and outlier filtering (mean +/- n sigma of the
   interpolated ROI, population sigma); pyradiomics offers one or the other. The mask before
   resegmentation is the *morphological* mask (shape features), the one after it the
   *intensity* mask (everything else).
4. **Discretisation**: fixed bin size with edges starting at the lower resegmentation bound
   (``floor((x - lower) / w) + 1``), or fixed bin number. pyradiomics starts fixed-width bins at
   a multiple of the width and renumbers them from 1 at the ROI minimum, which changes every
   feature that uses grey-level values when the ROI does not reach the lower bound.
5. **Aggregation**: ``2D`` (per slice, then averaged over slices) is computed slice by slice;
   ``2_5D`` and ``3D`` use pyradiomics' ``force2D`` and ``weightingNorm: no_weighting``.

The layer touches pyradiomics only through its feature classes. Bin numbers are passed in
through the discretisation hook every feature class calls, ``_applyBinning`` (documented in
:class:`radiomics.base.RadiomicsFeaturesBase` for feature-class authors): the subclasses below
keep the IBSI bin numbers instead of re-binning them. Nothing in pyradiomics is patched.

Two definition differences are corrected: the PCA axis lengths use the sample covariance
(N - 1, as IBSI) instead of pyradiomics' population covariance (N), and the statistics of the
discretised intensities (IBSI's intensity histogram family) are computed by running
pyradiomics' first-order class on the bin numbers; they are returned as
``original_histogram_<Feature>``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from radiomics import firstorder, glcm, gldm, glrlm, glszm, ngtdm, shape

from ..cohort.images import geometry_mismatch
from ..errors import SpecError
from ..extract import _radiomics  # noqa: F401  (removes the log handler pyradiomics adds on import)
from .config import IBSIConfig, resolve_config

__all__ = ["Preprocessed", "preprocess", "compute_features", "TEXTURE_CLASSES", "check_ibsi_params", "extract_ibsi"]

_INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "cubic": sitk.sitkBSpline,
    "nearest": sitk.sitkNearestNeighbor,
}
# input voxels kept around the ROI before resampling: the cubic B-spline prefilter is an IIR
# filter whose influence decays by 0.268 per voxel, so 16 voxels make cropping exact to ~1e-9.
_CROP_MARGIN = {"linear": 2, "nearest": 2, "cubic": 16}

TEXTURE_CLASSES = ("glcm", "glrlm", "glszm", "gldm", "ngtdm")
_WEIGHTED = ("glcm", "glrlm")  # the classes whose IBSI aggregation distinguishes avg and comb


@dataclass(frozen=True)
class Preprocessed:
    """One ROI after IBSI preprocessing, cropped to its bounding box.

    Arrays are indexed (z, y, x) like SimpleITK's ``GetArrayFromImage``; ``spacing`` is
    (x, y, z) in mm like SimpleITK's ``GetSpacing``.
    """

    intensities: np.ndarray
    morph_mask: np.ndarray
    int_mask: np.ndarray
    bins: np.ndarray
    spacing: tuple[float, float, float]
    diagnostics: dict[str, float] = field(default_factory=dict)


def _grid(image: sitk.Image, spacing) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The centre-aligned IBSI grid: (spacing, size, origin) for ``spacing`` (None keeps an axis)."""
    sa = np.array(image.GetSpacing(), float)
    na = np.array(image.GetSize(), int)
    oa = np.array(image.GetOrigin(), float)
    direction = np.array(image.GetDirection(), float).reshape(3, 3)
    sb = np.array([sa[i] if spacing[i] is None else float(spacing[i]) for i in range(3)])
    # the 1e-6 guards exact multiples (60 x 3 mm / 2 mm = 90) against floating-point excess
    nb = np.array([na[i] if spacing[i] is None else math.ceil(na[i] * sa[i] / sb[i] - 1e-6) for i in range(3)], int)
    ob = oa + direction @ ((sa * (na - 1) - sb * (nb - 1)) / 2.0)
    return sb, nb, ob


def _index_box(mask_arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest (x, y, z) index of the mask's non-zero voxels."""
    nz = np.nonzero(mask_arr)
    lo = np.array([nz[2].min(), nz[1].min(), nz[0].min()])
    hi = np.array([nz[2].max(), nz[1].max(), nz[0].max()])
    return lo, hi


def _resample(image: sitk.Image, size, origin, spacing, interpolator: int) -> np.ndarray:
    f = sitk.ResampleImageFilter()
    f.SetOutputSpacing([float(s) for s in spacing])
    f.SetSize([int(n) for n in size])
    f.SetOutputOrigin([float(o) for o in origin])
    f.SetOutputDirection(image.GetDirection())
    f.SetInterpolator(interpolator)
    f.SetUseNearestNeighborExtrapolator(True)
    f.SetOutputPixelType(sitk.sitkFloat64)
    return sitk.GetArrayFromImage(f.Execute(image))


def _check_geometry(image: sitk.Image, mask: sitk.Image) -> None:
    if image.GetDimension() != 3 or mask.GetDimension() != 3:
        raise ValueError(
            f"IBSI mode needs 3D images; got a {image.GetDimension()}D image and a {mask.GetDimension()}D mask"
        )
    # ITK's rule, as for extraction; float32 headers: image and mask may differ in the last bits
    reason = geometry_mismatch(image, mask, tolerance=1e-3)
    if reason:
        raise ValueError(f"image/mask geometry mismatch: {reason}")


def preprocess(
    image: sitk.Image, mask: sitk.Image, label: int, config: IBSIConfig, *, crop: bool = True
) -> Preprocessed:
    """Resample, round, resegment and discretise one ROI as IBSI 1 prescribes.

    Parameters
    ----------
    image, mask : SimpleITK.Image
        The scan and its label map, on the same grid.
    label : int
        The mask value of the ROI.
    config : IBSIConfig
        What to do (see :class:`radcluster.ibsi.IBSIConfig`).
    crop : bool
        Resample only the part of the grid around the ROI (the same voxels, fewer of them).

    Raises
    ------
    ValueError
        The ROI is empty, or fewer than two voxels survive interpolation or resegmentation.
    """
    mask_arr = sitk.GetArrayFromImage(mask) == label
    if not mask_arr.any():
        raise ValueError(f"label {label} is not present in the mask")
    _check_geometry(image, mask)
    diag: dict[str, float] = {}
    if config.spacing is None:
        intensities = sitk.GetArrayFromImage(image).astype(float)
        morph = mask_arr
        spacing = tuple(float(s) for s in image.GetSpacing())
        size = np.array(image.GetSize())
    else:
        sb, size, ob = _grid(image, config.spacing)
        direction = np.array(image.GetDirection(), float).reshape(3, 3)
        sa = np.array(image.GetSpacing(), float)
        src_img = sitk.Cast(image, sitk.sitkFloat64)
        src_mask = sitk.GetImageFromArray(mask_arr.astype(np.float64))
        src_mask.CopyInformation(image)
        lo_b, hi_b = np.zeros(3, int), size - 1
        if crop:
            lo_a, hi_a = _index_box(mask_arr)
            corners = np.array(list(itertools.product(*zip(lo_a, hi_a, strict=True))), float)
            # input index -> output continuous index, through physical space
            phys = np.asarray(image.GetOrigin()) + (direction @ (corners * sa).T).T
            idx_b = (direction.T @ (phys - ob).T).T / sb
            lo_b = np.maximum(np.floor(idx_b.min(0)).astype(int) - 2, 0)
            hi_b = np.minimum(np.ceil(idx_b.max(0)).astype(int) + 2, size - 1)
            margin = _CROP_MARGIN[config.interpolation]
            # input voxels the sub-grid can reach, plus the interpolator's margin
            sub_lo = ob + direction @ (lo_b * sb)
            sub_hi = ob + direction @ (hi_b * sb)
            ia = [(direction.T @ (p - np.asarray(image.GetOrigin()))) / sa for p in (sub_lo, sub_hi)]
            in_lo = np.maximum(np.floor(np.minimum(*ia)).astype(int) - margin, 0)
            in_hi = np.minimum(np.ceil(np.maximum(*ia)).astype(int) + margin, np.array(image.GetSize()) - 1)
            region = [int(v) for v in in_hi - in_lo + 1]
            src_img = sitk.RegionOfInterest(src_img, region, [int(v) for v in in_lo])
            src_mask = sitk.RegionOfInterest(src_mask, region, [int(v) for v in in_lo])
        sub_origin = ob + direction @ (lo_b * sb)
        sub_size = hi_b - lo_b + 1
        intensities = _resample(src_img, sub_size, sub_origin, sb, _INTERPOLATORS[config.interpolation])
        morph = _resample(src_mask, sub_size, sub_origin, sb, sitk.sitkLinear) >= config.mask_threshold
        spacing = tuple(float(s) for s in sb)
        if config.round_intensities:
            # half up; the 1e-9 makes a value that is a half up to interpolation noise (common:
            # linear interpolation half-way between integers) round the same way on every grid
            intensities = np.floor(intensities + 0.5 + 1e-9)
    for axis, name in enumerate("xyz"):
        diag[f"img_dim_{name}_interp_img"] = float(size[axis])
        diag[f"vox_dim_{name}_interp_img"] = spacing[axis]
    _roi_diagnostics(diag, "interp", intensities, morph, morph)
    if morph.sum() < 2:
        raise ValueError(f"label {label}: {int(morph.sum())} voxel(s) left after interpolation")

    int_mask = morph.copy()
    lower = None
    if config.resegment_range is not None:
        lower, upper = config.resegment_range
        if lower is not None:
            int_mask &= intensities >= lower
        if upper is not None:
            int_mask &= intensities <= upper
    if config.outlier_sigma is not None:
        # IBSI: mean and (population) standard deviation of the ROI before resegmentation
        values = intensities[morph]
        mu, sd = values.mean(), values.std()
        int_mask &= (intensities >= mu - config.outlier_sigma * sd) & (intensities <= mu + config.outlier_sigma * sd)
    _roi_diagnostics(diag, "reseg", intensities, int_mask, morph)
    if int_mask.sum() < 2:
        raise ValueError(f"label {label}: {int(int_mask.sum())} voxel(s) left after resegmentation")

    bins = np.zeros(intensities.shape, dtype=np.int64)
    bins[int_mask] = discretise(intensities[int_mask], config, lower=lower)

    # crop everything to the morphological mask's bounding box
    lo, hi = _index_box(morph)
    box = (slice(lo[2], hi[2] + 1), slice(lo[1], hi[1] + 1), slice(lo[0], hi[0] + 1))
    return Preprocessed(intensities[box], morph[box], int_mask[box], bins[box], spacing, diag)


def discretise(values: np.ndarray, config: IBSIConfig, *, lower: float | None = None) -> np.ndarray:
    """IBSI bin numbers (1, 2, ...) of ROI intensities.

    Fixed bin size: ``floor((x - lower) / width) + 1`` with ``lower`` the lower resegmentation
    bound, or the ROI minimum when there is none. Fixed bin number:
    ``floor(n (x - min) / (max - min)) + 1``, with the maximum in bin ``n``.
    """
    values = np.asarray(values, float)
    if config.bin_width is not None:
        start = values.min() if lower is None else lower
        return np.floor((values - start) / config.bin_width).astype(np.int64) + 1
    lo, hi = values.min(), values.max()
    if hi == lo:
        return np.ones(values.shape, np.int64)
    n = config.bin_count
    return np.minimum(np.floor(n * (values - lo) / (hi - lo)).astype(np.int64) + 1, n)


def _roi_diagnostics(diag: dict, stage: str, intensities, mask, morph) -> None:
    values = intensities[mask]
    diag[f"int_mask_vox_count_{stage}_roi"] = float(mask.sum())
    diag[f"morph_mask_vox_count_{stage}_roi"] = float(morph.sum())
    if values.size:
        diag[f"int_mask_mean_int_{stage}_roi"] = float(values.mean())
        diag[f"int_mask_min_int_{stage}_roi"] = float(values.min())
        diag[f"int_mask_max_int_{stage}_roi"] = float(values.max())
    for axis, name in zip((2, 1, 0), "xyz", strict=True):
        for kind, m in (("int", mask), ("morph", morph)):
            idx = np.nonzero(m.any(axis=tuple(a for a in range(3) if a != axis)))[0]
            if idx.size:
                diag[f"{kind}_mask_bb_dim_{name}_{stage}_roi"] = float(idx.max() - idx.min() + 1)


# --- pyradiomics feature classes that keep IBSI bin numbers -----------------------------------


class _KeepBins:
    """Use the image's values (IBSI bin numbers) as the discretised grey levels.

    ``Ng`` (used by normalised features such as GLCM's Idn and Idmn) is the highest bin of the
    whole ROI, passed as the ``ibsiNg`` setting, so a single slice of a 2D aggregation is
    normalised like the volume it belongs to (IBSI), not by its own highest grey level.
    """

    def _applyBinning(self, matrix):  # noqa: N802  (pyradiomics' hook name)
        binned = np.zeros(matrix.shape, dtype=int)
        binned[self.maskArray] = np.rint(matrix[self.maskArray]).astype(int)
        levels = np.unique(binned[self.maskArray])
        self.coefficients["grayLevels"] = levels
        self.coefficients["Ng"] = max(int(levels.max()), int(self.settings.get("ibsiNg", 0)))
        return binned


def _keep_bins(base: type) -> type:
    # pyradiomics names a feature class's logger after the class's module: keep pyradiomics'
    # logger names (radiomics.glcm, ...) so its log settings apply to these classes too
    return type(
        f"IBSIBinned{base.__name__.removeprefix('Radiomics')}", (_KeepBins, base), {"__module__": base.__module__}
    )


_FirstOrderBins = _keep_bins(firstorder.RadiomicsFirstOrder)
_CLASSES = {
    name: _keep_bins(base)
    for name, base in (
        ("glcm", glcm.RadiomicsGLCM),
        ("glrlm", glrlm.RadiomicsGLRLM),
        ("glszm", glszm.RadiomicsGLSZM),
        ("gldm", gldm.RadiomicsGLDM),
        ("ngtdm", ngtdm.RadiomicsNGTDM),
    )
}


def _image(arr: np.ndarray, spacing) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing([float(s) for s in spacing])
    return img


# features radcluster computes itself: pyradiomics marks them deprecated and returns no value
_OWN = {"gldm": {"GrayLevelNonUniformityNormalized"}}


def _run(cls, image: sitk.Image, mask: sitk.Image, features, settings: dict) -> dict[str, float]:
    instance = cls(image, mask, **settings)
    if features:
        for name in features:
            instance.enableFeatureByName(name)
    else:
        instance.enableAllFeatures()
    return {k: float(np.asarray(v, float).reshape(-1)[0]) for k, v in instance.execute().items()}


def _texture(
    pre: Preprocessed, cls_name: str, features, settings: dict, *, dims: str, weighting: str | None
) -> dict[str, float]:
    s = dict(
        settings, weightingNorm=weighting, force2D=dims != "3D", force2Ddimension=0, label=1, ibsiNg=int(pre.bins.max())
    )
    cls = _CLASSES[cls_name]
    if features:
        features = [f for f in features if f not in _OWN.get(cls_name, ())]
        if not features:
            return {}
    if dims != "2D":
        img = _image(pre.bins.astype(float), pre.spacing)
        msk = _image(pre.int_mask.astype(np.uint8), pre.spacing)
        return _run(cls, img, msk, features, s)
    per_slice: list[dict[str, float]] = []
    for z in range(pre.bins.shape[0]):
        if pre.int_mask[z].sum() == 0:
            continue
        img = _image(pre.bins[z : z + 1].astype(float), pre.spacing)
        msk = _image(pre.int_mask[z : z + 1].astype(np.uint8), pre.spacing)
        per_slice.append(_run(cls, img, msk, features, s))
    # a slice without any neighbouring pair (a lone voxel) has no matrix: pyradiomics gives NaN,
    # and the slice does not count in the average
    out = {}
    for k in per_slice[0] if per_slice else ():
        values = np.array([d[k] for d in per_slice], float)
        values = values[np.isfinite(values)]
        out[k] = float(values.mean()) if values.size else float("nan")
    return out


def _wants(features, name: str) -> bool:
    return not features or name in features


def _uniformity(pre: Preprocessed, dims: str) -> float:
    """NGLDM grey level non-uniformity normalised: the sum of squared grey-level frequencies.

    pyradiomics deprecated its GLDM copy as equal to first-order Uniformity, which holds in 3D
    and 2.5D; in 2D it is the mean of the per-slice values.
    """

    def one(bins: np.ndarray) -> float:
        _, counts = np.unique(bins, return_counts=True)
        p = counts / counts.sum()
        return float(np.sum(p * p))

    if dims != "2D":
        return one(pre.bins[pre.int_mask])
    return float(
        np.mean([one(pre.bins[z][pre.int_mask[z]]) for z in range(pre.bins.shape[0]) if pre.int_mask[z].any()])
    )


def compute_features(
    pre: Preprocessed, feature_classes: dict, settings: dict, aggregations: tuple[str, ...]
) -> dict[str, dict[str, float]]:
    """pyradiomics-named features of a preprocessed ROI, for each aggregation asked for.

    Parameters
    ----------
    pre : Preprocessed
    feature_classes : dict
        pyradiomics' ``featureClass`` section: class name -> feature names (empty or None: all
        non-deprecated features). ``firstorder`` also yields the ``histogram`` features.
    settings : dict
        Feature-class settings passed to pyradiomics (``distances``, ``symmetricalGLCM``,
        ``gldm_a``); preprocessing settings are not read. pyradiomics' deprecated GLDM
        ``GrayLevelNonUniformityNormalized`` is computed here (it has no value in pyradiomics).
    aggregations : tuple of str
        IBSI aggregations, e.g. ``("3D_avg", "3D_comb")``.

    Returns
    -------
    dict
        aggregation -> {``original_<class>_<Feature>``: value}. Shape, first-order and
        histogram features do not depend on the aggregation and appear in every entry.
    """
    common: dict[str, float] = {}
    spacing = pre.spacing
    if "shape" in feature_classes:
        img = _image(pre.intensities, spacing)
        msk = _image(pre.morph_mask.astype(np.uint8), spacing)
        values = _run(shape.RadiomicsShape, img, msk, feature_classes["shape"], {"label": 1})
        n = int(pre.morph_mask.sum())
        for axis in ("MajorAxisLength", "MinorAxisLength", "LeastAxisLength"):
            if axis in values:  # IBSI: sample covariance (N - 1); pyradiomics divides by N
                values[axis] *= math.sqrt(n / (n - 1))
        common.update({f"original_shape_{k}": v for k, v in values.items()})
    if "firstorder" in feature_classes:
        wanted = feature_classes["firstorder"]
        msk = _image(pre.int_mask.astype(np.uint8), spacing)
        intensity = _run(
            firstorder.RadiomicsFirstOrder,
            _image(pre.intensities, spacing),
            msk,
            wanted,
            {"label": 1, "voxelArrayShift": 0},
        )
        binned = _run(
            _FirstOrderBins, _image(pre.bins.astype(float), spacing), msk, None, {"label": 1, "voxelArrayShift": 0}
        )
        for k, v in intensity.items():
            if k not in ("Entropy", "Uniformity"):
                common[f"original_firstorder_{k}"] = v
        for k in ("Entropy", "Uniformity"):
            if not wanted or k in wanted:
                common[f"original_firstorder_{k}"] = binned[k]
        common.update(
            {
                f"original_histogram_{k}": v
                for k, v in binned.items()
                if k not in ("Entropy", "Uniformity", "Energy", "TotalEnergy", "RootMeanSquared")
            }
        )
    out: dict[str, dict[str, float]] = {}
    cache: dict[tuple, dict[str, float]] = {}
    for agg in aggregations:
        dims = agg.replace("_avg", "").replace("_comb", "")
        method = "comb" if agg.endswith("_comb") else "avg"
        values = dict(common)
        for cls_name in TEXTURE_CLASSES:
            if cls_name not in feature_classes:
                continue
            weighting = "no_weighting" if (method == "comb" and cls_name in _WEIGHTED) else None
            key = (cls_name, dims, weighting)
            if key not in cache:
                cache[key] = _texture(
                    pre, cls_name, feature_classes[cls_name], settings, dims=dims, weighting=weighting
                )
            values.update({f"original_{cls_name}_{k}": v for k, v in cache[key].items()})
        if "gldm" in feature_classes and _wants(feature_classes["gldm"], "GrayLevelNonUniformityNormalized"):
            values["original_gldm_GrayLevelNonUniformityNormalized"] = _uniformity(pre, dims)
        out[agg] = values
    return out


_FEATURE_CLASSES = ("shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")


_PARAMS_KEYS = ("imageType", "featureClass", "setting")


# feature-class settings IBSI mode takes from params (everything else there is preprocessing,
# which the IBSIConfig decides)
_FEATURE_SETTINGS = {"distances": [1], "symmetricalGLCM": True, "gldm_a": 0}


def check_ibsi_params(params: dict[str, Any] | None) -> tuple[dict[str, list[str] | None], dict[str, Any]]:
    """Check a pyradiomics params mapping for IBSI mode; return (feature classes, class settings).

    IBSI mode computes the original image's shape, first-order and texture features. Raises
    :class:`~radcluster.errors.SpecError` for what it cannot honour: filtered image types,
    ``shape2D``, unknown classes or top-level keys. Call it when validating a job, before any
    scan is read.
    """
    params = params or {}
    if not isinstance(params, dict):
        raise SpecError(
            "params in IBSI mode",
            "must be a mapping (a parsed pyradiomics params file)",
            f"got {type(params).__name__}",
        )
    unknown = [k for k in params if k not in _PARAMS_KEYS]
    if unknown:
        raise SpecError(f"params key(s) {unknown} in IBSI mode", "not supported", f"expected {list(_PARAMS_KEYS)}")
    image_types = params.get("imageType") or {"Original": {}}
    others = [t for t in image_types if t != "Original"]
    if others:
        raise SpecError(
            "params key 'imageType' in IBSI mode",
            f"enables {others}, but IBSI mode computes features of the original image only",
            "remove them, or extract them without IBSI mode",
        )
    requested = params.get("featureClass")
    if requested is None:
        requested = {c: None for c in _FEATURE_CLASSES}
    classes: dict[str, list[str] | None] = {}
    for name, features in requested.items():
        if name not in _FEATURE_CLASSES:
            hint = " (IBSI has no 2D shape features)" if name == "shape2D" else ""
            raise SpecError(
                f"params key 'featureClass.{name}' in IBSI mode",
                f"not supported{hint}",
                f"supported: {list(_FEATURE_CLASSES)}",
            )
        classes[name] = list(features) if features else None
    setting = params.get("setting") or {}
    settings = {k: setting.get(k, default) for k, default in _FEATURE_SETTINGS.items()}
    return classes, settings


def extract_ibsi(
    image: sitk.Image,
    mask: sitk.Image,
    label: int = 1,
    params: dict[str, Any] | None = None,
    config: IBSIConfig | str | dict | None = None,
) -> dict[str, float]:
    """Features of one ROI in IBSI mode, under pyradiomics names.

    Parameters
    ----------
    image, mask : SimpleITK.Image
        The scan and its label map on the same grid.
    label : int
        The mask value of the ROI.
    params : dict, optional
        A parsed pyradiomics params file: ``featureClass`` chooses the features (default: all
        classes but ``shape2D``), ``setting`` gives ``distances``, ``symmetricalGLCM`` and
        ``gldm_a``. Its preprocessing settings are used only when ``config`` is None.
    config : IBSIConfig, str, dict or None
        The IBSI preprocessing: an :class:`IBSIConfig`, a configuration name (``"A"``-``"E"``), a
        mapping for :meth:`IBSIConfig.from_dict`, or None to read it from ``params``
        (:meth:`IBSIConfig.from_params`). It replaces pyradiomics' resampling, resegmentation,
        discretisation and aggregation settings.

    Returns
    -------
    dict
        ``original_<class>_<Feature>`` -> value, for the config's aggregation. Besides
        pyradiomics' features: ``original_histogram_<Feature>`` (statistics of the discretised
        intensities, IBSI's intensity histogram family, when ``firstorder`` is enabled) and
        ``original_gldm_GrayLevelNonUniformityNormalized``. Axis lengths use IBSI's N - 1 covariance;
        ``Kurtosis`` stays pyradiomics' (not excess) kurtosis, as the name says;
        :func:`to_ibsi_names` converts.

    Raises
    ------
    SpecError
        ``params`` or ``config`` cannot be honoured (see :func:`check_ibsi_params`).
    ValueError
        The ROI is missing, or too few voxels survive interpolation or resegmentation.

    Examples
    --------
    >>> import numpy as np, SimpleITK as sitk
    >>> img = sitk.GetImageFromArray(np.arange(64, dtype=float).reshape(4, 4, 4))
    >>> msk = sitk.GetImageFromArray(np.ones((4, 4, 4), np.uint8))
    >>> f = extract_ibsi(img, msk, 1, {"featureClass": {"firstorder": ["Mean"]}}, IBSIConfig(bin_count=8))
    >>> f["original_firstorder_Mean"], f["original_histogram_Maximum"]
    (31.5, 8.0)
    """
    classes, settings = check_ibsi_params(params)
    cfg = resolve_config(config, params)
    pre = preprocess(image, mask, label, cfg)
    return compute_features(pre, classes, settings, (cfg.aggregation,))[cfg.aggregation]
