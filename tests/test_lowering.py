"""Each op the LLVM backend lowers, compiled and compared with ONNX Runtime on random inputs.

Models have a dynamic batch dim "N" wherever the op allows one, and every compiled
model is run at batch 1 and batch 7 (one compile, several runs).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import lepton_compiler as lc
from conftest import assert_matches_ort, make_model, ort_run
from conftest import random_feeds as conftest_random_feeds

RTOL = ATOL = 1e-5
BATCHES = (1, 7)


def random_feeds(model: onnx.ModelProto, rng: np.random.Generator, batches=BATCHES, away_from_zero=()):
    """Standard-normal feeds (``conftest.random_feeds``); inputs named in ``away_from_zero`` get
    magnitudes in [0.5, 2] (safe divisors)."""
    def draw(rng, name, shape):
        if name in away_from_zero:
            return rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
        return rng.standard_normal(shape)
    return conftest_random_feeds(model, rng, batches, draw)


def check(model, rng, batches=BATCHES, away_from_zero=()):
    return assert_matches_ort(model, random_feeds(model, rng, batches, away_from_zero), RTOL, ATOL)


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# -- Conv --------------------------------------------------------------------------------------
CONV_CASES = {
    # name: (input shape, weight shape, attrs, bias)
    "3x3_odd_spatial": (["N", 3, 9, 11], [5, 3, 3, 3], {}, True),
    "no_bias_pads": (["N", 3, 8, 7], [4, 3, 3, 3], {"pads": [1, 1, 1, 1]}, False),
    "stride2_asym_pads": (["N", 3, 9, 10], [6, 3, 3, 3], {"strides": [2, 2], "pads": [1, 0, 2, 1]}, True),
    "same_upper_stride2_even_kernel": (["N", 2, 7, 10], [3, 2, 4, 4], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, True),
    "same_lower_stride2_even_kernel": (["N", 2, 7, 10], [3, 2, 4, 4], {"auto_pad": "SAME_LOWER", "strides": [2, 2]}, True),
    "same_upper_stride1": (["N", 3, 6, 5], [2, 3, 2, 3], {"auto_pad": "SAME_UPPER"}, False),
    "same_lower_stride1": (["N", 3, 6, 5], [2, 3, 2, 3], {"auto_pad": "SAME_LOWER"}, False),
    "valid_stride2": (["N", 3, 11, 9], [4, 3, 3, 3], {"auto_pad": "VALID", "strides": [2, 2]}, True),
    "dilation2_pads2": (["N", 3, 10, 9], [4, 3, 3, 3], {"dilations": [2, 2], "pads": [2, 2, 2, 2]}, True),
    "dilation_stride_mixed": (["N", 2, 13, 12], [3, 2, 3, 2], {"dilations": [2, 3], "strides": [2, 1],
                                                             "pads": [1, 2, 0, 1]}, True),
    "groups2": (["N", 6, 7, 7], [10, 3, 3, 3], {"group": 2, "pads": [1, 1, 1, 1]}, True),
    "groups3_no_bias": (["N", 9, 6, 5], [6, 3, 2, 2], {"group": 3, "strides": [2, 1]}, False),
    "depthwise": (["N", 5, 8, 9], [5, 1, 3, 3], {"group": 5, "pads": [1, 1, 1, 1]}, True),
    "depthwise_multiplier2_stride2": (["N", 5, 9, 8], [10, 1, 3, 3], {"group": 5, "strides": [2, 2],
                                                                     "pads": [1, 1, 1, 1]}, True),
    "channels_17_to_9_nonsquare": (["N", 17, 7, 8], [9, 17, 5, 1], {"strides": [1, 3], "pads": [2, 0, 2, 0]}, True),
    "pointwise_1x1_channels_33": (["N", 33, 5, 3], [19, 33, 1, 1], {}, True),
    "kernel_covers_padded_input": (["N", 2, 2, 3], [3, 2, 3, 3], {"pads": [1, 1, 1, 1]}, True),
    "kernel_shape_attr": (["N", 3, 6, 6], [2, 3, 3, 3], {"kernel_shape": [3, 3], "strides": [3, 3]}, True),
    "big_pads_stride3": (["N", 2, 5, 5], [2, 2, 2, 2], {"pads": [3, 2, 3, 4], "strides": [3, 2]}, True),
    "wide_row_37_stride1": (["N", 2, 3, 37], [3, 2, 1, 3], {"pads": [0, 1, 0, 1]}, True),
    "pointwise_stride3": (["N", 4, 8, 10], [3, 4, 1, 1], {"strides": [3, 3]}, False),
    "1d": (["N", 3, 13], [4, 3, 3], {}, True),
    "1d_stride2_pad_dilation": (["N", 3, 13], [5, 3, 3], {"strides": [2], "pads": [1, 2], "dilations": [2]}, True),
    "1d_same_upper_no_bias": (["N", 4, 10], [6, 4, 4], {"auto_pad": "SAME_UPPER", "strides": [3]}, False),
    "1d_same_lower_groups": (["N", 4, 9], [6, 2, 4], {"auto_pad": "SAME_LOWER", "group": 2}, True),
    "1d_depthwise_valid": (["N", 7, 11], [7, 1, 5], {"auto_pad": "VALID", "group": 7}, True),
}


@pytest.mark.parametrize("case", list(CONV_CASES), ids=list(CONV_CASES))
def test_conv(case, rng):
    x_shape, w_shape, attrs, with_bias = CONV_CASES[case]
    inits = {"W": f32(rng, *w_shape)}
    inputs = ["X", "W"]
    if with_bias:
        inits["B"] = f32(rng, w_shape[0])
        inputs.append("B")
    node = helper.make_node("Conv", inputs, ["Y"], name="conv", **attrs)
    model = make_model([node], [("X", x_shape)], [("Y", None)], inits, opset=13)
    check(model, rng)


def test_conv_static_batch_then_relu(rng):
    """A static batch (no symbol), and a conv feeding another kernel through the workspace."""
    nodes = [helper.make_node("Conv", ["X", "W", "B"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "W2"], ["Y"], group=2)]
    inits = {"W": f32(rng, 6, 3, 3, 3), "B": f32(rng, 6), "W2": f32(rng, 4, 3, 2, 2)}
    model = make_model(nodes, [("X", [2, 3, 9, 9])], [("Y", None)], inits, opset=13)
    check(model, rng, batches=(2,))


# -- MaxPool -----------------------------------------------------------------------------------
POOL_CASES = {
    "2x2_stride2_odd": (["N", 3, 7, 9], {"kernel_shape": [2, 2], "strides": [2, 2]}),
    "3x3_stride1_pads": (["N", 4, 6, 5], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    "asym_pads_stride2": (["N", 2, 8, 7], {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [0, 1, 2, 1]}),
    "ceil_mode": (["N", 3, 8, 8], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    "ceil_mode_odd_pads": (["N", 2, 7, 10], {"kernel_shape": [2, 3], "strides": [2, 3], "pads": [1, 1, 1, 1],
                                            "ceil_mode": 1}),
    "ceil_mode_window_in_end_pad": (["N", 2, 5, 5], {"kernel_shape": [2, 2], "strides": [2, 2],
                                                    "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    "dilations": (["N", 3, 9, 8], {"kernel_shape": [2, 2], "dilations": [2, 2]}),
    "dilations_stride_pads": (["N", 2, 11, 9], {"kernel_shape": [3, 2], "dilations": [2, 3], "strides": [2, 1],
                                               "pads": [2, 1, 1, 1]}),
    "same_upper": (["N", 3, 7, 6], {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    "same_lower": (["N", 3, 7, 6], {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    "valid": (["N", 5, 7, 7], {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "VALID"}),
    "channels_17": (["N", 17, 4, 6], {"kernel_shape": [2, 2], "strides": [2, 2]}),
    "1x1_subsample": (["N", 3, 7, 8], {"kernel_shape": [1, 1], "strides": [2, 3]}),
    "1d": (["N", 3, 12], {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}),
    "1d_ceil_dilation": (["N", 4, 11], {"kernel_shape": [2], "strides": [3], "dilations": [2], "ceil_mode": 1}),
}


@pytest.mark.parametrize("case", list(POOL_CASES), ids=list(POOL_CASES))
def test_maxpool(case, rng):
    x_shape, attrs = POOL_CASES[case]
    node = helper.make_node("MaxPool", ["X"], ["Y"], name="pool", **attrs)
    check(make_model([node], [("X", x_shape)], [("Y", None)], opset=13), rng)


def test_maxpool_all_negative_inputs_with_padding(rng):
    """Padding must act as -inf, not 0: every input is negative."""
    node = helper.make_node("MaxPool", ["X"], ["Y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    model = make_model([node], [("X", ["N", 2, 5, 6])], [("Y", None)], opset=13)
    feeds = [{"X": -np.abs(f32(rng, b, 2, 5, 6)) - 1.0} for b in BATCHES]
    assert_matches_ort(model, feeds, RTOL, ATOL)


# -- Gemm --------------------------------------------------------------------------------------
M, K, N_ = 5, 6, 7
GEMM_CASES = {
    # name: (attrs, C shape or None, B constant?, A has dynamic rows?)
    "plain_C_N": ({}, [N_], True, True),
    "transB_C_1xN_alpha_beta": ({"transB": 1, "alpha": 0.5, "beta": 2.0}, [1, N_], True, True),
    "transB_B_input": ({"transB": 1}, [N_], False, True),
    "transA_C_MxN": ({"transA": 1}, [M, N_], True, False),
    "transA_transB_C_MxN_B_input": ({"transA": 1, "transB": 1, "beta": 0.25}, [M, N_], False, False),
    "C_scalar": ({"beta": 0.3}, [], True, True),
    "C_Mx1": ({"alpha": -1.5}, [M, 1], True, False),
    "C_1x1": ({}, [1, 1], False, True),
    "no_C_alpha": ({"alpha": 2.0}, None, True, True),
    "no_C_B_input_transB": ({"transB": 1}, None, False, True),
    "beta_zero": ({"beta": 0.0}, [N_], True, True),
    "C_input_MxN_dynamic": ({}, ["N", N_], False, True),
    "C_input_Mx1_dynamic": ({"beta": 1.5}, ["N", 1], False, True),
    "transA_dynamic": ({"transA": 1, "transB": 1}, [N_], True, True),
}


@pytest.mark.parametrize("case", list(GEMM_CASES), ids=list(GEMM_CASES))
def test_gemm(case, rng):
    attrs, c_shape, b_const, dynamic = GEMM_CASES[case]
    rows = "N" if dynamic else M
    a_shape = [K, rows] if attrs.get("transA") else [rows, K]
    b_shape = [N_, K] if attrs.get("transB") else [K, N_]
    inputs, inits = [("A", a_shape)], {}
    if b_const:
        inits["B"] = f32(rng, *b_shape)
    else:
        inputs.append(("B", b_shape))
    names = ["A", "B"]
    if c_shape is not None:
        names.append("C")
        if b_const and "N" not in c_shape:
            inits["C"] = f32(rng, *c_shape)
        else:
            inputs.append(("C", c_shape))
    node = helper.make_node("Gemm", names, ["Y"], name="gemm", **attrs)
    model = make_model([node], inputs, [("Y", None)], inits, opset=13)
    check(model, rng, batches=BATCHES if dynamic else (M,))


def test_gemm_opset7_broadcast_c(rng):
    """Gemm at opset 7 with a [N] bias (exporters of that era)."""
    node = helper.make_node("Gemm", ["A", "B", "C"], ["Y"], transB=1)
    model = make_model([node], [("A", ["N", 4])], [("Y", None)],
                       {"B": f32(rng, 3, 4), "C": f32(rng, 3)}, opset=7)
    check(model, rng)


# -- MatMul ------------------------------------------------------------------------------------
MATMUL_CASES = {
    # name: (A shape, B shape, B constant?)
    "2d_const": (["N", 6], [6, 5], True),
    "2d_inputs": (["N", 6], [6, 5], False),
    "3d_by_2d_const": (["N", 4, 5], [5, 3], True),
    "3d_batched_inputs": (["N", 4, 5], ["N", 5, 3], False),
    "3d_by_3d_const_broadcast": (["N", 4, 5], [1, 5, 3], True),
    "4d_broadcast_both": ([2, 1, 4, 5], [3, 5, 6], False),
    "4d_dynamic_broadcast": (["N", 1, 4, 5], [1, 3, 5, 2], True),
    "4d_by_4d_inputs": (["N", 3, 2, 5], ["N", 3, 5, 4], False),
    "1d_by_2d": ([5], [5, 3], False),
    "1d_by_2d_const": ([5], [5, 3], True),
    "2d_by_1d": (["N", 5], [5], False),
    "2d_by_1d_const": (["N", 5], [5], True),
    "1d_by_1d": ([6], [6], False),
    "3d_by_1d": (["N", 4, 5], [5], True),
    "1d_by_3d": ([5], [2, 5, 3], False),
    "1d_by_3d_dynamic": ([5], ["N", 5, 3], False),
    "2d_by_3d_broadcast_a": ([4, 5], ["N", 5, 3], False),
    "inner_dim_1": (["N", 1], [1, 5], True),
    "one_column_output": (["N", 3, 7], [7, 1], False),
}


@pytest.mark.parametrize("case", list(MATMUL_CASES), ids=list(MATMUL_CASES))
def test_matmul(case, rng):
    a_shape, b_shape, b_const = MATMUL_CASES[case]
    inputs = [("A", a_shape)]
    inits = {}
    if b_const:
        inits["B"] = f32(rng, *b_shape)
    else:
        inputs.append(("B", b_shape))
    node = helper.make_node("MatMul", ["A", "B"], ["Y"], name="mm")
    model = make_model([node], inputs, [("Y", None)], inits, opset=13)
    dynamic = any("N" in s for s in (a_shape, b_shape))
    check(model, rng, batches=BATCHES if dynamic else (1,))


# -- Add / Sub / Mul / Div ---------------------------------------------------------------------
BROADCAST_CASES = {
    # name: (A shape, B shape, B constant?)
    "same_shape": (["N", 4, 3], ["N", 4, 3], False),
    "batch_broadcast_4d_plus_2d": (["N", 3, 1, 5], [4, 1], False),
    "2d_plus_4d_reversed": ([4, 1], ["N", 3, 1, 5], False),
    "row_vector_const": (["N", 4], [4], True),
    "per_channel_const": (["N", 3, 4, 5], [3, 1, 1], True),
    "outer": (["N", 1], [1, 6], False),
    "scalar_const": (["N", 3], [], True),
    "scalar_first": ([], ["N", 2, 3], False),
    "middle_ones": (["N", 2, 1], [1, 3], False),
    "one_elem": ([1], ["N", 5], False),
    "batch_dim_broadcast": (["N", 3, 4], [1, 3, 1], False),
    "static_both_broadcast": ([2, 1, 3], [4, 1], False),
}


@pytest.mark.parametrize("case", list(BROADCAST_CASES), ids=list(BROADCAST_CASES))
def test_binary_broadcasting(case, rng):
    """Add, Sub, Mul and Div of the same operand pair: four outputs of one model."""
    a_shape, b_shape, b_const = BROADCAST_CASES[case]
    ops = ["Add", "Sub", "Mul", "Div"]
    nodes = [helper.make_node(op, ["A", "B"], [op.lower()], name=op.lower()) for op in ops]
    inputs = [("A", a_shape)]
    inits = {}
    if b_const:
        b = rng.uniform(0.5, 2.0, b_shape) * rng.choice([-1.0, 1.0], b_shape)
        inits["B"] = np.asarray(b, np.float32)
    else:
        inputs.append(("B", b_shape))
    model = make_model(nodes, inputs, [(op.lower(), None) for op in ops], inits, opset=13)
    dynamic = any("N" in s for s in (a_shape, b_shape))
    check(model, rng, batches=BATCHES if dynamic else (1,), away_from_zero=("B",))


def test_binary_same_input_twice(rng):
    """``x * x``, ``x - x``: one buffer passed for two operands."""
    nodes = [helper.make_node("Mul", ["X", "X"], ["sq"]), helper.make_node("Sub", ["X", "X"], ["zero"]),
             helper.make_node("Add", ["sq", "X"], ["Y"])]
    model = make_model(nodes, [("X", ["N", 3, 5])], [("Y", None), ("zero", None)], opset=13)
    check(model, rng)


def test_chain_of_elementwise_with_relu(rng):
    nodes = [helper.make_node("Add", ["X", "bias"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Mul", ["r", "scale"], ["m"]),
             helper.make_node("Div", ["m", "D"], ["d"]),
             helper.make_node("Sub", ["d", "X"], ["Y"])]
    inits = {"bias": f32(rng, 4, 1, 1), "scale": f32(rng, 1, 5)}
    model = make_model(nodes, [("X", ["N", 4, 3, 5]), ("D", [1, 4, 1, 5])], [("Y", None)], inits, opset=13)
    check(model, rng, away_from_zero=("D",))


# -- Relu --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [["N", 10], ["N", 3, 7, 5], [3], []], ids=["2d", "4d", "1d_static", "scalar"])
def test_relu(shape, rng):
    model = make_model([helper.make_node("Relu", ["X"], ["Y"])], [("X", shape)], [("Y", None)], opset=13)
    check(model, rng, batches=BATCHES if "N" in shape else (1,))


# -- Softmax -----------------------------------------------------------------------------------
SOFTMAX_SHAPES = {2: ["N", 9], 3: ["N", 4, 6], 4: ["N", 3, 4, 5]}


@pytest.mark.parametrize("rank", [2, 3, 4])
def test_softmax_opset13_axes(rank, rng):
    """Opset 13: one model per rank with Softmax along axes 0, 1, -1 (and 2 for 4-D)."""
    axes = [0, 1, -1] + ([2] if rank == 4 else [])
    nodes = [helper.make_node("Softmax", ["X"], [f"y{i}"], axis=a) for i, a in enumerate(axes)]
    nodes.append(helper.make_node("Softmax", ["X"], ["ydefault"]))  # default axis -1
    model = make_model(nodes, [("X", SOFTMAX_SHAPES[rank])],
                       [(f"y{i}", None) for i in range(len(axes))] + [("ydefault", None)], opset=13)
    feeds = random_feeds(model, rng)
    for feed in feeds:
        feed["X"] *= 4.0  # a wider range of exponents
    assert_matches_ort(model, feeds, RTOL, ATOL)


def test_softmax_opset13_1d(rng):
    model = make_model([helper.make_node("Softmax", ["X"], ["Y"])], [("X", [11])], [("Y", None)], opset=13)
    check(model, rng, batches=(1,))


def test_softmax_large_inputs_are_stable(rng):
    """Inputs around 1e3 overflow a naive exp(x); the max-subtraction must keep them finite."""
    model = make_model([helper.make_node("Softmax", ["X"], ["Y"], axis=1)], [("X", ["N", 8])], [("Y", None)],
                       opset=13)
    feeds = [{"X": (f32(rng, b, 8) * 10 + 1000).astype(np.float32)} for b in BATCHES]
    compiled = assert_matches_ort(model, feeds, RTOL, ATOL)
    assert np.all(np.isfinite(compiled.run(None, feeds[0])[0]))


@pytest.mark.parametrize("shape,axis", [
    (["N", 3, 4, 5], 1), (["N", 4, 6], 1), (["N", 3, 4, 5], None), ([2, 3, 4, 5], 2), (["N", 3, 4], 0),
    (["N", 3, 4, 5], -1), (["N", 5], 1), ([2, 3, 4], 0), (["N", 3, 4, 5], 2)],
    ids=["4d_axis1", "3d_axis1", "4d_default", "4d_static_axis2", "3d_axis0", "4d_axis-1", "2d_axis1",
         "3d_static_axis0", "4d_axis2"])
def test_softmax_opset11_coerced_2d(shape, axis, rng):
    """Before opset 13 Softmax normalizes over all dims from ``axis`` on (input coerced to 2-D)."""
    attrs = {} if axis is None else {"axis": axis}
    model = make_model([helper.make_node("Softmax", ["X"], ["Y"], **attrs)], [("X", shape)], [("Y", None)],
                       opset=11)
    dynamic = "N" in shape
    feeds = random_feeds(model, rng, batches=BATCHES if dynamic else (1,))
    assert_matches_ort(model, feeds, RTOL, ATOL)
    # Where the coerced-2-D semantics differ from opset 13's, make sure the test can tell them apart.
    rank = len(shape)
    a = 1 if axis is None else axis % rank
    if a < rank - 1:
        x = feeds[-1]["X"]
        got = ort_run(model, feeds[-1])[0]
        per_axis = np.exp(x) / np.exp(x).sum(axis=a, keepdims=True)
        assert not np.allclose(got, per_axis, atol=1e-3)


# -- views: Flatten, Reshape, Identity, Dropout ------------------------------------------------
@pytest.mark.parametrize("batch", ["N", 2], ids=["dynamic", "static"])
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_flatten_then_relu(axis, batch, rng):
    """Flatten (a view) between two kernels, and as a graph output itself."""
    nodes = [helper.make_node("Relu", ["X"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"], axis=axis),
             helper.make_node("Relu", ["f"], ["Y"]),
             helper.make_node("Flatten", ["X"], ["raw"], axis=axis)]
    model = make_model(nodes, [("X", [batch, 3, 4, 5])], [("Y", None), ("raw", None)], opset=13)
    check(model, rng, batches=BATCHES if batch == "N" else (batch,))


@pytest.mark.parametrize("batch,target", [
    ("N", [0, -1]), ("N", [-1, 60]), ("N", [0, 3, 20]), ("N", [0, 12, -1, 1]), ("N", [-1]),
    (2, [-1]), (2, [4, -1, 2]), (2, [0, 0, -1])],
    ids=["N:0,-1", "N:-1,60", "N:0,3,20", "N:0,12,-1,1", "N:-1", "2:-1", "2:4,-1,2", "2:0,0,-1"])
def test_reshape_const_target(batch, target, rng):
    nodes = [helper.make_node("Reshape", ["X", "shape"], ["r"]),
             helper.make_node("Relu", ["r"], ["Y"])]
    model = make_model(nodes, [("X", [batch, 3, 4, 5])], [("Y", None)],
                       {"shape": np.array(target, np.int64)}, opset=13)
    check(model, rng, batches=BATCHES if batch == "N" else (batch,))


def _shape_chain(opset: int, gather_index_scalar: bool = True) -> list[onnx.NodeProto]:
    """PyTorch-style ``x.view(x.size(0), -1)``: Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    idx = helper.make_tensor("idx", TensorProto.INT64, [] if gather_index_scalar else [1], [0])
    minus1 = helper.make_tensor("m1", TensorProto.INT64, [1], [-1])
    nodes = [helper.make_node("Constant", [], ["c0"], value=idx),
             helper.make_node("Constant", [], ["cm1"], value=minus1),
             helper.make_node("Shape", ["X"], ["s"]),
             helper.make_node("Gather", ["s", "c0"], ["g"], axis=0)]
    if opset >= 13:
        axes = helper.make_tensor("ax", TensorProto.INT64, [1], [0])
        nodes += [helper.make_node("Constant", [], ["axes"], value=axes),
                  helper.make_node("Unsqueeze", ["g", "axes"], ["u"])]
    else:
        nodes.append(helper.make_node("Unsqueeze", ["g"], ["u"], axes=[0]))
    nodes += [helper.make_node("Concat", ["u", "cm1"], ["target"], axis=0),
              helper.make_node("Reshape", ["X", "target"], ["flat"])]
    return nodes


