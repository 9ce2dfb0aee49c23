"""matmul-add-to-gemm: Add(MatMul(x, W), b) -> Gemm(x, W, b); MatMul(x, W) -> Gemm(x, W)."""

import pytest

from fusion_testing import Builder, assert_compiles_equivalent, assert_equivalent, ops, rewritten, unchanged
from lepton_compiler.passes.matmul_add_to_gemm import MATMUL_ADD_TO_GEMM


def dense(bias_shape=(4,), matmul_first=True):
    b = Builder()
    x = b.input("x", ("N", 6))
    m = b.op("MatMul", [x, b.const("w", (6, 4))], name="matmul")
    bias = b.const("b", bias_shape)
    y = b.op("Add", [m, bias] if matmul_first else [bias, m], name="add", out="y")
    return b.graph(y)


def test_golden_ir():
    before = dense()
    after = rewritten(MATMUL_ADD_TO_GEMM, before)
    assert str(after) == """graph g (opset 17) {
  input  %x: float32[N, 6]
  const  %w: float32[6, 4]
  const  %b: float32[4]
  %y: float32[N, 4] = Gemm(%x, %w, %b)  # matmul
  output %y: float32[N, 4]
}"""
    assert_equivalent(before, after)
    assert_compiles_equivalent(before, after)


@pytest.mark.parametrize("shape", [(4,), (1, 4), (), (1,), (1, 1)], ids=str)
@pytest.mark.parametrize("matmul_first", [True, False])
def test_bias_shapes_and_operand_orders(shape, matmul_first):
    before = dense(shape, matmul_first)
    after = rewritten(MATMUL_ADD_TO_GEMM, before)
    assert ops(after) == ["Gemm"]
    assert [v.name for v in after.nodes[0].inputs] == ["x", "w", "b"]
    assert_equivalent(before, after)


def test_matmul_alone():
    b = Builder()
    x = b.input("x", ("N", 6))
    m = b.op("MatMul", [x, b.const("w", (6, 4))], name="matmul")
    y = b.op("Relu", [m], name="relu", out="y")
    before = b.graph(y)
    after = rewritten(MATMUL_ADD_TO_GEMM, before)
    assert ops(after) == ["Gemm", "Relu"]
    assert len(after.nodes[0].inputs) == 2 and after.nodes[0].attrs == {}
    assert_equivalent(before, after)


def test_bias_computed_after_the_matmul():
    # the Gemm takes the Add's place, where the bias is defined
    b = Builder()
    x, z = b.input("x", ("N", 6)), b.input("z", (4,))
    m = b.op("MatMul", [x, b.const("w", (6, 4))], name="matmul")
    bias = b.op("Relu", [z], name="relu")
    y = b.op("Add", [bias, m], name="add", out="y")
    before = b.graph(y)
    after = rewritten(MATMUL_ADD_TO_GEMM, before)   # verify() checks the order
    assert ops(after) == ["Relu", "Gemm"]
    assert_equivalent(before, after)


def test_matmul_read_twice_becomes_gemm_without_the_add():
    b = Builder()
    x = b.input("x", ("N", 6))
    m = b.op("MatMul", [x, b.const("w", (6, 4))], name="matmul", out="m")
    y = b.op("Add", [m, b.const("b", (4,))], name="add", out="y")
    before = b.graph(y, m)
    after = rewritten(MATMUL_ADD_TO_GEMM, before)
    assert ops(after) == ["Gemm", "Add"]
    assert_equivalent(before, after)


def test_bias_along_rows_is_not_fused_but_the_matmul_is():
    b = Builder()
    x = b.input("x", (3, 6))
    m = b.op("MatMul", [x, b.const("w", (6, 4))], name="matmul")
    y = b.op("Add", [m, b.const("b", (3, 1))], name="add", out="y")
    before = b.graph(y)
    after = rewritten(MATMUL_ADD_TO_GEMM, before)
    assert ops(after) == ["Gemm", "Add"]
    assert_equivalent(before, after)


def test_bias_that_grows_the_output_is_not_fused():
    b = Builder()
    x = b.input("x", (1, 6))
    m = b.op("MatMul", [x, b.const("w", (6, 4))], name="matmul")
    y = b.op("Add", [m, b.const("b", (3, 4))], name="add", out="y")   # [1, 4] + [3, 4] -> [3, 4]
    before = b.graph(y)
    after = rewritten(MATMUL_ADD_TO_GEMM, before)
    assert ops(after) == ["Gemm", "Add"]
    assert_equivalent(before, after)


# -- where it must not fire -----------------------------------------------------------------------
def test_not_for_batched_matmul():
    # Gemm is 2-D only
    b = Builder()
    x = b.input("x", ("N", 5, 6))
    m = b.op("MatMul", [x, b.const("w", (6, 4))], name="matmul")
    unchanged(MATMUL_ADD_TO_GEMM, b.graph(b.op("Add", [m, b.const("b", (4,))], name="add", out="y")))


def test_not_for_weights_computed_at_run_time():
    b = Builder()
    x, w = b.input("x", ("N", 6)), b.input("w", (6, 4))
    m = b.op("MatMul", [x, w], name="matmul")
    unchanged(MATMUL_ADD_TO_GEMM, b.graph(b.op("Add", [m, b.const("b", (4,))], name="add", out="y")))


def test_not_for_a_vector_times_a_matrix():
    b = Builder()
    x = b.input("x", (6,))
    unchanged(MATMUL_ADD_TO_GEMM, b.graph(b.op("MatMul", [x, b.const("w", (6, 4))], name="matmul", out="y")))
