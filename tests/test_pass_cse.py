"""cse: equal constants and equal computations on the same inputs are kept once."""

import numpy as np
import pytest

from lepton_compiler.ir import Graph, Node, TensorType, Value
from lepton_compiler.ops import interpret
from lepton_compiler.passes.base import PassOptions
from lepton_compiler.passes.cse import CSE, eliminate_common_subexpressions as cse

OPTS = PassOptions()
T = TensorType("float32", ("N", 4))
W = TensorType("float32", (4,))


def const(name, array):
    return Value(name, TensorType.of(array), array)


def duplicated() -> Graph:
    """y = Relu(x) + w1  times  Relu(x) + w2, with w1 and w2 equal constants."""
    x = Value("x", T)
    w1 = const("w1", np.arange(4, dtype=np.float32))
    w2 = const("w2", np.arange(4, dtype=np.float32))
    a, b, c, d, y = (Value(n, T) for n in "abcdy")
    nodes = [
        Node("Relu", "relu_a", [x], [a]),
        Node("Relu", "relu_b", [x], [b]),
        Node("Add", "add_c", [a, w1], [c]),
        Node("Add", "add_d", [b, w2], [d]),
        Node("Mul", "mul", [c, d], [y]),
    ]
    return Graph("g", [x], [y], nodes, [w1, w2])


def run(g: Graph, x: np.ndarray):
    return interpret(g, {"x": x})


# -- structure ------------------------------------------------------------------------------------
def test_merges_constants_then_cascading_nodes():
    result = cse(duplicated(), OPTS)
    assert result.modified
    assert str(result.graph) == """\
graph g (opset 17) {
  input  %x: float32[N, 4]
  const  %w1: float32[4]
  %a: float32[N, 4] = Relu(%x)  # relu_a
  %c: float32[N, 4] = Add(%a, %w1)  # add_c
  %y: float32[N, 4] = Mul(%c, %c)  # mul
  output %y: float32[N, 4]
}"""


def test_constants_merge_only_on_equal_dtype_shape_and_bytes():
    base = np.array([1.0, 0.0], np.float32)
    consts = [
        const("first", base),
        const("same", base.copy()),
        const("other_dtype", base.astype(np.float64)),
        const("other_shape", base.reshape(2, 1)),
        const("negative_zero", np.array([1.0, -0.0], np.float32)),  # == but different bytes
    ]
    outs = [Value(f"o{i}", c.type) for i, c in enumerate(consts)]
    nodes = [Node("Identity", f"id{i}", [c], [o]) for i, (c, o) in enumerate(zip(consts, outs))]
    after = cse(Graph("g", [], outs, nodes, consts), OPTS).graph
    assert [c.name for c in after.constants] == ["first", "other_dtype", "other_shape", "negative_zero"]
    assert [n.inputs[0].name for n in after.nodes] == ["first", "first", "other_dtype", "other_shape", "negative_zero"]


def test_attribute_comparison():
    x = Value("x", TensorType("float32", (2, 3)))

    def merges(attrs_a, attrs_b, op="Transpose"):
        """Whether op[attrs_a](x) and op[attrs_b](x), both read by an Add, become one node."""
        t = TensorType("float32", (3, 2)) if op == "Transpose" else x.type
        a, b, y = Value("a", t), Value("b", t), Value("y", t)
        nodes = [Node(op, "n_a", [x], [a], attrs_a), Node(op, "n_b", [x], [b], attrs_b),
                 Node("Add", "sum", [a, b], [y])]
        after = cse(Graph("g", [x], [y], nodes, []), OPTS).graph
        return [n.name for n in after.nodes] == ["n_a", "sum"]

    assert merges({"perm": [1, 0]}, {"perm": (1, 0)})                     # list vs tuple
    assert merges({"perm": [1, 0]}, {"perm": [np.int64(1), np.int64(0)]})  # numpy ints are ints
    assert merges({"alpha": 0.5}, {"alpha": np.float32(0.5)}, "LeakyRelu")
    assert not merges({"alpha": 0.5}, {"alpha": 0.25}, "LeakyRelu")
    assert not merges({"alpha": 1}, {"alpha": 1.0}, "LeakyRelu")            # int and float attrs differ
    assert not merges({"alpha": 0.0}, {"alpha": -0.0}, "LeakyRelu")         # bits differ
    assert not merges({}, {"alpha": 0.01}, "LeakyRelu")                     # default not assumed
    # numpy arrays in attributes compare by dtype, shape and contents (not by ==, which is elementwise)
    tag = np.array([1, 2], np.int64)
    assert merges({"tag": tag}, {"tag": tag.copy()}, "Relu")
    assert not merges({"tag": tag}, {"tag": tag.astype(np.int32)}, "Relu")
    assert not merges({"tag": tag}, {"tag": tag.reshape(2, 1)}, "Relu")
    assert not merges({"tag": tag}, {"tag": np.array([1, 3], np.int64)}, "Relu")


