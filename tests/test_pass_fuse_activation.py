"""fuse-activation: Act(Conv) -> FusedConv[activation]; Act(Gemm) -> FusedGemm[activation]."""

import numpy as np
import pytest

from fusion_testing import Builder, assert_compiles_equivalent, assert_equivalent, ops, rewritten, unchanged
from lepton_compiler.passes.fuse_activation import FUSE_ACTIVATION

CONV = {"pads": [1, 1, 1, 1]}
PLAIN = {"activation": "", "activation_params": []}

# op, attrs, extra inputs (Clip's bounds) as arrays, expected activation_params
ACTS = [
    ("Relu", {}, [], []),
    ("LeakyRelu", {"alpha": 0.2}, [], [0.2]),
    ("LeakyRelu", {}, [], [0.01]),
    ("Clip", {}, [np.float32(-0.5), np.float32(0.75)], [-0.5, 0.75]),
    ("Clip", {}, [np.float32(0.0)], [0.0, np.inf]),
    ("Sigmoid", {}, [], []),
    ("Tanh", {}, [], []),
    ("HardSwish", {}, [], []),
]
IDS = ["relu", "leaky", "leaky-default", "clip", "clip-min-only", "sigmoid", "tanh", "hardswish"]


def activate(b: Builder, op, attrs, bounds, value):
    extra = [b.const(f"bound{i}", np.array(v, np.float32)) for i, v in enumerate(bounds)]
    return b.op(op, [value, *extra], attrs, name="act", out="y")


@pytest.mark.parametrize("op,attrs,bounds,params", ACTS, ids=IDS)
def test_conv_activation(op, attrs, bounds, params):
    b = Builder()
    x = b.input("x", ("N", 2, 5, 4))
    c = b.op("Conv", [x, b.const("w", (3, 2, 3, 3)), b.const("b", (3,))], CONV, name="conv")
    before = b.graph(activate(b, op, attrs, bounds, c))
    after = rewritten(FUSE_ACTIVATION, before)
    assert ops(after) == ["FusedConv"]
    node = after.nodes[0]
    assert node.domain == "lepton" and node.name == "conv"
    assert node.attrs == {**CONV, "activation": op, "activation_params": params}
    assert [v.name for v in after.constants] == ["w", "b"]   # Clip's bounds are gone
    assert_equivalent(before, after)
    assert_compiles_equivalent(before, after)


@pytest.mark.parametrize("op,attrs,bounds,params", ACTS, ids=IDS)
def test_gemm_activation(op, attrs, bounds, params):
    b = Builder()
    a = b.input("a", ("N", 6))
    g = b.op("Gemm", [a, b.const("w", (4, 6)), b.const("c", (4,))], {"transB": 1}, name="gemm")
    before = b.graph(activate(b, op, attrs, bounds, g))
    after = rewritten(FUSE_ACTIVATION, before)
    assert ops(after) == ["FusedGemm"]
    assert after.nodes[0].attrs == {"transB": 1, "activation": op, "activation_params": params, "softmax": 0}
    assert_equivalent(before, after)
    assert_compiles_equivalent(before, after)


def test_golden_ir():
    b = Builder()
    x = b.input("x", ("N", 2, 5, 4))
    c = b.op("Conv", [x, b.const("w", (3, 2, 3, 3))], CONV, name="conv")
    before = b.graph(b.op("Relu", [c], name="relu", out="y"))
    after = rewritten(FUSE_ACTIVATION, before)
    assert str(after) == """graph g (opset 17) {
  input  %x: float32[N, 2, 5, 4]
  const  %w: float32[3, 2, 3, 3]
  %y: float32[N, 3, 5, 4] = lepton.FusedConv[activation='Relu', activation_params=[], pads=[1, 1, 1, 1]](%x, %w)  # conv
  output %y: float32[N, 3, 5, 4]
}"""
    assert_compiles_equivalent(before, after)


