"""The demo (``radcluster demo``): a synthetic cohort with planted signal plus the real sample
cases, extracted on a local cluster, and a model trained on the same workers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["prepare_demo", "run_demo", "DemoResult", "SAMPLES", "SAMPLE_CASES"]

# pyradiomics' MR brain and breast sample cases (BSD licence, LICENSE.txt beside them),
# shipped as package data so the demo runs from an installed package.
SAMPLES = Path(__file__).parent / "data" / "samples"
SAMPLE_CASES = ("brain1", "brain2", "breast1")


def prepare_demo(out: Path, *, n_cases: int = 24, seed: int = 0) -> Path:
    """Write the demo cohort under ``out`` and return its manifest.

    The synthetic cases carry outcome, survival and site columns; the real sample cases are
    appended with those columns empty.
    """
    from .synth import make_cohort

    out.mkdir(parents=True, exist_ok=True)
    synth_manifest = make_cohort(out / "synthetic", n_cases, seed=seed)
    frame = pd.read_csv(synth_manifest, dtype={"case_id": str, "patient_id": str})
    for col in ("image", "mask"):
        frame[col] = [str((synth_manifest.parent / p).resolve()) for p in frame[col]]
    real = pd.DataFrame(
        {
            "case_id": list(SAMPLE_CASES),
            "image": [str(SAMPLES / f"{c}_image.nrrd") for c in SAMPLE_CASES],
            "mask": [str(SAMPLES / f"{c}_label.nrrd") for c in SAMPLE_CASES],
            "patient_id": list(SAMPLE_CASES),
        }
    )
    manifest = out / "manifest.csv"
    pd.concat([frame, real], ignore_index=True).to_csv(manifest, index=False)
    return manifest


# Two dozen cases: boosted stumps on a few PCA scores, a model small enough for that many.
DEMO_SPEC = {
    "target": "outcome",
    "model": "xgboost",
    "params": {"xgboost": {"n_estimators": 100, "max_depth": 1, "learning_rate": 0.1}},
    "preprocess": {"pca": 0.9, "pca_max_components": 10},
    "cv": {"folds": 5, "seed": 0},
    "metrics": {"bootstrap": 500},
}


@dataclass
class DemoResult:
    """The demo's extraction summary and trained model."""

    manifest: Path
    extraction: Any  # RunSummary
    training: Any  # TrainResult

    @property
    def ok(self) -> bool:
        return self.extraction.ok

    def text(self) -> str:
        store = self.manifest.parent / "store"
        lines = [
            f"demo cohort: {self.manifest}",
            self.extraction.text(),
            f"model:    {self.training.version}",
            f"cross-validated ROC AUC (xgboost on the synthetic outcome): {self.training.cv_auc:.3f}",
        ]
        if self.training.report is not None:
            lines.append(f"report:   {self.training.report}")
        code = f"import radcluster; print(radcluster.open_store('{store}').features().head())"
        lines.append(f'open the store: python -c "{code}"')
        return "\n".join(lines)


def run_demo(
    out: Path,
    *,
    n_cases: int = 60,
    seed: int = 0,
    cluster: dict[str, Any] | None = None,
    progress=None,
    on_dashboard=None,
) -> DemoResult:
    """Write the demo cohort under ``out``, extract it into ``out/store`` and train xgboost on its
    ``outcome`` into ``out/models``, on one local cluster (``cluster``: job-spec overrides)."""
    from .cluster import connect, dashboard_link
    from .cluster.local import prestart_local_workers
    from .jobs.extract import extract_job
    from .jobs.train import train_store
    from .registry import DEFAULT_REGISTRY
    from .spec import build_job

    manifest = prepare_demo(out, n_cases=n_cases, seed=seed)
    overrides = {"kind": "extract", "manifest": str(manifest), "store": str(out / "store"), **(cluster or {})}
    job = build_job({}, overrides=overrides, source="(demo)")
    prestart_local_workers(job)
    # one cluster for the whole pipeline: extraction, then training on the same workers
    with connect(job.cluster) as client:
        if on_dashboard is not None:
            on_dashboard(dashboard_link(client))
        summary = extract_job(job, progress=progress, client=client)
        trained = train_store(str(out / "store"), DEMO_SPEC, client, out / DEFAULT_REGISTRY)
    return DemoResult(manifest, summary, trained)
