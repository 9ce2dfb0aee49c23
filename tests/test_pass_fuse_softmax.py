"""fuse-softmax: Softmax(axis=last)(Gemm) ending the graph -> FusedGemm[softmax=1]."""

import pytest

from fusion_testing import Builder, assert_compiles_equivalent, assert_equivalent, ops, rewritten, unchanged
from lepton_compiler.passes.fuse_activation import FUSE_ACTIVATION
from lepton_compiler.passes.fuse_softmax import FUSE_SOFTMAX


def gemm_softmax(axis=-1, act=None):
    b = Builder()
    a = b.input("a", ("N", 6))
    g = b.op("Gemm", [a, b.const("w", (5, 6)), b.const("c", (5,))], {"transB": 1}, name="gemm")
    if act:
        g = b.op(act, [g], name="act")
    return b.graph(b.op("Softmax", [g], {"axis": axis}, name="softmax", out="probs"))


def test_golden_ir():
    before = gemm_softmax()
    after = rewritten(FUSE_SOFTMAX, before)
    assert str(after) == """graph g (opset 17) {
  input  %a: float32[N, 6]
  const  %w: float32[5, 6]
  const  %c: float32[5]
  %probs: float32[N, 5] = lepton.FusedGemm[activation='', activation_params=[], softmax=1, transB=1](%a, %w, %c)  # gemm
  output %probs: float32[N, 5]
}"""
    assert_equivalent(before, after)
    assert_compiles_equivalent(before, after)


def test_axis_one_is_the_last_axis():
    before = gemm_softmax(axis=1)
    after = rewritten(FUSE_SOFTMAX, before)
    assert ops(after) == ["FusedGemm"]
    assert_equivalent(before, after)


def test_after_fused_activation():
    before = gemm_softmax(act="Tanh")
    after = rewritten(FUSE_SOFTMAX, rewritten(FUSE_ACTIVATION, before))
    assert ops(after) == ["FusedGemm"]
    assert after.nodes[0].attr("activation") == "Tanh" and after.nodes[0].attr("softmax") == 1
    assert_equivalent(before, after)
    assert_compiles_equivalent(before, after)


# -- where it must not fire -----------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, -2])
def test_not_along_the_batch_axis(axis):
    unchanged(FUSE_SOFTMAX, gemm_softmax(axis=axis))


def test_not_when_the_softmax_does_not_end_the_graph():
    b = Builder()
    a = b.input("a", ("N", 6))
    g = b.op("Gemm", [a, b.const("w", (6, 5))], name="gemm")
    s = b.op("Softmax", [g], {"axis": -1}, name="softmax")
    unchanged(FUSE_SOFTMAX, b.graph(b.op("Relu", [s], name="relu", out="y")))


def test_not_when_the_gemm_output_is_read_twice():
    b = Builder()
    a = b.input("a", ("N", 6))
    g = b.op("Gemm", [a, b.const("w", (6, 5))], name="gemm", out="logits")
    unchanged(FUSE_SOFTMAX, b.graph(b.op("Softmax", [g], name="softmax", out="probs"), g))


def test_not_a_second_softmax():
    b = Builder()
    a = b.input("a", ("N", 6))
    g = b.fused("FusedGemm", [a, b.const("w", (6, 5))],
                {"activation": "", "activation_params": [], "softmax": 1}, name="gemm")
    unchanged(FUSE_SOFTMAX, b.graph(b.op("Softmax", [g], name="softmax", out="probs")))


def test_not_after_a_matmul():
    b = Builder()
    a = b.input("a", ("N", 6))
    m = b.op("MatMul", [a, b.const("w", (6, 5))], name="matmul")
    unchanged(FUSE_SOFTMAX, b.graph(b.op("Softmax", [m], name="softmax", out="probs")))
