"""Typed, frozen job specs built from YAML, validated before any cluster starts.

A job spec is data: what to run (``kind``), on which cohort, with which pyradiomics params,
into which store, on which cluster. Each pipeline stage has its own section; every section
rejects unknown keys and names the closest valid one, and every error names the key, the
bad value and what is expected.

Precedence is resolved in one place, :func:`build_job`, the same for every key: a command-line
flag, then the job YAML, then the environment (:data:`ENVIRONMENT`: ``RADCLUSTER_REGISTRY``,
``RADCLUSTER_SCHEDULER_ADDRESS``), then the defaults declared on the models below (the single
source of defaults; ``radcluster config defaults`` prints them with their descriptions).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import SpecError
from ._base import Section, format_errors, section_model
from .perturb import PerturbSpec
from .training import TrainSpec

__all__ = [
    "LocalClusterSpec",
    "AddressClusterSpec",
    "SlurmClusterSpec",
    "PBSClusterSpec",
    "KubernetesClusterSpec",
    "ClusterSpec",
    "ExtractionSpec",
    "JobSpec",
    "build_job",
    "load_job",
    "read_params",
]


class TLSSpec(Section):
    """Certificates for TLS between client, scheduler and workers (``distributed.Security``)."""

    ca_file: str = Field(..., description="CA certificate (PEM) that signed the others")
    cert_file: str = Field(..., description="certificate (PEM) of this process")
    key_file: str = Field(..., description="private key (PEM) of cert_file")

    def security(self):
        from distributed import Security

        return Security(
            tls_ca_file=self.ca_file,
            tls_client_cert=self.cert_file,
            tls_client_key=self.key_file,
            tls_scheduler_cert=self.cert_file,
            tls_scheduler_key=self.key_file,
            tls_worker_cert=self.cert_file,
            tls_worker_key=self.key_file,
            require_encryption=True,
        )


class LocalClusterSpec(Section):
    """An in-process :class:`distributed.LocalCluster` (the default)."""

    kind: Literal["local"] = "local"
    workers: int | None = Field(None, ge=1, description="worker processes; default: one per core")
    threads_per_worker: int = Field(1, ge=1, description="threads (concurrent scans) per worker")
    memory_limit: str = Field("auto", description="per-worker memory limit, e.g. '4GiB' or 'auto'")
    processes: bool = Field(True, description="worker processes (True) or threads in this process")
    dashboard_address: str = Field("127.0.0.1:8787", description="dashboard bind; ':0' picks a port")
    tls: TLSSpec | None = Field(None, description="encrypt scheduler/worker/client traffic (certificates)")
    profile: bool = Field(
        False,
        description="Dask's statistical profiler in each worker (the dashboard's "
        "Profile page); it samples every 10 ms and costs ~8% of a busy worker",
    )


class AddressClusterSpec(Section):
    """An already running scheduler."""

    kind: Literal["address"] = "address"
    address: str = Field(..., description="scheduler address, e.g. tcp://10.0.0.5:8786 or tls://...")
    tls: TLSSpec | None = Field(None, description="client certificates for a tls:// scheduler")


class _JobQueueSpec(Section):
    cores: int = Field(1, ge=1, description="cores per batch job")
    memory: str = Field("4GiB", description="memory per batch job")
    processes: int = Field(1, ge=1, description="worker processes per batch job")
    walltime: str = Field("01:00:00", description="batch job walltime")
    queue: str | None = Field(None, description="partition / queue")
    account: str | None = Field(None, description="account / project to charge")
    job_extra_directives: tuple[str, ...] = Field((), description="extra #SBATCH / #PBS lines")
    job_script_prologue: tuple[str, ...] = Field((), description="shell lines run before the worker")
    interface: str | None = Field(None, description="network interface of workers and scheduler")
    local_directory: str | None = Field(None, description="worker scratch directory")
    python: str | None = Field(None, description="python on the compute nodes; default: this one")
    minimum_jobs: int = Field(0, ge=0, description="adaptive scaling lower bound")
    maximum_jobs: int = Field(4, ge=1, description="adaptive scaling upper bound")
    dashboard_address: str = Field("127.0.0.1:8787", description="dashboard bind")


class SlurmClusterSpec(_JobQueueSpec):
    """Workers as SLURM jobs through :class:`dask_jobqueue.SLURMCluster`."""

    kind: Literal["slurm"] = "slurm"


class PBSClusterSpec(_JobQueueSpec):
    """Workers as PBS jobs through :class:`dask_jobqueue.PBSCluster`."""

    kind: Literal["pbs"] = "pbs"


class KubernetesClusterSpec(Section):
    """Inside a Dask operator DaskJob: the scheduler address comes from the environment."""

    kind: Literal["kubernetes"] = "kubernetes"
    address_env: str = Field("DASK_SCHEDULER_ADDRESS", description="variable holding the address")


ClusterSpec = Annotated[
    LocalClusterSpec | AddressClusterSpec | SlurmClusterSpec | PBSClusterSpec | KubernetesClusterSpec,
    Field(discriminator="kind"),
]


class OnnxEngineSpec(Section):
    """An ONNX model as a feature engine: each ROI's embedding as columns ``deep_<name>_<i>``."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9]+$", description="letters and digits; columns deep_<name>_<i>")
    model: str = Field(..., description="ONNX file: a path (relative to the job file) or an fsspec URL")
    mode: Literal["3d", "2.5d"] = Field(
        "3d", description="3d: one [z, y, x] patch per ROI; 2.5d: 2D model on axial slices, embeddings averaged"
    )
    slices: int = Field(1, ge=1, description="2.5d: axial slices through the ROI's centre")
    spacing: tuple[float, float, float] | None = Field(
        None, description="resample to this (x, y, z) spacing in mm first (0 keeps an axis); null: the scan's"
    )
    margin: float = Field(10.0, ge=0, description="mm of context kept around the ROI's bounding box")
    window: tuple[float, float] | None = Field(None, description="[low, high]: clip and scale to [0, 1] (CT HU)")
    zscore: bool = Field(False, description="subtract the crop's mean, divide by its sd (after any window)")
    pad_value: float = Field(0.0, description="value of the voxels padding a crop smaller than the input")
    interpolation: Literal["linear", "bspline", "nearest"] = Field("linear", description="resampling interpolator")
    size: tuple[int, ...] | None = Field(
        None, description="input size ([z, y, x], 2.5d: [y, x]) when the model's spatial axes are dynamic"
    )
    input: str | None = Field(None, description="the model's image input; default: its only input")
    output: str | None = Field(None, description="the embedding output; default: the model's first")
    batch: int = Field(16, ge=1, description="samples per ONNX Runtime call when the batch axis is dynamic")
    providers: tuple[str, ...] | None = Field(
        None, description="ONNX Runtime execution providers; null: a GPU one when present, else CPU"
    )
    threads: int | None = Field(None, ge=1, description="ONNX Runtime intra-op threads; null: the worker's threads")

    @field_validator("window")
    @classmethod
    def _window(cls, v):
        if v is not None and not v[0] < v[1]:
            raise ValueError("must be [low, high] with low < high")
        return v

    @field_validator("size")
    @classmethod
    def _size(cls, v):
        if v is not None and (len(v) not in (2, 3) or min(v) < 1):
            raise ValueError("must be 3 ([z, y, x]) or 2 ([y, x]) positive sizes")
        return v


