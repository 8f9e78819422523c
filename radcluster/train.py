"""Training and prediction from a feature store: the orchestration over :mod:`radcluster.learn`.

:func:`load_training_data` joins the store's Zarr matrix (a dask array, never gathered) to
the target: a column the manifest carried into the store, or a clinical table keyed by
``case_id``. :func:`train_store` cross-validates, fits the final model on the development
rows, evaluates the held-out test rows, and writes an immutable registry version with its
report. :func:`predict_store` applies a version to another store. :class:`TrainSpec` is the
``train:`` section of a job spec.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import learn
from .errors import ModelError, SpecError

logger = logging.getLogger(__name__)

__all__ = ["TrainSpec", "PreprocessSpec", "CVSpec", "MetricsSpec", "parse_train_spec", "TrainingData",
           "load_training_data", "TrainResult", "train_store", "train_job", "predict_store", "demo_train"]


# --- the config ------------------------------------------------------------------------------
class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PreprocessSpec(_Section):
    """Preprocessing, fitted on the training rows of each fold only."""

    impute: Literal["median", "mean"] = Field("median", description="fill missing/non-finite values with")
    max_missing_fraction: float = Field(0.5, ge=0, le=1, description="drop features missing in more rows")
    max_mode_fraction: float | None = Field(
        0.95, gt=0, le=1, description="near-constant: this share of rows equal to the median; null: off")
    min_relative_std: float = Field(1e-6, ge=0, description="constant: sd <= this x |mean|")
    max_correlation: float | None = Field(
        None, gt=0, le=1, description="drop the later feature of each pair with |r| above; null: off")
    scale: bool = Field(True, description="dask-ml StandardScaler")
    pca: int | float | None = Field(
        0.95, description="PCA components (int) or explained-variance share (float in (0,1)); null: off")
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
        "auto", description="auto: survival when 'event' is set, else from the target's values")
    event: str | None = Field(None, description="survival: event column (1 event, 0 censored)")
    clinical: str | None = Field(None, description="CSV/Parquet keyed by case_id with target columns")
    labels: Literal["rows", "pivot"] = Field(
        "rows", description="multi-label stores: one row per (case, label), or pivot to one per case")
    model: str = Field("xgboost", description="xgboost, logistic_regression, random_forest, svm, "
                                              "naive_bayes, decision_tree, ridge, kmeans")
    params: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                              description="per-model parameters, keyed by model name")
    preprocess: PreprocessSpec = PreprocessSpec()
    cv: CVSpec = CVSpec()
    metrics: MetricsSpec = MetricsSpec()
    max_gather_mb: float = Field(512.0, gt=0, description="largest matrix gathered for scikit-learn models")
    persist: bool = Field(True, description="keep the training matrix in cluster memory while training")
    shuffle_target: bool = Field(False, description="permute the target across patients (a leak check)")
    report: bool = Field(True, description="write report.html into the version")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if v not in learn.MODELS:
            import difflib

            close = difflib.get_close_matches(v, learn.MODELS, n=1)
            raise ValueError("unknown model" + (f"; did you mean {close[0]!r}?" if close
                                                else f"; one of {', '.join(learn.MODELS)}"))
        return v

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        unknown = [k for k in v if k not in learn.MODELS]
        if unknown:
            raise ValueError(f"keys are model names ({', '.join(learn.MODELS)}); unknown: {', '.join(unknown)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainSpec:
        if self.target is None and self.model != "kmeans":
            raise ValueError("'target' is required (only model 'kmeans' trains without one)")
        if self.task == "survival" and self.event is None:
            raise ValueError("task 'survival' needs 'event' (and 'target' as the time column)")
        if self.model == "kmeans" and self.task not in ("auto", "clustering") or (
                self.task == "clustering" and self.model != "kmeans"):
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
                lines.append(f"key {source}.{loc!s}: {e['msg'].removeprefix('Value error, ')} "
                             f"(got {e.get('input')!r})")
        raise SpecError("invalid training config:\n" + "\n".join(f"  - {x}" for x in lines)) from None


# --- data ------------------------------------------------------------------------------------
@dataclass
class TrainingData:
    """The matrix (dask, rows x features) and everything row-aligned with it."""

    X: Any
    rows: pd.DataFrame  # case_id, label and the needed columns, one per matrix row
    feature_names: list[str]
    groups: np.ndarray
    target: learn.Target
    batch: np.ndarray | None
    left_out: pd.DataFrame  # case_id, label, reason
    pivot_labels: list[int] | None
    params_hashes: list[str]


def _read_store_columns(store, columns: list[str]) -> pd.DataFrame:
    """The current (case_id, label) rows of the store's Parquet parts, with only ``columns``.

    Reads the needed columns only (not the features), keeping the newest extraction of each
    row as :meth:`radcluster.store.Store.features` does.
    """
    import pyarrow.parquet as pq

    keys = ["case_id", "label", "extracted_at"]
    frames = []
    for path in store._parts("features"):
        with store.fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            present = [c for c in (*keys, *columns) if c in pf.schema_arrow.names]
            frames.append(pf.read(columns=present).to_pandas())
    if not frames:
        return pd.DataFrame({"case_id": pd.Series(dtype=str), "label": pd.Series(dtype="int64")})
    frame = pd.concat(frames, ignore_index=True, sort=False)
    if "extracted_at" in frame:
        frame = frame.sort_values("extracted_at", kind="stable")
    frame = frame.drop_duplicates(["case_id", "label"], keep="last").drop(columns="extracted_at",
                                                                          errors="ignore")
    frame["case_id"] = frame["case_id"].astype(str)
    return frame


def _read_clinical(path: str) -> pd.DataFrame:
    try:
        if path.lower().endswith((".parquet", ".pq")):
            table = pd.read_parquet(path)
        else:
            table = pd.read_csv(path, sep="\t" if path.lower().endswith(".tsv") else ",",
                                dtype={"case_id": str})
    except FileNotFoundError:
        raise ModelError(f"clinical table {path!r} does not exist") from None
    except Exception as err:  # pandas raises many types for unreadable tables
        raise ModelError(f"clinical table {path!r} is not a readable CSV/Parquet table: {err}") from None
    if "case_id" not in table.columns:
        raise ModelError(f"clinical table {path!r} has no 'case_id' column; found {', '.join(table.columns)}")
    table["case_id"] = table["case_id"].astype(str)
    dup = table["case_id"][table["case_id"].duplicated()].unique().tolist()
    if dup:
        raise ModelError(f"clinical table {path!r}: duplicate case_id(s) {dup[:5]}")
    return table


def _pivot(X, rows: pd.DataFrame, names: list[str], labels: list[int] | None = None):
    """One row per case: the features of every label side by side as ``<feature>@<label>``.

    A case without some label gets NaN for that label's features (imputed or dropped later).
    """
    import dask.array as da

    cases = np.array(sorted(rows["case_id"].unique()))
    labels = sorted(int(v) for v in rows["label"].unique()) if labels is None else list(labels)
    case_pos = pd.Index(cases).get_indexer(rows["case_id"])
    blocks, out_names = [], []
    for lab in labels:
        pos = np.full(len(cases), -1)
        sel = np.flatnonzero(rows["label"].to_numpy() == lab)
        pos[case_pos[sel]] = sel
        present = pos >= 0
        block = X[np.where(present, pos, 0)]
        blocks.append(da.where(present[:, None], block, np.nan) if not present.all() else block)
        out_names += [f"{n}@{lab}" for n in names]
    first = rows.groupby("case_id", sort=True).first().reindex(cases).reset_index()
    first["label"] = 0  # a pivoted row stands for the whole case
    return da.concatenate(blocks, axis=1), first, out_names, labels


def _infer_task(values: pd.Series) -> str:
    uniq = values.dropna().unique()
    if len(uniq) < 2:
        raise ModelError(f"target {values.name!r} has {len(uniq)} distinct value(s); nothing to learn")
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if len(uniq) == 2:
        return "binary"
    if not numeric:
        return "multiclass"
    integral = np.all(np.asarray(uniq, dtype=float) == np.round(np.asarray(uniq, dtype=float)))
    return "multiclass" if integral and len(uniq) <= 10 else "regression"


def _make_target(frame: pd.DataFrame, spec: TrainSpec, task: str) -> learn.Target:
    if task == "clustering":
        raw = frame[spec.target].to_numpy() if spec.target else None
        return learn.Target(task, None, raw=raw)
    values = frame[spec.target]
    if pd.api.types.is_float_dtype(values) and (values == values.round()).all():
        values = values.astype("int64")  # 0.0/1.0 from a column that had gaps: classes 0 and 1
    if task in ("binary", "multiclass"):
        classes = np.unique(values.to_numpy())
        y = np.searchsorted(classes, values.to_numpy())
        if task == "binary" and len(classes) != 2:
            raise ModelError(f"task 'binary': target {spec.target!r} has {len(classes)} classes {classes[:5]}")
        return learn.Target(task, y, classes=classes, strata=y, raw=values.to_numpy())
    y = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    if np.isnan(y).any():
        raise ModelError(f"task {task!r}: target {spec.target!r} is not numeric")
    if task == "regression":
        return learn.Target(task, y, raw=y)
    event = pd.to_numeric(frame[spec.event], errors="coerce").to_numpy(dtype=float)
    if not np.isin(event, (0, 1)).all():
        raise ModelError(f"survival: event column {spec.event!r} must hold 0 (censored) or 1 (event)")
    if (y <= 0).any():
        raise ModelError(f"survival: time column {spec.target!r} must be > 0")
    event = event.astype(int)
    return learn.Target(task, np.where(event == 1, y, -y), time=y, event=event, strata=event, raw=y)


def _groups(frame: pd.DataFrame, group: str) -> np.ndarray:
    if group == "none":
        return np.arange(len(frame))
    if group == "auto":
        if "patient_id" in frame and frame["patient_id"].notna().any():
            return frame["patient_id"].astype("string").fillna(frame["case_id"]).astype(str).to_numpy()
        return frame["case_id"].astype(str).to_numpy()
    if group not in frame:
        raise ModelError(f"cv.group: column {group!r} is not in the store or clinical table")
    return frame[group].astype("string").fillna(frame["case_id"]).astype(str).to_numpy()


def _shuffle_by_group(frame: pd.DataFrame, columns: list[str], groups: np.ndarray, seed: int) -> pd.DataFrame:
    """Permute the target columns across groups: a patient keeps one (someone else's) value."""
    uniq, first = np.unique(groups, return_index=True)
    perm = np.random.default_rng(seed).permutation(len(uniq))
    code = np.searchsorted(uniq, groups)
    frame = frame.copy()
    for col in columns:
        values = frame[col].to_numpy()[first][perm]
        frame[col] = values[code]
    return frame


def load_training_data(store_url: str, spec: TrainSpec, *, clinical: str | None = None) -> TrainingData:
    """Join the store's matrix to the target; rows with a missing target are left out (logged).

    Nothing of the matrix is read: ``X`` is a lazy dask array over ``matrix.zarr``.
    """
    from .store import open_store

    store = open_store(store_url)
    X, rows, names = store.matrix()
    rows = rows.assign(case_id=rows["case_id"].astype(str))
    needed = [c for c in (spec.target, spec.event, spec.preprocess.combat, "patient_id",
                          None if spec.cv.group in ("auto", "none") else spec.cv.group) if c]
    table = _read_store_columns(store, needed)
    frame = rows.merge(table, on=["case_id", "label"], how="left", validate="one_to_one")
    clinical = clinical or spec.clinical
    if clinical:
        clin = _read_clinical(clinical)
        overlap = [c for c in clin.columns if c != "case_id" and c in frame.columns]
        if overlap:
            logger.info("clinical table %s overrides store column(s) %s", clinical, overlap)
        frame = frame.drop(columns=overlap).merge(clin, on="case_id", how="left")
    pivot_labels = None
    if spec.labels == "pivot":
        X, frame, names, pivot_labels = _pivot(X, frame, names)
    for col in needed:
        if col != "patient_id" and col not in frame.columns:
            where = "the store's carried columns" + (" or the clinical table" if clinical else "")
            avail = [c for c in frame.columns if c not in ("case_id", "label")]
            raise ModelError(f"column {col!r} is not in {where}; available: {', '.join(avail) or 'none'}")

    required = [c for c in (spec.target, spec.event, spec.preprocess.combat) if c]
    missing = frame[required].isna().any(axis=1).to_numpy() if required else np.zeros(len(frame), bool)
    left_out = frame.loc[missing, ["case_id", "label"]].assign(reason="missing " + "/".join(required))
    if missing.any():
        logger.warning("left out %d of %d row(s) with a missing %s", int(missing.sum()), len(frame),
                       " or ".join(repr(c) for c in required))
    keep = np.flatnonzero(~missing)
    frame = frame.iloc[keep].reset_index(drop=True)
    X = X[keep] if missing.any() else X
    if len(frame) < 3:
        raise ModelError(f"only {len(frame)} row(s) with a target in store {store_url!r}; need at least 3")
    groups = _groups(frame, spec.cv.group)
    task = spec.resolved_task() or _infer_task(frame[spec.target])
    if spec.shuffle_target and spec.target:
        # by patient whatever cv.group says: a patient's scans keep sharing one (permuted) value
        frame = _shuffle_by_group(frame, [c for c in (spec.target, spec.event) if c], _groups(frame, "auto"),
                                  spec.cv.seed)
    target = _make_target(frame, spec, task)
    learn.check_model(spec.model, task, spec.params.get(spec.model, {}))
    batch = frame[spec.preprocess.combat].astype(str).to_numpy() if spec.preprocess.combat else None
    hashes = _matrix_hashes(store)
    return TrainingData(X, frame, names, groups, target, batch, left_out, pivot_labels, hashes)


def _matrix_hashes(store) -> list[str]:
    import zarr

    with contextlib.suppress(Exception):
        group = zarr.open_group(store=store._zarr_store(store._path("matrix.zarr")), mode="r")
        return list(group.attrs.get("params_hashes", []))
    return []


# --- training --------------------------------------------------------------------------------
@dataclass
class TrainResult:
    version: Path
    metrics: dict[str, Any]
    report: Path | None
    seconds: float

    @property
    def cv_auc(self) -> float | None:
        return (self.metrics.get("cv") or {}).get("roc_auc")

    def text(self) -> str:
        m = self.metrics
        main = m["main_metric"]
        lines = [f"model version: {self.version}"]
        for part in ("cv", "test"):
            block = m.get(part)
            if block:
                ci = block.get(f"{main}_ci") or [None, None]
                ci_txt = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if None not in ci and not any(
                    isinstance(c, float) and math.isnan(c) for c in ci) else ""
                value = block.get(main)
                shown = f"{value:.3f}" if isinstance(value, float) and math.isfinite(value) else str(value)
                lines.append(f"{part}: {main} {shown}{ci_txt} on {block.get('n')} row(s)")
        if self.report:
            lines.append(f"report: {self.report}")
        lines.append(f"{self.seconds:.1f} s")
        return "\n".join(lines)


def _versions() -> dict[str, str]:
    import platform

    from . import __version__

    out = {"radcluster": __version__, "python": platform.python_version()}
    for mod in ("numpy", "pandas", "dask", "distributed", "dask_ml", "xgboost", "sklearn", "skops", "zarr"):
        with contextlib.suppress(Exception):
            out[mod] = __import__(mod).__version__
    return out


def _score_columns(task: str, scores: np.ndarray, classes: np.ndarray | None) -> dict[str, np.ndarray]:
    if task == "binary":
        return {"probability": scores[:, 1]}
    if task == "multiclass":
        return {f"p_{c}": scores[:, i] for i, c in enumerate(classes)}
    if task == "survival":
        return {"risk": scores}
    if task == "clustering":
        return {"cluster": scores.astype(int)}
    return {"predicted": scores}


def train_store(store_url: str, spec: TrainSpec | dict[str, Any], client, registry: str | os.PathLike, *,
                clinical: str | None = None, on_fold=None) -> TrainResult:
    """Train on the store at ``store_url`` and write a new version into ``registry``.

    Parameters
    ----------
    store_url : str
    spec : TrainSpec or dict
        The ``train`` section.
    client : distributed.Client
        Preprocessing and xgboost run on its cluster.
    registry : path
        Folder of model versions (created if missing).

    Returns
    -------
    TrainResult
        The version folder, its metrics and the report path.
    """
    from .registry import new_version

    spec = parse_train_spec(spec)
    started = time.perf_counter()
    data = load_training_data(store_url, spec, clinical=clinical)
    X, target, groups, batch = data.X, data.target, data.groups, data.batch
    task = target.task
    if spec.persist:
        X = client.persist(X)
    p = spec.preprocess
    seed = spec.cv.seed

    def make_pre() -> learn.Preprocessor:
        return learn.Preprocessor(impute=p.impute, max_missing_fraction=p.max_missing_fraction,
                                  max_mode_fraction=p.max_mode_fraction, min_relative_std=p.min_relative_std,
                                  max_correlation=p.max_correlation, scale=p.scale, pca=p.pca,
                                  pca_max_components=p.pca_max_components, pca_solver=p.pca_solver,
                                  random_state=seed)

    def make_mdl():
        return learn.make_model(spec.model, task, spec.params.get(spec.model, {}),
                                early_stopping_rounds=spec.cv.early_stopping_rounds,
                                max_gather_mb=spec.max_gather_mb, random_state=seed)

    n = X.shape[0]
    dev = np.arange(n)
    test = np.zeros(0, dtype=int)
    if spec.cv.test_fraction > 0 and task != "clustering":
        k = max(2, round(1 / spec.cv.test_fraction))
        dev, test = learn.make_splits(k, target.strata, groups, seed=seed + 1000, what="held-out test split")[0]
        logger.info("held out %d row(s) for test, %d for development", len(test), len(dev))
    mopts = {"level": spec.metrics.level, "bins": spec.metrics.calibration_bins, "seed": seed}
    metrics: dict[str, Any] = {"task": task, "main_metric": learn.main_metric(task), "cv": None, "test": None,
                               "folds": []}
    split_col = np.full(n, "", dtype=object)
    fold_col = np.full(n, -1)
    scores_all: np.ndarray | None = None
    d_target, d_groups = target.subset(dev), groups[dev]
    d_batch = None if batch is None else batch[dev]
    Xdev = X[dev] if len(test) else X
    if spec.cv.folds and task != "clustering":
        splits = learn.make_splits(spec.cv.folds, d_target.strata, d_groups, seed=seed)
        cv = learn.cross_validate(Xdev, d_target, d_groups, splits, make_pre=make_pre, make_mdl=make_mdl,
                                  batch=d_batch, validation_fraction=spec.cv.validation_fraction, seed=seed,
                                  on_fold=on_fold, metric_options=mopts)
        metrics["cv"] = learn.evaluate(d_target, cv.scores, d_groups, n_boot=spec.metrics.bootstrap, **mopts)
        metrics["folds"] = cv.fold_metrics
        main = metrics["main_metric"]
        values = [f[main] for f in cv.fold_metrics if f.get(main) is not None and np.isfinite(f[main])]
        metrics["cv"][f"{main}_fold_mean"] = float(np.mean(values)) if values else None
        metrics["cv"][f"{main}_fold_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
        scores_all = np.full((n, *cv.scores.shape[1:]), np.nan)
        scores_all[dev] = cv.scores
        split_col[dev] = "cv"
        fold_col[dev] = cv.fold
    final = learn.fit_final(Xdev, d_target, d_groups, make_pre=make_pre, make_mdl=make_mdl, batch=d_batch,
                            validation_fraction=spec.cv.validation_fraction, seed=seed)
    pca_scores = None
    if final.pre.pca_components_ is not None:
        pca_scores = final.scores_train[:, : min(2, final.pre.n_components_)].compute()
    if task == "clustering":
        assigned = final.model.predict_scores(final.scores_train).compute()
        metrics["train"] = learn.evaluate(target, assigned, groups, n_boot=0,
                                          clustering_inputs=final.scores_train.compute(), **mopts)
        scores_all = assigned
        split_col[:] = "train"
    if len(test):
        out = final.model.predict_scores(final.pre.transform(X[test], batch=None if batch is None
                                                             else batch[test])).compute()
        metrics["test"] = learn.evaluate(target.subset(test), out, groups[test], n_boot=spec.metrics.bootstrap,
                                         **mopts)
        if scores_all is None:
            scores_all = np.full((n, *out.shape[1:]), np.nan)
        scores_all[test] = out
        split_col[test] = "test"
    metrics["left_out"] = int(len(data.left_out))
    metrics["n_development"] = int(len(dev))
    metrics["n_test"] = int(len(test))
    metrics["seconds"] = time.perf_counter() - started

    with new_version(registry, spec.model) as v:
        _write_version(v, spec, data, final, metrics, scores_all, split_col, fold_col, pca_scores, store_url,
                       dev, test)
        report_path = None
        if spec.report:
            from .report import write_report

            report_path = write_report(v.path, v.path / "report.html", meta=v.meta)
    result = TrainResult(v.path, metrics, v.path / "report.html" if report_path else None,
                         time.perf_counter() - started)
    logger.info("trained %s in %.1f s", v.path, result.seconds)
    return result


def _write_version(v, spec: TrainSpec, data: TrainingData, final, metrics, scores_all, split_col, fold_col,
                   pca_scores, store_url, dev, test) -> None:
    target = data.target
    arrays, pre_meta = final.pre.to_arrays()
    np.savez(v.path / "preprocess.npz", **arrays)
    v.write_json("preprocess.json", pre_meta)
    learn.save_model(final.model, v.path, name=spec.model, task=target.task)
    model_inputs = final.pre.feature_names_out(data.feature_names)
    v.write_json("features.json", {"input": data.feature_names, "model_inputs": model_inputs,
                                   "pivot_labels": data.pivot_labels,
                                   "combat": spec.preprocess.combat})
    v.write_json("config.json", spec.model_dump(mode="json"))
    v.write_json("metrics.json", metrics)
    imp = final.model.importances_
    feat_imp = final.pre.input_importance(imp)
    order = np.argsort(-feat_imp)[:50]
    v.write_json("importance.json", {
        "model_inputs": sorted(zip(model_inputs, imp.tolist(), strict=True), key=lambda t: -t[1]),
        "features": [[data.feature_names[i], float(feat_imp[i])] for i in order if feat_imp[i] > 0],
        "via_pca": final.pre.pca_components_ is not None})
    rows = data.rows
    frame = pd.DataFrame({"case_id": rows["case_id"].to_numpy(), "label": rows["label"].to_numpy(),
                          "split": split_col, "fold": fold_col})
    if target.raw is not None:
        frame["target"] = target.raw
    if target.task == "survival":
        frame["event"] = target.event
    if scores_all is not None:
        for name, col in _score_columns(target.task, scores_all, target.classes).items():
            frame[name] = col
    frame.to_parquet(v.path / "predictions.parquet", index=False)
    if pca_scores is not None:
        pcs = pd.DataFrame(pca_scores, columns=[f"PC{i + 1}" for i in range(pca_scores.shape[1])])
        pcs.insert(0, "case_id", rows["case_id"].to_numpy()[dev])
        if target.raw is not None:
            pcs["target"] = target.raw[dev]
        pcs.to_parquet(v.path / "pca_scores.parquet", index=False)
    v.write_json("cases.json", {
        "development": rows["case_id"].to_numpy()[dev].tolist(),
        "test": rows["case_id"].to_numpy()[test].tolist(),
        "left_out": data.left_out.to_dict("records")})
    main = metrics["main_metric"]
    summary = {part: {main: (metrics.get(part) or {}).get(main), f"{main}_ci": (metrics.get(part) or {}).get(
        f"{main}_ci"), "n": (metrics.get(part) or {}).get("n")} for part in ("cv", "test", "train")
        if metrics.get(part)}
    v.meta.update({
        "model": spec.model, "task": target.task, "target": spec.target, "event": spec.event,
        "classes": None if target.classes is None else [str(c) for c in target.classes],
        "store": str(store_url), "store_params_hashes": data.params_hashes,
        "clinical": spec.clinical, "n_rows": int(len(rows)), "n_cases": int(rows["case_id"].nunique()),
        "n_input_features": len(data.feature_names), "n_model_inputs": len(model_inputs),
        "config_hash": spec.digest(), "main_metric": main, "metrics": summary,
        "preprocessing": {"combat": spec.preprocess.combat, "dropped": final.pre.dropped_,
                          "pca_components": final.pre.n_components_, "scaled": spec.preprocess.scale},
        "versions": _versions(),
    })


# --- the job ---------------------------------------------------------------------------------
def train_job(job, *, client=None, on_dashboard=None, on_fold=None) -> TrainResult:
    """Run a ``kind: train`` job spec: validate the config and data first, then start (or use) a cluster."""
    from .cluster import connect, dashboard_link

    if job.store is None:
        raise SpecError("a train job needs 'store'")
    spec = parse_train_spec(job.train)
    if spec.clinical:
        spec = spec.model_copy(update={"clinical": job.resolve(spec.clinical)})
    store_url = job.resolve(job.store)
    registry = job.resolve(job.registry) or "models"
    load_training_data(store_url, spec)  # every data problem surfaces before a cluster starts
    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(connect(job.cluster))
        if on_dashboard is not None:
            on_dashboard(dashboard_link(client))
        return train_store(store_url, spec, client, registry, on_fold=on_fold)


# --- prediction ------------------------------------------------------------------------------
def predict_store(version_path: str | os.PathLike, store_url: str, *, out: str | os.PathLike | None = None,
                  clinical: str | None = None, trust: tuple[str, ...] = ()) -> pd.DataFrame:
    """Apply a registry version to every row of a store; optionally write the Parquet ``out``.

    Runs on the current Dask scheduler (a distributed client if one is active). The store
    must hold every feature the model was trained on (any order, extra ones ignored).

    Raises
    ------
    ModelError
        Naming the missing features, or a missing batch column for a ComBat model.
    """
    from .registry import open_version
    from .store import open_store

    version = open_version(version_path, trust=trust)
    store = open_store(store_url)
    X, rows, names = store.matrix()
    rows = rows.assign(case_id=rows["case_id"].astype(str))
    feats = version.features
    combat = feats.get("combat")
    if combat or feats.get("pivot_labels"):
        extra = _read_store_columns(store, [combat] if combat else [])
        rows = rows.merge(extra, on=["case_id", "label"], how="left")
        if clinical:
            clin = _read_clinical(clinical)
            rows = rows.drop(columns=[c for c in clin.columns if c != "case_id" and c in rows]).merge(
                clin, on="case_id", how="left")
    if feats.get("pivot_labels"):
        X, rows, names, _ = _pivot(X, rows, names, feats["pivot_labels"])
    wanted = feats["input"]
    position = {n: i for i, n in enumerate(names)}
    missing = [f for f in wanted if f not in position]
    if missing:
        shown = ", ".join(missing[:10]) + (f" ... ({len(missing)} in all)" if len(missing) > 10 else "")
        raise ModelError(f"store {store_url!r} lacks {len(missing)} feature(s) model {version.name!r} was "
                         f"trained on: {shown}; extract with the same params "
                         f"(training params hash {version.meta.get('store_params_hashes')})")
    idx = np.array([position[f] for f in wanted])
    if not np.array_equal(idx, np.arange(len(names))):
        X = X[:, idx]
    hashes = set(_matrix_hashes(store))
    trained = set(version.meta.get("store_params_hashes") or [])
    if hashes and trained and not hashes <= trained:
        logger.warning("store %s was extracted with params %s, the model with %s: features may differ",
                       store_url, sorted(hashes), sorted(trained))
    batch = None
    if combat:
        if combat not in rows or rows[combat].isna().any():
            raise ModelError(f"model {version.name!r} harmonises by {combat!r} (ComBat): every row of "
                             f"store {store_url!r} needs it (carried column or --clinical table)")
        batch = rows[combat].astype(str).to_numpy()
    scores = version.model.predict_scores(version.preprocessor.transform(X, batch=batch)).compute()
    frame = rows[["case_id", "label"]].reset_index(drop=True).copy()
    classes = np.asarray(version.meta.get("classes") or [])
    cols = _score_columns(version.task, scores, classes if classes.size else None)
    for name, col in cols.items():
        frame[name] = col
    if version.task in ("binary", "multiclass"):
        frame["predicted"] = classes[np.asarray(scores).argmax(axis=1)]
    frame["model_version"] = version.name
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(out, index=False)
    return frame


# --- demo ------------------------------------------------------------------------------------
DEMO_SPEC = {
    "target": "outcome",
    "model": "xgboost",
    "params": {"xgboost": {"n_estimators": 200, "max_depth": 2, "learning_rate": 0.1}},
    "preprocess": {"pca": 0.95, "pca_max_components": 10},
    "cv": {"folds": 5, "seed": 0},
    "metrics": {"bootstrap": 500},
}


def demo_train(store_url: str, registry_url: str | os.PathLike, client) -> tuple[Path, float | None, Path | None]:
    """Train xgboost on the demo store's ``outcome`` (cases without one are left out).

    Returns ``(version_path, cv_auc, report_path)``.
    """
    result = train_store(store_url, DEMO_SPEC, client, registry_url)
    return result.version, result.cv_auc, result.report
