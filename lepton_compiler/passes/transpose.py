"""Transpose cancellation: composed permutations, identity permutations, and transposes
moved below activations so that they meet the next transpose."""

from __future__ import annotations

from typing import Callable, Optional

from ..ir import Graph, Node, Value
from ..ops import infer_node
from ..ops.activations import ACTIVATIONS
from .base import Pass, PassOptions, PassResult
from .rewrite import rewrite_until_stable, only_user, producer, replace_uses

SINKABLE = tuple(ACTIVATIONS)
"""Ops that a Transpose commutes with: one tensor input, the same function on every element,
scalar parameters. (Elementwise ops in general do not qualify: BatchNormalization's parameters
follow the channel axis, and a binary op's other operand would have to be transposed too.)"""

Rule = Callable[[Graph, Node, dict[Value, list[Node]]], bool]


def cancel_transposes(graph: Graph, options: PassOptions) -> PassResult:
    """Transpose(Transpose(x, p1), p2) -> x when p1 then p2 is the identity, else Transpose(x, p1.p2).

    Also Transpose(x, identity) -> x, and Transpose(Act(Transpose(x, p1)), p2) ->
    Transpose(Act(x), p1.p2) for activations Act (Relu, Sigmoid, ...; several in a row too),
    so that the two transposes meet. A Transpose whose result is a graph output stays (though it
    may then read x directly); an activation whose result is a graph output or has other readers
    keeps its place."""
    return rewrite_until_stable(graph, ("Transpose",), RULES)


# -- rules --------------------------------------------------------------------------------------
def drop_identity(g: Graph, node: Node, users) -> bool:
    """Transpose(x, [0, 1, ..., n-1]) -> x unless the result is a graph output."""
    x, out = node.inputs[0], node.outputs[0]
    if perm_of(node) != list(range(x.type.rank)) or out in g.outputs:
        return False
    replace_uses(g, out, x)
    g.nodes.remove(node)
    return True


def compose(g: Graph, node: Node, users) -> bool:
    """Transpose(Transpose(x, p1), p2) -> Transpose(x, p1.p2); the inner one goes when unread.

    Done even when the inner result has other readers: reading x instead costs the same."""
    inner = producer(node.inputs[0])
    if inner is None or inner.op != "Transpose":
        return False
    inner_dies = only_user(g, inner.outputs[0], users) is node
    node.attrs["perm"] = composed(perm_of(inner), perm_of(node))
    node.inputs[0] = inner.inputs[0]
    if inner_dies:
        g.nodes.remove(inner)
    return True


def sink_below_activations(g: Graph, node: Node, users) -> bool:
    """Transpose(Act(Transpose(x, p1)), p2) -> Transpose(Act(x), p1.p2), Act a chain of activations
    each read only by the next (their results change shape, so none may be a graph output)."""
    chain, last = _activation_chain(g, node.outputs[0], users)
    if not chain or last is None or last.op != "Transpose":
        return False
    chain[0].inputs[0] = node.inputs[0]
    last.attrs["perm"] = composed(perm_of(node), perm_of(last))
    g.nodes.remove(node)
    for n in chain + [last]:
        infer_node(n)
    return True


RULES: tuple[Rule, ...] = (drop_identity, compose, sink_below_activations)


# -- helpers ------------------------------------------------------------------------------------
def perm_of(node: Node) -> list[int]:
    """A Transpose's permutation (default: reverse the axes)."""
    perm = node.attr("perm")
    return list(reversed(range(node.inputs[0].type.rank))) if perm is None else [int(p) for p in perm]


def composed(first: list[int], second: list[int]) -> list[int]:
    """The permutation of Transpose(Transpose(x, first), second): output axis i is x's axis first[second[i]]."""
    return [first[i] for i in second]


def _activation_chain(g: Graph, value: Value, users) -> tuple[list[Node], Optional[Node]]:
    """The activations that ``value`` flows through, each the only reader of the one before,
    and the single reader after them (None when the value is read twice or is a graph output)."""
    chain = []
    reader = only_user(g, value, users)
    while reader is not None and reader.op in SINKABLE and reader.inputs[0] is value:
        chain.append(reader)
        value = reader.outputs[0]
        reader = only_user(g, value, users)
    return chain, reader


TRANSPOSE_CANCEL = Pass("transpose-cancel", cancel_transposes)
