"""The onnx engine: its preprocessing, its embedding against numpy, and its checks.

Models are built in code (tests/_onnx_models.py); nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
import SimpleITK as sitk  # noqa: E402
from _onnx_models import encode, encoder  # noqa: E402

from radcluster.cohort import read_manifest  # noqa: E402
from radcluster.errors import SpecError  # noqa: E402
from radcluster.extract import ExtractionSettings, extract_scan  # noqa: E402
from radcluster.extract.engines import combined_key, make_engine  # noqa: E402
from radcluster.extract.engines import onnx as onnx_engine  # noqa: E402
from radcluster.spec import OnnxEngineSpec, read_params  # noqa: E402

SPACING = (0.8, 0.8, 2.0)  # x, y, z


def _scan(tmp_path: Path, arr: np.ndarray, mask: np.ndarray, name: str = "c1") -> Path:
    """One NRRD scan (int16 HU, spacing SPACING) and its manifest."""
    img = sitk.GetImageFromArray(arr.astype(np.int16))
    img.SetSpacing(SPACING)
    img.SetOrigin((-12.0, 30.0, 4.0))
    msk = sitk.GetImageFromArray(mask.astype(np.uint8))
    msk.CopyInformation(img)
    sitk.WriteImage(img, str(tmp_path / f"{name}_image.nrrd"))
    sitk.WriteImage(msk, str(tmp_path / f"{name}_label.nrrd"))
    manifest = tmp_path / f"{name}.csv"
    pd.DataFrame(
        [{"case_id": name, "image": f"{name}_image.nrrd", "mask": f"{name}_label.nrrd", "label": "all"}]
    ).to_csv(manifest, index=False)
    return manifest


def _phantom(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random integer HU in (z, y, x) = (30, 40, 50) and two ROIs: label 1 inside, label 2 at a corner."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1100, 1100, size=(30, 40, 50))
    mask = np.zeros(arr.shape, np.uint8)
    mask[10:14, 20:23, 5:9] = 1
    mask[26:30, 0:3, 41:50] = 2
    return arr, mask


def _extract(manifest: Path, options: OnnxEngineSpec, *, with_radiomics: bool = False):
    text, digest = read_params(None)
    engines = [make_engine("onnx", options).prepare(text)]
    if with_radiomics:
        engines.insert(0, make_engine("pyradiomics").prepare(text))
    settings = ExtractionSettings(text, combined_key(digest, engines), engines=tuple(engines))
    return extract_scan(read_manifest(manifest).scans[0], settings), engines[-1]


def test_embedding_equals_numpy_bit_for_bit(tmp_path: Path) -> None:
    arr, mask = _phantom()
    manifest = _scan(tmp_path, arr, mask)
    w, b = encoder(tmp_path / "enc.onnx", integer=True)
    options = OnnxEngineSpec(name="enc", model=str(tmp_path / "enc.onnx"), margin=2.0, window=(-1024, 1024))
    result, engine = _extract(manifest, options)
    assert not result.failures
    assert [r["label"] for r in result.rows] == [1, 2]
    assert result.feature_names == [f"deep_enc_{i}" for i in range(4)]
    for row, (z, y, x) in zip(
        result.rows,
        [(slice(10, 14), slice(20, 23), slice(5, 9)), (slice(26, 30), slice(0, 3), slice(41, 50))],
        strict=True,
    ):
        # the preprocessed crop, computed here without the engine: the box grown by 2 mm
        # (1 voxel in z at 2 mm, 3 in y and x at 0.8 mm), clipped to the image, windowed
        lo = [max(s.start - m, 0) for s, m in zip((z, y, x), (1, 3, 3), strict=True)]
        hi = [min(s.stop + m, n) for s, m, n in zip((z, y, x), (1, 3, 3), arr.shape, strict=True)]
        crop = arr[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.float32)
        crop = (np.clip(crop, -1024, 1024) + 1024) / np.float32(2048)
        centre = [(s.start + s.stop - 1) / 2 - a for s, a in zip((z, y, x), lo, strict=True)]
        patch = onnx_engine.place(crop, centre, (8, 8, 8), 0.0)
        assert np.array_equal(
            patch[None],
            onnx_engine.preprocess(sitk.ReadImage(str(tmp_path / "c1_image.nrrd")), (z, y, x), options, (8, 8, 8)),
        )
        expected = encode(patch[None, None], w, b)[0].astype(np.float64)
        got = np.array([row[f"deep_enc_{i}"] for i in range(4)])
        assert np.array_equal(got, expected), (got, expected)  # bit for bit
        assert row["onnx_enc_sha256"] == engine.model.sha256


def test_resampled_zscored_embedding_within_float32_tolerance(tmp_path: Path) -> None:
    """With resampling, z-score and real-valued weights, ONNX Runtime and numpy add in a different
    order: the documented tolerance is rtol 1e-5, atol 1e-6 (float32)."""
    arr, mask = _phantom(1)
    manifest = _scan(tmp_path, arr, mask)
    w, b = encoder(tmp_path / "enc.onnx", size=(8, 16, 16), seed=3)
    options = OnnxEngineSpec(
        name="r", model=str(tmp_path / "enc.onnx"), margin=5.0, spacing=(1.0, 1.0, 1.0), zscore=True, batch=1
    )
    result, _ = _extract(manifest, options)
    assert not result.failures and len(result.rows) == 2
    image = sitk.ReadImage(str(tmp_path / "c1_image.nrrd"))
    from scipy import ndimage

    for row, box in zip(result.rows, ndimage.find_objects(mask), strict=True):
        x = onnx_engine.preprocess(image, box, options, (8, 16, 16))
        assert abs(float(x.mean())) < 0.5  # z-scored (then padded with 0)
        expected = encode(x[:, None], w, b)[0]
        got = np.array([row[f"deep_r_{i}"] for i in range(4)])
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_crop_smaller_than_the_input_is_padded_as_documented() -> None:
    """Centred, the odd voxel of padding after the crop, pad_value outside; at the image's
    border the ROI's centre still lands at the patch centre."""
    crop = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    patch = onnx_engine.place(crop, (1.0, 1.5, 2.0), (8, 8, 8), -7.0)
    # z: 5 voxels of padding, 2 before and 3 after; y: 2 and 2; x: 1 and 2
    assert np.array_equal(patch[2:5, 2:6, 1:6], crop)
    assert (patch == -7.0).sum() == 8 * 8 * 8 - crop.size
    # a crop cut short by the image's edge (ROI centre at z = 1 of 5): padding goes where the
    # image ended, so the ROI's centre sits at patch index 3 (of 0..7), not the crop's centre
    crop = np.arange(5, dtype=np.float32)
    patch = onnx_engine.place(crop, (1.0,), (8,), 0.5)
    assert patch.tolist() == [0.5, 0.5, 0.0, 1.0, 2.0, 3.0, 4.0, 0.5]
    # a crop larger than the input is cut around the ROI's centre, kept inside the crop
    crop = np.arange(20, dtype=np.float32)
    assert onnx_engine.place(crop, (10.0,), (4,), 0.0).tolist() == [9.0, 10.0, 11.0, 12.0]
    assert onnx_engine.place(crop, (0.0,), (4,), 0.0).tolist() == [0.0, 1.0, 2.0, 3.0]


