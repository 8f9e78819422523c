"""The training data: the store's matrix (lazy) joined to targets, groups and batches.

Only the columns a training needs are read from the store's Parquet parts (never the
features); the feature matrix stays a dask array over ``matrix.zarr``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .. import _io
from ..errors import ModelError
from ..extract.perturb import PERTURBATION, PERTURBATION_OF
from ..spec.training import TrainSpec, feature_kind
from .cv import Target
from .models import check_model

logger = logging.getLogger(__name__)

__all__ = [
    "TrainingData",
    "load_training_data",
    "read_store_columns",
    "read_clinical",
    "pivot_by_label",
    "matrix_params_hashes",
    "split_aside",
]


@dataclass
class TrainingData:
    """The matrix (dask, rows x features) and everything row-aligned with it."""

    X: Any
    rows: pd.DataFrame  # case_id, label and the needed columns, one per matrix row
    feature_names: list[str]
    groups: np.ndarray
    target: Target
    batch: np.ndarray | None
    left_out: pd.DataFrame  # case_id, label, reason
    pivot_labels: list[int] | None
    params_hashes: list[str]
    # Retest scans (a ``retest_of`` column naming the case they repeat): never trained on,
    # kept for stability (ICC). ``X`` rows (dask) and their case_id / retest_of.
    retest_X: Any = None
    retest_rows: pd.DataFrame | None = None
    # Perturbed copies of scans (extraction.perturb: a ``perturbation_of`` column), likewise.
    perturbed_X: Any = None
    perturbed_rows: pd.DataFrame | None = None


# The manifest column that marks a retest scan: the case_id of the scan it repeats.
RETEST_COLUMN = "retest_of"
# Columns of the rows kept aside for stability, never trained on: retests and perturbed copies.
ASIDE_COLUMNS = (RETEST_COLUMN, PERTURBATION_OF, PERTURBATION)


def read_store_columns(store, columns: list[str]) -> pd.DataFrame:
    """The current (case_id, label) rows of the store with only ``columns`` (not the features)."""
    frame = store.features(columns).drop(columns="extracted_at", errors="ignore")
    if frame.empty:
        return pd.DataFrame({"case_id": pd.Series(dtype=str), "label": pd.Series(dtype="int64")})
    frame["case_id"] = frame["case_id"].astype(str)
    return frame


def read_clinical(path: str) -> pd.DataFrame:
    try:
        table = _io.read_table(path, dtype={"case_id": str})
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


def merge_clinical(frame: pd.DataFrame, clinical: str | None) -> pd.DataFrame:
    """``frame`` with the clinical table's columns joined by ``case_id`` (none: unchanged);
    a clinical column replaces a store column of the same name."""
    if not clinical:
        return frame
    clin = read_clinical(clinical)
    overlap = [c for c in clin.columns if c != "case_id" and c in frame.columns]
    if overlap:
        logger.info("clinical table %s overrides store column(s) %s", clinical, overlap)
    return frame.drop(columns=overlap).merge(clin, on="case_id", how="left")


def pivot_by_label(X, rows: pd.DataFrame, names: list[str], labels: list[int] | None = None):
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


def infer_task(values: pd.Series) -> str:
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


def _make_target(frame: pd.DataFrame, spec: TrainSpec, task: str) -> Target:
    if task == "clustering":
        raw = frame[spec.target].to_numpy() if spec.target else None
        return Target(task, None, raw=raw)
    values = frame[spec.target]
    if pd.api.types.is_float_dtype(values) and (values == values.round()).all():
        values = values.astype("int64")  # 0.0/1.0 from a column that had gaps: classes 0 and 1
    if task in ("binary", "multiclass"):
        classes = np.unique(values.to_numpy())
        y = np.searchsorted(classes, values.to_numpy())
        if task == "binary" and len(classes) != 2:
            raise ModelError(f"task 'binary': target {spec.target!r} has {len(classes)} classes {classes[:5]}")
        return Target(task, y, classes=classes, strata=y, raw=values.to_numpy())
    y = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    if np.isnan(y).any():
        raise ModelError(f"task {task!r}: target {spec.target!r} is not numeric")
    if task == "regression":
        return Target(task, y, raw=y)
    event = pd.to_numeric(frame[spec.event], errors="coerce").to_numpy(dtype=float)
    if not np.isin(event, (0, 1)).all():
        raise ModelError(f"survival: event column {spec.event!r} must hold 0 (censored) or 1 (event)")
    if (y <= 0).any():
        raise ModelError(f"survival: time column {spec.target!r} must be > 0")
    event = event.astype(int)
    return Target(task, np.where(event == 1, y, -y), time=y, event=event, strata=event, raw=y)


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


def select_kinds(X, names: list[str], kinds, store_url: str):
    """The matrix columns of the feature kinds ``kinds`` (None: all), and their names.

    Raises
    ------
    ModelError
        When the store has no feature of a kind asked for.
    """
    if kinds is None:
        return X, names
    found = {k: [i for i, n in enumerate(names) if feature_kind(n) == k] for k in kinds}
    missing = [k for k, idx in found.items() if not idx]
    if missing:
        hint = "; deep features come from an onnx engine (extraction.engines)" if "deep" in missing else ""
        raise ModelError(f"features {list(kinds)}: store {store_url!r} has no {' or '.join(missing)} features{hint}")
    keep = sorted(i for idx in found.values() for i in idx)
    if len(keep) == len(names):
        return X, names
    return X[:, keep], [names[i] for i in keep]


def load_training_data(store_url: str, spec: TrainSpec, *, clinical: str | None = None) -> TrainingData:
    """Join the store's matrix to the target; rows with a missing target are left out (logged).

    Nothing of the matrix is read: ``X`` is a lazy dask array over ``matrix.zarr``.
    """
    from ..store import open_store

    store = open_store(store_url)
    X, rows, names = store.matrix()
    X, names = select_kinds(X, names, spec.features, store_url)
    rows = rows.assign(case_id=rows["case_id"].astype(str))
    needed = [
        c
        for c in (
            spec.target,
            spec.event,
            spec.preprocess.combat,
            spec.validation.leave_out,
            "patient_id",
            *ASIDE_COLUMNS,
            None if spec.cv.group in ("auto", "none") else spec.cv.group,
        )
        if c
    ]
    table = read_store_columns(store, needed)
    frame = rows.merge(table, on=["case_id", "label"], how="left", validate="one_to_one")
    clinical = clinical or spec.clinical
    frame = merge_clinical(frame, clinical)
    pivot_labels = None
    if spec.labels == "pivot":
        X, frame, names, pivot_labels = pivot_by_label(X, frame, names)
    X, frame, retest, perturbed = split_aside(X, frame)
    for col in needed:
        if col not in ("patient_id", *ASIDE_COLUMNS) and col not in frame.columns:
            where = "the store's carried columns" + (" or the clinical table" if clinical else "")
            avail = [c for c in frame.columns if c not in ("case_id", "label")]
            raise ModelError(f"column {col!r} is not in {where}; available: {', '.join(avail) or 'none'}")

    required = [c for c in (spec.target, spec.event, spec.preprocess.combat, spec.validation.leave_out) if c]
    missing = frame[required].isna().any(axis=1).to_numpy() if required else np.zeros(len(frame), bool)
    left_out = frame.loc[missing, ["case_id", "label"]].assign(reason="missing " + "/".join(required))
    if missing.any():
        logger.warning(
            "left out %d of %d row(s) with a missing %s",
            int(missing.sum()),
            len(frame),
            " or ".join(repr(c) for c in required),
        )
    keep = np.flatnonzero(~missing)
    frame = frame.iloc[keep].reset_index(drop=True)
    X = X[keep] if missing.any() else X
    if len(frame) < 3:
        raise ModelError(f"only {len(frame)} row(s) with a target in store {store_url!r}; need at least 3")
    groups = _groups(frame, spec.cv.group)
    task = spec.resolved_task() or infer_task(frame[spec.target])
    if spec.shuffle_target and spec.target:
        # by patient whatever cv.group says: a patient's scans keep sharing one (permuted) value
        frame = _shuffle_by_group(
            frame, [c for c in (spec.target, spec.event) if c], _groups(frame, "auto"), spec.cv.seed
        )
    target = _make_target(frame, spec, task)
    searched = dict.fromkeys(spec.search.parameters()) if spec.search else {}
    check_model(spec.model, task, {**spec.params.get(spec.model, {}), **searched})
    batch = frame[spec.preprocess.combat].astype(str).to_numpy() if spec.preprocess.combat else None
    hashes = matrix_params_hashes(store)
    return TrainingData(
        X,
        frame,
        names,
        groups,
        target,
        batch,
        left_out,
        pivot_labels,
        hashes,
        *(retest or (None, None)),
        *(perturbed or (None, None)),
    )


def split_aside(X, frame: pd.DataFrame):
    """``(X, frame, retest, perturbed)``: the rows to learn from, and ``(X, rows)`` of the
    retest scans and of the perturbed copies (None when there are none), kept aside for
    stability (:func:`radcluster.learn.stability.stability_table`)."""
    aside = np.zeros(len(frame), dtype=bool)
    out = []
    for column, what in ((RETEST_COLUMN, "retest scan(s)"), (PERTURBATION_OF, "perturbed cop(ies) of scans")):
        if column not in frame or not frame[column].notna().any():
            out.append(None)
            continue
        mine = frame[column].notna().to_numpy() & ~aside
        cols = [c for c in ("case_id", "label", *ASIDE_COLUMNS) if c in frame]
        out.append((X[np.flatnonzero(mine)], frame.loc[mine, cols].reset_index(drop=True)))
        logger.info("%d %s kept aside for stability, not trained on", int(mine.sum()), what)
        aside |= mine
    if aside.any():
        X = X[np.flatnonzero(~aside)]
        frame = frame.loc[~aside].reset_index(drop=True)
    return X, frame, *out


def matrix_params_hashes(store) -> list[str]:
    return list(store.matrix_attrs().get("params_hashes", []))
