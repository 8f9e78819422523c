"""Cohort throughput: ``radcluster extract`` against pyradiomics' own batch CLI, same cores.

Cohorts: the five real pyradiomics sample cases (brain1, brain2, breast1, lung1, lung2)
repeated to ``--scans`` scans under unique case ids, and a synthetic CT cohort of
``--synthetic`` scans (:func:`radcluster.synth.make_cohort`, default shape). Each cohort is
extracted with each params file (default ``Params.yaml`` and ``exampleCT.yaml``) by

    radcluster extract cases.csv --params P --out store --workers N --dashboard-address :0
    pyradiomics batch.csv --param P --jobs N -o out.csv -f csv

timed as whole commands. Printed: scans per second of each, their ratio against the target
(>= 4x with Params.yaml, >= 1.5x with exampleCT.yaml) and the largest relative difference
between the two tools' features on the same (case, label) rows.

``--profile`` instead breaks one task (:func:`radcluster.extract.extract_scan`) down into
its stages (read, hash, crop, resample, filters, shape, each texture class, result, write)
on ``--profile-cases`` (default lung1 and lung2) with each params file.

Run from the repository root: ``python benchmarks/extract_throughput.py [--help]``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from _common import (
    REAL_CASES,
    add_split_peer_flag,
    base_parser,
    header,
    main,
    parity,
    table,
    verdict,
    versus_pyradiomics,
    warm_cache,
    workdir,
    write_csv,
)

TARGETS = {"Params.yaml": 4.0, "exampleCT.yaml": 1.5}
# Against pyradiomics without its busy-waiting driver (--split-peer), issue 17's targets.
SPLIT_TARGETS = {"Params.yaml": 5.0, "exampleCT.yaml": 3.0}


def _real_cohort(folder: Path, data: Path, n_scans: int) -> tuple[Path, Path, list[Path]]:
    """The real cases cycled to ``n_scans`` rows (brain1-001, brain2-001, ..., lung2-016)."""
    rows = []
    for i in range(n_scans):
        case = REAL_CASES[i % len(REAL_CASES)]
        rows.append(
            {
                "case_id": f"{case}-{i // len(REAL_CASES) + 1:03d}",
                "image": str(data / f"{case}_image.nrrd"),
                "mask": str(data / f"{case}_label.nrrd"),
            }
        )
    return _manifests(folder / "real", rows)


def _synthetic_cohort(folder: Path, n_scans: int, seed: int) -> tuple[Path, Path, list[Path]]:
    import pandas as pd

    from radcluster.synth import make_cohort

    root = folder / "synthetic"
    manifest = make_cohort(root, n_scans, seed=seed)
    frame = pd.read_csv(manifest, dtype=str)
    rows = [
        {"case_id": r.case_id, "image": str(root / r.image), "mask": str(root / r.mask)} for r in frame.itertuples()
    ]
    return _manifests(root, rows)


def _manifests(folder: Path, rows: list[dict]) -> tuple[Path, Path, list[Path]]:
    """radcluster's manifest and pyradiomics' batch CSV over the same scans."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = write_csv(folder / "cases.csv", rows)
    batch = write_csv(
        folder / "batch.csv", [{"case_id": r["case_id"], "Image": r["image"], "Mask": r["mask"]} for r in rows]
    )
    files = [Path(r[k]) for r in rows for k in ("image", "mask")]
    return manifest, batch, files


