"""The demo cohort: a synthetic cohort with planted signal plus the real sample cases."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = ["prepare_demo", "sample_cases_dir"]

_SAMPLES = ("brain1", "brain2", "breast1")


def sample_cases_dir() -> Path | None:
    """The real sample cases shipped with the repository (tests/data), when present."""
    candidate = Path(__file__).resolve().parents[1] / "tests" / "data"
    return candidate if all((candidate / f"{c}_image.nrrd").exists() for c in _SAMPLES) else None


def prepare_demo(out: Path, *, n_cases: int = 24, seed: int = 0) -> Path:
    """Write the demo cohort under ``out`` and return its manifest.

    The synthetic cases carry outcome, survival and site columns; the real pyradiomics
    sample cases (MR brain and breast lesions), when the repository's tests/data is
    present, are appended with those columns empty.
    """
    from .synth import make_cohort

    out.mkdir(parents=True, exist_ok=True)
    synth_manifest = make_cohort(out / "synthetic", n_cases, seed=seed)
    frame = pd.read_csv(synth_manifest, dtype={"case_id": str, "patient_id": str})
    for col in ("image", "mask"):
        frame[col] = [str((synth_manifest.parent / p).resolve()) for p in frame[col]]
    samples = sample_cases_dir()
    if samples is not None:
        real = pd.DataFrame(
            {
                "case_id": list(_SAMPLES),
                "image": [str(samples / f"{c}_image.nrrd") for c in _SAMPLES],
                "mask": [str(samples / f"{c}_label.nrrd") for c in _SAMPLES],
                "patient_id": list(_SAMPLES),
            }
        )
        frame = pd.concat([frame, real], ignore_index=True)
    manifest = out / "manifest.csv"
    frame.to_csv(manifest, index=False)
    return manifest
