"""fold-batchnorm: BatchNormalization after Conv / Gemm folds into the weights and bias."""

import numpy as np
import pytest

from fusion_testing import Builder, assert_equivalent, ops, rewritten, unchanged
from lepton_compiler.passes.fold_batchnorm import FOLD_BATCHNORM

CONV = {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]}


def bn_inputs(b: Builder, channels: int, prefix: str = "bn"):
    return [b.const(f"{prefix}_scale", (channels,)), b.const(f"{prefix}_B", (channels,)),
            b.const(f"{prefix}_mean", (channels,)), b.const(f"{prefix}_var", (channels,), low=0.5)]


def conv_bn(bias: bool = True, epsilon: float = 1e-5):
    b = Builder()
    x = b.input("x", ("N", 2, 5, 5))
    w = b.const("w", (3, 2, 3, 3))
    inputs = [x, w, b.const("b", (3,))] if bias else [x, w]
    c = b.op("Conv", inputs, CONV, name="conv")
    y = b.op("BatchNormalization", [c, *bn_inputs(b, 3)], {"epsilon": epsilon}, name="bn", out="y")
    return b.graph(y)


def test_conv_bn_becomes_one_conv_golden_ir():
    before = conv_bn()
    after = rewritten(FOLD_BATCHNORM, before)
    assert str(after) == """graph g (opset 17) {
  input  %x: float32[N, 2, 5, 5]
  const  %w_folded: float32[3, 2, 3, 3]
  const  %b_folded: float32[3]
  %y: float32[N, 3, 5, 5] = Conv[kernel_shape=[3, 3], pads=[1, 1, 1, 1]](%x, %w_folded, %b_folded)  # conv
  output %y: float32[N, 3, 5, 5]
}"""
    assert_equivalent(before, after)


