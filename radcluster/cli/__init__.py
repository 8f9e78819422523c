"""The ``radcluster`` command: argument parsing, logging set-up, progress display.

Thin by design: every sub-command parses its flags into a job spec or calls one library
function, and prints what happened. This is the only module that configures logging.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from ..cluster.local import prestart_local_workers
from ..errors import RadclusterError
from . import dicom as cli_dicom
from .common import EXIT_FAILURES, EXIT_INVALID, EXIT_OK, EXIT_RUNTIME
from .common import add_cluster_flags as _add_cluster_flags
from .common import cluster_overrides as _cluster_overrides
from .common import print_dashboard as _print_dashboard

logger = logging.getLogger("radcluster")


def _progress(iterator, total: int):
    from tqdm import tqdm

    return tqdm(
        iterator, total=total, unit="scan", file=sys.stderr, dynamic_ncols=True, disable=None
    )  # disable=None: a bar on a terminal, nothing in CI logs


def _run_extraction(job) -> int:
    from ..jobs.extract import extract_job

    prestart_local_workers(job)
    summary = extract_job(job, progress=_progress, on_dashboard=_print_dashboard)
    print(summary.text())
    return EXIT_OK if summary.ok else EXIT_FAILURES


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
    }
    overrides.update(_cluster_overrides(args))
    job = build_job({}, overrides=overrides, source="command line")
    return _run_extraction(job)


def cmd_run(args: argparse.Namespace) -> int:
    from ..spec import load_job

    job = load_job(args.job, overrides=_cluster_overrides(args))
    if job.kind == "extract":
        return _run_extraction(job)
    if job.kind == "train":
        from .models import run_train

        return run_train(job)
    if job.kind == "retrain":
        return _retrain(job)
    from .models import run_predict  # the spec admits no other kind than predict here

    return run_predict(job)


def _retrain(job) -> int:
    from ..jobs.retrain import retrain_job

    prestart_local_workers(job)
    print(retrain_job(job, on_dashboard=_print_dashboard).text())
    return EXIT_OK


def cmd_retrain(args: argparse.Namespace) -> int:
    from ..spec import load_job

    job = load_job(args.job, overrides={"kind": "retrain", **_cluster_overrides(args)})
    return _retrain(job)


def cmd_cohort_scan(args: argparse.Namespace) -> int:
    from ..cohort.dicom import is_dicom_tree
    from ..cohort.discover import scan_directory

    if is_dicom_tree(args.folder):
        return cli_dicom.scan_dicom_tree(args)
    frame = scan_directory(args.folder)
    out = Path(args.output)
    root = Path(args.folder).resolve()
    # Paths relative to the manifest's own folder, as the manifest reader expects.
    for col in ("image", "mask"):
        frame[col] = [str(Path(_rel(root / p, out.resolve().parent))) for p in frame[col]]
    frame.to_csv(out, index=False)
    print(f"wrote {out}: {len(frame)} case(s)")
    return EXIT_OK


def _rel(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path, start)


def cmd_cohort_check(args: argparse.Namespace) -> int:
    from ..cohort import read_manifest
    from ..cohort.check import check_cohort

    cohort = read_manifest(args.manifest)
    notes: list[str] = []
    problems = check_cohort(cohort, tolerance=args.tolerance, check_labels=not args.headers_only, notes=notes)
    for line in notes:
        print(f"note: {line}")
    for line in problems:
        print(line)
    bad = {line.split("'")[1] for line in problems if line.startswith("case '")}
    print(f"{len(cohort)} case(s) checked, {len(bad)} with problems")
    return EXIT_INVALID if problems else EXIT_OK


def cmd_failures(args: argparse.Namespace) -> int:
    from ..store import open_store

    fails = open_store(args.store).failures()
    if fails.empty:
        print("no failures")
        return EXIT_OK
    for rec in fails.itertuples():
        print(f"{rec.case_id}\t{rec.stage}\t{rec.error_type}\t{rec.message}")
    return EXIT_FAILURES


def cmd_demo(args: argparse.Namespace) -> int:
    from ..cluster import connect, dashboard_link
    from ..demo import prepare_demo
    from ..jobs.extract import extract_job
    from ..jobs.train import demo_train
    from ..spec import build_job

    out = Path(args.out).absolute()
    manifest = prepare_demo(out, n_cases=args.cases, seed=args.seed)
    print(f"demo cohort: {manifest}")
    overrides = {"kind": "extract", "manifest": str(manifest), "store": str(out / "store"), **_cluster_overrides(args)}
    job = build_job({}, overrides=overrides, source="demo")
    prestart_local_workers(job)
    # one cluster for the whole pipeline: extraction, then training on the same workers
    with connect(job.cluster) as client:
        _print_dashboard(dashboard_link(client))
        summary = extract_job(job, progress=_progress, client=client)
        print(summary.text())
        version, auc, report = demo_train(str(out / "store"), str(out / "models"), client)
    print(f"model:    {version}")
    print(f"cross-validated ROC AUC (xgboost on the synthetic outcome): {auc:.3f}")
    if report is not None:
        print(f"report:   {report}")
    print(
        'open the store: python -c "import radcluster; print(radcluster.open_store('
        f"'{out / 'store'}').features().head())\""
    )
    return EXIT_OK if summary.ok else EXIT_FAILURES


def _ibsi_arg(value: str):
    return value.upper()


def cmd_export(args: argparse.Namespace) -> int:
    from ..store import open_store

    frame = open_store(args.store).features()
    if args.names == "ibsi":
        from ..ibsi import aggregation_from_settings, to_ibsi_names

        runs = open_store(args.store).runs()
        params = yaml.safe_load(runs[-1]["params"]) if runs else {}
        aggregation = aggregation_from_settings((params or {}).get("setting") or {})
        frame = to_ibsi_names(frame, aggregation=aggregation, unmapped="keep" if args.keep_unmapped else "drop")
    out = args.output
    if out.endswith(".parquet"):
        frame.to_parquet(out, index=False)
    else:
        frame.to_csv(out, index=False)
    print(f"wrote {out}: {len(frame)} row(s), {frame.shape[1]} column(s)")
    return EXIT_OK


def cmd_config_defaults(args: argparse.Namespace) -> int:
    from ..spec import defaults_yaml

    print(defaults_yaml())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="radcluster", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"radcluster {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extract", help="extract features of every scan of a manifest into a store")
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
    _add_cluster_flags(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("run", help="run a job spec (jobs/*.yaml)")
    p.add_argument("job")
    _add_cluster_flags(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("retrain", help="extract what is new, train a challenger, promote it if not worse")
    p.add_argument("job", help="job spec (jobs/retrain.yaml)")
    _add_cluster_flags(p)
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("demo", help="generate a demo cohort (synthetic + real samples) and extract it")
    p.add_argument("--out", default="radcluster-demo", help="folder for the cohort and the store")
    p.add_argument("--cases", type=int, default=60, help="synthetic cases")
    p.add_argument("--seed", type=int, default=0)
    _add_cluster_flags(p)
    p.set_defaults(func=cmd_demo)

    cohort = sub.add_parser("cohort", help="build or check a manifest").add_subparsers(dest="cohort_cmd", required=True)
    p = cohort.add_parser("scan", help="build a manifest from a folder of images and masks, or a DICOM tree")
    p.add_argument("folder")
    p.add_argument("-o", "--output", required=True)
    cli_dicom.add_arguments(p)
    p.set_defaults(func=cmd_cohort_scan)
    cli_dicom.add_commands(cohort)
    p = cohort.add_parser("check", help="check every case of a manifest before running it")
    p.add_argument("manifest")
    p.add_argument("--tolerance", type=float, default=1e-6, help="geometry tolerance (ITK's rule)")
    p.add_argument(
        "--headers-only",
        action="store_true",
        help="read only file headers: skip the voxel checks (labels, NaN/inf, truncation)",
    )
    p.set_defaults(func=cmd_cohort_check)

    p = sub.add_parser("failures", help="list the failed scans of a store")
    p.add_argument("store")
    p.set_defaults(func=cmd_failures)

    p = sub.add_parser("export", help="write a store's current features as CSV or Parquet")
    p.add_argument("store")
    p.add_argument("-o", "--output", required=True, help="file.csv or file.parquet")
    p.add_argument(
        "--names",
        choices=["pyradiomics", "ibsi"],
        default="pyradiomics",
        help="column names: pyradiomics' or IBSI feature tags (kurtosis as excess kurtosis)",
    )
    p.add_argument("--keep-unmapped", action="store_true", help="with --names ibsi: keep features IBSI lacks")
    p.set_defaults(func=cmd_export)

    from .. import ibsi

    p = sub.add_parser("ibsi", help="IBSI compliance report against the IBSI reference values")
    ibsi.add_arguments(p)
    p.set_defaults(func=ibsi.run)

    from . import models, store

    models.add_commands(sub)
    store.add_commands(sub)

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
        # the user: each scan returns them and the run logs each distinct one once.
        os.environ.setdefault("DASK_LOGGING__RADIOMICS", logging.getLevelName(level).lower())
    from ..errors import ClusterError, ManifestError, SpecError, StoreError

    try:
        return args.func(args)
    except (SpecError, ManifestError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    except (ClusterError, StoreError, RadclusterError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        print("interrupted: finished scans are in the store; run the same command again to go on", file=sys.stderr)
        return 130
