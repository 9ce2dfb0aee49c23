"""ONNX's quantization ops imported into lepton and run by the reference interpreter, against ONNX
Runtime on random data: QuantizeLinear, DequantizeLinear, QLinearConv, QLinearMatMul, ConvInteger,
MatMulInteger. Integer outputs must be equal exactly (the spec fixes rounding half to even and
saturation; ORT's fp32 requantization order is the one ``ops/qmath.py`` uses)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import lepton_compiler as lc
from conftest import make_model, ort_run
from lepton_compiler.frontends.onnx import import_model
from lepton_compiler.ops import interpret

ELEM = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8,
        np.dtype(np.int32): TensorProto.INT32, np.dtype(np.float32): TensorProto.FLOAT}


def _both(model, feed):
    """(lepton's interpreter on the imported model, ONNX Runtime) for every output."""
    ours = interpret(import_model(model), feed)
    theirs = ort_run(model, feed)
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype and a.shape == b.shape
    return ours, theirs


def _ints(rng, dtype, shape):
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("opset,per_axis", [(10, False), (13, False), (13, True), (19, True)])
def test_quantize_dequantize_equal_ort(rng, dtype, per_axis, opset):
    x = (rng.standard_normal((2, 3, 5, 4)) * 3).astype(np.float32)
    x.flat[:4] = [0.5, 1.5, -2.5, 1e9]  # ties round to even; saturation
    scale = rng.uniform(0.01, 0.05, 3 if per_axis else ()).astype(np.float32)
    zp = _ints(rng, dtype, 3 if per_axis else ()) // 2
    axis = {"axis": 1} if per_axis else {}
    model = make_model([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **axis),
                        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **axis)],
                       [("x", x.shape)], [("q", None, ELEM[np.dtype(dtype)]), ("y", None)],
                       {"s": np.asarray(scale, np.float32), "z": np.asarray(zp, dtype)}, opset=opset)
    (q, y), (q_ort, y_ort) = _both(model, {"x": x})
    np.testing.assert_array_equal(q, q_ort)
    np.testing.assert_array_equal(y, y_ort)
    assert len(np.unique(q)) > 20


def test_dequantize_int32_bias_with_scalar_and_one_element_parameters(rng):
    b = rng.integers(-5000, 5000, 7).astype(np.int32)
    model = make_model([helper.make_node("DequantizeLinear", ["b", "s", "z"], ["y"])], [("b", b.shape, TensorProto.INT32)],
                       [("y", None)], {"s": np.array([0.003], np.float32), "z": np.array(0, np.int32)})
    (y,), (y_ort,) = _both(model, {"b": b})
    np.testing.assert_array_equal(y, y_ort)