def compare_tools(args: argparse.Namespace) -> None:
    header("extract_throughput: radcluster extract vs pyradiomics batch CLI", args)
    params_files = [args.data / "params" / p for p in args.params]
    results = []
    with workdir("radcluster-bench-throughput-", args.keep) as folder:
        cohorts = {}
        if args.scans:
            cohorts[f"real x{args.scans}"] = _real_cohort(folder, args.data, args.scans)
        if args.synthetic:
            cohorts[f"synthetic x{args.synthetic}"] = _synthetic_cohort(folder, args.synthetic, args.seed)
        for name, (manifest, batch, files) in cohorts.items():
            warm_cache(files)
            n = len(files) // 2
            for params in params_files:
                tag = f"{name.split()[0]}-{params.stem}"
                print(f"-- {name}, {params.name}: {n} scans, {args.workers} workers/jobs", flush=True)
                pair = versus_pyradiomics(
                    folder,
                    tag,
                    manifest,
                    batch,
                    params,
                    workers=args.workers,
                    repeat=args.repeat,
                    split_peer=args.split_peer,
                )
                print(f"   features: {parity(pair.agreement)}", flush=True)
                results.append((name, params.name, n, pair))

    print()
    print(
        "Throughput (whole commands, start-up included; best of "
        f"{args.repeat}; {args.workers} worker processes / jobs each):"
    )
    rows = []
    for name, params, n, pair in results:
        target = TARGETS.get(params, math.nan)
        rc, py = pair.radcluster, pair.pyradiomics
        rows.append(
            [
                name,
                params,
                n,
                f"{rc.wall:.1f}",
                f"{n / rc.wall:.2f}",
                f"{py.wall:.1f}",
                f"{n / py.wall:.2f}",
                f"{pair.ratio:.2f}x",
                f">= {target}x",
                verdict(pair.ratio, target) if not math.isnan(target) else "-",
            ]
        )
    print(
        table(
            [
                "cohort",
                "params",
                "scans",
                "radcluster s",
                "scans/s",
                "pyradiomics s",
                "scans/s",
                "ratio",
                "target",
                "verdict",
            ],
            rows,
        )
    )
    if args.split_peer:
        print()
        print(
            f"pyradiomics without its busy-waiting batch driver ({args.workers} x 'pyradiomics --jobs 1' "
            "on slices of the batch CSV, side by side):"
        )
        print(
            table(
                [
                    "cohort",
                    "params",
                    "scans",
                    "radcluster s",
                    "pyradiomics split s",
                    "scans/s",
                    "ratio",
                    "target",
                    "verdict",
                ],
                [
                    [
                        name,
                        params,
                        n,
                        f"{pair.radcluster.wall:.1f}",
                        f"{pair.split.wall:.1f}",
                        f"{n / pair.split.wall:.2f}",
                        f"{pair.split_ratio:.2f}x",
                        f">= {SPLIT_TARGETS.get(params, math.nan)}x",
                        verdict(pair.split_ratio, SPLIT_TARGETS.get(params, math.nan)),
                    ]
                    for name, params, n, pair in results
                ],
            )
        )
    print()
    print(
        "Where the time went (radcluster run = submit .. matrix built, from its run record; "
        "CPU = user+sys of the command and its workers; driver = the command's own process):"
    )
    rows = []
    for name, params, _, pair in results:
        rc, py = pair.radcluster, pair.pyradiomics
        rows.append(
            [
                name,
                params,
                f"{pair.run_seconds:.1f}",
                f"{rc.wall - pair.run_seconds:.1f}",
                f"{rc.cpu:.0f}",
                f"{rc.driver_cpu:.0f}",
                f"{py.cpu:.0f}",
                f"{py.driver_cpu:.0f}",
                f"{rc.load:.2f} / {py.load:.2f}",
            ]
        )
    print(
        table(
            [
                "cohort",
                "params",
                "rc run s",
                "rc start+stop s",
                "rc CPU s",
                "rc driver CPU s",
                "py CPU s",
                "py driver CPU s",
                "load before rc / py",
            ],
            rows,
        )
    )
    print()
    print("Feature agreement (radcluster store vs pyradiomics CSV, rows matched by case id):")
    for name, params, _, pair in results:
        print(f"  {name}, {params}: {parity(pair.agreement)}")


# --- profile of one task ---------------------------------------------------------------------


