"""fold-channel-affine: per-output-channel constant Mul/Add after Conv / Gemm folds into weights and bias."""

import numpy as np
import pytest

from fusion_testing import Builder, assert_equivalent, ops, rewritten, unchanged
from lepton_compiler.passes.fold_channel_affine import FOLD_CHANNEL_AFFINE

CONV = {"pads": [1, 1, 1, 1]}
CONV_SHAPES = [(3, 1, 1), (1, 3, 1, 1), (), (1,), (1, 1, 1)]


def conv_then(op, const_shape, conv_first=True, bias=True):
    b = Builder()
    x = b.input("x", ("N", 2, 5, 4))
    inputs = [x, b.const("w", (3, 2, 3, 3))] + ([b.const("b", (3,))] if bias else [])
    c = b.op("Conv", inputs, CONV, name="conv")
    s = b.const("s", const_shape, low=0.5)
    y = b.op(op, [c, s] if conv_first else [s, c], name="affine", out="y")
    return b.graph(y)


@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
@pytest.mark.parametrize("op", ["Mul", "Add", "Sub", "Div"])
def test_conv_affine_folds(op, shape):
    before = conv_then(op, shape)
    after = rewritten(FOLD_CHANNEL_AFFINE, before)
    assert ops(after) == ["Conv"]
    assert after.outputs[0].producer is after.nodes[0]
    assert_equivalent(before, after)


@pytest.mark.parametrize("op", ["Mul", "Add"])
def test_constant_first_operand(op):
    before = conv_then(op, (3, 1, 1), conv_first=False)
    after = rewritten(FOLD_CHANNEL_AFFINE, before)
    assert ops(after) == ["Conv"]
    assert_equivalent(before, after)


def test_mul_golden_ir_and_values():
    before = conv_then("Mul", (3, 1, 1), bias=False)
    after = rewritten(FOLD_CHANNEL_AFFINE, before)
    assert str(after) == """graph g (opset 17) {
  input  %x: float32[N, 2, 5, 4]
  const  %w_folded: float32[3, 2, 3, 3]
  %y: float32[N, 3, 5, 4] = Conv[pads=[1, 1, 1, 1]](%x, %w_folded)  # conv
  output %y: float32[N, 3, 5, 4]
}"""
    consts = {v.name: v.const for v in before.constants}
    np.testing.assert_allclose(after.constants[0].const, consts["w"] * consts["s"].reshape(3, 1, 1, 1), rtol=1e-6)
    assert_equivalent(before, after)


def test_add_golden_ir_only_touches_the_bias():
    before = conv_then("Add", (1, 3, 1, 1))
    after = rewritten(FOLD_CHANNEL_AFFINE, before)
    assert str(after) == """graph g (opset 17) {
  input  %x: float32[N, 2, 5, 4]
  const  %w: float32[3, 2, 3, 3]
  const  %b_folded: float32[3]
  %y: float32[N, 3, 5, 4] = Conv[pads=[1, 1, 1, 1]](%x, %w, %b_folded)  # conv
  output %y: float32[N, 3, 5, 4]
}"""
    assert_equivalent(before, after)


def test_mul_then_add_both_fold():
    b = Builder()
    x = b.input("x", ("N", 2, 5, 4))
    c = b.op("Conv", [x, b.const("w", (3, 2, 3, 3))], CONV, name="conv")
    m = b.op("Mul", [c, b.const("s", (3, 1, 1))], name="mul")
    y = b.op("Add", [b.const("t", (1, 3, 1, 1)), m], name="add", out="y")
    before = b.graph(y)
    after = rewritten(FOLD_CHANNEL_AFFINE, before)
    assert ops(after) == ["Conv"]
    assert_equivalent(before, after)


GEMM_SHAPES = [(4,), (1, 4), (), (1,)]


@pytest.mark.parametrize("shape", GEMM_SHAPES, ids=str)
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("op", ["Mul", "Add"])
@pytest.mark.parametrize("with_c", [True, False])
def test_gemm_affine_folds(op, trans_b, shape, with_c):
    b = Builder()
    a = b.input("a", ("N", 6))
    inputs = [a, b.const("w", (4, 6) if trans_b else (6, 4))] + ([b.const("c", (4,))] if with_c else [])
    g = b.op("Gemm", inputs, {"transB": trans_b, "alpha": 1.5, "beta": 0.5}, name="gemm")
    y = b.op(op, [g, b.const("s", shape, low=0.5)], name="affine", out="y")
    before = b.graph(y)
    after = rewritten(FOLD_CHANNEL_AFFINE, before)
    assert ops(after) == ["Gemm"]
    assert_equivalent(before, after)


def test_fused_conv_with_residual_takes_a_shift():
    b = Builder()
    x, r = b.input("x", ("N", 2, 5, 4)), b.input("r", ("N", 3, 5, 4))
    c = b.fused("FusedConv", [x, b.const("w", (3, 2, 3, 3)), None, r],
                {**CONV, "activation": "", "activation_params": []}, name="conv")
    y = b.op("Add", [c, b.const("t", (3, 1, 1))], name="add", out="y")
    before = b.graph(y)
    after = rewritten(FOLD_CHANNEL_AFFINE, before)
    assert ops(after) == ["FusedConv"] and after.nodes[0].inputs[3].name == "r"
    assert_equivalent(before, after)


