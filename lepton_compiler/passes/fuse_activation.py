"""fuse-activation: an activation applied to a convolution's or a Gemm's output, fused into it.

    Act(Conv(x, w, b))  -> FusedConv[activation=Act](x, w, b)
    Act(Gemm(a, b, c))  -> FusedGemm[activation=Act](a, b, c)

``Act`` is any op of ``ops.activations.ACTIVATIONS`` (Relu, LeakyRelu, Clip with bounds
known at compile time, Sigmoid, Tanh, HardSwish). A FusedConv qualifies while it has no
activation or pool (its residual is added before the activation, as in
``Act(Add(Conv, r))``); a FusedGemm while it has no activation or softmax. The conv's or
Gemm's output must be read by the activation alone.
"""

from __future__ import annotations

from ..ir import Graph, Node
from ..ops.activations import ACTIVATIONS, activation_params
from .base import Pass, PassOptions, PassResult
from .fusion import (Users, fuse, fused_conv_attrs, fused_gemm_attrs, fused_producer, input_at, is_conv,
                     is_gemm, make_node, refuse, run_rules)


def known_params(node: Node) -> bool:
    """Whether the activation's parameters are known at compile time (Clip's bounds are inputs)."""
    bounds = [input_at(node, i) for i in range(1, len(node.inputs))]
    return all(v is None or (v.known is not None and v.known.size == 1) for v in bounds)


def fuse_activation_node(g: Graph, node: Node, users: Users) -> bool:
    if node.op not in ACTIVATIONS or node.domain != "":
        return False
    if not known_params(node):
        return refuse(node, node.inputs[0], f"{node.op} bounds are not known at compile time")
    linear = fused_producer(g, node, node.inputs[0], users, lambda n: is_conv(n, residual=True) or is_gemm(n))
    if linear is None:
        return False
    activation = {"activation": node.op, "activation_params": activation_params(node)}
    if is_gemm(linear):
        new = make_node("FusedGemm", linear.name, list(linear.inputs), {**fused_gemm_attrs(linear), **activation})
    else:
        new = make_node("FusedConv", linear.name, list(linear.inputs), {**fused_conv_attrs(linear), **activation})
    return fuse(g, new, node, [linear])


def fuse_activation(graph: Graph, options: PassOptions) -> PassResult:
    """Act(Conv(x, w, b)) -> FusedConv[activation=Act](x, w, b); likewise Act(Gemm) -> FusedGemm[activation=Act]."""
    return run_rules(graph, fuse_activation_node, explain=options.explain, pattern="fuse-activation")


FUSE_ACTIVATION = Pass("fuse-activation", fuse_activation)
