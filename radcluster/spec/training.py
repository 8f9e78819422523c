"""The ``train`` section of a job spec: typed, frozen, validated before any cluster starts.

:class:`TrainSpec` is what ``train:`` in a job YAML (``kind: train``) and the flags of
``radcluster train`` become; :func:`parse_train_spec` turns pydantic's errors into a
:class:`~radcluster.errors.SpecError` naming each bad key and the closest valid one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ..errors import did_you_mean
from ._base import Section, spec_error

__all__ = [
    "TrainSpec",
    "PreprocessSpec",
    "CVSpec",
    "MetricsSpec",
    "SelectSpec",
    "SearchSpec",
    "ValidationSpec",
    "parse_train_spec",
]

# What `features:` selects. Deep engines (radcluster.extract.engines, kind "deep") name their
# columns deep_<name>_<i>; every other feature column is radiomics (pyradiomics, IBSI mode).
FEATURE_KINDS = ("radiomics", "deep")
DEEP_PREFIX = "deep_"


def feature_kind(name: str) -> str:
    """``"deep"`` for a deep engine's column (``deep_*``, pivoted ``deep_*@<label>`` too), else ``"radiomics"``."""
    return "deep" if name.startswith(DEEP_PREFIX) else "radiomics"


def pca_option(value: Any) -> int | float | None:
    """``value`` if it is a valid ``preprocess.pca``: a number of components (int >= 1), a
    share of the variance to explain (float in (0, 1)), or None (no PCA); else ValueError."""
    if value is None or isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, float) and 0 < value < 1:
        return value
    raise ValueError("must be a number of components (int >= 1), a variance share in (0, 1) or none")


class PreprocessSpec(Section):
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
        0.95, description="PCA components (int) or explained-variance share (float in (0,1)); null/none: off"
    )
    pca_max_components: int = Field(50, ge=1, description="components fitted when pca is a share")
    pca_solver: Literal["auto", "tsqr", "randomized"] = Field("auto", description="dask-ml PCA solver")
    combat: str | None = Field(None, description="ComBat-harmonise by this batch column (e.g. site)")

    @field_validator("pca", mode="before")
    @classmethod
    def _pca(cls, v):
        if isinstance(v, str):  # from the command line (--pca) or a quoted YAML value
            text = v.strip().lower()
            if text in ("none", "off", "null"):
                return None
            with contextlib.suppress(ValueError):
                number = float(text)
                v = int(number) if number >= 1 and number.is_integer() else number
        return pca_option(v)


class CVSpec(Section):
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


class MetricsSpec(Section):
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for confidence intervals")
    level: float = Field(0.95, gt=0, lt=1, description="confidence level")
    calibration_bins: int = Field(10, ge=2, description="bins of the calibration curve")


class SelectSpec(Section):
    """Feature selection: the stability filter before any fold, the rest fitted on each
    training fold only (after imputation, ComBat and scaling, before PCA)."""

    icc_min: float | None = Field(
        None,
        ge=0,
        le=1,
        description="drop features whose ICC(3,1) over the retest pairs (retest_of) is below; null: off",
    )
    cluster: float | None = Field(
        None,
        gt=0,
        le=1,
        description="correlation clustering: keep the most relevant feature per cluster of |r| >= this",
    )
    method: Literal["none", "univariate", "lasso", "mrmr"] = Field(
        "none", description="univariate (AUC / Cox C-index / |r|), lasso (L1 model), mrmr (redundancy-aware)"
    )
    k: int | None = Field(10, ge=1, description="keep at most this many features (null: all that pass q)")
    q: float | None = Field(None, gt=0, le=1, description="univariate: keep features with BH q <= this; null: off")


# The distributions ``search.random`` takes besides a list of values: {name: [low, high]}.
DISTRIBUTIONS = ("uniform", "loguniform", "randint")


def _distribution(key: str, value: Any) -> Any:
    """A ``search.random`` entry checked: a non-empty list, or ``{uniform|loguniform|randint: [low, high]}``."""
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError(f"parameter {key!r} has an empty list of values; give at least one")
        return list(value)
    if isinstance(value, dict) and len(value) == 1:
        ((name, bounds),) = value.items()
        if name not in DISTRIBUTIONS:
            raise ValueError(f"parameter {key!r}: unknown distribution {name!r}; {did_you_mean(name, DISTRIBUTIONS)}")
        ok = isinstance(bounds, list | tuple) and len(bounds) == 2 and all(isinstance(b, int | float) for b in bounds)
        if not ok or not bounds[0] < bounds[1] or (name == "loguniform" and bounds[0] <= 0):
            raise ValueError(
                f"parameter {key!r}: {name} bounds {bounds!r}; give [low, high] with low < high (loguniform: low > 0)"
            )
        return {name: list(bounds)}
    raise ValueError(
        f"parameter {key!r} is {value!r}; give a list of values or {{uniform|loguniform|randint: [low, high]}}"
    )


