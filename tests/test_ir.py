"""The IR: printer output, verifier checks, graph copies."""

import numpy as np
import pytest

from lepton_compiler.ir import Graph, Node, TensorType, Value
from lepton_compiler.ir.verifier import VerificationError, verify
from lepton_compiler.ops import infer_graph


def small_graph() -> Graph:
    x = Value("x", TensorType("float32", ("N", 4)))
    w = Value("w", TensorType("float32", (4, 3)), np.ones((4, 3), np.float32))
    y = Value("y", TensorType("float32", ("N", 3)))
    z = Value("z", TensorType("float32", ("N", 3)))
    nodes = [Node("MatMul", "mm", [x, w], [y]), Node("Relu", "act", [y], [z])]
    return Graph("small", [x], [z], nodes, [w])


def test_printer_is_stable_and_complete():
    assert str(small_graph()) == "\n".join([
        "graph small (opset 17) {",
        "  input  %x: float32[N, 4]",
        "  const  %w: float32[4, 3]",
        "  %y: float32[N, 3] = MatMul(%x, %w)  # mm",
        "  %z: float32[N, 3] = Relu(%y)  # act",
        "  output %z: float32[N, 3]",
        "}",
    ])


def test_printer_shows_attributes_sorted():
    x = Value("x", TensorType("float32", (1, 8)))
    y = Value("y", TensorType("float32", (1, 8)))
    g = Graph("g", [x], [y], [Node("Softmax", "s", [x], [y], {"axis": -1})], [])
    assert "  %y: float32[1, 8] = Softmax[axis=-1](%x)  # s" in str(g)


def test_verifier_accepts_a_valid_graph():
    verify(infer_graph(small_graph()))


def test_verifier_rejects_use_before_definition():
    g = small_graph()
    g.nodes.reverse()
    with pytest.raises(VerificationError, match="node 'act' reads 'y' before it is defined"):
        verify(g)


def test_verifier_rejects_duplicate_value_names():
    g = small_graph()
    g.nodes[1].outputs[0].name = "y"
    with pytest.raises(VerificationError, match="value name 'y' is defined twice"):
        verify(g)


def test_verifier_rejects_wrong_types():
    g = small_graph()
    g.nodes[0].outputs[0].type = TensorType("float32", ("N", 5))
    with pytest.raises(VerificationError, match=r"node 'mm' output types \['float32\[N, 5\]'\] disagree"):
        verify(g)


def test_verifier_rejects_undefined_output():
    g = small_graph()
    g.outputs.append(Value("ghost", TensorType("float32", (1,))))
    with pytest.raises(VerificationError, match="graph output 'ghost' is never defined"):
        verify(g)


def test_copy_is_independent():
    g = small_graph()
    c = g.copy()
    c.nodes.pop()
    c.nodes[0].outputs[0].name = "renamed"
    assert [n.name for n in g.nodes] == ["mm", "act"]
    assert g.nodes[0].outputs[0].name == "y"
    assert c.constants[0].const is g.constants[0].const  # arrays are shared, never mutated
