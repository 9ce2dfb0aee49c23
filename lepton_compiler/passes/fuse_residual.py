"""fuse-residual: the skip connection added to a convolution's output, fused into the conv.

    Add(Conv(x, w, b), r) -> FusedConv(x, w, b, r)      (either Add operand order)

The conv (a Conv, or a FusedConv with no residual, activation or pool yet) must be read
by the Add alone, and ``r`` must broadcast to the conv's output without growing it. The
FusedConv takes the Add's place in the node order, since ``r`` may be computed after the
conv. When both operands qualify, the conv computed later becomes the fused one.
"""

from __future__ import annotations

from ..ir import Graph, Node
from .base import Pass, PassOptions, PassResult
from .fusion import Users, fuse, fused_conv_attrs, fused_producer, is_conv, make_node, padded_inputs, run_rules


def fuse_residual_node(g: Graph, node: Node, users: Users) -> bool:
    if node.op != "Add" or node.domain != "" or node.inputs[0] is node.inputs[1]:
        return False
    candidates = []
    for c_index, r_index in ((0, 1), (1, 0)):
        conv = fused_producer(g, node, node.inputs[c_index], users, is_conv)
        if conv is not None:
            candidates.append((g.nodes.index(conv), conv, node.inputs[r_index]))
    for _, conv, residual in sorted(candidates, key=lambda c: -c[0]):
        inputs = padded_inputs(conv, 3)[:3] + [residual]
        if fuse(g, make_node("FusedConv", conv.name, inputs, fused_conv_attrs(conv)), node, [conv]):
            return True
    return False


def fuse_residual(graph: Graph, options: PassOptions) -> PassResult:
    """Add(Conv(x, w, b), r) -> FusedConv(x, w, b, r) when the conv's output is read by the Add alone."""
    return run_rules(graph, fuse_residual_node, explain=options.explain, pattern="fuse-residual")


FUSE_RESIDUAL = Pass("fuse-residual", fuse_residual)
