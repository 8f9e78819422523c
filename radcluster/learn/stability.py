"""Feature stability from test-retest scans: ICC(3,1) per feature.

A manifest's ``retest_of`` column marks a scan as a repeat of another (the same patient
scanned twice); :mod:`.dataset` keeps those scans aside. :func:`icc_table` computes, for every
feature, the intraclass correlation ICC(3,1) of the pairs: two-way mixed effects,
consistency, single measurement (Shrout & Fleiss 1979, case 3; Koo & Li 2016),

    ICC(3,1) = (MS_rows - MS_error) / (MS_rows + (k - 1) MS_error)

from the two-way ANOVA of the n x k table (rows: patients, columns: scan and retest). It is
computed for all features at once with numpy: pingouin's ``intraclass_corr`` gives the same
numbers one feature at a time through a long-format ANOVA, which takes seconds per thousand
features and pulls seaborn and xarray; the test checks the formula against Shrout & Fleiss'
published example. ``select: {icc_min: 0.75}`` drops the features below the threshold
before any fold is fitted (the ICC uses no target, so it cannot leak one).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import ModelError

__all__ = ["icc_3_1", "icc_table", "retest_pairs"]


def icc_3_1(Y: np.ndarray) -> np.ndarray:
    """ICC(3,1) of every feature of ``Y`` (n subjects x k measurements x p features).

    Examples
    --------
    Shrout & Fleiss (1979), Table 2: six targets rated by four judges; ICC(3,1) = 0.71.

    >>> ratings = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])
    >>> round(float(icc_3_1(ratings[:, :, None])[0]), 2)
    0.71
    """
    Y = np.asarray(Y, dtype=float)
    if Y.ndim != 3 or Y.shape[0] < 2 or Y.shape[1] < 2:
        raise ModelError(f"ICC: need at least 2 subjects x 2 measurements per feature; got shape {Y.shape}")
    n, k, _ = Y.shape
    grand = Y.mean(axis=(0, 1))
    ss_rows = k * ((Y.mean(axis=1) - grand) ** 2).sum(axis=0)
    ss_cols = n * ((Y.mean(axis=0) - grand) ** 2).sum(axis=0)
    ss_error = ((Y - grand) ** 2).sum(axis=(0, 1)) - ss_rows - ss_cols
    ms_rows = ss_rows / (n - 1)
    ms_error = ss_error / ((n - 1) * (k - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ms_rows - ms_error) / (ms_rows + (k - 1) * ms_error)


def retest_pairs(rows: pd.DataFrame, retest_rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(first, retest)`` of each retest scan and the scan it repeats (same label)
    in ``rows`` and ``retest_rows``; retests of a scan that is not in ``rows`` are skipped."""
    index = {(str(c), int(lab)): i for i, (c, lab) in enumerate(zip(rows["case_id"], rows["label"], strict=True))}
    first, second = [], []
    for j, (of, lab) in enumerate(zip(retest_rows["retest_of"], retest_rows["label"], strict=True)):
        i = index.get((str(of), int(lab)))
        if i is not None:
            first.append(i)
            second.append(j)
    return np.asarray(first, dtype=int), np.asarray(second, dtype=int)


def icc_table(first: np.ndarray, retest: np.ndarray, names: list[str]) -> pd.DataFrame:
    """``feature, icc, n_pairs`` for paired matrices ``first`` and ``retest`` (n pairs x p)."""
    first = np.asarray(first, dtype=float)
    retest = np.asarray(retest, dtype=float)
    ok = np.isfinite(first).all(axis=1) & np.isfinite(retest).all(axis=1)
    icc = icc_3_1(np.stack([first[ok], retest[ok]], axis=1))
    return pd.DataFrame({"feature": names, "icc": icc, "n_pairs": int(ok.sum())})
