"""Model families, by name: one module per family, each registering itself here.

Every model is a scikit-learn style estimator fitted on the (preprocessed) dask array of one
training fold: keyword-only parameters stored as given, validation in ``fit(X, y, *,
eval_set=None)``, fitted attributes ending in ``_`` (``importances_``, ``n_features_in_``),
``predict_scores(X)`` returning what evaluation needs (class probabilities, a regression
value, a log-hazard risk or a cluster index), ``save(folder) -> dict`` writing a safe format
(never a pickle) and returning what ``model.json`` records of it.

Adding a model
--------------
Write one module here, ``radcluster/learn/models/<family>.py``, that defines the estimator
and calls :func:`register` with a :class:`ModelFamily` (see ``kmeans.py``, the smallest).
Every module of this package is imported when the registry is first read, so nothing else
is edited: the spec's check of ``train.model`` and ``train.params``, the help of
``radcluster train --model``, ``radcluster config defaults``, training, loading a saved
version and retraining's metric all read the registration.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ... import _io
from ...errors import RegistryError, SpecError, did_you_mean

__all__ = [
    "TASKS",
    "ModelFamily",
    "register",
    "families",
    "family",
    "main_metric",
    "check_model",
    "make_model",
    "save_model",
    "load_model",
]

TASKS = ("binary", "multiclass", "regression", "survival", "clustering")

# The headline metric of each task (higher is better): `radcluster models list` shows it,
# early folds print it, and a retrain compares challenger and champion on it.
_MAIN_METRIC = {
    "binary": "roc_auc",
    "multiclass": "roc_auc",
    "regression": "r2",
    "survival": "c_index",
    "clustering": "silhouette",
}


@dataclass(frozen=True)
class ModelFamily:
    """One model as the rest of radcluster sees it.

    Attributes
    ----------
    name : str
        What ``train.model`` and ``--model`` accept.
    tasks : tuple of str
        The :data:`TASKS` it fits.
    description : str
        One line for ``--model``'s help and ``radcluster config defaults``.
    make : callable
        ``make(task, params, *, early_stopping_rounds, max_gather_mb, random_state)``: an
        unfitted estimator; ``params`` already holds :attr:`defaults` under the job's values.
    param_names : callable
        ``param_names(task)``: the parameters ``train.params.<name>`` may set.
    format : str
        What the estimator's ``save`` writes as ``model.json``'s ``format``.
    load : callable
        ``load(folder, meta, trusted)``: the fitted estimator back from a version folder
        (``meta`` is ``model.json``; ``trusted``: :attr:`trusted_types` and the types the
        user opted in to, all a loader may rebuild).
    defaults : mapping
        Parameters used unless the job sets them (shown by ``radcluster config defaults``).
    trusted_types : tuple of str
        Types a saved file of this family may hold beyond the format's own (skops).
    """

    name: str
    tasks: tuple[str, ...]
    description: str
    make: Callable[..., Any]
    param_names: Callable[[str], list[str]]
    format: str
    load: Callable[[Path, dict[str, Any], tuple[str, ...]], Any]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    trusted_types: tuple[str, ...] = ()


_REGISTRY: dict[str, ModelFamily] = {}
_loaded = False


def register(spec: ModelFamily) -> ModelFamily:
    """Make a model family selectable by name (called by each module of this package)."""
    unknown = set(spec.tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"model {spec.name!r}: unknown task(s) {sorted(unknown)}; tasks are {', '.join(TASKS)}")
    if spec.name in _REGISTRY and _REGISTRY[spec.name] != spec:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def families() -> dict[str, ModelFamily]:
    """Every registered model, by name, in registration order (xgboost first: the default)."""
    global _loaded
    if not _loaded:
        # Each family module registers itself on import; scikit-learn and XGBoost themselves
        # are imported only when a model is made or loaded.
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: (m.name != "xgboost", m.name)):
            if not info.name.startswith("_"):
                importlib.import_module(f"{__name__}.{info.name}")
        # a family module imported directly before this (radcluster.learn.models.cox) has
        # registered first: the order must not depend on who imported what
        ordered = sorted(_REGISTRY.items(), key=lambda item: (item[0] != "xgboost", item[0]))
        _REGISTRY.clear()
        _REGISTRY.update(ordered)
        _loaded = True
    return _REGISTRY


def family(name: str) -> ModelFamily:
    """The registration of model ``name``; :class:`SpecError` with the closest name otherwise."""
    known = families()
    if name not in known:
        raise SpecError(f"model {name!r}", "unknown", did_you_mean(name, known, listing="registered"))
    return known[name]


def main_metric(task: str) -> str:
    """The headline metric of a task (higher is better)."""
    return _MAIN_METRIC[task]


def check_model(name: str, task: str, params: Mapping[str, Any]) -> None:
    """Raise :class:`SpecError` unless ``name`` fits ``task`` and every param is known to it."""
    spec = family(name)
    if task not in spec.tasks:
        able = [m for m, f in families().items() if task in f.tasks]
        raise SpecError(f"model {name!r}", f"does not do task {task!r}", f"models that do: {', '.join(able) or 'none'}")
    valid = spec.param_names(task)
    for key in params:
        if key not in valid:
            hint = did_you_mean(key, sorted(valid))
            raise SpecError(f"model {name!r} parameter {key!r}", f"unknown for task {task!r}", hint)


def make_model(
    name: str,
    task: str,
    params: Mapping[str, Any] | None = None,
    *,
    early_stopping_rounds: int | None = 20,
    max_gather_mb: float = 512.0,
    random_state: int = 0,
):
    """An unfitted model for ``name`` and ``task``: the family's defaults under ``params``
    (checked in ``fit``). :class:`SpecError` for an unknown model or a task it does not do."""
    check_model(name, task, {})
    spec = family(name)
    return spec.make(
        task,
        {**spec.defaults, **(params or {})},
        early_stopping_rounds=early_stopping_rounds,
        max_gather_mb=max_gather_mb,
        random_state=random_state,
    )


def save_model(model, folder: Path, *, name: str, task: str) -> dict[str, Any]:
    """Write ``model`` into ``folder`` in its family's safe format; returns its ``model.json`` record."""
    meta = {"name": name, "task": task, "params": getattr(model, "params", None), **model.save(folder)}
    _io.write_json(folder / "model.json", meta)
    return meta