def test_small_roi_embedding_uses_the_padded_patch(tmp_path: Path) -> None:
    arr, mask = _phantom(2)
    mask[:] = 0
    mask[15, 20, 25] = 1  # a one-voxel ROI; margin 0: a 1-voxel crop in an 8^3 input
    manifest = _scan(tmp_path, arr, mask)
    w, b = encoder(tmp_path / "enc.onnx", integer=True)
    options = OnnxEngineSpec(
        name="p", model=str(tmp_path / "enc.onnx"), margin=0.0, window=(-1024, 1024), pad_value=0.25
    )
    result, _ = _extract(manifest, options)
    patch = np.full((8, 8, 8), 0.25, np.float32)
    patch[3, 3, 3] = (np.clip(arr[15, 20, 25], -1024, 1024) + 1024) / 2048
    expected = encode(patch[None, None], w, b)[0]
    assert np.array_equal([result.rows[0][f"deep_p_{i}"] for i in range(4)], expected)


def test_2_5d_averages_the_slices_through_the_roi_centre(tmp_path: Path) -> None:
    """A 2D model with three input channels (the slice repeated) and a fixed batch of one."""
    arr, mask = _phantom(3)
    manifest = _scan(tmp_path, arr, mask)
    w, b = encoder(tmp_path / "enc2d.onnx", dims=2, size=(8, 8), in_channels=3, batch=1, integer=True)
    options = OnnxEngineSpec(
        name="s", model=str(tmp_path / "enc2d.onnx"), mode="2.5d", slices=3, margin=2.0, window=(-1024, 1024)
    )
    result, engine = _extract(manifest, options, with_radiomics=True)
    assert engine.model.batch == 1 and engine.model.channels == 3
    row = result.rows[0]
    assert "original_firstorder_Mean" in row  # the radiomics columns are in the same row
    # label 1 spans z 10..13 (centre 11.5, rounded up): the slices are z 11, 12, 13; in-plane the
    # crop is y 17..25, x 2..11 (3 voxels of margin), the ROI's centre at (4, 4.5) in it
    crop = arr[11:14, 17:26, 2:12].astype(np.float32)
    crop = (np.clip(crop, -1024, 1024) + 1024) / np.float32(2048)
    patches = np.stack([onnx_engine.place(s, (4.0, 4.5), (8, 8), 0.0) for s in crop])
    per_slice = encode(np.repeat(patches[:, None], 3, axis=1), w, b).astype(np.float64)
    assert np.array_equal([row[f"deep_s_{i}"] for i in range(4)], per_slice.mean(axis=0))