class _Stages:
    """Exclusive wall time per named stage: time in a wrapped call minus wrapped calls inside it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stack: list[float] = []

    def wrap(self, fn, name: str):
        import functools
        import time

        @functools.wraps(fn)
        def timed(*a, **kw):
            self._stack.append(0.0)
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                elapsed = time.perf_counter() - start
                inner = self._stack.pop()
                self.seconds[name] = self.seconds.get(name, 0.0) + elapsed - inner
                if self._stack:
                    self._stack[-1] += elapsed

        return timed

    def wrap_generator(self, fn, name: str):
        """A filter generator: the work happens in each ``next()``, not in the call."""
        import functools

        timed_next = self.wrap(next, name)

        @functools.wraps(fn)
        def gen(*a, **kw):
            it = fn(*a, **kw)
            while True:
                try:
                    item = timed_next(it)
                except StopIteration:
                    return
                yield item

        return gen


def _instrument(stack, stages: _Stages) -> None:
    """Patch the pipeline steps of one task so each reports its time to ``stages``."""
    from unittest import mock

    import radiomics
    from radiomics import featureextractor, imageoperations
    from scipy import ndimage

    import radcluster.extract as ex
    import radcluster.extract.discretise as discretise
    import radcluster.extract.fast as fast
    import radcluster.extract.readers as readers

    def patch(owner, attr: str, name: str, generator: bool = False) -> None:
        fn = getattr(owner, attr)
        wrapped = stages.wrap_generator(fn, name) if generator else stages.wrap(fn, name)
        stack.enter_context(mock.patch.object(owner, attr, wrapped))

    patch(readers, "_read", "read (SimpleITK; gzip NIfTI: ISA-L)")
    patch(ex, "_content_hash", "hash (xxh3 of decoded voxels)")
    patch(ex, "_check_inputs", "check inputs")
    patch(ndimage, "find_objects", "find labels")
    patch(fast, "_crop", "crop")
    patch(imageoperations, "cropToTumorMask", "crop")
    patch(imageoperations, "resampleImage", "resample (B-spline)")
    patch(imageoperations, "checkMask", "checkMask")
    patch(imageoperations, "normalizeImage", "normalize")
    patch(imageoperations, "resegmentMask", "resegment")
    for name in radiomics.getImageTypes():
        patch(imageoperations, f"get{name}Image", f"filter {name}", generator=True)
    patch(discretise, "discretise", "discretise (once per filtered crop)")
    patch(featureextractor.RadiomicsFeatureExtractor, "computeShape", "shape")
    for cls_name, cls in radiomics.getFeatureClasses().items():
        if cls_name.startswith("shape"):
            patch(cls, "__init__", "shape")
            patch(cls, "execute", "shape")
            continue
        patch(cls, "__init__", f"{cls_name}: features")
        patch(cls, "execute", f"{cls_name}: features")
        patch(cls, "_initCalculation", f"{cls_name}: matrix")


_ORDER = (
    "read",
    "hash",
    "check",
    "find",
    "crop",
    "resample",
    "checkMask",
    "normalize",
    "resegment",
    "filter",
    "discretise",
    "shape",
    "firstorder",
    "glcm",
    "glrlm",
    "glszm",
    "gldm",
    "ngtdm",
)


def _stage_key(name: str) -> tuple[int, str]:
    for i, prefix in enumerate(_ORDER):
        if name.startswith(prefix):
            return i, name
    return len(_ORDER), name


def _profile_one(scan, settings, repeat: int) -> tuple[float, dict[str, float], object]:
    """The least disturbed of ``repeat`` instrumented runs: (total, stages, result)."""
    import contextlib
    import time

    from radcluster.extract import extract_scan

    extract_scan(scan, settings)  # warm: imports, extractor built, files in the page cache
    best = None
    for _ in range(max(1, repeat)):
        stages = _Stages()
        with contextlib.ExitStack() as stack:
            _instrument(stack, stages)
            start = time.perf_counter()
            result = extract_scan(scan, settings)
            total = time.perf_counter() - start
        if result.failures:
            from _common import BenchError

            raise BenchError(f"profile: {scan.case_id} failed: {result.failures}")
        if best is None or total < best[0]:
            best = (total, stages.seconds, result)
    return best


def _client_side(result, folder: Path, rows_per_part: int = 64) -> dict[str, float]:
    """What happens to a task's result after the task: pickled to the client, written to Parquet."""
    import pickle
    import time

    from radcluster import open_store

    start = time.perf_counter()
    blob = pickle.dumps(result)
    pickled = time.perf_counter() - start
    store = open_store(str(folder), must_exist=False)
    rows = [
        dict(r, case_id=f"{r['case_id']}-{i}", run_id="profile", extracted_at="x")
        for i in range(rows_per_part)
        for r in result.rows
    ]
    start = time.perf_counter()
    store.write_part("features", rows, run_id="profile", seq=0, metadata={"features": result.feature_names})
    write = (time.perf_counter() - start) / rows_per_part
    return {
        "pickle result": pickled,
        "write row (Parquet, 1/64 of a 64-row part)": write,
        "result size KiB": len(blob) / 1024,
    }


