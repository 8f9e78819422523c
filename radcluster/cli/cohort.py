"""``radcluster cohort scan|check``: a manifest from a folder (or a DICOM tree: :mod:`.dicom`), and every
problem of its cases before a run."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from . import dicom
from .common import EXIT_INVALID, EXIT_OK


def cmd_cohort_scan(args: argparse.Namespace) -> int:
    from ..cohort.dicom import is_dicom_tree
    from ..cohort.discover import scan_directory

    if is_dicom_tree(args.folder):
        return dicom.scan_dicom_tree(args)
    frame = scan_directory(args.folder)
    out = Path(args.output)
    root = Path(args.folder).resolve()
    # Paths relative to the manifest's own folder, as the manifest reader expects.
    for col in ("image", "mask"):
        frame[col] = [os.path.relpath(root / p, out.resolve().parent) for p in frame[col]]
    frame.to_csv(out, index=False)
    print(f"wrote {out}: {len(frame)} case(s)")
    return EXIT_OK


def cmd_cohort_check(args: argparse.Namespace) -> int:
    from ..cohort import read_manifest
    from ..cohort.check import check_cohort

    cohort = read_manifest(args.manifest)
    notes: list[str] = []
    problems = check_cohort(cohort, tolerance=args.tolerance, check_labels=not args.headers_only, notes=notes)
    for line in notes:
        print(f"note: {line}")
    for p in problems:
        print(f"case {p.case_id!r}: {p.file}: {p.reason}")
    print(f"{len(cohort)} case(s) checked, {len({p.case_id for p in problems})} with problems")
    return EXIT_INVALID if problems else EXIT_OK


def add_commands(subparsers) -> None:
    """Register ``cohort scan`` and ``cohort check`` on ``subparsers``."""
    cohort = subparsers.add_parser("cohort", help="build or check a manifest").add_subparsers(
        dest="cohort_cmd", required=True
    )
    p = cohort.add_parser("scan", help="build a manifest from a folder of images and masks, or a DICOM tree")
    p.add_argument("folder")
    p.add_argument("-o", "--output", required=True)
    dicom.add_arguments(p)
    p.set_defaults(func=cmd_cohort_scan)
    dicom.add_commands(cohort)
    p = cohort.add_parser("check", help="check every case of a manifest before running it")
    p.add_argument("manifest")
    p.add_argument("--tolerance", type=float, default=1e-6, help="geometry tolerance (ITK's rule)")
    p.add_argument(
        "--headers-only",
        action="store_true",
        help="read only file headers: skip the voxel checks (labels, NaN/inf, truncation)",
    )
    p.set_defaults(func=cmd_cohort_check)
