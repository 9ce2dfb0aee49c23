"""fold-constants: constant inputs and statically known shape arithmetic become constants."""

import os

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from lepton_compiler.frontends.onnx import import_model
from lepton_compiler.ir import Graph, Node, TensorType, Value
from lepton_compiler.ops import interpret
from lepton_compiler.passes import fold_constants as fold_module
from lepton_compiler.passes.base import PassOptions
from lepton_compiler.passes.fold_constants import FOLD_CONSTANTS, fold_constants

OPTS = PassOptions()
ALT_MODEL = os.path.join(os.path.dirname(__file__), "data", "mnist_alt_opset11.onnx")


def onnx_graph(nodes, inputs, outputs, inits=None):
    """An IR graph from ONNX nodes; inputs/outputs are (name, shape[, elem type])."""
    def info(spec):
        elem = spec[2] if len(spec) > 2 else TensorProto.FLOAT
        return helper.make_tensor_value_info(spec[0], elem, list(spec[1]))

    graph = helper.make_graph(nodes, "g", [info(i) for i in inputs], [info(o) for o in outputs],
                              [numpy_helper.from_array(a, n) for n, a in (inits or {}).items()])
    return import_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def constant_arithmetic() -> Graph:
    """y = x + (a + b) * c, with a, b, c constants."""
    t = TensorType("float32", (4,))
    x = Value("x", TensorType("float32", ("N", 4)))
    a = Value("a", t, np.arange(4, dtype=np.float32))
    b = Value("b", t, np.full(4, 0.5, np.float32))
    c = Value("c", t, np.array([1, -1, 2, -2], np.float32))
    s, p, y = Value("s", t), Value("p", t), Value("y", x.type)
    nodes = [Node("Add", "sum", [a, b], [s]), Node("Mul", "prod", [s, c], [p]), Node("Add", "out", [x, p], [y])]
    return Graph("g", [x], [y], nodes, [a, b, c])


def static_shape_chain() -> Graph:
    """Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])) on a static x, and Cast(Shape(x)) as an output."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape_of"),
        helper.make_node("Gather", ["shape", "zero"], ["d0"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["d0", "axes"], ["d0_1d"], name="unsqueeze"),
        helper.make_node("Concat", ["d0_1d", "minus_one"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape"),
        helper.make_node("Cast", ["shape"], ["dims"], name="cast", to=TensorProto.FLOAT),
    ]
    inits = {"zero": np.array(0, np.int64), "axes": np.array([0], np.int64), "minus_one": np.array([-1], np.int64)}
    return onnx_graph(nodes, [("x", (2, 3, 4))], [("y", (2, 12)), ("dims", (3,))], inits)


def assert_same_numerics(before: Graph, after: Graph, feeds) -> None:
    for want, got in zip(interpret(before, feeds), interpret(after, feeds)):
        assert want.dtype == got.dtype and want.shape == got.shape
        np.testing.assert_array_equal(want, got)


# -- structure ------------------------------------------------------------------------------------
def test_folds_constant_arithmetic_into_named_constants():
    result = fold_constants(constant_arithmetic(), OPTS)
    assert result.modified
    assert str(result.graph) == """\
