"""The IBSI mode settings: one frozen object, the five IBSI 1 CT configurations by name."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..errors import SpecError, did_you_mean

__all__ = ["AGGREGATIONS", "IBSIConfig", "NAMED_CONFIGS", "resolve_config"]

#: IBSI texture aggregation methods, in the order reports list them.
AGGREGATIONS = ("3D_avg", "3D_comb", "2_5D_avg", "2_5D_comb", "2D_avg", "2D_comb")
_INTERPOLATIONS = ("linear", "cubic", "nearest")
# pyradiomics interpolator names -> IBSI mode's
_SITK_INTERPOLATORS = {"sitkLinear": "linear", "sitkBSpline": "cubic", "sitkNearestNeighbor": "nearest"}


@dataclass(frozen=True)
class IBSIConfig:
    """How IBSI mode preprocesses a scan before pyradiomics computes features.

    In IBSI mode these settings replace pyradiomics' own resampling, resegmentation,
    discretisation and aggregation settings (``resampledPixelSpacing``, ``interpolator``,
    ``resegmentRange``, ``resegmentMode``, ``binWidth``, ``binCount``, ``force2D``,
    ``weightingNorm``, ``voxelArrayShift``, which is 0).

    Parameters
    ----------
    name : str
        A label for reports.
    spacing : tuple of (float or None), or None
        Voxel spacing (x, y, z) in mm after resampling on IBSI's centre-aligned grid; ``None``
        for no resampling; a ``None`` entry keeps that axis (2D configurations: ``(2, 2, None)``).
    interpolation : {"linear", "cubic", "nearest"}
        Image interpolation; ``cubic`` is cubic B-spline interpolation. The mask is always
        interpolated linearly and thresholded at ``mask_threshold``.
    mask_threshold : float
        Partial-volume threshold of the interpolated mask (IBSI: 0.5).
    round_intensities : bool
        Round interpolated intensities to integers (IBSI configurations B-E, for CT).
    resegment_range : tuple of (float or None), or None
        Closed intensity range (lower, upper) kept in the intensity mask; ``None`` bounds are open.
        The lower bound is also where fixed-bin-size discretisation starts.
    outlier_sigma : float or None
        Also drop intensities beyond mean +/- ``outlier_sigma`` standard deviations of the
        ROI (before resegmentation). Combined with ``resegment_range`` when both are set.
    bin_width, bin_count : float or None, int or None
        Fixed bin size or fixed bin number discretisation; exactly one is set.
    aggregation : str
        Texture aggregation: one of ``3D_avg``, ``3D_comb``, ``2_5D_avg``, ``2_5D_comb``,
        ``2D_avg``, ``2D_comb``.

    Examples
    --------
    >>> from radcluster.ibsi import IBSIConfig
    >>> IBSIConfig.named("C").bin_width
    25.0
    >>> IBSIConfig.from_dict({"bin_count": 32, "spacing": [2, 2, 2]}).spacing
    (2.0, 2.0, 2.0)
    """

    name: str = "custom"
    spacing: tuple[float | None, float | None, float | None] | None = None
    interpolation: str = "linear"
    mask_threshold: float = 0.5
    round_intensities: bool = False
    resegment_range: tuple[float | None, float | None] | None = None
    outlier_sigma: float | None = None
    bin_width: float | None = None
    bin_count: int | None = None
    aggregation: str = "3D_avg"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.spacing is not None:
            spacing = tuple(self.spacing)
            if len(spacing) != 3 or any(s is not None and not (_number(s) and s > 0) for s in spacing):
                raise SpecError(
                    f"IBSI config {self.name!r} key 'spacing'",
                    "must be three positive numbers (x, y, z in mm, None to keep an axis) or None",
                    f"got {self.spacing!r}",
                )
            set_(self, "spacing", tuple(None if s is None else float(s) for s in spacing))
        if self.interpolation not in _INTERPOLATIONS:
            raise SpecError(
                f"IBSI config {self.name!r} key 'interpolation'",
                f"must be one of {list(_INTERPOLATIONS)}",
                f"got {self.interpolation!r}",
            )
        if not (_number(self.mask_threshold) and 0 < self.mask_threshold <= 1):
            raise SpecError(
                f"IBSI config {self.name!r} key 'mask_threshold'", "must be in (0, 1]", f"got {self.mask_threshold!r}"
            )
        if self.resegment_range is not None:
            rng = tuple(self.resegment_range)
            if (
                len(rng) != 2
                or any(v is not None and not _number(v) for v in rng)
                or (None not in rng and rng[0] > rng[1])
            ):
                raise SpecError(
                    f"IBSI config {self.name!r} key 'resegment_range'",
                    "must be [lower, upper] with lower <= upper (None for an open bound)",
                    f"got {self.resegment_range!r}",
                )
            set_(self, "resegment_range", tuple(None if v is None else float(v) for v in rng))
        if self.outlier_sigma is not None and not (_number(self.outlier_sigma) and self.outlier_sigma > 0):
            raise SpecError(
                f"IBSI config {self.name!r} key 'outlier_sigma'",
                "must be a positive number or None",
                f"got {self.outlier_sigma!r}",
            )
        if (self.bin_width is None) == (self.bin_count is None):
            raise SpecError(
                f"IBSI config {self.name!r}",
                "set exactly one of 'bin_width' (fixed bin size) and 'bin_count' (fixed bin number)",
                f"got bin_width={self.bin_width!r}, bin_count={self.bin_count!r}",
            )
        if self.bin_width is not None:
            if not (_number(self.bin_width) and self.bin_width > 0):
                raise SpecError(
                    f"IBSI config {self.name!r} key 'bin_width'", "must be positive", f"got {self.bin_width!r}"
                )
            set_(self, "bin_width", float(self.bin_width))
        if self.bin_count is not None and not (isinstance(self.bin_count, int) and self.bin_count >= 1):
            raise SpecError(
                f"IBSI config {self.name!r} key 'bin_count'", "must be an integer >= 1", f"got {self.bin_count!r}"
            )
        if self.aggregation not in AGGREGATIONS:
            raise SpecError(
                f"IBSI config {self.name!r} key 'aggregation'",
                f"must be one of {list(AGGREGATIONS)}",
                f"got {self.aggregation!r}",
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IBSIConfig:
        """Build from a mapping (a job YAML section); unknown keys are rejected."""
        known = [f.name for f in fields(cls)]
        for key in data:
            if key not in known:
                raise SpecError(
                    f"IBSI config key {key!r}", "unknown key", did_you_mean(key, known, listing="valid keys")
                )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data (lists, not tuples), for YAML/JSON."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def named(cls, name: str) -> IBSIConfig:
        """One of IBSI 1's CT phantom configurations ``A``-``E``, or ``digital_phantom``."""
        try:
            return NAMED_CONFIGS[name]
        except KeyError:
            raise SpecError(
                f"IBSI configuration {name!r}", "unknown", did_you_mean(name, sorted(NAMED_CONFIGS), listing="known")
            ) from None

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> IBSIConfig:
        """The IBSI reading of a pyradiomics params mapping's preprocessing settings.

        ``binWidth``/``binCount``, ``resampledPixelSpacing`` (0 keeps an axis),
        ``interpolator``, ``resegmentRange`` with ``resegmentMode`` absolute (a range) or sigma
        (symmetric outlier filtering), ``force2D`` and ``weightingNorm: no_weighting`` become
        their IBSI counterparts; intensities are not rounded.
        """
        s = dict((params or {}).get("setting") or {})
        spacing = s.get("resampledPixelSpacing")
        if spacing is not None:
            spacing = tuple(None if not v else float(v) for v in spacing)
        interp = _SITK_INTERPOLATORS.get(s.get("interpolator", "sitkBSpline") or "sitkBSpline")
        if spacing is not None and interp is None:
            raise SpecError(
                "params key 'setting.interpolator' in IBSI mode",
                f"{s.get('interpolator')!r} is not supported",
                f"use one of {sorted(_SITK_INTERPOLATORS)}",
            )
        rng = s.get("resegmentRange")
        mode = s.get("resegmentMode", "absolute")
        reseg, sigma = None, None
        if rng:
            if mode == "absolute":
                reseg = (float(rng[0]), float(rng[1])) if len(rng) == 2 else (float(rng[0]), None)
            elif mode == "sigma" and len(rng) == 2 and math.isclose(-rng[0], rng[1]):
                sigma = float(rng[1])
            else:
                raise SpecError(
                    "params key 'setting.resegmentMode' in IBSI mode",
                    f"{mode!r} with resegmentRange {rng!r} has no IBSI equivalent",
                    "use 'absolute' or a symmetric 'sigma' range",
                )
        if s.get("binCount") is not None:
            width, count = None, int(s["binCount"])
        else:
            width, count = float(s.get("binWidth", 25)), None
        dims = "2_5D" if s.get("force2D") else "3D"
        if s.get("force2D") and s.get("force2Ddimension", 0) != 0:
            raise SpecError(
                "params key 'setting.force2Ddimension' in IBSI mode",
                f"is {s['force2Ddimension']!r}",
                "must be 0 (axial slices)",
            )
        weighting = s.get("weightingNorm")
        if weighting not in (None, "no_weighting"):
            raise SpecError(
                "params key 'setting.weightingNorm' in IBSI mode",
                f"{weighting!r} has no IBSI aggregation",
                "use none (IBSI 'avg') or 'no_weighting' (IBSI 'comb')",
            )
        method = "comb" if weighting == "no_weighting" else "avg"
        return cls(
            name="params",
            spacing=spacing,
            interpolation=interp or "linear",
            resegment_range=reseg,
            outlier_sigma=sigma,
            bin_width=width,
            bin_count=count,
            aggregation=f"{dims}_{method}",
        )

    def with_aggregation(self, aggregation: str) -> IBSIConfig:
        """The same preprocessing with another texture aggregation."""
        return replace(self, aggregation=aggregation)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


