"""The ``train`` section of a job spec: typed, frozen, validated before any cluster starts.

:class:`TrainSpec` is what ``train:`` in a job YAML (``kind: train``) and the flags of
``radcluster train`` become; :func:`parse_train_spec` turns pydantic's errors into a
:class:`~radcluster.errors.SpecError` naming each bad key and the closest valid one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import SpecError

__all__ = ["TrainSpec", "PreprocessSpec", "CVSpec", "MetricsSpec", "parse_train_spec", "MODELS"]

# What `features:` selects. Deep engines (radcluster.extract.engines, kind "deep") name their
# columns deep_<name>_<i>; every other feature column is radiomics (pyradiomics, IBSI mode).
FEATURE_KINDS = ("radiomics", "deep")
DEEP_PREFIX = "deep_"


def feature_kind(name: str) -> str:
    """``"deep"`` for a deep engine's column (``deep_*``, pivoted ``deep_*@<label>`` too), else ``"radiomics"``."""
    return "deep" if name.startswith(DEEP_PREFIX) else "radiomics"


# Model names (radcluster._models implements them); here so that validating a spec imports
# only pydantic, not scikit-learn.
MODELS = ("xgboost", "logistic_regression", "random_forest", "svm", "naive_bayes", "decision_tree", "ridge", "kmeans")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PreprocessSpec(_Section):
    """Preprocessing, fitted on the training rows of each fold only."""

    impute: Literal["median", "mean"] = Field("median", description="fill missing/non-finite values with")
    max_missing_fraction: float = Field(0.5, ge=0, le=1, description="drop features missing in more rows")
    max_mode_fraction: float | None = Field(
        0.95, gt=0, le=1, description="near-constant: this share of rows equal to the median; null: off"
    )
    min_relative_std: float = Field(1e-6, ge=0, description="constant: sd <= this x |mean|")
    max_correlation: float | None = Field(
        None, gt=0, le=1, description="drop the later feature of each pair with |r| above; null: off"
    )
    scale: bool = Field(True, description="dask-ml StandardScaler")
    pca: int | float | None = Field(
        0.95, description="PCA components (int) or explained-variance share (float in (0,1)); null: off"
    )
    pca_max_components: int = Field(50, ge=1, description="components fitted when pca is a share")
    pca_solver: Literal["auto", "tsqr", "randomized"] = Field("auto", description="dask-ml PCA solver")
    combat: str | None = Field(None, description="ComBat-harmonise by this batch column (e.g. site)")

    @field_validator("pca")
    @classmethod
    def _pca(cls, v):
        if v is None or isinstance(v, int) and v >= 1 or isinstance(v, float) and 0 < v < 1:
            return v
        raise ValueError("must be a number of components (int >= 1) or a variance share in (0, 1)")


class CVSpec(_Section):
    """Evaluation: grouped, stratified folds; an optional held-out test split."""

    folds: int = Field(5, ge=0, description="cross-validation folds (0: none; else >= 2)")
    test_fraction: float = Field(0.0, ge=0, le=0.5, description="held-out test share of patients (0: none)")
    group: str = Field("auto", description="'auto' (patient_id, else case_id), a column, or 'none'")
    validation_fraction: float = Field(0.2, ge=0, lt=0.5, description="early-stopping split of training rows")
    early_stopping_rounds: int | None = Field(20, ge=1, description="xgboost early stopping; null: off")
    seed: int = Field(0, ge=0, description="seed of folds, bootstrap and models")

    @field_validator("folds")
    @classmethod
    def _folds(cls, v: int) -> int:
        if v == 1:
            raise ValueError("must be 0 (no cross-validation) or at least 2")
        return v


class MetricsSpec(_Section):
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for confidence intervals")
    level: float = Field(0.95, gt=0, lt=1, description="confidence level")
    calibration_bins: int = Field(10, ge=2, description="bins of the calibration curve")