def _engine_tag(entry: Any) -> str:
    """Which form an ``extraction.engines`` entry has: a name, ``{onnx: {...}}``, or another
    engine's ``{name: {...}}`` (entry points)."""
    if isinstance(entry, dict) and len(entry) == 1:
        return "onnx" if "onnx" in entry else "options"
    if isinstance(entry, OnnxEntry):
        return "onnx"
    return "options" if isinstance(entry, dict) else "name"


def _engine_name(name: str) -> str:
    from ..extract.engines import engine_class

    if name == "onnx":
        raise ValueError("engine 'onnx' needs its options: {onnx: {name: ..., model: ...}}")
    engine_class(name)  # SpecError (a ValueError) naming the closest engine when unknown
    return name


def _engine_options(entry: dict[str, Any]) -> dict[str, Any]:
    _engine_name(next(iter(entry)))
    return entry


class OnnxEntry(Section):
    onnx: OnnxEngineSpec


EngineEntry = Annotated[
    Annotated[Annotated[str, AfterValidator(_engine_name)], Tag("name")]
    | Annotated[OnnxEntry, Tag("onnx")]
    | Annotated[dict[str, dict[str, Any] | None], AfterValidator(_engine_options), Tag("options")],
    Discriminator(_engine_tag),
]


class ExtractionSpec(Section):
    """How each scan is extracted."""

    params: str | None = Field(None, description="pyradiomics params YAML; default: the packaged one")
    label_table: str | None = Field(None, description="CSV/TSV of label value -> region name")
    fast: bool = Field(True, description="read/hash/crop once per scan; False: plain pyradiomics calls")
    ibsi: bool | Literal["A", "B", "C", "D", "E"] = Field(
        False, description="IBSI mode: true (settings from the params file) or an IBSI 1 configuration name"
    )
    sitk_threads: int = Field(1, ge=1, description="SimpleITK threads inside one scan task")
    engines: tuple[EngineEntry, ...] = Field(
        ("pyradiomics",),
        description="feature engines run on each scan's one read: pyradiomics, ibsi, {onnx: {...}} (its keys "
        "below), or the name of an engine an installed package registers (entry point group radcluster.engines)",
    )
    perturb: PerturbSpec | None = Field(
        None, description="perturbed copies of every scan, extracted beside it (stability: train.select.icc_min)"
    )
    flush_rows: int = Field(256, ge=1, description="rows per Parquet part file written while running")
    flush_seconds: float = Field(30.0, gt=0, description="longest wait before buffered rows are written")

    @field_validator("engines")
    @classmethod
    def _some_engine(cls, v: tuple) -> tuple:
        if not v:
            raise ValueError("must name at least one engine (default: [pyradiomics])")
        return v


