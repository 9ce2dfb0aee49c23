"""canonicalize-reshape: computed Reshape targets, flatten-like reshapes, chains of views, no-op views."""

import os

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from lepton_compiler.frontends.onnx import import_model
from lepton_compiler.ir import Graph
from lepton_compiler.ops import interpret
from lepton_compiler.passes.base import PassOptions
from lepton_compiler.passes.canonicalize_reshape import (CANONICALIZE_RESHAPE, canonicalize_reshape,
                                                          reshape_target)
from lepton_compiler.passes.dead_code import eliminate_dead_code

OPTS = PassOptions()
ALT_MODEL = os.path.join(os.path.dirname(__file__), "data", "mnist_alt_opset11.onnx")


def ints(*values):
    return np.array(values, np.int64)


def onnx_graph(nodes, inputs, outputs, inits=None) -> Graph:
    """An IR graph from ONNX nodes; inputs/outputs are (name, shape), float32."""
    def info(spec):
        return helper.make_tensor_value_info(spec[0], TensorProto.FLOAT, list(spec[1]))
    graph = helper.make_graph(nodes, "g", [info(i) for i in inputs], [info(o) for o in outputs],
                              [numpy_helper.from_array(a, n) for n, a in (inits or {}).items()])
    return import_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def canonical(g: Graph) -> Graph:
    """The pass, then dead-code (which removes the shape arithmetic left unused)."""
    return eliminate_dead_code(canonicalize_reshape(g, OPTS).graph, OPTS).graph


def ops(g: Graph) -> list:
    return [(n.op, [v.name for v in n.inputs]) for n in g.nodes]


def assert_same_numerics(before: Graph, after: Graph, shapes, seed=0) -> None:
    """Equal outputs on random inputs of each shape in ``shapes`` (one per batch size)."""
    rng = np.random.default_rng(seed)
    name = before.inputs[0].name
    for shape in shapes:
        feeds = {name: rng.standard_normal(shape).astype(np.float32)}
        for want, got in zip(interpret(before, feeds), interpret(after, feeds)):
            assert want.shape == got.shape
            np.testing.assert_array_equal(want, got)


