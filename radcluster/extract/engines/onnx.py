"""The ``onnx`` engine: any ONNX model's embedding of each ROI, as columns ``deep_<name>_<i>``.

Per ROI (the label's bounding box in the mask), in this order:

1. **Crop** the bounding box grown by ``margin`` mm on every side, clipped to the image.
2. **Resample** the crop to ``spacing`` (x, y, z mm; 0 keeps an axis; null keeps the scan's) on
   a grid centred on the crop's centre (``interpolation``, linear by default; points outside the
   crop take the nearest voxel). The result is float32.
3. **Window and normalise**: ``window: [low, high]`` clips to [low, high] and scales to [0, 1]
   (CT HU); ``zscore: true`` then subtracts the crop's mean and divides by its standard deviation.
4. **Pad or crop to the model's input size** ([z, y, x] in SimpleITK's array order, which is
   PyTorch's [D, H, W]) so that the ROI's centre lands at the patch centre as far as the crop
   allows: a crop larger than the input is cut around the ROI's centre; a crop smaller than
   the input is placed whole, centred, and the rest filled with ``pad_value`` (when the two
   sizes differ by an odd number of voxels, the extra padding voxel goes after the crop).
5. **Run** ONNX Runtime. ``mode: 3d``: the patch is one sample [1, z, y, x]. ``mode: 2.5d``:
   the ``slices`` consecutive axial slices centred on the ROI's centre slice (those inside the
   crop) are samples of a 2D model [1, y, x], and the ROI's embedding is their mean. A model
   with C > 1 input channels gets the single channel repeated C times (ImageNet-style 2D
   encoders). The samples of all ROIs of a scan go through the model together, ``batch`` per
   call (the model's own batch size when it declares a fixed one). The output (the one named
   ``output``, by default the first) is flattened per sample: ``deep_<name>_0`` ...

The model file is read on each worker once and its ONNX Runtime session cached by the file's
sha256 (checked against the one the job was validated with); the session uses the worker's
threads (``threads`` overrides) and a GPU execution provider when one is installed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ... import _io
from ...errors import ScanError, SpecError
from . import DEEP_PREFIX, Engine, ScanImage

__all__ = ["OnnxEngine", "ModelInfo", "preprocess", "place", "load_session"]

# tried in this order before the CPU; AzureExecutionProvider (remote inference) is never picked
GPU_PROVIDERS = ("CUDAExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider")
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
_INTERPOLATORS = ("linear", "bspline", "nearest")
# rough size of a convolutional encoder's activations against its input, for the memory estimate
_ACTIVATION_FACTOR = 64


@dataclass(frozen=True)
class ModelInfo:
    """What the check of a model found: its hash, the tensors used and their sizes."""

    sha256: str
    size_bytes: int
    input: str
    output: str
    dtype: str
    channels: int
    size: tuple[int, ...]  # spatial input size, (z, y, x) or (y, x)
    batch: int | None  # the model's fixed batch size; None when the axis is dynamic
    width: int  # embedding length: the columns deep_<name>_0 .. deep_<name>_<width - 1>


def _import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise SpecError(
            "feature engine 'onnx'",
            "needs ONNX Runtime, not installed here",
            "pip install 'radcluster[onnx]' (or onnxruntime-gpu for CUDA)",
        ) from None
    return onnxruntime


def _providers(requested) -> list[str]:
    ort = _import_ort()
    if requested is not None:
        return list(requested)
    available = ort.get_available_providers()
    return [p for p in GPU_PROVIDERS if p in available] + ["CPUExecutionProvider"]


def _new_session(data: bytes, threads: int, providers: list[str]):
    ort = _import_ort()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # ORT's pool otherwise spins after each run waiting for more work, taking CPU from the
    # other engines and tasks of the worker
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3  # warnings about unused initialisers etc. are not the user's business
    return ort.InferenceSession(data, so, providers=providers)


_SESSIONS: dict[tuple, Any] = {}
_SESSIONS_LOCK = threading.Lock()


def load_session(model: str, sha256: str, threads: int, providers=None):
    """The ONNX Runtime session of ``model``, created once per process (worker) and cached by the
    model's sha256, providers and threads; the file must still hash to ``sha256``."""
    provs = _providers(providers)
    key = (sha256, tuple(provs), threads)
    with _SESSIONS_LOCK:  # one worker's threads ask at once; the model is read once
        sess = _SESSIONS.get(key)
        if sess is None:
            data = _io.read_bytes(model)
            got = hashlib.sha256(data).hexdigest()
            if got != sha256:
                raise RuntimeError(
                    f"model {model!r} changed since the job was checked "
                    f"(sha256 {got[:12]}..., checked {sha256[:12]}...)"
                )
            sess = _SESSIONS[key] = _new_session(data, threads, provs)
    return sess


