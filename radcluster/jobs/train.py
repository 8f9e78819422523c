"""Training from a feature store: the orchestration over :mod:`radcluster.learn`.

:func:`load_training_data` joins the store's Zarr matrix (a dask array, never gathered) to
the target: a column the manifest carried into the store, or a clinical table keyed by
``case_id``. :func:`train_store` cross-validates, fits the final model on the development
rows, evaluates the held-out test rows, and writes an immutable registry version with its
report (:mod:`radcluster.jobs.predict` applies it to another store). :class:`TrainSpec` is
the ``train:`` section of a job spec.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import _io
from ..learn.cv import cross_validate, evaluate, fit_final, make_splits, score_columns
from ..learn.dataset import (
    TrainingData,
    load_training_data,
)
from ..learn.explain import contributions, decision_curve, permutation_importance
from ..learn.models import main_metric, make_model, save_model
from ..learn.preprocess import Preprocessor
from ..learn.search import candidates
from ..registry import DEFAULT_REGISTRY
from ..spec.training import CVSpec, MetricsSpec, PreprocessSpec, TrainSpec, feature_kind, parse_train_spec

logger = logging.getLogger(__name__)

__all__ = [
    "TrainSpec",
    "PreprocessSpec",
    "CVSpec",
    "MetricsSpec",
    "parse_train_spec",
    "TrainingData",
    "load_training_data",
    "TrainResult",
    "train_store",
    "train_job",
]


# --- training --------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """A finished training: its version and report (folder and file in a local registry,
    URLs in a remote one), metrics and duration."""

    version: Path | str
    metrics: dict[str, Any]
    report: Path | str | None
    seconds: float

    @property
    def cv_auc(self) -> float | None:
        return (self.metrics.get("cv") or {}).get("roc_auc")

    def text(self) -> str:
        m = self.metrics
        main = m["main_metric"]
        lines = [f"model version: {self.version}"]
        for part in ("cv", "test", "train"):
            block = m.get(part)
            if block:
                lines.append(f"{part}: {_metric_line(block, main)}")
        searched = m.get("search")
        if searched:
            chosen = "; ".join(f"fold {i}: {f['params']}" for i, f in enumerate(searched["folds"]) if f)
            lines.append(f"search: {chosen}; final model: {searched['final']['params']}")
        held = m.get("leave_out")
        if held:
            for site in held["sites"]:
                lines.append(f"{held['column']} {site['site']} held out: {_metric_line(site, main)}")
        if self.report:
            lines.append(f"report: {self.report}")
        lines.append(f"{self.seconds:.1f} s")
        return "\n".join(lines)


def _stability_filter(data: TrainingData, icc_min: float) -> tuple[TrainingData, pd.DataFrame, dict[str, Any]]:
    """Drop the features whose ICC is below ``icc_min`` over the retest pairs or the perturbed
    copies (before any fold); returns the data, the ICC table and what the metrics record."""
    from ..learn.stability import stability_table

    table = stability_table(
        data.X,
        data.rows,
        data.feature_names,
        retest=None if data.retest_rows is None else (data.retest_X, data.retest_rows),
        perturbed=None if data.perturbed_rows is None else (data.perturbed_X, data.perturbed_rows),
    )
    # NaN (no variance, or fewer than 2 complete scans): not judged, kept (a constant is the constant filter's)
    low = table.loc[table["icc"] < icc_min, "feature"]
    keep = ~pd.Index(data.feature_names).isin(low)
    table["kept"] = ~table["feature"].isin(low)
    # n counts the scans complete for each feature (a NaN removes a scan from that feature
    # only): a source records the most and the fewest, and the features left without an ICC
    sources = {
        source: {
            "n": int(part["n"].max()),
            "n_min": int(part["n"].min()),
            "k": int(part["k"].iloc[0]),
            "dropped": int((part["icc"] < icc_min).sum()),
            "undefined": int(part["icc"].isna().sum()),
        }
        for source, part in table.groupby("source", sort=True)
    }
    for source, s in sources.items():
        logger.info(
            "stability (%s): %d feature(s) have ICC < %g over %d-%d scan(s), %d have none (kept)",
            source,
            s["dropped"],
            icc_min,
            s["n_min"],
            s["n"],
            s["undefined"],
        )
    cols = np.flatnonzero(keep)
    names = [data.feature_names[i] for i in cols]
    record = {
        "icc_min": icc_min,
        "n_pairs": sources.get("retest", {}).get("n", 0),
        "sources": sources,
        "dropped": [n for n, k in zip(data.feature_names, keep, strict=True) if not k],
    }
    return dataclasses.replace(data, X=data.X[:, cols], feature_names=names), table, record


def _extraction_record(store_url: str) -> dict[str, Any]:
    """How the store's features were extracted (its latest run), for the reporting checklist."""
    import yaml

    from ..store import open_store

    runs = open_store(store_url).runs()
    if not runs:
        return {}
    run = runs[-1]
    params = yaml.safe_load(run.get("params") or "") or {}
    return {
        "params_hash": run.get("params_hash"),
        "settings": params.get("setting") if isinstance(params, dict) else None,
        "ibsi": run.get("ibsi"),
        "versions": run.get("versions") or {},
    }