def test_wrong_input_shape_is_refused_naming_the_mismatch(tmp_path: Path) -> None:
    encoder(tmp_path / "enc2d.onnx", dims=2, size=(8, 8))
    encoder(tmp_path / "enc3d.onnx", size=(8, 8, 8))
    encoder(tmp_path / "dyn.onnx", size=("z", "y", "x"))
    text, _ = read_params(None)

    def check(**kw):
        with pytest.raises(SpecError) as err:
            make_engine("onnx", OnnxEngineSpec(name="m", **kw)).prepare(text)
        return str(err.value)

    msg = check(model=str(tmp_path / "enc2d.onnx"))
    assert "has shape ['N', 1, 8, 8] (rank 4)" in msg and "mode '3d' needs [batch, channels, z, y, x]" in msg
    assert "use mode '2.5d'" in msg
    msg = check(model=str(tmp_path / "enc3d.onnx"), size=(4, 8, 8))
    assert "spatial size [8, 8, 8]" in msg and "the job's size is [4, 8, 8]" in msg
    msg = check(model=str(tmp_path / "dyn.onnx"))
    assert "spatial axis 2 is dynamic" in msg and "'size'" in msg
    msg = check(model=str(tmp_path / "enc3d.onnx"), output="logits")
    assert "no output 'logits'" in msg and "['embedding']" in msg
    msg = check(model=str(tmp_path / "missing.onnx"))
    assert "cannot be read" in msg
    # a dynamic model with its size given in the job is fine
    engine = make_engine("onnx", OnnxEngineSpec(name="m", model=str(tmp_path / "dyn.onnx"), size=(8, 8, 8)))
    assert engine.prepare(text).model.size == (8, 8, 8)


