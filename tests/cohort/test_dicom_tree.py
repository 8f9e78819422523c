"""DICOM trees: crawling headers, pairing segmentations by reference, ROI selectors, IDC manifests."""

from __future__ import annotations

import shutil

import duckdb
import pandas as pd
import pydicom
import pytest
from _dicom import RIDER_BIRTH_DATE, RIDER_PATIENT_ID, RIDER_SERIES, edit, rewrite, rider, subset

from radcluster.cli import main
from radcluster.cohort import read_manifest
from radcluster.cohort.dicom import (
    crawl,
    explicit_selector,
    group_series,
    pair,
    roi_table,
    scan_dicom,
    select_rois,
)
from radcluster.cohort.idc import idc_manifest, index_path

ROIS = [(1, "GTV"), (2, "GTVp"), (3, "gtv_primary"), (4, "Lung_L"), (5, "Lung_R"), (7, "Heart")]
ALIASES = {"GTV": "gtv", "GTVp": "gtv", "gtv_primary": "gtv"}


def _picked(selector, aliases=None):
    selected, unmatched = select_rois(ROIS, selector, aliases)
    return [(s.number, s.label_name) for s in selected], unmatched


def test_selector_all_by_default_names_from_the_file():
    assert _picked(None) == ([(n, name) for n, name in ROIS], [])
    assert _picked("all") == _picked("")


def test_selector_exact_regex_number_and_rename():
    assert _picked("Heart") == ([(7, "Heart")], [])
    assert _picked("heart") == ([], ["heart"])  # exact is exact
    assert _picked("re:lung_.*") == ([(4, "Lung_L"), (5, "Lung_R")], [])  # regex ignores case
    assert _picked("#2=tumour; Heart") == ([(2, "tumour"), (7, "Heart")], [])
    assert _picked("re:gtv.*;Spleen") == ([(1, "GTV"), (2, "GTVp"), (3, "gtv_primary")], ["Spleen"])


def test_alias_table_gives_common_label_names():
    assert _picked("re:gtv.*", ALIASES) == ([(1, "gtv"), (2, "gtv"), (3, "gtv")], [])
    assert _picked("GTV=primary", ALIASES) == ([(1, "primary")], [])  # an explicit name wins


def test_explicit_selector_selects_the_same_again():
    selected, _ = select_rois(ROIS, "re:gtv.*;#7", ALIASES)
    text = explicit_selector(selected, ROIS)
    assert text == "GTV=gtv;GTVp=gtv;gtv_primary=gtv;Heart"
    assert select_rois(ROIS, text)[0] == selected
    # a name that is not unique, or that reads as selector syntax, is written by number
    clash = [(1, "GTV"), (2, "GTV"), (3, "re:x")]
    assert explicit_selector(select_rois(clash, None)[0], clash) == "#1;#2;#3"


def test_scan_rider_finds_one_series_one_rtstruct_one_seg():
    tree = scan_dicom(str(rider()))
    assert tree.series == 1 and tree.unsegmented == 0
    assert sorted(tree.segmentations) == [("RTSTRUCT", 2), ("SEG", 2)]
    assert tree.summary().startswith("1 image series, 1 RTSTRUCT (2 ROIs) and 1 SEG (2 segments)")
    frame = tree.manifest
    assert list(frame["segmentation"]) == ["RTSTRUCT", "SEG"]
    assert set(frame["series_uid"]) == {RIDER_SERIES}
    assert list(frame["image"]) == ["CT", "CT"]
    assert list(frame["mask"]) == ["RTSTRUCT/1-1.dcm", "SEG/1-1.dcm"]
    # the non-DICOM files of the folder are named, and skipped
    assert sorted(p.file.rsplit("/", 1)[1] for p in tree.problems) == ["LICENSE.txt", "README.md"]
    assert all(p.reason == "not a DICOM file (no DICM prefix)" for p in tree.problems)
    text = frame.to_csv()
    assert RIDER_PATIENT_ID not in text and RIDER_BIRTH_DATE not in text
    assert frame["patient_id"].str.fullmatch(r"[0-9a-f]{12}").all()


