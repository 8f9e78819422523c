"""The ``ibsi`` engine: IBSI mode (:mod:`radcluster.ibsi`), IBSI 1 preprocessing around
pyradiomics' feature classes, under pyradiomics' feature names.

``engines: [ibsi]`` takes the configuration from ``extraction.ibsi`` (an IBSI 1 configuration
name ``A``-``E``) or, when that is unset, from the params file; ``{ibsi: {config: B}}`` names it
in the entry. Its columns have pyradiomics' names, so it does not run beside ``pyradiomics``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import ScanError
from . import Engine, ScanImage

__all__ = ["IBSIEngine"]


@dataclass(frozen=True)
class IBSIEngine(Engine):
    """IBSI mode; ``config`` is True (settings from the params file) or a configuration name."""

    config: bool | str = True
    name = "ibsi"
    kind = "radiomics"

    def prepare(self, params_text: str) -> IBSIEngine:
        import yaml

        from ...ibsi.mode import check_ibsi_params

        check_ibsi_params(yaml.safe_load(params_text))
        return self

    def key(self) -> str:
        # IBSI mode changes every value: its rows must not pass for stock-mode rows
        return f"ibsi-{self.config}"

    def extract(self, scan: ScanImage, settings) -> dict[int, Any]:
        import SimpleITK as sitk
        import yaml

        from ...ibsi.mode import extract_ibsi

        params = yaml.safe_load(settings.params_text) or {}
        present = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(scan.mask)) if v != 0]
        out: dict[int, Any] = {}
        for label in scan.labels(present):
            try:
                out[label] = extract_ibsi(
                    scan.image, scan.mask, label, params, None if self.config is True else self.config
                )
            except ValueError as err:
                out[label] = ScanError.wrap(scan.scan.case_id, err, file=scan.scan.mask, label=label)
        return out