# -- graphs ---------------------------------------------------------------------------------------
def computed_target(x_shape, pick: int, rest, out_shape, prepend=True) -> Graph:
    """Reshape(x, Concat(Unsqueeze(Gather(Shape(x), pick)), rest)) (or rest first when not prepend)."""
    parts = ["n_1d", "rest"] if prepend else ["rest", "n_1d"]
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape_of"),
        helper.make_node("Gather", ["shape", "pick"], ["n"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n_1d"], name="unsqueeze"),
        helper.make_node("Concat", parts, ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape"),
    ]
    inits = {"pick": np.array(pick, np.int64), "axes": ints(0), "rest": ints(*rest)}
    return onnx_graph(nodes, [("x", x_shape)], [("y", out_shape)], inits)


def views(x_shape, out_shape, *specs, inits=None, extra_outputs=()) -> Graph:
    """A chain x -> v1 -> v2 ... -> y of the given (op, extra inputs, attrs) views."""
    nodes, prev = [], "x"
    for i, (op, extra, attrs) in enumerate(specs):
        out = "y" if i == len(specs) - 1 else f"v{i + 1}"
        nodes.append(helper.make_node(op, [prev, *extra], [out], name=f"{op.lower()}{i + 1}", **attrs))
        prev = out
    return onnx_graph(nodes, [("x", x_shape)], [("y", out_shape), *extra_outputs], inits)


# -- the MNIST case -------------------------------------------------------------------------------
def test_mnist_dynamic_flatten_chain_becomes_one_flatten():
    before = import_model(ALT_MODEL)
    assert [n.op for n in before.nodes][8:13] == ["Shape", "Gather", "Unsqueeze", "Concat", "Reshape"]
    after = canonical(before)
    assert [n.op for n in after.nodes] == ["Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool", "Conv", "Relu",
                                           "Flatten", "Gemm", "Relu", "Gemm", "Softmax"]
    flatten = after.nodes[8]
    assert flatten.attrs == {"axis": 1}
    assert [v.name for v in flatten.inputs] == ["/Relu_2_output_0"]
    assert str(flatten.outputs[0].type) == "float32[batch, 576]"
    assert not {"Shape", "Gather", "Unsqueeze", "Concat", "Reshape"} & {n.op for n in after.nodes}
    assert not [c.name for c in after.constants if c.name.startswith("/")]  # the chain's constants went too
    assert_same_numerics(before, after, [(1, 1, 28, 28), (3, 1, 28, 28)])
    assert not canonicalize_reshape(after, OPTS).modified


# -- structure ------------------------------------------------------------------------------------
def test_computed_target_becomes_a_constant_with_0_for_the_batch():
    before = computed_target(("N", 6, 4), 0, [3, 8], ("N", 3, 8))
    after = canonical(before)
    assert str(after) == """\
graph g (opset 17) {
  input  %x: float32[N, 6, 4]
  const  %reshape_shape: int64[3]
  %y: float32[N, 3, 8] = Reshape(%x, %reshape_shape)  # reshape
  output %y: float32[N, 3, 8]
}"""
    np.testing.assert_array_equal(after.constants[0].const, [0, 3, 8])
    assert_same_numerics(before, after, [(1, 6, 4), (5, 6, 4)])  # any batch


def test_symbolic_dim_moved_elsewhere_becomes_minus_1():
    before = computed_target((6, "N"), 1, [6], ("N", 6))
    after = canonical(before)
    assert ops(after) == [("Reshape", ["x", "reshape_shape"])]
    np.testing.assert_array_equal(after.value("reshape_shape").const, [-1, 6])
    assert_same_numerics(before, after, [(6, 2), (6, 7)])


def test_constant_targets_are_written_canonically():
    before = views((2, "N", 12), (2, "N", 3, 4), ("Reshape", ["t"], {}), inits={"t": ints(2, -1, 3, 4)})
    after = canonical(before)
    np.testing.assert_array_equal(after.value("reshape1_shape").const, [2, 0, 3, 4])
    assert_same_numerics(before, after, [(2, 1, 12), (2, 3, 12)])


def test_reshape_target_rule():
    assert reshape_target(("N", 6, 4), ("N", 3, 8)).tolist() == [0, 3, 8]
    assert reshape_target((6, "N"), ("N", 6)).tolist() == [-1, 6]
    assert reshape_target((2, 3), (3, 2)).tolist() == [3, 2]
    assert reshape_target((), ()).tolist() == []
    assert reshape_target(("N", "M"), ("M", "N")) is None  # two symbols to infer: not expressible
    assert reshape_target((0, 4), (0, 2, 2)) is None         # a literal 0 would mean "copy"


@pytest.mark.parametrize("x_shape, spec, inits", [
    (("N", 2, 3), ("Reshape", ["t"], {}), {"t": ints(-1, 6)}),
    (("N", 2, 3), ("Reshape", ["t"], {}), {"t": ints(0, -1)}),
    (("N", 1, 5), ("Flatten", [], {"axis": 2}), None),
])
def test_flatten_like_reshape_becomes_flatten_axis_1(x_shape, spec, inits):
    out = (x_shape[0], int(np.prod(x_shape[1:])))
    before = views(x_shape, out, spec, inits=inits)
    after = canonical(before)
    assert [(n.op, n.attrs) for n in after.nodes] == [("Flatten", {"axis": 1})]
    assert after.constants == []
    assert_same_numerics(before, after, [(1, *x_shape[1:]), (4, *x_shape[1:])])


def test_reshape_of_reshape_becomes_one_flatten():
    before = views(("N", 2, 3, 4), ("N", 24), ("Reshape", ["t1"], {}), ("Reshape", ["t2"], {}),
                   inits={"t1": ints(0, 6, 4), "t2": ints(0, 24)})
    after = canonical(before)
    assert [(n.op, n.name, [v.name for v in n.inputs], n.attrs) for n in after.nodes] == [
        ("Flatten", "reshape2", ["x"], {"axis": 1})]
    assert_same_numerics(before, after, [(1, 2, 3, 4), (3, 2, 3, 4)])


def test_reshape_of_flatten_becomes_one_reshape():
    before = views((2, 3, 4), (3, 8), ("Flatten", [], {"axis": 2}), ("Reshape", ["t"], {}), inits={"t": ints(3, 8)})
    after = canonical(before)
    assert ops(after) == [("Reshape", ["x", "reshape2_shape"])]
    np.testing.assert_array_equal(after.value("reshape2_shape").const, [3, 8])
    assert_same_numerics(before, after, [(2, 3, 4)])


def test_unsqueeze_of_squeeze_becomes_one_reshape():
    before = views(("N", 1, 4), ("N", 4, 1), ("Squeeze", ["a1"], {}), ("Unsqueeze", ["a2"], {}),
                   inits={"a1": ints(1), "a2": ints(2)})
    after = canonical(before)
    assert ops(after) == [("Reshape", ["x", "unsqueeze2_shape"])]
    np.testing.assert_array_equal(after.value("unsqueeze2_shape").const, [0, 4, 1])
    assert_same_numerics(before, after, [(1, 1, 4), (6, 1, 4)])


def test_three_views_collapse():
    before = views(("N", 6), ("N", 6), ("Reshape", ["t1"], {}), ("Reshape", ["t2"], {}), ("Reshape", ["t3"], {}),
                   inits={"t1": ints(0, 2, 3), "t2": ints(0, 3, 2), "t3": ints(0, 6)})
    after = canonical(before)
    # Collapsed to one view of x with x's own type; it stays because it produces the graph output.
    assert [(n.op, [v.name for v in n.inputs], n.attrs) for n in after.nodes] == [("Flatten", ["x"], {"axis": 1})]
    assert after.outputs[0].name == "y"
    assert_same_numerics(before, after, [(2, 6)])


def test_noop_view_is_removed():
    nodes = [helper.make_node("Reshape", ["x", "t"], ["same"], name="noop"),
             helper.make_node("Relu", ["same"], ["y"], name="relu")]
    before = onnx_graph(nodes, [("x", ("N", 4))], [("y", ("N", 4))], {"t": ints(-1, 4)})
    after = canonical(before)
    assert ops(after) == [("Relu", ["x"])]
    assert_same_numerics(before, after, [(3, 4)])


# -- where it must not fire -----------------------------------------------------------------------
def test_noop_view_that_is_a_graph_output_stays():
    before = views(("N", 4), ("N", 4), ("Flatten", [], {"axis": 1}))
    result = canonicalize_reshape(before, OPTS)
    assert not result.modified  # removing it would lose the output name "y"
    assert ops(result.graph) == [("Flatten", ["x"])]


def test_chain_stays_when_the_inner_view_has_another_reader():
    nodes = [helper.make_node("Reshape", ["x", "t1"], ["v1"], name="inner"),
             helper.make_node("Reshape", ["v1", "t2"], ["y"], name="outer"),
             helper.make_node("Relu", ["v1"], ["r"], name="other")]
    before = onnx_graph(nodes, [("x", (2, 6))], [("y", (4, 3)), ("r", (3, 4))], {"t1": ints(3, 4), "t2": ints(4, 3)})
    result = canonicalize_reshape(before, OPTS)
    assert not result.modified  # v1 is read by "other" too: merging would compute it twice
    assert [n.name for n in result.graph.nodes] == ["inner", "outer", "other"]


def test_chain_stays_when_the_inner_view_is_a_graph_output():
    before = views((2, 6), (4, 3), ("Reshape", ["t1"], {}), ("Reshape", ["t2"], {}),
                   inits={"t1": ints(3, 4), "t2": ints(4, 3)}, extra_outputs=[("v1", (3, 4))])
    result = canonicalize_reshape(before, OPTS)
    assert not result.modified
    assert [n.name for n in result.graph.nodes] == ["reshape1", "reshape2"]


def test_allowzero_reshape_keeps_its_target():
    # With allowzero=1 a 0 in the target is a zero-size dim, so 0-for-copy cannot be written.
    before = views(("N", 6), ("N", 2, 3), ("Reshape", ["t"], {"allowzero": 1}), inits={"t": ints(-1, 2, 3)})
    result = canonicalize_reshape(before, OPTS)
    assert not result.modified
    assert ops(result.graph) == [("Reshape", ["x", "t"])]


def test_static_reshape_that_is_not_a_flatten_stays_a_reshape():
    before = views((2, 3, 4), (6, 4), ("Reshape", ["t"], {}), inits={"t": ints(6, 4)})
    result = canonicalize_reshape(before, OPTS)
    assert not result.modified  # [6, 4] is not [x.shape[0], rest], and the target is canonical already


# -- purity and idempotence -----------------------------------------------------------------------
def test_input_graph_untouched():
    before = import_model(ALT_MODEL)
    text = str(before)
    canonicalize_reshape(before, OPTS)
    assert str(before) == text
    assert before.nodes[12].op == "Reshape" and before.nodes[12].inputs[1].name == "/Concat_output_0"


@pytest.mark.parametrize("build", [
    lambda: import_model(ALT_MODEL),
    lambda: computed_target(("N", 6, 4), 0, [3, 8], ("N", 3, 8)),
    lambda: computed_target((6, "N"), 1, [6], ("N", 6)),
    lambda: views(("N", 1, 4), ("N", 4, 1), ("Squeeze", ["a1"], {}), ("Unsqueeze", ["a2"], {}),
                  inits={"a1": ints(1), "a2": ints(2)}),
])
def test_idempotent(build):
    once = canonicalize_reshape(build(), OPTS)
    assert once.modified
    again = canonicalize_reshape(once.graph, OPTS)
    assert not again.modified
    assert str(again.graph) == str(once.graph)


def test_pass_object():
    assert CANONICALIZE_RESHAPE.name == "canonicalize-reshape"
    assert CANONICALIZE_RESHAPE.doc.startswith("Reshape(x, [d0, -1]) -> Flatten(x, axis=1)")
