"""Scheduled retraining: extract what is new, train a challenger, promote it only if it is not worse.

The champion and the challenger are compared on the same data: a hold-out set of patients
drawn once per registry (``holdout.json``, versioned by the hash of its case ids) that no model
of the registry is trained on. Each retrain trains the challenger on every other case with a
target (so a grown cohort is used), scores both models on the hold-out with the job's metric,
and promotes the challenger when ``challenger >= champion - margin``. The champion, the
hold-out, the lock and the decisions are the registry's (:mod:`radcluster.registry.champion`).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import _io
from ..errors import RegistryError, SpecError
from ..registry.champion import holdout_cases, promote, read_champion, record_decision, registry_lock

logger = logging.getLogger(__name__)

__all__ = ["retrain_job", "RetrainDecision"]

# Tasks whose main metric (radcluster.learn.models.main_metric) a retrain scores on the hold-out.
_COMPARABLE = ("binary", "regression", "survival")


@dataclass
class RetrainDecision:
    promoted: bool
    metric: str
    challenger: str
    challenger_score: float
    champion: str | None
    champion_score: float | None
    margin: float
    holdout: str
    reason: str

    def text(self) -> str:
        champ = "none" if self.champion is None else f"{self.champion} {self.metric} {self.champion_score:.3f}"
        return (
            f"challenger {self.challenger} {self.metric} {self.challenger_score:.3f} on hold-out {self.holdout}; "
            f"champion {champ}; {'PROMOTED' if self.promoted else 'kept the champion'}: {self.reason}"
        )


def _score(version: str, store_url: str, frame: pd.DataFrame, task: str, target: str, event: str | None) -> float:
    """The task's main metric of ``version`` on the hold-out rows ``frame``, computed as training
    computes it (:func:`radcluster.learn.cv.evaluate`)."""
    from ..learn.cv import Target, evaluate
    from ..learn.models import main_metric
    from .predict import predict_store

    pred = predict_store(version, store_url)
    merged = frame.merge(pred.assign(case_id=pred["case_id"].astype(str)), on=["case_id", "label"], how="inner")
    if merged.empty:
        raise RegistryError(f"model {version} predicted none of the hold-out rows")
    y = merged[target].to_numpy()
    if task == "binary":
        positive = np.asarray(sorted(pd.unique(frame[target])))[-1]
        p = merged["probability"].to_numpy()
        truth, scores = (
            Target("binary", (y == positive).astype(int), classes=np.array([0, 1])),
            np.column_stack([1 - p, p]),
        )
    elif task == "survival":
        time_, died = y.astype(float), merged[event].to_numpy().astype(int)
        truth, scores = Target("survival", None, time=time_, event=died), merged["risk"].to_numpy()
    else:
        truth, scores = Target("regression", y.astype(float)), merged["predicted"].to_numpy()
    return float(evaluate(truth, scores, n_boot=0)[main_metric(task)])


def retrain_job(job, *, client=None, on_dashboard=None) -> RetrainDecision:
    """Run a ``kind: retrain`` job: extract what is new, train a challenger, decide, record.

    Raises
    ------
    SpecError
        Before anything starts: no store, registry or train section, or a task without a
        higher-is-better metric for comparison (multiclass, clustering).
    RegistryError
        When another retrain holds the registry's lock.
    """
    from ..cluster import connect, dashboard_link
    from ..learn.dataset import infer_task, merge_clinical, read_store_columns
    from ..learn.models import main_metric
    from ..spec.training import parse_train_spec
    from ..store import open_store
    from .extract import extract_job
    from .train import train_store

    spec = parse_train_spec(job.train)  # with a target: the spec requires it of a retrain job
    store_url, registry = job.resolve(job.store), job.resolve(job.registry)
    clinical = job.resolve(spec.clinical) if spec.clinical else None
    targets = [c for c in (spec.target, spec.event) if c]

    def targets_frame() -> pd.DataFrame:
        frame = read_store_columns(open_store(store_url, must_exist=False), [*targets, "patient_id"])
        frame = merge_clinical(frame, clinical)
        return frame.dropna(subset=[t for t in targets if t in frame])

    def check_task(frame: pd.DataFrame) -> str:
        task = spec.resolved_task() or (infer_task(frame[spec.target]) if spec.target in frame else "binary")
        if task not in _COMPARABLE:
            raise SpecError(
                f"key 'train.target' ({spec.target!r})",
                f"makes this a {task!r} task",
                f"retrain compares models on {', '.join(_COMPARABLE)} tasks",
            )
        return task

    check_task(targets_frame())  # before a lock or a cluster is taken
    settings = job.retrain
    with registry_lock(registry), contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(connect(job.cluster))
        if on_dashboard is not None:
            on_dashboard(dashboard_link(client))
        if job.manifest is not None:
            summary = extract_job(job, client=client)
            logger.info("retrain extraction: %s", summary.text())

        frame = targets_frame()
        task = check_task(frame)
        metric = main_metric(task)
        group = "patient_id" if "patient_id" in frame and frame["patient_id"].notna().all() else "case_id"
        holdout, holdout_version = holdout_cases(
            registry, frame, spec.target, group, task, settings.holdout_fraction, settings.seed
        )
        held = frame[frame["case_id"].isin(holdout)]
        if held.empty:
            raise RegistryError(
                f"none of the hold-out cases of {_io.join(registry, 'holdout.json')} are in store {store_url!r}"
            )

        # The challenger learns from every case with a target except the hold-out: their target
        # is blanked in a clinical table (rows without a target are left out of training).
        blanked = frame[["case_id", *targets]].drop_duplicates("case_id").copy()
        blanked.loc[blanked["case_id"].isin(holdout), targets] = np.nan
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="radcluster-retrain-"))
        table = Path(tmp) / "targets_without_holdout.parquet"
        blanked.to_parquet(table, index=False)
        result = train_store(store_url, spec.model_copy(update={"clinical": str(table)}), client, registry)
        challenger = str(result.version)
        challenger_score = _score(challenger, store_url, held, task, spec.target, spec.event)

        champion = read_champion(registry)
        champion_score = None
        if champion is None:
            promoted, reason = True, "no champion yet"
        elif champion.get("holdout") != holdout_version:
            promoted, reason = True, "the champion was judged on another hold-out"
        else:
            champion_score = _score(champion["version"], store_url, held, task, spec.target, spec.event)
            promoted = challenger_score >= champion_score - settings.margin
            reason = (
                f"{challenger_score:.3f} {'>=' if promoted else '<'} {champion_score:.3f} - margin {settings.margin}"
            )
        decision = RetrainDecision(
            promoted,
            metric,
            _io.basename(challenger),
            challenger_score,
            _io.basename(champion["version"]) if champion else None,
            champion_score,
            settings.margin,
            holdout_version,
            reason,
        )
        if promoted:
            promote(registry, challenger, metric=metric, score=challenger_score, holdout=holdout_version)
        record_decision(registry, {**decision.__dict__, "n_holdout_rows": len(held)})
        return decision
