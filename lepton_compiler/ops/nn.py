"""Convolution, pooling, dense and softmax ops."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import Node, TensorType
from .registry import OpKind, register, require
from .shapes import normalize_axis, sliding_views, static_dims, window, broadcast_shapes


def _float_input(node: Node, index: int = 0) -> TensorType:
    t = node.inputs[index].type
    require(node, t.dtype in ("float32", "float64", "float16"), f"expects a float tensor, got {t}")
    return t


# -- Conv ----------------------------------------------------------------------------------
def conv_window(node: Node):
    x, w = node.inputs[0].type, node.inputs[1].type
    spatial = static_dims(node, x, range(2, x.rank), "spatial")
    kernel = static_dims(node, w, range(2, w.rank), "kernel")
    if node.attr("kernel_shape") is not None:
        require(node, list(node.attr("kernel_shape")) == kernel,
                f"kernel_shape {node.attr('kernel_shape')} does not match the weight's {kernel}")
    return window(node, spatial, kernel)


def infer_conv(node: Node) -> list[TensorType]:
    x, w = _float_input(node, 0), _float_input(node, 1)
    require(node, x.rank >= 3 and w.rank == x.rank, f"input {x} and weight {w} ranks do not fit a convolution")
    group = node.attr("group", 1)
    out_ch, in_per_group = static_dims(node, w, [0, 1], "weight channel")
    in_ch = x.shape[1]
    require(node, isinstance(in_ch, int), "input channels must be static")
    require(node, group >= 1 and in_ch % group == 0 and out_ch % group == 0,
            f"group {group} does not divide input channels {in_ch} and output channels {out_ch}")
    require(node, in_ch // group == in_per_group,
            f"input channels {in_ch} / group {group} do not match the weight's {in_per_group}")
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is not None:
        require(node, bias.type.shape == (out_ch,), f"bias {bias.type} should be [{out_ch}]")
    win = conv_window(node)
    return [TensorType(x.dtype, (x.shape[0], out_ch, *win.out))]


def conv_sums(x: np.ndarray, w: np.ndarray, win, group: int) -> np.ndarray:
    """``sum(x * w)`` over each window, in the arrays' own dtype (padding reads 0)."""
    padded, views = sliding_views(x, win, 0)
    out_ch, icg = w.shape[0], w.shape[1]
    ocg = out_ch // group
    out = np.zeros((x.shape[0], out_ch, *win.out), x.dtype)
    for offset, idx in views:
        patch = padded[idx]
        for g in range(group):
            wk = w[(slice(g * ocg, (g + 1) * ocg), slice(None), *offset)]
            out[:, g * ocg:(g + 1) * ocg] += np.einsum("nc...,oc->no...", patch[:, g * icg:(g + 1) * icg], wk)
    return out


def reference_conv(node: Node, inputs):
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    win = conv_window(node)
    out = conv_sums(x.astype(np.float64), w.astype(np.float64), win, node.attr("group", 1))
    if bias is not None:
        out += bias.astype(np.float64).reshape((1, -1) + (1,) * len(win.out))
    return [out.astype(x.dtype)]


register("Conv", infer_conv, reference_conv, OpKind.OPAQUE)


# -- MaxPool -------------------------------------------------------------------------------
def pool_window(node: Node):
    x = node.inputs[0].type
    spatial = static_dims(node, x, range(2, x.rank), "spatial")
    kernel = node.attr("kernel_shape")
    require(node, kernel is not None, "kernel_shape attribute is required")
    return window(node, spatial, list(kernel), ceil_mode=bool(node.attr("ceil_mode", 0)))


def infer_maxpool(node: Node) -> list[TensorType]:
    x = node.inputs[0].type
    if x.dtype not in ("uint8", "int8"):  # uint8/int8: quantized activations (ONNX MaxPool-12)
        x = _float_input(node)
    require(node, x.rank >= 3, f"expects [N, C, spatial...], got {x}")
    require(node, len(node.outputs) == 1, "the Indices output is not supported")
    require(node, node.attr("storage_order", 0) == 0, "storage_order=1 is not supported")
    win = pool_window(node)
    return [TensorType(x.dtype, (x.shape[0], x.shape[1], *win.out))]


