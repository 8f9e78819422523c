"""IBSI compliance check: radcluster's features against IBSI 1 reference values.

Two modes are compared on each phantom: *stock* (pyradiomics' own extractor with the settings
closest to the configuration) and *IBSI mode* (:mod:`radcluster.ibsi.mode`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from ..errors import SpecError, did_you_mean
from .config import AGGREGATIONS, IBSIConfig
from .names import NameRow, name_table

__all__ = [
    "Comparison",
    "DatasetResult",
    "ComplianceResult",
    "rounded_difference",
    "matches",
    "read_reference",
    "check_compliance",
    "stock_settings",
    "family_of",
    "FAMILIES",
]

#: IBSI feature families (tag prefix -> title), in report order.
FAMILIES = {
    "morph": "Morphology",
    "loc": "Local intensity",
    "stat": "Intensity statistics",
    "ih": "Intensity histogram",
    "ivh": "Intensity-volume histogram",
    "cm": "GLCM",
    "rlm": "GLRLM",
    "szm": "GLSZM",
    "dzm": "GLDZM",
    "ngt": "NGTDM",
    "ngl": "NGLDM",
    "diag": "Preprocessing diagnostics",
}
_DIAG_PREFIXES = ("img_", "vox_", "mean_int", "min_int", "max_int", "int_mask_", "morph_mask_")
STOCK_AGGREGATIONS = ("3D_avg", "3D_comb", "2_5D_avg", "2_5D_comb")
MODES = ("stock", "ibsi")

# (data set, IBSI configuration, phantom folder, reference file)
_DATASETS = [("digital phantom", "digital_phantom", "digital_phantom", "ibsi_1_dig_phantom.csv")] + [
    (f"CT phantom, configuration {c}", c, "ct_phantom", f"ibsi_1_chest_config_{c.lower()}.csv") for c in "ABCDE"
]


def family_of(tag: str) -> str:
    """The family key of an IBSI tag (``cm_contrast_3D_avg`` -> ``cm``)."""
    if tag.startswith(_DIAG_PREFIXES):
        return "diag"
    return tag.split("_", 1)[0]


def rounded_difference(value: float, reference: float) -> float:
    """``|value - reference|`` rounded (half up) at the reference's third significant figure.

    IBSI reports reference values to three significant figures; a difference smaller than
    half a unit of that figure is no difference. A reference of 0 has no significant figure:
    the difference is returned unrounded.

    Examples
    --------
    >>> rounded_difference(2.1486, 2.15)
    0.0
    >>> round(rounded_difference(9.2449, 9.31), 6)
    0.07
    """
    diff = abs(value - reference)
    if reference == 0 or not math.isfinite(diff):
        return diff
    quantum = 10.0 ** (math.floor(math.log10(abs(reference))) - 2)
    return math.floor(diff / quantum + 0.5) * quantum


def matches(value: float | None, reference: float, tolerance: float) -> bool:
    """IBSI's matching rule: the rounded difference is within the tolerance.

    Examples
    --------
    >>> matches(8.478, 8.54, 0.05)
    False
    >>> matches(556.33, 556.0, 4.0)
    True
    """
    if value is None or not math.isfinite(value):
        return False
    quantum = 10.0 ** (math.floor(math.log10(abs(reference))) - 2) if reference else 0.0
    # the slack absorbs binary floating point in "0.07 <= 0.07"; it is far below any quantum
    return rounded_difference(value, reference) <= tolerance + 1e-9 * max(quantum, abs(tolerance), 1e-12)


def read_reference(path: Path) -> dict[str, tuple[float, float]]:
    """An IBSI reference file (``reference value;tolerance;tag``) as tag -> (reference, tolerance).

    Tags without a reference value (IBSI found no consensus) are left out.
    """
    out: dict[str, tuple[float, float]] = {}
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].strip().split(";") != ["reference value", "tolerance", "tag"]:
        raise SpecError(
            f"IBSI reference file {str(path)!r}",
            f"first line is {lines[0] if lines else ''!r}",
            "must be 'reference value;tolerance;tag'",
        )
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.strip().split(";")
        if len(parts) != 3:
            raise SpecError(
                f"IBSI reference file {str(path)!r} line {number}", "expected 3 ';'-separated fields", f"got {line!r}"
            )
        ref, tol, tag = parts
        if ref.strip() == "":
            continue
        out[tag.strip()] = (float(ref), float(tol or 0))
    return out


@dataclass(frozen=True)
class Comparison:
    """One reference value against one computed value (or its absence)."""

    tag: str
    reference: float
    tolerance: float
    feature: str | None = None  # the pyradiomics name the value came from
    value: float | None = None
    difference: float | None = None  # rounded as IBSI prescribes
    matched: bool | None = None  # None: not available
    reason: str = ""

    @property
    def family(self) -> str:
        return family_of(self.tag)


@dataclass
class DatasetResult:
    """The comparisons of one data set (phantom and configuration) in each mode."""

    name: str
    config: IBSIConfig
    comparisons: dict[str, list[Comparison]] = field(default_factory=dict)
    stock_settings: dict = field(default_factory=dict)
    stock_caveats: list[str] = field(default_factory=list)

    def counts(self, mode: str, family: str | None = None) -> tuple[int, int, int]:
        """(matched, compared, not available) in ``mode``, for one family or all features."""
        rows = [c for c in self.comparisons.get(mode, []) if (c.family == family if family else c.family != "diag")]
        compared = [c for c in rows if c.matched is not None]
        return sum(c.matched for c in compared), len(compared), len(rows) - len(compared)

    def mismatches(self, mode: str) -> list[Comparison]:
        return [c for c in self.comparisons.get(mode, []) if c.matched is False]


@dataclass
class ComplianceResult:
    datasets: list[DatasetResult]

    def unexplained(self) -> list[tuple[str, str, Comparison]]:
        """Mismatches without a documented cause: (data set, mode, comparison)."""
        return [
            (d.name, mode, c)
            for d in self.datasets
            for mode in MODES
            for c in d.mismatches(mode)
            if c.reason.startswith("unexplained")
        ]


# --- the stock pyradiomics counterpart of a configuration ---------------------------------------


def stock_settings(config: IBSIConfig) -> tuple[dict, list[str]]:
    """pyradiomics settings closest to ``config``, and what they cannot reproduce."""
    s: dict = {"label": 1, "voxelArrayShift": 0, "distances": [1], "symmetricalGLCM": True, "gldm_a": 0}
    caveats = []
    if config.bin_width is not None:
        s["binWidth"] = config.bin_width
        if config.resegment_range is not None and config.resegment_range[0] is not None:
            caveats.append(
                "fixed-bin-size bins are numbered from 1 at the ROI minimum (edges at multiples of "
                "the bin width), not counted from the lower resegmentation bound; the two agree "
                "only when the ROI reaches a bound that is a multiple of the bin width"
            )
    else:
        s["binCount"] = config.bin_count
    if config.spacing is not None:
        s["resampledPixelSpacing"] = [0 if v is None else v for v in config.spacing]
        s["interpolator"] = {"linear": "sitkLinear", "cubic": "sitkBSpline", "nearest": "sitkNearestNeighbor"}[
            config.interpolation
        ]
        caveats.append(
            "the resampled grid is aligned to the mask's bounding box, not centred on the image, "
            "and the mask is resampled by nearest neighbour, not linearly with a 0.5 threshold"
        )
    if config.round_intensities:
        caveats.append("interpolated intensities are not rounded")
    if config.outlier_sigma is not None:
        s["resegmentMode"] = "sigma"
        s["resegmentRange"] = [-config.outlier_sigma, config.outlier_sigma]
        if config.resegment_range is not None:
            caveats.append("range and outlier resegmentation cannot be combined: only outlier filtering is applied")
    elif config.resegment_range is not None:
        lower, upper = config.resegment_range
        s["resegmentRange"] = [lower] if upper is None else [lower, upper]
    return s, caveats


def _wanted(*, stock: bool) -> dict[str, list[str]]:
    """Every mappable pyradiomics feature by class (deprecated shape features included)."""
    classes: dict[str, list[str]] = {}
    for row in name_table():
        cls, feature = row.pyradiomics.split("_", 1)
        if cls == "histogram" or (stock and row.note.startswith("deprecated in pyradiomics, which returns")):
            continue
        if feature not in classes.setdefault(cls, []):
            classes[cls].append(feature)
    return classes


def _stock(image, mask, config: IBSIConfig, aggregations) -> dict[str, dict[str, float]]:
    from radiomics import featureextractor

    from ..extract import _radiomics  # noqa: F401

    settings, _ = stock_settings(config)
    out = {}
    for agg in aggregations:
        extra: dict = {"force2D": agg.startswith("2_5D"), "force2Ddimension": 0}
        if agg.endswith("_comb"):
            extra["weightingNorm"] = "no_weighting"
        extractor = featureextractor.RadiomicsFeatureExtractor(**settings, **extra)
        extractor.disableAllFeatures()
        extractor.enableFeaturesByName(**_wanted(stock=True))
        result = extractor.execute(image, mask)
        out[agg] = {k: float(v) for k, v in result.items() if k.startswith("original_")}
    return out


def _ibsi(image, mask, config: IBSIConfig, aggregations):
    from .mode import compute_features, preprocess

    pre = preprocess(image, mask, 1, config)
    settings = {"distances": [1], "symmetricalGLCM": True, "gldm_a": 0}
    return compute_features(pre, _wanted(stock=False), settings, tuple(aggregations)), pre.diagnostics


def _compare(
    reference: dict[str, tuple[float, float]],
    features: dict[str, dict[str, float]],
    diagnostics: dict[str, float] | None,
    *,
    mode: str,
    caveats: list[str],
) -> list[Comparison]:
    by_tag: dict[str, list[tuple[NameRow, str]]] = {}
    for agg in AGGREGATIONS:
        for row in name_table():
            tag = row.tag(agg)
            if tag is not None and all(r != row for r, _ in by_tag.setdefault(tag, [])):
                by_tag[tag].append((row, agg))
    out = []
    for tag, (ref, tol) in reference.items():
        if family_of(tag) == "diag":
            if diagnostics is None:
                continue
            value = diagnostics.get(tag)
            if value is None:
                out.append(Comparison(tag, ref, tol, reason="not computed by radcluster"))
            else:
                ok = matches(value, ref, tol)
                out.append(
                    Comparison(
                        tag,
                        ref,
                        tol,
                        "(preprocessing)",
                        value,
                        rounded_difference(value, ref),
                        ok,
                        "" if ok else "unexplained",
                    )
                )
            continue
        if tag not in by_tag:
            out.append(Comparison(tag, ref, tol, reason="no pyradiomics equivalent"))
            continue
        # the first candidate with a value (a tag can have several equivalent pyradiomics features)
        for row, agg in by_tag[tag]:
            name = f"original_{row.pyradiomics}"
            if not row.aggregations:  # shape and first order: the same in every aggregation's run
                agg = next((a for a in features if name in features[a]), agg)
            raw = features.get(agg, {}).get(name)
            if raw is not None and math.isfinite(raw):
                break
        if raw is None:
            if agg not in features and row.aggregations:
                why = "per-slice (2D) aggregation: IBSI mode only" if mode == "stock" else "not computed"
            else:
                why = "IBSI mode only" if row.pyradiomics.startswith("histogram_") else "not computed"
            out.append(Comparison(tag, ref, tol, name, reason=why))
            continue
        value = raw + row.offset
        ok = matches(value, ref, tol)
        reason = ""
        if not ok:
            if mode == "stock" and caveats:
                reason = "stock preprocessing: " + "; ".join(caveats)
            elif row.note.startswith("pyradiomics divides") and mode == "stock":
                reason = "definition: " + row.note.split(" (")[0]
            else:
                reason = "unexplained"
        out.append(Comparison(tag, ref, tol, name, value, rounded_difference(value, ref), ok, reason))
    return out


def check_compliance(
    reference_dir: str | Path,
    *,
    modes: tuple[str, ...] = MODES,
    ct: bool = True,
    configs: tuple[str, ...] | None = None,
) -> ComplianceResult:
    """Compute every mappable feature on the IBSI phantoms and compare with the reference values.

    Parameters
    ----------
    reference_dir : path
        A folder with ``reference_values/ibsi_1_dig_phantom.csv`` and
        ``digital_phantom/{image,mask}.nii.gz``; when it also has ``ct_phantom/`` and
        ``reference_values/ibsi_1_chest_config_{a..e}.csv``, the CT phantom configurations
        with a reference file are checked too.
    modes : tuple of {"stock", "ibsi"}
    ct : bool
        Check the CT phantom when present.
    configs : tuple of str, optional
        Only these data sets: ``digital_phantom`` and/or CT configurations ``A``-``E``.
    """
    root = Path(reference_dir)
    refdir = root / "reference_values"
    needed = [
        refdir / "ibsi_1_dig_phantom.csv",
        root / "digital_phantom" / "image.nii.gz",
        root / "digital_phantom" / "mask.nii.gz",
    ]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise SpecError(
            f"IBSI reference folder {str(root)!r}",
            f"lacks {', '.join(missing)}",
            "expected the layout reference_values/ibsi_1_dig_phantom.csv, digital_phantom/image.nii.gz, "
            "digital_phantom/mask.nii.gz (and optionally ct_phantom/, ibsi_1_chest_config_*.csv)",
        )
    for mode in modes:
        if mode not in MODES:
            raise SpecError("compliance mode", f"must be one of {list(MODES)}", f"got {mode!r}")
    known = [c for _, c, _, _ in _DATASETS]
    for name in configs or ():
        if name not in known:
            raise SpecError(f"IBSI data set {name!r}", "unknown", did_you_mean(name, known, listing="known"))
    results = []
    for title, config_name, folder, ref_file in _DATASETS:
        image_path, mask_path = root / folder / "image.nii.gz", root / folder / "mask.nii.gz"
        if not (refdir / ref_file).is_file() or not image_path.is_file() or not mask_path.is_file():
            continue
        if (folder == "ct_phantom" and not ct) or (configs is not None and config_name not in configs):
            continue
        reference = read_reference(refdir / ref_file)
        config = IBSIConfig.named(config_name)
        image = sitk.Cast(sitk.ReadImage(str(image_path)), sitk.sitkFloat32)
        mask = sitk.ReadImage(str(mask_path))
        wanted = [a for a in AGGREGATIONS if any(t.endswith("_" + a) for t in reference)]
        settings, caveats = stock_settings(config)
        result = DatasetResult(title, config, stock_settings=settings, stock_caveats=caveats)
        if "stock" in modes:
            features = _stock(image, mask, config, [a for a in wanted if a in STOCK_AGGREGATIONS])
            result.comparisons["stock"] = _compare(reference, features, None, mode="stock", caveats=caveats)
        if "ibsi" in modes:
            features, diagnostics = _ibsi(image, mask, config, wanted)
            result.comparisons["ibsi"] = _compare(reference, features, diagnostics, mode="ibsi", caveats=[])
        results.append(result)
    return ComplianceResult(results)
