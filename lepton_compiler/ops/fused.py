"""Fused ops (domain ``lepton``), produced by the fusion passes and lowered as single kernels.

``FusedConv(x, w, bias?, residual?)``
    ``MaxPool[pool_*](act(Conv(x, w, bias) + residual))``. Conv attributes as in
    ONNX; ``activation`` (an op name of ``ACTIVATIONS`` or ``""``) with
    ``activation_params``; pooling only when ``pool_kernel`` is present, with
    ``pool_strides``, ``pool_pads``, ``pool_dilations``, ``pool_ceil_mode``.
``FusedGemm(a, b, c?)``
    ``Softmax[axis=-1](act(Gemm(a, b, c)))`` with Gemm's attributes, the
    activation as above, and ``softmax`` = 1 when the softmax is fused.
``FusedElementwise(v0, v1, ...)``
    A straight-line program over broadcast operands: ``program`` is a list of
    steps ``"Op a b"`` (or ``"Op[p1,p2] a"`` for activation parameters) whose
    operands index the inputs and then the earlier steps' results; the last
    step's result is the output.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..ir import Node, TensorType, Value
from .activations import ACTIVATIONS, apply_activation
from .elementwise import power, prelu
from .nn import (infer_conv, infer_gemm, infer_maxpool, reference_conv, reference_gemm, reference_maxpool,
                 reference_softmax)
from .registry import OpKind, register, require
from .shapes import broadcast_shapes

DOMAIN = "lepton"
POOL_ATTRS = ("pool_kernel", "pool_strides", "pool_pads", "pool_dilations", "pool_ceil_mode")


def _check_activation(node: Node) -> None:
    name = node.attr("activation", "")
    require(node, name == "" or name in ACTIVATIONS, f"unknown activation {name!r}")
    if name:
        require(node, len(node.attr("activation_params", [])) == len(ACTIVATIONS[name].params),
                f"{name} takes {len(ACTIVATIONS[name].params)} parameters")


def _activate(node: Node, y: np.ndarray) -> np.ndarray:
    return apply_activation(node.attr("activation", ""), y, node.attr("activation_params", []))


# -- FusedConv -----------------------------------------------------------------------------------
def detached(op: str, name: str, inputs, attrs) -> Node:
    """A node outside any graph, to reuse a base op's type rule and reference kernel."""
    return Node(op, name, inputs, [Value(f"{name}.{op}", TensorType("float32", ()))], attrs)


def conv_node(node: Node) -> Node:
    """The plain Conv a FusedConv starts with."""
    attrs = {k: v for k, v in node.attrs.items()
             if k not in POOL_ATTRS and k not in ("activation", "activation_params")}
    return detached("Conv", node.name, node.inputs[:3], attrs)


def pool_node(node: Node, conv: TensorType) -> Node:
    """The MaxPool a FusedConv ends with, reading the conv's output type."""
    nd = len(node.attr("pool_kernel"))
    attrs = {
        "kernel_shape": list(node.attr("pool_kernel")),
        "strides": list(node.attr("pool_strides", [1] * nd)),
        "pads": list(node.attr("pool_pads", [0] * 2 * nd)),
        "dilations": list(node.attr("pool_dilations", [1] * nd)),
        "ceil_mode": int(node.attr("pool_ceil_mode", 0)),
    }
    return detached("MaxPool", node.name, [Value(f"{node.name}.conv", conv)], attrs)


def conv_output_type(node: Node) -> TensorType:
    """The type of the conv (before pooling) inside a FusedConv."""
    return infer_conv(conv_node(node))[0]


def infer_fused_conv(node: Node) -> list[TensorType]:
    _check_activation(node)
    conv = conv_output_type(node)
    residual = node.inputs[3] if len(node.inputs) > 3 else None
    if residual is not None:
        require(node, broadcast_shapes(node, residual.type.shape, conv.shape) == conv.shape,
                f"residual {residual.type} does not broadcast to the conv output {conv}")
    if node.attr("pool_kernel") is None:
        return [conv]
    return infer_maxpool(pool_node(node, conv))


def reference_fused_conv(node: Node, inputs):
    y = reference_conv(conv_node(node), inputs[:3])[0]
    if len(inputs) > 3 and inputs[3] is not None:
        y = (y.astype(np.float64) + inputs[3]).astype(y.dtype)
    y = _activate(node, y)
    if node.attr("pool_kernel") is not None:
        y = reference_maxpool(pool_node(node, TensorType.of(y)), [y])[0]
    return [y]


register("FusedConv", infer_fused_conv, reference_fused_conv, OpKind.OPAQUE)


# -- FusedGemm -----------------------------------------------------------------------------------
def infer_fused_gemm(node: Node) -> list[TensorType]:
    _check_activation(node)
    return infer_gemm(node)


def reference_fused_gemm(node: Node, inputs):
    y = _activate(node, reference_gemm(node, inputs)[0])
    if node.attr("softmax", 0):
        y = reference_softmax(detached("Softmax", node.name, [], {"axis": -1}), [y])[0]
    return [y]


register("FusedGemm", infer_fused_gemm, reference_fused_gemm, OpKind.OPAQUE)


# -- FusedElementwise ----------------------------------------------------------------------------
BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide,
          "Max": np.maximum, "Min": np.minimum, "Pow": power, "PRelu": prelu}


def parse_step(step: str) -> tuple[str, list[float], list[int]]:
    """``"LeakyRelu[0.1] 3"`` -> ("LeakyRelu", [0.1], [3])."""
    head, *operands = step.split()
    params: list[float] = []
    if "[" in head:
        head, _, rest = head.partition("[")
        params = [float(p) for p in rest.rstrip("]").split(",") if p]
    return head, params, [int(o) for o in operands]


def format_step(op: str, params, operands) -> str:
    head = f"{op}[{','.join(repr(float(p)) for p in params)}]" if params else op
    return " ".join([head, *map(str, operands)])


def infer_fused_elementwise(node: Node) -> list[TensorType]:
    program = node.attr("program", [])
    require(node, len(program) >= 1, "empty program")
    types = [v.type for v in node.inputs]
    shapes = [t.shape for t in types]
    for step in program:
        op, params, operands = parse_step(step)
        require(node, op in BINARY or op in ACTIVATIONS, f"unknown step op {op}")
        require(node, all(0 <= o < len(shapes) for o in operands), f"step {step!r} reads a later value")
        require(node, len(operands) == (2 if op in BINARY else 1), f"step {step!r} has the wrong arity")
        shapes.append(broadcast_shapes(node, *[shapes[o] for o in operands]))
    require(node, all(t.dtype == types[0].dtype for t in types), "operands differ in dtype")
    return [TensorType(types[0].dtype, shapes[-1])]


def reference_fused_elementwise(node: Node, inputs):
    values = list(inputs)
    dtype = inputs[0].dtype
    for step in node.attr("program"):
        op, params, operands = parse_step(step)
        args = [values[o] for o in operands]
        if op in BINARY:
            values.append(np.asarray(BINARY[op](*args)).astype(dtype))
        else:
            values.append(apply_activation(op, args[0], params))
    return [values[-1]]


register("FusedElementwise", infer_fused_elementwise, reference_fused_elementwise, OpKind.ELEMENTWISE)


def is_fused(op: str) -> bool:
    return op in ("FusedConv", "FusedGemm", "FusedElementwise")


def activation_of(node: Node) -> Optional[tuple[str, list[float]]]:
    name = node.attr("activation", "")
    return (name, list(node.attr("activation_params", []))) if name else None
