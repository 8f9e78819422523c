"""The fast path: pyradiomics' own ``execute`` steps on per-label crops, shared work done once.

``execute(image, mask, label=l)`` per label re-reads, re-hashes and re-filters the whole scan
each time. Here the labels are found in the mask's non-zero block, each label is extracted on
a crop around it (``checkMask``, ``resampleImage``, the image-type filters, ``computeShape``,
``computeFeatures``), and a filtered image that does not depend on the label is computed once
per scan and cropped for every label; within one filtered crop the feature classes share one
discretisation (:mod:`.discretise`). The result equals ``execute()``'s: every feature equal or
within 1e-12 relative, over every setting and image type pyradiomics documents, each alone
and in pairs (tests/extract/test_parity_matrix.py).

Why each step gives execute()'s voxels: label-free filters see the whole (normalised) image,
as in execute(); a filter that reads the mask (LBP3D) runs per label on the whole image and
mask, as in execute() (:func:`plain_route`); with preCrop or resampling execute() filters a
per-label crop, built here from the same voxels; resampling reads the whole image except with
a B-spline, whose crop margin is tested (:func:`_crops_before_resampling`).
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from ..cohort import Scan
from ..errors import ScanError
from .discretise import compute_features

# Image types whose output at a voxel does not depend on the label being extracted, so one
# filtered image serves every label of a scan (LBP3D reads the mask, so it is per label).
_LABEL_FREE_TYPES = frozenset(
    {
        "Original",
        "LoG",
        "Wavelet",
        "Square",
        "SquareRoot",
        "Logarithm",
        "Exponential",
        "Gradient",
        "LBP2D",
    }
)


# Extra voxels kept around a label before B-spline resampling: ITK computes B-spline
# coefficients with a recursive (IIR) prefilter whose influence decays as 0.268**d, so 24
# voxels bound the difference from resampling the whole image by ~1e-14 of the intensity range.
_RESAMPLE_MARGIN = 24


def _crops_before_resampling(interpolator) -> bool:
    """Whether to interpolate from a crop around the label instead of the whole image.

    A B-spline interpolator of order >= 2 prefilters the whole input image, most of a CT
    task's time; from a crop with ``_RESAMPLE_MARGIN`` it gives the same voxels (asserted on
    every real case by tests/extract/test_parity.py and the parity matrix). Every other
    interpolator reads only voxels near each output point, so the whole image costs no more and
    is exactly execute()'s computation: a crop's origin moves the continuous indices by
    rounding, enough to flip the rounding of a linear or Gaussian value at .5 in an integer image.
    """
    import SimpleITK as sitk

    value = getattr(sitk, interpolator, None) if isinstance(interpolator, str) else interpolator
    return value in (sitk.sitkBSpline2, sitk.sitkBSpline3, sitk.sitkBSpline4, sitk.sitkBSpline5)


def _filters_whole_image(settings: dict) -> bool:
    """Whether execute() filters the whole image (no resampling, no preCrop), not a label's crop."""
    resample = settings.get("interpolator") is not None and settings.get("resampledPixelSpacing") is not None
    return not resample and not settings.get("preCrop")


def plain_route(extractor) -> list[str]:
    """The image types the fast path computes per label on the whole image and mask, as
    execute() does, instead of once per scan: those that read the mask (LBP3D), when execute()
    filters the whole image. The run record lists them."""
    if not _filters_whole_image(extractor.settings):
        return []
    return [name for name in extractor.enabledImagetypes if name not in _LABEL_FREE_TYPES]


def find_labels(scan: Scan, mask) -> list[tuple[slice, ...] | None]:
    """``ndimage.find_objects`` of the mask as pyradiomics sees it (cast to UInt32).

    Casting a whole CT-sized mask and scanning it label by label was over a third of a lung
    task; the non-zero bounding box (one pass) is usually a small block, so the labels are
    found in that block only and the slices shifted back to the whole volume.
    """
    import SimpleITK as sitk
    from scipy import ndimage

    arr = sitk.GetArrayViewFromImage(mask)
    if arr.dtype.kind not in "ui":
        # a float mask's values are truncated by the cast, so find labels after it (the
        # cast image must outlive the view of its buffer)
        mask = sitk.Cast(mask, sitk.sitkUInt32)
        arr = sitk.GetArrayViewFromImage(mask)
    nonzero = arr != 0
    box = []
    for axis in range(arr.ndim):
        hit = np.flatnonzero(nonzero.any(axis=tuple(a for a in range(arr.ndim) if a != axis)))
        if hit.size == 0:
            return []
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    block = arr[tuple(box)]
    if block.dtype.kind == "i" and block.min() < 0:
        raise ScanError(
            scan.case_id,
            "check",
            f"mask has negative values (minimum {block.min()}); labels must be non-negative integers",
            file=scan.mask,
        )
    return [
        None if sl is None else tuple(slice(s.start + b.start, s.stop + b.start) for s, b in zip(sl, box, strict=True))
        for sl in ndimage.find_objects(block)
    ]