def test_a_model_changed_after_the_check_fails_the_scan_naming_it(tmp_path: Path) -> None:
    arr, mask = _phantom(4)
    manifest = _scan(tmp_path, arr, mask)
    model = tmp_path / "enc.onnx"
    encoder(model, seed=11)
    text, digest = read_params(None)
    engine = make_engine("onnx", OnnxEngineSpec(name="c", model=str(model))).prepare(text)
    encoder(model, seed=12)  # replaced between the check and the run
    result = extract_scan(
        read_manifest(manifest).scans[0], ExtractionSettings(text, combined_key(digest, [engine]), engines=(engine,))
    )
    assert not result.rows
    (failure,) = result.failures
    assert failure.file == str(model) and "changed since the job was checked" in failure.message


def test_the_model_is_read_once_per_process(tmp_path: Path, monkeypatch) -> None:
    arr, mask = _phantom(5)
    manifest = _scan(tmp_path, arr, mask)
    encoder(tmp_path / "enc.onnx", seed=21)
    reads = []
    real = onnx_engine._io.read_bytes
    monkeypatch.setattr(onnx_engine._io, "read_bytes", lambda p: (reads.append(p), real(p))[1])
    options = OnnxEngineSpec(name="o", model=str(tmp_path / "enc.onnx"))
    text, digest = read_params(None)
    engine = make_engine("onnx", options).prepare(text)  # the check reads it (on the client)
    settings = ExtractionSettings(text, combined_key(digest, [engine]), engines=(engine,))
    scan = read_manifest(manifest).scans[0]
    first, second = extract_scan(scan, settings), extract_scan(scan, settings)
    assert len(reads) == 2  # the check's read and the first task's; the second task reuses the session
    assert [r["deep_o_0"] for r in first.rows] == [r["deep_o_0"] for r in second.rows]


def test_a_gpu_provider_is_used_when_present(monkeypatch) -> None:
    import onnxruntime

    monkeypatch.setattr(
        onnxruntime,
        "get_available_providers",
        lambda: ["AzureExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    assert onnx_engine._providers(None) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_engine._providers(("CPUExecutionProvider",)) == ["CPUExecutionProvider"]


def test_the_engines_key_changes_with_preprocessing_and_model_only(tmp_path: Path) -> None:
    encoder(tmp_path / "a.onnx", seed=1)
    encoder(tmp_path / "b.onnx", seed=2)
    text, _ = read_params(None)

    def key(**kw):
        return (
            make_engine("onnx", OnnxEngineSpec(**{"name": "k", "model": str(tmp_path / "a.onnx"), **kw}))
            .prepare(text)
            .key()
        )

    base = key()
    assert key(batch=4) == base and key(threads=2) == base
    assert key(margin=3.0) != base and key(window=(-100, 100)) != base
    assert key(model=str(tmp_path / "b.onnx")) != base


def test_the_engines_memory_estimate_joins_the_scans(tmp_path: Path) -> None:
    from radcluster.plan import estimate_bytes, make_plan

    arr, mask = _phantom(6)
    manifest = _scan(tmp_path, arr, mask)
    encoder(tmp_path / "enc.onnx", size=(16, 16, 16))
    text, digest = read_params(None)
    engine = make_engine("onnx", OnnxEngineSpec(name="m", model=str(tmp_path / "enc.onnx"), batch=4)).prepare(text)
    size = (tmp_path / "c1_image.nrrd").stat().st_size
    voxels = size * 4 // 2  # a small file: four times its size in 2-byte voxels (plan.estimate_bytes)
    extra = engine.memory_bytes(voxels)
    # the session (twice the model file), a call's input with its activations, the crop's copies
    assert extra == 2 * engine.model.size_bytes + 4 * 16**3 * 4 * 64 + 8 * voxels
    assert estimate_bytes(["Original"], size, None, [engine]) == estimate_bytes(["Original"], size, None) + extra
    plain = make_plan(read_manifest(manifest), pd.DataFrame(), digest, ["Original"])
    deep = make_plan(read_manifest(manifest), pd.DataFrame(), digest, ["Original"], engines=[engine])
    assert deep.tasks[0].memory == plain.tasks[0].memory + extra
