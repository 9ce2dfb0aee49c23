"""fold-channel-affine: a per-output-channel constant scale or shift after a Conv or Gemm
folded into its weights and bias.

    Mul(Conv(x, W, b), s)  -> Conv(x, W * s[:, None, ...], b * s)
    Add(Conv(x, W, b), t)  -> Conv(x, W, b + t)
    Mul(Gemm(a, B, C), s)  -> Gemm(a, B * s, C * s)       (s along N; B's N axis per transB)
    Add(Gemm(a, B, C), t)  -> Gemm(a, B, beta * C + t)[beta=1]

``s`` and ``t`` are constants that broadcast along the output channel only: shapes
``[C, 1, 1]``, ``[1, C, 1, 1]`` or a scalar for a conv, ``[N]``, ``[1, N]`` or a scalar
for a Gemm. Either operand order; ``Sub(y, t)`` and ``Div(y, s)`` fold as ``Add(y, -t)``
and ``Mul(y, 1 / s)``. A FusedConv / FusedGemm folds when it has fused nothing after
the linear part (a conv's residual allows a shift but not a scale). The weights are
folded only when this node is their sole reader; new constants are made, none mutated.
"""

from __future__ import annotations

import re
from typing import Optional

import numpy as np

from ..ir import Graph, Node, Value
from .base import Pass, PassOptions, PassResult
from .fusion import Users, fuse, fused_producer, input_at, is_conv, is_gemm, make_node, run_rules
from .rewrite import add_constant, constant_of, only_user

CHANNEL_AXIS = 1
"""The output channel axis of both Conv ([N, C, ...]) and Gemm ([M, N]) outputs."""


def per_channel(array: Optional[np.ndarray], out: Value) -> Optional[np.ndarray]:
    """``array`` as a float64 vector over the output channels of ``out``, when it broadcasts
    along that axis only (and does not grow the output); else None."""
    shape, rank = out.type.shape, out.type.rank
    if array is None or array.ndim > rank or rank <= CHANNEL_AXIS or array.dtype.kind != "f":
        return None
    channels = shape[CHANNEL_AXIS]
    if not isinstance(channels, int):
        return None
    padded = (1,) * (rank - array.ndim) + array.shape
    if any(d != 1 for axis, d in enumerate(padded) if axis != CHANNEL_AXIS):
        return None
    if padded[CHANNEL_AXIS] not in (1, channels):
        return None
    return np.broadcast_to(array.astype(np.float64).reshape(-1), (channels,))


def folded_name(name: str) -> str:
    """``w`` -> ``w_folded``; ``w_folded`` and ``w_folded_1`` stay ``w_folded`` (which
    ``add_constant`` makes unique as ``w_folded_1``, ``w_folded_2``, ...)."""
    return re.sub(r"_folded(_\d+)?$", "", name) + "_folded"


def folded_linear(g: Graph, node: Node, users: Users, scale: Optional[np.ndarray],
                  shift: Optional[np.ndarray]) -> Optional[Node]:
    """A candidate copy of ``node`` (a Conv/Gemm with nothing fused after the linear part)
    whose output is ``node's output * scale + shift`` per output channel, with new constants
    added to ``g``; None when its weights or bias cannot absorb the affine map."""
    conv = is_conv(node, residual=scale is None)
    if not conv and not is_gemm(node):
        return None
    weight, bias = node.inputs[1], input_at(node, 2)
    if bias is not None and not bias.is_const:
        return None
    dtype = node.inputs[0].type.np_dtype
    attrs, inputs = dict(node.attrs), list(node.inputs) + [None] * (3 - len(node.inputs))
    if scale is not None:
        if not weight.is_const or only_user(g, weight, users) is not node:
            return None  # folding would change (or have to duplicate) weights another node reads
        w = weight.const.astype(np.float64)
        if conv:
            w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
        else:
            w = w * (scale[:, None] if node.attr("transB", 0) else scale[None, :])
        inputs[1] = add_constant(g, folded_name(weight.name), w.astype(weight.const.dtype))
    b = constant_of(bias)
    b = None if b is None else b.astype(np.float64)
    if not conv and b is not None:
        b = b * float(node.attr("beta", 1.0))
        attrs["beta"] = 1.0
    if scale is not None and b is not None:
        b = b * scale
    if shift is not None:
        b = shift if b is None else b + shift
        if not conv:
            attrs["beta"] = 1.0
    if b is not None:
        base = folded_name(bias.name) if bias is not None else f"{node.name}_bias"
        inputs[2] = add_constant(g, base, np.ascontiguousarray(b, dtype=dtype))
    return make_node(node.op, node.name, inputs, attrs, node.domain)


def fold_into(g: Graph, consumer: Node, linear: Node, users: Users, scale: Optional[np.ndarray],
              shift: Optional[np.ndarray]) -> bool:
    """Replace ``consumer`` (reading ``linear``'s output) with ``linear`` folded with the affine map."""
    constants = list(g.constants)
    new = folded_linear(g, linear, users, scale, shift)
    if new is None or not fuse(g, new, consumer, [linear]):
        g.constants = constants  # drop the constants of a candidate that did not fit
        return False
    return True


def linear_producer(node: Node) -> bool:
    return is_conv(node, residual=True) or is_gemm(node)


def fold_channel_affine_node(g: Graph, node: Node, users: Users) -> bool:
    if node.op not in ("Mul", "Add", "Sub", "Div") or node.domain != "":
        return False
    orders = [(0, 1), (1, 0)] if node.op in ("Mul", "Add") else [(0, 1)]
    for y_index, c_index in orders:
        linear = fused_producer(g, node, node.inputs[y_index], users, linear_producer)
        if linear is None:
            continue
        vector = per_channel(constant_of(node.inputs[c_index]), node.inputs[y_index])
        if vector is None:
            continue
        if node.op in ("Mul", "Div"):
            if node.op == "Div" and not np.all(vector != 0):
                continue
            scale = vector if node.op == "Mul" else 1.0 / vector
            if fold_into(g, node, linear, users, scale, None):
                return True
        elif fold_into(g, node, linear, users, None, vector if node.op == "Add" else -vector):
            return True
    return False


def fold_channel_affine(graph: Graph, options: PassOptions) -> PassResult:
    """Mul(Conv(x, W, b), s) -> Conv(x, W * s, b * s); Add(Conv(x, W, b), t) -> Conv(x, W, b + t); likewise Gemm."""
    return run_rules(graph, fold_channel_affine_node)


FOLD_CHANNEL_AFFINE = Pass("fold-channel-affine", fold_channel_affine)
