"""Removal of ops that only forward their input."""

from __future__ import annotations

from ..ir import Graph
from .base import Pass, PassOptions, PassResult

FORWARDING = ("Identity", "Dropout")


def remove_identity(graph: Graph, options: PassOptions) -> PassResult:
    """Identity(x) -> x and Dropout(x) -> x (inference), unless the result is a graph output
    whose name must survive (then the node stays)."""
    g = graph.copy()
    outputs = set(g.outputs)
    replace = {}
    kept = []
    for node in g.nodes:
        node.inputs = [replace.get(v, v) for v in node.inputs]
        forwards = node.op in FORWARDING and not any(v in outputs for v in node.outputs)
        if forwards and (node.op == "Identity" or len(node.outputs) == 1):
            replace[node.outputs[0]] = node.inputs[0]
        else:
            kept.append(node)
    g.nodes = kept
    return PassResult(g, len(kept) != len(graph.nodes))


REMOVE_IDENTITY = Pass("remove-identity", remove_identity)