@pytest.mark.parametrize("opset", [11, 13])
def test_shape_gather_unsqueeze_concat_reshape_chain(opset, rng):
    nodes = _shape_chain(opset) + [helper.make_node("Gemm", ["flat", "W", "b"], ["Y"], transB=1)]
    model = make_model(nodes, [("X", ["N", 3, 4, 5])], [("Y", None)],
                       {"W": f32(rng, 7, 60), "b": f32(rng, 7)}, opset=opset)
    check(model, rng)


def test_identity_as_output_and_between_kernels(rng):
    """An Identity of a graph input is itself a graph output (a copy), and one between kernels."""
    nodes = [helper.make_node("Identity", ["X"], ["same"]),
             helper.make_node("Relu", ["X"], ["r"]),
             helper.make_node("Identity", ["r"], ["ri"]),
             helper.make_node("Add", ["ri", "same"], ["Y"])]
    model = make_model(nodes, [("X", ["N", 3, 5])], [("same", None), ("Y", None)], opset=13)
    check(model, rng)


def test_dropout_opset12_ratio_input(rng):
    ratio = helper.make_tensor("ratio", TensorProto.FLOAT, [], [0.3])
    nodes = [helper.make_node("Constant", [], ["ratio_c"], value=ratio),
             helper.make_node("Dropout", ["X", "ratio_c"], ["d"]),
             helper.make_node("Relu", ["d"], ["Y"])]
    model = make_model(nodes, [("X", ["N", 4, 3])], [("Y", None)], opset=12)
    check(model, rng)


