"""Activation functions: one table that the standalone ops, the fusion passes and the
fused kernels all read.

Parameters are floats in a fixed order (``LeakyRelu``: alpha; ``Clip``: min, max;
``Selu``: alpha, gamma; ``HardSigmoid``: alpha, beta), named as the ONNX attributes.
``Clip`` takes them as inputs in ONNX (opset 11+); the IR's ``Clip`` op does too.
Unary math functions without parameters (Exp, Log, Sqrt, Neg, Abs, Erf) are in the
table too: whatever applies an activation (the fused kernels, fuse-elementwise,
transpose sinking) applies them the same way.
"""

from __future__ import annotations

import math
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


def _elu(x, alpha):
    return np.where(x < 0, alpha * np.expm1(np.minimum(x, 0)), x)


_erf = np.frompyfunc(math.erf, 1, 1)


ACTIVATIONS: dict[str, Activation] = {a.op: a for a in [
    Activation("Relu", (), (), lambda x, p: np.where(x < 0, 0, x)),
    Activation("LeakyRelu", ("alpha",), (0.01,), lambda x, p: np.where(x < 0, x * p[0], x)),
    Activation("Clip", ("min", "max"), (-np.inf, np.inf), lambda x, p: np.minimum(np.maximum(x, p[0]), p[1])),
    Activation("Sigmoid", (), (), _sigmoid),
    Activation("Tanh", (), (), lambda x, p: np.tanh(x)),
    Activation("HardSwish", (), (), lambda x, p: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0)),
    Activation("Elu", ("alpha",), (1.0,), lambda x, p: _elu(x, p[0])),
    Activation("Selu", ("alpha", "gamma"), (1.67326319217681884765625, 1.05070102214813232421875),
               lambda x, p: p[1] * _elu(x, p[0])),
    Activation("HardSigmoid", ("alpha", "beta"), (0.2, 0.5), lambda x, p: np.clip(x * p[0] + p[1], 0.0, 1.0)),
    Activation("Exp", (), (), lambda x, p: np.exp(x)),
    Activation("Log", (), (), lambda x, p: np.log(x)),
    Activation("Sqrt", (), (), lambda x, p: np.sqrt(x)),
    Activation("Neg", (), (), lambda x, p: -x),
    Activation("Abs", (), (), lambda x, p: np.abs(x)),
    Activation("Erf", (), (), lambda x, p: _erf(x).astype(np.float64)),
]}

UNARY_MATH = ("Exp", "Log", "Sqrt", "Neg", "Abs", "Erf")
"""The parameterless math functions of the table (they are activations only in the sense above)."""


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
    if x.dtype.kind in "iu" and name in ("Neg", "Abs"):
        return ACTIVATIONS[name].reference(x, list(params)).astype(x.dtype)  # exact on integers
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return ACTIVATIONS[name].reference(x.astype(np.float64), list(params)).astype(x.dtype)


def _infer_unary(node: Node) -> list[TensorType]:
    x = node.inputs[0].type
    signed = ("int8", "int16", "int32", "int64") if node.op in ("Neg", "Abs") else ()
    require(node, x.dtype in ("float32", "float64", "float16") + signed, f"expects a float tensor, got {x}")
    return [x]


def _reference(node: Node, inputs):
    return [apply_activation(node.op, inputs[0], activation_params(node))]


for _name in ("LeakyRelu", "Sigmoid", "Tanh", "HardSwish", "Elu", "Selu", "HardSigmoid") + UNARY_MATH:
    register(_name, _infer_unary, _reference, OpKind.ELEMENTWISE)
register("Clip", _infer_unary, _reference, OpKind.ELEMENTWISE, static_inputs=(1, 2))

__all__ = ["ACTIVATIONS", "UNARY_MATH", "Activation", "activation_params", "apply_activation"]
