"""fuse-pool: MaxPool(Conv | FusedConv without pool) -> FusedConv[pool_*]."""

import pytest

from fusion_testing import Builder, assert_compiles_equivalent, assert_equivalent, ops, rewritten, unchanged
from lepton_compiler.passes.fuse_activation import FUSE_ACTIVATION
from lepton_compiler.passes.fuse_pool import FUSE_POOL

CONV = {"pads": [1, 1, 1, 1]}
PLAIN = {"activation": "", "activation_params": []}


def conv_pool(pool_attrs, spatial=(9, 8), relu=False, conv_attrs=None):
    b = Builder()
    nd = len(spatial)
    x = b.input("x", ("N", 2, *spatial))
    w = b.const("w", (3, 2, *([3] * nd)))
    c = b.op("Conv", [x, w, b.const("b", (3,))], conv_attrs or {"pads": [1] * 2 * nd}, name="conv")
    if relu:
        c = b.op("Relu", [c], name="relu")
    return b.graph(b.op("MaxPool", [c], pool_attrs, name="pool", out="y"))


def test_relu_then_pool_golden_ir():
    before = conv_pool({"kernel_shape": [2, 2], "strides": [2, 2]}, relu=True)
    after = rewritten(FUSE_POOL, rewritten(FUSE_ACTIVATION, before))
    assert str(after) == """graph g (opset 17) {
  input  %x: float32[N, 2, 9, 8]
  const  %w: float32[3, 2, 3, 3]
  const  %b: float32[3]
  %y: float32[N, 3, 4, 4] = lepton.FusedConv[activation='Relu', activation_params=[], pads=[1, 1, 1, 1], \
pool_ceil_mode=0, pool_dilations=[1, 1], pool_kernel=[2, 2], pool_pads=[0, 0, 0, 0], pool_strides=[2, 2]](%x, %w, %b)  # conv
  output %y: float32[N, 3, 4, 4]
}"""
    assert_equivalent(before, after)
    assert_compiles_equivalent(before, after)


POOLS = [
    ("2x2", {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("3x3-s2-pads-ceil", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    ("2x3-dilated", {"kernel_shape": [2, 3], "dilations": [2, 1], "pads": [0, 1, 1, 0]}),
    ("stride-default", {"kernel_shape": [3, 2]}),
]


@pytest.mark.parametrize("name,attrs", POOLS, ids=[p[0] for p in POOLS])
def test_pool_attributes_are_copied(name, attrs):
    before = conv_pool(attrs)
    after = rewritten(FUSE_POOL, before)
    assert ops(after) == ["FusedConv"]
    node = after.nodes[0]
    assert node.attr("pool_kernel") == attrs["kernel_shape"]
    assert node.attr("pool_strides") == attrs.get("strides", [1, 1])
    assert node.attr("pool_pads") == attrs.get("pads", [0, 0, 0, 0])
    assert node.attr("pool_dilations") == attrs.get("dilations", [1, 1])
    assert node.attr("pool_ceil_mode") == attrs.get("ceil_mode", 0)
    assert_equivalent(before, after)
    assert_compiles_equivalent(before, after)


@pytest.mark.parametrize("auto_pad,pads", [("SAME_UPPER", [0, 0, 1, 1]), ("SAME_LOWER", [1, 1, 0, 0]),
                                           ("VALID", [0, 0, 0, 0])])
def test_auto_pad_becomes_explicit_pads(auto_pad, pads):
    before = conv_pool({"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": auto_pad}, spatial=(9, 7))
    after = rewritten(FUSE_POOL, before)
    assert ops(after) == ["FusedConv"] and "auto_pad" not in after.nodes[0].attrs
    assert after.nodes[0].attr("pool_pads") == pads
    assert_equivalent(before, after)
    assert_compiles_equivalent(before, after)


def test_one_dimensional():
    before = conv_pool({"kernel_shape": [3], "strides": [2], "pads": [1, 0]}, spatial=(10,), relu=True)
    after = rewritten(FUSE_POOL, rewritten(FUSE_ACTIVATION, before))
    assert ops(after) == ["FusedConv"] and after.nodes[0].attr("pool_kernel") == [3]
    assert_equivalent(before, after)
    assert_compiles_equivalent(before, after)


def test_residual_and_activation_come_before_the_pool():
    b = Builder()
    x, r = b.input("x", ("N", 2, 6, 6)), b.input("r", ("N", 3, 6, 6))
    c = b.fused("FusedConv", [x, b.const("w", (3, 2, 3, 3)), None, r],
                {**CONV, "activation": "Tanh", "activation_params": []}, name="conv")
    before = b.graph(b.op("MaxPool", [c], {"kernel_shape": [2, 2], "strides": [2, 2]}, name="pool", out="y"))
    after = rewritten(FUSE_POOL, before)
    assert ops(after) == ["FusedConv"] and after.nodes[0].attr("activation") == "Tanh"
    assert_equivalent(before, after)
    assert_compiles_equivalent(before, after)


# -- where it must not fire -----------------------------------------------------------------------
def test_not_when_conv_output_is_read_twice():
    b = Builder()
    x = b.input("x", ("N", 2, 6, 6))
    c = b.op("Conv", [x, b.const("w", (3, 2, 3, 3))], CONV, name="conv")
    y = b.op("MaxPool", [c], {"kernel_shape": [2, 2]}, name="pool", out="y")
    z = b.op("Relu", [c], name="relu", out="z")
    unchanged(FUSE_POOL, b.graph(y, z))


def test_not_when_conv_output_is_a_graph_output():
    b = Builder()
    x = b.input("x", ("N", 2, 6, 6))
    c = b.op("Conv", [x, b.const("w", (3, 2, 3, 3))], CONV, name="conv", out="c")
    unchanged(FUSE_POOL, b.graph(b.op("MaxPool", [c], {"kernel_shape": [2, 2]}, name="pool", out="y"), c))


def test_not_a_second_pool():
    b = Builder()
    x = b.input("x", ("N", 2, 8, 8))
    c = b.fused("FusedConv", [x, b.const("w", (3, 2, 3, 3))],
                {**CONV, **PLAIN, "pool_kernel": [2, 2], "pool_strides": [2, 2]}, name="conv")
    unchanged(FUSE_POOL, b.graph(b.op("MaxPool", [c], {"kernel_shape": [2, 2]}, name="pool", out="y")))


def test_not_three_dimensional():
    before = conv_pool({"kernel_shape": [2, 2, 2], "strides": [2, 2, 2]}, spatial=(4, 4, 4))
    unchanged(FUSE_POOL, before)


def test_not_through_another_op():
    b = Builder()
    x = b.input("x", ("N", 2, 6, 6))
    c = b.op("Conv", [x, b.const("w", (3, 2, 3, 3))], CONV, name="conv")
    s = b.op("Sigmoid", [b.op("Add", [c, c], name="add")], name="sig")
    unchanged(FUSE_POOL, b.graph(b.op("MaxPool", [s], {"kernel_shape": [2, 2]}, name="pool", out="y")))
