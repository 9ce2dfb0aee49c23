"""``lepton.QAveragePool``: average pooling of a uint8 tensor inside an int8 region.

``QAveragePool(x: uint8[N, C, spatial...]) -> uint8[N, C, out...]``, attributes: ``global_pool``
(1: GlobalAveragePool's window, the whole plane; 0: AveragePool's, with its ``kernel_shape``,
``strides``, ``pads``, ``dilations``, ``ceil_mode``, ``count_include_pad``, ``auto_pad``),
``x_scale``, ``x_zero_point``, ``y_scale``, ``y_zero_point``.

Semantics (the interpreter, the LLVM kernel and the standard-ONNX export compute exactly this):

* ``S[p] = sum(x - x_zp)`` over the input elements of output position ``p``'s window (padding
  adds nothing), exact (int32 in the kernel);
* ``count[p]``: AveragePool's divisor (``ops/pool.window_counts``: real taps, plus the explicit
  padding with ``count_include_pad``; never ceil_mode's extra room); the whole plane for a global pool;
* ``M[p] = fp32(x_scale / (count[p] * y_scale))``, computed in float64 from the fp32 scales and
  rounded to fp32 once (a compile-time table, ``multipliers``);
* ``y = clamp(rint(fp32(S[p]) * M[p]) + y_zp, 0, 255)``, one fp32 product, ``rint`` half to even.

``|S| <= count * 255 <= 2**24`` is required (``MAX_COUNT``), so ``fp32(S)`` is exact and any
fp32 summation order gives the same ``S``: the ONNX export is ``DequantizeLinear(x, 1, x_zp)``
(exactly ``fp32(x - x_zp)``), a depthwise Conv with all-ones weights (the window sum, exact in
fp32; ceil_mode's room becomes extra end padding, which reads 0), ``Mul`` by ``M`` and
``QuantizeLinear(v, 1, y_zp)`` (``saturate(rint(v) + y_zp)``). Not com.microsoft's
QLinearAveragePool: ONNX Runtime computes that one with its own float order, which no exact
standard expansion reproduces.
"""

from __future__ import annotations

import numpy as np

from ..ir import Node, TensorType
from .nn import pool_window
from .pool import window_counts
from .registry import OpKind, register, require
from .shapes import sliding_views

MAX_COUNT = (1 << 24) // 255
"""The largest window (taps counted) whose sum of ``x - x_zp`` is exact in fp32."""


def avg_node(node: Node) -> Node:
    """A detached float AveragePool with ``node``'s window attributes (for ``pool_window``)."""
    keep = ("kernel_shape", "strides", "pads", "dilations", "ceil_mode", "count_include_pad", "auto_pad")
    return Node("AveragePool", node.name, [node.inputs[0]], [], {k: v for k, v in node.attrs.items() if k in keep})


def counts(node: Node) -> np.ndarray:
    """``count[p]`` for every output position (shape: the output's spatial dims), int64."""
    spatial = node.inputs[0].type.shape[2:]
    if node.attr("global_pool", 0) or node.op == "GlobalAveragePool":
        require(node, all(isinstance(d, int) for d in spatial), "a global pool needs static spatial dims")
        return np.full((1,) * len(spatial), int(np.prod(spatial, dtype=np.int64)), np.int64)
    win = pool_window(avg_node(node) if node.op != "AveragePool" else node)
    total = np.ones((), np.int64)
    for c in window_counts(win, spatial, bool(node.attr("count_include_pad", 0))):
        total = np.multiply.outer(total, c)
    return total


def window_taps(node: Node) -> int:
    """The most taps any window reads (input or padding): the bound on ``|S| / 255``."""
    if node.attr("global_pool", 0) or node.op == "GlobalAveragePool":
        return int(counts(node).max())
    return int(np.prod(node.attr("kernel_shape"), dtype=np.int64))


def multipliers(x_scale: float, y_scale: float, count: np.ndarray) -> np.ndarray:
    """``M[p] = fp32(x_scale / (count[p] * y_scale))`` (float64, one rounding to fp32)."""
    xs, ys = float(np.float32(x_scale)), float(np.float32(y_scale))
    with np.errstate(all="ignore"):
        return (xs / (np.asarray(count, np.float64) * ys)).astype(np.float32)


def infer_qavgpool(node: Node) -> list[TensorType]:
    x = node.inputs[0].type
    require(node, x.dtype == "uint8", f"expects a uint8 tensor, got {x}")
    require(node, x.rank >= 3, f"expects [N, C, spatial...], got {x}")
    for name in ("x_scale", "x_zero_point", "y_scale", "y_zero_point"):
        require(node, node.attr(name) is not None, f"missing attribute {name}")
    for name in ("x_zero_point", "y_zero_point"):
        require(node, 0 <= node.attr(name) <= 255, f"{name} must be in [0, 255]")
    require(node, window_taps(node) <= MAX_COUNT, f"a window of {window_taps(node)} taps is over {MAX_COUNT}: "
            "its sum would not be exact in fp32")
    c = counts(node)
    require(node, bool(np.all(c > 0)), "a pooling window covers only padding")
    m = multipliers(node.attr("x_scale"), node.attr("y_scale"), c)
    require(node, bool(np.all(np.isfinite(m))), "x_scale / (count * y_scale) must be finite")
    if node.attr("global_pool", 0):
        return [TensorType("uint8", x.shape[:2] + (1,) * (x.rank - 2))]
    win = pool_window(avg_node(node))
    return [TensorType("uint8", (x.shape[0], x.shape[1], *win.out))]


def window_sums(node: Node, x: np.ndarray) -> np.ndarray:
    """``S[p]``: the exact sum of ``x - x_zp`` over each window (int64)."""
    xc = x.astype(np.int64) - int(node.attr("x_zero_point"))
    if node.attr("global_pool", 0):
        return xc.sum(axis=tuple(range(2, x.ndim)), keepdims=True)
    win = pool_window(avg_node(node))
    padded, views = sliding_views(xc, win, 0)
    total = np.zeros((x.shape[0], x.shape[1], *win.out), np.int64)
    for _, idx in views:
        total += padded[idx]
    return total


def reference_qavgpool(node: Node, inputs):
    from .qmath import requantize

    s = window_sums(node, inputs[0])
    m = multipliers(node.attr("x_scale"), node.attr("y_scale"), counts(node))
    return [requantize(s, m[None, None], node.attr("y_zero_point"))]


register("QAveragePool", infer_qavgpool, reference_qavgpool, OpKind.OPAQUE)
