"""The ``extraction`` section of a job spec, and the pyradiomics params file it names.

:class:`ExtractionSpec` says how each scan is extracted: the params file, IBSI mode, the
feature engines (``pyradiomics``, ``ibsi``, ``{onnx: {...}}`` with :class:`OnnxEngineSpec`,
or an engine an installed package registers). :func:`read_params` reads and validates the
params file on the client, before any cluster starts.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, Discriminator, Field, Tag, field_validator

from ..errors import SpecError
from ._base import Section
from .perturb import PerturbSpec


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
        raise ValueError("engine 'onnx' needs its options; write {onnx: {name: ..., model: ...}}")
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
    flush_rows: int | None = Field(
        None,
        ge=1,
        description="rows per Parquet part file written while running; null: parts of about 32 MiB of features",
    )
    flush_seconds: float = Field(30.0, gt=0, description="longest wait before buffered rows are written")

    @field_validator("engines")
    @classmethod
    def _some_engine(cls, v: tuple) -> tuple:
        if not v:
            raise ValueError("must name at least one engine (default: [pyradiomics])")
        return v


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
        raise SpecError(
            f"params file {str(p)!r}",
            f"cannot be read ({err.strerror or err})",
            "give a readable pyradiomics params YAML, or none for the packaged default",
        ) from None
    from ..extract._radiomics import validate_params

    validate_params(text, source=str(p))
    return text, params_hash(text)


def params_hash(text: str) -> str:
    """Hash of the *parsed* params, so comments and key order do not force a re-extraction."""
    parsed = yaml.safe_load(text) or {}
    canonical = yaml.safe_dump(parsed, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
