"""transpose-cancel: Transpose(Transpose(x)) composes or cancels, identity transposes go, and
transposes sink below activations to meet the next transpose."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from lepton_compiler.frontends.onnx import import_model
from lepton_compiler.ir import Graph
from lepton_compiler.ops import interpret
from lepton_compiler.passes.base import PassOptions
from lepton_compiler.passes.transpose import TRANSPOSE_CANCEL, cancel_transposes, composed

OPTS = PassOptions()
X = ("x", (2, 3, 4, 5))


def onnx_graph(nodes, outputs, inputs=(X,), inits=None) -> Graph:
    """An IR graph from ONNX nodes; inputs/outputs are (name, shape), float32."""
    def info(spec):
        return helper.make_tensor_value_info(spec[0], TensorProto.FLOAT, list(spec[1]))
    graph = helper.make_graph(nodes, "g", [info(i) for i in inputs], [info(o) for o in outputs],
                              [numpy_helper.from_array(a, n) for n, a in (inits or {}).items()])
    return import_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def t(src, dst, perm=None, name=None):
    attrs = {} if perm is None else {"perm": perm}
    return helper.make_node("Transpose", [src], [dst], name=name or dst, **attrs)


def act(op, src, dst):
    return helper.make_node(op, [src], [dst], name=dst)


def structure(g: Graph) -> list:
    return [(n.op, [v.name for v in n.inputs], n.attrs.get("perm")) for n in g.nodes]


def assert_same_numerics(before: Graph, after: Graph, seed=0) -> None:
    rng = np.random.default_rng(seed)
    feeds = {v.name: rng.standard_normal([int(d) for d in v.type.shape]).astype(np.float32) for v in before.inputs}
    for want, got in zip(interpret(before, feeds), interpret(after, feeds)):
        assert want.shape == got.shape
        np.testing.assert_array_equal(want, got)


# -- graphs ---------------------------------------------------------------------------------------
def cancelling_pair() -> Graph:
    """NCHW -> NHWC -> NCHW, then Relu."""
    return onnx_graph([t("x", "nhwc", [0, 2, 3, 1]), t("nhwc", "back", [0, 3, 1, 2]), act("Relu", "back", "y")],
                      [("y", (2, 3, 4, 5))])


def composing_pair() -> Graph:
    return onnx_graph([t("x", "a", [1, 0, 2, 3]), t("a", "b", [0, 2, 3, 1]), act("Relu", "b", "y")],
                      [("y", (3, 4, 5, 2))])


def sink_through_activations() -> Graph:
    """Transpose -> Relu -> Sigmoid -> Transpose (inverse) -> Tanh."""
    nodes = [t("x", "nhwc", [0, 2, 3, 1]), act("Relu", "nhwc", "r"), act("Sigmoid", "r", "s"),
             t("s", "back", [0, 3, 1, 2]), act("Tanh", "back", "y")]
    return onnx_graph(nodes, [("y", (2, 3, 4, 5))])


# -- structure ------------------------------------------------------------------------------------
def test_inverse_transposes_cancel():
    result = cancel_transposes(cancelling_pair(), OPTS)
    assert result.modified
    assert str(result.graph) == """\