class SearchSpec(Section):
    """Hyperparameter search, in an inner cross-validation of each outer training fold (nested CV)."""

    grid: dict[str, list[Any]] | None = Field(
        None, description="model parameters and the values to try: every combination (scikit-learn's ParameterGrid)"
    )
    random: dict[str, Any] | None = Field(
        None,
        description="model parameters and a list of values or {uniform|loguniform|randint: [low, high]}: "
        "n_iter draws (scikit-learn's ParameterSampler)",
    )
    n_iter: int = Field(10, ge=1, description="random: candidates drawn")
    inner_folds: int = Field(3, ge=2, description="grouped, stratified inner folds of each outer training fold")
    seed: int = Field(0, ge=0, description="seed of the random draw")

    @field_validator("random")
    @classmethod
    def _random(cls, v):
        return None if v is None else {k: _distribution(k, value) for k, value in v.items()}

    @model_validator(mode="after")
    def _one(self) -> SearchSpec:
        if (self.grid is None) == (self.random is None):
            raise ValueError("both or neither of 'grid' and 'random'; give either 'grid' or 'random' (with n_iter)")
        if not (self.grid or self.random):
            raise ValueError("names no parameter to search; give at least one in 'grid' or 'random'")
        empty = [k for k, values in (self.grid or {}).items() if not values]
        if empty:
            raise ValueError(f"grid parameter(s) {', '.join(empty)} without a value; give each at least one")
        return self

    def parameters(self) -> list[str]:
        return list(self.grid or self.random or {})


class ValidationSpec(Section):
    """Validation beyond the folds: leave one group (a site) out at a time."""

    leave_out: str | None = Field(
        None, description="a column (e.g. site): each value in turn is the test set, everything fitted on the others"
    )


class TrainSpec(Section):
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
    model: str = Field("xgboost", description="a registered model (see params below for the list)")
    params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-model parameters, keyed by model name; unset ones: the model's defaults"
    )
    preprocess: PreprocessSpec = PreprocessSpec()
    cv: CVSpec = CVSpec()
    metrics: MetricsSpec = MetricsSpec()
    select: SelectSpec = SelectSpec()
    validation: ValidationSpec = ValidationSpec()
    search: SearchSpec | None = Field(
        None, description="hyperparameter search on each training fold, scored by inner folds only (nested CV)"
    )
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
        # The registry is read only when a train section is validated: it imports scikit-learn.
        from ..learn.models import families

        if v not in families():
            raise ValueError(f"unknown model; {did_you_mean(v, families(), listing='registered')}")
        return v

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from ..learn.models import families

        known = list(families())
        unknown = [k for k in v if k not in known]
        if unknown:
            raise ValueError(f"unknown model(s) {', '.join(unknown)}; keys are model names: {', '.join(known)}")
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
            raise ValueError("'target' is required (only model 'kmeans' trains without one); set the target column")
        if self.task == "survival" and self.event is None:
            raise ValueError("task 'survival' needs 'event'; set 'event' (1 event, 0 censored) and 'target' (the time)")
        if (
            self.model == "kmeans"
            and self.task not in ("auto", "clustering")
            or (self.task == "clustering" and self.model != "kmeans")
        ):
            raise ValueError(
                f"task {self.task!r} with model {self.model!r}; "
                "task 'clustering' goes with model 'kmeans' and only with it"
            )
        if self.search is not None and self.model == "kmeans":
            raise ValueError("search needs a target to score candidates: not with model 'kmeans'; drop 'search'")
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


def parse_train_spec(data: dict[str, Any] | TrainSpec | None, *, source: str = "the train section") -> TrainSpec:
    """Validate a ``train`` mapping; :class:`SpecError` names every bad key and the closest valid one."""
    if isinstance(data, TrainSpec):
        return data
    try:
        return TrainSpec.model_validate(data or {})
    except ValidationError as err:
        raise spec_error(err, source, TrainSpec, prefix=("train",)) from None
