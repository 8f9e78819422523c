"""``radcluster store info|compact``, ``failures`` and ``export``: what a feature store holds, merging its
part files, its failed scans, its features as a table."""

from __future__ import annotations

import argparse

from .common import EXIT_FAILURES, EXIT_OK


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def cmd_store_info(args: argparse.Namespace) -> int:
    from ..store import open_store

    info = open_store(args.store).info()
    print(f"store     {info['store']}")
    print(f"params    {info['params_hash'] or '-'}")
    print(f"rows      {info['current_rows']} current ({info['cases']} case(s)), {info['rows']} stored in all")
    print(
        f"matrix    {info['matrix_current_rows']} current of {info['matrix_rows']} row(s) x {info['features']} features"
    )
    for table, t in info["tables"].items():
        parts = f" ({t['compacted']} compacted, generation {t['generation']})" if "generation" in t else ""
        print(f"{table:9s} {t['parts']} part file(s), {t['rows']} row(s), {_size(t['bytes'])}{parts}")
    for source, s in (info["stability"] or {}).items():
        low, high = s["scans"]
        bands = ", ".join(f"{band}: {count}" for band, count in s["icc"].items())
        scans = f"{low}" if low == high else f"{low}-{high}"
        print(
            f"  {source}: ICC of {s['features']} feature(s) over {scans} scan(s), {s['k']} measurements each; {bands}"
        )
    print(f"failed    {info['failed_cases']} case(s)")
    print(f"runs      {info['runs']}")
    return EXIT_OK


def cmd_store_compact(args: argparse.Namespace) -> int:
    from ..store import open_store

    result = open_store(args.store).compact(target_bytes=int(args.target_mb * 2**20), min_parts=2)
    for table, (before, after) in result.items():
        print(f"{table}: {before} -> {after} part file(s)")
    return EXIT_OK


def cmd_failures(args: argparse.Namespace) -> int:
    from ..store import open_store

    fails = open_store(args.store).failures()
    if fails.empty:
        print("no failures")
        return EXIT_OK
    for rec in fails.itertuples():
        print(f"{rec.case_id}\t{rec.stage}\t{rec.error_type}\t{rec.message}")
    return EXIT_FAILURES


def cmd_export(args: argparse.Namespace) -> int:
    from ..store import open_store

    frame = open_store(args.store).features()
    if args.names == "ibsi":
        import yaml

        from ..ibsi.names import aggregation_from_settings, to_ibsi_names

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


def add_commands(subparsers) -> None:
    """Register ``store info|compact``, ``failures`` and ``export`` on ``subparsers``."""
    store = subparsers.add_parser("store", help="inspect or compact a feature store").add_subparsers(
        dest="store_cmd", required=True
    )
    p = store.add_parser("info", help="params, rows, matrix, failures, runs; rows, part files and sizes of every table")
    p.add_argument("store", help="store folder or URL")
    p.set_defaults(func=cmd_store_info)
    p = store.add_parser(
        "compact",
        help="merge small part files into large ones (atomic: a reader never sees a row twice or not at all)",
    )
    p.add_argument("store", help="store folder or URL")
    p.add_argument("--target-mb", type=float, default=64, help="size of a merged part file (default 64 MiB)")
    p.set_defaults(func=cmd_store_compact)

    p = subparsers.add_parser("failures", help="list the failed scans of a store")
    p.add_argument("store")
    p.set_defaults(func=cmd_failures)

    p = subparsers.add_parser("export", help="write a store's current features as CSV or Parquet")
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
