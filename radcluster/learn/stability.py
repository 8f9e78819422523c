"""Feature stability from test-retest scans and perturbed copies: an ICC per feature.

A manifest's ``retest_of`` column marks a scan as a repeat of another (the same patient
scanned twice); :mod:`.dataset` keeps those scans aside. :func:`icc_table` computes, for every
feature, the intraclass correlation ICC(3,1) of the pairs: two-way mixed effects,
consistency, single measurement (Shrout & Fleiss 1979, case 3; Koo & Li 2016),

    ICC(3,1) = (MS_rows - MS_error) / (MS_rows + (k - 1) MS_error)

from the two-way ANOVA of the n x k table (rows: patients, columns: scan and retest). It is
computed for all features at once with numpy: pingouin's ``intraclass_corr`` gives the same
numbers one feature at a time through a long-format ANOVA, which takes seconds per thousand
features and pulls seaborn and xarray; the test checks the formula against Shrout & Fleiss'
published example.

Perturbed copies of a scan (``extraction.perturb``, :mod:`radcluster.extract.perturb`: rows
with a ``perturbation_of``) give each feature the one-way random-effects ICC(1,1) over the
scan and its k perturbations (Shrout & Fleiss case 1):

    ICC(1,1) = (MS_rows - MS_within) / (MS_rows + (k - 1) MS_within)

one-way because a perturbation is no fixed rater: a shift every scan shares (a dilation
enlarges every volume) counts against the feature, which the consistency form of ICC(3,1)
would forgive. :func:`stability_table` gives one row per (feature, source); ``select:
{icc_min: 0.75}`` drops a feature below the threshold in any source before any fold is
fitted (the ICC uses no target, so it cannot leak one).

Each feature's ICC is over the scans complete for that feature (the scan and every copy, or
scan and retest, present with a value): a NaN, as a texture feature undefined on a tiny
perturbed ROI, removes that scan from that feature's ICC only, not from every feature's. The
table's ``n`` counts those scans per feature; with fewer than 2 the ICC is NaN, and such a
feature, like one without variance, is kept by the filter and counted as such where the
filter is described (:func:`describe`, ``radcluster store info``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import ModelError

__all__ = [
    "icc_1_1",
    "icc_3_1",
    "icc_table",
    "retest_pairs",
    "perturbation_sets",
    "stability_table",
    "describe",
    "store_stability",
]


def icc_3_1(Y: np.ndarray) -> np.ndarray:
    """ICC(3,1) of every feature of ``Y`` (n subjects x k measurements x p features), each over
    the subjects with all k measurements of it (not NaN); NaN with fewer than 2 of them.

    Examples
    --------
    Shrout & Fleiss (1979), Table 2: six targets rated by four judges; ICC(3,1) = 0.71.

    >>> ratings = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])
    >>> round(float(icc_3_1(ratings[:, :, None])[0]), 2)
    0.71
    """
    _, k, ms_rows, _, ms_error = _mean_squares(Y)
    return _icc(ms_rows, ms_error, k)


def icc_1_1(Y: np.ndarray) -> np.ndarray:
    """ICC(1,1) of every feature of ``Y`` (n subjects x k measurements x p features), each over
    the subjects with all k measurements of it (not NaN); NaN with fewer than 2 of them.

    Examples
    --------
    Shrout & Fleiss (1979), Table 2 (as in :func:`icc_3_1`): ICC(1,1) = 0.17.

    >>> ratings = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])
    >>> round(float(icc_1_1(ratings[:, :, None])[0]), 2)
    0.17
    """
    _, k, ms_rows, ms_within, _ = _mean_squares(Y)
    return _icc(ms_rows, ms_within, k)


def _complete(Y: np.ndarray) -> np.ndarray:
    """n x p: whether each subject has all k measurements of each feature (none NaN)."""
    return np.isfinite(Y).all(axis=1)


def _mean_squares(Y: np.ndarray) -> tuple[np.ndarray, int, np.ndarray, np.ndarray, np.ndarray]:
    """``(n, k, MS_rows, MS_within, MS_error)`` per feature of the n x k x p table ``Y``: the
    two-way ANOVA's mean squares between subjects, within subjects, and residual.

    Each feature's are over the subjects complete for it (``n``, per feature): a NaN (a texture
    feature undefined on one perturbed ROI) removes that subject from that feature only. With
    fewer than 2 complete subjects a feature's mean squares are NaN.
    """
    Y = np.asarray(Y, dtype=float)
    if Y.ndim != 3 or Y.shape[0] < 2 or Y.shape[1] < 2:
        raise ModelError(f"ICC: need at least 2 subjects x 2 measurements per feature; got shape {Y.shape}")
    k = Y.shape[1]
    complete = _complete(Y)[:, None, :]
    n = complete.sum(axis=0)[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        grand = np.where(complete, Y, 0.0).sum(axis=(0, 1)) / (n * k)
        dev = np.where(complete, Y - grand, 0.0)  # an incomplete subject adds nothing to any sum
        ss_total = (dev**2).sum(axis=(0, 1))
        ss_rows = k * (dev.mean(axis=1) ** 2).sum(axis=0)
        ss_cols = n * ((dev.sum(axis=0) / n) ** 2).sum(axis=0)
        few = n < 2
        ms_rows = np.where(few, np.nan, ss_rows / (n - 1))
        ms_within = np.where(few, np.nan, (ss_total - ss_rows) / (n * (k - 1)))
        ms_error = np.where(few, np.nan, (ss_total - ss_rows - ss_cols) / ((n - 1) * (k - 1)))
    return n, k, ms_rows, ms_within, ms_error


def _icc(ms_rows: np.ndarray, ms_other: np.ndarray, k: int) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ms_rows - ms_other) / (ms_rows + (k - 1) * ms_other)


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
    """``feature, icc, n_pairs`` for paired matrices ``first`` and ``retest`` (n pairs x p);
    ``n_pairs`` counts, per feature, the pairs with both values (see :func:`icc_3_1`)."""
    Y = np.stack([np.asarray(first, dtype=float), np.asarray(retest, dtype=float)], axis=1)
    return pd.DataFrame({"feature": names, "icc": icc_3_1(Y), "n_pairs": _complete(Y).sum(axis=0)})


def perturbation_sets(rows: pd.DataFrame, perturbed_rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(first, copies, names)``: the position in ``rows`` of every scan that has a row for
    each perturbation ``names`` (same label), and the positions of those rows in
    ``perturbed_rows`` (n x k, in the order of ``names``)."""
    from ..extract.perturb import PERTURBATION, PERTURBATION_OF

    names = sorted(perturbed_rows[PERTURBATION].astype(str).unique())
    where = {
        (str(of), int(lab), str(p)): j
        for j, (of, lab, p) in enumerate(
            zip(perturbed_rows[PERTURBATION_OF], perturbed_rows["label"], perturbed_rows[PERTURBATION], strict=True)
        )
    }
    first, copies = [], []
    for i, (case, lab) in enumerate(zip(rows["case_id"], rows["label"], strict=True)):
        found = [where.get((str(case), int(lab), p)) for p in names]
        if None not in found:
            first.append(i)
            copies.append(found)
    return np.asarray(first, dtype=int), np.asarray(copies, dtype=int).reshape(len(first), len(names)), names


