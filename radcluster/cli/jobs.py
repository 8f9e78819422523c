"""``radcluster extract``, ``run``, ``retrain`` and ``demo``: each builds or reads a job and runs it."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import EXIT_FAILURES, EXIT_OK, add_cluster_flags, cluster_overrides, print_dashboard, progress, run


def cmd_extract(args: argparse.Namespace) -> int:
    from ..spec import build_job

    overrides = {
        "kind": "extract",
        "manifest": str(Path(args.manifest).absolute()) if "://" not in args.manifest else args.manifest,
        "store": args.out,
        "extraction.params": args.params,
        "extraction.label_table": args.label_table,
        "extraction.fast": False if args.plain else None,
        "extraction.ibsi": args.ibsi,
        **cluster_overrides(args),
    }
    return run(build_job({}, overrides=overrides, source="(command line)"))


def cmd_run(args: argparse.Namespace) -> int:
    from ..spec import load_job

    job = load_job(args.job, overrides=cluster_overrides(args))
    if args.dry_run:
        from ..jobs import dry_run

        print(dry_run(job))
        return EXIT_OK
    return run(job)


def cmd_retrain(args: argparse.Namespace) -> int:
    from ..spec import load_job

    return run(load_job(args.job, overrides={"kind": "retrain", **cluster_overrides(args)}))


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    out = Path(args.out).absolute()
    result = run_demo(
        out,
        n_cases=args.cases,
        seed=args.seed,
        cluster=cluster_overrides(args),
        progress=progress,
        on_dashboard=print_dashboard,
    )
    print(result.text())
    return EXIT_OK if result.ok else EXIT_FAILURES


def _ibsi_arg(value: str):
    return value.upper()


def add_commands(subparsers) -> None:
    """Register ``extract``, ``run``, ``retrain`` and ``demo`` on ``subparsers``."""
    p = subparsers.add_parser("extract", help="extract features of every scan of a manifest into a store")
    p.add_argument("manifest", help="CSV/Parquet manifest: case_id, image, mask[, label, patient_id, ...]")
    p.add_argument("--params", help="pyradiomics params YAML (default: the packaged Params.yaml settings)")
    p.add_argument("--out", "-o", required=True, help="store folder or URL")
    p.add_argument("--label-table", help="CSV/TSV of label value -> region name (atlas masks)")
    p.add_argument(
        "--plain", action="store_true", help="call pyradiomics' execute() per label instead of the fast path"
    )
    p.add_argument(
        "--ibsi",
        nargs="?",
        const=True,
        choices=[True, "A", "B", "C", "D", "E"],
        type=_ibsi_arg,
        help="IBSI mode (IBSI binning, resampling grid, resegmentation); optionally an IBSI 1 "
        "configuration A-E instead of the params file's settings",
    )
    add_cluster_flags(p)
    p.set_defaults(func=cmd_extract)

    p = subparsers.add_parser("run", help="run a job spec (jobs/*.yaml)")
    p.add_argument("job")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be started and submitted (worker job script, DaskJob, plan) and stop",
    )
    add_cluster_flags(p)
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("retrain", help="extract what is new, train a challenger, promote it if not worse")
    p.add_argument("job", help="job spec (jobs/retrain.yaml)")
    add_cluster_flags(p)
    p.set_defaults(func=cmd_retrain)

    p = subparsers.add_parser("demo", help="generate a demo cohort (synthetic + real samples), extract it, train")
    p.add_argument("--out", default="radcluster-demo", help="folder for the cohort, the store and the models")
    p.add_argument("--cases", type=int, default=60, help="synthetic cases")
    p.add_argument("--seed", type=int, default=0)
    add_cluster_flags(p)
    p.set_defaults(func=cmd_demo)
