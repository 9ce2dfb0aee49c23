"""Average and global pooling, and local response normalization."""

from __future__ import annotations

import numpy as np

from ..ir import Node, TensorType
from .nn import pool_window
from .registry import OpKind, register, require
from .shapes import Window, sliding_views


def _float_input(node: Node) -> TensorType:
    x = node.inputs[0].type
    require(node, x.dtype in ("float32", "float64", "float16"), f"expects a float tensor, got {x}")
    require(node, x.rank >= 3, f"expects [N, C, spatial...], got {x}")
    return x


# -- AveragePool ---------------------------------------------------------------------------
def infer_avgpool(node: Node) -> list[TensorType]:
    x = _float_input(node)
    win = pool_window(node)
    return [TensorType(x.dtype, (x.shape[0], x.shape[1], *win.out))]


def window_counts(win: Window, spatial, count_include_pad: bool) -> list[np.ndarray]:
    """Per spatial axis, how many taps of each output position's window count in its average.

    A tap counts when it reads the input, or (``count_include_pad``) the explicit padding;
    the room that ceil_mode adds past the end padding never counts. The count of a window
    is the product of its per-axis counts.
    """
    counts = []
    for size, o, s, k, d, b, e in zip(spatial, win.out, win.strides, win.kernel, win.dilations,
                                      win.pads_begin, win.pads_end):
        lo, hi = (-b, size + e) if count_include_pad else (0, size)
        starts = np.arange(o) * s - b
        taps = starts[:, None] + np.arange(k)[None, :] * d
        counts.append(((taps >= lo) & (taps < hi)).sum(axis=1))
    return counts


def inverse_counts(node: Node, win: Window, spatial) -> np.ndarray:
    """``1 / count`` for every output position (shape ``win.out``), float64."""
    counts = window_counts(win, spatial, bool(node.attr("count_include_pad", 0)))
    total = np.ones((), np.int64)
    for c in counts:
        total = np.multiply.outer(total, c)
    require(node, bool(np.all(total > 0)), "a pooling window covers only padding")
    return 1.0 / total.astype(np.float64)


def reference_avgpool(node: Node, inputs):
    x = inputs[0]
    win = pool_window(node)
    padded, views = sliding_views(x.astype(np.float64), win, 0.0)
    total = np.zeros((x.shape[0], x.shape[1], *win.out), np.float64)
    for _, idx in views:
        total += padded[idx]
    return [(total * inverse_counts(node, win, x.shape[2:])).astype(x.dtype)]


register("AveragePool", infer_avgpool, reference_avgpool, OpKind.OPAQUE)


# -- GlobalAveragePool, GlobalMaxPool -------------------------------------------------------
def infer_global_pool(node: Node) -> list[TensorType]:
    x = _float_input(node)
    return [TensorType(x.dtype, x.shape[:2] + (1,) * (x.rank - 2))]


def _spatial_axes(x: np.ndarray) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


register("GlobalAveragePool", infer_global_pool,
         lambda node, inputs: [inputs[0].astype(np.float64).mean(axis=_spatial_axes(inputs[0]), keepdims=True)
                               .astype(inputs[0].dtype)], OpKind.REDUCTION)
register("GlobalMaxPool", infer_global_pool,
         lambda node, inputs: [inputs[0].max(axis=_spatial_axes(inputs[0]), keepdims=True, initial=-np.inf)],
         OpKind.REDUCTION)


# -- LRN -----------------------------------------------------------------------------------
def lrn_params(node: Node) -> tuple[int, float, float, float]:
    """(size, alpha, beta, bias)."""
    size = node.attr("size")
    require(node, isinstance(size, int) and size >= 1, f"size must be a positive int, got {size!r}")
    return size, float(node.attr("alpha", 1e-4)), float(node.attr("beta", 0.75)), float(node.attr("bias", 1.0))


def infer_lrn(node: Node) -> list[TensorType]:
    x = node.inputs[0].type
    require(node, x.dtype in ("float32", "float64", "float16"), f"expects a float tensor, got {x}")
    require(node, x.rank >= 3, f"expects [N, C, spatial...], got {x}")
    lrn_params(node)
    return [x]


def lrn_span(size: int) -> tuple[int, int]:
    """Channels ``c - before .. c + after`` (inclusive) are summed for channel ``c``."""
    return (size - 1) // 2, size - 1 - (size - 1) // 2


def reference_lrn(node: Node, inputs):
    x = inputs[0]
    size, alpha, beta, bias = lrn_params(node)
    before, after = lrn_span(size)
    sq = x.astype(np.float64) ** 2
    channels = x.shape[1]
    total = np.zeros_like(sq)
    for c in range(channels):
        total[:, c] = sq[:, max(0, c - before):min(channels, c + after + 1)].sum(axis=1)
    return [(x / (bias + alpha / size * total) ** beta).astype(x.dtype)]


register("LRN", infer_lrn, reference_lrn, OpKind.OPAQUE)