def load_model(folder: Path, *, trust: tuple[str, ...] = ()):
    """Rebuild the model saved in ``folder`` (see :func:`save_model`); never unpickles."""
    try:
        meta = json.loads((folder / "model.json").read_text())
    except FileNotFoundError:
        raise RegistryError(f"{folder}: no model.json (not a model version folder)") from None
    spec = families().get(meta.get("name"))
    if spec is None or meta.get("format") != spec.format:
        raise RegistryError(
            f"{folder}/model.json: model {meta.get('name')!r} in format {meta.get('format')!r} is not one "
            f"radcluster can load (registered: {', '.join(f'{n} ({f.format})' for n, f in families().items())})"
        )
    return spec.load(folder, meta, (*spec.trusted_types, *trust))


def skops_dump(estimator, folder: Path, name: str, trusted_types: tuple[str, ...]) -> dict[str, Any]:
    """Save ``estimator`` with skops as ``model.skops``; refuse a model holding a type beyond
    ``trusted_types``, so that whatever is saved can be loaded again without ``trust``."""
    import skops.io as sio

    path = folder / "model.skops"
    sio.dump(estimator, path)
    untrusted = sio.get_untrusted_types(file=path)
    unknown = sorted(set(untrusted) - set(trusted_types))
    if unknown:  # pragma: no cover - only if a library changes its internals
        raise RegistryError(f"model {name!r} holds types not on radcluster's trusted list: {unknown}")
    return {"format": "skops", "file": "model.skops", "trusted_types": sorted(untrusted)}


def skops_load(folder: Path, meta: Mapping[str, Any], trusted: tuple[str, ...]):
    """The estimator saved by :func:`skops_dump`; skops rebuilds only the ``trusted`` types."""
    import skops.io as sio

    path = folder / meta["file"]
    unknown = sorted(set(sio.get_untrusted_types(file=path)) - set(trusted))
    if unknown:
        raise RegistryError(
            f"{path}: refusing to load types not on radcluster's trusted list: {', '.join(unknown)}; "
            "if you trust this file, pass them explicitly (trust=...)"
        )
    return sio.load(path, trusted=list(trusted))
