"""A corpus of bad inputs: each fails alone, named by case, file and reason; the rest is extracted.

The corpus is generated into a temporary folder from the shipped breast1 case (no binary
fixtures in the repository). One manifest mixes every bad kind of scan with good cases and
goes once through the real pipeline (``run_extract`` on the session's LocalCluster); the
tests below then read the store. Problems of the manifest or the params file as a whole are
rejected before any cluster starts, through the command a user types.
"""

from __future__ import annotations

import functools
import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import SimpleITK as sitk
from conftest import PARAMS, case_paths, write_manifest
from radiomics import featureextractor

from radcluster import open_store
from radcluster.cohort import RESERVED_COLUMNS, read_manifest
from radcluster.cohort.check import check_cohort
from radcluster.errors import FAILURE_COLUMNS, ManifestError, SpecError
from radcluster.extract import ExtractionSettings
from radcluster.jobs.extract import RunSummary, run_extract
from radcluster.spec import read_params
from radcluster.store import ID_COLUMNS, PROVENANCE_COLUMNS

PARAMS_FILE = PARAMS / "Params.yaml"
# DICOM header fields written into every generated image's header: none may reach the store.
PHI = {"0010|0010": "DOE^JANE", "0010|0020": "PID-90210", "0008|0080": "ACME GENERAL HOSPITAL"}


