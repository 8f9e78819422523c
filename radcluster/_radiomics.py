"""The one place radcluster touches pyradiomics' process-wide behaviour.

pyradiomics adds a stderr handler to the ``radiomics`` logger and sets its level at import
time; a library must leave logging to the application, so both are undone here and the logger
is left to propagate (the CLI configures logging, a notebook user configures their own).

Extractors are cached per params text in each process: a worker parses a params file once,
not once per scan.
"""

from __future__ import annotations

import functools
import logging
from importlib import metadata

import yaml

from .errors import SpecError

_level_before_import = logging.getLogger("radiomics").level

import radiomics  # noqa: E402  (import order is the point of this module)
from radiomics import featureextractor  # noqa: E402

radiomics.logger.removeHandler(radiomics.handler)
radiomics.logger.setLevel(_level_before_import)
# pyradiomics hands pykwalify the first handler of the radiomics logger when pykwalify has
# none (and fails with IndexError once that handler is gone); a NullHandler, as the logging
# docs recommend for libraries, satisfies it and leaves the output to the application.
logging.getLogger("pykwalify.core").addHandler(logging.NullHandler())

__all__ = ["get_extractor", "validate_params", "versions", "RADIOMICS_DIST"]


def _radiomics_distribution() -> str:
    for dist in ("pyradiomics-bhklab", "pyradiomics"):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return f"radiomics {radiomics.__version__}"


RADIOMICS_DIST = _radiomics_distribution()


def _scipy_has_sph_harm() -> bool:
    import scipy.special

    return hasattr(scipy.special, "sph_harm")


def validate_params(text: str, *, source: str) -> None:
    """Check a params YAML against pyradiomics' schema, raising :class:`SpecError`."""
    try:
        parsed = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise SpecError(f"params file {source!r} is not valid YAML: {err}") from None
    if not isinstance(parsed, dict):
        raise SpecError(f"params file {source!r} must be a mapping, got {type(parsed).__name__}")
    try:
        extractor = _build(text)
    except Exception as err:  # pykwalify raises its own SchemaError; pyradiomics raises ValueError
        reason = getattr(err, "msg", None) or str(err)
        raise SpecError(f"params file {source!r} rejected by pyradiomics' schema: {reason.strip()}") from None
    if "LBP3D" in extractor.enabledImagetypes and not _scipy_has_sph_harm():
        raise SpecError(
            f"params file {source!r} enables imageType LBP3D, which needs scipy.special.sph_harm "
            "(removed in SciPy 1.17); install 'scipy<1.17' or remove LBP3D"
        )
    if extractor.settings.get("voxelBased") or parsed.get("voxelSetting"):
        raise SpecError(f"params file {source!r}: voxel-based extraction (voxelSetting) is not supported")


def _build(text: str) -> featureextractor.RadiomicsFeatureExtractor:
    pykwalify_log = logging.getLogger("pykwalify")
    # pykwalify logs every schema error at ERROR level before raising it; the raised error
    # carries the same text, so keep that log quiet while validating.
    previous = pykwalify_log.disabled
    pykwalify_log.disabled = True
    try:
        return featureextractor.RadiomicsFeatureExtractor(yaml.safe_load(text) or {})
    finally:
        pykwalify_log.disabled = previous


@functools.lru_cache(maxsize=8)
def get_extractor(text: str) -> featureextractor.RadiomicsFeatureExtractor:
    """The extractor for a params text, built once per process."""
    return _build(text)


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """Versions recorded in every row's provenance."""
    import SimpleITK as sitk

    from . import __version__

    return {
        "radcluster_version": __version__,
        "pyradiomics_version": RADIOMICS_DIST,
        "simpleitk_version": sitk.Version_VersionString(),
    }
