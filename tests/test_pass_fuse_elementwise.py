"""fuse-elementwise: single-use chains and small DAGs of elementwise ops -> one FusedElementwise."""

import numpy as np
import pytest

from fusion_testing import Builder, assert_compiles_equivalent, assert_equivalent, ops, rewritten, unchanged
from lepton_compiler.passes.fuse_elementwise import FUSE_ELEMENTWISE


def test_dag_golden_ir():
    # Clip(swish(x * s + bb)): the Add's result is read twice, both times inside the group
    b = Builder()
    x, s, bb = b.input("x", ("N", 3, 4)), b.const("s", (3, 1)), b.const("bb", (4,))
    a = b.op("Add", [b.op("Mul", [x, s], name="mul"), bb], name="add")
    y = b.op("Mul", [a, b.op("Sigmoid", [a], name="sig")], name="swish")
    lo, hi = b.const("lo", np.array(-1, np.float32)), b.const("hi", np.array(2, np.float32))
    before = b.graph(b.op("Clip", [y, lo, hi], name="clip", out="z"))
    after = rewritten(FUSE_ELEMENTWISE, before)
    assert str(after) == """graph g (opset 17) {
  input  %x: float32[N, 3, 4]
  const  %s: float32[3, 1]
  const  %bb: float32[4]
  %z: float32[N, 3, 4] = lepton.FusedElementwise[program=['Mul 0 1', 'Add 3 2', 'Sigmoid 4', 'Mul 4 5', \
'Clip[-1.0,2.0] 6']](%x, %s, %bb)  # clip
  output %z: float32[N, 3, 4]
}"""
    assert_equivalent(before, after)
    assert_compiles_equivalent(before, after)


def test_chain_of_all_binary_ops_and_activations():
    b = Builder()
    x, y = b.input("x", ("N", 5)), b.input("y", ("N", 5))
    v = b.op("Sub", [x, y], name="sub")
    v = b.op("LeakyRelu", [v], {"alpha": 0.25}, name="leaky")
    v = b.op("Div", [v, b.const("d", (5,), low=1.0)], name="div")
    v = b.op("Tanh", [v], name="tanh")
    v = b.op("HardSwish", [b.op("Mul", [v, x], name="mul")], name="hswish")
    before = b.graph(b.op("Relu", [v], name="relu", out="out"))
    after = rewritten(FUSE_ELEMENTWISE, before)
    assert ops(after) == ["FusedElementwise"]
    assert after.nodes[0].attr("program") == ["Sub 0 1", "LeakyRelu[0.25] 3", "Div 4 2", "Tanh 5",
                                              "Mul 6 0", "HardSwish 7", "Relu 8"]
    assert [v.name for v in after.nodes[0].inputs] == ["x", "y", "d"]
    assert_equivalent(before, after)
    assert_compiles_equivalent(before, after)


def test_broadcast_output_shape_is_the_last_ops():
    b = Builder()
    x, r = b.input("x", (3, 1)), b.input("r", (1, 4))
    v = b.op("Add", [x, r], name="add")                   # [3, 4]
    before = b.graph(b.op("Mul", [v, b.const("s", (2, 1, 1))], name="mul", out="y"))   # [2, 3, 4]
    after = rewritten(FUSE_ELEMENTWISE, before)
    assert after.outputs[0].type.shape == (2, 3, 4)
    assert_equivalent(before, after)
    assert_compiles_equivalent(before, after)


def test_existing_fused_elementwise_is_inlined():
    b = Builder()
    x = b.input("x", ("N", 4))
    f = b.fused("FusedElementwise", [x, b.const("c", (4,))], {"program": ["Add 0 1", "Sigmoid 2"]}, name="f")
    before = b.graph(b.op("Mul", [f, x], name="mul", out="y"))
    after = rewritten(FUSE_ELEMENTWISE, before)
    assert after.nodes[0].attr("program") == ["Add 0 1", "Sigmoid 2", "Mul 3 0"]
    assert_equivalent(before, after)


def test_separate_groups_around_a_value_read_outside():
    # t feeds two groups, so it ends the first group and is an input of the second
    b = Builder()
    x = b.input("x", ("N", 4))
    t = b.op("Relu", [b.op("Add", [x, x], name="add")], name="relu")
    y = b.op("Tanh", [b.op("Mul", [t, x], name="mul")], name="tanh", out="y")
    z = b.op("Sigmoid", [t], name="sig", out="z")
    before = b.graph(y, z)
    after = rewritten(FUSE_ELEMENTWISE, before)
    assert [(n.op, n.attr("program")) for n in after.nodes] == [
        ("FusedElementwise", ["Add 0 0", "Relu 1"]),
        ("FusedElementwise", ["Mul 0 1", "Tanh 2"]),
        ("Sigmoid", None),
    ]
    assert_equivalent(before, after)


# -- where it must not fire -----------------------------------------------------------------------
def test_not_a_single_op():
    b = Builder()
    x = b.input("x", ("N", 4))
    unchanged(FUSE_ELEMENTWISE, b.graph(b.op("Add", [x, b.const("c", (4,))], name="add", out="y")))


def test_not_when_the_intermediate_is_read_elsewhere():
    b = Builder()
    x = b.input("x", ("N", 4))
    t = b.op("Add", [x, b.const("c", (4,))], name="add")
    y = b.op("Relu", [t], name="relu", out="y")
    m = b.op("MatMul", [t, b.const("w", (4, 2))], name="matmul", out="m")
    unchanged(FUSE_ELEMENTWISE, b.graph(y, m))


def test_not_when_the_intermediate_is_a_graph_output():
    b = Builder()
    x = b.input("x", ("N", 4))
    t = b.op("Add", [x, b.const("c", (4,))], name="add", out="t")
    unchanged(FUSE_ELEMENTWISE, b.graph(b.op("Relu", [t], name="relu", out="y"), t))


def test_not_with_clip_bounds_known_only_at_run_time():
    b = Builder()
    x, hi = b.input("x", ("N", 4)), b.input("hi", ())
    t = b.op("Add", [x, x], name="add")
    unchanged(FUSE_ELEMENTWISE, b.graph(b.op("Clip", [t, None, hi], name="clip", out="y")))


@pytest.mark.parametrize("dtype", ["int64", "int32"])
def test_not_on_integers(dtype):
    # integer Div truncates, which the float program language does not express
    b = Builder()
    x = b.input("x", ("N", 4), dtype)
    t = b.op("Add", [x, x], name="add")
    unchanged(FUSE_ELEMENTWISE, b.graph(b.op("Div", [t, b.const("d", np.full(4, 3, dtype))], name="div", out="y")))


def test_not_across_other_ops():
    b = Builder()
    x = b.input("x", ("N", 2, 5, 5))
    r = b.op("Relu", [x], name="relu")
    p = b.op("MaxPool", [r], {"kernel_shape": [2, 2]}, name="pool")
    unchanged(FUSE_ELEMENTWISE, b.graph(b.op("Sigmoid", [p], name="sig", out="y")))