def test_graph_output_producer_is_kept_but_others_merge_into_it():
    x = Value("x", T)
    a, y = Value("a", T), Value("y", T)
    z = Value("z", T)
    # y (a graph output) is the later duplicate: its node stays so that the name "y" survives.
    later = Graph("g", [x], [y, z], [Node("Relu", "first", [x], [a]), Node("Relu", "second", [x], [y]),
                                     Node("Add", "use", [a, a], [z])], [])
    result = cse(later, OPTS)
    assert not result.modified
    assert [n.name for n in result.graph.nodes] == ["first", "second", "use"]
    # y is the earlier one: the later duplicate merges into it.
    b = Value("b", T)
    earlier = Graph("g", [x], [y, z], [Node("Relu", "first", [x], [y]), Node("Relu", "second", [x], [b]),
                                       Node("Add", "use", [b, b], [z])], [])
    result = cse(earlier, OPTS)
    assert result.modified
    assert [(n.name, [v.name for v in n.inputs]) for n in result.graph.nodes] == [("first", ["x"]),
                                                                                  ("use", ["y", "y"])]
    assert [v.name for v in result.graph.outputs] == ["y", "z"]


def test_constant_that_is_a_graph_output_is_kept():
    w1 = const("w1", np.ones(4, np.float32))
    w2 = const("w2", np.ones(4, np.float32))
    after = cse(Graph("g", [], [w1, w2], [], [w1, w2]), OPTS).graph
    assert [c.name for c in after.constants] == ["w1", "w2"]
    assert [v.name for v in after.outputs] == ["w1", "w2"]


def test_trailing_missing_optional_inputs_do_not_matter():
    x = Value("x", TensorType("float32", (3,)))
    a, b, y = Value("a", x.type), Value("b", x.type), Value("y", x.type)
    g = Graph("g", [x], [y], [Node("Clip", "c1", [x], [a]), Node("Clip", "c2", [x, None, None], [b]),
                              Node("Add", "sum", [a, b], [y])], [])
    after = cse(g, OPTS).graph
    assert [n.name for n in after.nodes] == ["c1", "sum"]


# -- numerics -------------------------------------------------------------------------------------
def test_numerics_unchanged():
    before = duplicated()
    after = cse(before, OPTS).graph
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(run(before, x)[0], run(after, x)[0])


# -- where it must not fire -----------------------------------------------------------------------
@pytest.mark.parametrize("why, second", [
    ("different input", lambda x, w: Node("Add", "n2", [w, x], [Value("b", T)])),
    ("different op", lambda x, w: Node("Sub", "n2", [x, w], [Value("b", T)])),
    ("different domain", lambda x, w: Node("Add", "n2", [x, w], [Value("b", T)], domain="custom")),
])
def test_does_not_merge_different_nodes(why, second):
    x = Value("x", T)
    w = const("w", np.ones(4, np.float32))
    first = Node("Add", "n1", [x, w], [Value("a", T)])
    other = second(x, w)
    g = Graph("g", [x], [first.outputs[0], other.outputs[0]], [first, other], [w])
    result = cse(g, OPTS)
    assert not result.modified, why
    assert [n.name for n in result.graph.nodes] == ["n1", "n2"]


# -- purity and idempotence -----------------------------------------------------------------------
def test_input_graph_untouched():
    before = duplicated()
    text = str(before)
    cse(before, OPTS)
    assert str(before) == text
    assert [n.name for n in before.nodes] == ["relu_a", "relu_b", "add_c", "add_d", "mul"]


def test_idempotent():
    once = cse(duplicated(), OPTS).graph
    again = cse(once, OPTS)
    assert not again.modified
    assert str(again.graph) == str(once)


def test_pass_object():
    assert CSE.name == "cse"
    assert CSE.doc.startswith("f(x, y)[attrs], f(x, y)[attrs] -> one f(x, y)[attrs]")