def reference_maxpool(node: Node, inputs):
    x = inputs[0]
    win = pool_window(node)
    lowest = np.iinfo(x.dtype).min if x.dtype.kind in "iu" else -np.inf
    padded, views = sliding_views(x, win, lowest)
    out = np.full((x.shape[0], x.shape[1], *win.out), lowest, x.dtype)
    for _, idx in views:
        out = np.maximum(out, padded[idx])
    return [out]


register("MaxPool", infer_maxpool, reference_maxpool, OpKind.OPAQUE)


# -- Gemm and MatMul -----------------------------------------------------------------------
def infer_gemm(node: Node) -> list[TensorType]:
    a, b = _float_input(node, 0), _float_input(node, 1)
    require(node, a.rank == 2 and b.rank == 2, f"expects 2-D A and B, got {a} and {b}")
    m, ka = (a.shape[1], a.shape[0]) if node.attr("transA", 0) else a.shape
    kb, n = (b.shape[1], b.shape[0]) if node.attr("transB", 0) else b.shape
    require(node, ka == kb, f"inner dims differ: A {a} and B {b}")
    c = node.inputs[2] if len(node.inputs) > 2 else None
    if c is not None:
        require(node, broadcast_shapes(node, c.type.shape, (m, n)) == (m, n),
                f"C {c.type} does not broadcast to [{m}, {n}]")
    return [TensorType(a.dtype, (m, n))]


def reference_gemm(node: Node, inputs):
    a, b = inputs[0].astype(np.float64), inputs[1].astype(np.float64)
    if node.attr("transA", 0):
        a = a.T
    if node.attr("transB", 0):
        b = b.T
    y = node.attr("alpha", 1.0) * (a @ b)
    c = inputs[2] if len(inputs) > 2 else None
    if c is not None:
        y = y + node.attr("beta", 1.0) * c.astype(np.float64)
    return [y.astype(inputs[0].dtype)]


register("Gemm", infer_gemm, reference_gemm, OpKind.OPAQUE)


def infer_matmul(node: Node) -> list[TensorType]:
    a, b = _float_input(node, 0), _float_input(node, 1)
    require(node, a.rank >= 1 and b.rank >= 1, "MatMul needs operands of rank 1 or more")
    sa = (1,) + a.shape if a.rank == 1 else a.shape
    sb = b.shape + (1,) if b.rank == 1 else b.shape
    require(node, sa[-1] == sb[-2], f"inner dims differ: {a} @ {b}")
    batch = broadcast_shapes(node, sa[:-2], sb[:-2])
    shape = batch + (sa[-2], sb[-1])
    if a.rank == 1:
        shape = shape[:-2] + shape[-1:]
    if b.rank == 1:
        shape = shape[:-1]
    return [TensorType(a.dtype, shape)]


def reference_matmul(node: Node, inputs):
    a, b = inputs
    return [np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(a.dtype)]


register("MatMul", infer_matmul, reference_matmul, OpKind.OPAQUE)


# -- Softmax (opset 13 semantics: one axis) ------------------------------------------------
def infer_softmax(node: Node) -> list[TensorType]:
    x = _float_input(node)
    normalize_axis(node, node.attr("axis", -1), x.rank)
    return [x]


def reference_softmax(node: Node, inputs):
    x = inputs[0]
    axis = normalize_axis(node, node.attr("axis", -1), x.ndim)
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=axis, keepdims=True, initial=-np.inf))
    return [(e / e.sum(axis=axis, keepdims=True)).astype(x.dtype)]


register("Softmax", infer_softmax, reference_softmax, OpKind.REDUCTION)