def _qlinear_conv(rng, shape, out_ch, kernel, attrs, x_dtype, y_dtype, per_channel, bias=True):
    group = attrs.get("group", 1)
    x = _ints(rng, x_dtype, shape)
    w = rng.integers(-127, 128, (out_ch, shape[1] // group, *kernel)).astype(np.int8)
    ws = rng.uniform(0.002, 0.02, out_ch if per_channel else ()).astype(np.float32)
    inits = {"xs": np.array(0.03, np.float32), "xz": np.array(17 if x_dtype == np.uint8 else -9, x_dtype), "w": w,
             "ws": ws, "wz": np.zeros(ws.shape, np.int8), "ys": np.array(0.4 if x_dtype == y_dtype else 1.5, np.float32),
             "yz": np.array(120 if y_dtype == np.uint8 else -7, y_dtype)}
    inputs = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"]
    if bias:
        inits["b"] = rng.integers(-3000, 3000, out_ch).astype(np.int32)
        inputs.append("b")
    node = helper.make_node("QLinearConv", inputs, ["y"], kernel_shape=list(kernel), **attrs)
    return make_model([node], [("x", x.shape, ELEM[np.dtype(x_dtype)])], [("y", None, ELEM[np.dtype(y_dtype)])],
                      inits), x


CONV_CASES = [
    ((2, 3, 9, 7), 5, (3, 3), {"pads": [1, 1, 1, 1]}),
    ((1, 8, 6, 6), 16, (1, 1), {}),
    ((3, 5, 11, 10), 7, (3, 2), {"strides": [2, 1], "pads": [0, 1, 2, 0]}),
    ((1, 4, 9, 9), 6, (3, 3), {"dilations": [2, 2], "group": 2}),
    ((2, 6, 7, 7), 6, (3, 3), {"group": 6, "pads": [1, 1, 1, 1], "strides": [2, 2]}),  # depthwise
    ((1, 3, 13), 4, (5,), {"pads": [2, 2]}),  # 1-D
]


@pytest.mark.parametrize("shape,out_ch,kernel,attrs", CONV_CASES)
@pytest.mark.parametrize("x_dtype,y_dtype,per_channel", [(np.uint8, np.uint8, True), (np.uint8, np.uint8, False),
                                                         (np.int8, np.int8, True), (np.int8, np.int8, False)])
def test_qlinear_conv_equals_ort(rng, shape, out_ch, kernel, attrs, x_dtype, y_dtype, per_channel):
    model, x = _qlinear_conv(rng, shape, out_ch, kernel, attrs, x_dtype, y_dtype, per_channel)
    (y,), (y_ort,) = _both(model, {"x": x})
    np.testing.assert_array_equal(y, y_ort)
    lo, hi = np.iinfo(y_dtype).min, np.iinfo(y_dtype).max
    assert np.count_nonzero((y > lo) & (y < hi)) > y.size // 20, "the case saturates everywhere"


@pytest.mark.parametrize("a_dtype,b_dtype,y_dtype", [(np.uint8, np.int8, np.uint8), (np.int8, np.int8, np.int8),
                                                     (np.uint8, np.uint8, np.uint8)])
@pytest.mark.parametrize("per_column", [False, True])
def test_qlinear_matmul_equals_ort(rng, a_dtype, b_dtype, y_dtype, per_column):
    a = _ints(rng, a_dtype, (7, 37))
    b = _ints(rng, b_dtype, (37, 11))
    bs = rng.uniform(0.001, 0.01, 11 if per_column else ()).astype(np.float32)
    bz = (_ints(rng, b_dtype, bs.shape) // 8).astype(b_dtype)
    inits = {"as": np.array(0.02, np.float32), "az": np.array(33 if a_dtype == np.uint8 else -5, a_dtype), "b": b,
             "bs": bs, "bz": bz, "ys": np.array(0.15, np.float32),
             "yz": np.array(64 if y_dtype == np.uint8 else 3, y_dtype)}
    model = make_model([helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])],
                       [("a", a.shape, ELEM[np.dtype(a_dtype)])], [("y", None, ELEM[np.dtype(y_dtype)])], inits)
    (y,), (y_ort,) = _both(model, {"a": a})
    np.testing.assert_array_equal(y, y_ort)
    assert len(np.unique(y)) > 10


@pytest.mark.parametrize("shape,out_ch,kernel,attrs", CONV_CASES)
@pytest.mark.parametrize("w_dtype,zero_points", [(np.uint8, True), (np.int8, False), (np.uint8, False)])
def test_conv_integer_equals_ort(rng, shape, out_ch, kernel, attrs, w_dtype, zero_points):
    group = attrs.get("group", 1)
    x = _ints(rng, np.uint8, shape)
    w = _ints(rng, w_dtype, (out_ch, shape[1] // group, *kernel))
    inits = {"w": w}
    inputs = ["x", "w"]
    if zero_points:
        inits.update(xz=np.array(100, np.uint8), wz=np.array(131, w_dtype))
        inputs += ["xz", "wz"]
    model = make_model([helper.make_node("ConvInteger", inputs, ["y"], kernel_shape=list(kernel), **attrs)],
                       [("x", x.shape, TensorProto.UINT8)], [("y", None, TensorProto.INT32)], inits)
    (y,), (y_ort,) = _both(model, {"x": x})
    np.testing.assert_array_equal(y, y_ort)


@pytest.mark.parametrize("b_dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("a_shape", [(6, 29), (2, 3, 29)])
def test_matmul_integer_equals_ort(rng, b_dtype, a_shape):
    a = _ints(rng, np.uint8, a_shape)
    b = _ints(rng, b_dtype, (29, 9))
    bz = (_ints(rng, b_dtype, 9) // 4).astype(b_dtype)  # per column
    model = make_model([helper.make_node("MatMulInteger", ["a", "b", "az", "bz"], ["y"])],
                       [("a", a.shape, TensorProto.UINT8)], [("y", None, TensorProto.INT32)],
                       {"b": b, "az": np.array(77, np.uint8), "bz": bz})
    (y,), (y_ort,) = _both(model, {"a": a})
    np.testing.assert_array_equal(y, y_ort)


def test_int8_depthwise_qlinear_conv_matches_the_uint8_form(rng):
    """The int8-activation grouped case, checked as the uint8 tensor with zero point + 128."""
    model, x = _qlinear_conv(rng, (2, 6, 7, 7), 6, (3, 3), {"group": 6, "pads": [1, 1, 1, 1]}, np.int8, np.int8, True)
    shifted, _ = _qlinear_conv(np.random.default_rng(0), (2, 6, 7, 7), 6, (3, 3),
                               {"group": 6, "pads": [1, 1, 1, 1]}, np.uint8, np.uint8, True)
    (y,) = interpret(import_model(model), {"x": x})
    inits = {i.name: i for i in model.graph.initializer}
    for name, value in (("xz", -9 + 128), ("yz", -7 + 128)):
        inits[name].CopyFrom(helper.make_tensor(name, TensorProto.UINT8, [], [value]))
    u8_model = make_model(model.graph.node, [("x", x.shape, TensorProto.UINT8)], [("y", None, TensorProto.UINT8)],
                          list(inits.values()))
    (y_u8,) = ort_run(u8_model, {"x": (x.astype(np.int16) + 128).astype(np.uint8)})
    np.testing.assert_array_equal(y.astype(np.int16) + 128, y_u8)


def test_blocked_quantization_is_unsupported():
    model = make_model([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1, block_size=2)],
                       [("x", (1, 4))], [("q", None, TensorProto.UINT8)],
                       {"s": np.ones((1, 2), np.float32), "z": np.zeros((1, 2), np.uint8)}, opset=21)
    with pytest.raises(lc.UnsupportedOpError, match="block_size"):
        import_model(model)


def test_opset_10_refuses_per_axis_scales():
    model = make_model([helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
                       [("q", (2, 3), TensorProto.UINT8)], [("y", None)],
                       {"s": np.ones(3, np.float32), "z": np.zeros(3, np.uint8)}, opset=10)
    with pytest.raises(lc.ModelFormatError, match="opset 10 takes a scalar scale"):
        import_model(model)


def test_quantize_output_dtype_attribute_of_opset_21(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    model = make_model([helper.make_node("QuantizeLinear", ["x", "s"], ["q"], output_dtype=TensorProto.INT8)],
                       [("x", x.shape)], [("q", None, TensorProto.INT8)], {"s": np.array(0.02, np.float32)}, opset=21)
    (q,) = interpret(import_model(model), {"x": x})
    assert q.dtype == np.int8
    np.testing.assert_array_equal(q, np.clip(np.rint(x / np.float32(0.02)), -128, 127).astype(np.int8))