graph g (opset 17) {
  input  %x: float32[N, 4]
  const  %a: float32[4]
  const  %b: float32[4]
  const  %c: float32[4]
  const  %s: float32[4]
  const  %p: float32[4]
  %y: float32[N, 4] = Add(%x, %p)  # out
  output %y: float32[N, 4]
}"""
    p = result.graph.value("p")
    np.testing.assert_array_equal(p.const, np.array([0.5, -1.5, 5.0, -7.0], np.float32))
    assert p.producer is None and p.known is p.const
    assert not p.const.flags.writeable  # constants are never mutated


def test_folds_static_shape_arithmetic_and_keeps_output_names():
    result = fold_constants(static_shape_chain(), OPTS)
    g = result.graph
    assert result.modified
    assert [(n.op, [v.name for v in n.inputs]) for n in g.nodes] == [("Reshape", ["x", "target"])]
    np.testing.assert_array_equal(g.value("target").const, np.array([2, -1], np.int64))
    # The folded graph output is still an output, under its name, now a constant.
    dims = g.outputs[1]
    assert dims.name == "dims" and dims in g.constants and dims.is_const
    assert dims.const.dtype == np.float32
    np.testing.assert_array_equal(dims.const, [2.0, 3.0, 4.0])


def test_folds_every_output_of_a_multi_output_node():
    t = TensorType("float32", (3,))
    c = Value("c", t, np.array([1.0, 2.0, 3.0], np.float32))
    out, mask = Value("out", t), Value("mask", TensorType("bool", (3,)))
    g = Graph("g", [], [out, mask], [Node("Dropout", "drop", [c], [out, mask])], [c])
    after = fold_constants(g, OPTS).graph
    assert after.nodes == [] and [v.name for v in after.outputs] == ["out", "mask"]
    assert after.outputs[1].const.dtype == np.bool_ and after.outputs[1].const.all()


# -- numerics -------------------------------------------------------------------------------------
def test_numerics_unchanged():
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    before = constant_arithmetic()
    assert_same_numerics(before, fold_constants(before, OPTS).graph, {"x": x})
    chain = static_shape_chain()
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    assert_same_numerics(chain, fold_constants(chain, OPTS).graph, {"x": x})


# -- where it must not fire -----------------------------------------------------------------------
def test_does_not_fold_shape_arithmetic_on_a_dynamic_batch():
    # Shape(x) of x[N, 3, 4] holds the symbol N: it is not a compile-time number.
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["d0"], axis=0),
        helper.make_node("Unsqueeze", ["d0", "axes"], ["d0_1d"]),
        helper.make_node("Concat", ["d0_1d", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    inits = {"zero": np.array(0, np.int64), "axes": np.array([0], np.int64), "minus_one": np.array([-1], np.int64)}
    g = onnx_graph(nodes, [("x", ("N", 3, 4))], [("y", ("N", 12))], inits)
    result = fold_constants(g, OPTS)
    assert not result.modified
    assert [n.op for n in result.graph.nodes] == ["Shape", "Gather", "Unsqueeze", "Concat", "Reshape"]


def test_does_not_fold_the_mnist_dynamic_flatten_chain():
    g = import_model(ALT_MODEL)
    result = fold_constants(g, OPTS)
    assert not result.modified
    assert str(result.graph) == str(g)


def test_does_not_fold_results_over_16m_elements():
    # Add of [4097, 1] and [1, 4097] would be 16,785,409 elements (over 2**24): left as a node.
    def broadcast_add(n):
        a = Value("a", TensorType("uint8", (n, 1)), np.ones((n, 1), np.uint8))
        b = Value("b", TensorType("uint8", (1, n)), np.ones((1, n), np.uint8))
        y = Value("y", TensorType("uint8", (n, n)))
        return Graph("g", [], [y], [Node("Add", "big", [a, b], [y])], [a, b])

    assert fold_module.FOLD_LIMIT == 2 ** 24
    over = fold_constants(broadcast_add(4097), OPTS)
    assert not over.modified and [n.name for n in over.graph.nodes] == ["big"]
    at_limit = fold_constants(broadcast_add(4096), OPTS)  # exactly 2**24 elements: folded
    assert at_limit.modified and at_limit.graph.nodes == []
    assert at_limit.graph.outputs[0].const.shape == (4096, 4096)


def test_limit_applies_to_small_graphs_too(monkeypatch):
    monkeypatch.setattr(fold_module, "FOLD_LIMIT", 3)
    result = fold_constants(constant_arithmetic(), OPTS)  # every folded value has 4 elements
    assert not result.modified


def test_does_not_fold_a_node_whose_kernel_rejects_its_inputs():
    # Gather with an out-of-range index fails; the failure is left to run time.
    data = Value("data", TensorType("int64", (3,)), np.array([1, 2, 3], np.int64))
    idx = Value("idx", TensorType("int64", ()), np.array(7, np.int64))
    y = Value("y", TensorType("int64", ()))
    g = Graph("g", [], [y], [Node("Gather", "bad", [data, idx], [y], {"axis": 0})], [data, idx])
    result = fold_constants(g, OPTS)
    assert not result.modified and [n.name for n in result.graph.nodes] == ["bad"]


def test_does_not_fold_nodes_that_read_runtime_values():
    g = constant_arithmetic()
    after = fold_constants(g, OPTS).graph
    assert [n.name for n in after.nodes] == ["out"]  # Add(x, p) reads the input x


# -- purity and idempotence -----------------------------------------------------------------------
def test_input_graph_untouched():
    before = constant_arithmetic()
    text = str(before)
    fold_constants(before, OPTS)
    assert str(before) == text
    assert [n.name for n in before.nodes] == ["sum", "prod", "out"]
    assert before.value("s").const is None and before.value("s").producer is before.nodes[0]
    assert before.value("a").const.flags.writeable  # the caller's arrays keep their flags


@pytest.mark.parametrize("build", [constant_arithmetic, static_shape_chain])
def test_idempotent(build):
    once = fold_constants(build(), OPTS).graph
    again = fold_constants(once, OPTS)
    assert not again.modified
    assert str(again.graph) == str(once)


def test_pass_object():
    assert FOLD_CONSTANTS.name == "fold-constants"
    assert FOLD_CONSTANTS.doc.startswith("f(c1, ..., cn) -> c, and f(x) -> c when inference knows f(x)")
