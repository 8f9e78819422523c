"""The ``train``, ``predict``, ``report`` and ``models`` sub-commands.

:func:`add_commands` registers them on the sub-parsers of ``radcluster``'s parser
(:func:`radcluster.cli.build_parser`). Each handler parses its flags into a job spec or calls
one library function and prints what happened; errors propagate to ``cli.main``, which maps
them to exit codes (:data:`radcluster.cli.common.EXIT_CODES`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..registry import DEFAULT_REGISTRY
from .common import EXIT_OK, fmt_score, run
from .common import add_cluster_flags as _add_cluster_flags
from .common import cluster_overrides as _cluster_overrides

__all__ = ["add_commands"]


def _abs(path: str | None) -> str | None:
    if path is None or "://" in path:
        return path
    return str(Path(path).absolute())


def _build(args: argparse.Namespace, kind: str, overrides: dict[str, Any]):
    from ..spec import build_job, load_job

    overrides = {"kind": kind, **overrides, **_cluster_overrides(args)}
    if getattr(args, "config", None):
        return load_job(args.config, overrides=overrides)
    return build_job({}, overrides=overrides, source="(command line)")


# --- train -----------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    flags = {
        "train.target": args.target,
        "train.model": args.model,
        "train.task": args.task,
        "train.event": args.event,
        "train.clinical": _abs(args.clinical),
        "train.labels": "pivot" if args.pivot_labels else None,
        "train.cv.folds": args.folds,
        "train.cv.test_fraction": args.test_fraction,
        "train.cv.seed": args.seed,
        "train.preprocess.combat": args.combat,
        "train.preprocess.pca": args.pca,
        "train.shuffle_target": True if args.shuffle_target else None,
        "train.features": args.features.split(",") if args.features else None,
        "train.report": False if args.no_report else None,
    }
    return run(_build(args, "train", {"store": _abs(args.store), "registry": _abs(args.registry), **flags}))


# --- predict ---------------------------------------------------------------------------------
def cmd_predict(args: argparse.Namespace) -> int:
    job = _build(
        args,
        "predict",
        {"store": _abs(args.store), "predict.version": _abs(args.version), "predict.output": _abs(args.output)},
    )
    from ..jobs.predict import predict_job

    trust = tuple(args.trust or ())
    print(predict_job(job, clinical=_abs(args.clinical), trust=trust, use_cluster=not args.no_cluster).text())
    return EXIT_OK


# --- report, models --------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    from ..registry.versions import read_meta, verify
    from ..report import write_report

    meta = read_meta(args.version)
    verify(args.version, meta)
    out = write_report(args.version, args.output, meta=meta)
    print(f"wrote {out}")
    return EXIT_OK


def cmd_models_list(args: argparse.Namespace) -> int:
    from ..registry.versions import list_versions
    from ..spec import from_environment

    registry = args.registry or from_environment("registry") or DEFAULT_REGISTRY
    versions = list_versions(registry)
    if not versions:
        print(f"no model versions in {registry}")
        return EXIT_OK
    header = ("version", "model", "task", "target", "rows", "metric", "cv [95% CI]", "test")
    lines = [header]
    for m in versions:
        main = m.get("main_metric", "")
        cv = (m.get("metrics") or {}).get("cv") or (m.get("metrics") or {}).get("train") or {}
        test = (m.get("metrics") or {}).get("test") or {}
        ci = cv.get(f"{main}_ci") or [None, None]
        ci_txt = f" [{fmt_score(ci[0])}, {fmt_score(ci[1])}]" if ci[0] is not None else ""
        lines.append(
            (
                m["version"],
                m.get("model", ""),
                m.get("task", ""),
                str(m.get("target") or "-"),
                str(m.get("n_rows", "")),
                main,
                f"{fmt_score(cv.get(main))}{ci_txt}",
                fmt_score(test.get(main)),
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    for row in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def add_commands(subparsers) -> None:
    """Register ``train``, ``predict``, ``report`` and ``models`` on ``subparsers``."""
    p = subparsers.add_parser(
        "train",
        help="train a model on a store and register a new version",
        description="Cross-validate, fit and register a model; flags override the --config job's train section.",
    )
    p.add_argument("store", help="feature store folder or URL")
    p.add_argument("--config", help="job YAML (kind: train) whose 'train' section configures training")
    p.add_argument("--target", help="target column (carried in the store or in --clinical)")
    p.add_argument(
        "--registry", "-r", help=f"model registry folder or URL (default: the job's, else ./{DEFAULT_REGISTRY})"
    )
    # The registered models are listed by `config defaults`: reading the registry here would
    # import scikit-learn into every command's start.
    p.add_argument("--model", help="a registered model (default xgboost; `radcluster config defaults` lists them)")
    p.add_argument("--task", choices=["auto", "binary", "multiclass", "regression", "survival", "clustering"])
    p.add_argument("--event", help="survival: event column (--target is then the time column)")
    p.add_argument("--clinical", help="CSV/Parquet keyed by case_id holding the target columns")
    p.add_argument("--pivot-labels", action="store_true", help="multi-label store: one row per case")
    p.add_argument("--folds", type=int, help="cross-validation folds (0: none)")
    p.add_argument("--test-fraction", type=float, help="held-out test share of patients")
    p.add_argument("--pca", help="components (int), explained-variance share (e.g. 0.95) or 'none'")
    p.add_argument("--combat", help="ComBat-harmonise by this batch column (e.g. site)")
    p.add_argument(
        "--features",
        metavar="KINDS",
        help="feature kinds to train on: radiomics, deep or radiomics,deep (default: all)",
    )
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--shuffle-target",
        action="store_true",
        help="leak check: permute the target across patients (expect chance-level metrics)",
    )
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    _add_cluster_flags(p)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("predict", help="apply a model version to a store, write Parquet")
    p.add_argument("version", help="model version folder or URL (models/<version>)")
    p.add_argument("store", help="feature store with the same features")
    p.add_argument("-o", "--output", required=True, help="predictions Parquet file")
    p.add_argument("--clinical", help="CSV/Parquet keyed by case_id (e.g. the ComBat batch column)")
    p.add_argument(
        "--trust",
        action="append",
        metavar="TYPE",
        help="opt in to loading this extra type from a scikit-learn model file (repeatable)",
    )
    p.add_argument("--no-cluster", action="store_true", help="predict in this process (threads), no cluster")
    _add_cluster_flags(p)
    p.set_defaults(func=cmd_predict)

    p = subparsers.add_parser("report", help="(re)write a model version's report.html")
    p.add_argument("version", help="model version folder or URL")
    p.add_argument("-o", "--output", help="HTML file or URL (default: <version>/report.html)")
    p.set_defaults(func=cmd_report)

    models = subparsers.add_parser("models", help="the model registry").add_subparsers(dest="models_cmd", required=True)
    p = models.add_parser("list", help="list the versions of a registry with their metrics")
    p.add_argument(
        "registry",
        nargs="?",
        help=f"registry folder or URL (default: $RADCLUSTER_REGISTRY, else ./{DEFAULT_REGISTRY})",
    )
    p.set_defaults(func=cmd_models_list)
