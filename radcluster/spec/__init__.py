"""Typed, frozen job specs built from YAML, validated before any cluster starts.

A job spec is data: what to run (``kind``), on which cohort, with which pyradiomics params,
into which store, on which cluster. Each pipeline stage has its own section, in its own
module: :mod:`.cluster`, :mod:`.extraction` (and the params file), :mod:`.training`,
:mod:`.lifecycle` (retrain, predict); :mod:`._base` holds what they share (the section
base, the error formatter). This module is the whole job: :class:`JobSpec`, what each kind
needs (:data:`REQUIRES`), the loader, and every public name of the sections. Every section
rejects unknown keys and names the closest valid one, and every error names the key, the
bad value and what is expected (:class:`~radcluster.errors.SpecError`).

Precedence is resolved in one place, :func:`build_job`, the same for every key: a command-line
flag, then the job YAML, then the environment (:data:`ENVIRONMENT`: ``RADCLUSTER_REGISTRY``,
``RADCLUSTER_SCHEDULER_ADDRESS``), then the defaults declared on the models below (the single
source of defaults; ``radcluster config defaults`` prints them with their descriptions).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from ..errors import SpecError
from ..registry import DEFAULT_REGISTRY
from ._base import Section, section_model, spec_error
from .cluster import (
    CLUSTER_KINDS,
    AddressClusterSpec,
    ClusterSpec,
    KubernetesClusterSpec,
    LocalClusterSpec,
    PBSClusterSpec,
    SlurmClusterSpec,
    TLSSpec,
)
from .extraction import DEFAULT_PARAMS, ExtractionSpec, OnnxEngineSpec, params_hash, read_params
from .lifecycle import PredictSpec, RetrainSpec
from .perturb import PerturbSpec
from .training import TrainSpec

# The public names of the job and of every section module (they have no __all__ of their
# own: this list is the one to keep).
__all__ = [
    "TLSSpec",
    "LocalClusterSpec",
    "AddressClusterSpec",
    "SlurmClusterSpec",
    "PBSClusterSpec",
    "KubernetesClusterSpec",
    "ClusterSpec",
    "OnnxEngineSpec",
    "ExtractionSpec",
    "PerturbSpec",
    "TrainSpec",
    "RetrainSpec",
    "PredictSpec",
    "JobSpec",
    "REQUIRES",
    "ENVIRONMENT",
    "DEFAULT_PARAMS",
    "build_job",
    "load_job",
    "from_environment",
    "read_params",
    "params_hash",
    "defaults_yaml",
]


# What each kind of job needs beyond the defaults (and, in JobSpec._requirements, what it
# needs in some cases): checked when the spec is built, so every runner can rely on it and
# no cluster starts for a job that cannot run.
REQUIRES: dict[str, tuple[str, ...]] = {
    "extract": ("manifest", "store"),
    "train": ("store",),
    "predict": ("store",),
    "retrain": ("store", "registry", "train"),
}


class JobSpec(Section):
    """A whole job: what to run, on what, where."""

    kind: Literal["extract", "train", "predict", "retrain"] = "extract"
    manifest: str | None = Field(None, description="cohort manifest (CSV/Parquet)")
    store: str | None = Field(None, description="feature store folder or URL")
    registry: str | None = Field(
        None,
        description=f"model registry folder or URL (train, if neither this nor $RADCLUSTER_REGISTRY is set: "
        f"./{DEFAULT_REGISTRY})",
    )
    extraction: ExtractionSpec = ExtractionSpec()
    cluster: ClusterSpec = LocalClusterSpec()
    train: TrainSpec | None = Field(None, description="training section (see jobs/train.yaml)")
    retrain: RetrainSpec = RetrainSpec()
    predict: PredictSpec = PredictSpec()
    base_dir: str | None = Field(None, exclude=True, description="folder relative paths resolve against")

    @field_validator("manifest", "store", "registry")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be empty")
        return v

    @model_validator(mode="after")
    def _requirements(self) -> JobSpec:
        missing = [key for key in REQUIRES[self.kind] if getattr(self, key) is None]
        if missing:
            article = "an" if self.kind[0] in "aeiou" else "a"
            them = "them" if len(missing) > 1 else "it"
            raise ValueError(
                f"{article} {self.kind} job needs {' and '.join(repr(k) for k in missing)}; "
                f"add {them} to the job file or give {them} as flags"
            )
        if self.kind == "retrain" and self.train is not None and self.train.target is None:
            raise ValueError("a retrain job needs 'train.target'; models are compared on it, set the target column")
        if self.kind == "predict" and self.predict.version == "champion" and self.registry is None:
            raise ValueError("predict.version 'champion' needs a 'registry'; set one, or give a version folder")
        return self

    def resolve(self, path: str | None) -> str | None:
        """``path`` made absolute against the job file's folder (URLs pass unchanged)."""
        if path is None or "://" in path or os.path.isabs(path) or self.base_dir is None:
            return path
        return str(Path(self.base_dir, path))


