"""Helpers for the fusion-pass tests: build small IR graphs, run a pass checking its
contract (pure, verified, idempotent), and compare numerics before/after."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from lepton_compiler.ir import Graph, Node, TensorType, Value
from lepton_compiler.ir.verifier import verify
from lepton_compiler.ops import infer_graph, infer_node, interpret
from lepton_compiler.ops.fused import DOMAIN
from lepton_compiler.passes.base import Pass, PassOptions


class Builder:
    """Graphs node by node: ``b.op("Relu", [x])`` returns the (typed) output value."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.inputs: list[Value] = []
        self.constants: list[Value] = []
        self.nodes: list[Node] = []

    def input(self, name: str, shape: Sequence, dtype: str = "float32") -> Value:
        value = Value(name, TensorType(dtype, tuple(shape)))
        self.inputs.append(value)
        return value

    def const(self, name: str, array_or_shape, low: Optional[float] = None) -> Value:
        """A constant holding ``array_or_shape`` or random float32 data of that shape
        (uniform in [low, low + 1) when ``low`` is given, else standard normal)."""
        if isinstance(array_or_shape, np.ndarray):
            array = array_or_shape
        elif low is not None:
            array = (low + self.rng.random(tuple(array_or_shape))).astype(np.float32)
        else:
            array = self.rng.standard_normal(tuple(array_or_shape)).astype(np.float32)
        array.setflags(write=False)
        value = Value(name, TensorType.of(array), array)
        self.constants.append(value)
        return value

    def op(self, op: str, inputs: Sequence[Optional[Value]], attrs: Optional[dict] = None,
           name: Optional[str] = None, out: Optional[str] = None, domain: str = "") -> Value:
        name = name or f"{op.lower()}{len(self.nodes)}"
        value = Value(out or name, TensorType("float32", ()))
        node = Node(op, name, inputs, [value], attrs, domain)
        infer_node(node)
        self.nodes.append(node)
        return value

    def fused(self, op: str, inputs, attrs, name=None, out=None) -> Value:
        return self.op(op, inputs, attrs, name, out, domain=DOMAIN)

    def graph(self, *outputs: Value) -> Graph:
        return infer_graph(Graph("g", list(self.inputs), list(outputs), list(self.nodes), list(self.constants)))


def run_pass(p: Pass, graph: Graph):
    """Run ``p`` checking the contract: the input graph and its constants are untouched,
    the result verifies. Returns the PassResult."""
    verify(graph)
    text = str(graph)
    arrays = {c.name: c.const.copy() for c in graph.constants}
    result = p.run(graph, PassOptions())
    assert str(graph) == text, "the pass mutated its input graph"
    for c in graph.constants:
        np.testing.assert_array_equal(c.const, arrays[c.name], err_msg=f"constant {c.name} was mutated")
    assert result.graph is not graph
    verify(result.graph)
    return result


def rewritten(p: Pass, graph: Graph) -> Graph:
    """The graph after ``p``, asserting that it changed something and is idempotent."""
    result = run_pass(p, graph)
    assert result.modified, f"{p.name} did not fire"
    again = run_pass(p, result.graph)
    assert not again.modified, f"{p.name} is not idempotent"
    assert str(again.graph) == str(result.graph)
    return result.graph


def unchanged(p: Pass, graph: Graph) -> Graph:
    """Assert ``p`` does not fire on ``graph``: not modified, same text."""
    result = run_pass(p, graph)
    assert not result.modified, f"{p.name} fired"
    assert str(result.graph) == str(graph)
    return result.graph


def ops(graph: Graph) -> list[str]:
    return [n.op for n in graph.nodes]


def random_feeds(graph: Graph, seed: int = 1, batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in graph.inputs:
        shape = tuple(batch if isinstance(d, str) else d for d in v.type.shape)
        if v.type.dtype.startswith("float"):
            feeds[v.name] = rng.standard_normal(shape).astype(v.type.dtype)
        else:
            feeds[v.name] = rng.integers(-5, 6, shape).astype(v.type.dtype)
    return feeds


def assert_equivalent(before: Graph, after: Graph, seed: int = 1, rtol: float = 1e-5, atol: float = 1e-5,
                      feeds: Optional[dict] = None) -> None:
    """Same outputs (names, shapes, values) from the reference interpreter on random inputs."""
    assert [v.name for v in before.outputs] == [v.name for v in after.outputs]
    assert [v.type for v in before.outputs] == [v.type for v in after.outputs]
    feeds = feeds if feeds is not None else random_feeds(before, seed)
    expected, actual = interpret(before, feeds), interpret(after, feeds)
    for e, a in zip(expected, actual):
        assert e.shape == a.shape and e.dtype == a.dtype
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


def assert_compiles_equivalent(before: Graph, after: Graph, seed: int = 1, atol: float = 1e-5) -> None:
    """The rewritten graph compiled by the LLVM backend agrees with the original's reference."""
    from lepton_compiler.api import compile_graph

    feeds = random_feeds(before, seed)
    expected = interpret(before, feeds)
    actual = compile_graph(after).run(None, feeds)
    for e, a in zip(expected, actual):
        assert e.shape == a.shape
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=atol)
