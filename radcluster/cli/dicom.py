"""``radcluster cohort`` for DICOM: scan a DICOM tree, list ROIs, build an IDC manifest."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .common import EXIT_INVALID, EXIT_OK

__all__ = ["add_arguments", "add_commands", "scan_dicom_tree", "dask_mapper"]


def add_arguments(scan: argparse.ArgumentParser) -> None:
    """The DICOM options of ``cohort scan`` (used when the folder holds DICOM files)."""
    scan.add_argument(
        "--roi",
        help="DICOM: ROIs to extract: names, re:REGEX, #NUMBER, each optionally =LABEL_NAME, separated by ';' "
        "(default: every ROI)",
    )
    scan.add_argument("--aliases", help="DICOM: CSV/TSV with columns alias,name giving ROIs a common label name")
    scan.add_argument("--workers", type=int, default=1, help="DICOM: processes reading headers (large trees)")
    scan.add_argument(
        "--scheduler-address",
        help="DICOM: read the headers on this Dask cluster's workers (a tree where the workers are)",
    )


def add_commands(cohort: argparse._SubParsersAction) -> None:
    p = cohort.add_parser("rois", help="list the ROI/segment names of a DICOM manifest's RTSTRUCTs and SEGs")
    p.add_argument("manifest")
    p.add_argument("--aliases", help="CSV/TSV with columns alias,name: show each ROI's label name")
    p.set_defaults(func=cmd_cohort_rois)

    p = cohort.add_parser("idc", help="build a manifest of Imaging Data Commons series (offline index)")
    p.add_argument("--collection", required=True, help="IDC collection id, e.g. nsclc_radiomics")
    p.add_argument("--modality", default="CT")
    p.add_argument("--with", dest="segmentation", choices=("seg", "rtstruct"), default="seg")
    p.add_argument("--analysis-results", action="store_true", help="also segmentations IDC holds as analysis results")
    p.add_argument("--study", action="append", help="only this StudyInstanceUID (repeatable)")
    p.add_argument(
        "--offline",
        action="store_true",
        help="do not read segmentation headers from the bucket to pair studies with several image series",
    )
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_cohort_idc)


def _problems(problems) -> None:
    for problem in problems:
        print(f"skipped {problem.file}: {problem.reason}", file=sys.stderr)


def scan_dicom_tree(args: argparse.Namespace) -> int:
    from ..cohort.dicom import read_aliases, scan_dicom

    aliases = read_aliases(args.aliases)
    out = Path(args.output)
    if args.scheduler_address:
        from distributed import Client

        with Client(args.scheduler_address) as client:
            tree = scan_dicom(args.folder, roi=args.roi, aliases=aliases, mapper=dask_mapper(client))
    elif args.workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.workers) as pool:
            tree = scan_dicom(args.folder, roi=args.roi, aliases=aliases, mapper=pool.map)
    else:
        tree = scan_dicom(args.folder, roi=args.roi, aliases=aliases)
    frame = tree.manifest
    root = Path(args.folder).resolve()
    # Paths relative to the manifest's own folder, as the manifest reader expects.
    for col in ("image", "mask"):
        frame[col] = [os.path.relpath(root / p, out.resolve().parent) for p in frame[col]]
    _problems(tree.problems)
    frame.to_csv(out, index=False)
    print(f"found {tree.summary()}")
    print(f"wrote {out}: {len(frame)} case(s)")
    return EXIT_OK


def dask_mapper(client):
    """``map`` over a Dask cluster: each chunk of files is read on a worker, results in order."""

    def mapper(function, chunks):
        return client.gather(client.map(function, list(chunks), pure=False))

    return mapper


def cmd_cohort_rois(args: argparse.Namespace) -> int:
    from ..cohort import read_manifest
    from ..cohort.dicom import read_aliases, roi_table

    cohort = read_manifest(args.manifest)
    table, problems = roi_table(cohort.scans, read_aliases(args.aliases))
    _problems(problems)
    if table.empty:
        print("no DICOM segmentation in this manifest")
        return EXIT_INVALID
    print(table.to_string(index=False))
    return EXIT_OK


def cmd_cohort_idc(args: argparse.Namespace) -> int:
    from ..cohort.idc import idc_manifest

    frame, problems = idc_manifest(
        args.collection,
        modality=args.modality,
        segmentation=args.segmentation,
        analysis_results=args.analysis_results,
        studies=args.study,
        resolve=not args.offline,
    )
    _problems(problems)
    frame.to_csv(args.output, index=False)
    print(f"wrote {args.output}: {len(frame)} case(s), {len(problems)} segmentation(s) skipped")
    return EXIT_OK if len(frame) else EXIT_INVALID