def _pyradiomics_seconds(image: str, mask: str, params: Path, repeat: int) -> float:
    import time

    from radiomics import featureextractor

    extractor = featureextractor.RadiomicsFeatureExtractor(str(params))
    best = math.inf
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        extractor.execute(image, mask)
        best = min(best, time.perf_counter() - start)
    return best


def profile(args: argparse.Namespace) -> None:
    import cProfile
    import io
    import logging
    import pstats

    from radcluster.cohort import Scan
    from radcluster.extract import ExtractionSettings, extract_scan
    from radcluster.spec import read_params

    header("extract_throughput --profile: where one task's time goes", args)
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    for params_name in args.params:
        params = args.data / "params" / params_name
        text, digest = read_params(params)
        settings = ExtractionSettings(text, digest)
        columns: dict[str, dict[str, float]] = {}
        totals, extras, peers = {}, {}, {}
        for case in args.profile_cases:
            image, mask = str(args.data / f"{case}_image.nrrd"), str(args.data / f"{case}_label.nrrd")
            scan = Scan(case, image, mask)
            total, stages, result = _profile_one(scan, settings, args.repeat)
            stages = dict(stages)
            stages["other (extract_scan itself, sitk.Cast, rows)"] = total - sum(stages.values())
            columns[case], totals[case] = stages, total
            with workdir("radcluster-bench-profile-", keep=False) as folder:
                extras[case] = _client_side(result, folder)
            peers[case] = _pyradiomics_seconds(image, mask, params, args.repeat)
            if args.cprofile:
                prof = cProfile.Profile()
                prof.runcall(extract_scan, scan, settings)
                out = io.StringIO()
                pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.cprofile)
                print(f"-- cProfile, {case}, {params_name}: top {args.cprofile} functions by own time")
                print("\n".join(line for line in out.getvalue().splitlines()[6:] if line.strip()))

        names = sorted({n for c in columns.values() for n in c}, key=_stage_key)
        rows = []
        for n in names:
            row: list[object] = [n]
            for case in args.profile_cases:
                s = columns[case].get(n, 0.0)
                row += [f"{s:.3f}", f"{100 * s / totals[case]:.1f}%"]
            rows.append(row)
        rows.append(["task total (extract_scan)"] + sum(([f"{totals[c]:.3f}", "100%"] for c in args.profile_cases), []))
        rows.append(
            ["pyradiomics execute(), same case"]
            + sum(([f"{peers[c]:.3f}", f"{peers[c] / totals[c]:.2f}x"] for c in args.profile_cases), [])
        )
        for key in ("pickle result", "write row (Parquet, 1/64 of a 64-row part)"):
            rows.append(
                [f"after the task: {key}"]
                + sum(
                    ([f"{extras[c][key]:.4f}", f"{100 * extras[c][key] / totals[c]:.1f}%"] for c in args.profile_cases),
                    [],
                )
            )
        print()
        print(
            f"{params_name}: exclusive seconds per stage, best of {args.repeat} (result "
            + ", ".join(f"{c} {extras[c]['result size KiB']:.0f} KiB" for c in args.profile_cases)
            + ")"
        )
        print(table(["stage"] + sum(([f"{c} s", "share"] for c in args.profile_cases), []), rows))


def parse_args(argv=None) -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--scans", type=int, default=80, help="real-case scans (the 5 cases repeated; 0: skip)")
    p.add_argument("--synthetic", type=int, default=80, help="synthetic scans (make_cohort; 0: skip)")
    p.add_argument("--seed", type=int, default=0, help="make_cohort seed")
    p.add_argument(
        "--params", nargs="+", default=["Params.yaml", "exampleCT.yaml"], help="params files in <data>/params"
    )
    add_split_peer_flag(p)
    p.add_argument("--profile", action="store_true", help="profile one task per case instead of comparing tools")
    p.add_argument("--profile-cases", nargs="+", default=["lung1", "lung2"], help="cases for --profile")
    p.add_argument(
        "--cprofile",
        type=int,
        default=0,
        metavar="N",
        help="with --profile, also print cProfile's top N functions by own time",
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    main(lambda: profile(arguments) if arguments.profile else compare_tools(arguments))
