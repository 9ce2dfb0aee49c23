"""Fused lepton ops written back as standard ONNX ops (for ``graph.to_onnx()``).

Each expansion returns ONNX nodes and any new initializers; the result computes
what the fused op computes, so ONNX Runtime can run an optimized graph.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

from ..ir import Node
from ..ops.activations import ACTIVATIONS
from ..ops.fused import BINARY, POOL_ATTRS, parse_step

Expansion = Callable[[Node, Callable[[str], str]], tuple[list[NodeProto], list[TensorProto]]]
BINARY_OPS = tuple(BINARY)


def _names(v) -> str:
    return "" if v is None else v.name


def activation_nodes(name: str, params, x: str, y: str, fresh) -> tuple[list[NodeProto], list[TensorProto]]:
    """``y = name(x)`` as ONNX (Clip's bounds become initializers)."""
    if name == "Clip":
        lo, hi = fresh(f"{y}_min"), fresh(f"{y}_max")
        inits = [numpy_helper.from_array(np.array(params[0], np.float32), lo),
                 numpy_helper.from_array(np.array(params[1], np.float32), hi)]
        return [helper.make_node("Clip", [x, lo, hi], [y], name=fresh(f"{y}_clip"))], inits
    attrs = {key: float(p) for key, p in zip(ACTIVATIONS[name].params, params)}
    return [helper.make_node(name, [x], [y], name=fresh(f"{y}_{name.lower()}"), **attrs)], []


def expand_fused_conv(node: Node, fresh):
    conv_attrs = {k: v for k, v in node.attrs.items()
                  if k not in POOL_ATTRS and k not in ("activation", "activation_params")}
    out = node.outputs[0].name
    current = fresh(f"{node.name}_conv")
    nodes = [helper.make_node("Conv", [_names(v) for v in node.inputs[:3]], [current], name=node.name, **conv_attrs)]
    inits: list[TensorProto] = []
    stages = []
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        stages.append("residual")
    if node.attr("activation", ""):
        stages.append("activation")
    if node.attr("pool_kernel") is not None:
        stages.append("pool")
    for i, stage in enumerate(stages):
        target = out if i == len(stages) - 1 else fresh(f"{node.name}_{stage}")
        if stage == "residual":
            nodes.append(helper.make_node("Add", [current, node.inputs[3].name], [target], name=fresh(f"{node.name}_add")))
        elif stage == "activation":
            more, extra = activation_nodes(node.attr("activation"), node.attr("activation_params", []), current, target,
                                           fresh)
            nodes += more
            inits += extra
        else:
            nodes.append(helper.make_node(
                "MaxPool", [current], [target], name=fresh(f"{node.name}_pool"),
                kernel_shape=list(node.attr("pool_kernel")), strides=list(node.attr("pool_strides")),
                pads=list(node.attr("pool_pads")), dilations=list(node.attr("pool_dilations")),
                ceil_mode=int(node.attr("pool_ceil_mode", 0))))
        current = target
    if not stages:
        nodes[0].output[0] = out
    return nodes, inits


def expand_fused_gemm(node: Node, fresh):
    gemm_attrs = {k: v for k, v in node.attrs.items() if k in ("alpha", "beta", "transA", "transB")}
    out = node.outputs[0].name
    stages = (["activation"] if node.attr("activation", "") else []) + (["softmax"] if node.attr("softmax", 0) else [])
    current = out if not stages else fresh(f"{node.name}_gemm")
    nodes = [helper.make_node("Gemm", [_names(v) for v in node.inputs], [current], name=node.name, **gemm_attrs)]
    inits: list[TensorProto] = []
    for i, stage in enumerate(stages):
        target = out if i == len(stages) - 1 else fresh(f"{node.name}_{stage}")
        if stage == "activation":
            more, extra = activation_nodes(node.attr("activation"), node.attr("activation_params", []), current, target,
                                           fresh)
            nodes += more
            inits += extra
        else:
            nodes.append(helper.make_node("Softmax", [current], [target], name=fresh(f"{node.name}_softmax"), axis=-1))
        current = target
    return nodes, inits


def expand_fused_elementwise(node: Node, fresh):
    values = [v.name for v in node.inputs]
    steps = node.attr("program")
    nodes: list[NodeProto] = []
    inits: list[TensorProto] = []
    for i, step in enumerate(steps):
        op, params, operands = parse_step(step)
        target = node.outputs[0].name if i == len(steps) - 1 else fresh(f"{node.name}_s{i}")
        args = [values[o] for o in operands]
        if op in BINARY_OPS:
            nodes.append(helper.make_node(op, args, [target], name=fresh(f"{node.name}_{op.lower()}")))
        else:
            more, extra = activation_nodes(op, params, args[0], target, fresh)
            nodes += more
            inits += extra
        values.append(target)
    return nodes, inits


EXPANSIONS: dict[str, Expansion] = {
    "FusedConv": expand_fused_conv,
    "FusedGemm": expand_fused_gemm,
    "FusedElementwise": expand_fused_elementwise,
}
