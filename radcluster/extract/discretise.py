"""Discretise once: one binned image per (filtered image, label) crop for every feature class.

pyradiomics' ``computeFeatures`` builds each feature class (firstorder, GLCM, GLRLM, GLSZM,
GLDM, NGTDM) on the same image crop, and each one converts the crop to an array, compares
the mask with the label and discretises the ROI (``_applyBinning``: ``getBinEdges``, then
``numpy.digitize``). :func:`compute_features` does that once and hands the arrays to
pyradiomics' own classes through a subclass that overrides only the two hooks that produce
them (``_initSegmentBasedCalculation`` and ``_applyBinning``); every feature formula and
texture matrix is still pyradiomics' own code.

``getBinEdges`` finds the ROI's range with Python's builtin ``min``/``max``, an
element-by-element loop over the numpy array (13% of a lung exampleCT.yaml task). The edges
only depend on those two values, so it is called with them alone, found by numpy; with a NaN
in the ROI the builtins' answer depends on where the NaN is, so the whole array goes to
pyradiomics as before.
"""

from __future__ import annotations

import collections
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Discretised", "discretise", "bin_edges", "compute_features"]


@dataclass(frozen=True)
class Discretised:
    """What every feature class of one (image, mask, label, binning) derives alike, read-only."""

    image: np.ndarray  # the crop's gray values (z, y, x): pyradiomics' ``imageArray``
    mask: np.ndarray  # mask == label: ``maskArray``
    binned: np.ndarray  # ``binImage`` of the ROI, 0 outside: the texture classes' ``imageArray``
    gray_levels: np.ndarray  # the bins present in the ROI: ``coefficients['grayLevels']``
    ng: int  # the highest of them: ``coefficients['Ng']``


def bin_edges(values: np.ndarray, **settings: Any) -> np.ndarray:
    """``imageoperations.getBinEdges(values, **settings)``, without its Python loop over the values.

    With a fixed bin width the edges depend only on the lowest and the highest value, so
    pyradiomics is given just those two (in the values' own dtype, so its arithmetic is the
    same); a bin count needs the histogram of all values, and a NaN makes the builtins'
    answer depend on its position, so those cases get the whole array.
    """
    from radiomics import imageoperations

    if settings.get("binCount") is None and values.size and not (values.dtype.kind == "f" and np.isnan(values).any()):
        values = np.array([values.min(), values.max()], dtype=values.dtype)
    return imageoperations.getBinEdges(values, **settings)


def discretise(image, mask, **settings: Any) -> Discretised:
    """The arrays pyradiomics' base class and ``binImage`` derive from ``image`` and ``mask``."""
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(image)
    roi = sitk.GetArrayFromImage(mask) == settings.get("label", 1)
    values = arr[roi]
    # imageoperations.binImage with a mask: int array, digitised inside the ROI, 0 outside
    binned = np.zeros(arr.shape, dtype="int")
    binned[roi] = np.digitize(values, bin_edges(values, **settings))
    levels = np.unique(binned[roi])
    for shared in (arr, roi, binned, levels):
        # one object serves several classes: a class writing into it would change another's input
        shared.flags.writeable = False
    return Discretised(arr, roi, binned, levels, int(np.max(levels)))


class _Precomputed:
    """Mixin: a pyradiomics feature class that takes its arrays from a :class:`Discretised`."""

    def __init__(self, inputImage, inputMask, *, discretised: Discretised, **kwargs):
        self._discretised = discretised
        super().__init__(inputImage, inputMask, **kwargs)

    def _initSegmentBasedCalculation(self):
        self.imageArray = self._discretised.image
        self.maskArray = self._discretised.mask

    def _applyBinning(self, matrix):
        # Every built-in class bins its own imageArray, which is the shared image (firstorder
        # passes a copy of it), so the shared binning is the answer.
        self.coefficients["grayLevels"] = self._discretised.gray_levels
        self.coefficients["Ng"] = self._discretised.ng
        return self._discretised.binned


@functools.cache
def _precomputed_class(cls: type) -> type | None:
    """``cls`` with the shared arrays, or None for a class that derives them its own way."""
    from radiomics.base import RadiomicsFeaturesBase as Base

    if cls._initSegmentBasedCalculation is not Base._initSegmentBasedCalculation or (
        cls._applyBinning is not Base._applyBinning
    ):
        return None
    # The base constructor lists the class's features with inspect.getmembers on every
    # instance; the list is a property of the class, so it is found once.
    names = cls.getFeatureNames()
    # pyradiomics' base class logs through getLogger(self.__module__): the subclass keeps its
    # class's module, so its warnings come from 'radiomics.glcm' (as with execute()), where the
    # per-task capture collects them; a class made here would log as this module, unseen by
    # the capture, and a worker without handlers printed them bare (logging.lastResort).
    attributes = {"__module__": cls.__module__, "getFeatureNames": classmethod(lambda _: dict(names))}
    return type(cls.__name__, (_Precomputed, cls), attributes)


def compute_features(extractor, image, mask, image_type_name: str, **settings: Any) -> collections.OrderedDict:
    """``extractor.computeFeatures(image, mask, image_type_name, **settings)``, discretising once.

    The same classes in the same order with the same feature names and values; the feature
    classes share one :class:`Discretised` of ``image``. Segment-based extraction only
    (radcluster rejects ``voxelBased`` params).
    """
    from radiomics import getFeatureClasses

    out: collections.OrderedDict = collections.OrderedDict()
    classes = getFeatureClasses()
    shared = None
    for class_name, feature_names in extractor.enabledFeatures.items():
        if class_name.startswith("shape") or class_name not in classes:
            continue  # shape is computed apart (computeShape), as in computeFeatures
        cls = _precomputed_class(classes[class_name])
        if cls is None:
            instance = classes[class_name](image, mask, **settings)
        else:
            if shared is None:
                shared = discretise(image, mask, **settings)
            instance = cls(image, mask, discretised=shared, **settings)
        for name in feature_names or ():
            instance.enableFeatureByName(name)
        for name, value in instance.execute().items():
            out[f"{image_type_name}_{class_name}_{name}"] = value
    return out