def test_shift_folds_even_with_shared_weights():
    # a bias change does not touch the weights the other conv reads
    b = Builder()
    x = b.input("x", ("N", 3, 5, 4))
    w = b.const("w", (3, 3, 3, 3))
    c1 = b.op("Conv", [x, w], CONV, name="conv1")
    a = b.op("Add", [c1, b.const("t", (3, 1, 1))], name="add")
    y = b.op("Conv", [a, w], CONV, name="conv2", out="y")
    before = b.graph(y)
    after = rewritten(FOLD_CHANNEL_AFFINE, before)
    assert ops(after) == ["Conv", "Conv"]
    assert after.nodes[0].inputs[1] is after.nodes[1].inputs[1]
    assert_equivalent(before, after)


# -- where it must not fire -----------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3,), (1, 1, 1, 3), (1, 3, 5, 3), (2, 3, 1, 1)], ids=str)
def test_not_for_constants_that_are_not_per_channel(shape):
    # [3] (= C, but the last axis) and [1, 1, 1, 3] broadcast along the width, [1, 3, 5, 3]
    # varies per pixel, [2, 3, 1, 1] per image
    b = Builder()
    x = b.input("x", (2, 3, 5, 3))
    c = b.op("Conv", [x, b.const("w", (3, 3, 3, 3))], CONV, name="conv")
    unchanged(FOLD_CHANNEL_AFFINE, b.graph(b.op("Mul", [c, b.const("s", shape)], name="mul", out="y")))


def test_not_for_gemm_constants_along_rows():
    b = Builder()
    a = b.input("a", (5, 6))
    g = b.op("Gemm", [a, b.const("w", (6, 4))], name="gemm")
    unchanged(FOLD_CHANNEL_AFFINE, b.graph(b.op("Mul", [g, b.const("s", (5, 1))], name="mul", out="y")))


def test_not_when_the_operand_is_not_constant():
    b = Builder()
    x, s = b.input("x", ("N", 2, 5, 4)), b.input("s", (3, 1, 1))
    c = b.op("Conv", [x, b.const("w", (3, 2, 3, 3))], CONV, name="conv")
    unchanged(FOLD_CHANNEL_AFFINE, b.graph(b.op("Mul", [c, s], name="mul", out="y")))


def test_not_when_conv_output_is_read_twice():
    b = Builder()
    x = b.input("x", ("N", 2, 5, 4))
    c = b.op("Conv", [x, b.const("w", (3, 2, 3, 3))], CONV, name="conv")
    y = b.op("Mul", [c, b.const("s", (3, 1, 1))], name="mul", out="y")
    z = b.op("Relu", [c], name="relu", out="z")
    unchanged(FOLD_CHANNEL_AFFINE, b.graph(y, z))


def test_not_when_scaled_weights_are_shared():
    # scaling conv1's weights would scale conv2's too (or duplicate them)
    b = Builder()
    x = b.input("x", ("N", 3, 5, 4))
    w = b.const("w", (3, 3, 3, 3))
    c1 = b.op("Conv", [x, w], CONV, name="conv1")
    m = b.op("Mul", [c1, b.const("s", (3, 1, 1))], name="mul")
    unchanged(FOLD_CHANNEL_AFFINE, b.graph(b.op("Conv", [m, w], CONV, name="conv2", out="y")))


def test_not_a_scale_through_a_residual_or_activation():
    b = Builder()
    x, r = b.input("x", ("N", 2, 5, 4)), b.input("r", ("N", 3, 5, 4))
    res = b.fused("FusedConv", [x, b.const("w1", (3, 2, 3, 3)), None, r],
                  {**CONV, "activation": "", "activation_params": []}, name="c1")
    act = b.fused("FusedConv", [x, b.const("w2", (3, 2, 3, 3))],
                  {**CONV, "activation": "Relu", "activation_params": []}, name="c2")
    y1 = b.op("Mul", [res, b.const("s1", (3, 1, 1))], name="m1", out="y1")
    y2 = b.op("Add", [act, b.const("t2", (3, 1, 1))], name="a2", out="y2")
    unchanged(FOLD_CHANNEL_AFFINE, b.graph(y1, y2))


def test_not_a_division_by_zero():
    b = Builder()
    x = b.input("x", ("N", 2, 5, 4))
    c = b.op("Conv", [x, b.const("w", (3, 2, 3, 3))], CONV, name="conv")
    zero = b.const("d", np.array([1.0, 0.0, 2.0], np.float32).reshape(3, 1, 1))
    unchanged(FOLD_CHANNEL_AFFINE, b.graph(b.op("Div", [c, zero], name="div", out="y")))


def test_not_when_the_conv_is_subtracted():
    # t - conv would negate the weights: not handled
    b = Builder()
    x = b.input("x", ("N", 2, 5, 4))
    c = b.op("Conv", [x, b.const("w", (3, 2, 3, 3))], CONV, name="conv")
    unchanged(FOLD_CHANNEL_AFFINE, b.graph(b.op("Sub", [b.const("t", (3, 1, 1)), c], name="sub", out="y")))
