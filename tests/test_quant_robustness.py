"""Bad quantization parameters: each case is either computed exactly as ONNX Runtime computes it,
or refused with one of lepton's exception types, by the reference interpreter and by ``compile``
alike (never a crash, never a silently different result). Also the folding of the float glue that
ONNX Runtime's QOperator format writes between QLinearConv layers.

The decisions (see ``ops/quant.py``, ``ops/qlinear.py``, ``passes/quant_common.py``):

* QuantizeLinear: a constant scale of 0 or NaN is refused (``x / 0`` is NaN for ``x = 0``, and ORT's
  NaN -> integer differs by type); negative, infinite and subnormal scales are computed as ORT does.
* DequantizeLinear: every scale is computed as ORT does (``(q - zp) * s`` is IEEE-defined).
* QLinearConv / QLinearMatMul: a non-finite requantization multiplier ``x_scale * w_scale / y_scale``
  is refused; any finite one (0, negative, underflowed) is computed exactly as ORT does. Constant
  weights and bias whose int32 accumulator could overflow are refused (ORT wraps around).
* QDQ layers become QConv / QGemm only with positive normal scales, normal products and
  multipliers and an accumulator that cannot overflow; otherwise they keep their standard form.
* Wrong shapes and lengths, axis out of range, wrong dtypes: ``ModelFormatError`` (``ShapeError``)
  naming the node; valid but unsupported types (int16 quantization): ``UnsupportedOpError``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import lepton_compiler as lc
from conftest import make_model, ort_run
from lepton_compiler.errors import ModelFormatError, UnsupportedOpError
from lepton_compiler.ops import interpret
from lepton_compiler.ops.registry import ShapeError

X = np.array([[0.0, 1.0, -1.0, 0.3, 100.0, -0.0]], np.float32)


def _both(model, feed):
    """(interpreter on the imported graph, compiled) outputs."""
    return interpret(lc.optimize(model, opt_level=0), feed), lc.compile(model).run(None, feed)


def _refused(model, error, match):
    with pytest.raises(error, match=match):
        lc.optimize(model, opt_level=0)          # what the interpreter runs
    with pytest.raises(error, match=match):
        lc.compile(model)


def _q(scale, dtype=TensorProto.UINT8, zp=None, axis=None, shape=(1, 6)):
    zp = np.array(10, np.uint8 if dtype == TensorProto.UINT8 else np.int8) if zp is None else zp
    kw = {} if axis is None else {"axis": axis}
    return make_model([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], **kw)], [("x", shape)],
                      [("y", None, dtype)], {"s": np.asarray(scale, np.float32), "z": zp}, opset=13)


def _dq(scale, zp=None, axis=None, shape=(1, 6)):
    kw = {} if axis is None else {"axis": axis}
    zp = np.array(10, np.uint8) if zp is None else zp
    return make_model([helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], **kw)],
                      [("x", shape, TensorProto.UINT8)], [("y", None)], {"s": np.asarray(scale, np.float32), "z": zp},
                      opset=13)


# -- QuantizeLinear / DequantizeLinear -------------------------------------------------------------------
@pytest.mark.parametrize("scale", [0.0, np.nan, [0.1, 0.0, 0.2]])
def test_quantize_refuses_a_zero_or_nan_scale(scale):
    per_axis = np.size(scale) > 1
    model = _q(scale, zp=np.full(np.shape(scale), 10, np.uint8), axis=1 if per_axis else None,
               shape=(2, 3) if per_axis else (1, 6))
    where = r" \(element 1\)" if per_axis else ""
    _refused(model, ShapeError, rf"node 'QuantizeLinear_0' \(QuantizeLinear\): scale (0\.0|nan){where} is not allowed: "
             r"x / scale has no quantized value for x = 0")


@pytest.mark.parametrize("scale", [-0.5, np.inf, 1e-45])
@pytest.mark.parametrize("dtype", [TensorProto.UINT8, TensorProto.INT8])
def test_quantize_computes_negative_infinite_and_subnormal_scales_as_ort(scale, dtype):
    model = _q(scale, dtype)
    ours, compiled = _both(model, {"x": X})
    np.testing.assert_array_equal(ours[0], ort_run(model, {"x": X})[0])
    np.testing.assert_array_equal(compiled[0], ours[0])


@pytest.mark.parametrize("scale", [0.0, -0.5, np.nan, np.inf, 1e-45])
def test_dequantize_computes_every_scale_as_ort(scale):
    q = np.array([[0, 10, 20, 3, 255, 9]], np.uint8)
    model = _dq(scale)
    ours, compiled = _both(model, {"x": q})
    np.testing.assert_array_equal(ours[0], ort_run(model, {"x": q})[0])
    np.testing.assert_array_equal(compiled[0], ours[0])


def test_per_axis_lengths_axis_and_zero_point_shapes_are_refused():
    _refused(_q([0.1, 0.1], zp=np.array([1, 2], np.uint8), axis=1, shape=(2, 3)), ShapeError,
             r"\(QuantizeLinear\): per-axis scale float32\[2\] does not match axis 1 of float32\[2, 3\]")
    _refused(_q([0.1, 0.1, 0.1], zp=np.array([1, 2, 3], np.uint8), axis=5, shape=(2, 3)), ShapeError,
             r"\(QuantizeLinear\): axis 5 is out of range for rank 2")
    _refused(_dq([0.1, 0.1, 0.1], zp=np.array([1, 2], np.uint8), axis=1, shape=(2, 3)), ShapeError,
             r"\(DequantizeLinear\): zero point uint8\[2\] does not have the scale's shape float32\[3\]")
    _refused(_dq(0.1, zp=np.array(3, np.int8)), ModelFormatError,
             r"input 2 \('x_zero_point'\) is int8, but another input of type T is uint8")


def test_int16_quantization_is_unsupported_not_malformed():
    model = make_model([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])], [("x", (1, 6))],
                       [("y", None, TensorProto.INT16)], {"s": np.array(0.1, np.float32), "z": np.array(0, np.int16)},
                       opset=21)
    _refused(model, UnsupportedOpError, r"QuantizeLinear .*: int16 quantization is not supported \(only uint8, int8\)")


def test_runtime_scales_run_in_the_interpreter_and_are_refused_clearly_by_the_cpu_backend():
    model = make_model([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
                       [("x", (1, 6)), ("s", ())], [("y", None)], {"z": np.array(10, np.uint8)}, opset=13)
    feed = {"x": X, "s": np.array(0.25, np.float32)}
    np.testing.assert_array_equal(interpret(lc.optimize(model, opt_level=3), feed)[0], ort_run(model, feed)[0])
    with pytest.raises(UnsupportedOpError, match="needs a constant scale and zero point"):
        lc.compile(model)


# -- QLinearConv / QLinearMatMul -------------------------------------------------------------------------
RNG = np.random.default_rng(5)
XQ = RNG.integers(0, 256, (1, 2, 5, 5)).astype(np.uint8)
W = RNG.integers(-127, 128, (3, 2, 3, 3)).astype(np.int8)


def _qlinear_conv(xs=0.05, ws=0.01, ys=0.1, wz=0, bias=None, w=W, wdtype=np.int8):
    inits = {"xs": np.asarray(xs, np.float32), "xz": np.array(100, np.uint8), "w": w,
             "ws": np.asarray(ws, np.float32), "wz": np.asarray(wz, wdtype), "ys": np.asarray(ys, np.float32),
             "yz": np.array(128, np.uint8)}
    names = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"]
    if bias is not None:
        inits["b"] = np.asarray(bias, np.int32)
        names.append("b")
    return make_model([helper.make_node("QLinearConv", names, ["y"], kernel_shape=[3, 3])],
                      [("x", XQ.shape, TensorProto.UINT8)], [("y", None, TensorProto.UINT8)], inits, opset=13)


@pytest.mark.parametrize("kw", [dict(ys=0.0), dict(ys=np.nan), dict(xs=np.inf), dict(xs=1e30, ws=1e30),
                                dict(ws=[0.01, np.nan, 0.01], wz=[0, 0, 0])],
                         ids=["y_scale 0", "y_scale nan", "x_scale inf", "product overflows", "w_scale nan"])
def test_qlinearconv_refuses_a_non_finite_multiplier(kw):
    _refused(_qlinear_conv(**kw), ShapeError, r"\(QLinearConv\): the requantization multiplier x_scale \* w_scale / "
             r"y_scale is (inf|nan) \(channel \d; .* in fp32\): it must be finite")


@pytest.mark.parametrize("kw", [dict(ys=-0.1), dict(xs=0.0), dict(ys=np.inf), dict(ws=[0.01, 0.0, -0.02], wz=[0, 0, 0]),
                                dict(xs=1e-30, ws=1e-20, ys=1.0), dict(xs=1e-20, ws=1e-20, ys=1e-3),
                                dict(bias=[1, -2, 3])],
                         ids=["negative", "x_scale 0", "y_scale inf", "per-channel 0 and negative", "underflow to 0",
                              "subnormal multiplier", "bias"])
def test_qlinearconv_computes_finite_multipliers_as_ort(kw):
    model = _qlinear_conv(**kw)
    graph = lc.optimize(model, opt_level=3)
    assert [n.op for n in graph.nodes] == ["QConv"]
    ours = interpret(graph, {"x": XQ})[0]
    np.testing.assert_array_equal(ours, ort_run(model, {"x": XQ})[0])
    np.testing.assert_array_equal(ours, interpret(lc.optimize(model, opt_level=0), {"x": XQ})[0])
    np.testing.assert_array_equal(lc.compile(model).run(None, {"x": XQ})[0], ours)


def test_qlinearconv_refuses_a_bias_that_can_overflow_the_int32_accumulator():
    _refused(_qlinear_conv(bias=[2**31 - 1, -(2**31), 0]), ShapeError,
             r"\(QLinearConv\): the int32 accumulator can overflow \(\|bias\| \+ \|x - x_zero_point\| \* "
             r"sum\|w - w_zero_point\| reaches \d+ > 2\*\*31 - 1\)")


def test_qlinearconv_bias_and_scale_lengths_are_refused():
    _refused(_qlinear_conv(bias=[1, 2]), ShapeError, r"bias float32\[2\] should be \[3\]")
    _refused(_qlinear_conv(ws=[0.01, 0.02], wz=[0, 0]), ShapeError,
             r"\(QLinearConv\): w_scale must be a scalar or \[3\], got float32\[2\]")


def test_qlinearconv_weights_that_do_not_fit_int8_run_in_the_interpreter_and_are_refused_by_the_cpu_backend():
    w = RNG.integers(0, 256, W.shape).astype(np.uint8)
    model = _qlinear_conv(w=w, wz=10, wdtype=np.uint8)
    graph = lc.optimize(model, opt_level=3)
    assert [n.op for n in graph.nodes] == ["QLinearConv"]
    np.testing.assert_array_equal(interpret(graph, {"x": XQ})[0], ort_run(model, {"x": XQ})[0])
    with pytest.raises(UnsupportedOpError, match=r"QLinearConv \(node 'QLinearConv_0'.*no cpu kernel"):
        lc.compile(model)


def test_qlinearconv_runtime_bias_wraps_around_like_ort():
    inits = {"xs": np.array(0.05, np.float32), "xz": np.array(100, np.uint8), "w": W, "ws": np.array(0.01, np.float32),
             "wz": np.array(0, np.int8), "ys": np.array(0.1, np.float32), "yz": np.array(128, np.uint8)}
    model = make_model([helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"],
                                         kernel_shape=[3, 3])],
                       [("x", XQ.shape, TensorProto.UINT8), ("b", (3,), TensorProto.INT32)],
                       [("y", None, TensorProto.UINT8)], inits, opset=13)
    feed = {"x": XQ, "b": np.array([2**31 - 1, -(2**31), 5], np.int32)}
    np.testing.assert_array_equal(interpret(lc.optimize(model, opt_level=3), feed)[0], ort_run(model, feed)[0])


def test_qlinearmatmul_refuses_a_non_finite_multiplier_and_computes_a_zero_one():
    a = RNG.integers(0, 256, (4, 6)).astype(np.uint8)

    def model(ys):
        inits = {"as": np.array(0.05, np.float32), "az": np.array(3, np.uint8),
                 "b": RNG.integers(-127, 128, (6, 5)).astype(np.int8), "bs": np.array(0.02, np.float32),
                 "bz": np.array(0, np.int8), "ys": np.array(ys, np.float32), "yz": np.array(7, np.uint8)}
        return make_model([helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])],
                          [("a", a.shape, TensorProto.UINT8)], [("y", None, TensorProto.UINT8)], inits, opset=13)
    _refused(model(0.0), ShapeError, r"\(QLinearMatMul\): the requantization multiplier a_scale \* b_scale / y_scale "
             r"is inf")
    ok = model(np.inf)
    ours = interpret(lc.optimize(ok, opt_level=3), {"a": a})[0]
    np.testing.assert_array_equal(ours, ort_run(ok, {"a": a})[0])
    np.testing.assert_array_equal(ours, np.full((4, 5), 7, np.uint8))
    np.testing.assert_array_equal(lc.compile(ok).run(None, {"a": a})[0], ours)


# -- QDQ: what becomes QConv, what keeps its standard form ------------------------------------------------
X4 = np.random.default_rng(1).standard_normal((2, 2, 6, 6)).astype(np.float32)


def _qdq(xs=0.02, ws=None, ys=0.05, bias=None, bias_scale=None):
    w = np.random.default_rng(2).integers(-127, 128, (4, 2, 3, 3)).astype(np.int8)
    ws = np.full(4, 0.01, np.float32) if ws is None else np.asarray(ws, np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws"], ["wd"], axis=0)]
    inits = {"xs": np.array(xs, np.float32), "xz": np.array(128, np.uint8), "w": w, "ws": ws,
             "ys": np.array(ys, np.float32), "yz": np.array(128, np.uint8)}
    conv_in = ["xd", "wd"]
    if bias is not None:
        if bias_scale is not None:
            nodes.append(helper.make_node("DequantizeLinear", ["bq", "bs"], ["b"]))
            inits.update(bq=np.asarray(bias, np.int32), bs=np.array(bias_scale, np.float32))
        else:
            inits["b"] = np.asarray(bias, np.float32)
        conv_in.append("b")
    nodes += [helper.make_node("Conv", conv_in, ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c"], ["r"]),
              helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
              helper.make_node("QuantizeLinear", ["p", "ys", "yz"], ["yq"]),
              helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    return make_model(nodes, [("x", X4.shape)], [("y", None)], inits, opset=13)


def _ops(model):
    return [n.op for n in lc.optimize(model, opt_level=3).nodes]


def test_qdq_with_normal_scales_becomes_one_qconv():
    assert _ops(_qdq()) == ["QuantizeLinear", "QConv", "DequantizeLinear"]


@pytest.mark.parametrize("kw", [dict(xs=-0.02), dict(ws=[-0.01, 0.01, 0.01, 0.01]),
                                dict(ws=[0.0, 0.01, 0.01, 0.01], bias=np.ones(4)), dict(xs=np.inf),
                                dict(xs=1e-20, ws=np.full(4, 1e-20), ys=1e-39),
                                dict(bias=np.full(4, 1e30)), dict(bias=np.full(4, 2**31 - 1), bias_scale=0.02 * 0.01)],
                         ids=["negative x_scale", "negative w_scale", "zero w_scale, float bias", "inf x_scale",
                              "subnormal product", "huge float bias", "int32 bias at the limit"])
def test_qdq_layers_outside_the_conditions_keep_their_standard_form_and_agree(kw):
    model = _qdq(**kw)
    ops = _ops(model)
    assert "QConv" not in ops and "FusedConv" in ops, ops
    reference = interpret(lc.optimize(model, opt_level=0), {"x": X4})[0]
    np.testing.assert_array_equal(interpret(lc.optimize(model, opt_level=3), {"x": X4})[0], reference)
    np.testing.assert_array_equal(lc.compile(model).run(None, {"x": X4})[0], reference)
    np.testing.assert_array_equal(reference, ort_run(model, {"x": X4})[0])


def test_qdq_negative_output_scale_is_not_fused_as_a_clamp_or_pool():
    """Q with a negative scale reverses the order: Relu is not y_min = zp, max pooling is not a max
    of the integers. The conv may still become a float-output QConv (one rounding step apart)."""
    model = _qdq(ys=-0.05)
    graph = lc.optimize(model, opt_level=3)
    assert [n.op for n in graph.nodes] == ["QuantizeLinear", "QConv", "QuantizeLinear", "DequantizeLinear"]
    conv = graph.nodes[1]
    assert conv.attr("output_dtype") == "float32" and conv.attr("activation") == "Relu"
    assert conv.attr("pool_kernel") == [2, 2]
    ours = interpret(graph, {"x": X4})[0]
    theirs = ort_run(model, {"x": X4})[0]
    assert np.abs(ours - theirs).max() <= 0.05 + 1e-6
    assert (ours != theirs).mean() < 0.05
    np.testing.assert_array_equal(lc.compile(model).run(None, {"x": X4})[0], ours)


def test_qdq_clip_with_crossed_bounds_is_not_fused():
    model = _qdq()
    graph = model.graph
    relu = next(n for n in graph.node if n.op_type == "Relu")
    relu.op_type = "Clip"
    relu.input.extend(["lo", "hi"])
    graph.initializer.extend([onnx.numpy_helper.from_array(np.array(1.0, np.float32), "lo"),
                              onnx.numpy_helper.from_array(np.array(-1.0, np.float32), "hi")])
    ops = _ops(model)
    assert ops.count("QuantizeLinear") == 2, ops
    np.testing.assert_array_equal(lc.compile(model).run(None, {"x": X4})[0],
                                  interpret(lc.optimize(model, opt_level=0), {"x": X4})[0])


# -- QConv / QGemm (lepton's own int8 IR) ----------------------------------------------------------------
def test_qconv_type_rule_checks_zero_points_factors_and_the_accumulator():
    from lepton_compiler.ir import Node, TensorType, Value
    from lepton_compiler.ops import infer_node

    x = Value("x", TensorType("uint8", (1, 2, 5, 5)))
    w = Value("w", TensorType("int8", (3, 2, 3, 3)), W)
    base = {"kernel_shape": [3, 3], "x_scale": 0.05, "x_zero_point": 100, "w_scales": [0.01], "y_scale": 0.1,
            "y_zero_point": 128, "output_dtype": "uint8"}

    def node(inputs=(x, w), **attrs):
        return Node("QConv", "qc", list(inputs), [Value("y", TensorType("uint8", ()))], {**base, **attrs}, "lepton")

    infer_node(node())
    with pytest.raises(ShapeError, match=r"the output zero point must be in \[0, 255\]"):
        infer_node(node(y_zero_point=300))
    with pytest.raises(ShapeError, match=r"the fp32 factor x_scale \* w_scale / y_scale is inf for output channel 0"):
        infer_node(node(y_scale=0.0))
    with pytest.raises(ShapeError, match=r"the fp32 factor x_scale \* w_scale is nan"):
        infer_node(node(x_scale=float("nan"), output_dtype="float32"))
    bias = Value("b", TensorType("int32", (3,)), np.array([2**31 - 1, 0, 0], np.int32))
    with pytest.raises(ShapeError, match=r"the int32 accumulator can overflow"):
        infer_node(node((x, w, bias)))


# -- QOperator float glue -------------------------------------------------------------------------------
def _qoperator(glue, same=True, rng=None):
    """QuantizeLinear -> QLinearConv -> [glue between DequantizeLinear and QuantizeLinear] -> QLinearConv -> DQ."""
    rng = rng or np.random.default_rng(7)
    inits = {"xs": np.array(0.03, np.float32), "xz": np.array(128, np.uint8),
             "w1": rng.integers(-100, 101, (4, 2, 3, 3)).astype(np.int8),
             "w1s": rng.uniform(0.005, 0.02, 4).astype(np.float32), "w1z": np.zeros(4, np.int8),
             "s1": np.array(0.05, np.float32), "z1": np.array(100, np.uint8),
             "s2": np.array(0.05 if same else 0.07, np.float32), "z2": np.array(100 if same else 90, np.uint8),
             "b1": rng.integers(-500, 500, 4).astype(np.int32),
             "w2": rng.integers(-100, 101, (3, 4, 1, 1)).astype(np.int8), "w2s": np.array(0.01, np.float32),
             "w2z": np.array(0, np.int8), "s3": np.array(0.1, np.float32), "z3": np.array(120, np.uint8),
             "lo": np.array(0.2, np.float32), "hi": np.array(3.0, np.float32)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("QLinearConv", ["xq", "xs", "xz", "w1", "w1s", "w1z", "s1", "z1", "b1"], ["c1"],
                              name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("DequantizeLinear", ["c1", "s1", "z1"], ["g0"])]
    last = "g0"
    for i, op in enumerate(glue):
        if op == "Relu":
            nodes.append(helper.make_node("Relu", [last], [f"g{i + 1}"]))
        elif op == "Clip":
            nodes.append(helper.make_node("Clip", [last, "lo", "hi"], [f"g{i + 1}"]))
        else:
            nodes.append(helper.make_node("MaxPool", [last], [f"g{i + 1}"], kernel_shape=[2, 2], strides=[2, 2]))
        last = f"g{i + 1}"
    nodes += [helper.make_node("QuantizeLinear", [last, "s2", "z2"], ["q1"]),
              helper.make_node("QLinearConv", ["q1", "s2", "z2", "w2", "w2s", "w2z", "s3", "z3"], ["c2"], name="conv2",
                               kernel_shape=[1, 1]),
              helper.make_node("DequantizeLinear", ["c2", "s3", "z3"], ["y"])]
    return make_model(nodes, [("x", ("N", 2, 8, 8))], [("y", None)], inits, opset=13)


XG = np.random.default_rng(3).standard_normal((3, 2, 8, 8)).astype(np.float32) * 2


def _agrees_with_ort(model):
    graph = lc.optimize(model, opt_level=3)
    ours = interpret(graph, {"x": XG})[0]
    np.testing.assert_array_equal(ours, ort_run(model, {"x": XG})[0])
    np.testing.assert_array_equal(lc.compile(model).run(None, {"x": XG})[0], ours)
    return graph


@pytest.mark.parametrize("glue", [["Relu", "MaxPool"], ["MaxPool", "Relu"]])
def test_dequantize_relu_maxpool_quantize_folds_into_the_qconv(glue):
    graph = _agrees_with_ort(_qoperator(glue))
    assert [n.op for n in graph.nodes] == ["QuantizeLinear", "QConv", "QConv", "DequantizeLinear"]
    conv1 = graph.nodes[1]
    assert conv1.name == "conv1" and conv1.attr("y_min") == 100 and conv1.attr("y_max") == 255
    assert conv1.attr("pool_kernel") == [2, 2] and conv1.attr("pool_strides") == [2, 2]
    assert graph.nodes[2].inputs[0] is conv1.outputs[0]
    assert graph.nodes[2].attr("x_scale") == conv1.attr("y_scale")


def test_dequantize_clip_quantize_folds_into_y_min_and_y_max():
    graph = _agrees_with_ort(_qoperator(["Clip", "MaxPool"]))
    assert [n.op for n in graph.nodes] == ["QuantizeLinear", "QConv", "QConv", "DequantizeLinear"]
    conv1 = graph.nodes[1]
    assert (conv1.attr("y_min"), conv1.attr("y_max")) == (104, 160)  # 100 + rint(0.2 / 0.05), 100 + rint(3 / 0.05)
    assert conv1.attr("pool_kernel") == [2, 2]


def test_other_quantize_parameters_fold_relu_and_pool_but_keep_the_requantization():
    """What ORT writes when the MaxPool output was calibrated on its own: Relu and the pool still
    fold (exact for any positive dequantization scale), the DequantizeLinear -> QuantizeLinear to
    the other parameters stays (a requantization is not a multiplier of the QConv: double rounding)."""
    graph = _agrees_with_ort(_qoperator(["Relu", "MaxPool"], same=False))
    assert [n.op for n in graph.nodes] == ["QuantizeLinear", "QConv", "DequantizeLinear", "QuantizeLinear", "QConv",
                                           "DequantizeLinear"]
    conv1 = graph.nodes[1]
    assert conv1.attr("y_min") == 100 and conv1.attr("pool_kernel") == [2, 2]


def test_clip_with_other_quantize_parameters_is_not_folded():
    graph = _agrees_with_ort(_qoperator(["Clip"], same=False))
    assert [n.op for n in graph.nodes] == ["QuantizeLinear", "QConv", "DequantizeLinear", "Clip", "QuantizeLinear",
                                           "QConv", "DequantizeLinear"]


def test_ort_qoperator_mnist_glue_is_folded(tmp_path):
    """The bundled MNIST CNN quantized by ORT (QOperator, convolutions only): each QLinearConv's
    DequantizeLinear -> Relu -> MaxPool is folded; results equal ORT's."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    from lepton_compiler.demo import bundled_model_path, mnist_test_images
    x, _ = mnist_test_images()

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"input": x[i:i + 8]} for i in range(0, 32, 8)])

        def get_next(self):
            return next(self.feeds, None)

    out = tmp_path / "qop.onnx"
    quantization.quantize_static(str(bundled_model_path()), str(out), Reader(),
                                 quant_format=quantization.QuantFormat.QOperator, per_channel=True,
                                 weight_type=quantization.QuantType.QInt8, op_types_to_quantize=["Conv"])
    q = onnx.load(str(out))
    assert [n.op_type for n in q.graph.node][:6] == ["QuantizeLinear", "QLinearConv", "DequantizeLinear", "Relu",
                                                    "MaxPool", "QuantizeLinear"]
    graph = lc.optimize(q, opt_level=3)
    ops = [n.op for n in graph.nodes]
    assert "Relu" not in ops and "MaxPool" not in ops
    convs = [n for n in graph.nodes if n.op == "QConv"]
    assert [n.attr("pool_kernel") for n in convs] == [[2, 2], [2, 2], None]
    assert all(n.attr("y_min") == n.attr("y_zero_point") for n in convs)
    batch = x[:200]
    ours = interpret(graph, {"input": batch})[0]
    np.testing.assert_allclose(ours, ort_run(q, {"input": batch})[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lc.compile(q).run(None, {"input": batch})[0], ours, rtol=1e-5, atol=1e-6)
