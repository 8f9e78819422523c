"""The ``extraction.perturb`` section: perturbed copies of each scan, for feature stability.

In the spirit of MIRP and Zwanenburg et al. (2019, *Sci Rep* 9:614), radcluster makes its own
retests: each declared perturbation of a scan (a small rotation or translation of image and
mask, noise, the mask grown or shrunk by a voxel) is one more extraction task, through the
same per-scan function and into the same store (:mod:`radcluster.extract.perturb`). The ICC
of every feature across a scan's perturbations is what ``train.select.icc_min`` filters on.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from ._base import Section

__all__ = ["PerturbSpec"]


class PerturbSpec(Section):
    """Perturbations of every scan, each extracted as a scan of its own (one task each)."""

    rotate: tuple[float, ...] = Field(
        (), description="angles (degrees) about the image's z axis through its centre; one perturbed scan per angle"
    )
    translate: tuple[float, ...] = Field(
        (), description="shifts in voxels along every axis (e.g. 0.5: half a voxel in x, y and z); one scan per value"
    )
    noise: tuple[float, ...] = Field(
        (), description="standard deviations of added Gaussian noise, in image units (CT: HU); one scan per value"
    )
    dilate: tuple[int, ...] = Field(
        (), description="mask grown by this many voxels (every voxel within that distance of it); one scan per value"
    )
    erode: tuple[int, ...] = Field(
        (), description="mask shrunk by this many voxels (every voxel within that distance of its outside removed)"
    )
    cases: int | None = Field(
        None, ge=3, description="perturb this many scans (a seeded random choice); null: every scan"
    )
    seed: int = Field(0, ge=0, description="seed of the noise and of the choice of scans")

    @field_validator("rotate", "translate", "noise")
    @classmethod
    def _nonzero(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(x == 0 for x in v) or len(set(v)) != len(v):
            raise ValueError("values must be distinct and non-zero (0 is the scan itself)")
        return v

    @field_validator("noise")
    @classmethod
    def _positive(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(x < 0 for x in v):
            raise ValueError("noise standard deviations must be > 0")
        return v

    @field_validator("dilate", "erode")
    @classmethod
    def _voxels(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(x < 1 for x in v) or len(set(v)) != len(v):
            raise ValueError("must be distinct whole numbers of voxels >= 1")
        return v

    @model_validator(mode="after")
    def _some(self) -> PerturbSpec:
        if not (self.rotate or self.translate or self.noise or self.dilate or self.erode):
            raise ValueError("declares no perturbation; give rotate, translate, noise, dilate or erode")
        return self
