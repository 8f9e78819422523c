"""Atlas masks: every label of one many-label mask, radcluster against pyradiomics' batch CLI.

:func:`radcluster.synth.make_atlas` writes one brain-like volume (default 90x180x150 voxels)
and a mask of ``--labels`` regions (default 100) with its label table. radcluster gets one
manifest row with ``label`` = ``all`` and ``--label-table``; pyradiomics' batch CLI gets one
row per label (column ``Label``), as its users have to write it. Both run with the same
number of workers / jobs and the same params file, timed as whole commands (start-up
included). Target: radcluster >= 5x faster, same features.

Run from the repository root: ``python benchmarks/atlas.py [--help]``.
"""

from __future__ import annotations

import argparse

from _common import (
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

TARGET = 5.0


def run(args: argparse.Namespace) -> None:
    from radcluster.synth import make_atlas

    header("atlas: one many-label mask, radcluster (label=all) vs pyradiomics batch (one row per label)", args)
    params = args.data / "params" / args.params
    with workdir("radcluster-bench-atlas-", args.keep) as folder:
        image, mask, label_table = make_atlas(folder / "atlas", n_labels=args.labels, shape=args.shape, seed=args.seed)
        manifest = write_csv(
            folder / "cases.csv", [{"case_id": "atlas", "image": str(image), "mask": str(mask), "label": "all"}]
        )
        batch = write_csv(
            folder / "batch.csv",
            [
                {"case_id": "atlas", "Image": str(image), "Mask": str(mask), "Label": label}
                for label in range(1, args.labels + 1)
            ],
        )
        warm_cache([image, mask])
        print(
            f"-- atlas {'x'.join(map(str, args.shape))}, {args.labels} labels, {args.params}, "
            f"{args.workers} workers/jobs",
            flush=True,
        )
        pair = versus_pyradiomics(
            folder,
            "atlas",
            manifest,
            batch,
            params,
            workers=args.workers,
            repeat=args.repeat,
            label_table=label_table,
            split_peer=args.split_peer,
        )

    rc, py = pair.radcluster, pair.pyradiomics
    print()
    print(f"Atlas (whole commands, start-up included; best of {args.repeat}; {args.workers} workers / jobs):")
    print(
        table(
            ["tool", "command", "s", "labels/s", "CPU s", "driver CPU s", "load before"],
            [
                [
                    "radcluster",
                    "1 row, label=all, --label-table",
                    f"{rc.wall:.1f}",
                    f"{args.labels / rc.wall:.2f}",
                    f"{rc.cpu:.0f}",
                    f"{rc.driver_cpu:.0f}",
                    f"{rc.load:.2f}",
                ],
                [
                    "pyradiomics",
                    f"{args.labels} rows, column Label",
                    f"{py.wall:.1f}",
                    f"{args.labels / py.wall:.2f}",
                    f"{py.cpu:.0f}",
                    f"{py.driver_cpu:.0f}",
                    f"{py.load:.2f}",
                ],
            ]
            + (
                [
                    [
                        "pyradiomics split",
                        f"{args.workers} x --jobs 1, {args.labels // args.workers} rows each",
                        f"{pair.split.wall:.1f}",
                        f"{args.labels / pair.split.wall:.2f}",
                        f"{pair.split.cpu:.0f}",
                        "-",
                        f"{pair.split.load:.2f}",
                    ]
                ]
                if pair.split is not None
                else []
            ),
        )
    )
    print(f"radcluster run (submit .. matrix built, no process/cluster start-up): {pair.run_seconds:.1f} s")
    print(f"ratio {pair.ratio:.2f}x (target >= {TARGET}x): {verdict(pair.ratio, TARGET)}")
    if pair.split is not None:
        print(
            f"ratio against pyradiomics split (no busy-waiting driver) {pair.split_ratio:.2f}x "
            f"(target >= {TARGET}x): {verdict(pair.split_ratio, TARGET)}"
        )
    print(f"features: {parity(pair.agreement)}")


def parse_args(argv=None) -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--labels", type=int, default=100, help="regions in the atlas mask")
    p.add_argument(
        "--shape", type=int, nargs=3, default=[90, 180, 150], metavar=("X", "Y", "Z"), help="atlas size in voxels"
    )
    p.add_argument("--seed", type=int, default=0, help="make_atlas seed")
    p.add_argument("--params", default="Params.yaml", help="params file in <data>/params")
    add_split_peer_flag(p)
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    main(lambda: run(arguments))