# The environment variables radcluster reads, by the job key each one sets when neither a
# flag nor the job file does. A scheduler address from the environment stands for a
# ``cluster: {kind: address}`` section.
ENVIRONMENT = {"registry": "RADCLUSTER_REGISTRY", "cluster.address": "RADCLUSTER_SCHEDULER_ADDRESS"}


def from_environment(key: str) -> str | None:
    """The value the environment gives job key ``key`` (see :data:`ENVIRONMENT`), or None."""
    return os.environ.get(ENVIRONMENT[key]) or None


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise SpecError(f"override {dotted!r}", f"{p!r} is not a section", f"it holds {node!r}")
    node[parts[-1]] = value


def build_job(
    data: dict[str, Any] | None,
    *,
    overrides: dict[str, Any] | None = None,
    source: str = "(arguments)",
    base_dir: str | None = None,
) -> JobSpec:
    """Validate a job from a mapping, with dotted-key overrides taking precedence.

    Parameters
    ----------
    data : dict or None
        The job as read from YAML.
    overrides : dict, optional
        ``{"cluster.workers": 2, ...}``; values that are ``None`` are ignored, so
        unset command-line flags do not mask the YAML. Keys neither sets come from the
        environment (:data:`ENVIRONMENT`), then from the defaults.
    source : str
        Named in error messages (the YAML path).
    base_dir : str, optional
        Relative paths in the job resolve against this folder.

    Raises
    ------
    SpecError
        Listing every invalid or unknown key, with the closest valid key.
    """
    raw: dict[str, Any] = dict(data or {})
    if not isinstance(data, dict | None):
        raise SpecError(f"job spec {source}", "must be a mapping of keys", f"got {type(data).__name__}")
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, key, value)
    if raw.get("registry") is None and from_environment("registry"):
        raw["registry"] = from_environment("registry")
    if raw.get("cluster") is None and from_environment("cluster.address"):
        raw["cluster"] = {"kind": "address", "address": from_environment("cluster.address")}
    if isinstance(raw.get("cluster"), dict):
        raw["cluster"] = {"kind": "local", **raw["cluster"]}  # the default kind may be left out
    if base_dir is not None:
        raw["base_dir"] = base_dir
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as err:
        raise spec_error(err, f"job spec {source}", JobSpec) from None


def load_job(path: str | os.PathLike, *, overrides: dict[str, Any] | None = None) -> JobSpec:
    """Read and validate a job YAML file (see :func:`build_job`)."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise SpecError(f"job spec {str(p)!r}", "does not exist", "give the path of a job YAML file") from None
    except yaml.YAMLError as err:
        raise SpecError(f"job spec {str(p)!r}", "is not valid YAML", str(err)) from None
    return build_job(data, overrides=overrides, source=repr(str(p)), base_dir=str(p.parent.resolve()))


def defaults_yaml() -> str:
    """Every job key with its default and description, as commented YAML.

    Generated from the models above, so the documentation cannot drift from the code.
    """
    lines = [
        "# radcluster job spec: every key, its default and its meaning.",
        "# `cluster` takes one of the kinds below; the first (local) is the default.",
    ]

    def emit(model: type[BaseModel], indent: int) -> None:
        pad = " " * indent
        for name, f in model.model_fields.items():
            if f.exclude:
                continue
            ann = f.annotation
            if name == "cluster":
                lines.append(f"{pad}cluster:")
                for kind, spec in CLUSTER_KINDS.items():
                    lines.append(f"{pad}  # --- kind: {kind}: {spec.__doc__.strip().splitlines()[0]}")
                    emit(spec, indent + 2)
                continue
            if model is TrainSpec and name == "params":
                lines.append(f"{pad}params:  # {f.description}")
                lines.extend(f"{pad}  {line}" for line in _model_defaults())
                continue
            section = section_model(ann)
            if section is not None:
                lines.append(f"{pad}{name}:" + ("   # optional section" if section is not ann else ""))
                emit(section, indent + 2)
                continue
            if f.is_required():
                lines.append(f"{pad}{name}:   # required: {f.description}")
                continue
            default = f.get_default(call_default_factory=True)
            value = _flow(list(default) if isinstance(default, tuple) else default)
            comment = f"  # {f.description}" if f.description else ""
            lines.append(f"{pad}{name}: {value}{comment}")
            if model is ExtractionSpec and name == "engines":
                # the keys of an {onnx: {...}} entry, commented out under the list
                mark = len(lines)
                emit(OnnxEngineSpec, indent + 8)
                lines[mark:] = [f"{pad}#   - onnx:", *(f"{pad}#{line[indent + 1 :]}" for line in lines[mark:])]

    emit(JobSpec, 0)
    return "\n".join(lines)


def _model_defaults() -> list[str]:
    """One line per registered model: its defaults as a ``train.params`` entry, its tasks and what it is."""
    from ..learn.models import families

    return [
        f"{name}: {_flow(dict(m.defaults))}  # {', '.join(m.tasks)}: {m.description}" for name, m in families().items()
    ]


def _flow(value: Any) -> str:
    """``value`` as one line of YAML."""
    return (
        yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1000).strip().removesuffix("...").strip()
    )
