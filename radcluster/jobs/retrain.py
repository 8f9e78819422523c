"""Scheduled retraining: extract what is new, train a challenger, promote it only if it is not worse.

The champion and the challenger are compared on the same data: a hold-out set of patients
drawn once per registry (``holdout.json``, versioned by the hash of its case ids) that no model
of the registry is trained on. Each retrain trains the challenger on every other case with a
target (so a grown cohort is used), scores both models on the hold-out with the job's metric,
and promotes the challenger when ``challenger >= champion - margin``.

Promotion replaces ``champion.json`` atomically (a reader sees the old champion or the new
one, never half of either: a rename in a local folder, a single upload on an object store);
a lock file held for the whole retrain makes two retrains on one registry exclusive, so they
cannot both promote. Every decision is written to ``decisions/<time>.json``.

The registry may be a local folder or an fsspec URL (``s3://...``). The lock is created with
an exclusive create: ``O_EXCL`` locally, a conditional PUT (``If-None-Match: *``) on S3, which
the server refuses when the lock exists (AWS S3 and moto honour it; an S3-compatible server
that ignores the header gives no exclusion). On other object stores the create is check
then write, best effort, and a warning says so. A lock left by a dead process is taken over
only when that process ran on this host; otherwise the error names the holder, and the lock
file is to be deleted by hand once that retrain is known to be gone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import _io
from ..errors import RegistryError, SpecError
from ..registry.versions import storage_failures

logger = logging.getLogger(__name__)

__all__ = ["retrain_job", "registry_lock", "read_champion", "RetrainDecision"]

# Metrics where higher is better, by task; a retrain compares on one of these.
_METRICS = {"binary": ("roc_auc",), "survival": ("c_index",), "regression": ("r2",)}


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


def _write_json(path: str, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    with storage_failures(path, "write"):
        _io.write_atomic(path, json.dumps(data, indent=2, default=str).encode())


def _read_json(path: str) -> dict[str, Any] | None:
    """The JSON file at ``path``, or None when there is none."""
    with storage_failures(path, "read"):
        try:
            return json.loads(_io.read_bytes(path))
        except FileNotFoundError:
            return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (dead, not yet reaped) holds no lock either
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return True


def _create(lock: str, data: bytes) -> bool:
    """Create the lock file exclusively; False when it exists."""
    with storage_failures(lock, "create the retrain lock"):
        try:
            _io.create_exclusive(lock, data)
        except FileExistsError:
            return False
    return True


@contextlib.contextmanager
def registry_lock(registry: str | os.PathLike) -> Iterator[Path | str]:
    """Hold ``<registry>/.retrain.lock`` (created exclusively) for the duration of the block;
    yields the lock's path (its URL in a remote registry).

    A lock left by a process that died on this host is taken over; a live holder, or one on
    another host, makes this raise :class:`RegistryError` naming it. See the module docstring
    for how exclusive the create is on each kind of storage.
    """
    url = os.fspath(registry)
    local = _io.local_path(url)
    if local is not None:
        Path(local).mkdir(parents=True, exist_ok=True)
    lock = _io.join(url, ".retrain.lock")
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": dt.datetime.now(dt.UTC).isoformat()}
    for _ in range(2):
        if _create(lock, json.dumps(me).encode()):
            break
        try:
            holder = json.loads(_io.read_bytes(lock) or b"{}")
        except (OSError, ValueError):  # gone meanwhile, or still being written
            holder = {}
        if holder.get("host") == me["host"] and holder.get("pid") and not _pid_alive(int(holder["pid"])):
            logger.warning("taking over the retrain lock of dead process %s", holder["pid"])
            _io.remove(lock)
            continue
        raise RegistryError(
            f"registry {url!r} is locked by another retrain (pid {holder.get('pid')} on "
            f"{holder.get('host')} since {holder.get('since')}); {lock} is removed when it ends "
            "(delete it by hand only if that retrain is gone)"
        )
    else:  # pragma: no cover - the second attempt either succeeds or raises above
        raise RegistryError(f"cannot lock registry {url!r}")
    try:
        yield Path(local, ".retrain.lock") if local is not None else lock
    finally:
        with storage_failures(lock, "remove the retrain lock"):
            _io.remove(lock)


def read_champion(registry: str | os.PathLike) -> dict[str, Any] | None:
    """The registry's ``champion.json`` (version, metric, score, hold-out), or None."""
    return _read_json(_io.join(os.fspath(registry), "champion.json"))


