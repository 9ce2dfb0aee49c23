"""remove-identity: Identity(x) -> x, Dropout(x) -> x, except where a graph output needs the node."""

import numpy as np

from lepton_compiler.ir import Graph, Node, TensorType, Value
from lepton_compiler.ops import interpret
from lepton_compiler.passes.base import PassOptions
from lepton_compiler.passes.identity import remove_identity

T = TensorType("float32", ("N", 4))


def chain(last_op: str) -> Graph:
    x, a, b, y = Value("x", T), Value("a", T), Value("b", T), Value("y", T)
    nodes = [Node("Identity", "id", [x], [a]), Node("Dropout", "drop", [a], [b]), Node(last_op, "last", [b], [y])]
    return Graph("g", [x], [y], nodes, [])


def test_removes_forwarding_nodes_and_rewires():
    result = remove_identity(chain("Relu"), PassOptions())
    assert result.modified
    assert [(n.op, [v.name for v in n.inputs]) for n in result.graph.nodes] == [("Relu", ["x"])]


def test_numerics_unchanged():
    before = chain("Relu")
    after = remove_identity(before, PassOptions()).graph
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_array_equal(interpret(before, {"x": x})[0], interpret(after, {"x": x})[0])


def test_keeps_identity_that_produces_a_graph_output():
    # The graph output's name must survive, so its Identity stays.
    result = remove_identity(chain("Identity"), PassOptions())
    assert [n.name for n in result.graph.nodes] == ["last"]
    assert result.graph.nodes[0].inputs[0].name == "x"
    assert result.graph.outputs[0].name == "y"


def test_idempotent():
    once = remove_identity(chain("Relu"), PassOptions()).graph
    assert not remove_identity(once, PassOptions()).modified
