"""fuse-softmax: the Softmax that ends a graph, fused into the Gemm that feeds it.

    Softmax[axis=-1](Gemm(a, b, c)) -> FusedGemm[softmax=1](a, b, c)

The Softmax normalizes the last axis and its output is a graph output; the Gemm (or a
FusedGemm without a softmax yet; its activation comes first, as in
``Softmax(Act(Gemm))``) is read by the Softmax alone.
"""

from __future__ import annotations

from ..ir import Graph, Node
from .base import Pass, PassOptions, PassResult
from .fusion import Users, fuse, fused_gemm_attrs, fused_producer, is_gemm, make_node, refuse, run_rules


def fuse_softmax_node(g: Graph, node: Node, users: Users) -> bool:
    if node.op != "Softmax" or node.domain != "":
        return False
    if node.outputs[0] not in g.outputs:
        return refuse(node, node.inputs[0], "the Softmax output is not a graph output")
    rank = node.inputs[0].type.rank
    if rank == 0 or node.attr("axis", -1) % rank != rank - 1:
        return refuse(node, node.inputs[0], "the Softmax is not over the last axis")
    gemm = fused_producer(g, node, node.inputs[0], users, lambda n: is_gemm(n, activation=True))
    if gemm is None:
        return False
    attrs = {**fused_gemm_attrs(gemm), "softmax": 1}
    return fuse(g, make_node("FusedGemm", gemm.name, list(gemm.inputs), attrs), node, [gemm])


def fuse_softmax(graph: Graph, options: PassOptions) -> PassResult:
    """Softmax[axis=-1](Gemm(a, b, c)) -> FusedGemm[softmax=1](a, b, c) when the Softmax's output is a graph output."""
    return run_rules(graph, fuse_softmax_node, explain=options.explain, pattern="fuse-softmax")


FUSE_SOFTMAX = Pass("fuse-softmax", fuse_softmax)