# Contributions are computed for at most this many development rows (a fixed random sample):
# on 160,000 rows XGBoost's TreeSHAP took longer than fitting the model, and the report draws
# 5,000 rows of them.
EXPLAIN_MAX_ROWS = 5000


def _explain(
    final, target, names: list[str], task: str, seed: int, case_ids: np.ndarray
) -> tuple[str, pd.DataFrame] | None:
    """The final model explained on the development rows: additive contributions (XGBoost's
    TreeSHAP, Cox terms; with the ``case_id`` of each row) or, for the other models,
    permutation importance."""
    if task == "clustering":
        return None
    inputs = final.pre.feature_names_out(names)
    Z, rows = final.scores_train, np.arange(len(case_ids))
    if rows.size > EXPLAIN_MAX_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(rows.size, EXPLAIN_MAX_ROWS, replace=False))
        Z = Z[rows]
    table = contributions(final.model, Z, inputs)
    if table is not None:
        table.insert(0, "case_id", case_ids[rows])
        return "contributions.parquet", table
    return "permutation_importance.parquet", permutation_importance(
        final.model, final.scores_train, target.y, task, inputs, seed=seed
    )


def _selection_frequency(kept: list[list[int]], names: list[str]) -> list[dict[str, Any]]:
    """How often each feature reached the model across the folds (most often first)."""
    counts = np.bincount(np.concatenate([np.asarray(k, dtype=int) for k in kept]), minlength=len(names))
    order = np.argsort(-counts, kind="stable")
    return [{"feature": names[i], "folds": int(counts[i]), "share": counts[i] / len(kept)} for i in order if counts[i]]


def _select_params(spec: TrainSpec, task: str) -> dict[str, Any] | None:
    """The fold-wise part of ``train.select`` as :class:`~radcluster.learn.select.Selector`
    parameters, or None when it selects nothing."""
    sel = spec.select
    if sel.method == "none" and sel.cluster is None:
        return None
    return {"task": task, "method": sel.method, "k": sel.k, "q": sel.q, "cluster": sel.cluster}


def _metric_line(block: dict[str, Any], main: str) -> str:
    ci = block.get(f"{main}_ci") or [None, None]
    ci_txt = (
        f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})"
        if None not in ci and not any(isinstance(c, float) and math.isnan(c) for c in ci)
        else ""
    )
    value = block.get(main)
    shown = f"{value:.3f}" if isinstance(value, float) and math.isfinite(value) else str(value)
    return f"{main} {shown}{ci_txt} on {block.get('n')} row(s)"


def _versions() -> dict[str, str]:
    """What made a model version, as its metadata records it."""
    from .._software import software_versions

    return software_versions(
        "python",
        "numpy",
        "pandas",
        "dask",
        "distributed",
        "dask_ml",
        "xgboost",
        "sklearn",
        "skops",
        "zarr",
        "sksurv",
        "statsmodels",
    )