graph g (opset 17) {
  input  %x: float32[2, 3, 4, 5]
  %y: float32[2, 3, 4, 5] = Relu(%x)  # y
  output %y: float32[2, 3, 4, 5]
}"""


def test_two_transposes_compose_into_one():
    result = cancel_transposes(composing_pair(), OPTS)
    assert structure(result.graph) == [("Transpose", ["x"], [1, 2, 3, 0]), ("Relu", ["b"], None)]
    assert result.graph.nodes[0].name == "b"


def test_default_perms_reverse_the_axes():
    g = onnx_graph([t("x", "a"), t("a", "b"), act("Relu", "b", "y")], [("y", (2, 3, 4, 5))])
    assert structure(cancel_transposes(g, OPTS).graph) == [("Relu", ["x"], None)]


def test_identity_transpose_is_removed():
    g = onnx_graph([t("x", "same", [0, 1, 2, 3]), act("Relu", "same", "y")], [("y", (2, 3, 4, 5))])
    assert structure(cancel_transposes(g, OPTS).graph) == [("Relu", ["x"], None)]


def test_chain_of_four_cancels():
    perms = [[0, 2, 3, 1], [0, 3, 1, 2], [3, 2, 1, 0], [3, 2, 1, 0]]
    nodes = [t(src, dst, p) for src, dst, p in zip(["x", "a", "b", "c"], ["a", "b", "c", "d"], perms)]
    g = onnx_graph(nodes + [act("Relu", "d", "y")], [("y", (2, 3, 4, 5))])
    assert structure(cancel_transposes(g, OPTS).graph) == [("Relu", ["x"], None)]


def test_composed_permutation_rule():
    assert composed([0, 2, 3, 1], [0, 3, 1, 2]) == [0, 1, 2, 3]
    x = np.arange(120).reshape(2, 3, 4, 5)
    first, second = [1, 0, 2, 3], [0, 2, 3, 1]
    np.testing.assert_array_equal(np.transpose(np.transpose(x, first), second),
                                  np.transpose(x, composed(first, second)))


def test_transpose_sinks_below_activations_and_cancels():
    result = cancel_transposes(sink_through_activations(), OPTS)
    assert str(result.graph) == """\
