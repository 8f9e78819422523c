"""Univariate screening of every feature of a store against survival or a binary outcome.

The store's matrix stays a dask array: it is cut into blocks of columns (all rows of a few
features each), and one task per block runs :func:`radcluster.learn.survival.screen_survival`
(a Cox model per feature) or :func:`~radcluster.learn.survival.screen_binary` on its columns.
Only the result rows come back; the Benjamini-Hochberg ``q`` is computed over all of them.
Retest scans (rows with a ``retest_of``) are left out: they repeat a patient.
"""

from __future__ import annotations

import html
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import SpecError
from ..learn import survival

logger = logging.getLogger(__name__)

__all__ = ["screen_store", "screen_html"]


def screen_store(
    store_url: str,
    *,
    time: str | None = None,
    event: str | None = None,
    target: str | None = None,
    clinical: str | None = None,
    client=None,
    block_features: int = 32,
) -> pd.DataFrame:
    """The screening table of every feature of the store at ``store_url``.

    Give ``time`` and ``event`` (survival: one Cox model per feature) or ``target`` (a binary
    outcome: ROC AUC and Mann-Whitney test per feature). Runs on ``client``'s cluster when
    given, else on the current Dask scheduler.

    Returns
    -------
    pandas.DataFrame
        One row per feature, sorted by ``p``: see :func:`~radcluster.learn.survival.screen_survival`
        and :func:`~radcluster.learn.survival.screen_binary`; ``q`` is the BH-adjusted p.
    """
    import dask

    from ..learn.dataset import load_training_data
    from ..spec.training import parse_train_spec

    if (time is None) != (event is None) or (time is None) == (target is None):
        given = [f"--{name}" for name, v in (("time", time), ("event", event), ("target", target)) if v is not None]
        raise SpecError(
            "screen options",
            f"{', '.join(given) or 'none'} given",
            "give either --time and --event (survival) or --target (a binary outcome)",
        )
    spec = parse_train_spec(
        {"target": time or target, "event": event, "task": "survival" if time else "binary", "clinical": clinical}
    )
    data = load_training_data(store_url, spec)
    X, names, tgt = data.X, data.feature_names, data.target
    keep = _not_retest(data.rows)
    if not keep.all():
        logger.info("screen: %d retest scan(s) left out", int((~keep).sum()))
        X = X[np.flatnonzero(keep)]
        tgt = tgt.subset(np.flatnonzero(keep))
    X = X.rechunk({0: -1, 1: block_features})
    starts = np.cumsum((0, *X.chunks[1]))
    blocks = X.to_delayed().ravel()
    fn = dask.delayed(survival.screen_survival if time else survival.screen_binary, pure=True)
    tasks = [
        fn(block, tgt.time, tgt.event, names[a:b]) if time else fn(block, tgt.y, names[a:b])
        for block, a, b in zip(blocks, starts[:-1], starts[1:], strict=True)
    ]
    parts = client.compute(tasks, sync=True) if client is not None else dask.compute(*tasks)
    table = survival.finish_screen(pd.concat(parts, ignore_index=True))
    table.attrs.update({"n": int(X.shape[0]), "events": int(tgt.event.sum()) if time else None})
    return table


def _not_retest(rows: pd.DataFrame) -> np.ndarray:
    if "retest_of" not in rows:
        return np.ones(len(rows), dtype=bool)
    return rows["retest_of"].isna().to_numpy()


def screen_html(table: pd.DataFrame, *, title: str = "Univariate screening") -> str:
    """A self-contained HTML page of the screening table (sorted by p; q <= 0.05 in bold)."""

    def cell(value) -> str:
        if isinstance(value, float | np.floating):
            if not math.isfinite(value):
                return "-"
            return f"{value:.3g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.3f}"
        return html.escape(str(value))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    rows = []
    for rec in table.itertuples(index=False):
        strong = ' class="sig"' if getattr(rec, "q", math.nan) <= 0.05 else ""
        rows.append(f"<tr{strong}>" + "".join(f"<td>{cell(v)}</td>" for v in rec) + "</tr>")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:nth-child(2){text-align:left}"
        "tr.sig{font-weight:bold}th{background:#eee}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{len(table)} feature(s); rows in bold: q &le; 0.05 "
        "(Benjamini-Hochberg).</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></body></html>"
    )


def write_screen(table: pd.DataFrame, out: str | Path) -> tuple[Path, Path]:
    """``out`` (Parquet) and the HTML table beside it (same name, ``.html``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out, index=False)
    page = out.with_suffix(".html")
    page.write_text(screen_html(table))
    return out, page
