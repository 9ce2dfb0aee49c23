"""matmul-add-to-gemm: a 2-D MatMul by constant weights, and the bias added to it, as one Gemm.

    Add(MatMul(x, W), b) -> Gemm(x, W, b)      (either Add operand order)
    MatMul(x, W)         -> Gemm(x, W)

``x`` is 2-D, ``W`` a 2-D constant, and ``b`` broadcasts along the output's last dim only
(shapes ``[N]``, ``[1, N]``, ``[1]`` or a scalar), so the Add does not change the shape.
The Gemm takes the Add's place in the node order (``b`` may be computed after the MatMul).
"""

from __future__ import annotations

from typing import Optional

from ..ir import Graph, Node, Value
from .base import Pass, PassOptions, PassResult
from .fusion import Users, fuse, fused_producer, make_node, run_rules


def gemm_matmul(node: Optional[Node]) -> bool:
    """A MatMul that a Gemm can compute: 2-D ``x`` times 2-D constant ``W``."""
    if node is None or node.op != "MatMul" or node.domain != "":
        return False
    x, w = node.inputs
    return x.type.rank == 2 and w.is_const and w.type.rank == 2


def row_bias(b: Value, out: Value) -> bool:
    """Whether ``b`` broadcasts to ``out`` ([M, N]) along the last dim only."""
    shape = b.type.shape
    if b.type.dtype != out.type.dtype or len(shape) > 2:
        return False
    if len(shape) == 2 and shape[0] != 1:
        return False
    return not shape or shape[-1] in (1, out.type.shape[1])


def matmul_add_node(g: Graph, node: Node, users: Users) -> bool:
    if node.op != "Add" or node.domain != "":
        return False
    for m_index, b_index in ((0, 1), (1, 0)):
        matmul = fused_producer(g, node, node.inputs[m_index], users, gemm_matmul)
        bias = node.inputs[b_index]
        if matmul is None or bias is node.inputs[m_index] or not row_bias(bias, node.inputs[m_index]):
            continue
        gemm = make_node("Gemm", matmul.name, [*matmul.inputs, bias], {}, domain="")
        if fuse(g, gemm, node, [matmul]):
            return True
    return False


def matmul_node(g: Graph, node: Node, users: Users) -> bool:
    if not gemm_matmul(node):
        return False
    return fuse(g, make_node("Gemm", node.name, list(node.inputs), {}, domain=""), node)


def matmul_add_to_gemm(graph: Graph, options: PassOptions) -> PassResult:
    """Add(MatMul(x, W), b) -> Gemm(x, W, b) and MatMul(x, W) -> Gemm(x, W) for 2-D x and constant 2-D W."""
    return run_rules(graph, matmul_add_node, matmul_node)


MATMUL_ADD_TO_GEMM = Pass("matmul-add-to-gemm", matmul_add_to_gemm)
