"""Small helpers that passes share for matching and rewriting graphs."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from ..ir import Graph, Node, TensorType, Value
from .base import PassResult

Rule = Callable[[Graph, Node, dict], bool]
"""A local rewrite at one node: it changes the graph in place and says whether it fired."""


def only_user(graph: Graph, value: Value, users: dict[Value, list[Node]]) -> Optional[Node]:
    """The single node reading ``value``, or None when it is read twice, by nobody, or is a graph output."""
    readers = users.get(value, [])
    if value in graph.outputs or len(readers) != 1:
        return None
    node = readers[0]
    if sum(1 for v in node.inputs if v is value) != 1:
        return None
    return node


def producer(value: Optional[Value]) -> Optional[Node]:
    return None if value is None else value.producer


def replace_uses(graph: Graph, old: Value, new: Value) -> None:
    """Make every reader of ``old`` (and the graph outputs) read ``new`` instead."""
    for node in graph.nodes:
        node.inputs = [new if v is old else v for v in node.inputs]
    graph.outputs = [new if v is old else v for v in graph.outputs]


def fresh_name(graph: Graph, base: str) -> str:
    taken = {v.name for v in graph.values()} | {n.name for n in graph.nodes}
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


def add_constant(graph: Graph, base: str, array: np.ndarray) -> Value:
    """A new constant in ``graph`` (the array is made read-only: constants are never mutated)."""
    array = np.require(array, requirements="C")
    array.setflags(write=False)
    value = Value(fresh_name(graph, base), TensorType.of(array), array)
    graph.constants.append(value)
    return value


def constant_of(value: Optional[Value]) -> Optional[np.ndarray]:
    """The compile-time contents of ``value``, when it is a constant."""
    return None if value is None or not value.is_const else value.const


def rewrite_until_stable(graph: Graph, ops: Sequence[str], rules: Sequence[Rule]) -> PassResult:
    """Apply the first rule that fires at any node of ``ops``, starting over after each change
    (a rule may change what the others see), until none fires; on a copy of ``graph``."""
    from ..ops import infer_graph

    g = graph.copy()
    modified = False
    while _rewrite_once(g, ops, rules):
        modified = True
    if modified:
        infer_graph(g)
    return PassResult(g, modified)


def _rewrite_once(g: Graph, ops: Sequence[str], rules: Sequence[Rule]) -> bool:
    users = g.users()
    return any(node.op in ops and any(rule(g, node, users) for rule in rules) for node in g.nodes)
