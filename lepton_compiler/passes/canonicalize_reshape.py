"""Canonical views: reshapes computed from shape arithmetic, chains of views and no-op views.

Every rewrite here replaces a view (Reshape, Flatten, Squeeze, Unsqueeze) of ``x`` by another
view of ``x`` with the same output type. Views never reorder elements, so two views of the
same tensor with the same output shape hold the same data; each candidate is checked by
running the op's own type rule on it, and used only when the types agree.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ..errors import LeptonError
from ..ir import Graph, Node, TensorType, Value
from ..ops import infer_node
from .base import Pass, PassOptions, PassResult
from .rewrite import rewrite_until_stable, add_constant, constant_of, only_user, producer, replace_uses

VIEW_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
FLATTEN_1 = ("Flatten", {"axis": 1})

Rule = Callable[[Graph, Node, dict[Value, list[Node]]], bool]


def canonicalize_reshape(graph: Graph, options: PassOptions) -> PassResult:
    """Reshape(x, [d0, -1]) -> Flatten(x, axis=1); View(View(x)) -> View(x); View(x) -> x.

    In detail, for View one of Reshape, Flatten, Squeeze, Unsqueeze:
      Reshape(x, s) -> Reshape(x, c), s known at compile time (computed by Shape/Gather/Concat
        arithmetic, perhaps on a symbolic batch), c a constant: 0 copies a symbolic dim of x,
        -1 stands for the one symbolic dim left, static dims are written out;
      Reshape(x, s) or Flatten(x, axis=k) with result [x.shape[0], prod(rest)] -> Flatten(x, axis=1);
      View2(View1(x)) -> one view of x, when View1's result has no other reader;
      View(x) -> x when the result has x's type, unless the result is a graph output.
    The shape arithmetic left unused is removed by dead-code."""
    return rewrite_until_stable(graph, VIEW_OPS, RULES)


# -- rules --------------------------------------------------------------------------------------
def drop_noop_view(g: Graph, node: Node, users) -> bool:
    """View(x) -> x when the result has x's type and is not a graph output."""
    x, out = node.inputs[0], node.outputs[0]
    if out.type != x.type or out in g.outputs:
        return False
    replace_uses(g, out, x)
    g.nodes.remove(node)
    return True


def merge_view_chain(g: Graph, node: Node, users) -> bool:
    """View2(View1(x)) -> View(x) when nothing else reads View1's result."""
    inner = producer(node.inputs[0])
    if inner is None or inner.op not in VIEW_OPS or only_user(g, node.inputs[0], users) is not node:
        return False
    view = canonical_view(inner.inputs[0], node.outputs[0].type)
    if view is None:
        return False
    _become(g, node, inner.inputs[0], view)
    g.nodes.remove(inner)
    return True


def to_flatten(g: Graph, node: Node, users) -> bool:
    """Reshape(x, [d0, -1]) -> Flatten(x, axis=1) when d0 is x's dim 0 (also Flatten(axis=k))."""
    if node.op not in ("Reshape", "Flatten") or _is_flatten_1(node):
        return False
    x, out = node.inputs[0], node.outputs[0]
    if not _infers(FLATTEN_1[0], [x], FLATTEN_1[1], out.type):
        return False
    _become(g, node, x, FLATTEN_1)
    return True


def constant_target(g: Graph, node: Node, users) -> bool:
    """Reshape(x, s) -> Reshape(x, c) with c a constant in canonical form (0 / -1 / static dims)."""
    if node.op != "Reshape" or node.attr("allowzero", 0):
        return False  # with allowzero=1 a 0 in the target is a zero-size dim, not "copy"
    x, out = node.inputs[0], node.outputs[0]
    target = reshape_target(x.type.shape, out.type.shape)
    current = constant_of(node.inputs[1])
    if target is None or (current is not None and np.array_equal(current, target)
                          and current.dtype == target.dtype):
        return False
    if not _infers("Reshape", [x, _probe(target)], {}, out.type):
        return False
    _become(g, node, x, ("Reshape", {}, target))
    return True


RULES: tuple[Rule, ...] = (drop_noop_view, merge_view_chain, to_flatten, constant_target)


# -- building views -----------------------------------------------------------------------------
def reshape_target(in_shape, out_shape) -> Optional[np.ndarray]:
    """A Reshape target for ``in_shape -> out_shape`` that holds for every value of the symbols:
    0 where a symbolic dim is copied from the same position, -1 for at most one other symbolic
    dim, static dims as they are. None when no such target exists."""
    target, free = [], 0
    for i, d in enumerate(out_shape):
        if isinstance(d, int):
            if d == 0:
                return None  # a 0 would read as "copy"; zero-size reshapes are left alone
            target.append(d)
        elif i < len(in_shape) and in_shape[i] == d:
            target.append(0)
        else:
            target.append(-1)
            free += 1
    return np.array(target, np.int64) if free <= 1 else None


def canonical_view(x: Value, out_type: TensorType) -> Optional[tuple]:
    """The preferred single view of ``x`` with type ``out_type``: Flatten(axis=1), else a
    Reshape with a canonical target; as ``(op, attrs)`` or ``(op, attrs, target)``."""
    if _infers(FLATTEN_1[0], [x], FLATTEN_1[1], out_type):
        return FLATTEN_1
    target = reshape_target(x.type.shape, out_type.shape)
    if target is not None and _infers("Reshape", [x, _probe(target)], {}, out_type):
        return ("Reshape", {}, target)
    return None


def _become(g: Graph, node: Node, x: Value, view: tuple) -> None:
    """Rewrite ``node`` in place into ``view`` applied to ``x`` (same name, same output value)."""
    op, attrs, *target = view
    inputs = [x] + [add_constant(g, f"{node.name}_shape", t) for t in target]
    node.op, node.inputs, node.attrs = op, inputs, dict(attrs)


def _is_flatten_1(node: Node) -> bool:
    return node.op == "Flatten" and node.attr("axis", 1) == 1


def _probe(target: np.ndarray) -> Value:
    """A stand-in for a target constant, not yet added to the graph."""
    return Value("target", TensorType.of(target), target)


def _infers(op: str, inputs: list[Value], attrs: dict, out_type: TensorType) -> bool:
    """Whether ``op[attrs](inputs)`` type-checks and yields ``out_type``."""
    probe = Node(op, "probe", inputs, [Value("probe", out_type)], attrs)
    try:
        infer_node(probe)
    except LeptonError:
        return False
    return probe.outputs[0].type == out_type


CANONICALIZE_RESHAPE = Pass("canonicalize-reshape", canonicalize_reshape)
