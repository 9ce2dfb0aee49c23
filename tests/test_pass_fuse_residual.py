"""fuse-residual: Add(Conv(x, w, b), r) -> FusedConv(x, w, b, r)."""

import pytest

from fusion_testing import Builder, assert_compiles_equivalent, assert_equivalent, ops, rewritten, unchanged
from lepton_compiler.passes.fuse_residual import FUSE_RESIDUAL

CONV = {"pads": [1, 1, 1, 1]}
PLAIN = {"activation": "", "activation_params": []}


@pytest.mark.parametrize("conv_first", [True, False])
def test_golden_ir(conv_first):
    b = Builder()
    x, r = b.input("x", ("N", 2, 5, 4)), b.input("r", ("N", 3, 5, 4))
    c = b.op("Conv", [x, b.const("w", (3, 2, 3, 3)), b.const("b", (3,))], CONV, name="conv")
    y = b.op("Add", [c, r] if conv_first else [r, c], name="add", out="y")
    before = b.graph(y)
    after = rewritten(FUSE_RESIDUAL, before)
    assert str(after) == """graph g (opset 17) {
  input  %x: float32[N, 2, 5, 4]
  input  %r: float32[N, 3, 5, 4]
  const  %w: float32[3, 2, 3, 3]
  const  %b: float32[3]
  %y: float32[N, 3, 5, 4] = lepton.FusedConv[activation='', activation_params=[], pads=[1, 1, 1, 1]](%x, %w, %b, %r)  # conv
  output %y: float32[N, 3, 5, 4]
}"""
    assert_equivalent(before, after)


def test_residual_computed_after_the_conv_and_no_bias():
    # the FusedConv takes the Add's place, after the residual's producer
    b = Builder()
    x = b.input("x", ("N", 3, 6, 6))
    c = b.op("Conv", [x, b.const("w", (3, 3, 3, 3))], CONV, name="conv")
    r = b.op("Relu", [x], name="relu")
    y = b.op("Add", [r, c], name="add", out="y")
    before = b.graph(y)
    after = rewritten(FUSE_RESIDUAL, before)
    assert ops(after) == ["Relu", "FusedConv"]
    assert [v and v.name for v in after.nodes[1].inputs] == ["x", "w", None, "relu"]
    assert_equivalent(before, after)
    assert_compiles_equivalent(before, after)


def test_broadcast_residual():
    b = Builder()
    x = b.input("x", ("N", 2, 5, 4))
    c = b.op("Conv", [x, b.const("w", (3, 2, 3, 3))], CONV, name="conv")
    r = b.input("r", (1, 3, 1, 4))
    before = b.graph(b.op("Add", [c, r], name="add", out="y"))
    after = rewritten(FUSE_RESIDUAL, before)
    assert ops(after) == ["FusedConv"]
    assert_equivalent(before, after)
    assert_compiles_equivalent(before, after)


def test_two_convs_fuse_the_later_one():
    b = Builder()
    x = b.input("x", ("N", 3, 5, 5))
    c1 = b.op("Conv", [x, b.const("w1", (3, 3, 3, 3))], CONV, name="conv1")
    c2 = b.op("Conv", [x, b.const("w2", (3, 3, 1, 1))], name="conv2")
    before = b.graph(b.op("Add", [c1, c2], name="add", out="y"))
    after = rewritten(FUSE_RESIDUAL, before)
    assert [(n.op, n.name) for n in after.nodes] == [("Conv", "conv1"), ("FusedConv", "conv2")]
    assert after.nodes[1].inputs[3].name == "conv1"
    assert_equivalent(before, after)


def test_fused_conv_without_epilogue():
    b = Builder()
    x, r = b.input("x", ("N", 2, 5, 4)), b.input("r", ("N", 3, 5, 4))
    c = b.fused("FusedConv", [x, b.const("w", (3, 2, 3, 3))], {**CONV, **PLAIN}, name="conv")
    before = b.graph(b.op("Add", [c, r], name="add", out="y"))
    after = rewritten(FUSE_RESIDUAL, before)
    assert ops(after) == ["FusedConv"] and after.nodes[0].inputs[3].name == "r"
    assert_equivalent(before, after)


# -- where it must not fire -----------------------------------------------------------------------
def test_not_when_conv_output_is_read_twice():
    b = Builder()
    x, r = b.input("x", ("N", 2, 5, 4)), b.input("r", ("N", 3, 5, 4))
    c = b.op("Conv", [x, b.const("w", (3, 2, 3, 3))], CONV, name="conv")
    y = b.op("Add", [c, r], name="add", out="y")
    z = b.op("Relu", [c], name="relu", out="z")
    unchanged(FUSE_RESIDUAL, b.graph(y, z))


def test_not_when_conv_output_is_a_graph_output():
    b = Builder()
    x, r = b.input("x", ("N", 2, 5, 4)), b.input("r", ("N", 3, 5, 4))
    c = b.op("Conv", [x, b.const("w", (3, 2, 3, 3))], CONV, name="conv", out="c")
    unchanged(FUSE_RESIDUAL, b.graph(b.op("Add", [c, r], name="add", out="y"), c))


def test_not_conv_plus_itself():
    b = Builder()
    x = b.input("x", ("N", 2, 5, 4))
    c = b.op("Conv", [x, b.const("w", (3, 2, 3, 3))], CONV, name="conv")
    unchanged(FUSE_RESIDUAL, b.graph(b.op("Add", [c, c], name="add", out="y")))


@pytest.mark.parametrize("epilogue", [
    {"activation": "Relu", "activation_params": []},       # Add(Relu(conv), r) != Relu(conv + r)
    {**PLAIN, "pool_kernel": [2, 2], "pool_strides": [2, 2]},
], ids=["activation", "pool"])
def test_not_after_an_activation_or_pool(epilogue):
    b = Builder()
    x = b.input("x", ("N", 2, 6, 6))
    c = b.fused("FusedConv", [x, b.const("w", (3, 2, 3, 3))], {**CONV, **epilogue}, name="conv")
    r = b.input("r", c.type.shape)
    unchanged(FUSE_RESIDUAL, b.graph(b.op("Add", [c, r], name="add", out="y")))


def test_not_a_second_residual():
    b = Builder()
    x, r1, r2 = b.input("x", ("N", 2, 5, 4)), b.input("r1", ("N", 3, 5, 4)), b.input("r2", ("N", 3, 5, 4))
    c = b.fused("FusedConv", [x, b.const("w", (3, 2, 3, 3)), None, r1], {**CONV, **PLAIN}, name="conv")
    unchanged(FUSE_RESIDUAL, b.graph(b.op("Add", [c, r2], name="add", out="y")))


def test_not_when_the_residual_grows_the_output():
    b = Builder()
    x = b.input("x", ("N", 2, 5, 4))
    c = b.op("Conv", [x, b.const("w", (3, 2, 5, 4))], name="conv")    # [N, 3, 1, 1]
    r = b.input("r", ("N", 3, 5, 4))
    unchanged(FUSE_RESIDUAL, b.graph(b.op("Add", [c, r], name="add", out="y")))
