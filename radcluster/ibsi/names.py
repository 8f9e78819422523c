"""pyradiomics feature names <-> IBSI feature tags, from ``data/ibsi_names.csv``.

The table has one row per (pyradiomics feature, IBSI tag):

``pyradiomics``
    ``<class>_<Feature>`` as in pyradiomics' column names (``glcm_Contrast``); the ``histogram``
    class exists only in IBSI mode (statistics of the discretised intensities).
``ibsi_tag``
    the IBSI tag without aggregation suffix (``cm_contrast``).
``aggregations``
    the IBSI aggregation suffixes the tag takes (``3D_avg ... 2D_comb`` for GLCM/GLRLM,
    ``3D 2_5D 2D`` for GLSZM/NGLDM/NGTDM); empty for morphology and statistics.
``rename``
    ``yes`` for the one tag a pyradiomics column is renamed to; ``no`` for equivalences used
    only when checking against reference values (dissimilarity = difference average, ...).
``offset``
    added to the pyradiomics value to obtain the IBSI value (``-3`` for excess kurtosis).
``note``
    definition differences and conditions.
"""

from __future__ import annotations

import csv
import functools
import re
from dataclasses import dataclass
from importlib import resources

import pandas as pd

from ..errors import SpecError
from .config import AGGREGATIONS

__all__ = ["NameRow", "name_table", "ibsi_tags", "to_ibsi_names", "aggregation_from_settings", "FEATURE_COLUMN"]

#: ``<image type>_<class>_<Feature>``: the shape of a pyradiomics feature column.
FEATURE_COLUMN = re.compile(
    r"^(?P<image>[A-Za-z0-9.\-]+)_(?P<cls>shape|shape2D|firstorder|histogram|glcm|glrlm|glszm|gldm|ngtdm)"
    r"_(?P<feature>[A-Za-z0-9]+)$"
)


@dataclass(frozen=True)
class NameRow:
    """One row of the name table."""

    pyradiomics: str
    ibsi_tag: str
    aggregations: tuple[str, ...]
    rename: bool
    offset: float
    note: str

    def tag(self, aggregation: str | None) -> str | None:
        """The full IBSI tag under a texture aggregation, or None if it has none there.

        ``aggregation`` is given as for GLCM (``3D_avg``); tags without avg/comb variants take
        its dimension part (``3D``).
        """
        if not self.aggregations:
            return self.ibsi_tag
        if aggregation is None:
            return None
        if aggregation in self.aggregations:
            return f"{self.ibsi_tag}_{aggregation}"
        dims = aggregation.removesuffix("_avg").removesuffix("_comb")
        if dims in self.aggregations:
            return f"{self.ibsi_tag}_{dims}"
        return None


@functools.lru_cache(maxsize=1)
def name_table() -> tuple[NameRow, ...]:
    """The packaged name table, parsed."""
    text = resources.files("radcluster").joinpath("data/ibsi_names.csv").read_text(encoding="utf-8")
    rows = []
    for r in csv.DictReader(text.splitlines()):
        rows.append(
            NameRow(
                r["pyradiomics"],
                r["ibsi_tag"],
                tuple(r["aggregations"].split()),
                r["rename"] == "yes",
                float(r["offset"] or 0),
                r["note"],
            )
        )
    return tuple(rows)


def ibsi_tags(aggregation: str | None) -> dict[str, list[NameRow]]:
    """pyradiomics ``<class>_<Feature>`` -> the rows that have an IBSI tag under ``aggregation``."""
    out: dict[str, list[NameRow]] = {}
    for row in name_table():
        if row.tag(aggregation) is not None:
            out.setdefault(row.pyradiomics, []).append(row)
    return out


def aggregation_from_settings(settings: dict | None) -> str | None:
    """The IBSI aggregation of GLCM/GLRLM features extracted with these pyradiomics settings.

    ``force2D`` (axial) gives ``2_5D``, otherwise ``3D``; ``weightingNorm: no_weighting`` gives
    ``comb``, none gives ``avg``. Other weightings have no IBSI counterpart: None.
    """
    s = settings or {}
    if s.get("force2D") and s.get("force2Ddimension", 0) != 0:
        return None
    dims = "2_5D" if s.get("force2D") else "3D"
    weighting = s.get("weightingNorm")
    if weighting is None:
        return f"{dims}_avg"
    if weighting == "no_weighting":
        return f"{dims}_comb"
    return None


def to_ibsi_names(df: pd.DataFrame, *, aggregation: str | None = "3D_avg", unmapped: str = "keep") -> pd.DataFrame:
    """Rename pyradiomics feature columns to IBSI tags.

    Columns ``original_<class>_<Feature>`` with an IBSI equivalent are renamed to the IBSI tag
    (texture tags get the aggregation suffix); kurtosis becomes IBSI's excess kurtosis (minus 3).
    Columns that are not features (``case_id``, ``label``, ``diagnostics_*``, ...) are left as
    they are. Feature columns without an IBSI equivalent (filtered image types, MCC, 2D shape,
    ...) are kept under their pyradiomics name or dropped.

    Parameters
    ----------
    df : pandas.DataFrame
        Feature table with pyradiomics column names.
    aggregation : str or None
        How GLCM/GLRLM were aggregated: ``3D_avg`` (pyradiomics' default), ``3D_comb``
        (``weightingNorm: no_weighting``), ``2_5D_avg`` (``force2D``), ... ; see
        :func:`aggregation_from_settings`. None: texture aggregations have no IBSI tag.
    unmapped : {"keep", "drop"}
        What to do with feature columns that have no IBSI tag.

    Returns
    -------
    pandas.DataFrame
        A new frame; ``df`` is not modified.

    Examples
    --------
    >>> import pandas as pd
    >>> from radcluster.ibsi import to_ibsi_names
    >>> df = pd.DataFrame({"case_id": ["a"], "original_firstorder_Kurtosis": [2.5],
    ...                    "original_glcm_Contrast": [5.3], "original_glcm_MCC": [0.2]})
    >>> to_ibsi_names(df, unmapped="drop").columns.tolist()
    ['case_id', 'stat_kurt', 'cm_contrast_3D_avg']
    >>> float(to_ibsi_names(df)["stat_kurt"].iloc[0])
    -0.5
    """
    if unmapped not in ("keep", "drop"):
        raise SpecError("to_ibsi_names argument 'unmapped'", "must be 'keep' or 'drop'", f"got {unmapped!r}")
    if aggregation is not None and aggregation not in AGGREGATIONS:
        raise SpecError(
            "to_ibsi_names argument 'aggregation'",
            f"must be one of {list(AGGREGATIONS)} or None",
            f"got {aggregation!r}",
        )
    table = ibsi_tags(aggregation)
    columns: dict[str, pd.Series] = {}
    for col in df.columns:
        m = FEATURE_COLUMN.match(str(col)) if isinstance(col, str) else None
        if m is None:
            columns[col] = df[col]
            continue
        key = f"{m['cls']}_{m['feature']}"
        rows = [r for r in table.get(key, ()) if r.rename] if m["image"] == "original" else []
        if not rows:
            if unmapped == "keep":
                columns[col] = df[col]
            continue
        row = rows[0]
        tag = row.tag(aggregation)
        if tag in columns:
            raise SpecError(
                f"to_ibsi_names column {col!r}",
                f"maps to IBSI tag {tag!r}, as another column does",
                "keep one of the two before renaming",
            )
        columns[tag] = df[col] + row.offset if row.offset else df[col]
    return pd.DataFrame(columns, index=df.index)