def test_dropout_opset12_ratio_and_false_training_mode(rng):
    nodes = [helper.make_node("Dropout", ["X", "ratio", "training"], ["Y"])]
    model = make_model(nodes, [("X", ["N", 6])], [("Y", None)],
                       {"ratio": np.array(0.5, np.float32), "training": np.array(False)}, opset=13)
    check(model, rng)


def test_dropout_opset7(rng):
    nodes = [helper.make_node("Dropout", ["X"], ["d"], ratio=0.25),
             helper.make_node("Gemm", ["d", "W", "b"], ["Y"])]
    model = make_model(nodes, [("X", ["N", 5])], [("Y", None)], {"W": f32(rng, 5, 3), "b": f32(rng, 3)}, opset=7)
    check(model, rng)


def test_dropout_as_graph_output(rng):
    model = make_model([helper.make_node("Dropout", ["X"], ["Y"])], [("X", ["N", 2, 3])], [("Y", None)], opset=13)
    check(model, rng)


# -- Constant nodes ----------------------------------------------------------------------------
def test_constant_nodes(rng):
    """Constant nodes feeding kernels: a tensor (weights), value_float, value_floats, value_ints."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], f32(rng, 4, 3).ravel().tolist())
    nodes = [helper.make_node("Constant", [], ["W"], value=w),
             helper.make_node("Constant", [], ["half"], value_float=0.5),
             helper.make_node("Constant", [], ["row"], value_floats=[1.0, -2.0, 3.0]),
             helper.make_node("Constant", [], ["shape"], value_ints=[0, 3, 1]),
             helper.make_node("MatMul", ["X", "W"], ["mm"]),
             helper.make_node("Mul", ["mm", "half"], ["scaled"]),
             helper.make_node("Add", ["scaled", "row"], ["shifted"]),
             helper.make_node("Reshape", ["shifted", "shape"], ["Y"])]
    model = make_model(nodes, [("X", ["N", 4])], [("Y", None)], opset=13)
    check(model, rng)


def test_constant_node_as_graph_output(rng):
    """An output that is a Constant node's value (no kernel computes it)."""
    c = f32(rng, 2, 3)
    nodes = [helper.make_node("Constant", [], ["C"], value=helper.make_tensor("c", TensorProto.FLOAT, [2, 3],
                                                                              c.ravel().tolist())),
             helper.make_node("Relu", ["X"], ["Y"])]
    model = make_model(nodes, [("X", ["N", 3])], [("Y", None), ("C", None)], opset=13)
    check(model, rng)


