"""The ``pyradiomics`` engine (the default): pyradiomics' features through the fast path, or
``execute()`` per label (the plain path, ``extraction.fast: false``).

The fast path (:mod:`radcluster.extract.fast`) works on the scan as read once; the plain path
calls ``RadiomicsFeatureExtractor.execute(image, mask, label=l)``, which reads the files again,
exactly as a pyradiomics user would. Masks picked from a vector image or resampled onto the
image (``correctMask``) take the plain path too: the fast path assumes a shared scalar grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ... import _io
from ...errors import ScanError
from ..readers import REORIENTED
from . import Engine, ScanImage

__all__ = ["PyradiomicsEngine", "plain_filters"]


def _plain_path(extractor, settings, mask) -> bool:
    """Whether the scan goes through execute() per label (the fast path assumes a scalar mask on the image grid)."""
    return mask.GetNumberOfComponentsPerPixel() > 1 or not settings.fast or bool(extractor.settings.get("correctMask"))


def plain_filters(extractor, settings, mask) -> list[str]:
    """The image types that take execute()'s own route for this scan: all of them on the plain
    path, else those the fast path computes per label as execute() does (:func:`~..fast.plain_route`)."""
    from ..fast import plain_route

    return list(extractor.enabledImagetypes) if _plain_path(extractor, settings, mask) else plain_route(extractor)


@dataclass(frozen=True)
class PyradiomicsEngine(Engine):
    """pyradiomics' features, as the params file (``extraction.params``) says; no options."""

    name = "pyradiomics"
    kind = "radiomics"

    def extract(self, scan: ScanImage, settings) -> dict[int, Any]:
        import SimpleITK as sitk

        from .._radiomics import get_extractor
        from ..fast import extract_labels

        extractor = get_extractor(settings.params_text)
        vector_mask = scan.mask.GetNumberOfComponentsPerPixel() > 1
        if _plain_path(extractor, settings, scan.mask):
            if scan.filter_part and scan.filter_part[0] > 0:
                return {}  # execute() cannot be split by filter: part 0 extracts it whole
            present = [scan.default_label]
            if scan.scan.labels == "all" and not vector_mask:
                present = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(scan.mask)) if v != 0]
            return {label: _plain(scan, extractor, label) for label in scan.labels(present)}
        present = scan.present
        if not present:
            raise ScanError(scan.scan.case_id, "check", "mask is empty (no non-zero voxel)", file=scan.scan.mask)
        return extract_labels(
            scan.scan, scan.image, scan.mask, extractor, scan.labels(present), scan.boxes, present, scan.filter_part
        )


def _plain(scan: ScanImage, extractor, label: int):
    try:
        if scan.scan.dicom or scan.mask.HasMetaDataKey(REORIENTED) or scan.scan.perturbation is not None:
            # pyradiomics reads no DICOM series, and a reoriented or perturbed scan is not its files
            return extractor.execute(scan.image, scan.mask, label=label)
        with _io.local_file(scan.scan.image) as img, _io.local_file(scan.scan.mask) as msk:
            return extractor.execute(img, msk, label=label)
    except Exception as err:  # pyradiomics raises ValueError, AssertionError, RuntimeError
        return ScanError.wrap(scan.scan.case_id, err, file=scan.scan.mask, label=label)