def train_store(
    store_url: str,
    spec: TrainSpec | dict[str, Any],
    client,
    registry: str | os.PathLike,
    *,
    clinical: str | None = None,
    on_fold=None,
) -> TrainResult:
    """Train on the store at ``store_url`` and write a new version into ``registry``.

    Parameters
    ----------
    store_url : str
    spec : TrainSpec or dict
        The ``train`` section.
    client : distributed.Client
        Preprocessing and xgboost run on its cluster.
    registry : path or URL
        Folder of model versions (created if missing), or an fsspec URL (``s3://...``).

    Returns
    -------
    TrainResult
        The version (folder or URL), its metrics and the report's location.
    """
    # Everything computes on ``client``: with another client current (a notebook's or a test
    # session's ``with Client() as c``), dask.compute would go to that one while the persisted
    # matrix went through this one, and the two connections race at the scheduler.
    with client.as_current():
        return _train_store(store_url, spec, client, registry, clinical=clinical, on_fold=on_fold)


def _train_store(
    store_url: str,
    spec: TrainSpec | dict[str, Any],
    client,
    registry: str | os.PathLike,
    *,
    clinical: str | None,
    on_fold,
) -> TrainResult:
    from ..registry.versions import new_version

    spec = parse_train_spec(spec)
    started = time.perf_counter()
    data = load_training_data(store_url, spec, clinical=clinical)
    icc = None
    if spec.select.icc_min is not None:
        data, icc, stability = _stability_filter(data, spec.select.icc_min)
    X, target, groups, batch = data.X, data.target, data.groups, data.batch
    task = target.task
    if spec.persist:
        X = client.persist(X)
    seed = spec.cv.seed

    def make_pre() -> Preprocessor:
        # the preprocess keys are the Preprocessor's own parameters; ComBat runs before it
        options = spec.preprocess.model_dump(exclude={"combat"})
        return Preprocessor(**options, select=_select_params(spec, task), random_state=seed)

    def make_mdl():
        return make_model(
            spec.model,
            task,
            spec.params.get(spec.model, {}),
            early_stopping_rounds=spec.cv.early_stopping_rounds,
            max_gather_mb=spec.max_gather_mb,
            random_state=seed,
        )

    n = X.shape[0]
    dev = np.arange(n)
    test = np.zeros(0, dtype=int)
    if spec.cv.test_fraction > 0 and task != "clustering":
        k = max(2, round(1 / spec.cv.test_fraction))
        dev, test = make_splits(k, target.strata, groups, seed=seed + 1000, what="held-out test split")[0]
        logger.info("held out %d row(s) for test, %d for development", len(test), len(dev))
    mopts = {"level": spec.metrics.level, "bins": spec.metrics.calibration_bins, "seed": seed}
    metrics: dict[str, Any] = {
        "task": task,
        "main_metric": main_metric(task),
        "cv": None,
        "test": None,
        "folds": [],
    }
    if icc is not None:
        metrics["stability"] = stability
    split_col = np.full(n, "", dtype=object)
    fold_col = np.full(n, -1)
    scores_all: np.ndarray | None = None
    d_target, d_groups = target.subset(dev), groups[dev]
    d_batch = None if batch is None else batch[dev]
    Xdev = X[dev] if len(test) else X
    # how every fit of this training is made: each fold's, each left-out site's and the final one
    fitting: dict[str, Any] = {
        "make_pre": make_pre,
        "make_mdl": make_mdl,
        "batch": d_batch,
        "validation_fraction": spec.cv.validation_fraction,
        "seed": seed,
        "search": spec.search,
    }
    if spec.cv.folds and task != "clustering":
        splits = make_splits(spec.cv.folds, d_target.strata, d_groups, seed=seed)
        cv = cross_validate(Xdev, d_target, d_groups, splits, **fitting, on_fold=on_fold, metric_options=mopts)
        metrics["cv"] = evaluate(
            d_target,
            cv.scores,
            d_groups,
            n_boot=spec.metrics.bootstrap,
            survival=cv.survival,
            grid=cv.grid,
            **mopts,
        )
        kept = [f.pop("inputs_kept") for f in cv.fold_metrics]
        if _select_params(spec, task) is not None or spec.select.icc_min is not None:
            metrics["selection"] = _selection_frequency(kept, data.feature_names)
        metrics["folds"] = cv.fold_metrics
        main = metrics["main_metric"]
        values = [f[main] for f in cv.fold_metrics if f.get(main) is not None and np.isfinite(f[main])]
        metrics["cv"][f"{main}_fold_mean"] = float(np.mean(values)) if values else None
        metrics["cv"][f"{main}_fold_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
        scores_all = np.full((n, *cv.scores.shape[1:]), np.nan)
        scores_all[dev] = cv.scores
        split_col[dev] = "cv"
        fold_col[dev] = cv.fold
    if spec.validation.leave_out and task != "clustering":
        from ..learn.validation import leave_group_out

        column = spec.validation.leave_out
        metrics["leave_out"], _ = leave_group_out(
            Xdev,
            d_target,
            d_groups,
            data.rows[column].to_numpy()[dev],
            **fitting,
            n_boot=spec.metrics.bootstrap,
            metric_options=mopts,
        )
        metrics["leave_out"]["column"] = column
    final = fit_final(Xdev, d_target, d_groups, **fitting)
    if final.search is not None:
        # the parameters of the saved model: chosen by the same inner search on all development rows
        metrics["search"] = {
            "candidates": candidates(spec.search),
            "final": final.search,
            "folds": [f.get("search") for f in metrics["folds"]],
        }
    pca_scores = None
    if final.pre.pca_components_ is not None:
        pca_scores = final.scores_train[:, : min(2, final.pre.n_components_)].compute()
    if task == "clustering":
        assigned = final.model.predict_scores(final.scores_train).compute()
        metrics["train"] = evaluate(
            target, assigned, groups, n_boot=0, clustering_inputs=final.scores_train.compute(), **mopts
        )
        scores_all = assigned
        split_col[:] = "train"
    if len(test):
        out = final.model.predict_scores(
            final.pre.transform(X[test], batch=None if batch is None else batch[test])
        ).compute()
        metrics["test"] = evaluate(target.subset(test), out, groups[test], n_boot=spec.metrics.bootstrap, **mopts)
        if scores_all is None:
            scores_all = np.full((n, *out.shape[1:]), np.nan)
        scores_all[test] = out
        split_col[test] = "test"
    metrics["left_out"] = int(len(data.left_out))
    metrics["n_development"] = int(len(dev))
    metrics["n_test"] = int(len(test))
    explained = _explain(final, d_target, data.feature_names, task, seed, data.rows["case_id"].to_numpy()[dev])
    if task == "binary" and scores_all is not None:
        scored = np.isin(split_col, ("cv", "test"))
        metrics["decision_curve"] = decision_curve(target.y[scored], scores_all[scored, 1])
    metrics["seconds"] = time.perf_counter() - started

    with new_version(registry, spec.model) as v:
        _write_version(v, spec, data, final, metrics, scores_all, split_col, fold_col, pca_scores, store_url, dev, test)
        if icc is not None:
            icc.to_parquet(v.path / "stability.parquet", index=False)
        if explained is not None:
            name, table = explained
            table.to_parquet(v.path / name, index=False)
        report_path = None
        if spec.report:
            from ..report import write_report

            report_path = write_report(v.path, v.path / "report.html", meta=v.meta)
    report = None
    if report_path:
        report = v.location / "report.html" if isinstance(v.location, Path) else _io.join(v.location, "report.html")
    result = TrainResult(v.location, metrics, report, time.perf_counter() - started)
    logger.info("trained %s in %.1f s", v.location, result.seconds)
    return result


def _write_version(
    v,
    spec: TrainSpec,
    data: TrainingData,
    final,
    metrics,
    scores_all,
    split_col,
    fold_col,
    pca_scores,
    store_url,
    dev,
    test,
) -> None:
    target = data.target
    arrays, pre_meta = final.pre.to_arrays()
    np.savez(v.path / "preprocess.npz", **arrays)
    v.write_json("preprocess.json", pre_meta)
    save_model(final.model, v.path, name=spec.model, task=target.task)
    model_inputs = final.pre.feature_names_out(data.feature_names)
    v.write_json(
        "features.json",
        {
            "input": data.feature_names,
            "model_inputs": model_inputs,
            "pivot_labels": data.pivot_labels,
            "combat": spec.preprocess.combat,
        },
    )
    v.write_json("config.json", spec.model_dump(mode="json"))
    v.write_json("metrics.json", metrics)
    imp = final.model.importances_
    feat_imp = final.pre.input_importance(imp)
    order = np.argsort(-feat_imp)[:50]
    v.write_json(
        "importance.json",
        {
            "model_inputs": sorted(zip(model_inputs, imp.tolist(), strict=True), key=lambda t: -t[1]),
            "features": [[data.feature_names[i], float(feat_imp[i])] for i in order if feat_imp[i] > 0],
            "via_pca": final.pre.pca_components_ is not None,
        },
    )
    rows = data.rows
    frame = pd.DataFrame(
        {"case_id": rows["case_id"].to_numpy(), "label": rows["label"].to_numpy(), "split": split_col, "fold": fold_col}
    )
    if target.raw is not None:
        frame["target"] = target.raw
    if target.task == "survival":
        frame["event"] = target.event
    if scores_all is not None:
        for name, col in score_columns(target.task, scores_all, target.classes).items():
            frame[name] = col
    frame.to_parquet(v.path / "predictions.parquet", index=False)
    if pca_scores is not None:
        pcs = pd.DataFrame(pca_scores, columns=[f"PC{i + 1}" for i in range(pca_scores.shape[1])])
        pcs.insert(0, "case_id", rows["case_id"].to_numpy()[dev])
        if target.raw is not None:
            pcs["target"] = target.raw[dev]
        pcs.to_parquet(v.path / "pca_scores.parquet", index=False)
    v.write_json(
        "cases.json",
        {
            "development": rows["case_id"].to_numpy()[dev].tolist(),
            "test": rows["case_id"].to_numpy()[test].tolist(),
            "left_out": data.left_out.to_dict("records"),
        },
    )
    main = metrics["main_metric"]
    summary = {
        part: {
            main: (metrics.get(part) or {}).get(main),
            f"{main}_ci": (metrics.get(part) or {}).get(f"{main}_ci"),
            "n": (metrics.get(part) or {}).get("n"),
        }
        for part in ("cv", "test", "train")
        if metrics.get(part)
    }
    v.meta.update(
        {
            "model": spec.model,
            "task": target.task,
            "target": spec.target,
            "event": spec.event,
            "classes": None if target.classes is None else [str(c) for c in target.classes],
            "store": str(store_url),
            "store_params_hashes": data.params_hashes,
            "clinical": spec.clinical,
            "n_rows": int(len(rows)),
            "n_cases": int(rows["case_id"].nunique()),
            "n_input_features": len(data.feature_names),
            # which kinds of features the model was trained on (train's `features:`), and how many of each
            "feature_kinds": {
                "selected": list(spec.features) if spec.features else "all",
                "counts": dict(Counter(feature_kind(n) for n in data.feature_names)),
            },
            "n_model_inputs": len(model_inputs),
            "config_hash": spec.digest(),
            "main_metric": main,
            "metrics": summary,
            "preprocessing": {
                "combat": spec.preprocess.combat,
                "dropped": final.pre.dropped_,
                "pca_components": final.pre.n_components_,
                "scaled": spec.preprocess.scale,
            },
            "versions": _versions(),
            "extraction": _extraction_record(store_url),
        }
    )


# --- the job ---------------------------------------------------------------------------------
def train_job(job, *, client=None, on_dashboard=None, on_fold=None) -> TrainResult:
    """Run a ``kind: train`` job spec: validate the config and data first, then start (or use) a cluster."""
    from ..cluster import connect, dashboard_link

    spec = parse_train_spec(job.train)
    if spec.clinical:
        spec = spec.model_copy(update={"clinical": job.resolve(spec.clinical)})
    store_url = job.resolve(job.store)
    registry = job.resolve(job.registry) or DEFAULT_REGISTRY
    load_training_data(store_url, spec)  # every data problem surfaces before a cluster starts
    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(connect(job.cluster))
        if on_dashboard is not None:
            on_dashboard(dashboard_link(client))
        return train_store(store_url, spec, client, registry, on_fold=on_fold)
