"""The ``radcluster`` command: the parser, logging set-up, and the error -> exit code mapping.

Thin by design: every sub-command parses its flags into a job spec or calls one library
function, and prints what happened. One module per command group: :mod:`.jobs` (extract,
run, retrain, demo), :mod:`.cohort` (cohort scan, check), :mod:`.store` (store info, compact,
failures, export), :mod:`.models` (train, predict, report, models), :mod:`.ibsi`;
:mod:`.common` holds what they share. This is the only package that configures logging.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from ..errors import RadclusterError
from . import cohort, ibsi, jobs, models, screen, store
from .common import EXIT_OK, exit_code

__all__ = ["main", "build_parser"]


def cmd_config_defaults(args: argparse.Namespace) -> int:
    from ..spec import defaults_yaml

    print(defaults_yaml())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="radcluster",
        description="Extract radiomics features of a cohort of scans into a feature store on a Dask cluster, "
        "and train, compare and apply models on it.",
    )
    parser.add_argument("--version", action="version", version=f"radcluster {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True)
    jobs.add_commands(sub)
    cohort.add_commands(sub)
    store.add_commands(sub)
    ibsi.add_command(sub)
    models.add_commands(sub)
    screen.add_commands(sub)
    config = sub.add_parser("config", help="job spec defaults").add_subparsers(dest="config_cmd", required=True)
    p = config.add_parser("defaults", help="print every job key with its default and meaning")
    p.set_defaults(func=cmd_config_defaults)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Dask logs every worker start and stop at INFO: that is for -v. Dask reads DASK_LOGGING__*
    # at import in this process and in every worker process it starts (they inherit the
    # environment), so this quiets the workers too.
    os.environ.setdefault(
        "DASK_LOGGING__DISTRIBUTED", logging.getLevelName(level if args.verbose >= 2 else logging.WARNING).lower()
    )
    if args.verbose:
        # pyradiomics' own log, printed by every worker. Without -v its warnings still reach
        # the user: each scan returns them and the run logs each distinct one once (a mere
        # note on the params, extract._radiomics.PARAMS_NOTES, at INFO: with -v).
        os.environ.setdefault("DASK_LOGGING__RADIOMICS", logging.getLevelName(level).lower())
    try:
        return args.func(args)
    except RadclusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return exit_code(err)
    except KeyboardInterrupt:
        print("interrupted: finished scans are in the store; run the same command again to go on", file=sys.stderr)
        return 130