def test_folded_constants_are_the_batchnorm_affine_map():
    before = conv_bn(epsilon=1e-3)
    c = {v.name: v.const.astype(np.float64) for v in before.constants}
    a = c["bn_scale"] / np.sqrt(c["bn_var"] + 1e-3)
    after = rewritten(FOLD_BATCHNORM, before)
    folded = {v.name: v.const for v in after.constants}
    np.testing.assert_allclose(folded["w_folded"], c["w"] * a[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(folded["b_folded"], (c["b"] - c["bn_mean"]) * a + c["bn_B"], rtol=1e-6, atol=1e-7)
    assert folded["w_folded"].dtype == np.float32 and not folded["w_folded"].flags.writeable
    assert_equivalent(before, after)


def test_conv_without_bias_gets_one():
    before = conv_bn(bias=False)
    after = rewritten(FOLD_BATCHNORM, before)
    assert ops(after) == ["Conv"]
    assert [v.name for v in after.nodes[0].inputs] == ["x", "w_folded", "conv_bias"]
    assert_equivalent(before, after)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_bn(trans_b):
    b = Builder()
    a = b.input("a", ("N", 6))
    w = b.const("w", (4, 6) if trans_b else (6, 4))
    g = b.op("Gemm", [a, w, b.const("c", (1, 4))], {"transB": trans_b, "alpha": 0.5, "beta": 2.0}, name="gemm")
    y = b.op("BatchNormalization", [g, *bn_inputs(b, 4)], name="bn", out="y")
    before = b.graph(y)
    after = rewritten(FOLD_BATCHNORM, before)
    assert ops(after) == ["Gemm"]
    assert after.nodes[0].attrs == {"transB": trans_b, "alpha": 0.5, "beta": 1.0}
    assert_equivalent(before, after)


@pytest.mark.parametrize("x_shape,w_shape,attrs", [
    (("N", 4, 6, 6), (4, 1, 3, 3), {"group": 4, "pads": [1, 1, 1, 1]}),       # depthwise
    (("N", 4, 6, 6), (6, 2, 3, 3), {"group": 2, "strides": [2, 2]}),
    (("N", 3, 9), (4, 3, 3), {"pads": [1, 1], "dilations": [2]}),              # 1-D
], ids=["depthwise", "grouped-strided", "1d"])
def test_conv_geometries(x_shape, w_shape, attrs):
    b = Builder()
    x = b.input("x", x_shape)
    c = b.op("Conv", [x, b.const("w", w_shape), b.const("b", w_shape[:1])], attrs, name="conv")
    y = b.op("BatchNormalization", [c, *bn_inputs(b, w_shape[0])], name="bn", out="y")
    before = b.graph(y)
    after = rewritten(FOLD_BATCHNORM, before)
    assert ops(after) == ["Conv"] and after.nodes[0].attrs == attrs
    assert_equivalent(before, after)


def test_fused_conv_without_activation_folds():
    b = Builder()
    x = b.input("x", ("N", 2, 5, 5))
    c = b.fused("FusedConv", [x, b.const("w", (3, 2, 3, 3)), None],
                {**CONV, "activation": "", "activation_params": []}, name="conv")
    y = b.op("BatchNormalization", [c, *bn_inputs(b, 3)], name="bn", out="y")
    before = b.graph(y)
    after = rewritten(FOLD_BATCHNORM, before)
    assert ops(after) == ["FusedConv"] and after.nodes[0].domain == "lepton"
    assert_equivalent(before, after)


def test_bn_chain_folds_into_the_conv_and_the_rest_stays():
    b = Builder()
    x = b.input("x", ("N", 2, 5, 5))
    c = b.op("Conv", [x, b.const("w", (3, 2, 3, 3)), b.const("b", (3,))], CONV, name="conv")
    n = b.op("BatchNormalization", [c, *bn_inputs(b, 3)], name="bn")
    y = b.op("Relu", [n], name="relu", out="y")
    before = b.graph(y)
    after = rewritten(FOLD_BATCHNORM, before)
    assert ops(after) == ["Conv", "Relu"]
    assert_equivalent(before, after)


# -- where it must not fire -----------------------------------------------------------------------
def test_not_when_conv_output_is_read_twice():
    b = Builder()
    x = b.input("x", ("N", 2, 5, 5))
    c = b.op("Conv", [x, b.const("w", (3, 2, 3, 3)), b.const("b", (3,))], CONV, name="conv")
    y = b.op("BatchNormalization", [c, *bn_inputs(b, 3)], name="bn", out="y")
    z = b.op("Relu", [c], name="relu", out="z")  # reads the unnormalized conv output
    unchanged(FOLD_BATCHNORM, b.graph(y, z))


def test_not_when_conv_output_is_a_graph_output():
    b = Builder()
    x = b.input("x", ("N", 2, 5, 5))
    c = b.op("Conv", [x, b.const("w", (3, 2, 3, 3))], CONV, name="conv", out="c")
    y = b.op("BatchNormalization", [c, *bn_inputs(b, 3)], name="bn", out="y")
    unchanged(FOLD_BATCHNORM, b.graph(y, c))


def test_not_when_statistics_are_not_constants():
    # (training-mode BN is rejected at import; statistics fed at run time are the analogue)
    b = Builder()
    x = b.input("x", ("N", 2, 5, 5))
    mean = b.input("mean", (3,))
    c = b.op("Conv", [x, b.const("w", (3, 2, 3, 3))], CONV, name="conv")
    scale, bias, _, var = bn_inputs(b, 3)
    y = b.op("BatchNormalization", [c, scale, bias, mean, var], name="bn", out="y")
    graph = unchanged(FOLD_BATCHNORM, b.graph(y))
    assert ops(graph) == ["Conv", "BatchNormalization"]


def test_not_when_weights_are_shared_by_two_convs():
    # folding would change the weights the other conv reads (or duplicate them)
    b = Builder()
    x = b.input("x", ("N", 3, 5, 5))
    w = b.const("w", (3, 3, 3, 3))
    c1 = b.op("Conv", [x, w], CONV, name="conv1")
    y = b.op("BatchNormalization", [c1, *bn_inputs(b, 3)], name="bn", out="y")
    z = b.op("Conv", [y, w], CONV, name="conv2", out="z")
    before = b.graph(z)
    unchanged(FOLD_BATCHNORM, before)


def test_not_when_weights_are_a_graph_input():
    b = Builder()
    x, w = b.input("x", ("N", 2, 5, 5)), b.input("w", (3, 2, 3, 3))
    c = b.op("Conv", [x, w], CONV, name="conv")
    unchanged(FOLD_BATCHNORM, b.graph(b.op("BatchNormalization", [c, *bn_inputs(b, 3)], name="bn", out="y")))


def test_not_after_an_activation_or_residual():
    b = Builder()
    x = b.input("x", ("N", 2, 5, 5))
    r = b.input("r", ("N", 3, 5, 5))
    w1, w2 = b.const("w1", (3, 2, 3, 3)), b.const("w2", (3, 2, 3, 3))
    act = b.fused("FusedConv", [x, w1], {**CONV, "activation": "Relu", "activation_params": []}, name="c1")
    res = b.fused("FusedConv", [x, w2, None, r], {**CONV, "activation": "", "activation_params": []}, name="c2")
    y1 = b.op("BatchNormalization", [act, *bn_inputs(b, 3, "bn1")], name="bn1", out="y1")
    y2 = b.op("BatchNormalization", [res, *bn_inputs(b, 3, "bn2")], name="bn2", out="y2")
    unchanged(FOLD_BATCHNORM, b.graph(y1, y2))