class RetrainSpec(Section):
    """How a retrain decides whether the new model replaces the champion."""

    holdout_fraction: float = Field(0.2, gt=0, lt=1, description="patients drawn once per registry as hold-out")
    margin: float = Field(0.0, ge=0, description="promote when challenger >= champion - margin")
    seed: int = Field(0, ge=0, description="seed of the hold-out draw")


class PredictSpec(Section):
    """Which model version a predict job applies, and where the predictions go."""

    version: str = Field("champion", description="model version folder, or 'champion' (the registry's)")
    output: str = Field("predictions.parquet", description="predictions Parquet file")


# What each kind of job needs beyond the defaults: checked when the spec is built, so every
# runner can rely on it and no cluster starts for a job that cannot run.
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
    registry: str | None = Field(None, description="model registry folder or URL")
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
            raise ValueError(f"{article} {self.kind} job needs {' and '.join(repr(k) for k in missing)}")
        return self

    def resolve(self, path: str | None) -> str | None:
        """``path`` made absolute against the job file's folder (URLs pass unchanged)."""
        if path is None or "://" in path or os.path.isabs(path) or self.base_dir is None:
            return path
        return str(Path(self.base_dir, path))


_CLUSTER_KINDS = {
    "local": LocalClusterSpec,
    "address": AddressClusterSpec,
    "slurm": SlurmClusterSpec,
    "pbs": PBSClusterSpec,
    "kubernetes": KubernetesClusterSpec,
}


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
            raise SpecError(f"override {dotted!r}: {p!r} is not a section")
    node[parts[-1]] = value


def build_job(
    data: dict[str, Any] | None,
    *,
    overrides: dict[str, Any] | None = None,
    source: str = "<arguments>",
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
        raise SpecError(f"job spec {source} must be a mapping of keys, got {type(data).__name__}")
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
        raise SpecError(format_errors(err, source, JobSpec)) from None


def load_job(path: str | os.PathLike, *, overrides: dict[str, Any] | None = None) -> JobSpec:
    """Read and validate a job YAML file (see :func:`build_job`)."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise SpecError(f"job spec {str(p)!r} does not exist") from None
    except yaml.YAMLError as err:
        raise SpecError(f"job spec {str(p)!r} is not valid YAML: {err}") from None
    return build_job(data, overrides=overrides, source=repr(str(p)), base_dir=str(p.parent.resolve()))


DEFAULT_PARAMS = Path(__file__).parents[1] / "data" / "params_default.yaml"


def read_params(path: str | os.PathLike | None) -> tuple[str, str]:
    """The params YAML text and its hash, validated by pyradiomics' own schema.

    The text (not a path) is what travels to workers, so a params file need not exist on
    the compute nodes, and workers parse it once each.

    Raises
    ------
    SpecError
        When the file is missing or pyradiomics rejects a key or a value; the message names
        the file and quotes pyradiomics' reason.
    """
    p = Path(path) if path is not None else DEFAULT_PARAMS
    try:
        text = p.read_text()
    except OSError as err:
        raise SpecError(f"params file {str(p)!r} cannot be read: {err.strerror or err}") from None
    from ..extract._radiomics import validate_params

    validate_params(text, source=str(p))
    return text, params_hash(text)


def params_hash(text: str) -> str:
    """Hash of the *parsed* params, so comments and key order do not force a re-extraction."""
    parsed = yaml.safe_load(text) or {}
    canonical = yaml.safe_dump(parsed, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


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
                for kind, spec in _CLUSTER_KINDS.items():
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
