"""The ``predict`` job: apply a registry version (by default the champion) to every row of a store."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ModelError, SpecError
from ..extract.perturb import PERTURBATION_OF
from ..learn.cv import score_columns
from ..learn.dataset import matrix_params_hashes, merge_clinical, pivot_by_label, read_store_columns

logger = logging.getLogger(__name__)

__all__ = ["predict_store", "predict_job", "PredictResult"]


def predict_store(
    version_path: str | os.PathLike,
    store_url: str,
    *,
    out: str | os.PathLike | None = None,
    clinical: str | None = None,
    trust: tuple[str, ...] = (),
) -> pd.DataFrame:
    """Apply a registry version (a folder or a URL) to every row of a store but the perturbed
    copies of scans (``extraction.perturb``: stability material, no patient's scan); optionally
    write the Parquet ``out``.

    Runs on the current Dask scheduler (a distributed client if one is active). The store
    must hold every feature the model was trained on (any order, extra ones ignored).

    Raises
    ------
    ModelError
        Naming the missing features, or a missing batch column for a ComBat model.
    """
    from ..registry.versions import open_version
    from ..store import open_store

    version = open_version(version_path, trust=trust)
    store = open_store(store_url)
    X, rows, names = store.matrix()
    rows = rows.assign(case_id=rows["case_id"].astype(str))
    feats = version.features
    combat = feats.get("combat")
    # One read of the carried columns: which rows are perturbed copies, and the batch column.
    extra = read_store_columns(store, [PERTURBATION_OF, combat] if combat else [PERTURBATION_OF])
    rows = rows.merge(extra, on=["case_id", "label"], how="left")
    if PERTURBATION_OF in rows and rows[PERTURBATION_OF].notna().any():
        keep = rows[PERTURBATION_OF].isna().to_numpy()
        X, rows = X[np.flatnonzero(keep)], rows.loc[keep].reset_index(drop=True)
    if combat or feats.get("pivot_labels"):
        rows = merge_clinical(rows, clinical)
    if feats.get("pivot_labels"):
        X, rows, names, _ = pivot_by_label(X, rows, names, feats["pivot_labels"])
    wanted = feats["input"]
    position = {n: i for i, n in enumerate(names)}
    missing = [f for f in wanted if f not in position]
    if missing:
        shown = ", ".join(missing[:10]) + (f" ... ({len(missing)} in all)" if len(missing) > 10 else "")
        raise ModelError(
            f"store {store_url!r} lacks {len(missing)} feature(s) model {version.name!r} was "
            f"trained on: {shown}; extract with the same params "
            f"(training params hash {version.meta.get('store_params_hashes')})"
        )
    idx = np.array([position[f] for f in wanted])
    if not np.array_equal(idx, np.arange(len(names))):
        X = X[:, idx]
    hashes = set(matrix_params_hashes(store))
    trained = set(version.meta.get("store_params_hashes") or [])
    if hashes and trained and not hashes <= trained:
        logger.warning(
            "store %s was extracted with params %s, the model with %s: features may differ",
            store_url,
            sorted(hashes),
            sorted(trained),
        )
    batch = None
    if combat:
        if combat not in rows or rows[combat].isna().any():
            raise ModelError(
                f"model {version.name!r} harmonises by {combat!r} (ComBat): every row of "
                f"store {store_url!r} needs it (carried column or --clinical table)"
            )
        batch = rows[combat].astype(str).to_numpy()
    scores = version.model.predict_scores(version.preprocessor.transform(X, batch=batch)).compute()
    frame = rows[["case_id", "label"]].reset_index(drop=True).copy()
    classes = np.asarray(version.meta.get("classes") or [])
    cols = score_columns(version.task, scores, classes if classes.size else None)
    for name, col in cols.items():
        frame[name] = col
    if version.task in ("binary", "multiclass"):
        frame["predicted"] = classes[np.asarray(scores).argmax(axis=1)]
    frame["model_version"] = version.name
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(out, index=False)
    return frame


@dataclass
class PredictResult:
    """What a predict job wrote: the predictions table and where."""

    output: str
    frame: pd.DataFrame

    def text(self) -> str:
        if not len(self.frame):
            return f"wrote {self.output}: no rows in the store"
        return f"wrote {self.output}: {len(self.frame)} prediction(s) from model {self.frame['model_version'].iloc[0]}"


def predict_job(
    job, *, clinical: str | None = None, trust: tuple[str, ...] = (), client=None, use_cluster: bool = True
) -> PredictResult:
    """Run a ``kind: predict`` job spec.

    ``predict.version: champion`` applies the registry's current champion (``champion.json``,
    written by ``radcluster retrain``). Without ``use_cluster`` the prediction runs in this
    process (threads).
    """
    from ..cluster import connect
    from ..registry.champion import read_champion

    version = job.predict.version
    if version == "champion":
        champion = read_champion(job.resolve(job.registry))  # the spec requires a registry here
        if champion is None:
            raise SpecError(
                f"registry {job.registry!r}",
                "has no champion for predict.version 'champion'",
                "run `radcluster retrain` first, or give a version folder",
            )
        version = champion["version"]
    else:
        version = job.resolve(version)
    output = job.resolve(job.predict.output)
    with connect(job.cluster) if use_cluster and client is None else contextlib.nullcontext():
        frame = predict_store(version, job.resolve(job.store), out=output, clinical=clinical, trust=trust)
    return PredictResult(output, frame)
