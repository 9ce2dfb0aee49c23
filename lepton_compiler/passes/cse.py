"""Common-subexpression elimination: equal constants and equal computations are kept once."""

from __future__ import annotations

import hashlib
import numbers
from typing import Any, Hashable

import numpy as np

from ..ir import Graph, Node, Value
from .base import Pass, PassOptions, PassResult


def eliminate_common_subexpressions(graph: Graph, options: PassOptions) -> PassResult:
    """f(x, y)[attrs], f(x, y)[attrs] -> one f(x, y)[attrs]; equal constants -> one constant.

    Constants merge when dtype, shape and bytes agree; nodes when op, domain, attributes and
    input values agree (the later node's outputs are replaced by the earlier's), repeated until
    nothing changes. A node or constant that is a graph output is never removed, so the output's
    name survives; it may still be the one that others merge into."""
    g = graph.copy()
    modified = _merge_constants(g)
    while _merge_nodes(g):
        modified = True
    return PassResult(g, modified)


def _merge_constants(g: Graph) -> bool:
    outputs = set(g.outputs)
    first: dict[Hashable, Value] = {}
    replace: dict[Value, Value] = {}
    kept = []
    for c in g.constants:
        key = _array_key(c.const)
        if key in first and c not in outputs:
            replace[c] = first[key]
        else:
            first.setdefault(key, c)
            kept.append(c)
    g.constants = kept
    for node in g.nodes:
        node.inputs = [replace.get(v, v) for v in node.inputs]
    return bool(replace)


def _merge_nodes(g: Graph) -> bool:
    """One sweep in topological order; readers are rewired before their own key is taken."""
    outputs = set(g.outputs)
    first: dict[Hashable, Node] = {}
    replace: dict[Value, Value] = {}
    kept = []
    for node in g.nodes:
        node.inputs = [replace.get(v, v) for v in node.inputs]
        key = _node_key(node)
        earlier = first.get(key)
        if earlier is not None and not any(v in outputs for v in node.outputs):
            replace.update(zip(node.outputs, earlier.outputs))
        else:
            first.setdefault(key, node)
            kept.append(node)
    g.nodes = kept
    return bool(replace)


def _node_key(node: Node) -> Hashable:
    inputs = list(node.inputs)
    while inputs and inputs[-1] is None:
        inputs.pop()  # a missing trailing optional input is the same as an absent one
    return (node.op, node.domain, _freeze(node.attrs), tuple(inputs), len(node.outputs))


def _array_key(array: np.ndarray) -> Hashable:
    """dtype, shape and a digest of the bytes (SHA-256: collisions are not a practical concern)."""
    data = np.require(array, requirements="C")
    return str(data.dtype), data.shape, hashlib.sha256(data.reshape(-1).view(np.uint8)).digest()


def _freeze(value: Any) -> Hashable:
    """A hashable form of an attribute value in which equal means interchangeable.

    Lists and tuples are alike; ints and floats differ (so do -0.0 and 0.0, by their bits);
    arrays compare by dtype, shape and bytes; anything else only equals itself."""
    if isinstance(value, np.ndarray):
        return ("array", _array_key(value))
    if isinstance(value, (list, tuple)):
        return ("seq", tuple(_freeze(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, _freeze(value[k])) for k in sorted(value)))
    if isinstance(value, (bool, np.bool_)):
        return ("bool", bool(value))
    if isinstance(value, numbers.Integral):
        return ("int", int(value))
    if isinstance(value, numbers.Real):
        return ("float", float(value).hex())
    if isinstance(value, (str, bytes)):
        return (type(value).__name__, value)
    return ("object", id(value))


CSE = Pass("cse", eliminate_common_subexpressions)