#: IBSI 1 (reference manual, table 5.1) CT phantom configurations, and the digital phantom.
NAMED_CONFIGS: dict[str, IBSIConfig] = {
    "digital_phantom": IBSIConfig(name="digital_phantom", bin_width=1),
    "A": IBSIConfig(name="A", resegment_range=(-500, 400), bin_width=25, aggregation="2D_avg"),
    "B": IBSIConfig(
        name="B",
        spacing=(2, 2, None),
        interpolation="linear",
        round_intensities=True,
        resegment_range=(-500, 400),
        bin_count=32,
        aggregation="2D_avg",
    ),
    "C": IBSIConfig(
        name="C",
        spacing=(2, 2, 2),
        interpolation="linear",
        round_intensities=True,
        resegment_range=(-1000, 400),
        bin_width=25,
    ),
    "D": IBSIConfig(
        name="D", spacing=(2, 2, 2), interpolation="linear", round_intensities=True, outlier_sigma=3, bin_count=32
    ),
    "E": IBSIConfig(
        name="E",
        spacing=(2, 2, 2),
        interpolation="cubic",
        round_intensities=True,
        resegment_range=(-1000, 400),
        outlier_sigma=3,
        bin_count=32,
    ),
}


def resolve_config(config: IBSIConfig | str | dict | None, params: dict | None) -> IBSIConfig:
    """An :class:`IBSIConfig` from a config, a configuration name, a mapping, or ``params``."""
    if isinstance(config, IBSIConfig):
        return config
    if config is None:
        return IBSIConfig.from_params(params or {})
    if isinstance(config, str):
        return IBSIConfig.named(config)
    if isinstance(config, dict):
        return IBSIConfig.from_dict(config)
    raise SpecError(
        "IBSI config", f"is a {type(config).__name__}", "give an IBSIConfig, a configuration name or a mapping"
    )
