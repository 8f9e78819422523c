"""Tiny ONNX encoders built in code (onnx's helper API, fixed weights) and the same networks
in numpy, so the tests check the onnx engine without downloading anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def encoder(
    path: Path,
    *,
    dims: int = 3,
    size: tuple[int, ...] = (8, 8, 8),
    channels: int = 4,
    in_channels: int = 1,
    batch: int | str = "N",
    integer: bool = False,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Write conv 3^d (padding 1) + bias -> ReLU -> max pool 2^d -> global average pool ->
    flatten to ``path``; return its weights for :func:`encode`.

    ``integer`` draws weights and biases from {-2, ..., 2}: on inputs that are multiples of
    2**-11 in [0, 1] every partial sum is then exact in float32 (at most 2**24 units of 2**-11),
    so ONNX Runtime and numpy agree bit for bit whatever order they add in. ``size`` entries
    may be names (dynamic axes).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    kernel = (channels, in_channels, *([3] * dims))
    if integer:
        w = rng.integers(-2, 3, size=kernel).astype(np.float32)
        b = rng.integers(-2, 3, size=channels).astype(np.float32)
    else:
        w = rng.normal(size=kernel).astype(np.float32)
        b = rng.normal(size=channels).astype(np.float32)
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, in_channels, *size])
    y = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, channels])
    nodes = [
        helper.make_node("Conv", ["image", "W", "B"], ["c"], pads=[1] * (2 * dims), kernel_shape=[3] * dims),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2] * dims, strides=[2] * dims),
        helper.make_node("GlobalAveragePool", ["p"], ["g"]),
        helper.make_node("Flatten", ["g"], ["embedding"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_encoder", [x], [y], [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every ONNX Runtime of the last years
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return w, b


def encode(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The network of :func:`encoder` in numpy; ``x`` is (batch, channels, *spatial) float32."""
    dims = x.ndim - 2
    spatial = x.shape[2:]
    padded = np.pad(x, [(0, 0), (0, 0)] + [(1, 1)] * dims)
    out = np.zeros((x.shape[0], w.shape[0], *spatial), np.float32)
    for offset in np.ndindex(*([3] * dims)):
        window = padded[(slice(None), slice(None), *(slice(o, o + n) for o, n in zip(offset, spatial, strict=True)))]
        out += np.einsum("nc...,oc->no...", window, w[(slice(None), slice(None), *offset)])
    out = np.maximum(out + b.reshape(1, -1, *([1] * dims)), 0)
    blocks = [x.shape[0], w.shape[0]]
    for n in spatial:
        blocks += [n // 2, 2]
    pooled = out.reshape(blocks).max(axis=tuple(range(3, 3 + 2 * dims, 2)))
    return pooled.mean(axis=tuple(range(2, 2 + dims)))