# -- dynamic dims, compile-time values, views of constants ---------------------------------------
def test_dynamic_dim_not_leading(rng):
    """The README promises one dynamic dim anywhere in a shape, not only in front."""
    nodes = [helper.make_node("Add", ["X", "bias"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MatMul", ["r", "W"], ["Y"]),
             helper.make_node("Softmax", ["Y"], ["S"], axis=1)]
    model = make_model(nodes, [("X", [3, "N", 4])], [("Y", None), ("S", None)],
                       {"bias": f32(rng, 3, 1, 4), "W": f32(rng, 4, 2)}, opset=13)
    check(model, rng)


def test_unnamed_dynamic_dim(rng):
    """An input dim with neither a value nor a name is dynamic too."""
    nodes = [helper.make_node("Gemm", ["X", "W", "b"], ["g"]), helper.make_node("Relu", ["g"], ["Y"])]
    model = make_model(nodes, [("X", [None, 4])], [("Y", None)], {"W": f32(rng, 4, 3), "b": f32(rng, 3)}, opset=13)
    check(model, rng)


def test_constant_subgraph_is_folded(rng):
    """Arithmetic on constants only (computed at compile time) feeding a kernel."""
    nodes = [helper.make_node("Add", ["c1", "c2"], ["c3"]),
             helper.make_node("Reshape", ["c3", "shape"], ["c4"]),
             helper.make_node("Mul", ["c4", "half"], ["c5"]),
             helper.make_node("Sub", ["X", "c5"], ["Y"])]
    inits = {"c1": f32(rng, 6), "c2": f32(rng, 6), "shape": np.array([2, 3], np.int64),
             "half": np.array(0.5, np.float32)}
    model = make_model(nodes, [("X", ["N", 2, 3])], [("Y", None)], inits, opset=13)
    check(model, rng)


def test_large_constant_through_views(rng):
    """A constant too large to fold (> 4096 elements) reshaped and flattened before its kernel."""
    nodes = [helper.make_node("Reshape", ["Wflat", "shape"], ["W3"]),
             helper.make_node("Flatten", ["W3"], ["W"], axis=1),
             helper.make_node("MatMul", ["X", "W"], ["Y"])]
    inits = {"Wflat": f32(rng, 50 * 100), "shape": np.array([50, 10, 10], np.int64)}
    model = make_model(nodes, [("X", ["N", 50])], [("Y", None)], inits, opset=13)
    check(model, rng)


def test_kernel_on_large_constants_and_mixed_workspace(rng):
    """Constants too large to fold feed a kernel whose output has no batch dim (fixed workspace)
    next to per-batch intermediates."""
    nodes = [helper.make_node("Mul", ["C1", "C2"], ["prod"]),
             helper.make_node("Relu", ["X"], ["r"]),
             helper.make_node("Add", ["r", "prod"], ["a"]),
             helper.make_node("Sub", ["prod", "C1"], ["static_out"]),
             helper.make_node("Mul", ["a", "a"], ["Y"])]
    inits = {"C1": f32(rng, 5000), "C2": f32(rng, 5000)}
    model = make_model(nodes, [("X", ["N", 5000])], [("Y", None), ("static_out", None)], inits, opset=13)
    check(model, rng)


def test_intermediate_that_is_also_an_output(rng):
    nodes = [helper.make_node("Conv", ["X", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["c"], ["cf"]),
             helper.make_node("Softmax", ["cf"], ["Y"], axis=1)]
    model = make_model(nodes, [("X", ["N", 2, 3, 3])], [("c", None), ("r", None), ("cf", None), ("Y", None)],
                       {"W": f32(rng, 3, 2, 3, 3)}, opset=13)
    check(model, rng)


def test_unsqueeze_and_squeeze_views(rng):
    nodes = [helper.make_node("Unsqueeze", ["X", "ax"], ["u"]),
             helper.make_node("Relu", ["u"], ["r"]),
             helper.make_node("Squeeze", ["r", "sq"], ["Y"])]
    model = make_model(nodes, [("X", ["N", 3, 4])], [("Y", None)],
                       {"ax": np.array([1, -1], np.int64), "sq": np.array([4], np.int64)}, opset=13)
    check(model, rng)


def test_softmax_over_an_axis_of_size_1(rng):
    model = make_model([helper.make_node("Softmax", ["X"], ["Y"], axis=1)], [("X", ["N", 1, 3])], [("Y", None)],
                       opset=13)
    check(model, rng)


@pytest.mark.parametrize("op", ["Conv", "MaxPool"])
def test_3d_windows_are_unsupported_with_the_models_opset(op):
    """3-D Conv/MaxPool have no kernel: UnsupportedOpError naming the node and the model's opset."""
    if op == "Conv":
        node = helper.make_node("Conv", ["X", "W"], ["Y"], name="vol")
        inits = {"W": np.ones((2, 2, 2, 2, 2), np.float32)}
    else:
        node = helper.make_node("MaxPool", ["X"], ["Y"], kernel_shape=[2, 2, 2], name="vol")
        inits = {}
    model = make_model([node], [("X", ["N", 2, 4, 4, 4])], [("Y", None)], inits, opset=13)
    with pytest.raises(lc.UnsupportedOpError) as info:
        lc.compile(model)
    assert info.value.ops == [(op, "vol", "", 13)]
    assert str(info.value) == \
        f"unsupported operator: {op} (node 'vol', domain 'ai.onnx', opset 13): 3-D windows are not supported by the cpu backend"


@pytest.mark.parametrize("op", ["Add", "MatMul"])
def test_batch_dim_broadcast_against_a_static_dim(op, rng):
    """[N, ...] against a static 4 in the same position: valid for N in {1, 4} (numpy broadcasting)."""
    if op == "Add":
        x_shape, c = ["N", 3], f32(rng, 4, 3)
    else:
        x_shape, c = ["N", 2, 3], f32(rng, 4, 3, 5)
    model = make_model([helper.make_node(op, ["X", "C"], ["Y"])], [("X", x_shape)], [("Y", None)], {"C": c},
                       opset=13)
    check(model, rng, batches=(4, 1))


@pytest.mark.parametrize("op", ["Add", "MatMul"])
def test_batch_that_cannot_broadcast_is_an_input_error(op, rng):
    """ONNX Runtime rejects N=7 against a static 4; lepton must not read past the input instead."""
    if op == "Add":
        x, c = f32(rng, 7, 3), f32(rng, 4, 3)
    else:
        x, c = f32(rng, 7, 2, 3), f32(rng, 4, 3, 5)
    model = make_model([helper.make_node(op, ["X", "C"], ["Y"])], [("X", ["N", *x.shape[1:]])], [("Y", None)],
                       {"C": c}, opset=13)
    compiled = lc.compile(model)
    with pytest.raises(lc.LeptonError):
        compiled.run(None, {"X": x})


def test_two_dynamic_dims_are_rejected_with_a_readable_message():
    nodes = [helper.make_node("Add", ["X", "Z"], ["Y"], name="add")]
    model = make_model(nodes, [("X", ["N", 3]), ("Z", ["M", 3])], [("Y", None)], opset=13)
    with pytest.raises(lc.UnsupportedOpError) as info:
        lc.compile(model)
    message = str(info.value)
    assert "dynamic dims ['M', 'N']" in message
    # The message must not describe an operator with an empty name and an empty node.
    assert "operator:  (" not in message and "node ''" not in message, message


# -- a small network with everything ----------------------------------------------------------
def test_small_cnn_end_to_end(rng):
    nodes = [helper.make_node("Conv", ["X", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "W2"], ["c2"], group=5, strides=[2, 2], auto_pad="SAME_UPPER"),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Flatten", ["r2"], ["f"]),
             helper.make_node("Gemm", ["f", "W3", "B3"], ["logits"], transB=1),
             helper.make_node("Softmax", ["logits"], ["Y"], axis=1)]
    inits = {"W1": f32(rng, 5, 3, 3, 3), "B1": f32(rng, 5), "W2": f32(rng, 10, 1, 3, 3) * 0.5,
             "W3": f32(rng, 11, 10 * 3 * 3) * 0.1, "B3": f32(rng, 11)}
    model = make_model(nodes, [("X", ["N", 3, 11, 11])], [("Y", None)], inits, opset=13)
    check(model, rng)