class Corpus:
    """Writes corpus files derived from breast1 into one folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        image, mask = case_paths("breast1")
        self.image_path, self.mask_path = image, mask
        self.image, self.mask = sitk.ReadImage(str(image)), sitk.ReadImage(str(mask))
        self.voxels = sitk.GetArrayFromImage(self.image)
        self.labels = sitk.GetArrayFromImage(self.mask)
        # a voxel inside the lesion, and the slice holding most of it
        self.inside = tuple(int(np.median(ax)) for ax in np.nonzero(self.labels))
        self.lesion_slice = int(np.argmax(self.labels.sum(axis=(1, 2))))

    def write(self, name: str, img: sitk.Image, **kw) -> str:
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        for key, value in PHI.items():
            img.SetMetaData(key, value)
        sitk.WriteImage(img, str(path), **kw)
        return str(path)

    def like(self, arr: np.ndarray, ref: sitk.Image) -> sitk.Image:
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(ref)
        return img

    def image_copy(self) -> sitk.Image:
        return sitk.Image(self.image)

    def mask_copy(self) -> sitk.Image:
        return sitk.Image(self.mask)

    def truncated(self, name: str, img: sitk.Image, keep: float, **kw) -> str:
        path = self.write(name, img, **kw)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: int(len(data) * keep)])
        return path


@dataclass(frozen=True)
class Kind:
    """One kind of bad scan: how to make it, and what its failure must say."""

    name: str
    make: Callable[[Corpus], tuple[str, str]]  # -> (image, mask) paths
    stage: str
    reason: str  # must appear in the failure message
    bad: str  # "image" or "mask": the file the failure names
    label: object = None  # the manifest's label column
    # what `radcluster cohort check` says (it has no params); None: nothing to report there
    check: str | None = ""  # "" means the same as `reason`


def _missing(c: Corpus):
    return str(c.folder / "missing" / "scan_image.nrrd"), str(c.mask_path)


def _corrupt(c: Corpus):  # uncompressed MetaImage with half its voxel data gone
    return c.truncated("corrupt_image.mha", c.image_copy(), 0.5, useCompression=False), str(c.mask_path)


def _truncated_gzip(c: Corpus):  # SimpleITK reads this without complaint, zero-filling the rest
    image = c.truncated("truncated_image.nii.gz", c.image_copy(), 0.9)
    return image, c.write("truncated_mask.nii.gz", c.mask_copy())


def _truncated_nifti(c: Corpus):  # uncompressed NIfTI cut short: also read silently by SimpleITK
    image = c.truncated("short_image.nii", c.image_copy(), 0.8)
    return image, c.write("short_mask.nii", c.mask_copy())


def _not_an_image(c: Corpus):
    path = c.folder / "clinical_notes.csv"
    path.write_text("case,outcome\nbreast1,1\n")
    return str(path), str(c.mask_path)


def _size(c: Corpus):
    return str(c.image_path), c.write("size_mask.nrrd", c.mask[:, :, :-1])


def _geometry(attr: str, change: Callable[[sitk.Image], object]):
    def make(c: Corpus):
        mask = c.mask_copy()
        getattr(mask, f"Set{attr}")(change(mask))
        return str(c.image_path), c.write(f"{attr.lower()}_mask.nrrd", mask)

    return make


def _empty(c: Corpus):
    return str(c.image_path), c.write("empty_mask.nrrd", c.like(np.zeros_like(c.labels), c.mask))


def _one_voxel(c: Corpus):
    one = np.zeros_like(c.labels)
    one[c.inside] = 1
    return str(c.image_path), c.write("one_voxel_mask.nrrd", c.like(one, c.mask))


def _non_finite(value: float, name: str):
    def make(c: Corpus):
        arr = c.voxels.astype(np.float32)
        arr[c.inside] = value
        return c.write(name, c.like(arr, c.image)), str(c.mask_path)

    return make


def _image_2d(c: Corpus):
    image = sitk.GetImageFromArray(c.voxels[c.lesion_slice])
    mask = sitk.GetImageFromArray(c.labels[c.lesion_slice])
    for img in (image, mask):
        img.SetSpacing(c.image.GetSpacing()[:2])
        img.SetOrigin(c.image.GetOrigin()[:2])
    return c.write("slice2d_image.nrrd", image), c.write("slice2d_mask.nrrd", mask)


def _image_4d(c: Corpus):  # e.g. a dynamic series given as one file
    return c.write("dynamic_image.nrrd", sitk.JoinSeries([c.image, c.image])), str(c.mask_path)


def _float_mask(c: Corpus):  # a probability map given as a mask
    return str(c.image_path), c.write("probability_mask.nrrd", c.like(c.labels * np.float32(0.7), c.mask))


def _mask_2d(c: Corpus):
    mask = sitk.GetImageFromArray(c.labels[c.lesion_slice])
    return str(c.image_path), c.write("slice_mask.nrrd", mask)


def _vector_image(c: Corpus):
    return c.write("rgb_image.nrrd", sitk.Compose(c.image, c.image, c.image)), str(c.mask_path)


KINDS = [
    Kind("missing-file", _missing, "read", "image file does not exist", "image"),
    Kind("corrupt-file", _corrupt, "read", "header reads but its voxel data does not", "image"),
    Kind("truncated-gzip", _truncated_gzip, "read", "gzip stream ends before its end marker", "image"),
    Kind("truncated-nifti", _truncated_nifti, "read", "its NIfTI header describes", "image"),
    Kind("not-an-image", _not_an_image, "read", "image is not a readable image", "image"),
    Kind("size-mismatch", _size, "check", "size differs: image (45, 120, 21), mask (45, 120, 20)", "mask"),
    Kind(
        "spacing-mismatch",
        _geometry("Spacing", lambda m: [s * 1.5 for s in m.GetSpacing()]),
        "check",
        "geometry mismatch: spacing differs",
        "mask",
    ),
    Kind(
        "origin-mismatch",
        _geometry("Origin", lambda m: [o + 5.0 for o in m.GetOrigin()]),
        "check",
        "geometry mismatch: origin differs",
        "mask",
    ),
    Kind(
        "direction-mismatch",
        _geometry("Direction", lambda m: (0, 1, 0, 1, 0, 0, 0, 0, 1)),
        "check",
        "geometry mismatch: direction differs",
        "mask",
    ),
    Kind("empty-mask", _empty, "check", "mask is empty (no non-zero voxel)", "mask"),
    Kind(
        "label-absent",
        lambda c: (str(c.image_path), str(c.mask_path)),
        "check",
        "label 2 not present in mask; present: [1]",
        "mask",
        label=2,
        check="label(s) [2] not present in mask",
    ),
    # pyradiomics' own check; `cohort check` words it the same way
    Kind("one-voxel-mask", _one_voxel, "extract", "mask only contains 1 segmented voxel", "mask"),
    Kind("nan-voxels", _non_finite(math.nan, "nan_image.nrrd"), "check", "image has 1 NaN voxel(s)", "image"),
    Kind("inf-voxels", _non_finite(-math.inf, "inf_image.nrrd"), "check", "image has 1 infinite voxel(s)", "image"),
    # Params.yaml enables the 3D-only shape class, which pyradiomics would skip for 2D input,
    # leaving a row with fewer features than the others; `cohort check` has no params to know
    Kind("image-2d-params-3d", _image_2d, "check", "image is 2D but the params are for 3D images", "image", check=None),
    Kind("image-4d", _image_4d, "check", "image is 4D; only 2D and 3D images are supported", "image"),
    Kind("float-mask", _float_mask, "check", "mask voxels are not integers (pixel type float32)", "mask"),
    Kind("mask-2d-image-3d", _mask_2d, "check", "mask is 2D but image is 3D", "mask"),
    Kind("vector-image", _vector_image, "check", "image has several components per voxel", "image"),
]

GOOD = ("good", "good ü é", "good-float-mask")


@dataclass
class Outcome:
    scans: dict[str, tuple[str, str]]  # case -> (image, mask) as the manifest resolves them
    manifest: Path
    store_dir: Path
    summary: RunSummary
    checked: dict[str, str]  # case -> "file: reason" of its `cohort check` problem


@pytest.fixture(scope="module")
def outcome(tmp_path_factory, client) -> Outcome:
    root = tmp_path_factory.mktemp("bad-corpus")
    corpus = Corpus(root / "files")
    rows = []
    for kind in KINDS:
        image, mask = kind.make(corpus)
        rows.append({"case_id": kind.name, "image": image, "mask": mask, "label": kind.label})
    # good cases: the plain files; a copy under a folder and names with unicode and spaces,
    # given relative to the manifest; a float mask holding whole numbers (a valid mask)
    rows.append(
        {
            "case_id": "good",
            "image": corpus.write("good_image.nrrd", corpus.image_copy()),
            "mask": str(corpus.mask_path),
        }
    )
    unicode_dir = root / "files" / "dossier été" / "patient ü 1"
    unicode_dir.mkdir(parents=True)
    shutil.copy(corpus.image_path, unicode_dir / "scan ü é_image.nrrd")
    shutil.copy(corpus.mask_path, unicode_dir / "scan ü é_label.nrrd")
    rows.append(
        {
            "case_id": "good ü é",
            "image": "files/dossier été/patient ü 1/scan ü é_image.nrrd",
            "mask": "files/dossier été/patient ü 1/scan ü é_label.nrrd",
        }
    )
    rows.append(
        {
            "case_id": "good-float-mask",
            "image": str(corpus.image_path),
            "mask": corpus.write("float01_mask.nrrd", corpus.like(corpus.labels.astype(np.float32), corpus.mask)),
        }
    )
    for i, row in enumerate(rows):
        row["outcome"] = i % 2
    manifest = write_manifest(root / "cohort.csv", rows)

    cohort = read_manifest(manifest)
    text, digest = read_params(PARAMS_FILE)
    store_dir = root / "store"
    summary = run_extract(cohort, ExtractionSettings(text, digest), str(store_dir), client)
    checked = {p.case_id: f"{p.file}: {p.reason}" for p in check_cohort(cohort)}
    return Outcome({s.case_id: (s.image, s.mask) for s in cohort.scans}, manifest, store_dir, summary, checked)


@functools.lru_cache(maxsize=8)
def _direct(image: str, mask: str) -> dict[str, float]:
    result = featureextractor.RadiomicsFeatureExtractor(str(PARAMS_FILE)).execute(image, mask)
    return {k: float(v) for k, v in result.items() if not k.startswith("diagnostics_")}


def test_run_summary_names_every_bad_case(outcome):
    assert sorted(outcome.summary.failed_cases) == sorted(k.name for k in KINDS)
    assert outcome.summary.rows == len(GOOD)
    assert outcome.summary.failures == len(KINDS)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_bad_scan_fails_alone_naming_case_file_and_reason(outcome, kind):
    fails = open_store(outcome.store_dir).failures()
    mine = fails[fails["case_id"] == kind.name]
    assert len(mine) == 1, mine
    rec = mine.iloc[0]
    image, mask = outcome.scans[kind.name]
    bad_file = image if kind.bad == "image" else mask
    assert rec["stage"] == kind.stage, rec["message"]
    assert rec["file"] == bad_file
    assert f"case {kind.name!r}" in rec["message"]
    assert bad_file in rec["message"]
    assert kind.reason in rec["message"], rec["message"]
    if kind.label is not None or kind.stage == "extract":
        assert rec["label"] == (kind.label or 1)
    # no row of NaNs (or of anything) stands in for the failed case
    assert kind.name not in set(open_store(outcome.store_dir).features()["case_id"])


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_cohort_check_gives_the_same_reason(outcome, kind):
    """`radcluster cohort check` finds the problem before a run, in the same words."""
    line = outcome.checked.get(kind.name)
    if kind.check is None:
        assert line is None
        return
    image, mask = outcome.scans[kind.name]
    assert line is not None, f"cohort check missed {kind.name}"
    assert (image if kind.bad == "image" else mask) in line
    assert (kind.check or kind.reason) in line, line


def test_good_cases_extracted_and_equal_to_direct_pyradiomics(outcome):
    store = open_store(outcome.store_dir)
    features = store.features()
    assert sorted(features["case_id"]) == sorted(GOOD)
    for case in GOOD:
        assert case not in outcome.checked, outcome.checked.get(case)
        row = features[features["case_id"] == case].iloc[0]
        reference = _direct(*outcome.scans[case])  # the manifest's own paths, unicode included
        assert len(reference) == 100
        differ = {k: (row[k], v) for k, v in reference.items() if row[k] != v}  # bit-identical
        assert not differ, (case, differ)
    X, rows, names = store.matrix()
    assert X.shape == (len(GOOD), 100)
    assert np.isfinite(X.compute(scheduler="sync")).all()  # no NaN column from a short row


def test_unicode_and_spaces_in_paths_succeed(outcome):
    image, mask = outcome.scans["good ü é"]
    assert image.endswith("dossier été/patient ü 1/scan ü é_image.nrrd") and Path(image).is_absolute()
    features = open_store(outcome.store_dir).features()
    row = features[features["case_id"] == "good ü é"]
    assert len(row) == 1 and row.iloc[0]["label"] == 1
    plain = features[features["case_id"] == "good"].iloc[0]
    assert row.iloc[0]["original_glcm_Contrast"] == plain["original_glcm_Contrast"]
    assert row.iloc[0]["image_hash"] == plain["image_hash"]  # same voxels, other file name


def test_only_known_columns_and_no_header_fields_reach_the_store(outcome):
    """Of an image's header only its grid is used (in the content hash): no DICOM field is stored."""
    sample = sitk.ReadImage(outcome.scans["good"][0])
    assert sample.GetMetaData("0010|0010") == PHI["0010|0010"]  # the corpus does carry them
    store = open_store(outcome.store_dir)
    features = store.features()
    feature_names = set(_direct(*outcome.scans["good"]))
    carried = {"outcome"}
    known = set(ID_COLUMNS) | set(PROVENANCE_COLUMNS) | RESERVED_COLUMNS | carried
    unexpected = set(features.columns) - known - feature_names
    assert not unexpected, sorted(unexpected)
    assert feature_names <= set(features.columns)
    fails = store.failures()
    assert set(fails.columns) <= set(FAILURE_COLUMNS) | {"run_id", "failed_at"}, sorted(fails.columns)

    # and no header value anywhere: cells, column names, Parquet metadata, run records, Zarr
    seen = []
    for path in sorted(p for p in outcome.store_dir.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            seen += [str(table.schema.metadata), " ".join(table.column_names), table.to_pandas().astype(str).to_csv()]
        else:
            seen.append(path.read_bytes().decode("utf-8", "replace"))
    text = "\n".join(seen)
    for key, value in PHI.items():
        assert value not in text and key not in text, key


# -- problems of the manifest or the params as a whole: rejected before any cluster starts ----


def _good_row(case_id: str) -> dict:
    image, mask = case_paths("breast1")
    return {"case_id": case_id, "image": str(image), "mask": str(mask)}


# name -> (manifest rows, params file text or None for Params.yaml, what stderr must say)
CLI_PROBLEMS = {
    "duplicate-ids": (
        [_good_row("b1"), _good_row("b2"), _good_row("b1")],
        None,
        ["cohort.csv", "case 'b1': duplicate case_id (rows 2, 4)"],
    ),
    "missing-columns": (
        [{"case_id": "b1", "path": "x.nrrd"}],
        None,
        ["cohort.csv", "missing required column(s) image, mask; found case_id, path"],
    ),
    "params-unknown-key": (
        [_good_row("b1")],
        "setting:\n  binWidht: 25\n",
        ["my params.yaml", "key 'setting.binWidht': unknown key; did you mean 'binWidth'?"],
    ),
    "params-wrong-type": (
        [_good_row("b1")],
        'setting:\n  binWidth: "abc"\n',
        ["my params.yaml", "key 'setting.binWidth': expected a number (float); got 'abc'"],
    ),
}


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """`radcluster extract` on each bad input, the four commands running side by side."""
    started = {}
    for name, (rows, params_text, _) in CLI_PROBLEMS.items():
        folder = tmp_path_factory.mktemp(name)
        params = PARAMS_FILE
        if params_text is not None:
            params = folder / "my params.yaml"
            params.write_text(params_text)
        manifest = write_manifest(folder / "cohort.csv", rows)
        cmd = [
            sys.executable,
            "-m",
            "radcluster.cli",
            "extract",
            str(manifest),
            "--out",
            str(folder / "store"),
            "--params",
            str(params),
            "--workers",
            "1",
            "--dashboard-address",
            ":0",
        ]
        started[name] = (
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
            cmd,
            folder / "store",
        )
    done = {}
    for name, (proc, cmd, store) in started.items():
        out, err = proc.communicate(timeout=120)
        done[name] = (subprocess.CompletedProcess(cmd, proc.returncode, out, err), store)
    return done


@pytest.mark.parametrize("problem", list(CLI_PROBLEMS))
def test_cli_rejects_bad_manifest_or_params_before_starting(cli_runs, problem):
    proc, store = cli_runs[problem]
    assert proc.returncode == 2, proc.stderr
    for text in CLI_PROBLEMS[problem][2]:
        assert text in proc.stderr, proc.stderr
    assert "Dask dashboard" not in proc.stdout  # no cluster was started
    assert not store.exists()


def test_manifest_problems_are_listed_all_at_once(tmp_path):
    manifest = write_manifest(
        tmp_path / "dups.csv",
        [
            _good_row("b1"),
            _good_row("b1"),
            _good_row("b2"),
            {**_good_row("b2"), "mask": ""},
            {**_good_row("b3"), "label": "lesion"},
            _good_row(""),
        ],
    )
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)
    problems = info.value.problems
    assert "case 'b1': duplicate case_id (rows 2, 3)" in problems
    assert "case 'b2': duplicate case_id (rows 4, 5)" in problems
    assert "case 'b2': empty mask path" in problems
    assert any(p.startswith("case 'b3': label 'lesion' is not a label") for p in problems)
    assert "row 7: empty case_id" in problems
    assert len(problems) == 5 and "dups.csv" in str(info.value)


def test_params_problems_are_listed_all_at_once(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        "setting:\n  binWidth: '25'\n  force2D: 1\n  interpolatr: sitkBSpline\n"
        "imageType:\n  Orignal: {}\n  LoG:\n    sigmaa: [1.0, 2.0]\n"
        "featureClass:\n  glcm: [Contrst]\n"
    )
    with pytest.raises(SpecError) as info:
        read_params(params)
    message = str(info.value)
    assert f"params file {str(params)!r} has 6 problem(s)" in message
    for line in (
        "key 'setting.binWidth': expected a number (float); got '25'",
        "key 'setting.force2D': expected true or false (bool); got 1",
        "key 'setting.interpolatr': unknown key; did you mean 'interpolator'?",
        "key 'imageType.Orignal': unknown imageType; did you mean 'Original'?",
        "key 'imageType.LoG.sigmaa': unknown key; did you mean 'sigma'?",
        "key 'featureClass.glcm.Contrst': unknown feature; did you mean 'Contrast'?",
    ):
        assert line in message