def stability_table(
    X, rows: pd.DataFrame, names: list[str], *, retest=None, perturbed=None, min_subjects: int = 3
) -> pd.DataFrame:
    """``feature, source, icc, n, k`` for every feature of the (dask) matrix ``X``.

    ``retest`` and ``perturbed`` are ``(X, rows)`` of the scans kept aside (either may be
    None): ``source`` "retest" rows hold ICC(3,1) over ``n`` pairs, "perturbation" rows
    ICC(1,1) over ``n`` scans each with ``k - 1`` perturbed copies.

    Raises
    ------
    ModelError
        When neither source has ``min_subjects`` scans with their retest or every perturbation.
    """
    import dask

    parts, found = [], []
    if retest is not None:
        first, second = retest_pairs(rows, retest[1])
        found.append(f"{first.size} test-retest pair(s)")
        if first.size >= min_subjects:
            a, b = dask.compute(X[first], retest[0][second])
            parts.append(icc_table(a, b, names).rename(columns={"n_pairs": "n"}).assign(source="retest", k=2))
    if perturbed is not None:
        first, copies, kinds = perturbation_sets(rows, perturbed[1])
        found.append(f"{first.size} scan(s) with all {len(kinds)} perturbation(s)")
        if first.size >= min_subjects:
            a, b = dask.compute(X[first], perturbed[0][copies.ravel()])
            Y = np.concatenate([np.asarray(a, dtype=float)[:, None, :], np.asarray(b).reshape(*copies.shape, -1)], 1)
            parts.append(
                pd.DataFrame(
                    {"feature": names, "icc": icc_1_1(Y), "n": _complete(Y).sum(axis=0), "source": "perturbation"}
                ).assign(k=Y.shape[1])
            )
    if not parts:
        have = "; ".join(found) or "no retest scans ('retest_of') and no perturbed scans (extraction.perturb)"
        raise ModelError(f"stability: need at least {min_subjects} scans with a retest or perturbations; found {have}")
    return pd.concat(parts, ignore_index=True)[["feature", "source", "icc", "n", "k"]]


def describe(record: dict) -> str:
    """What a training's stability filter did, in words (the report and the checklist):
    ``record`` is ``metrics["stability"]``. Scans are counted per feature (those complete for
    it), so a source gives the fewest and most; a feature without an ICC is said to be kept."""
    sources = record.get("sources") or {"retest": {"n": record.get("n_pairs"), "k": 2}}  # versions before perturbations
    parts, undefined = [], 0
    for source, s in sorted(sources.items()):
        low = s.get("n_min", s["n"])  # versions before per-feature counts have one n
        n = f"{s['n']}" if low == s["n"] else f"{low}-{s['n']}"
        if source == "retest":
            part = f"ICC(3,1) over {n} test-retest pair(s)"
        else:
            part = f"ICC(1,1) over {n} scan(s) and {s['k'] - 1} perturbed copies of each"
        if low != s["n"]:
            part += " (counted per feature: those complete for it)"
        undefined += s.get("undefined", 0)
        parts.append(part + (f", undefined for {s['undefined']} feature(s)" if s.get("undefined") else ""))
    text = f"ICC >= {record['icc_min']:g} ({'; '.join(parts)}): {len(record['dropped'])} feature(s) dropped"
    if undefined:
        text += "; a feature without an ICC (no variance, or fewer than 2 complete scans) is kept"
    return text


def store_stability(store) -> pd.DataFrame:
    """:func:`stability_table` of every current row of ``store`` (a :class:`~radcluster.store.Store`)."""
    from .dataset import ASIDE_COLUMNS, read_store_columns, split_aside

    X, rows, names = store.matrix()
    rows = rows.assign(case_id=rows["case_id"].astype(str))
    frame = rows.merge(read_store_columns(store, list(ASIDE_COLUMNS)), on=["case_id", "label"], how="left")
    X, frame, retest, perturbed = split_aside(X, frame)
    return stability_table(X, frame, names, retest=retest, perturbed=perturbed)