def test_cli_scan_then_rois(tmp_path, capsys):
    out = tmp_path / "cohort.csv"
    assert main(["cohort", "scan", str(rider()), "-o", str(out), "--roi", "re:GTVp_test_.*"]) == 0
    printed = capsys.readouterr()
    assert "found 1 image series, 1 RTSTRUCT (2 ROIs) and 1 SEG (2 segments)" in printed.out
    assert "README.md: not a DICOM file" in printed.err
    cohort = read_manifest(out)
    assert all(s.dicom and s.series_uid == RIDER_SERIES for s in cohort.scans)
    assert cohort.scans[0].image == str(rider() / "CT")  # relative to the manifest, resolved
    assert {s.roi for s in cohort.scans} == {"GTVp_test_auto;GTVp_test_man", "GTVp_test_man;GTVp_test_auto"}

    aliases = tmp_path / "aliases.csv"
    aliases.write_text("alias,name\nGTVp_test_man,gtv_manual\n")
    assert main(["cohort", "rois", str(out), "--aliases", str(aliases)]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = [line.split() for line in lines[1:]]
    assert sorted(table) == [
        ["GTVp_test_auto", "GTVp_test_auto", "RTSTRUCT", "1", "1"],
        ["GTVp_test_auto", "GTVp_test_auto", "SEG", "1", "1"],
        ["GTVp_test_man", "gtv_manual", "RTSTRUCT", "1", "1"],
        ["GTVp_test_man", "gtv_manual", "SEG", "1", "1"],
    ]


def test_scan_with_selector_and_aliases_writes_label_names(tmp_path):
    tree = scan_dicom(str(rider()), roi="re:.*_man", aliases={"gtvp_test_man": "gtv"})
    assert list(tree.manifest["roi"]) == ["GTVp_test_man=gtv", "GTVp_test_man=gtv"]
    nothing = scan_dicom(str(rider()), roi="Heart")
    assert nothing.manifest.empty
    assert sorted(p.reason for p in nothing.problems if "selector" in p.reason) == [
        "no ROI matches the selector 'Heart' (ROIs: GTVp_test_auto, GTVp_test_man)",  # the RTSTRUCT
        "no ROI matches the selector 'Heart' (ROIs: GTVp_test_man, GTVp_test_auto)",  # the SEG
    ]


def test_pairing_follows_references_not_folders(tmp_path):
    """Two series in one folder; each segmentation pairs with the one it references."""
    root = tmp_path / "tree"
    rewrite(root / "mixed", range(150, 154))
    other = "1.2.826.0.1.3680043.8.498.1"

    def other_series(ds, k):
        ds.SeriesInstanceUID = other
        ds.SOPInstanceUID = f"{other}.{k}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImagePositionPatient = [0, 0, k]

    rewrite(root / "mixed" / "sub", range(150, 153), other_series)
    shutil.copyfile(rider() / "SEG" / "1-1.dcm", root / "mixed" / "seg.dcm")

    def no_series_ref(ds):  # pairs through the frames' referenced SOP instances instead
        del ds.ReferencedSeriesSequence

    edit(rider() / "SEG" / "1-1.dcm", root / "elsewhere" / "seg-by-instances.dcm", no_series_ref)
    headers, problems = crawl(str(root))
    series = group_series(headers)
    assert {uid: len(info.files) for uid, info in series.items()} == {RIDER_SERIES: 4, other: 3}
    pairs, pair_problems = pair(headers, series)
    assert not problems and not pair_problems
    assert sorted((info.series_uid, h.path.rsplit("/", 1)[1]) for info, h in pairs) == [
        (RIDER_SERIES, "seg-by-instances.dcm"),
        (RIDER_SERIES, "seg.dcm"),
    ]


def test_rtstruct_pairs_by_frame_of_reference_when_it_names_no_series(tmp_path):
    root = subset(tmp_path / "tree", range(150, 153), seg=False)

    def refs_gone(ds):
        for frame in ds.ReferencedFrameOfReferenceSequence:
            del frame.RTReferencedStudySequence

    edit(root / "RTSTRUCT" / "1-1.dcm", root / "RTSTRUCT" / "1-1.dcm", refs_gone)
    tree = scan_dicom(str(root))
    assert list(tree.manifest["series_uid"]) == [RIDER_SERIES]


def test_unpairable_and_broken_files_are_named_problems(tmp_path):
    root = subset(tmp_path / "tree", range(150, 153))
    (root / "notes.txt").write_text("not an image")
    data = (rider() / "CT" / "1-200.dcm").read_bytes()
    (root / "cut.dcm").write_bytes(data[:600])  # header cut short: no SeriesInstanceUID

    def elsewhere(ds):
        ds.ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3.4"

    edit(rider() / "SEG" / "1-1.dcm", root / "SEG" / "1-1.dcm", elsewhere)
    tree = scan_dicom(str(root))
    reasons = {p.file.rsplit("/", 1)[1]: p.reason for p in tree.problems}
    assert reasons == {
        "notes.txt": "not a DICOM file (no DICM prefix)",
        "cut.dcm": "no SeriesInstanceUID (truncated or incomplete header)",
        "1-1.dcm": "SEG references 1.2.3.4, which is not an image series of this tree",
    }
    assert list(tree.manifest["segmentation"]) == ["RTSTRUCT"]  # the rest is found


def test_roi_table_counts_across_a_cohort(tmp_path):
    manifest = tmp_path / "cohort.csv"
    frame = scan_dicom(str(rider()), roi="#1").manifest
    frame["image"] = [str(rider() / p) for p in frame["image"]]
    frame["mask"] = [str(rider() / p) for p in frame["mask"]]
    frame.to_csv(manifest, index=False)
    table, problems = roi_table(read_manifest(manifest).scans)
    assert not problems
    got = {(r.name, r.kind): (r.objects, r.selected) for r in table.itertuples()}
    assert got == {
        ("GTVp_test_auto", "RTSTRUCT"): (1, 1),
        ("GTVp_test_man", "RTSTRUCT"): (1, 0),
        ("GTVp_test_man", "SEG"): (1, 1),
        ("GTVp_test_auto", "SEG"): (1, 0),
    }


def test_idc_manifest_offline_from_the_shipped_index():
    frame, problems = idc_manifest("nsclc_radiomics", modality="CT", segmentation="seg")
    assert not problems
    index = duckdb.execute(
        "SELECT SeriesInstanceUID, StudyInstanceUID, Modality, PatientID FROM read_parquet(?) "
        "WHERE collection_id = 'nsclc_radiomics'",
        [index_path()],
    ).df()
    cts = index[index["Modality"] == "CT"].set_index("SeriesInstanceUID")
    assert len(frame) >= 400 and frame["case_id"].is_unique
    assert frame["image"].str.fullmatch(r"s3://[a-z0-9-]+/[0-9a-f-]{36}/").all()
    assert frame["mask"].str.fullmatch(r"s3://[a-z0-9-]+/[0-9a-f-]{36}/").all()
    assert frame["series_uid"].isin(cts.index).all()
    text = frame.to_csv()
    assert not any(pid in text for pid in index["PatientID"].unique())  # hashed, never copied

    rtstruct, _ = idc_manifest("nsclc_radiomics", segmentation="rtstruct")
    assert len(rtstruct) >= 400 and set(rtstruct["segmentation"]) == {"RTSTRUCT"}


def test_idc_study_with_two_ct_series_needs_the_header_offline():
    """RIDER's study holds the test and the retest CT: the index alone cannot pair its SEG."""
    study = pydicom.dcmread(rider() / "SEG" / "1-1.dcm", stop_before_pixels=True).StudyInstanceUID
    frame, problems = idc_manifest(
        "rider_lung_ct", segmentation="seg", analysis_results=True, studies=[study], resolve=False
    )
    assert frame.empty and problems
    assert all("its study has 2 CT series" in p.reason for p in problems)


def test_idc_unknown_collection_is_an_error():
    with pytest.raises(ValueError, match="no CT or SEG series of collection 'nope'"):
        idc_manifest("nope")


def test_cli_idc_writes_a_manifest(tmp_path, capsys):
    out = tmp_path / "idc.csv"
    assert main(["cohort", "idc", "--collection", "nsclc_radiomics", "--with", "rtstruct", "-o", str(out)]) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["case_id", "patient_id", "image", "mask", "series_uid", "roi", "segmentation"]
    assert f"wrote {out}: {len(frame)} case(s)" in capsys.readouterr().out


def test_cohort_check_reads_dicom_rows_as_extraction_does(tmp_path):
    from radcluster.cohort.check import check_cohort

    root = subset(tmp_path / "tree", range(150, 156), seg=False)

    def elsewhere(ds):
        ref = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
        ref.RTReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3.4"

    bad = edit(root / "RTSTRUCT" / "1-1.dcm", tmp_path / "other.dcm", elsewhere)
    rows = [
        {"case_id": "good", "image": str(root / "CT"), "mask": str(rider() / "SEG" / "1-1.dcm")},
        {"case_id": "bad", "image": str(root / "CT"), "mask": str(bad), "series_uid": RIDER_SERIES},
    ]
    manifest = tmp_path / "c.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    assert [f"case {p.case_id!r}: {p.file}: {p.reason}" for p in check_cohort(read_manifest(manifest))] == [
        f"case 'bad': {bad}: series {RIDER_SERIES}: the RTSTRUCT references series 1.2.3.4, not this image series"
    ]


def test_crawl_on_the_cluster_workers_finds_the_same(client):
    from radcluster.cli.dicom import dask_mapper

    here = scan_dicom(str(rider()))
    there = scan_dicom(str(rider()), mapper=dask_mapper(client))
    pd.testing.assert_frame_equal(here.manifest, there.manifest)
    assert there.summary() == here.summary()
