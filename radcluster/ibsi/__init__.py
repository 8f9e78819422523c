"""IBSI standardisation: IBSI feature names, IBSI mode extraction, and the compliance report.

Three things, each usable alone:

- **Names.** :func:`to_ibsi_names` renames a feature table's pyradiomics columns to IBSI
  tags (``original_glcm_Contrast`` -> ``cm_contrast_3D_avg``), turning kurtosis into IBSI's
  excess kurtosis. The table behind it is ``radcluster/data/ibsi_names.csv``.
- **IBSI mode.** :func:`extract_ibsi` computes pyradiomics' features after IBSI 1
  preprocessing (centre-aligned resampling, rounding, combined resegmentation, bins counted
  from the lower resegmentation bound, per-slice aggregation); it is opt-in, and radcluster's
  default extraction does not use it. :class:`IBSIConfig` holds its settings; IBSI 1's CT
  configurations are ``IBSIConfig.named("A")`` ... ``("E")``.
- **Compliance.** :func:`check_compliance` computes every mappable feature on the IBSI
  phantoms in stock and IBSI mode and applies IBSI's matching rule (:func:`matches`);
  ``radcluster ibsi --reference DIR`` writes ``docs/ibsi-compliance.md``.

Extraction imports only :mod:`.mode`; the names below are loaded from their module on first use.
"""

from __future__ import annotations

import importlib

# public name -> the module of this package that defines it
_EXPORTS = {
    "AGGREGATIONS": "config",
    "NAMED_CONFIGS": "config",
    "IBSIConfig": "config",
    "aggregation_from_settings": "names",
    "name_table": "names",
    "to_ibsi_names": "names",
    "check_ibsi_params": "mode",
    "extract_ibsi": "mode",
    "ComplianceResult": "compliance",
    "check_compliance": "compliance",
    "matches": "compliance",
    "read_reference": "compliance",
    "rounded_difference": "compliance",
    "render_report": "report",
    "write_compliance_report": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
