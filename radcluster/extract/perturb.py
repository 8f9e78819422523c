"""Perturbed copies of a scan: radcluster's own retests (``extraction.perturb``).

Zwanenburg et al. (2019, *Sci Rep* 9:614; MIRP) assess feature robustness without a second
scan by perturbing the one there is: small rotations and translations of image and mask,
noise, and the contour grown or shrunk. Each :class:`Perturbation` of a scan is extracted as a
scan of its own: :func:`perturbed_cohort` adds, per declared perturbation, a
:class:`~radcluster.cohort.Scan` named ``<case_id>~<perturbation>`` that reads the same files
and carries ``perturbation_of`` (the case) and ``perturbation`` (its name), and
:func:`radcluster.extract.extract_scan` applies it right after reading, so it is one more task
of the run, through the same per-scan function, into the same store. Its rows are never
trained on; :mod:`radcluster.learn.stability` turns them into an ICC per feature.

Every operation is SimpleITK's:

- ``rotate`` / ``translate``: ``sitk.Resample`` of image and mask on their own grid through an
  ``Euler3DTransform`` (about the z axis through the image centre) or a
  ``TranslationTransform`` (whole or fractional voxels along every axis); the image by linear
  interpolation (as float32, the value outside the field of view its minimum), the mask by
  ``sitkLabelLinear`` (linear interpolation of each label, the majority label kept: the
  multi-label form of MIRP's interpolate-then-threshold at 0.5).
- ``noise``: ``AdditiveGaussianNoiseImageFilter`` on the float32 image, seeded by the job's
  seed, the case and the perturbation, on one thread (the same noise on every run).
- ``dilate`` / ``erode``: per label, ``SignedMaurerDistanceMap`` in voxel units: a dilation by
  ``r`` adds every background voxel within ``r`` voxels (Euclidean, centre to centre) of the
  label, an erosion removes every label voxel within ``r`` of a voxel outside it. ``r = 1``
  is the face-connected border (BinaryDilate's ``sitkBall`` of radius 1 would also add the
  edge neighbours).
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..cohort import Cohort
from ..errors import ScanError

__all__ = ["Perturbation", "perturbations", "perturbed_cohort", "PERTURBATION_OF", "SEPARATOR"]

# The carried columns of a perturbed scan's rows: the case it perturbs, and how.
PERTURBATION_OF = "perturbation_of"
PERTURBATION = "perturbation"
# ``<case_id>~<perturbation>``: the case id of a perturbed scan.
SEPARATOR = "~"

Kind = Literal["rotate", "translate", "noise", "dilate", "erode"]


@dataclass(frozen=True)
class Perturbation:
    """One perturbation: ``kind`` by ``amount`` (degrees, voxels, or a noise sd); ``seed`` seeds noise."""

    kind: Kind
    amount: float
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{self.kind}{self.amount:g}"

    def apply(self, case_id: str, image, masks: list) -> tuple[Any, list]:
        """``(image, masks)`` perturbed (SimpleITK images in and out, on the same grid)."""
        import SimpleITK as sitk

        if any(m.GetNumberOfComponentsPerPixel() > 1 for m in masks):
            raise ScanError(case_id, "perturb", f"{self.name}: perturbations need a label-map mask, not a vector mask")
        if self.kind in ("rotate", "translate"):
            transform = self._transform(image)
            low = float(sitk.GetArrayViewFromImage(image).min())
            image = sitk.Resample(image, image, transform, sitk.sitkLinear, low, sitk.sitkFloat32)
            masks = [sitk.Resample(m, m, transform, sitk.sitkLabelLinear, 0, m.GetPixelID()) for m in masks]
        elif self.kind == "noise":
            noise = sitk.AdditiveGaussianNoiseImageFilter()
            noise.SetStandardDeviation(self.amount)
            noise.SetMean(0.0)
            # 0 would mean "seed from the clock": never 0
            noise.SetSeed(zlib.crc32(f"{case_id}|{self.name}|{self.seed}".encode()) % (2**31 - 1) + 1)
            noise.SetNumberOfThreads(1)
            image = noise.Execute(sitk.Cast(image, sitk.sitkFloat32))
        else:
            masks = [self._morph(m) for m in masks]
        return image, masks

    def _transform(self, image):
        import SimpleITK as sitk

        dim = image.GetDimension()
        if self.kind == "translate":
            # a shift of ``amount`` voxels along every index axis, in physical space
            step = np.asarray(image.GetDirection()).reshape(dim, dim) @ (self.amount * np.asarray(image.GetSpacing()))
            return sitk.TranslationTransform(dim, step.tolist())
        centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
        angle = math.radians(self.amount)
        if dim == 2:
            return sitk.Euler2DTransform(centre, angle)
        return sitk.Euler3DTransform(centre, 0.0, 0.0, angle)

    def _morph(self, mask):
        import SimpleITK as sitk

        arr = sitk.GetArrayFromImage(mask)
        out = arr.copy()
        r = self.amount
        for label in np.unique(arr[arr != 0]):
            inside = arr == label
            # distance (voxels, centre to centre) of every voxel outside ``region`` to it
            region = ~inside if self.kind == "erode" else inside
            grid = sitk.GetImageFromArray(region.astype(np.uint8))
            dist = sitk.GetArrayFromImage(
                sitk.SignedMaurerDistanceMap(grid, insideIsPositive=False, squaredDistance=False, useImageSpacing=False)
            )
            near = (dist > 0) & (dist <= r + 1e-9)
            if self.kind == "dilate":
                # into the background only: neighbours keep theirs, a voxel two labels reach
                # goes to the lower one
                out[near & (out == 0)] = label
            else:
                out[near] = 0  # ``near``: the label's voxels within r of its outside
        result = sitk.GetImageFromArray(out)
        result.CopyInformation(mask)
        return result


def perturbations(spec) -> list[Perturbation]:
    """The perturbations a :class:`~radcluster.spec.perturb.PerturbSpec` declares, in its order."""
    kinds: tuple[Kind, ...] = ("rotate", "translate", "noise", "dilate", "erode")
    return [Perturbation(kind, float(a), spec.seed) for kind in kinds for a in getattr(spec, kind)]


def perturbed_cohort(cohort: Cohort, spec) -> Cohort:
    """``cohort`` with a perturbed scan per (scan, perturbation) after its scans.

    Scans that are themselves retests (a ``retest_of`` value) are not perturbed. With
    ``spec.cases``, that many scans are chosen (seeded) from the others.
    """
    if spec is None:
        return cohort
    chosen = [s for s in cohort.scans if _missing(s.extra.get("retest_of"))]
    if spec.cases is not None and spec.cases < len(chosen):
        pick = np.random.default_rng(spec.seed).choice(len(chosen), spec.cases, replace=False)
        chosen = [chosen[i] for i in sorted(pick)]
    extra_scans = tuple(
        dataclasses.replace(
            scan,
            case_id=f"{scan.case_id}{SEPARATOR}{p.name}",
            extra={**scan.extra, PERTURBATION_OF: scan.case_id, PERTURBATION: p.name},
            perturbation=p,
        )
        for scan in chosen
        for p in perturbations(spec)
    )
    carried = tuple(dict.fromkeys((*cohort.carried, PERTURBATION_OF, PERTURBATION)))
    return dataclasses.replace(cohort, scans=cohort.scans + extra_scans, carried=carried)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""