def _holdout(
    registry: str, frame: pd.DataFrame, target: str, group: str, task: str, fraction: float, seed: int
) -> tuple[set[str], str]:
    """The registry's hold-out case ids (drawn on first use, then fixed) and their version."""
    path = _io.join(registry, "holdout.json")
    data = _read_json(path)
    if data is not None:
        return set(data["case_ids"]), data["version"]
    per_group = frame.groupby(group).agg(target=(target, "first"), cases=("case_id", list))
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    strata = per_group.groupby("target") if task == "binary" else [(None, per_group)]
    for _, part in strata:
        order = rng.permutation(len(part))
        take = max(1, round(fraction * len(part)))
        for i in order[:take]:
            chosen.extend(part.iloc[i]["cases"])
    ids = sorted(set(map(str, chosen)))
    version = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:12]
    _write_json(
        path,
        {
            "version": version,
            "case_ids": ids,
            "fraction": fraction,
            "seed": seed,
            "created_at": dt.datetime.now(dt.UTC).isoformat(),
        },
    )
    return set(ids), version


def _score(version: str, store_url: str, frame: pd.DataFrame, task: str, target: str, event: str | None) -> float:
    from ..learn.metrics import concordance_index, roc_auc
    from .train import predict_store

    pred = predict_store(version, store_url)
    merged = frame.merge(pred.assign(case_id=pred["case_id"].astype(str)), on=["case_id", "label"], how="inner")
    if merged.empty:
        raise RegistryError(f"model {version} predicted none of the hold-out rows")
    y = merged[target].to_numpy()
    if task == "binary":
        positive = np.asarray(sorted(pd.unique(frame[target])))[-1]
        return float(roc_auc((y == positive).astype(int), merged["probability"].to_numpy()))
    if task == "survival":
        return float(
            concordance_index(y.astype(float), merged[event].to_numpy().astype(int), merged["risk"].to_numpy())
        )
    from sklearn.metrics import r2_score

    return float(r2_score(y.astype(float), merged["predicted"].to_numpy()))


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
    from ..learn.dataset import infer_task, read_clinical, read_store_columns
    from ..spec.training import parse_train_spec
    from ..store import open_store
    from .extract import extract_job
    from .train import train_store

    if job.store is None or job.registry is None or job.train is None:
        raise SpecError("a retrain job needs 'store', 'registry' and a 'train' section")
    spec = parse_train_spec(job.train)
    if spec.target is None:
        raise SpecError("a retrain job's train section needs a 'target' to compare models on")
    store_url, registry = job.resolve(job.store), job.resolve(job.registry)
    clinical = job.resolve(spec.clinical) if spec.clinical else None
    targets = [c for c in (spec.target, spec.event) if c]

    def targets_frame() -> pd.DataFrame:
        frame = read_store_columns(open_store(store_url, must_exist=False), [*targets, "patient_id"])
        if clinical:
            clin = read_clinical(clinical)
            frame = frame.drop(columns=[c for c in clin.columns if c != "case_id" and c in frame]).merge(
                clin, on="case_id", how="left"
            )
        return frame.dropna(subset=[t for t in targets if t in frame])

    def check_task(frame: pd.DataFrame) -> str:
        task = spec.resolved_task() or (infer_task(frame[spec.target]) if spec.target in frame else "binary")
        if task not in _METRICS:
            raise SpecError(
                f"retrain compares models on {', '.join(sorted(_METRICS))} tasks; "
                f"target {spec.target!r} makes this a {task!r} task"
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
        metric = _METRICS[task][0]
        group = "patient_id" if "patient_id" in frame and frame["patient_id"].notna().all() else "case_id"
        holdout, holdout_version = _holdout(
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
        now = dt.datetime.now(dt.UTC)
        if promoted:
            _write_json(
                _io.join(registry, "champion.json"),
                {
                    "version": challenger,
                    "metric": metric,
                    "score": challenger_score,
                    "holdout": holdout_version,
                    "promoted_at": now.isoformat(),
                },
            )
        _write_json(
            _io.join(registry, f"decisions/{now.strftime('%Y%m%dT%H%M%S%fZ')}.json"),
            {**decision.__dict__, "decided_at": now.isoformat(), "n_holdout_rows": len(held)},
        )
        return decision
