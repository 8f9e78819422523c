"""One big CT: a synthetic 512 x 512 x 300 scan with a 50 cm3 lesion, radcluster against pyradiomics.

A cohort of one scan cannot be spread over workers scan by scan, so this measures what a task
costs on a full-size CT (reading 150 MB of voxels, finding a small lesion in it, resampling
and filtering around it) and whether a lone scan keeps the second worker busy. The scan is
written by :func:`make_big_ct` (gzip-compressed NIfTI, int16 HU, 0.75 x 0.75 x 1.5 mm: a
body, two lungs, noise, and a textured spherical lesion in the right lung). Both tools get
the same file and params (default ``exampleCT.yaml``: resampling to 1 mm, LoG with five
sigmas, wavelet) on ``--workers`` cores, timed as whole commands. Target: radcluster >= 2x
faster than pyradiomics without its busy-waiting driver (``--split-peer``), same features.

Run from the repository root: ``python benchmarks/big_scan.py [--help]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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

TARGET = 2.0


def make_big_ct(
    folder: Path,
    *,
    shape: tuple[int, int, int] = (512, 512, 300),
    spacing: tuple[float, float, float] = (0.75, 0.75, 1.5),
    lesion_cm3: float = 50.0,
    seed: int = 0,
) -> tuple[Path, Path, float]:
    """Write ``big_image.nii.gz`` and ``big_mask.nii.gz`` (label 1); return them and the lesion's cm3.

    ``shape`` and ``spacing`` are (x, y, z). The lesion is a sphere of ``lesion_cm3`` (to the
    voxel) centred in the right lung, with smooth random texture around 30 HU.
    """
    import numpy as np
    import SimpleITK as sitk
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    dx, dy, dz = spacing
    y_mm = (np.arange(ny) - (ny - 1) / 2)[:, None] * dy
    x_mm = (np.arange(nx) - (nx - 1) / 2)[None, :] * dx
    body = (x_mm / 170.0) ** 2 + (y_mm / 120.0) ** 2 <= 1
    lungs = ((np.abs(x_mm) - 75.0) / 55.0) ** 2 + (y_mm / 80.0) ** 2 <= 1
    hu = np.full((nz, ny, nx), -1000, dtype=np.int16)
    hu[:, body] = 40
    hu[:, lungs] = -850
    hu += rng.normal(0.0, 20.0, hu.shape).astype(np.int16)

    radius = (3 * lesion_cm3 * 1000 / (4 * np.pi)) ** (1 / 3)
    step = np.array([dz, dy, dx])
    centre = np.array([(nz - 1) / 2, (ny - 1) / 2, (nx - 1) / 2 + 0.2 * nx])  # (z, y, x); 77 mm right at 512
    lo = np.floor(centre - radius / step).astype(int) - 1
    hi = np.ceil(centre + radius / step).astype(int) + 2
    window = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    grid = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi, strict=True)), indexing="ij")
    inside = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, step, strict=True)) <= radius**2
    texture = ndimage.gaussian_filter(rng.standard_normal(inside.shape), 2.0)
    hu[window][inside] = (30 + 300 * texture[inside]).astype(np.int16)
    mask = np.zeros(hu.shape, dtype=np.uint8)
    mask[window][inside] = 1

    paths = []
    for array, name in ((hu, "big_image.nii.gz"), (mask, "big_mask.nii.gz")):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        image.SetOrigin(tuple(-(n - 1) / 2 * d for n, d in zip(shape, spacing, strict=True)))
        paths.append(folder / name)
        sitk.WriteImage(image, str(paths[-1]), useCompression=True)
    return paths[0], paths[1], float(inside.sum() * dx * dy * dz / 1000)


def run(args: argparse.Namespace) -> None:
    header("big scan: one 512x512x300 CT, radcluster vs pyradiomics batch", args)
    params = args.data / "params" / args.params
    with workdir("radcluster-bench-big-", args.keep) as folder:
        image, mask, cm3 = make_big_ct(folder, shape=tuple(args.shape), lesion_cm3=args.lesion_cm3, seed=args.seed)
        manifest = write_csv(folder / "cases.csv", [{"case_id": "big", "image": str(image), "mask": str(mask)}])
        batch = write_csv(folder / "batch.csv", [{"case_id": "big", "Image": str(image), "Mask": str(mask)}])
        warm_cache([image, mask])
        print(
            f"-- {'x'.join(map(str, args.shape))} CT, lesion {cm3:.1f} cm3, {args.params}, {args.workers} workers/jobs",
            flush=True,
        )
        pair = versus_pyradiomics(
            folder, "big", manifest, batch, params, workers=args.workers, repeat=args.repeat, split_peer=args.split_peer
        )

    rc, py = pair.radcluster, pair.pyradiomics
    rows = [
        ["radcluster", f"{rc.wall:.1f}", f"{rc.cpu:.0f}", f"{rc.driver_cpu:.0f}", f"{rc.load:.2f}"],
        ["pyradiomics", f"{py.wall:.1f}", f"{py.cpu:.0f}", f"{py.driver_cpu:.0f}", f"{py.load:.2f}"],
    ]
    if pair.split is not None:
        rows.append(
            ["pyradiomics split", f"{pair.split.wall:.1f}", f"{pair.split.cpu:.0f}", "-", f"{pair.split.load:.2f}"]
        )
    print()
    print(f"Big scan (whole commands, start-up included; best of {args.repeat}; {args.workers} workers / jobs):")
    print(table(["tool", "s", "CPU s", "driver CPU s", "load before"], rows))
    print(f"radcluster run (submit .. matrix built, no process/cluster start-up): {pair.run_seconds:.1f} s")
    print(f"ratio {pair.ratio:.2f}x against pyradiomics' batch CLI")
    if pair.split is not None:
        print(
            f"ratio against pyradiomics split (no busy-waiting driver) {pair.split_ratio:.2f}x "
            f"(target >= {TARGET}x): {verdict(pair.split_ratio, TARGET)}"
        )
    print(f"features: {parity(pair.agreement)}")


def parse_args(argv=None) -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument(
        "--shape", type=int, nargs=3, default=[512, 512, 300], metavar=("X", "Y", "Z"), help="CT size in voxels"
    )
    p.add_argument("--lesion-cm3", type=float, default=50.0, help="lesion volume")
    p.add_argument("--seed", type=int, default=0, help="noise and texture seed")
    p.add_argument("--params", default="exampleCT.yaml", help="params file in <data>/params")
    add_split_peer_flag(p)
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    main(lambda: run(arguments))
