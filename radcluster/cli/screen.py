"""``radcluster screen``: univariate screening of a store's features (a thin wrapper of
:func:`radcluster.jobs.screen.screen_store`)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from .common import EXIT_OK, add_cluster_flags, cluster_overrides, print_dashboard

__all__ = ["add_commands"]


def cmd_screen(args: argparse.Namespace) -> int:
    from ..cluster import connect, dashboard_link
    from ..jobs.screen import screen_store, write_screen
    from ..spec import build_job

    # the cluster comes from a job spec like a training's: the same flags, the same checks
    overrides = {
        "kind": "train",
        "store": args.store,
        "train.target": args.time or args.target,
        **cluster_overrides(args),
    }
    job = build_job({}, overrides=overrides, source="(command line)")
    with connect(job.cluster) as client:
        print_dashboard(dashboard_link(client))
        table = screen_store(
            args.store, time=args.time, event=args.event, target=args.target, clinical=args.clinical, client=client
        )
    parquet, page = write_screen(table, args.output)
    shown = table.head(args.top)
    what = "hr" if args.time else "auc"
    print(f"{len(table)} feature(s) screened on {table.attrs.get('n')} row(s); top {len(shown)} by p:")
    for rec in shown.itertuples():
        value = getattr(rec, what)
        print(f"{rec.rank:>4}  {rec.feature:<60} {what} {_fmt(value)}  p {rec.p:.2e}  q {rec.q:.2e}")
    print(f"wrote {parquet} and {page}")
    return EXIT_OK


def _fmt(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "-"


def add_commands(sub) -> None:
    """Register ``screen`` on ``radcluster``'s sub-parsers."""
    p = sub.add_parser(
        "screen", help="univariate screening of every feature: Cox per feature, or AUC for a binary target"
    )
    p.add_argument("store")
    p.add_argument("--time", help="survival time column (with --event): one Cox model per feature")
    p.add_argument("--event", help="event column (1 event, 0 censored)")
    p.add_argument("--target", help="a binary outcome column instead: ROC AUC and Mann-Whitney p per feature")
    p.add_argument("--clinical", help="CSV/Parquet keyed by case_id holding those columns")
    p.add_argument(
        "-o", "--output", type=Path, required=True, help="screen.parquet (an .html table is written beside it)"
    )
    p.add_argument("--top", type=int, default=10, help="rows to print (default 10)")
    add_cluster_flags(p)
    p.set_defaults(func=cmd_screen)
