"""The demo cohort: a synthetic cohort with planted signal plus the real sample cases."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = ["prepare_demo", "SAMPLES", "SAMPLE_CASES"]

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
