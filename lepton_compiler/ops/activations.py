"""Activation functions: one table that the standalone ops, the fusion passes and the
fused kernels all read.

Parameters are floats in a fixed order (``LeakyRelu``: alpha; ``Clip``: min, max).
``Clip`` takes them as inputs in ONNX (opset 11+); the IR's ``Clip`` op does too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..ir import Node, TensorType
from .registry import OpKind, register, require


@dataclass(frozen=True)
class Activation:
    op: str
    params: tuple[str, ...]
    defaults: tuple[float, ...]
    reference: Callable[[np.ndarray, Sequence[float]], np.ndarray]


def _sigmoid(x, p):
    return 1.0 / (1.0 + np.exp(-x))


ACTIVATIONS: dict[str, Activation] = {a.op: a for a in [
    Activation("Relu", (), (), lambda x, p: np.where(x < 0, 0, x)),
    Activation("LeakyRelu", ("alpha",), (0.01,), lambda x, p: np.where(x < 0, x * p[0], x)),
    Activation("Clip", ("min", "max"), (-np.inf, np.inf), lambda x, p: np.minimum(np.maximum(x, p[0]), p[1])),
    Activation("Sigmoid", (), (), _sigmoid),
    Activation("Tanh", (), (), lambda x, p: np.tanh(x)),
    Activation("HardSwish", (), (), lambda x, p: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0)),
]}


def activation_params(node: Node) -> list[float]:
    """The parameters of a standalone activation node, in the table's order."""
    act = ACTIVATIONS[node.op]
    if node.op == "Clip":
        bounds = []
        for index, default in ((1, -np.inf), (2, np.inf)):
            value = node.inputs[index] if len(node.inputs) > index else None
            if value is None:
                bounds.append(default)
            else:
                require(node, value.known is not None and value.known.size == 1,
                        "Clip bounds must be scalars known at compile time")
                bounds.append(float(value.known.reshape(())))
        return bounds
    return [float(node.attr(name, default)) for name, default in zip(act.params, act.defaults)]


def apply_activation(name: str, x: np.ndarray, params: Sequence[float]) -> np.ndarray:
    """Reference semantics, computed in float64 and rounded to ``x``'s dtype."""
    if not name:
        return x
    return ACTIVATIONS[name].reference(x.astype(np.float64), list(params)).astype(x.dtype)


def _infer_unary(node: Node) -> list[TensorType]:
    x = node.inputs[0].type
    require(node, x.dtype in ("float32", "float64", "float16"), f"expects a float tensor, got {x}")
    return [x]


def _reference(node: Node, inputs):
    return [apply_activation(node.op, inputs[0], activation_params(node))]


for _name in ("LeakyRelu", "Sigmoid", "Tanh", "HardSwish"):
    register(_name, _infer_unary, _reference, OpKind.ELEMENTWISE)
register("Clip", _infer_unary, _reference, OpKind.ELEMENTWISE, static_inputs=(1, 2))

__all__ = ["ACTIVATIONS", "Activation", "activation_params", "apply_activation"]
