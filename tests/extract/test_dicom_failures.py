"""Bad DICOM: every kind is a failure record naming the series, the file and the reason, and
the good series beside it is extracted; no identifying header reaches the store or the logs.

The corpus is written into a temporary folder from six RIDER slices (150-155, inside the
tumour) with pydicom: subsets, a duplicated slice, modified headers, other transfer syntaxes.
One manifest holds every case and goes once through ``radcluster extract`` (a subprocess, so
its output is the log a user sees); the tests below read its store, run record and output.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pydicom
import pytest
from _dicom import (
    QUICK_PARAMS,
    RIDER_BIRTH_DATE,
    RIDER_PATIENT_ID,
    RIDER_SERIES,
    TUMOUR_SLICES,
    ct_files,
    edit,
    rewrite,
    rider,
)
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML, JPEG2000Lossless, JPEGLSLossless, RLELossless

from radcluster import open_store

SLICES = range(150, 156)
OTHER_SERIES = "1.2.826.0.1.3680043.8.498.77"


@dataclass(frozen=True)
class Kind:
    name: str
    make: Callable[[Path], dict]  # folder -> manifest row (image, mask[, series_uid])
    reason: str  # in the failure message
    file: str  # the failure's file ends with this
    label: int | None = None  # a failure of one ROI: the others are extracted


def _series(folder: Path, change=None, slices=SLICES) -> str:
    return str(rewrite(folder / "ct", slices, change))


def _seg(folder: Path, change=None) -> str:
    if change is None:
        return str(rider() / "SEG" / "1-1.dcm")
    return str(edit(rider() / "SEG" / "1-1.dcm", folder / "seg.dcm", change))


def _rtstruct(folder: Path, change) -> str:
    return str(edit(rider() / "RTSTRUCT" / "1-1.dcm", folder / "rtstruct.dcm", change))


def missing_slice(folder):
    return {"image": _series(folder, slices=[150, 151, 153, 154, 155]), "mask": _seg(folder)}


def duplicated_slice(folder):
    image = _series(folder)
    copy = pydicom.dcmread(Path(image) / ct_files()[152].name)
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = f"{OTHER_SERIES}.9"
    copy.save_as(Path(image) / "copy-of-152.dcm")
    return {"image": image, "mask": _seg(folder)}


def mixed_series(folder):
    image = _series(folder)

    def other(ds, k):
        ds.SeriesInstanceUID = OTHER_SERIES
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{OTHER_SERIES}.{k}"

    for f in rewrite(folder / "other", range(160, 163), other).iterdir():
        shutil.move(f, Path(image) / f"other-{f.name}")
    return {"image": image, "mask": _seg(folder), "series_uid": None}  # the folder alone cannot say


def localiser(folder):
    def scout(ds, k):
        if k == 2:
            ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]

    return {"image": _series(folder, scout), "mask": _seg(folder)}


def orientation(folder):
    def tilt(ds, k):
        if k == 3:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]

    return {"image": _series(folder, tilt), "mask": _seg(folder)}


def pixel_spacing(folder):
    def respace(ds, k):
        if k == 1:
            ds.PixelSpacing = [0.7, 0.7]

    return {"image": _series(folder, respace), "mask": _seg(folder)}


def rtstruct_other_series(folder):
    def elsewhere(ds):
        ref = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
        ref.RTReferencedSeriesSequence[0].SeriesInstanceUID = OTHER_SERIES

    return {"image": _series(folder), "mask": _rtstruct(folder, elsewhere)}


def rtstruct_other_frame(folder):
    def frame(ds):
        ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = OTHER_SERIES
        for roi in ds.StructureSetROISequence:
            roi.ReferencedFrameOfReferenceUID = OTHER_SERIES

    return {"image": _series(folder), "mask": _rtstruct(folder, frame)}


def roi_without_contours(folder):
    def empty(ds):
        del ds.ROIContourSequence[1].ContourSequence  # ROI 2

    # every slice with a contour: a contour off the series' slices would fail the ROI
    return {"image": _series(folder, slices=TUMOUR_SLICES), "mask": _rtstruct(folder, empty)}


def segment_without_frames(folder):
    def extra(ds):
        segment = pydicom.Dataset()
        segment.update(ds.SegmentSequence[0])
        segment.SegmentNumber = 3
        segment.SegmentDescription = "GTVp_unused"
        ds.SegmentSequence.append(segment)

    return {"image": _series(folder), "mask": _seg(folder, extra)}


def undecodable_syntax(folder):
    def mpeg(ds, k):
        if k == 4:
            ds.file_meta.TransferSyntaxUID = MPEG2MPML
            ds.PixelData = encapsulate([b"\0" * 64])
            ds["PixelData"].VR = "OB"

    return {"image": _series(folder, mpeg), "mask": _seg(folder)}


def truncated_slice(folder):
    image = _series(folder)
    victim = Path(image) / ct_files()[153].name
    victim.write_bytes(victim.read_bytes()[:-4000])
    return {"image": image, "mask": _seg(folder)}


KINDS = [
    Kind("missing-slice", missing_slice, "uneven slice spacing: 2.500 mm between", ".dcm"),
    Kind("duplicated-slice", duplicated_slice, "duplicated slice", ".dcm"),
    Kind("mixed-series", mixed_series, "the folder mixes 2 image series", "/ct"),
    Kind("localiser", localiser, "a localiser/scout image is among the slices", ".dcm"),
    Kind("orientation", orientation, "slices have different orientations", ".dcm"),
    Kind("pixel-spacing", pixel_spacing, "slices have different pixel spacings", ".dcm"),
    Kind("rtstruct-other-series", rtstruct_other_series, f"references series {OTHER_SERIES}", "rtstruct.dcm"),
    Kind("rtstruct-other-frame", rtstruct_other_frame, f"frame of reference {OTHER_SERIES}", "rtstruct.dcm"),
    Kind("roi-without-contours", roi_without_contours, "ROI 2 'GTVp_test_man' has no closed planar", "rtstruct.dcm", 2),
    Kind("segment-without-frames", segment_without_frames, "segment 3 'GTVp_unused' has no frames", "seg.dcm", 3),
    Kind("undecodable-syntax", undecodable_syntax, "transfer syntax 'MPEG2 Main Profile / Main Level'", ".dcm"),
    Kind("truncated-slice", truncated_slice, "pixel data cannot be read", ".dcm"),
]
COMPRESSED = {"rle": RLELossless, "jpeg2000": JPEG2000Lossless, "jpegls": JPEGLSLossless}


@dataclass
class Outcome:
    rows: pd.DataFrame
    failures: pd.DataFrame
    output: str
    store: Path
    returncode: int


@pytest.fixture(scope="module")
def outcome(tmp_path_factory) -> Outcome:
    root = tmp_path_factory.mktemp("bad-dicom")
    rows = []
    for kind in KINDS:
        row = {"case_id": kind.name, "series_uid": RIDER_SERIES, **kind.make(root / kind.name)}
        rows.append(row)
    good = root / "good"
    image = _series(good)
    (Path(image) / "README.txt").write_text("exported from a PACS")  # not DICOM: skipped
    rows.append({"case_id": "good-seg", "image": image, "mask": _seg(good), "series_uid": RIDER_SERIES})
    for name, syntax in COMPRESSED.items():

        def compress(ds, k, syntax=syntax):
            ds.compress(syntax, generate_instance_uid=False)  # the SEG references these instances

        folder = root / name
        rows.append({"case_id": name, "image": _series(folder, compress), "mask": _seg(folder), "series_uid": None})
    manifest = root / "cohort.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    params = root / "quick.yaml"
    params.write_text(QUICK_PARAMS)
    store = root / "store"
    cmd = [sys.executable, "-m", "radcluster.cli", "-vv", "extract", str(manifest), "--out", str(store)]
    cmd += ["--params", str(params), "--workers", "2", "--dashboard-address", ":0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    opened = open_store(store)
    return Outcome(opened.features(), opened.failures(), proc.stdout + proc.stderr, store, proc.returncode)


def test_good_series_extracted_beside_every_bad_one(outcome):
    assert outcome.returncode == 1, outcome.output  # some failed, the rest is in the store
    rows = outcome.rows.set_index(["case_id", "label"])
    assert set(rows.loc["good-seg"]["label_name"]) == {"GTVp_test_man", "GTVp_test_auto"}
    # one ROI's failure leaves the others: ROI 1 of the RTSTRUCT, segments 1 and 2 of the SEG
    assert list(rows.loc["roi-without-contours"]["label_name"]) == ["GTVp_test_auto"]
    assert sorted(rows.loc["segment-without-frames"].index) == [1, 2]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_bad_dicom_is_a_named_failure(outcome, kind):
    fails = outcome.failures[outcome.failures["case_id"] == kind.name]
    assert len(fails) == 1, outcome.failures
    fail = fails.iloc[0]
    assert kind.reason in fail["message"]
    assert fail["file"].endswith(kind.file)
    assert (fail["label"] if pd.notna(fail["label"]) else None) == kind.label
    if kind.name != "mixed-series":  # that row names no series: the message lists both
        assert f"series {RIDER_SERIES}: " in fail["message"]


@pytest.mark.parametrize("name", COMPRESSED)
def test_compressed_transfer_syntaxes_decode_to_the_same_features(outcome, name):
    rows = outcome.rows.set_index(["case_id", "label"])
    features = [c for c in rows.columns if c.startswith("original_")]
    assert np.array_equal(rows.loc[name][features].to_numpy(), rows.loc["good-seg"][features].to_numpy())
    assert (rows.loc[name]["image_hash"] == rows.loc["good-seg"]["image_hash"]).all()


def test_provenance_columns_and_no_identifier_anywhere(outcome):
    row = outcome.rows[outcome.rows["case_id"] == "good-seg"].sort_values("label").iloc[0]
    assert row["series_uid"] == RIDER_SERIES
    assert row["segmentation_uid"] == str(pydicom.dcmread(rider() / "SEG" / "1-1.dcm").SOPInstanceUID)
    assert (row["roi_number"], row["roi_name"], row["label_name"]) == (1, "GTVp_test_man", "GTVp_test_man")
    assert len(row["instances_hash"]) == 32
    texts = [outcome.output]  # the command's log (-vv: debug), workers' included
    for path in sorted(p for p in outcome.store.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":  # cells, column names and metadata, decompressed
            table = pq.read_table(path)
            texts += [str(table.schema.metadata), table.to_pandas().astype(str).to_csv()]
        elif ".zarr" not in path.parts[-3:] or path.suffix == ".json":
            texts.append(path.read_text(errors="replace"))  # run records, Zarr metadata
    texts.append(str(open_store(outcome.store).matrix()[1]))  # the matrix's row ids
    everything = "\n".join(texts)
    assert RIDER_PATIENT_ID in str(pydicom.dcmread(ct_files()[150], stop_before_pixels=True).PatientID)
    for identifier in (RIDER_PATIENT_ID, RIDER_BIRTH_DATE, "296698"):  # PatientID, birth date, PatientName
        assert identifier not in everything