# -- BatchNormalization (inference) ----------------------------------------------------------------
def infer_batchnorm(node: Node) -> list[TensorType]:
    x = _float_input(node)
    require(node, x.rank >= 2, f"expects [N, C, ...], got {x}")
    require(node, not node.attr("training_mode", 0), "training mode is not supported")
    require(node, len(node.outputs) == 1, "the running mean/var outputs (training mode) are not supported")
    channels = x.shape[1]
    for i, what in enumerate(("scale", "B", "mean", "var"), start=1):
        require(node, node.inputs[i] is not None and node.inputs[i].type.shape == (channels,),
                f"{what} must have shape [{channels}]")
    return [x]


def batchnorm_affine(node: Node, scale, bias, mean, var) -> tuple[np.ndarray, np.ndarray]:
    """BatchNormalization as ``x * a + b`` per channel (float64)."""
    a = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + node.attr("epsilon", 1e-5))
    return a, bias.astype(np.float64) - mean.astype(np.float64) * a


def reference_batchnorm(node: Node, inputs):
    x = inputs[0]
    a, b = batchnorm_affine(node, *inputs[1:5])
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return [(x.astype(np.float64) * a.reshape(shape) + b.reshape(shape)).astype(x.dtype)]


register("BatchNormalization", infer_batchnorm, reference_batchnorm, OpKind.ELEMENTWISE)


def reference_log_softmax(node: Node, inputs):
    x = inputs[0]
    axis = normalize_axis(node, node.attr("axis", -1), x.ndim)
    shifted = x.astype(np.float64) - x.astype(np.float64).max(axis=axis, keepdims=True, initial=-np.inf)
    return [(shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))).astype(x.dtype)]


register("LogSoftmax", infer_softmax, reference_log_softmax, OpKind.REDUCTION)


# -- InstanceNormalization -------------------------------------------------------------------------
def infer_instancenorm(node: Node) -> list[TensorType]:
    x = _float_input(node)
    require(node, x.rank >= 3, f"expects [N, C, spatial...], got {x}")
    channels = x.shape[1]
    for i, what in ((1, "scale"), (2, "B")):
        require(node, node.inputs[i] is not None and node.inputs[i].type.shape == (channels,),
                f"{what} must have shape [{channels}]")
    return [x]


def reference_instancenorm(node: Node, inputs):
    x, scale, bias = inputs
    x64 = x.astype(np.float64)
    axes = tuple(range(2, x.ndim))
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x64 - mean) / np.sqrt(var + node.attr("epsilon", 1e-5))
    return [(y * scale.astype(np.float64).reshape(shape) + bias.astype(np.float64).reshape(shape)).astype(x.dtype)]


register("InstanceNormalization", infer_instancenorm, reference_instancenorm, OpKind.OPAQUE)


