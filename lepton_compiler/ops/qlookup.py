"""``lepton.QLookup``: a uint8 -> uint8 elementwise function inside an int8 region, as a table.

``QLookup(x: uint8[...], table: uint8[256]) -> uint8[...]`` (x's shape), no attributes.

Semantics (the interpreter, the LLVM kernel and the standard-ONNX export compute exactly this):
``y[i] = table[x[i]]``. Nothing else: the op itself does no arithmetic.

The quantize rewrite (``quantize/rewrite.py``) uses it for an activation that is not a clamp
(HardSwish, Sigmoid, Tanh, LeakyRelu, HardSigmoid, Elu, Selu) between a uint8 value with scale
and zero point ``(s_x, z_x)`` (the layer's *pre-activation* output) and a uint8 value with
``(s_y, z_y)`` (the activation's output). It builds the table at compile time with ``table``:
for ``q = 0..255``, ``table[q] = quantize(act(dequantize(q, s_x, z_x)), s_y, z_y)``, where
``dequantize`` and ``quantize`` are ``ops/qmath.py``'s fp32 arithmetic (``fp32(q - z_x) * s_x``;
``saturate(rint(v / s_y) + z_y)``, half to even, NaN -> 0) and ``act`` is the activation's numpy
reference from ``ops/activations.py`` (``apply_activation``: float64 math on the fp32 input,
rounded to fp32), with the node's own parameters. The table therefore equals what the fp32
graph would give on a dequantized input, requantized: the only error is the two roundings.

Export (``frontends/expand.py``): ``Gather(table, Cast(x, int32))`` (exact).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..ir import Node, TensorType
from . import qmath
from .activations import apply_activation
from .registry import OpKind, register, require


def table(activation: str, params: Sequence[float], x_params: tuple[float, int],
          y_params: tuple[float, int]) -> np.ndarray:
    """``quantize(act(dequantize(q)))`` for ``q = 0..255``, as uint8[256] (see the module)."""
    q = np.arange(256, dtype=np.uint8)
    x = qmath.dequantize(q, np.float32(x_params[0]), int(x_params[1]))
    y = apply_activation(activation, x, list(params))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return qmath.quantize(y, np.float32(y_params[0]), int(y_params[1]), np.uint8)


def infer_qlookup(node: Node) -> list[TensorType]:
    require(node, len(node.inputs) == 2, "expects (x, table)")
    x, t = node.inputs[0].type, node.inputs[1].type
    require(node, x.dtype == "uint8", f"expects a uint8 tensor, got {x}")
    require(node, t.dtype == "uint8" and t.shape == (256,), f"the table must be uint8[256], got {t}")
    return [TensorType("uint8", x.shape)]


def reference_qlookup(node: Node, inputs):
    x, t = inputs[0], np.asarray(inputs[1], np.uint8)
    return [t[np.asarray(x, np.uint8)]]


register("QLookup", infer_qlookup, reference_qlookup, OpKind.OPAQUE)
