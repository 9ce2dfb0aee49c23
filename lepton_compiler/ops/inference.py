"""Type inference over a graph, with compile-time values for shape arithmetic."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import LeptonError
from ..ir import Graph, Node, TensorType, dim_factors, shape_product
from .registry import REGISTRY, ShapeError, require

KNOWN_LIMIT = 4096
"""Largest tensor (in elements) whose contents inference computes at compile time."""

MAX_ELEMENTS = 1 << 32
"""Most elements a tensor may have, not counting the batch (16 GiB of float32). A larger one comes
from a malformed model (an absurd dim, pad or shape); the bound also keeps every index of generated
code far from overflowing 64 bits (the batch is bounded by the memory limit)."""


def elements_per_item(t: TensorType) -> int:
    """Elements of ``t`` with its symbolic dims (the batch) counted as 1."""
    return dim_factors(shape_product(t.shape))[1]


def infer_node(node: Node) -> None:
    """Set the types (and compile-time contents, where cheap) of a node's outputs."""
    opdef = REGISTRY[node.op]
    try:
        types = opdef.infer(node)
    except LeptonError:
        raise
    except Exception as exc:  # a type rule tripping over malformed attributes
        raise ShapeError(node, f"cannot infer types: {exc}") from exc
    require(node, len(types) == len(node.outputs), f"has {len(node.outputs)} outputs, expected {len(types)}")
    for value, t in zip(node.outputs, types):
        require(node, all(isinstance(d, str) or d >= 0 for d in t.shape), f"negative dim in {t}")
        require(node, elements_per_item(t) <= MAX_ELEMENTS,
                f"output '{value.name}' would be {t}: more than {MAX_ELEMENTS:,} elements per batch item")
        value.type = t
    known = _known_outputs(node)
    for value, k in zip(node.outputs, known or [None] * len(node.outputs)):
        value.known = k


def _known_outputs(node: Node) -> Optional[list[np.ndarray]]:
    opdef = REGISTRY[node.op]
    if opdef.known is not None:
        return opdef.known(node)
    inputs = [v for v in node.inputs if v is not None]
    if not inputs or any(v.known is None or v.known.size > KNOWN_LIMIT for v in inputs):
        return None
    if any(not _static_small(v.type) for v in node.outputs):
        return None
    try:
        outs = opdef.reference(node, [None if v is None else v.known for v in node.inputs])
    except (TypeError, ValueError, LeptonError):
        return None  # symbolic values that cannot be computed stay unknown
    outs = [np.asarray(o) for o in outs]
    if any(o.shape != v.type.shape for o, v in zip(outs, node.outputs)):
        return None
    return outs


def _static_small(t: TensorType) -> bool:
    return t.is_static and t.numel() <= KNOWN_LIMIT


def infer_graph(graph: Graph) -> Graph:
    """Re-infer every node's output types in place and return the graph."""
    for node in graph.nodes:
        infer_node(node)
    return graph