# -- ConvTranspose ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TransposedWindow:
    """Geometry of a transposed convolution: input position ``i`` and kernel tap ``k``
    write output position ``i * stride + k * dilation - pads_begin`` (when in ``[0, out)``)."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    out: tuple[int, ...]


def conv_transpose_window(node: Node) -> TransposedWindow:
    """Resolve pads, auto_pad, output_padding and output_shape as ONNX's reference does."""
    x, w = node.inputs[0].type, node.inputs[1].type
    spatial = static_dims(node, x, range(2, x.rank), "spatial")
    kernel = static_dims(node, w, range(2, w.rank), "kernel")
    nd = len(spatial)
    if node.attr("kernel_shape") is not None:
        require(node, list(node.attr("kernel_shape")) == kernel,
                f"kernel_shape {node.attr('kernel_shape')} does not match the weight's {kernel}")
    strides = list(node.attr("strides", [1] * nd))
    dilations = list(node.attr("dilations", [1] * nd))
    adjust = list(node.attr("output_padding", [0] * nd))
    auto_pad = node.attr("auto_pad", "NOTSET")
    require(node, len(strides) == nd and all(s >= 1 for s in strides), f"invalid strides {strides}")
    require(node, len(dilations) == nd and all(d >= 1 for d in dilations), f"invalid dilations {dilations}")
    require(node, len(adjust) == nd and all(a >= 0 for a in adjust), f"invalid output_padding {adjust}")
    require(node, auto_pad in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"), f"unknown auto_pad {auto_pad!r}")
    full = [s * (i - 1) + a + (k - 1) * d + 1 for s, i, a, k, d in zip(strides, spatial, adjust, kernel, dilations)]
    output_shape = node.attr("output_shape")
    if output_shape is not None:
        output_shape = list(output_shape)[-nd:]
        require(node, len(output_shape) == nd and all(o >= 1 for o in output_shape),
                f"invalid output_shape {node.attr('output_shape')}")
    pads = node.attr("pads")
    if pads is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = output_shape or [i * s for i, s in zip(spatial, strides)]
        total = [f - o for f, o in zip(full, out)]
        begin = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
    else:
        pads = [0] * (2 * nd) if pads is None or auto_pad == "VALID" else list(pads)
        require(node, len(pads) == 2 * nd and all(p >= 0 for p in pads), f"invalid pads {pads}")
        begin = pads[:nd]
        out = output_shape or [f - b - e for f, b, e in zip(full, pads[:nd], pads[nd:])]
    require(node, all(o >= 1 for o in out), f"the output would be empty: {out}")
    return TransposedWindow(tuple(kernel), tuple(strides), tuple(dilations), tuple(begin), tuple(out))


def infer_conv_transpose(node: Node) -> list[TensorType]:
    x, w = _float_input(node, 0), _float_input(node, 1)
    require(node, x.rank >= 3 and w.rank == x.rank, f"input {x} and weight {w} ranks do not fit a convolution")
    group = node.attr("group", 1)
    in_ch, out_per_group = static_dims(node, w, [0, 1], "weight channel")
    require(node, x.shape[1] == in_ch, f"input channels {x.shape[1]} do not match the weight's {in_ch}")
    require(node, group >= 1 and in_ch % group == 0, f"group {group} does not divide input channels {in_ch}")
    out_ch = out_per_group * group
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is not None:
        require(node, bias.type.shape == (out_ch,), f"bias {bias.type} should be [{out_ch}]")
    win = conv_transpose_window(node)
    return [TensorType(x.dtype, (x.shape[0], out_ch, *win.out))]


def reference_conv_transpose(node: Node, inputs):
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    win = conv_transpose_window(node)
    group = node.attr("group", 1)
    batch, in_ch, spatial = x.shape[0], x.shape[1], x.shape[2:]
    icg, ocg = in_ch // group, w.shape[1]
    # Scatter every tap into a buffer that covers all written positions, then crop.
    lows = [min(0, -b) for b in win.pads_begin]
    highs = [max(o, (i - 1) * s + (k - 1) * d + 1 - b)
             for o, i, s, k, d, b in zip(win.out, spatial, win.strides, win.kernel, win.dilations, win.pads_begin)]
    buf = np.zeros((batch, ocg * group, *[h - lo for h, lo in zip(highs, lows)]), np.float64)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    for offset in np.ndindex(*win.kernel):
        idx = [slice(None), slice(None)]
        for a, k in enumerate(offset):
            start = k * win.dilations[a] - win.pads_begin[a] - lows[a]
            idx.append(slice(start, start + (spatial[a] - 1) * win.strides[a] + 1, win.strides[a]))
        for g in range(group):
            wk = w64[(slice(g * icg, (g + 1) * icg), slice(None), *offset)]
            contrib = np.einsum("nc...,co->no...", x64[:, g * icg:(g + 1) * icg], wk)
            buf[(idx[0], slice(g * ocg, (g + 1) * ocg), *idx[2:])] += contrib
    crop = tuple(slice(-lo, -lo + o) for lo, o in zip(lows, win.out))
    out = buf[(slice(None), slice(None), *crop)]
    if bias is not None:
        out = out + bias.astype(np.float64).reshape((1, -1) + (1,) * len(win.out))
    return [out.astype(x.dtype)]


register("ConvTranspose", infer_conv_transpose, reference_conv_transpose, OpKind.OPAQUE)
