"""Constant folding: results known at compile time become constants."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import LeptonError
from ..ir import Graph, Node, Value
from ..ops import REGISTRY, infer_graph
from .base import Pass, PassOptions, PassResult

FOLD_LIMIT = 16 * 1024 * 1024
"""Largest result, in elements, that is folded. A bigger one (an Expand or Tile of a small
constant, say) would store up to gigabytes in the graph, in every saved artifact and in memory
at load time, where the node itself makes it at run time from a few small inputs: folding
it saves little work and costs much space."""


KEPT_OPS = ("DequantizeLinear",)
"""Not folded, as ONNX Runtime does not: a DequantizeLinear of int8 weights is what fuse-qdq (-O2)
turns into an int8 kernel; folded it would be fp32 weights. fuse-qdq folds the ones it leaves."""


def fold_constants(graph: Graph, options: PassOptions) -> PassResult:
    """f(c1, ..., cn) -> c, and f(x) -> c when inference knows f(x) without symbols (Shape of a static x).

    Known results are shape arithmetic: Shape(x) of static dims and Gather/Concat/Unsqueeze/Cast
    on it. For all-constant inputs the reference kernel computes the value. The constant keeps
    the output's name, so a folded graph output stays a graph output. Values that depend on a
    symbolic dim (object-dtype ``known``, such as Shape(x) on a dynamic batch) are left to
    canonicalize-reshape."""
    g = graph.copy()
    kept = []
    for node in g.nodes:
        arrays = None if node.op in KEPT_OPS else _folded_outputs(node)
        if arrays is None:
            kept.append(node)
            continue
        for value, array in zip(node.outputs, arrays):
            _make_constant(g, value, array)
    modified = len(kept) != len(g.nodes)
    g.nodes = kept
    if modified:
        infer_graph(g)  # readers of the new constants may now have known values too
    return PassResult(g, modified)


def _folded_outputs(node: Node) -> Optional[list[np.ndarray]]:
    """The node's results as arrays, when all of them are known and small enough."""
    if not all(v.type.is_static and v.type.numel() <= FOLD_LIMIT for v in node.outputs):
        return None
    arrays = _computed(node) if _all_inputs_constant(node) else _concrete_known(node)
    if arrays is None or not all(_fits(a, v) for a, v in zip(arrays, node.outputs)):
        return None
    return arrays


def _all_inputs_constant(node: Node) -> bool:
    inputs = [v for v in node.inputs if v is not None]
    return bool(inputs) and all(v.is_const for v in inputs)


def _computed(node: Node) -> Optional[list[np.ndarray]]:
    args = [None if v is None else v.const for v in node.inputs]
    try:
        return [np.asarray(a) for a in REGISTRY[node.op].reference(node, args)]
    except (LeptonError, ValueError):
        return None  # the node fails on these inputs; leave the failure to run time


def _concrete_known(node: Node) -> Optional[list[np.ndarray]]:
    """Inference's compile-time values of every output, when none holds a symbol."""
    known = [v.known for v in node.outputs]
    if any(k is None or k.dtype == object for k in known):
        # Object arrays hold symbols (or came from symbols; their arithmetic is not exact).
        return None
    return known


def _fits(array: np.ndarray, value: Value) -> bool:
    return str(array.dtype) == value.type.dtype and array.shape == value.type.shape


def _make_constant(graph: Graph, value: Value, array: np.ndarray) -> None:
    """Turn the node output ``value`` into a constant holding ``array``, under the same name."""
    frozen = np.require(array, requirements="C").view()  # a view: an input's array keeps its flags
    frozen.setflags(write=False)
    value.const = frozen
    value.known = frozen
    value.producer = None
    graph.constants.append(value)


FOLD_CONSTANTS = Pass("fold-constants", fold_constants)
