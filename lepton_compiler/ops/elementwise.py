"""Elementwise ops: unary activations and broadcasting binary arithmetic.

``Max`` and ``Min`` take two inputs in the IR (the frontend chains ONNX's variadic
forms, and turns ``Sum`` into ``Add``s). ``Pow``'s exponent may have another dtype
than its base (as in ONNX); ``PRelu``'s slope broadcasts to ``X`` (one direction).
"""

from __future__ import annotations

import numpy as np

from ..ir import Node, TensorType
from .registry import OpKind, register, require
from .shapes import broadcast_shapes


def infer_same(node: Node) -> list[TensorType]:
    return [node.inputs[0].type]


def infer_broadcast(node: Node) -> list[TensorType]:
    a, b = node.inputs[0].type, node.inputs[1].type
    require(node, a.dtype == b.dtype, f"operand types differ: {a} and {b}")
    return [TensorType(a.dtype, broadcast_shapes(node, a.shape, b.shape))]


def infer_pow(node: Node) -> list[TensorType]:
    a, b = node.inputs[0].type, node.inputs[1].type
    return [TensorType(a.dtype, broadcast_shapes(node, a.shape, b.shape))]


def infer_prelu(node: Node) -> list[TensorType]:
    x, slope = node.inputs[0].type, node.inputs[1].type
    require(node, x.dtype == slope.dtype, f"operand types differ: {x} and {slope}")
    require(node, broadcast_shapes(node, x.shape, slope.shape) == x.shape,
            f"slope {slope} does not broadcast to X {x}")
    return [x]


def prelu(x, slope):
    return np.where(x < 0, x * slope, x)


def power(a, b):
    """ONNX Pow: the base's dtype; float bases are raised in float64 and rounded once."""
    if a.dtype.kind == "f":
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            return np.power(a.astype(np.float64), np.asarray(b, np.float64))
    if np.asarray(b).dtype.kind == "f":
        return np.power(a.astype(np.float64), b)
    return np.power(a, b.astype(a.dtype))


def _unary(fn):
    return lambda node, inputs: [fn(inputs[0]).astype(inputs[0].dtype)]


def _binary(fn):
    def reference(node, inputs):
        a, b = inputs
        out = fn(a, b)
        return [out if a.dtype == object else np.asarray(out).astype(a.dtype)]
    return reference


def _int_div(a, b):
    """ONNX Div: integers truncate toward zero (as C does), floats divide."""
    if a.dtype.kind in "iu":
        return np.trunc(np.asarray(a, np.float64) / b).astype(a.dtype)
    if a.dtype == object:  # compile-time shape arithmetic: Python ints, maybe symbols (TypeError)
        return np.frompyfunc(lambda x, y: int(x / y) if isinstance(x, int) and isinstance(y, int) else x / y,
                             2, 1)(a, b)
    return a / b


register("Relu", infer_same, _unary(lambda x: np.where(x < 0, 0, x)), OpKind.ELEMENTWISE)
register("Add", infer_broadcast, _binary(np.add), OpKind.ELEMENTWISE)
register("Sub", infer_broadcast, _binary(np.subtract), OpKind.ELEMENTWISE)
register("Mul", infer_broadcast, _binary(np.multiply), OpKind.ELEMENTWISE)
register("Div", infer_broadcast, _binary(_int_div), OpKind.ELEMENTWISE)
register("Max", infer_broadcast, _binary(np.maximum), OpKind.ELEMENTWISE)
register("Min", infer_broadcast, _binary(np.minimum), OpKind.ELEMENTWISE)
register("Pow", infer_pow, _binary(power), OpKind.ELEMENTWISE)
register("PRelu", infer_prelu, _binary(prelu), OpKind.ELEMENTWISE)
