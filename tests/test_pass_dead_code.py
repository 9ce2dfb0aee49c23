"""dead-code: nodes and constants no output depends on disappear."""

import numpy as np

from lepton_compiler.ir import Graph, Node, TensorType, Value
from lepton_compiler.ops import interpret
from lepton_compiler.passes.base import PassOptions
from lepton_compiler.passes.dead_code import eliminate_dead_code


def graph_with_dead_branch() -> Graph:
    t = TensorType("float32", ("N", 4))
    x = Value("x", t)
    unused = Value("unused", TensorType("float32", (4,)), np.ones(4, np.float32))
    a, dead, y = Value("a", t), Value("dead", t), Value("y", t)
    nodes = [
        Node("Relu", "live", [x], [a]),
        Node("Add", "dead_add", [x, unused], [dead]),
        Node("Relu", "out", [a], [y]),
    ]
    return Graph("g", [x], [y], nodes, [unused])


def test_removes_dead_nodes_and_constants():
    before = graph_with_dead_branch()
    result = eliminate_dead_code(before, PassOptions())
    assert result.modified
    assert [n.name for n in result.graph.nodes] == ["live", "out"]
    assert result.graph.constants == []
    assert [n.name for n in before.nodes] == ["live", "dead_add", "out"]  # input untouched


def test_numerics_unchanged():
    before = graph_with_dead_branch()
    after = eliminate_dead_code(before, PassOptions()).graph
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(interpret(before, {"x": x})[0], interpret(after, {"x": x})[0])


def test_does_not_fire_when_everything_is_live():
    g = eliminate_dead_code(graph_with_dead_branch(), PassOptions()).graph
    again = eliminate_dead_code(g, PassOptions())
    assert not again.modified  # idempotent
    assert [n.name for n in again.graph.nodes] == ["live", "out"]
