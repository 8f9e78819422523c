"""Stores for the learning tests: written through the store's own API, no extraction.

:func:`matrix_store` writes a store from a numpy matrix (fast, any shape, planted signal of
our choosing); :func:`extracted_store` runs the real extraction on a small synthetic cohort
once per test session (it takes ~20 s here) and is shared by the end-to-end tests.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from radcluster.store import open_store


def matrix_store(
    path: Path,
    X: np.ndarray,
    columns: dict[str, list] | pd.DataFrame,
    *,
    names: list[str] | None = None,
    labels: np.ndarray | None = None,
    case_ids: list[str] | None = None,
) -> Path:
    """A store whose features are ``X`` and whose carried columns are ``columns``."""
    n, p = X.shape
    names = names or [f"original_firstorder_F{j:03d}" for j in range(p)]
    case_ids = case_ids or [f"case-{i:04d}" for i in range(n)]
    labels = np.ones(n, dtype=int) if labels is None else np.asarray(labels)
    extra = pd.DataFrame(columns)
    now = dt.datetime.now(dt.UTC).isoformat()
    rows = []
    for i in range(n):
        row = {
            "case_id": case_ids[i],
            "label": int(labels[i]),
            "params_hash": "test",
            "extracted_at": now,
            **{k: (None if pd.isna(v) else v) for k, v in extra.iloc[i].items()},
        }
        row.update(zip(names, X[i].tolist(), strict=True))
        rows.append(row)
    store = open_store(path, must_exist=False)
    store.write_part("features", rows, run_id="test", seq=0, metadata={"features": names, "params_hash": "test"})
    store.build_matrix()
    return path


def planted(n: int, p: int, *, seed: int = 0, signal: float = 1.5, scans_per_patient: int = 1):
    """A matrix with a binary outcome driving five features (F000-F004), a three-class
    ``grade`` (F005 + F006), a regression target ``volume`` (F007), survival (F000 + F001)
    and patient ids.

    Scans of one patient are near copies (same latent values plus a little noise), the
    situation where ungrouped folds leak.
    """
    rng = np.random.default_rng(seed)
    n_pat = -(-n // scans_per_patient)
    y_pat = rng.permutation(np.arange(n_pat) % 2)
    base = rng.normal(size=(n_pat, p))
    base[:, :5] += signal * y_pat[:, None]
    pat = np.repeat(np.arange(n_pat), scans_per_patient)[:n]
    X = base[pat] + 0.05 * rng.normal(size=(n, p))
    X[:, p - 1] = 3.0  # a constant feature, to be dropped
    score = base[:, 5] + base[:, 6]
    grade = np.digitize(score, np.quantile(score, [1 / 3, 2 / 3]))  # 3 classes, signal in F005+F006
    volume = 10 + 3 * base[:, 7] + 0.3 * rng.normal(size=n_pat)  # regression target, signal in F007
    columns = {
        "outcome": y_pat[pat],
        "grade": np.array(["low", "mid", "high"])[grade[pat]],
        "volume": volume[pat],
        "patient_id": [f"p{q:04d}" for q in pat],
        "site": np.where(pat % 2 == 0, "A", "B"),
        # hazard grows with F000 + F001; a fifth of the rows censored
        "survival_time": rng.exponential(24 * np.exp(-(base[pat, 0] + base[pat, 1]))) + 0.1,
        "event": (rng.random(n) < 0.8).astype(int),
    }
    return X, columns


# --- built once per test session, shared by the test modules ---------------------------------
_CACHE: dict[str, object] = {}


def once(key: str, build):
    """``build()`` the first time ``key`` is asked for in this session, then the same value."""
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


def extracted_store(tmp_path_factory, client) -> Path:
    """A 60-case synthetic cohort (planted outcome, survival and site) extracted into a store."""
    from radcluster.jobs.extract import extract_job
    from radcluster.spec import build_job
    from radcluster.synth import make_cohort

    def build() -> Path:
        root = tmp_path_factory.mktemp("extracted")
        manifest = make_cohort(root / "cohort", n_cases=60, shape=(40, 40, 20))
        job = build_job({}, overrides={"manifest": str(manifest), "store": str(root / "store")})
        summary = extract_job(job, client=client)
        assert summary.ok, summary.text()
        return root / "store"

    return once("extracted", build)


def trained(
    tmp_path_factory, client, key: str, spec: dict, *, rows: int = 90, features: int = 12, scans_per_patient: int = 1
):
    """A store from :func:`planted` and a version trained on it with ``spec`` (once per key)."""
    from radcluster.jobs.train import train_store

    def build():
        root = tmp_path_factory.mktemp(key)
        X, columns = planted(rows, features, scans_per_patient=scans_per_patient)
        matrix_store(root / "store", X, columns)
        result = train_store(str(root / "store"), spec, client, root / "models")
        return root, result

    return once(f"trained-{key}", build)


FAST = {"metrics": {"bootstrap": 100}, "report": False}
# Trainings shared by test_learn, test_registry and test_report (each runs once per session).
SPECS: dict[str, tuple[dict, int]] = {
    "binary": (
        {
            "target": "outcome",
            "model": "xgboost",
            "params": {"xgboost": {"n_estimators": 80}},
            "preprocess": {"pca": 0.9},
            "cv": {"folds": 3, "test_fraction": 0.25},
            "metrics": {"bootstrap": 100},
        },
        120,
    ),
    "forest": (
        {
            "target": "outcome",
            "model": "random_forest",
            "params": {"random_forest": {"n_estimators": 30}},
            "cv": {"folds": 0, "test_fraction": 0.25},
            "report": False,
            "metrics": {"bootstrap": 0},
        },
        90,
    ),
    "multiclass": (
        {
            "target": "grade",
            "model": "random_forest",
            "params": {"random_forest": {"n_estimators": 50}},
            "cv": {"folds": 3},
            **FAST,
        },
        90,
    ),
    "regression": ({"target": "volume", "model": "ridge", "cv": {"folds": 3}, **FAST}, 90),
    "survival": (
        {
            "target": "survival_time",
            "event": "event",
            "model": "xgboost",
            "params": {"xgboost": {"n_estimators": 60}},
            "cv": {"folds": 3},
            **FAST,
        },
        90,
    ),
    "clustering": ({"model": "kmeans", "target": "outcome", "preprocess": {"pca": 3}, **FAST}, 90),
}


def trained_as(tmp_path_factory, client, key: str):
    """``(folder, TrainResult)`` of the shared training ``key`` of :data:`SPECS`."""
    spec, rows = SPECS[key]
    return trained(tmp_path_factory, client, key, spec, rows=rows)