def _bounds(slices: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) inclusive index bounds in SimpleITK's (x, y, z) order."""
    lower = np.array([s.start for s in reversed(slices)])
    upper = np.array([s.stop - 1 for s in reversed(slices)])
    return lower, upper


def _crop(image, lower: np.ndarray, upper: np.ndarray, pad: np.ndarray | int):
    import SimpleITK as sitk

    size = np.array(image.GetSize())
    lo = np.maximum(lower - pad, 0)
    hi = np.minimum(upper + pad, size - 1)
    return sitk.RegionOfInterest(image, (hi - lo + 1).tolist(), lo.tolist())


def owned_units(extractor, ndim: int, part: tuple[int, int] | None) -> set[str] | None:
    """The units part (i, k) of a scan split by filter extracts; None: all (not split).

    The units are ``shape`` and then every image pyradiomics' filters give, by name (each
    LoG sigma, each wavelet sub-band, ...), dealt round-robin: part i takes every k-th from
    the i-th. Every part derives the same list from the params, so each unit is computed by
    exactly one part.
    """
    from ._radiomics import image_type_names

    if part is None:
        return None
    units = ["shape"]
    for name, custom in extractor.enabledImagetypes.items():
        units += image_type_names(name, {**extractor.settings, **custom}, ndim)
    return {u for j, u in enumerate(units) if j % part[1] == part[0]}


def group_unit(group: str) -> str:
    """The unit a column group (``<image>_<class>_``) belongs to: ``shape`` or its image's name."""
    image, cls = group.split("_")[:2]
    return "shape" if cls.startswith("shape") else image


def _filtered(image, mask, types: dict, settings: dict, owned: set[str] | None):
    """pyradiomics' filtered images of ``image`` (the ``get<Type>Image`` generators, in order),
    or only those named in ``owned`` (:func:`owned_units`); a LoG sigma's image is computed
    only by the part that owns it (pyradiomics computes each sigma's image on its own too)."""
    from radiomics import imageoperations

    from ._radiomics import image_type_names

    for name, custom in types.items():
        args = dict(settings, **custom)
        calls = [args]
        if owned is not None and name == "LoG":
            calls = [
                dict(args, sigma=[s])
                for s in args.get("sigma", [])
                if set(image_type_names(name, dict(args, sigma=[s]), image.GetDimension())) & owned
            ]
        elif owned is not None and not set(image_type_names(name, args, image.GetDimension())) & owned:
            calls = []
        for call in calls:
            for filtered, type_name, type_kw in getattr(imageoperations, f"get{name}Image")(image, mask, **call):
                if owned is None or type_name in owned:
                    yield filtered, type_name, type_kw