graph g (opset 17) {
  input  %x: float32[2, 3, 4, 5]
  %r: float32[2, 3, 4, 5] = Relu(%x)  # r
  %s: float32[2, 3, 4, 5] = Sigmoid(%r)  # s
  %y: float32[2, 3, 4, 5] = Tanh(%s)  # y
  output %y: float32[2, 3, 4, 5]
}"""


def test_sinking_composes_when_not_inverse():
    nodes = [t("x", "a", [1, 0, 2, 3]), act("Relu", "a", "r"), t("r", "b", [0, 2, 3, 1]), act("Tanh", "b", "y")]
    result = cancel_transposes(onnx_graph(nodes, [("y", (3, 4, 5, 2))]), OPTS)
    assert structure(result.graph) == [("Relu", ["x"], None), ("Transpose", ["r"], [1, 2, 3, 0]), ("Tanh", ["b"], None)]
    assert str(result.graph.value("r").type) == "float32[2, 3, 4, 5]"  # re-inferred at its new place


def test_inner_transpose_with_another_reader_stays_but_the_outer_reads_x():
    nodes = [t("x", "a", [0, 2, 3, 1]), t("a", "b", [0, 3, 1, 2]), act("Relu", "b", "y"), act("Sigmoid", "a", "z")]
    result = cancel_transposes(onnx_graph(nodes, [("y", (2, 3, 4, 5)), ("z", (2, 4, 5, 3))]), OPTS)
    assert sorted(structure(result.graph)) == [("Relu", ["x"], None), ("Sigmoid", ["a"], None),
                                               ("Transpose", ["x"], [0, 2, 3, 1])]
    assert_same_numerics(onnx_graph(nodes, [("y", (2, 3, 4, 5)), ("z", (2, 4, 5, 3))]), result.graph)


# -- numerics -------------------------------------------------------------------------------------
@pytest.mark.parametrize("build", [cancelling_pair, composing_pair, sink_through_activations])
def test_numerics_unchanged(build):
    before = build()
    assert_same_numerics(before, cancel_transposes(before, OPTS).graph)


# -- where it must not fire -----------------------------------------------------------------------
def test_transpose_that_is_a_graph_output_stays():
    # The identity Transpose produces the graph output y: removing it would lose the name.
    g = onnx_graph([t("x", "y", [0, 1, 2, 3])], [("y", (2, 3, 4, 5))])
    result = cancel_transposes(g, OPTS)
    assert not result.modified
    assert structure(result.graph) == [("Transpose", ["x"], [0, 1, 2, 3])]


def test_cancelling_pair_ending_in_a_graph_output_keeps_one_transpose():
    g = onnx_graph([t("x", "a", [0, 2, 3, 1]), t("a", "y", [0, 3, 1, 2])], [("y", (2, 3, 4, 5))])
    result = cancel_transposes(g, OPTS)
    assert structure(result.graph) == [("Transpose", ["x"], [0, 1, 2, 3])]
    assert result.graph.outputs[0].name == "y" and result.graph.nodes[0].outputs[0] is result.graph.outputs[0]
    assert_same_numerics(g, result.graph)


def test_inner_transpose_that_is_a_graph_output_stays():
    g = onnx_graph([t("x", "a", [0, 2, 3, 1]), t("a", "b", [0, 3, 1, 2]), act("Relu", "b", "y")],
                   [("y", (2, 3, 4, 5)), ("a", (2, 4, 5, 3))])
    result = cancel_transposes(g, OPTS)
    assert structure(result.graph) == [("Transpose", ["x"], [0, 2, 3, 1]), ("Relu", ["x"], None)]
    assert [v.name for v in result.graph.outputs] == ["y", "a"]
    assert_same_numerics(g, result.graph)


def test_no_sinking_without_a_transpose_to_meet():
    g = onnx_graph([t("x", "a", [0, 2, 3, 1]), act("Relu", "a", "r"), act("Sigmoid", "r", "y")],
                   [("y", (2, 4, 5, 3))])
    assert not cancel_transposes(g, OPTS).modified


def test_no_sinking_when_an_activation_result_has_another_reader():
    nodes = [t("x", "a", [0, 2, 3, 1]), act("Relu", "a", "r"), t("r", "b", [0, 3, 1, 2]), act("Tanh", "b", "y"),
             act("Sigmoid", "r", "z")]
    g = onnx_graph(nodes, [("y", (2, 3, 4, 5)), ("z", (2, 4, 5, 3))])
    result = cancel_transposes(g, OPTS)
    assert not result.modified  # r would change shape under its other reader
    assert str(result.graph) == str(g)


def test_no_sinking_when_an_activation_result_is_a_graph_output():
    nodes = [t("x", "a", [0, 2, 3, 1]), act("Relu", "a", "r"), t("r", "b", [0, 3, 1, 2]), act("Tanh", "b", "y")]
    g = onnx_graph(nodes, [("y", (2, 3, 4, 5)), ("r", (2, 4, 5, 3))])
    assert not cancel_transposes(g, OPTS).modified


def test_no_sinking_below_a_binary_op():
    # Add(Transpose(x), c) would need c transposed too: not a unary activation.
    nodes = [t("x", "a", [0, 2, 3, 1]), helper.make_node("Add", ["a", "c"], ["s"], name="s"),
             t("s", "b", [0, 3, 1, 2]), act("Relu", "b", "y")]
    g = onnx_graph(nodes, [("y", (2, 3, 4, 5))], inits={"c": np.arange(3, dtype=np.float32)})
    assert not cancel_transposes(g, OPTS).modified


# -- purity and idempotence -----------------------------------------------------------------------
def test_input_graph_untouched():
    before = sink_through_activations()
    text = str(before)
    cancel_transposes(before, OPTS)
    assert str(before) == text


@pytest.mark.parametrize("build", [cancelling_pair, composing_pair, sink_through_activations])
def test_idempotent(build):
    once = cancel_transposes(build(), OPTS)
    assert once.modified
    again = cancel_transposes(once.graph, OPTS)
    assert not again.modified
    assert str(again.graph) == str(once.graph)


def test_pass_object():
    assert TRANSPOSE_CANCEL.name == "transpose-cancel"
    assert TRANSPOSE_CANCEL.doc.startswith("Transpose(Transpose(x, p1), p2) -> x")