def inspect_model(options) -> ModelInfo:
    """Check ``options`` against the model's declared input and output, and run it once on
    zeros; raise :class:`SpecError` naming the mismatch. Runs on the client, before any cluster."""
    where = f"onnx engine {options.name!r} model {options.model!r}"
    try:
        data = _io.read_bytes(options.model)
    except Exception as err:  # fsspec and the OS raise many types
        raise SpecError(where, f"cannot be read ({err})", "give the path or fsspec URL of an ONNX file") from None
    try:
        sess = _new_session(data, 1, ["CPUExecutionProvider"])
    except SpecError:
        raise
    except Exception as err:  # ONNX Runtime raises its own types for invalid models
        raise SpecError(where, f"is not a model ONNX Runtime can load ({err})", "give an ONNX model file") from None
    inputs = {i.name: i for i in sess.get_inputs()}
    if options.input is None and len(inputs) != 1:
        raise SpecError(where, f"has {len(inputs)} inputs {list(inputs)}", "name the image one with 'input'")
    inp = inputs.get(options.input) if options.input else next(iter(inputs.values()))
    if inp is None:
        raise SpecError(where, f"has no input {options.input!r}", f"its inputs: {list(inputs)}")
    if inp.type not in _DTYPES:
        raise SpecError(where, f"input {inp.name!r} is {inp.type}", f"supported: {', '.join(_DTYPES)}")
    shape = list(inp.shape)
    rank = 5 if options.mode == "3d" else 4
    if len(shape) != rank:
        axes = "[batch, channels, z, y, x]" if rank == 5 else "[batch, channels, y, x]"
        hint = {4: "; it is a 2D model: use mode '2.5d'", 5: "; it is a 3D model: use mode '3d'"}.get(len(shape), "")
        raise SpecError(
            where,
            f"input {inp.name!r} has shape {shape} (rank {len(shape)})",
            f"mode {options.mode!r} needs {axes} (rank {rank}){hint}",
        )
    declared = shape[2:]
    if options.size is not None and len(options.size) != len(declared):
        raise SpecError(
            where,
            f"size {list(options.size)} has {len(options.size)} values",
            f"input {inp.name!r} {shape} has {len(declared)} spatial axes",
        )
    size = []
    for i, d in enumerate(declared):
        given = options.size[i] if options.size is not None else None
        if isinstance(d, int) and given is not None and given != d:
            raise SpecError(
                where,
                f"the job's size is {list(options.size)}, input {inp.name!r} has shape {shape}, "
                f"spatial size {declared}",
                "give the model's spatial size, or leave 'size' out",
            )
        if not isinstance(d, int) and given is None:
            raise SpecError(
                where,
                f"input {inp.name!r} has shape {shape}: spatial axis {i + 2} is dynamic",
                "give the patch size with 'size'",
            )
        size.append(d if isinstance(d, int) else given)
    channels = shape[1] if isinstance(shape[1], int) else 1
    batch = shape[0] if isinstance(shape[0], int) else None
    outputs = {o.name: o for o in sess.get_outputs()}
    out = outputs.get(options.output) if options.output else next(iter(outputs.values()))
    if out is None:
        raise SpecError(where, f"has no output {options.output!r}", f"its outputs: {list(outputs)}")
    x = np.zeros((batch or 1, channels, *size), _DTYPES[inp.type])
    try:
        y = sess.run([out.name], {inp.name: x})[0]
    except Exception as err:  # the declared shapes were not the whole story
        raise SpecError(
            where,
            f"fails on an input of shape {list(x.shape)} ({err})",
            "check the model's input axes, 'mode' and 'size'",
        ) from None
    if y.ndim < 1 or y.shape[0] != x.shape[0]:
        raise SpecError(
            where,
            f"output {out.name!r} has shape {list(y.shape)} for a batch of {x.shape[0]}",
            "expected [batch, ...] (one embedding per sample)",
        )
    return ModelInfo(
        hashlib.sha256(data).hexdigest(),
        len(data),
        inp.name,
        out.name,
        inp.type,
        channels,
        tuple(size),
        batch,
        int(np.prod(y.shape[1:])),
    )