def extract_labels(
    scan: Scan,
    image,
    mask,
    extractor,
    labels: list[int],
    objects,
    present: list[int],
    filter_part: tuple[int, int] | None = None,
):
    """pyradiomics' ``execute`` steps on per-label crops, with shared work done once.

    ``filter_part`` (i, k) extracts, for every label, only the shape / filtered-image units
    :func:`owned_units` gives that part: one part of a big scan split by filter.
    """
    import SimpleITK as sitk
    from radiomics import imageoperations

    base = dict(extractor.settings)
    base["additionalInfo"] = False
    if base.get("normalize"):
        # normalisation uses whole-image statistics, so it runs before any crop, once
        image = imageoperations.normalizeImage(image, **base)
        base["normalize"] = False
    resample = base.get("interpolator") is not None and base.get("resampledPixelSpacing") is not None
    pre_crop = bool(base.get("preCrop")) and not resample
    types = extractor.enabledImagetypes
    # Without resampling or preCrop, execute() filters the whole image: a label-free filter is
    # computed once on it and cropped per label; a filter that reads the mask (LBP3D) is
    # computed per label on the whole image and mask, as execute() does (on a crop, its spline
    # interpolation would see other boundaries). With either, execute() filters a per-label
    # crop, which is built here from the same voxels and filtered the same way.
    whole_image = _filters_whole_image(base)
    per_label = {n: types[n] for n in plain_route(extractor)} if whole_image else dict(types)
    shared = {n: c for n, c in types.items() if n not in per_label}
    owned = owned_units(extractor, image.GetDimension(), filter_part)

    out: dict[int, Any] = {}
    state: dict[int, tuple] = {}
    spacing = np.array(image.GetSpacing())
    # pyradiomics casts every mask to UInt32; a crop is cast after cropping (the same voxels),
    # but resampling computes its grid from the whole mask, which is then cast once.
    whole_mask = sitk.Cast(mask, sitk.sitkUInt32) if resample or (whole_image and per_label) else None
    for label in labels:
        kw = dict(base, label=label)
        if label not in present:
            out[label] = ScanError(
                scan.case_id,
                "check",
                f"label {label} not present in mask; present: {present[:20]}",
                file=scan.mask,
                label=label,
            )
            continue
        lower, upper = _bounds(objects[label - 1])
        try:
            if resample:
                source = image
                if _crops_before_resampling(base["interpolator"]):
                    new = np.array(base["resampledPixelSpacing"], dtype=float)
                    new = np.where(new == 0, spacing, new)
                    pad = np.ceil((int(base.get("padDistance", 5)) + 1) * new / spacing).astype(int)
                    source = _crop(image, lower, upper, pad + _RESAMPLE_MARGIN)
                # The output grid is computed by pyradiomics from the full mask, exactly as in
                # execute(); at most the image it interpolates from is cropped.
                image_l, mask_l = imageoperations.resampleImage(source, whole_mask, **kw)
            elif pre_crop:
                image_l = _crop(image, lower, upper, int(base.get("padDistance", 5)))
                mask_l = sitk.Cast(_crop(mask, lower, upper, int(base.get("padDistance", 5))), sitk.sitkUInt32)
            else:
                image_l = _crop(image, lower, upper, 1)
                mask_l = sitk.Cast(_crop(mask, lower, upper, 1), sitk.sitkUInt32)
            bbox, _ = imageoperations.checkMask(image_l, mask_l, **kw)
            reseg = None
            if base.get("resegmentRange") is not None:
                reseg = imageoperations.resegmentMask(image_l, mask_l, **kw)
                bbox, _ = imageoperations.checkMask(image_l, reseg, **kw)
            shape_mask = reseg if (reseg is not None and base.get("resegmentShape")) else mask_l
            features = collections.OrderedDict()
            if owned is None or "shape" in owned:
                features.update(extractor.computeShape(image_l, shape_mask, bbox, **kw))
            feature_mask = reseg if reseg is not None else mask_l
            filter_image, filter_mask = image_l, feature_mask
            if whole_image and per_label:
                filter_image, filter_mask = image, whole_mask
                if reseg is not None:  # the thresholds come from the label's voxels: the same on the crop
                    filter_mask = imageoperations.resegmentMask(image, whole_mask, **kw)
            for filtered, type_name, type_kw in _filtered(filter_image, filter_mask, per_label, kw, owned):
                if filter_image is image:
                    filtered = _crop(filtered, lower, upper, 1)
                img_c, msk_c = imageoperations.cropToTumorMask(filtered, feature_mask, bbox)
                features.update(compute_features(extractor, img_c, msk_c, type_name, **type_kw))
            out[label] = features
            state[label] = (lower, upper, bbox, feature_mask)
        except Exception as err:  # pyradiomics raises ValueError, AssertionError, RuntimeError
            out[label] = ScanError.wrap(scan.case_id, err, file=scan.mask, label=label)

    if shared and state:
        # Each filtered image is computed once on the whole (normalised) image, as
        # pyradiomics does per call, then cropped for every label.
        for filtered, type_name, type_kw in _filtered(image, mask, shared, base, owned):
            for label, (lower, upper, bbox, feature_mask) in list(state.items()):
                try:
                    img_c, msk_c = imageoperations.cropToTumorMask(_crop(filtered, lower, upper, 1), feature_mask, bbox)
                    out[label].update(
                        compute_features(extractor, img_c, msk_c, type_name, **dict(type_kw, label=label))
                    )
                except Exception as err:
                    out[label] = ScanError.wrap(scan.case_id, err, file=scan.mask, label=label)
                    del state[label]
    return out