class TrainSpec(_Section):
    """The ``train`` section of a job spec (``radcluster train``)."""

    target: str | None = Field(None, description="target column (store or clinical table); kmeans: optional")
    task: Literal["auto", "binary", "multiclass", "regression", "survival", "clustering"] = Field(
        "auto", description="auto: survival when 'event' is set, else from the target's values"
    )
    event: str | None = Field(None, description="survival: event column (1 event, 0 censored)")
    clinical: str | None = Field(None, description="CSV/Parquet keyed by case_id with target columns")
    labels: Literal["rows", "pivot"] = Field(
        "rows", description="multi-label stores: one row per (case, label), or pivot to one per case"
    )
    model: str = Field(
        "xgboost",
        description="xgboost, logistic_regression, random_forest, svm, naive_bayes, decision_tree, ridge, kmeans",
    )
    params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-model parameters, keyed by model name"
    )
    preprocess: PreprocessSpec = PreprocessSpec()
    cv: CVSpec = CVSpec()
    metrics: MetricsSpec = MetricsSpec()
    max_gather_mb: float = Field(512.0, gt=0, description="largest matrix gathered for scikit-learn models")
    persist: bool = Field(True, description="keep the training matrix in cluster memory while training")
    features: tuple[Literal["radiomics", "deep"], ...] | None = Field(
        None,
        description="feature kinds to train on: [radiomics], [deep] (an onnx engine's deep_* columns) "
        "or [radiomics, deep]; null: every feature in the store",
    )
    shuffle_target: bool = Field(False, description="permute the target across patients (a leak check)")
    report: bool = Field(True, description="write report.html into the version")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if v not in MODELS:
            import difflib

            close = difflib.get_close_matches(v, MODELS, n=1)
            raise ValueError(
                "unknown model" + (f"; did you mean {close[0]!r}?" if close else f"; one of {', '.join(MODELS)}")
            )
        return v

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        unknown = [k for k in v if k not in MODELS]
        if unknown:
            raise ValueError(f"keys are model names ({', '.join(MODELS)}); unknown: {', '.join(unknown)}")
        return v

    @field_validator("features")
    @classmethod
    def _features(cls, v):
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError("must list radiomics, deep or both, each once")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainSpec:
        if self.target is None and self.model != "kmeans":
            raise ValueError("'target' is required (only model 'kmeans' trains without one)")
        if self.task == "survival" and self.event is None:
            raise ValueError("task 'survival' needs 'event' (and 'target' as the time column)")
        if (
            self.model == "kmeans"
            and self.task not in ("auto", "clustering")
            or (self.task == "clustering" and self.model != "kmeans")
        ):
            raise ValueError("task 'clustering' goes with model 'kmeans' and only with it")
        return self

    def resolved_task(self) -> str | None:
        if self.model == "kmeans":
            return "clustering"
        if self.event is not None:
            return "survival"
        return None if self.task == "auto" else self.task

    def digest(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def parse_train_spec(data: dict[str, Any] | TrainSpec | None, *, source: str = "train") -> TrainSpec:
    """Validate a ``train`` mapping; :class:`SpecError` names every bad key and the closest valid one."""
    import difflib

    if isinstance(data, TrainSpec):
        return data
    try:
        return TrainSpec.model_validate(data or {})
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                section: type[BaseModel] = TrainSpec
                for part in e["loc"][:-1]:
                    ann = section.model_fields[str(part)].annotation if part in section.model_fields else None
                    section = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else section
                valid = list(section.model_fields)
                close = difflib.get_close_matches(str(e["loc"][-1]), valid, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"
                lines.append(f"unknown key {source}.{loc!s}; {hint}")
            elif not loc:  # a rule across keys
                lines.append(f"{source}: {e['msg'].removeprefix('Value error, ')}")
            else:
                lines.append(f"key {source}.{loc!s}: {e['msg'].removeprefix('Value error, ')} (got {e.get('input')!r})")
        raise SpecError("invalid training config:\n" + "\n".join(f"  - {x}" for x in lines)) from None
