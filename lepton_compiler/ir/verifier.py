"""Checks a graph's invariants: topological order, unique names, known ops, consistent types."""

from __future__ import annotations

from ..errors import LeptonError
from .graph import Graph


class VerificationError(LeptonError):
    """The IR broke one of its invariants (a bug in a pass or a frontend)."""


def verify(graph: Graph) -> None:
    from ..ops import REGISTRY, infer_node  # the ops package builds on the IR

    defined = set()
    names: set[str] = set()

    def define(value, what: str) -> None:
        if value.name in names:
            raise VerificationError(f"value name '{value.name}' is defined twice ({what})")
        names.add(value.name)
        defined.add(value)

    for v in graph.inputs:
        define(v, "graph input")
    for v in graph.constants:
        if v.const is None:
            raise VerificationError(f"constant '{v.name}' has no data")
        if v.const.shape != v.type.shape or str(v.const.dtype) != v.type.dtype:
            raise VerificationError(f"constant '{v.name}' holds {v.const.dtype}{list(v.const.shape)}, typed {v.type}")
        define(v, "constant")
    node_names: set[str] = set()
    for node in graph.nodes:
        if node.name in node_names:
            raise VerificationError(f"node name '{node.name}' is used twice")
        node_names.add(node.name)
        if node.op not in REGISTRY:
            raise VerificationError(f"node '{node.name}' has unregistered op {node.op}")
        for v in node.inputs:
            if v is not None and v not in defined:
                raise VerificationError(f"node '{node.name}' reads '{v.name}' before it is defined")
        expected = [v.type for v in node.outputs]
        infer_node(node)
        if [v.type for v in node.outputs] != expected:
            raise VerificationError(
                f"node '{node.name}' output types {[str(t) for t in expected]} disagree with inference "
                f"{[str(v.type) for v in node.outputs]}")
        for v in node.outputs:
            if v.producer is not node:
                raise VerificationError(f"value '{v.name}' does not point back to its producer '{node.name}'")
            define(v, f"output of '{node.name}'")
    for v in graph.outputs:
        if v not in defined:
            raise VerificationError(f"graph output '{v.name}' is never defined")
