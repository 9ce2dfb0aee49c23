"""fold-batchnorm: an inference BatchNormalization after a Conv or Gemm folded into its
weights and bias.

    BatchNormalization(Conv(x, W, b), scale, B, mean, var)
        -> Conv(x, W * a[:, None, ...], b * a + B - mean * a)      a = scale / sqrt(var + epsilon)

The same holds for a Gemm (the channels are its N axis) and for a FusedConv / FusedGemm
that has fused nothing after the linear part. The statistics, the weights and the bias
must be constants, and the weights read by this node alone (another reader would see
them change); new constants are made, none mutated.
"""

from __future__ import annotations

from ..ir import Graph, Node
from ..ops.nn import batchnorm_affine
from .base import Pass, PassOptions, PassResult
from .fold_channel_affine import fold_into
from .fusion import Users, fused_producer, is_conv, is_gemm, run_rules
from .rewrite import constant_of


def fold_batchnorm_node(g: Graph, node: Node, users: Users) -> bool:
    if node.op != "BatchNormalization" or node.domain != "" or len(node.outputs) != 1:
        return False
    stats = [constant_of(v) for v in node.inputs[1:5]]
    if len(stats) != 4 or any(s is None for s in stats):
        return False  # statistics computed at run time
    linear = fused_producer(g, node, node.inputs[0], users, lambda n: is_conv(n) or is_gemm(n))
    if linear is None:
        return False
    scale, shift = batchnorm_affine(node, *stats)
    return fold_into(g, node, linear, users, scale, shift)


def fold_batchnorm(graph: Graph, options: PassOptions) -> PassResult:
    """BatchNormalization(Conv(x, W, b)) -> Conv(x, W * a, (b - mean) * a + B), a = scale / sqrt(var + eps); or Gemm."""
    return run_rules(graph, fold_batchnorm_node, explain=options.explain, pattern="fold-batchnorm")


FOLD_BATCHNORM = Pass("fold-batchnorm", fold_batchnorm)