# --- preprocessing ---------------------------------------------------------------------------
def _crop_region(shape_zyx, box, spacing_xyz, margin_mm: float) -> list[tuple[int, int]]:
    """(start, stop) per (z, y, x) axis: ``box`` grown by ``margin_mm``, clipped to the image."""
    out = []
    for sl, n, s in zip(box, shape_zyx, spacing_xyz[::-1], strict=True):
        m = math.ceil(margin_mm / s - 1e-9)  # 1e-9: a margin of exactly k voxels is k, not k + 1
        out.append((max(sl.start - m, 0), min(sl.stop + m, n)))
    return out


def _resample(image, spacing, interpolation: str):
    """``image`` on a grid of ``spacing`` with the same centre and direction, as float32."""
    import SimpleITK as sitk

    old = np.array(image.GetSpacing(), float)
    new = np.where(np.array(spacing, float) > 0, spacing, old)
    size = np.array(image.GetSize())
    new_size = np.maximum(1, np.floor(size * old / new + 0.5)).astype(int)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin()) + direction @ ((old * (size - 1) - new * (new_size - 1)) / 2)
    interp = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline, "nearest": sitk.sitkNearestNeighbor}
    return sitk.Resample(
        image,
        new_size.tolist(),
        sitk.Transform(),
        interp[interpolation],
        origin.tolist(),
        new.tolist(),
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
        True,  # True: outside points take the nearest voxel
    )


