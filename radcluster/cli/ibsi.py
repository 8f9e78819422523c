"""``radcluster ibsi``: check radcluster's features against IBSI reference values and write the compliance report."""

from __future__ import annotations

import argparse
import logging
import sys


def add_command(subparsers) -> None:
    """Register ``radcluster ibsi`` on ``subparsers``."""
    p = subparsers.add_parser(
        "ibsi",
        help="IBSI compliance report against the IBSI reference values",
        description="Check radcluster's features against IBSI reference values and write the compliance report.",
    )
    _add_arguments(p)
    p.set_defaults(func=_run)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``radcluster ibsi``."""
    parser.add_argument(
        "--reference",
        required=True,
        metavar="DIR",
        help="IBSI reference folder: reference_values/, digital_phantom/ and optionally "
        "ct_phantom/ (the CT part runs when present)",
    )
    parser.add_argument(
        "--out",
        default="docs/ibsi-compliance.md",
        metavar="PATH",
        help="Markdown report to write (default: %(default)s)",
    )
    parser.add_argument("--no-ct", action="store_true", help="skip the CT phantom even when present")


def _run(args: argparse.Namespace) -> int:
    """Run ``radcluster ibsi``: 0 when every mismatch has a documented cause, 1 otherwise."""
    # pyradiomics warns on every deprecated feature enabled and every symmetric GLCM; the
    # report lists what matters, so keep its log to errors while the command runs
    from ..extract import _radiomics  # noqa: F401  (pyradiomics resets its logger's level when imported)
    from ..ibsi.report import write_compliance_report

    radiomics_log = logging.getLogger("radiomics")
    previous = radiomics_log.level
    radiomics_log.setLevel(logging.ERROR)
    try:
        result = write_compliance_report(args.reference, args.out, ct=not args.no_ct)
    finally:
        radiomics_log.setLevel(previous)
    for d in result.datasets:
        line = [d.name]
        for mode, title in (("stock", "stock"), ("ibsi", "IBSI mode")):
            matched, compared, _ = d.counts(mode)
            line.append(f"{title} {matched}/{compared}")
        print(": ".join([line[0], ", ".join(line[1:])]))
    unexplained = result.unexplained()
    for name, mode, c in unexplained:
        print(
            f"unexplained mismatch: {name}, {mode}: {c.tag} = {c.value:.6g}, reference {c.reference:g} "
            f"+/- {c.tolerance:g}",
            file=sys.stderr,
        )
    print(f"wrote {args.out}")
    return 1 if unexplained else 0
