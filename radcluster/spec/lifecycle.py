"""The sections of a model's life after training: ``retrain`` (challenger against champion)
and ``predict`` (which version is applied, and where its predictions go)."""

from __future__ import annotations

from pydantic import Field

from ._base import Section


class RetrainSpec(Section):
    """How a retrain decides whether the new model replaces the champion."""

    holdout_fraction: float = Field(0.2, gt=0, lt=1, description="patients drawn once per registry as hold-out")
    margin: float = Field(0.0, ge=0, description="promote when challenger >= champion - margin")
    seed: int = Field(0, ge=0, description="seed of the hold-out draw")


class PredictSpec(Section):
    """Which model version a predict job applies, and where the predictions go."""

    version: str = Field("champion", description="model version folder, or 'champion' (the registry's)")
    output: str = Field("predictions.parquet", description="predictions Parquet file")
