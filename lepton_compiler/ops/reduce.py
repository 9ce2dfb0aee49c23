"""Reductions over a set of axes: ReduceSum, ReduceMean, ReduceMax.

The IR keeps ONNX's opset-17 forms: ``ReduceSum(data, axes?)`` takes its axes as an
input (read at compile time), ``ReduceMean`` and ``ReduceMax`` as an attribute (the
frontend rewrites opset 18's axes input). ``keepdims`` defaults to 1; with no axes
every axis is reduced, unless ``noop_with_empty_axes`` (ReduceSum) makes it the identity.
"""

from __future__ import annotations

import numpy as np

from ..ir import Node, TensorType
from .registry import OpKind, register, require
from .shapes import known_ints, normalize_axis

REDUCE_OPS = ("ReduceSum", "ReduceMean", "ReduceMax")


def reduce_axes(node: Node) -> list[int]:
    """The reduced axes, sorted and non-negative (every axis when none are given)."""
    rank = node.inputs[0].type.rank
    if node.op == "ReduceSum":
        given = node.inputs[1] if len(node.inputs) > 1 else None
        axes = known_ints(node, 1, "axes") if given is not None else []
    else:
        axes = list(node.attr("axes", []))
    if not axes:
        return [] if node.attr("noop_with_empty_axes", 0) else list(range(rank))
    axes = sorted(normalize_axis(node, a, rank) for a in axes)
    require(node, len(set(axes)) == len(axes), f"repeated axes {axes}")
    return axes


def infer_reduce(node: Node) -> list[TensorType]:
    x = node.inputs[0].type
    require(node, x.dtype in ("float32", "float64", "float16", "int32", "int64"), f"unsupported input {x}")
    axes = reduce_axes(node)
    keep = node.attr("keepdims", 1)
    shape = []
    for i, d in enumerate(x.shape):
        if i not in axes:
            shape.append(d)
        elif keep:
            shape.append(1)
    return [TensorType(x.dtype, tuple(shape))]


def reference_reduce(node: Node, inputs):
    x = inputs[0]
    axes = tuple(reduce_axes(node))
    keep = bool(node.attr("keepdims", 1))
    if not axes:
        return [x]
    if node.op == "ReduceMax":
        if any(x.shape[a] == 0 for a in axes):  # the maximum of nothing
            shape = [1 if i in axes else d for i, d in enumerate(x.shape)]
            out = np.full(shape, -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min, x.dtype)
            return [out if keep else out.reshape([d for i, d in enumerate(x.shape) if i not in axes])]
        return [np.max(x, axis=axes, keepdims=keep)]
    wide = x.astype(np.float64) if x.dtype.kind == "f" else x
    if node.op == "ReduceSum":
        return [np.sum(wide, axis=axes, keepdims=keep).astype(x.dtype)]
    with np.errstate(invalid="ignore"):
        return [np.mean(wide, axis=axes, keepdims=keep).astype(x.dtype)]


register("ReduceSum", infer_reduce, reference_reduce, OpKind.REDUCTION, static_inputs=(1,))
register("ReduceMean", infer_reduce, reference_reduce, OpKind.REDUCTION)
register("ReduceMax", infer_reduce, reference_reduce, OpKind.REDUCTION)
