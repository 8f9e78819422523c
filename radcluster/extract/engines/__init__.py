"""Feature engines behind one interface: what an engine needs, the columns it gives, its memory
estimate and its provenance (pyradiomics' fast path, IBSI mode, ONNX models, ...).

An engine is a pure function of an image, its masks and its settings; it knows nothing of
Dask or of the store. :func:`~radcluster.extract.extract_scan` reads a scan once and hands the
same :class:`ScanImage` to every engine of the job; a label's row holds the columns of every
engine, and a label that fails in any engine is a failure record, never a partial row.

Built in: ``pyradiomics`` (the default), ``ibsi`` (IBSI mode) and ``onnx`` (an ONNX model's
embedding of each ROI, columns ``deep_<name>_<i>``). Other packages add engines through the
``radcluster.engines`` entry point group::

    [project.entry-points."radcluster.engines"]
    myengine = "mypkg.engine:MyEngine"

``MyEngine`` subclasses :class:`Engine`; its constructor takes the engine's options from the
job spec (``extraction: {engines: [pyradiomics, {myengine: {threshold: 3}}]}``) as keyword
arguments, and it must be picklable (it travels with every task). An engine of kind ``deep``
names its columns ``deep_*``, which is how ``train``'s ``features: [radiomics, deep]`` tells
the kinds apart.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, ClassVar

from ...cohort import ALL_LABELS, Scan
from ...errors import ScanError, SpecError, did_you_mean
from ...spec.training import DEEP_PREFIX, FEATURE_KINDS

__all__ = [
    "DEEP_PREFIX",
    "ENTRY_POINT_GROUP",
    "FEATURE_KINDS",
    "Engine",
    "ScanImage",
    "combined_key",
    "engine_class",
    "engine_names",
    "from_spec",
    "make_engine",
    "run_engines",
]

ENTRY_POINT_GROUP = "radcluster.engines"

_BUILTIN = {
    "pyradiomics": ("radcluster.extract.engines.pyradiomics", "PyradiomicsEngine"),
    "ibsi": ("radcluster.extract.engines.ibsi", "IBSIEngine"),
    "onnx": ("radcluster.extract.engines.onnx", "OnnxEngine"),
}


@dataclass
class ScanImage:
    """One scan as :func:`~radcluster.extract.extract_scan` read it: what every engine works on.

    ``image`` and ``mask`` are SimpleITK images on one grid (checked before any engine runs);
    ``default_label`` is the label a manifest row without ``label`` means (the params' ``label``);
    ``part`` is (i, k) when the task extracts only every k-th of the scan's labels; ``threads``
    the CPU threads the task may use (its Dask worker's), which engines with a thread pool of
    their own (ONNX Runtime) size it by.
    """

    scan: Scan
    image: Any
    mask: Any
    default_label: int = 1
    part: tuple[int, int] | None = None
    threads: int = 1

    @functools.cached_property
    def boxes(self) -> list[tuple[slice, ...] | None]:
        """``ndimage.find_objects`` of the mask: the (z, y, x) slices of label v at index v - 1
        (None for an absent value); computed once per scan, whichever engines ask."""
        from ..fast import find_labels

        return find_labels(self.scan, self.mask)

    @property
    def present(self) -> list[int]:
        """The label values in the mask (from :attr:`boxes`)."""
        return [i + 1 for i, sl in enumerate(self.boxes) if sl is not None]

    def labels(self, present: Sequence[int]) -> list[int]:
        """The labels this task extracts: the manifest's, or every present one, or part i of k of them."""
        if self.scan.labels == ALL_LABELS:
            labels = list(present)
        elif self.scan.labels is None:
            labels = [self.default_label]
        else:
            labels = list(self.scan.labels)
        return labels[self.part[0] :: self.part[1]] if self.part and not self.filter_part else labels

    @property
    def filter_part(self) -> tuple[int, int] | None:
        """(i, k) when this part splits the scan by filtered image rather than by label.

        The plan splits a scan whose manifest names fewer labels than parts (one big CT) only
        for the pyradiomics engine; each part then extracts every label, and of each label
        every k-th shape / filtered-image unit (:func:`radcluster.extract.fast.extract_labels`).
        An ``all`` mask is always split by label (its labels are unknown to the plan).
        """
        if not self.part or self.scan.labels == ALL_LABELS:
            return None
        return self.part if len(self.scan.labels or [self.default_label]) < self.part[1] else None

    def absent(self, label: int, present: Sequence[int]) -> ScanError:
        return ScanError(
            self.scan.case_id,
            "check",
            f"label {label} not present in mask; present: {list(present)[:20]}",
            file=self.scan.mask,
            label=label,
        )


class Engine:
    """The interface every feature engine implements (subclass it; override what applies).

    Class attributes
    ----------------
    name : str
        The engine's name in a job spec (``engines: [name, ...]``).
    kind : str
        One of :data:`FEATURE_KINDS`, ``"radiomics"`` or ``"deep"``: what ``train``'s
        ``features:`` selects; a deep engine names its columns ``deep_*`` (:data:`DEEP_PREFIX`).
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "radiomics"

    def prepare(self, params_text: str) -> Engine:
        """Check everything the engine can check before a cluster starts (raise
        :class:`~radcluster.errors.SpecError` naming the problem); return the engine the tasks
        get (it may carry what the check learnt, such as a model's hash). Runs on the client;
        ``params_text`` is the job's pyradiomics params file."""
        return self

    def check(self, scan: ScanImage) -> None:
        """What the engine needs from a scan beyond the checks every scan passes (geometry,
        readable files): raise :class:`~radcluster.errors.ScanError` when ``scan`` lacks it. Every
        engine's check runs before any engine extracts, so a scan one engine cannot use costs
        no other engine's time."""

    def key(self) -> str:
        """What, beyond the params file, decides this engine's values ("" for nothing): it joins
        the params hash stored with each row, so a change re-extracts the scans."""
        return ""

    def memory_bytes(self, voxels: int) -> int:
        """Peak memory the engine adds to a scan of ``voxels`` voxels, beyond the decoded image,
        its mask and pyradiomics' working copies that the plan counts for every scan."""
        return 0

    def provenance(self) -> dict[str, Any]:
        """Columns added to every row this engine contributed to (versions, model hashes)."""
        return {}

    def extract(self, scan: ScanImage, settings) -> Mapping[int, Mapping[str, Any] | ScanError]:
        """Features per label (or a :class:`~radcluster.errors.ScanError` for a label that
        failed). Raise ``ScanError`` for a problem of the whole scan."""
        raise NotImplementedError


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def engine_names() -> list[str]:
    """The built-in engines, then those installed packages register."""
    return list(dict.fromkeys([*_BUILTIN, *sorted(_entry_points())]))


def engine_class(name: str) -> type[Engine]:
    """The engine class called ``name``: built in, or from the ``radcluster.engines`` entry points."""
    if name in _BUILTIN:
        module, attr = _BUILTIN[name]
        return getattr(importlib.import_module(module), attr)
    ep = _entry_points().get(name)
    if ep is None:
        raise SpecError(f"feature engine {name!r}", "unknown", did_you_mean(name, engine_names(), listing="installed"))
    try:
        cls = ep.load()
    except Exception as err:  # a broken plugin must not look like a typo
        raise SpecError(
            f"feature engine {name!r} ({ep.value})", f"cannot be loaded ({err})", "fix or reinstall the package"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Engine)):
        raise SpecError(
            f"feature engine {name!r} ({ep.value})",
            f"is a {type(cls).__name__}",
            "register a radcluster.extract.engines.Engine subclass",
        )
    return cls


def make_engine(name: str, options: Any = None) -> Engine:
    """An engine from its job-spec entry: a name, and its options (a mapping, or the built-in
    engine's validated options section)."""
    cls = engine_class(name)
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        return cls(options)
    try:
        return cls(**options)
    except TypeError as err:
        raise SpecError(f"feature engine {name!r}", f"options refused ({err})", f"got {dict(options)!r}") from None


def combined_key(params_hash: str, engines: Sequence[Engine]) -> str:
    """The params hash stored with each row: the params file's, then what each engine adds
    (``<hash>-ibsi-B``, ``<hash>-onnx-enc-<digest>``); pyradiomics alone adds nothing."""
    return "-".join([params_hash, *(k for k in (e.key() for e in engines) if k)])


def _extract(engine: Engine, scan: ScanImage, settings) -> dict[int, Any]:
    """``engine.extract``; a plugin's columns are checked to say its kind (``deep_*`` exactly
    when it is a deep engine), which is how training tells radiomics and deep features apart."""
    results = dict(engine.extract(scan, settings))
    if type(engine).__module__.startswith(f"{__name__}."):
        return results  # the built-in engines name their columns by construction
    deep = engine.kind == "deep"
    for label, features in results.items():
        wrong = [] if isinstance(features, ScanError) else [k for k in features if k.startswith(DEEP_PREFIX) != deep]
        if wrong:
            rule = f"a deep engine's columns start with {DEEP_PREFIX!r}"
            if not deep:
                rule = f"only deep engines' columns start with {DEEP_PREFIX!r}"
            results[label] = ScanError(
                scan.scan.case_id,
                "extract",
                f"engine {engine.name!r} (kind {engine.kind!r}) gave columns {wrong[:5]}: {rule}",
                label=label,
            )
    return results


def run_engines(engines: Sequence[Engine], scan: ScanImage, settings) -> tuple[dict[int, Any], dict[str, Any]]:
    """Every engine on the one read of a scan.

    Returns, per label, the features of all engines merged (or the first ScanError an engine
    gave for it: no partial row), and the engines' provenance columns. A ScanError raised by an
    engine fails the whole scan.
    """
    for engine in engines:
        engine.check(scan)
    if len(engines) == 1:  # the default: nothing to merge
        return _extract(engines[0], scan, settings), engines[0].provenance()
    merged: dict[int, Any] = {}
    given: dict[int, int] = {}
    provenance: dict[str, Any] = {}
    for engine in engines:
        for label, result in _extract(engine, scan, settings).items():
            given[label] = given.get(label, 0) + 1
            have = merged.get(label)
            if isinstance(have, ScanError):
                continue
            merged[label] = result if (have is None or isinstance(result, ScanError)) else {**have, **result}
        provenance.update(engine.provenance())
    for label, n in given.items():
        if n < len(engines) and not isinstance(merged[label], ScanError):
            # engines disagreeing on a scan's labels would leave a row without some columns
            merged[label] = ScanError(
                scan.scan.case_id,
                "extract",
                f"only {n} of {len(engines)} engines extracted this label",
                file=scan.scan.mask,
                label=label,
            )
    return merged, provenance


def from_spec(extraction, params_text: str, resolve: Callable[[str], str] = str) -> tuple[Engine, ...]:
    """The prepared engines of a job's ``extraction`` section (:class:`radcluster.spec.extraction.ExtractionSpec`).

    Every engine is checked here, on the client, before any cluster starts (an ONNX model is
    read, hashed and run once on zeros). ``extraction.ibsi`` keeps its meaning: with it set,
    ``pyradiomics`` runs in IBSI mode (the ``ibsi`` engine), and an ``ibsi`` entry takes its
    configuration from it. ``resolve`` makes a model path absolute against the job's folder.

    Raises
    ------
    SpecError
        An engine that cannot run as given, naming it and why.
    """
    entries: list[tuple[str, Any]] = []
    for entry in extraction.engines:
        if isinstance(entry, str):
            entries.append((entry, None))
        elif isinstance(entry, Mapping):
            entries.append(next(iter(entry.items())))
        else:  # the built-in {onnx: {...}} section
            entries.append(("onnx", entry.onnx.model_copy(update={"model": resolve(entry.onnx.model)})))
    names = [name for name, _ in entries]
    if "pyradiomics" in names and "ibsi" in names:
        raise SpecError(
            "key 'extraction.engines'",
            "'pyradiomics' and 'ibsi' give the same columns (pyradiomics' feature names)",
            "run one of them (IBSI mode: 'ibsi', or extraction.ibsi)",
        )
    deep = [opts.name for name, opts in entries if name == "onnx"]
    twice = sorted({n for n in deep if deep.count(n) > 1} | {n for n in names if n != "onnx" and names.count(n) > 1})
    if twice:
        raise SpecError("key 'extraction.engines'", f"{twice} given twice", "each engine (each onnx name) once")
    engines = []
    for name, options in entries:
        if name in ("pyradiomics", "ibsi") and (extraction.ibsi or name == "ibsi"):
            name, options = "ibsi", {"config": extraction.ibsi or True}
        engines.append(make_engine(name, options).prepare(params_text))
    return tuple(engines)
