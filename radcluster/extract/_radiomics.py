"""The one place radcluster touches pyradiomics' process-wide behaviour.

pyradiomics adds a stderr handler to the ``radiomics`` logger and sets its level at import
time; a library must leave logging to the application, so both are undone here and the logger
is left to propagate (the CLI configures logging, a notebook user configures their own).

Extractors are cached per params text in each process: a worker parses a params file once,
not once per scan.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import re
import threading

import yaml

from ..errors import Problem, SpecError, did_you_mean

_level_before_import = logging.getLogger("radiomics").level

import radiomics  # noqa: E402  (import order is the point of this module)
from radiomics import featureextractor  # noqa: E402

radiomics.logger.removeHandler(radiomics.handler)
radiomics.logger.setLevel(_level_before_import)
# pyradiomics hands pykwalify the first handler of the radiomics logger when pykwalify has
# none (and fails with IndexError once that handler is gone); a NullHandler, as the logging
# docs recommend for libraries, satisfies it and leaves the output to the application.
logging.getLogger("pykwalify.core").addHandler(logging.NullHandler())

__all__ = ["get_extractor", "validate_params", "versions", "expected_groups", "captured_warnings", "PARAMS_NOTES"]

# Warnings pyradiomics logs about a choice in the params, not about the scan: the same on every
# scan, with every feature value right. pyradiomics' example Params.yaml (radcluster's default)
# enables every GLCM feature with the default symmetrical GLCM, so every scan of a run with it
# says that Sum Average is twice Joint Average. The run records them with the others; the
# driver logs them at INFO (-v), so a default run's terminal is not a warning about the defaults.
PARAMS_NOTES = frozenset(
    {"GLCM is symmetrical, therefore Sum Average = 2 * Joint Average, only 1 needs to be calculated"}
)


def _interpolator_numbers() -> set[int]:
    """The numbers this SimpleITK gives the interpolators pyradiomics names."""
    import SimpleITK as sitk

    names = (
        "NearestNeighbor",
        "Linear",
        "BSpline",
        "Gaussian",
        "LabelGaussian",
        "HammingWindowedSinc",
        "CosineWindowedSinc",
        "WelchWindowedSinc",
        "LanczosWindowedSinc",
        "BlackmanWindowedSinc",
    )
    return {getattr(sitk, f"sitk{name}") for name in names}


def _missing_for(image_type: str) -> str | None:
    """The package an image type needs that this installation lacks, or None.

    pyradiomics imports these inside the filter and, when one is missing, logs a warning and
    yields no image: every scan's row would silently lack that filter's features.
    """
    import importlib.util

    if image_type == "LBP2D" and importlib.util.find_spec("skimage") is None:
        return "scikit-image"
    if image_type == "LBP3D":
        if importlib.util.find_spec("trimesh") is None:
            return "trimesh"
        # only here: importing scipy.special costs the command ~0.5 s before its cluster starts
        import scipy.special

        if not hasattr(scipy.special, "sph_harm"):
            return "scipy<1.17 (scipy.special.sph_harm was removed in SciPy 1.17)"
    return None


def validate_params(text: str, *, source: str) -> None:
    """Check a params YAML against pyradiomics' schema, raising :class:`SpecError`.

    Every unknown key (with the closest valid one) and every value of the wrong type is
    listed at once, from the schema file of the installed pyradiomics; ranges, enums and
    pyradiomics' own checks follow. A quoted number (``binWidth: "25"``), which pyradiomics'
    validator lets through and every scan then fails on, is rejected here.
    """
    try:
        parsed = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise SpecError(f"params file {source!r}", "is not valid YAML", str(err)) from None
    if not isinstance(parsed, dict):
        raise SpecError(f"params file {source!r}", "must be a mapping of settings", f"got {type(parsed).__name__}")
    if parsed.get("voxelSetting"):
        raise SpecError(
            f"params file {source!r}",
            "voxel-based extraction (voxelSetting) is not supported",
            "remove it: radcluster extracts one row per region",
        )
    problems = _schema_problems(parsed, _schema(), "")
    if problems:
        raise SpecError.listing(f"params file {source!r}", problems)
    try:
        extractor = get_extractor(text)  # cached: the run that follows uses the same one
    except Exception as err:  # pykwalify raises its own SchemaError; pyradiomics raises ValueError
        reason = getattr(err, "msg", None) or str(err)
        raise SpecError(f"params file {source!r}", "rejected by pyradiomics' schema", reason.strip()) from None
    interpolator = extractor.settings.get("interpolator")
    if isinstance(interpolator, int) and interpolator not in _interpolator_numbers():
        # pyradiomics' schema allows 1-10, SimpleITK's numbering of its day; 3 (then B-spline)
        # is no interpolator in SimpleITK 2, and every scan would fail in the resampler
        raise SpecError(
            f"params file {source!r}",
            f"interpolator {interpolator} is not an interpolator in this SimpleITK",
            "give its name (e.g. 'sitkBSpline', 'sitkLinear')",
        )
    for image_type in extractor.enabledImagetypes:
        missing = _missing_for(image_type)
        if missing:
            raise SpecError(
                f"params file {source!r}",
                f"enables imageType {image_type}, which needs the package {missing!r}, not installed here",
                f"install it or remove {image_type}",
            )
    if extractor.settings.get("voxelBased"):
        raise SpecError(
            f"params file {source!r}",
            "voxel-based extraction (voxelSetting) is not supported",
            "remove it: radcluster extracts one row per region",
        )


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    """pyradiomics' own parameter schema, from the installed package (never a copy)."""
    schema_file, _ = radiomics.getParameterValidationFiles()
    with open(schema_file) as f:
        return yaml.safe_load(f)


