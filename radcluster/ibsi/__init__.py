"""IBSI standardisation: IBSI feature names, IBSI mode extraction, and the compliance report.

Three things, each usable alone:

- **Names.** :func:`to_ibsi_names` renames a feature table's pyradiomics columns to IBSI
  tags (``original_glcm_Contrast`` -> ``cm_contrast_3D_avg``), turning kurtosis into IBSI's
  excess kurtosis. The table behind it is ``radcluster/data/ibsi_names.csv``.
- **IBSI mode.** :func:`extract_ibsi` computes pyradiomics' features after IBSI 1
  preprocessing (centre-aligned resampling, rounding, combined resegmentation, bins counted
  from the lower resegmentation bound, per-slice aggregation); it is opt-in, and radcluster's
  default extraction does not use it. :class:`IBSIConfig` holds its settings; IBSI 1's CT
  configurations are ``IBSIConfig.named("A")`` ... ``("E")``.
- **Compliance.** :func:`check_compliance` computes every mappable feature on the IBSI
  phantoms in stock and IBSI mode and applies IBSI's matching rule (:func:`matches`);
  :func:`main` writes ``docs/ibsi-compliance.md`` (``radcluster ibsi --reference DIR``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import _io
from ..errors import SpecError
from .compliance import (
    ComplianceResult,
    check_compliance,
    matches,
    read_reference,
    rounded_difference,
)
from .config import AGGREGATIONS, NAMED_CONFIGS, IBSIConfig, resolve_config
from .names import aggregation_from_settings, name_table, to_ibsi_names
from .report import render_report

if TYPE_CHECKING:
    import SimpleITK

__all__ = [
    "AGGREGATIONS",
    "NAMED_CONFIGS",
    "IBSIConfig",
    "ComplianceResult",
    "aggregation_from_settings",
    "check_compliance",
    "check_ibsi_params",
    "extract_ibsi",
    "main",
    "matches",
    "name_table",
    "read_reference",
    "render_report",
    "rounded_difference",
    "to_ibsi_names",
    "write_compliance_report",
]

logger = logging.getLogger(__name__)

_CLASSES = ("shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
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
            f"IBSI mode: params must be a mapping (a parsed pyradiomics params file); got {type(params).__name__}"
        )
    unknown = [k for k in params if k not in _PARAMS_KEYS]
    if unknown:
        raise SpecError(f"IBSI mode: params key(s) {unknown} not supported; expected {list(_PARAMS_KEYS)}")
    image_types = params.get("imageType") or {"Original": {}}
    others = [t for t in image_types if t != "Original"]
    if others:
        raise SpecError(
            f"IBSI mode computes features of the original image only; params enable imageType "
            f"{others}: remove them, or extract them without IBSI mode"
        )
    requested = params.get("featureClass")
    if requested is None:
        requested = {c: None for c in _CLASSES}
    classes: dict[str, list[str] | None] = {}
    for name, features in requested.items():
        if name not in _CLASSES:
            hint = " (IBSI has no 2D shape features)" if name == "shape2D" else ""
            raise SpecError(f"IBSI mode: featureClass {name!r} is not supported{hint}; supported: {list(_CLASSES)}")
        classes[name] = list(features) if features else None
    setting = params.get("setting") or {}
    settings = {k: setting.get(k, default) for k, default in _FEATURE_SETTINGS.items()}
    return classes, settings


def extract_ibsi(
    image: SimpleITK.Image,
    mask: SimpleITK.Image,
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
    from .mode import compute_features, preprocess

    pre = preprocess(image, mask, label, cfg)
    return compute_features(pre, classes, settings, (cfg.aggregation,))[cfg.aggregation]


def write_compliance_report(reference_dir: str | Path, out: str | Path, *, ct: bool = True) -> ComplianceResult:
    """Check compliance against ``reference_dir`` and write the Markdown report to ``out``."""
    result = check_compliance(reference_dir, ct=ct)
    _io.write_atomic(os.fspath(out), render_report(result).encode("utf-8"))
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``radcluster ibsi``."""
    parser.add_argument(
        "--reference",
        required=True,
        metavar="DIR",
        help="IBSI reference folder: reference_values/, digital_phantom/ and optionally "
        "ct_phantom/ (the CT part runs when present)",
    )
    parser.add_argument(
        "--out",
        default="docs/ibsi-compliance.md",
        metavar="PATH",
        help="Markdown report to write (default: %(default)s)",
    )
    parser.add_argument("--no-ct", action="store_true", help="skip the CT phantom even when present")


def run(args: argparse.Namespace) -> int:
    """Run ``radcluster ibsi``: 0 when every mismatch has a documented cause, 1 otherwise."""
    # pyradiomics warns on every deprecated feature enabled and every symmetric GLCM; the
    # report lists what matters, so keep its log to errors while the command runs
    from ..extract import _radiomics  # noqa: F401  (pyradiomics resets its logger's level when imported)

    radiomics_log = logging.getLogger("radiomics")
    previous = radiomics_log.level
    radiomics_log.setLevel(logging.ERROR)
    try:
        result = write_compliance_report(args.reference, args.out, ct=not args.no_ct)
    finally:
        radiomics_log.setLevel(previous)
    for d in result.datasets:
        line = [d.name]
        for mode, title in (("stock", "stock"), ("ibsi", "IBSI mode")):
            matched, compared, _ = d.counts(mode)
            line.append(f"{title} {matched}/{compared}")
        print(": ".join([line[0], ", ".join(line[1:])]))
    unexplained = result.unexplained()
    for name, mode, c in unexplained:
        print(
            f"unexplained mismatch: {name}, {mode}: {c.tag} = {c.value:.6g}, reference {c.reference:g} "
            f"+/- {c.tolerance:g}",
            file=sys.stderr,
        )
    print(f"wrote {args.out}")
    return 1 if unexplained else 0


def main(argv: list[str] | None = None) -> int:
    """``radcluster ibsi --reference DIR --out docs/ibsi-compliance.md``."""
    parser = argparse.ArgumentParser(
        prog="radcluster ibsi",
        description="Check radcluster's features against IBSI reference values and write the compliance report.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except SpecError as err:
        print(f"radcluster ibsi: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