def place(arr: np.ndarray, centre, size, pad_value: float) -> np.ndarray:
    """``arr`` cut or padded to ``size`` so that index ``centre`` (continuous) lands at the
    patch centre as far as possible: never padded where ``arr`` is large enough, never cut where
    it fits (step 4 of the module docstring)."""
    out = np.full(size, pad_value, dtype=np.float32)
    src, dst = [], []
    for n, c, t in zip(arr.shape, centre, size, strict=True):
        o = math.floor(c - (t - 1) / 2 + 0.5)  # patch index 0 is arr index o
        o = min(max(o, 0), n - t) if n >= t else min(max(o, n - t), 0)
        lo, hi = max(o, 0), min(o + t, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - o, hi - o))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def preprocess(image, box: tuple[slice, ...], options, size: tuple[int, ...]) -> np.ndarray:
    """The model's samples for one ROI: (samples, *size) float32, steps 1-4 of the module docstring.

    ``box`` is the ROI's (z, y, x) slices in ``image``'s array; ``size`` the model's spatial input.
    """
    import SimpleITK as sitk

    shape = sitk.GetArrayViewFromImage(image).shape
    region = _crop_region(shape, box, image.GetSpacing(), options.margin)
    crop = sitk.RegionOfInterest(image, [b - a for a, b in region][::-1], [a for a, _ in region][::-1])
    # the ROI's centre, (z, y, x) in the crop: halves of a voxel, exact, unless resampled
    at = [(sl.start + sl.stop - 1) / 2 - a for sl, (a, _) in zip(box, region, strict=True)]
    if options.spacing:
        point = crop.TransformContinuousIndexToPhysicalPoint(at[::-1])
        crop = _resample(crop, options.spacing, options.interpolation)
        # rounded: a centre meant to be a whole or half voxel must not become 3.9999999
        at = [round(c, 6) for c in crop.TransformPhysicalPointToContinuousIndex(point)[::-1]]
    else:
        crop = sitk.Cast(crop, sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(crop)
    if options.window is not None:
        low, high = np.float32(options.window[0]), np.float32(options.window[1])
        arr = (np.clip(arr, low, high) - low) / (high - low)
    if options.zscore:
        mean, sd = float(arr.mean(dtype=np.float64)), float(arr.std(dtype=np.float64))
        arr = ((arr - mean) / (sd if sd > 0 else 1.0)).astype(np.float32)
    if options.mode == "3d":
        return place(arr, at, size, options.pad_value)[None]
    first = math.floor(at[0] - (options.slices - 1) / 2 + 0.5)
    zs = [z for z in range(first, first + options.slices) if 0 <= z < arr.shape[0]]
    return np.stack([place(arr[z], at[1:], size, options.pad_value) for z in zs])


def _embed(sess, info: ModelInfo, samples: list[np.ndarray], batch: int) -> list[np.ndarray]:
    """Every ROI's samples through the model, ``batch`` per call; one float64 embedding per ROI
    (the mean of its samples' outputs; a 3D ROI's single output unchanged)."""
    x = np.concatenate(samples)[:, None].astype(_DTYPES[info.dtype], copy=False)
    if info.channels > 1:
        x = np.repeat(x, info.channels, axis=1)
    step = info.batch or batch
    outs = []
    for start in range(0, len(x), step):
        chunk = x[start : start + step]
        n = len(chunk)
        if info.batch and n < info.batch:  # a fixed batch axis: fill the last call with zeros
            chunk = np.concatenate([chunk, np.zeros((info.batch - n, *chunk.shape[1:]), chunk.dtype)])
        outs.append(sess.run([info.output], {info.input: chunk})[0][:n].reshape(n, -1))
    y = np.concatenate(outs).astype(np.float64)
    bounds = np.cumsum([0] + [len(s) for s in samples])
    return [y[a:b].mean(axis=0) for a, b in itertools.pairwise(bounds)]


@dataclass(frozen=True)
class OnnxEngine(Engine):
    """An ONNX model as a feature engine; ``options`` is the job's ``{onnx: {...}}`` section
    (:class:`radcluster.spec.extraction.OnnxEngineSpec`), ``model`` what :meth:`prepare` found."""

    options: Any
    model: ModelInfo | None = None
    name = "onnx"
    kind = "deep"

    def prepare(self, params_text: str) -> OnnxEngine:
        return OnnxEngine(self.options, inspect_model(self.options))

    def key(self) -> str:
        # what changes the values: the preprocessing and the model's bytes (not where the file
        # lives, how many samples go per call, or the threads)
        opts = self.options.model_dump(mode="json", exclude={"model", "batch", "providers", "threads"})
        digest = hashlib.sha256(json.dumps([opts, self._info().sha256], sort_keys=True).encode()).hexdigest()
        return f"onnx-{self.options.name}-{digest[:12]}"

    def _info(self) -> ModelInfo:
        if self.model is None:
            raise RuntimeError("OnnxEngine.prepare() must run before the engine is used")
        return self.model

    def columns(self) -> list[str]:
        return [f"{DEEP_PREFIX}{self.options.name}_{i}" for i in range(self._info().width)]

    def memory_bytes(self, voxels: int) -> int:
        info = self._info()
        per_sample = info.channels * math.prod(info.size) * 4
        samples = info.batch or self.options.batch
        # the session (weights, and ONNX Runtime's copy while it loads them), one call's input and
        # activations, and a crop as large as the image in float32 plus its resampled copy
        return 2 * info.size_bytes + samples * per_sample * _ACTIVATION_FACTOR + 8 * voxels

    def provenance(self) -> dict[str, Any]:
        ort = _import_ort()
        return {
            f"onnx_{self.options.name}_sha256": self._info().sha256,
            "onnxruntime_version": ort.__version__,
        }

    def check(self, scan: ScanImage) -> None:
        problem = None
        if scan.image.GetDimension() != 3:
            problem = f"image is {scan.image.GetDimension()}D; the onnx engine takes 3D images"
        elif scan.image.GetNumberOfComponentsPerPixel() > 1 or scan.mask.GetNumberOfComponentsPerPixel() > 1:
            problem = "the onnx engine takes a scalar image and a label-map mask (not vector images)"
        if problem:
            raise ScanError(
                scan.scan.case_id, "check", f"engine onnx {self.options.name!r}: {problem}", file=scan.scan.image
            )

    def extract(self, scan: ScanImage, settings) -> dict[int, Any]:
        info = self._info()
        present = scan.present
        if not present:
            raise ScanError(scan.scan.case_id, "check", "mask is empty (no non-zero voxel)", file=scan.scan.mask)
        wanted = scan.labels(present)
        out: dict[int, Any] = {}
        labels, samples = [], []
        for label in wanted:
            if label not in present:
                out[label] = scan.absent(label, present)
                continue
            try:
                samples.append(preprocess(scan.image, scan.boxes[label - 1], self.options, info.size))
                labels.append(label)
            except Exception as err:  # SimpleITK raises RuntimeError for a degenerate crop
                out[label] = ScanError.wrap(scan.scan.case_id, err, file=scan.scan.image, label=label)
        if not labels:
            return out
        try:
            sess = load_session(
                self.options.model, info.sha256, self.options.threads or scan.threads, self.options.providers
            )
            embeddings = _embed(sess, info, samples, self.options.batch)
        except Exception as err:  # a model that cannot be read or run here fails the scan, named
            raise ScanError(
                scan.scan.case_id, "extract", f"engine onnx {self.options.name!r}: {err}", file=self.options.model
            ) from err
        names = self.columns()
        for label, emb in zip(labels, embeddings, strict=True):
            if not np.isfinite(emb).all():
                out[label] = ScanError(
                    scan.scan.case_id,
                    "extract",
                    f"engine onnx {self.options.name!r}: the model gave non-finite values",
                    file=scan.scan.image,
                    label=label,
                )
                continue
            out[label] = dict(zip(names, emb.tolist(), strict=True))
        return {label: out[label] for label in wanted}