# pykwalify scalar types -> what the parsed YAML value must be. pykwalify itself accepts a
# quoted number ("25") as a float, which pyradiomics then uses as text and fails on per scan.
_SCALAR_TYPES = {
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "true or false"),
    "str": ((str,), "a text"),
}


def _unknown(kind: str, path: str, name: object, valid: list[str]) -> Problem:
    return Problem(f"key {path!r}", f"unknown {kind}", did_you_mean(name, valid))


def _schema_problems(value: object, rule: dict, path: str) -> list[Problem]:
    """Unknown keys (with the closest valid one) and wrongly typed values, all at once.

    Walks the part of pykwalify's schema language that pyradiomics' schema uses (mappings
    with fixed and ``regex;`` keys, sequences, scalar types); ranges, enums and the custom
    functions are left to pyradiomics' own validation, which runs next.
    """
    problems: list[Problem] = []
    if isinstance(value, dict) and "mapping" in rule:
        fixed = {k: r for k, r in rule["mapping"].items() if not k.startswith("regex;")}
        patterns = [(re.compile(k[len("regex;") :]), r) for k, r in rule["mapping"].items() if k.startswith("regex;")]
        for key, sub in value.items():
            where = f"{path}.{key}" if path else str(key)
            sub_rule = fixed.get(key) or next((r for pat, r in patterns if pat.fullmatch(str(key))), None)
            if sub_rule is None:
                problems.append(_unknown("key", where, key, list(fixed)))
                continue
            if path == "imageType" and key not in radiomics.getImageTypes():
                problems.append(_unknown("imageType", where, key, sorted(radiomics.getImageTypes())))
                continue
            if path == "featureClass":
                classes = radiomics.getFeatureClasses()
                if key not in classes:
                    problems.append(_unknown("featureClass", where, key, sorted(classes)))
                    continue
                names = classes[key].getFeatureNames()
                problems += [
                    _unknown("feature", f"{where}.{name}", name, sorted(names))
                    for name in (sub if isinstance(sub, list) else [])
                    if name not in names
                ]
                continue
            problems += _schema_problems(sub, sub_rule, where)
    elif isinstance(value, list) and "seq" in rule:
        for i, item in enumerate(value):
            problems += _schema_problems(item, rule["seq"][0], f"{path}[{i}]")
    elif value is not None and rule.get("type") in _SCALAR_TYPES:
        types, expected = _SCALAR_TYPES[rule["type"]]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            problems.append(Problem(f"key {path!r}", f"expected {expected} ({rule['type']})", f"got {value!r}"))
    return problems


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
    """Versions recorded in every row's provenance: ``radcluster_version``, ``pyradiomics_version``
    (which distribution, and its version) and ``simpleitk_version``."""
    from .._software import software_versions

    return {f"{name.lower()}_version": v for name, v in software_versions("pyradiomics", "SimpleITK").items()}


def image_type_names(name: str, args: dict, ndim: int) -> list[str]:
    """The names pyradiomics gives the images one enabled image type yields (imageoperations)."""
    if name == "LoG":
        return [f"log-sigma-{str(sigma).replace('.', '-')}-mm-3D" for sigma in args.get("sigma", [])]
    if name == "Wavelet":
        axes = ndim - (1 if args.get("force2D", False) else 0)
        details = ["".join(c) for c in itertools.product("LH", repeat=axes)][1:]
        level = args.get("level", 1)
        prefixes = ["wavelet-" if i == 1 else f"wavelet{i}-" for i in range(1, level + 1)]
        return [p + d for p in prefixes for d in details] + [prefixes[-1] + "L" * axes]
    if name == "LBP2D":
        return ["lbp-2D"]
    if name == "LBP3D":
        return [f"lbp-3D-m{i}" for i in range(1, args.get("lbp3DLevels", 2) + 1)] + ["lbp-3D-k"]
    return [name.lower()]


def expected_groups(extractor, ndim: int) -> list[str]:
    """The column prefixes (``<image>_<class>_``) every row extracted with these params must have.

    pyradiomics skips a filter it cannot apply to a scan (a LoG sigma larger than the image, a
    missing package, shape2D without force2D) with only a log warning; comparing a row with
    these prefixes turns that into a failure instead of a row with fewer columns.
    """
    classes = [c for c in extractor.enabledFeatures if not c.startswith("shape")]
    # pyradiomics computes shape for 3D input and shape2D for 2D input or with force2D (both are
    # enabled when the params name no class); a 2D scan with shape enabled is refused earlier
    groups = [f"original_{c}_" for c in ("shape", "shape2D") if c in extractor.enabledFeatures]
    if ndim == 3 and not extractor.settings.get("force2D"):
        groups = [g for g in groups if g != "original_shape2D_"]
    for name, custom in extractor.enabledImagetypes.items():
        args = {**extractor.settings, **custom}
        groups += [f"{image}_{c}_" for image in image_type_names(name, args, ndim) for c in classes]
    return groups


class _Capture(logging.Handler):
    """Collects the warnings pyradiomics logs in one thread (Dask runs a task per thread)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.messages: dict[str, None] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages[record.getMessage()] = None


@contextlib.contextmanager
def captured_warnings():
    """The distinct warnings pyradiomics logs in this thread inside the block, in order.

    They are returned with the scan's result, so the process that runs the extraction (a
    worker) need not show them: the driver logs them once per run through radcluster's logger.
    """
    handler = _Capture()
    logger = logging.getLogger("radiomics")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