def test_residual_conv_then_activation():
    # Relu(Add(Conv, r)) after fuse-residual: the residual is added before the activation
    b = Builder()
    x, r = b.input("x", ("N", 2, 5, 4)), b.input("r", ("N", 3, 5, 4))
    c = b.fused("FusedConv", [x, b.const("w", (3, 2, 3, 3)), None, r], {**CONV, **PLAIN}, name="conv")
    before = b.graph(b.op("LeakyRelu", [c], {"alpha": 0.3}, name="act", out="y"))
    after = rewritten(FUSE_ACTIVATION, before)
    assert ops(after) == ["FusedConv"] and after.nodes[0].inputs[3].name == "r"
    assert after.nodes[0].attr("activation") == "LeakyRelu"
    assert_equivalent(before, after)
    assert_compiles_equivalent(before, after)


def test_only_the_first_of_two_activations():
    b = Builder()
    a = b.input("a", ("N", 6))
    g = b.op("Gemm", [a, b.const("w", (6, 4))], name="gemm")
    t = b.op("Tanh", [g], name="tanh")
    before = b.graph(b.op("Relu", [t], name="relu", out="y"))
    after = rewritten(FUSE_ACTIVATION, before)
    assert ops(after) == ["FusedGemm", "Relu"] and after.nodes[0].attr("activation") == "Tanh"
    assert_equivalent(before, after)


# -- where it must not fire -----------------------------------------------------------------------
def test_not_when_conv_output_is_read_twice():
    b = Builder()
    x = b.input("x", ("N", 2, 5, 4))
    c = b.op("Conv", [x, b.const("w", (3, 2, 3, 3))], CONV, name="conv")
    y = b.op("Relu", [c], name="relu", out="y")
    z = b.op("Sigmoid", [c], name="sig", out="z")
    unchanged(FUSE_ACTIVATION, b.graph(y, z))


def test_not_when_the_activation_input_is_a_graph_output_read_elsewhere():
    # the conv output must survive as a graph output, unactivated
    b = Builder()
    a = b.input("a", ("N", 6))
    g = b.op("Gemm", [a, b.const("w", (6, 4))], name="gemm", out="g")
    unchanged(FUSE_ACTIVATION, b.graph(b.op("Relu", [g], name="relu", out="y"), g))


def test_not_with_clip_bounds_known_only_at_run_time():
    b = Builder()
    x, low = b.input("x", ("N", 2, 5, 4)), b.input("low", ())
    c = b.op("Conv", [x, b.const("w", (3, 2, 3, 3))], CONV, name="conv")
    unchanged(FUSE_ACTIVATION, b.graph(b.op("Clip", [c, low], name="clip", out="y")))


@pytest.mark.parametrize("epilogue", [
    {"activation": "Relu", "activation_params": []},
    {**PLAIN, "pool_kernel": [2, 2], "pool_strides": [2, 2]},     # Act(MaxPool(conv)) stays as is
], ids=["has-activation", "has-pool"])
def test_not_into_a_conv_with_activation_or_pool(epilogue):
    b = Builder()
    x = b.input("x", ("N", 2, 6, 6))
    c = b.fused("FusedConv", [x, b.const("w", (3, 2, 3, 3))], {**CONV, **epilogue}, name="conv")
    unchanged(FUSE_ACTIVATION, b.graph(b.op("Tanh", [c], name="tanh", out="y")))


@pytest.mark.parametrize("attrs", [{"activation": "Relu", "activation_params": [], "softmax": 0},
                                   {**PLAIN, "softmax": 1}], ids=["has-activation", "has-softmax"])
def test_not_into_a_gemm_with_activation_or_softmax(attrs):
    b = Builder()
    a = b.input("a", ("N", 6))
    g = b.fused("FusedGemm", [a, b.const("w", (6, 4))], attrs, name="gemm")
    unchanged(FUSE_ACTIVATION, b.graph(b.op("Sigmoid", [g], name="sig", out="y")))


def test_not_after_other_ops():
    b = Builder()
    x = b.input("x", ("N", 6))
    m = b.op("MatMul", [x, b.const("w", (6, 4))], name="matmul")
    unchanged(FUSE_ACTIVATION, b.graph(b.op("Relu", [m], name="relu", out="y")))
