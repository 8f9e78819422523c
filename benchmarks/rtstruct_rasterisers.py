"""RTSTRUCT rasterisers compared by voxel agreement on the RIDER Lung CT tumours (issue 14).

For each ROI of the RIDER RTSTRUCT, the mask of each rasteriser is compared with the DICOM-SEG
segment that outlines the same tumour (decoded with highdicom on the same CT grid): voxel
counts, Dice, and voxels that differ. radcluster's own (pydicom + scikit-image, nested contours
as holes) always runs; rt-utils and dcmrtstruct2nii run when importable:

    pip install --target /tmp/raster rt-utils dcmrtstruct2nii opencv-python-headless termcolor
    PYTHONPATH=/tmp/raster python benchmarks/rtstruct_rasterisers.py

dcmrtstruct2nii 5 still calls ``pydicom.read_file`` (removed in pydicom 3): the script maps it
to ``pydicom.dcmread`` first. Results are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import glob
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom-rider-lung"
NAMES = {1: "GTVp_test_auto", 2: "GTVp_test_man"}  # RTSTRUCT ROI n outlines SEG segment n


def _radcluster(data: Path, series):
    from radcluster.extract.readers.dicom import read_segmentation

    rois = read_segmentation("rider", str(data / "RTSTRUCT" / "1-1.dcm"), series).rois
    return {r.number: sitk.GetArrayViewFromImage(r.mask) > 0 for r in rois}


def _rt_utils(data: Path, series):
    from rt_utils import RTStructBuilder

    rt = RTStructBuilder.create_from(dicom_series_path=str(data / "CT"), rt_struct_path=str(data / "RTSTRUCT/1-1.dcm"))
    z = [float(ds.ImagePositionPatient[2]) for ds in rt.series_data]
    out = {}
    for number, name in NAMES.items():
        mask = np.transpose(rt.get_roi_mask_by_name(name), (2, 0, 1))  # rows, cols, slices -> z, y, x
        out[number] = mask[::-1] if z[0] > z[-1] else mask
    return out


def _dcmrtstruct2nii(data: Path, series):
    import pydicom

    pydicom.read_file = pydicom.dcmread  # removed in pydicom 3, still called by dcmrtstruct2nii 5
    from dcmrtstruct2nii import dcmrtstruct2nii

    with tempfile.TemporaryDirectory() as out:
        dcmrtstruct2nii(str(data / "RTSTRUCT" / "1-1.dcm"), str(data / "CT"), out, convert_original_dicom=False)
        masks = {}
        for number, name in NAMES.items():
            [path] = [p for p in glob.glob(os.path.join(out, "*")) if name in p]
            masks[number] = sitk.GetArrayFromImage(sitk.ReadImage(path)) > 0
    return masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()

    from radcluster.extract.readers.dicom import read_segmentation, read_series

    series = read_series("rider", str(args.data / "CT"))
    seg = {
        r.number: sitk.GetArrayViewFromImage(r.mask) > 0
        for r in read_segmentation("rider", str(args.data / "SEG" / "1-1.dcm"), series).rois
    }
    print("| rasteriser | ROI | voxels | SEG voxels | Dice vs SEG | voxels differing | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name, run in (
        ("radcluster (scikit-image)", _radcluster),
        ("rt-utils", _rt_utils),
        ("dcmrtstruct2nii", _dcmrtstruct2nii),
    ):
        start = time.perf_counter()
        try:
            masks = run(args.data, series)
        except ImportError as err:
            print(f"| {name} | - | not installed ({err.name}) | | | | |")
            continue
        seconds = time.perf_counter() - start
        for number, mask in masks.items():
            ref = seg[number]
            dice = 2 * (mask & ref).sum() / (mask.sum() + ref.sum())
            print(
                f"| {name} | {number} {NAMES[number]} | {int(mask.sum()):,} | {int(ref.sum()):,} | {dice:.5f} | "
                f"{int((mask ^ ref).sum()):,} | {seconds:.1f} |"
            )


if __name__ == "__main__":
    main()
