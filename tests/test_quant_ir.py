"""The int8 IR's reference semantics (ops/quant.py, ops/qmath.py) against ONNX Runtime.

QConv and QGemm with a uint8 output must equal ORT's QLinearConv / QLinearMatMul bit for bit
(followed by ORT's uint8 MaxPool and Max for the fused pool and clamp); their float output must
equal ConvInteger / MatMulInteger rescaled in fp32.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from conftest import make_model, ort_run
from lepton_compiler.ir import Node, TensorType, Value
from lepton_compiler.ops import ShapeError, lookup, qmath

U8 = TensorProto.UINT8


def _node(op: str, arrays: dict, attrs: dict) -> Node:
    values = [Value(name, TensorType.of(a)) for name, a in arrays.items()]
    return Node(op, "q", values, [Value("y", TensorType("uint8", ()))], attrs)


def _run(op: str, arrays: dict, attrs: dict) -> np.ndarray:
    node = _node(op, arrays, attrs)
    lookup(op).infer(node)
    return lookup(op).reference(node, list(arrays.values()))[0]


def _conv_case(rng, shape, out_ch, kernel, per_channel=True):
    x = rng.integers(0, 256, shape).astype(np.uint8)
    w = rng.integers(-127, 128, (out_ch, shape[1], *kernel)).astype(np.int8)
    b = rng.integers(-3000, 3000, out_ch).astype(np.int32)
    scales = rng.uniform(0.002, 0.02, out_ch if per_channel else 1).astype(np.float32)
    return x, w, b, scales


def _qlinear_conv_model(x, w, b, scales, x_scale, x_zp, y_scale, y_zp, conv_attrs, tail=()):
    inits = {"xs": np.array(x_scale, np.float32), "xz": np.array(x_zp, np.uint8), "w": w,
             "ws": scales, "wz": np.zeros(scales.shape, np.int8), "ys": np.array(y_scale, np.float32),
             "yz": np.array(y_zp, np.uint8), "b": b}
    nodes = [helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"],
                              ["c"], **conv_attrs)]
    last = "c"
    for i, (op, attrs, extra) in enumerate(tail):
        inits.update(extra)
        nodes.append(helper.make_node(op, [last, *extra], [f"t{i}"], **attrs))
        last = f"t{i}"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    return make_model(nodes, [("x", x.shape, U8)], [("y", None, U8)], inits)


@pytest.mark.parametrize("shape,out_ch,kernel,conv_attrs,per_channel", [
    ((2, 3, 9, 7), 5, (3, 3), {"pads": [1, 1, 1, 1]}, True),
    ((1, 8, 6, 6), 16, (1, 1), {}, False),
    ((3, 5, 11, 10), 7, (3, 2), {"strides": [2, 1], "pads": [0, 1, 2, 0]}, True),
    ((1, 4, 9, 9), 6, (3, 3), {"dilations": [2, 2], "group": 2}, True),
])
def test_qconv_equals_qlinearconv(rng, shape, out_ch, kernel, conv_attrs, per_channel):
    x, w, b, scales = _conv_case(rng, shape, out_ch, kernel, per_channel)
    if conv_attrs.get("group", 1) > 1:
        w = w[:, : shape[1] // conv_attrs["group"]].copy()
    x_scale, x_zp, y_scale, y_zp = 0.03, 17, 0.4, 120
    attrs = {"kernel_shape": list(kernel), **conv_attrs, "x_scale": x_scale, "x_zero_point": x_zp,
             "w_scales": scales.tolist(), "y_scale": y_scale, "y_zero_point": y_zp}
    ours = _run("QConv", {"x": x, "w": w, "b": b}, attrs)
    model = _qlinear_conv_model(x, w, b, scales, x_scale, x_zp, y_scale, y_zp,
                                {"kernel_shape": list(kernel), **conv_attrs})
    theirs = ort_run(model, {"x": x})[0]
    assert ours.dtype == np.uint8 and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)
    assert 0 < np.count_nonzero((ours > 0) & (ours < 255)), "the case saturates everywhere"


def test_qconv_clamp_and_pool_equal_ort_max_and_maxpool(rng):
    x, w, b, scales = _conv_case(rng, (2, 4, 10, 10), 8, (3, 3))
    x_scale, x_zp, y_scale, y_zp = 0.03, 5, 0.3, 90
    attrs = {"kernel_shape": [3, 3], "x_scale": x_scale, "x_zero_point": x_zp, "w_scales": scales.tolist(),
             "y_scale": y_scale, "y_zero_point": y_zp, "y_min": y_zp, "y_max": 200,
             "pool_kernel": [2, 2], "pool_strides": [2, 2]}
    ours = _run("QConv", {"x": x, "w": w, "b": b}, attrs)
    tail = [("Max", {}, {"lo": np.array(y_zp, np.uint8)}), ("Min", {}, {"hi": np.array(200, np.uint8)}),
            ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}, {})]
    model = _qlinear_conv_model(x, w, b, scales, x_scale, x_zp, y_scale, y_zp, {"kernel_shape": [3, 3]}, tail)
    theirs = ort_run(model, {"x": x})[0]
    np.testing.assert_array_equal(ours, theirs)
    assert ours.min() >= y_zp and ours.max() <= 200


def test_qconv_float_output_is_the_rescaled_integer_conv(rng):
    x, w, b, scales = _conv_case(rng, (2, 3, 8, 8), 4, (3, 3))
    attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "x_scale": 0.05, "x_zero_point": 9,
             "w_scales": scales.tolist(), "output_dtype": "float32", "activation": "Relu", "activation_params": []}
    node = _node("QConv", {"x": x, "w": w, "b": b}, attrs)
    assert lookup("QConv").infer(node)[0] == TensorType("float32", (2, 4, 8, 8))
    ours = lookup("QConv").reference(node, [x, w, b])[0]
    model = make_model([helper.make_node("ConvInteger", ["x", "w", "xz"], ["y"], kernel_shape=[3, 3],
                                         pads=[1, 1, 1, 1])],
                       [("x", x.shape, U8)], [("y", None, TensorProto.INT32)], {"xz": np.array(9, np.uint8), "w": w})
    acc = ort_run(model, {"x": x})[0].astype(np.int64) + b.reshape(1, -1, 1, 1)
    expected = np.maximum(acc.astype(np.float32) * (np.float32(0.05) * scales).reshape(1, -1, 1, 1), 0)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, expected)


def test_qgemm_equals_qlinearmatmul(rng):
    a = rng.integers(0, 256, (7, 37)).astype(np.uint8)
    b = rng.integers(-127, 128, (11, 37)).astype(np.int8)
    scales = rng.uniform(0.001, 0.01, 11).astype(np.float32)
    attrs = {"a_scale": 0.02, "a_zero_point": 33, "b_scales": scales.tolist(), "y_scale": 0.15, "y_zero_point": 64}
    ours = _run("QGemm", {"a": a, "b": b}, attrs)
    inits = {"as": np.array(0.02, np.float32), "az": np.array(33, np.uint8), "b": b.T.copy(), "bs": scales,
             "bz": np.zeros(11, np.int8), "ys": np.array(0.15, np.float32), "yz": np.array(64, np.uint8)}
    model = make_model([helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])],
                       [("a", a.shape, U8)], [("y", None, U8)], inits)
    theirs = ort_run(model, {"a": a})[0]
    np.testing.assert_array_equal(ours, theirs)


def test_qgemm_float_output_with_softmax(rng):
    a = rng.integers(0, 256, (5, 16)).astype(np.uint8)
    b = rng.integers(-127, 128, (10, 16)).astype(np.int8)
    bias = rng.integers(-500, 500, 10).astype(np.int32)
    attrs = {"a_scale": 0.01, "a_zero_point": 0, "b_scales": [0.004], "output_dtype": "float32", "softmax": 1}
    y = _run("QGemm", {"a": a, "b": b, "bias": bias}, attrs)
    logits = ((a.astype(np.int64) @ b.astype(np.int64).T) + bias).astype(np.float32) * np.float32(0.01 * 0.004)
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(y, expected / expected.sum(1, keepdims=True), rtol=1e-6)


def test_quantize_rounds_half_to_even_and_saturates():
    x = np.array([0.5, 1.5, 2.5, -0.5, 1e9, -1e9, np.nan, np.inf], np.float32)
    np.testing.assert_array_equal(qmath.quantize(x, 1.0, 10), [10, 12, 12, 10, 255, 0, 0, 255])
    np.testing.assert_array_equal(qmath.quantize(x, 1.0, 0, np.int8), [0, 2, 2, 0, 127, -128, 0, 127])


def test_quantize_and_dequantize_equal_ort(rng):
    x = (rng.standard_normal((4, 3, 5)) * 4).astype(np.float32)
    scale, zp = np.array([0.05, 0.1, 0.2], np.float32), np.array([-3, 0, 7], np.int8)
    model = make_model([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
                        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1)],
                       [("x", x.shape)], [("q", None, TensorProto.INT8), ("y", None)], {"s": scale, "z": zp})
    q_ort, y_ort = ort_run(model, {"x": x})
    per_axis = (1, 3, 1)
    q = qmath.quantize(x, scale.reshape(per_axis), zp.reshape(per_axis), np.int8)
    np.testing.assert_array_equal(q, q_ort)
    np.testing.assert_array_equal(qmath.dequantize(q, scale.reshape(per_axis), zp.reshape(per_axis)), y_ort)


def test_choose_uint8_keeps_zero_exact_and_covers_the_range():
    scale, zp = qmath.choose_uint8(-1.0, 3.0)
    assert qmath.dequantize(np.array(zp), scale, zp) == 0.0
    assert qmath.quantize(np.array([-1.0, 3.0], np.float32), scale, zp).tolist() == [0, 255]
    assert qmath.choose_uint8(0.0, 0.0) == (1.0, 0)


def test_symmetric_int8_per_channel_round_trips_within_half_a_step(rng):
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    q, scales = qmath.symmetric_int8(w)
    assert q.dtype == np.int8 and q.shape == w.shape and scales.shape == (6,)
    assert np.abs(q).reshape(6, -1).max(axis=1).tolist() == [127] * 6
    err = np.abs(q.astype(np.float32) * scales.reshape(-1, 1, 1, 1) - w)
    assert np.all(err <= scales.reshape(-1, 1, 1, 1) / 2 + 1e-7)


@pytest.mark.parametrize("change,message", [
    ({"x": np.zeros((1, 2, 4, 4), np.int8)}, "input must be uint8, got int8[1, 2, 4, 4]"),
    ({"w": np.zeros((3, 2, 3, 3), np.uint8)}, "weights must be int8, got uint8[3, 2, 3, 3]"),
    ({"attrs": {"w_scales": [0.1, 0.2]}}, "2 weight scales for 3 channels"),
    ({"attrs": {"y_min": 200, "y_max": 100}}, "y_min 200 and y_max 100 must satisfy 0 <= y_min <= y_max <= 255"),
    ({"attrs": {"output_dtype": "int16"}}, "output_dtype must be uint8 or float32, not 'int16'"),
    ({"attrs": {"activation": "Relu"}}, "a uint8 output takes its activation as y_min/y_max"),
])
def test_qconv_type_rule_errors(change, message):
    arrays = {"x": np.zeros((1, 2, 4, 4), np.uint8), "w": np.zeros((3, 2, 3, 3), np.int8)}
    attrs = {"kernel_shape": [3, 3], "x_scale": 0.1, "x_zero_point": 0, "w_scales": [0.1],
             "y_scale": 0.1, "y_zero_point": 0}
    arrays.update({k: v for k, v in change.items() if k != "attrs"})
    attrs.update(change.get("attrs", {}))
    with pytest.raises(ShapeError) as info:
        lookup("QConv").infer(_node("QConv", arrays, attrs))
    assert str(info.value) == f"node 'q' (QConv): {message}"


# -- QConv with a residual, and its export to standard ONNX ------------------------------------------
def test_qconv_residual_export_equals_ort():
    """``graph.to_onnx()`` writes a QConv with a residual as ConvInteger (+ bias), Cast, Mul by M (or
    x_scale * w_scale), Add of DequantizeLinear(r, R, r_zp), QuantizeLinear(scale 1, y_zp) (+ Clip,
    MaxPool; float output: the activation): ONNX Runtime's result equals the interpreter's bit for bit
    (float outputs too, each op rounding once as the definition does, up to ORT's own Tanh)."""
    from lepton_compiler.ops import interpret
    from qkernel_testing import residual_graph

    graph = residual_graph()
    exported = graph.to_onnx()
    ops = [n.op_type for n in exported.graph.node]
    assert "QLinearConv" not in ops and ops.count("DequantizeLinear") == len(graph.nodes)
    assert ops.count("QuantizeLinear") == sum(n.attr("output_dtype", "uint8") == "uint8" for n in graph.nodes)
    rng = np.random.default_rng(7)
    for batch in (1, 3):
        feeds = {v.name: rng.integers(0, 256, (batch,) + v.type.shape[1:]).astype(np.uint8) for v in graph.inputs}
        for node, got, want in zip(graph.nodes, ort_run(exported, feeds), interpret(graph, feeds)):
            assert got.dtype == want.dtype
            if node.attr("activation", "") == "Tanh":   # ORT's tanh approximation is not numpy's
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
            else:
                np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("change, message", [
    ({"r": np.zeros((1, 3, 4, 4), np.uint8)}, "the residual uint8[1, 3, 4, 4] must have the conv output's shape "
                                              "[1, 3, 2, 2]"),
    ({"r": np.zeros((1, 3, 2, 2), np.float32)}, "the residual must be uint8, got float32[1, 3, 2, 2]"),
    ({"attrs": {"r_scale": None}}, "missing attribute r_scale"),
    ({"attrs": {"r_zero_point": 256}}, "the residual zero point must be in [0, 255]"),
    ({"attrs": {"r_scale": 1e38, "y_scale": 1e-38}}, "the residual factor r_scale / y_scale is inf: it must be finite"),
])
def test_qconv_residual_type_rule_errors(change, message):
    arrays = {"x": np.zeros((1, 2, 4, 4), np.uint8), "w": np.zeros((3, 2, 3, 3), np.int8),
              "b": np.zeros(3, np.int32), "r": np.zeros((1, 3, 2, 2), np.uint8)}
    attrs = {"kernel_shape": [3, 3], "x_scale": 0.1, "x_zero_point": 0, "w_scales": [0.1],
             "y_scale": 0.1, "y_zero_point": 0, "r_scale": 0.2, "r_zero_point": 5}
    arrays.update({k: v for k, v in change.items() if k != "attrs"})
    attrs.update(change.get("attrs", {}))
    attrs = {k: v for k, v in attrs.items() if v is not None}
    with pytest.raises(ShapeError) as info:
        lookup("QConv").infer(_node("QConv", arrays, attrs))
    assert str(info.value) == f"node 'q' (QConv): {message}"
