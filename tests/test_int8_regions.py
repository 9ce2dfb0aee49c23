"""int8 regions through MaxPool, Concat and average pooling (``quantize/rewrite.py``, ``ops/qpool.py``):

* the uint8 / int8 MaxPool kernel (vector and scalar paths) equals ONNX Runtime's MaxPool bit for bit,
  ceil_mode windows that read only padding included (they give the dtype's minimum);
* the Concat kernel copies uint8 bytes;
* ``lepton.QAveragePool`` (windowed and global): the compiled kernel equals the interpreter, and the
  graph's standard-ONNX export run by ONNX Runtime equals it too;
* the rewrite's exact IR for a Concat of two convs (one shared scale and zero point from the union of
  their ranges), a standalone MaxPool (the input's parameters) and a GlobalAveragePool head (uint8 into
  the QGemm).
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import lepton_compiler as lc
from conftest import make_model, ort_run
from lepton_compiler.ops import interpret, qmath
from lepton_compiler.quantize.rewrite import quantize_graph
from quantize_testing import check_uint8_values_exact, quantized_with_inputs

MAXPOOL_CASES = [   # (input shape, attributes)
    ((2, 3, 9, 9), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    ((1, 5, 8, 8), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, pads=[1, 1, 1, 1])),
    ((1, 4, 7, 10), dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, pads=[0, 0, 1, 1])),
    ((2, 2, 13, 37), dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])),
    ((1, 3, 11, 70), dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1])),
    ((1, 2, 10, 10), dict(kernel_shape=[2, 3], strides=[3, 3], ceil_mode=1)),           # scalar path
    ((1, 2, 9, 9), dict(kernel_shape=[3, 3], strides=[2, 2], dilations=[2, 2], ceil_mode=1)),
    ((2, 3, 17), dict(kernel_shape=[3], strides=[2], pads=[1, 1], ceil_mode=1)),          # 1-D
]


def _single(op: str, x_shape, dtype, attrs, opset: int = 17):
    elem = {"uint8": 2, "int8": 3}[dtype]
    node = helper.make_node(op, ["x"], ["y"], name=op.lower(), **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", elem, ["N"] + list(x_shape[1:]))],
                              [helper.make_tensor_value_info("y", elem, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("shape, attrs", MAXPOOL_CASES)
def test_byte_maxpool_equals_ort(shape, attrs, dtype):
    model = _single("MaxPool", shape, dtype, attrs)
    compiled = lc.compile(model, threads=1)
    info = np.iinfo(dtype)
    rng = np.random.default_rng(3)
    for x in (rng.integers(info.min, info.max + 1, shape).astype(dtype),
              np.full(shape, info.min, dtype), rng.integers(info.min, info.min + 3, shape).astype(dtype)):
        want = ort_run(model, {"x": x})[0]
        got = compiled.run(None, {"x": x})[0]
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, want)


def test_uint8_concat_copies_bytes():
    nodes = [helper.make_node("Concat", ["a", "b", "a"], ["y"], name="cat", axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", 2, ["N", 3, 5, 7]),
                                           helper.make_tensor_value_info("b", 2, ["N", 2, 5, 7])],
                              [helper.make_tensor_value_info("y", 2, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, s).astype(np.uint8) for s in ((2, 3, 5, 7), (2, 2, 5, 7)))
    got = lc.compile(model, threads=1).run(None, {"a": a, "b": b})[0]
    np.testing.assert_array_equal(got, np.concatenate([a, b, a], axis=1))


# -- the rewrite on small fp32 graphs ------------------------------------------------------------
def _conv(rng, name, x, y, cin, cout, k=3, relu=True):
    nodes = [helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [y if not relu else f"{name}_c"], name=name,
                              kernel_shape=[k, k], pads=[k // 2] * 4)]
    if relu:
        nodes.append(helper.make_node("Relu", [f"{name}_c"], [y], name=f"{name}_relu"))
    inits = {f"{name}_w": (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (cin * k * k))).astype(np.float32),
             f"{name}_b": (rng.standard_normal(cout) * 0.1).astype(np.float32)}
    return nodes, inits


def _model(parts, x_shape, out_shape, opset=17):
    nodes, inits = [], {}
    for n, i in parts:
        nodes += n
        inits.update(i)
    return make_model(nodes, [("X", ["N"] + list(x_shape))], [("Y", ["N"] + list(out_shape))], inits, opset=opset)


def test_concat_of_two_convs_shares_parameters():
    rng = np.random.default_rng(0)
    parts = [_conv(rng, "a", "X", "ya", 3, 8), _conv(rng, "b", "X", "yb", 3, 8, k=5),
             ([helper.make_node("Concat", ["ya", "yb"], ["cat"], name="cat", axis=1)], {}),
             _conv(rng, "c", "cat", "Y", 16, 4, relu=False)]
    model = _model(parts, (3, 10, 12), (4, 10, 12))
    compiled, x = quantized_with_inputs(model, (3, 10, 12))
    q = compiled.quantization
    g = q.graph
    assert [(n.op, n.name) for n in g.nodes] == [("QuantizeLinear", "X/QuantizeLinear"), ("QConv", "a"),
                                                 ("QConv", "b"), ("Concat", "cat"), ("QConv", "c")]
    a, b, cat, c = g.nodes[1:]
    ranges = q.calibration.ranges
    lo = min(ranges["ya"][0], ranges["yb"][0])
    hi = max(ranges["ya"][1], ranges["yb"][1])
    scale, zp = qmath.choose_uint8(lo, hi)
    for node in (a, b):
        assert node.attr("output_dtype") == "uint8"
        assert (node.attr("y_scale"), node.attr("y_zero_point"), node.attr("y_min")) == (scale, zp, zp)
    assert cat.outputs[0].type.dtype == "uint8" and cat.inputs == [a.outputs[0], b.outputs[0]]
    assert (c.inputs[0] is cat.outputs[0]) and (c.attr("x_scale"), c.attr("x_zero_point")) == (scale, zp)
    assert c.attr("output_dtype") == "float32"
    check_uint8_values_exact(compiled, x)


def test_concat_with_a_float_input_ends_the_region():
    """An input from an fp32 op (a Sigmoid here) cannot take the shared parameters: today's behaviour,
    the convs before the Concat have float outputs."""
    rng = np.random.default_rng(0)
    parts = [_conv(rng, "a", "X", "ya", 3, 8), ([helper.make_node("Sigmoid", ["X"], ["s"], name="sig")], {}),
             ([helper.make_node("Concat", ["ya", "s"], ["cat"], name="cat", axis=1)], {}),
             _conv(rng, "c", "cat", "Y", 11, 4, relu=False)]
    compiled, x = quantized_with_inputs(_model(parts, (3, 10, 12), (4, 10, 12)), (3, 10, 12))
    g = compiled.quantization.graph
    assert [n.op for n in g.nodes] == ["Sigmoid", "QuantizeLinear", "QConv", "Concat", "QuantizeLinear", "QConv"]
    assert g.nodes[2].attr("output_dtype") == "float32" and g.nodes[3].outputs[0].type.dtype == "float32"


def test_standalone_maxpool_keeps_the_input_parameters():
    rng = np.random.default_rng(1)
    parts = [_conv(rng, "a", "X", "ya", 3, 8),
             ([helper.make_node("Identity", ["ya"], ["skip"], name="skip"),
               helper.make_node("MaxPool", ["ya"], ["p"], name="pool", kernel_shape=[3, 3], strides=[2, 2],
                                ceil_mode=1)], {}),
             _conv(rng, "b", "p", "yb", 8, 8),
             _conv(rng, "c", "skip", "yc", 8, 4, k=1, relu=False),
             ([helper.make_node("MaxPool", ["yc"], ["pc"], name="pool2", kernel_shape=[3, 3], strides=[2, 2],
                                ceil_mode=1),
               helper.make_node("Concat", ["yb", "pc"], ["Y"], name="cat", axis=1)], {})]
    model = _model(parts, (3, 11, 11), (12, 5, 5))
    compiled, x = quantized_with_inputs(model, (3, 11, 11))
    g = compiled.quantization.graph
    ops = {n.name: n for n in g.nodes}
    pool = ops["pool"]
    assert pool.op == "MaxPool" and pool.outputs[0].type.dtype == "uint8"
    a = pool.inputs[0].producer
    assert a.op == "QConv" and a.attr("output_dtype") == "uint8"
    assert (ops["b"].attr("x_scale"), ops["b"].attr("x_zero_point")) == (a.attr("y_scale"), a.attr("y_zero_point"))
    assert ops["b"].attr("output_dtype") == "float32"    # read by the graph output's Concat
    assert ops["c"].attr("output_dtype") == "float32"    # its pool (fused) feeds the output's Concat
    check_uint8_values_exact(compiled, x)


def test_global_average_pool_head_stays_uint8():
    rng = np.random.default_rng(2)
    parts = [_conv(rng, "a", "X", "ya", 3, 16),
             ([helper.make_node("GlobalAveragePool", ["ya"], ["gap"], name="gap"),
               helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
               helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["Y"], name="fc", transB=1)],
              {"fc_w": rng.standard_normal((10, 16)).astype(np.float32) * 0.3,
               "fc_b": rng.standard_normal(10).astype(np.float32) * 0.1})]
    model = _model(parts, (3, 9, 7), (10,))
    compiled, x = quantized_with_inputs(model, (3, 9, 7))
    q = compiled.quantization
    g = q.graph
    assert [(n.op, n.name) for n in g.nodes] == [("QuantizeLinear", "X/QuantizeLinear"), ("QConv", "a"),
                                                 ("QAveragePool", "gap"), ("Flatten", "flat"), ("QGemm", "fc")]
    conv, gap, _, fc = g.nodes[1:]
    y_scale, y_zp = qmath.choose_uint8(*q.calibration.ranges["gap"])
    assert gap.attrs == {"global_pool": 1, "x_scale": conv.attr("y_scale"), "x_zero_point": conv.attr("y_zero_point"),
                         "y_scale": y_scale, "y_zero_point": y_zp}
    assert (fc.attr("a_scale"), fc.attr("a_zero_point"), fc.attr("output_dtype")) == (y_scale, y_zp, "float32")
    assert [d.output for d in q.quantized.layers] == ["uint8", "float32"]
    check_uint8_values_exact(compiled, x)


AVG_CASES = [
    dict(kernel_shape=[3, 3]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
    dict(kernel_shape=[3, 2], strides=[2, 3], ceil_mode=1),
    dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, pads=[0, 1, 1, 0], count_include_pad=1),
]


@pytest.mark.parametrize("attrs", AVG_CASES)
def test_average_pool_in_region(attrs):
    """conv -> AveragePool -> conv: the pool becomes QAveragePool; kernel, interpreter and ORT agree."""
    rng = np.random.default_rng(4)
    parts = [_conv(rng, "a", "X", "ya", 3, 6),
             ([helper.make_node("AveragePool", ["ya"], ["avg"], name="avg", **attrs)], {}),
             _conv(rng, "b", "avg", "Y", 6, 4, k=1, relu=False)]
    model = _model(parts, (3, 11, 13), (4, None, None))
    compiled, x = quantized_with_inputs(model, (3, 11, 13))
    g = check_uint8_values_exact(compiled, x)
    assert [n.op for n in g.nodes] == ["QuantizeLinear", "QConv", "QAveragePool", "QConv"]


def test_qaveragepool_rounds_as_documented():
    """A hand-made case: the interpreter's y is clamp(rint(fp32(S) * M) + y_zp) with M in fp32."""
    rng = np.random.default_rng(5)
    parts = [_conv(rng, "a", "X", "ya", 3, 8),
             ([helper.make_node("GlobalAveragePool", ["ya"], ["gap"], name="gap")], {}),
             _conv(rng, "b", "gap", "Y", 8, 3, k=1, relu=False)]
    model = _model(parts, (3, 6, 5), (3, 1, 1))
    compiled, x = quantized_with_inputs(model, (3, 6, 5))
    g = compiled.quantization.graph
    gap = next(n for n in g.nodes if n.op == "QAveragePool")
    sub = g.copy()
    sub.outputs = [sub.nodes[1].outputs[0], sub.nodes[2].outputs[0]]
    xq, yq = interpret(sub, {"X": x})
    s = xq.astype(np.int64).sum(axis=(2, 3), keepdims=True) - 30 * gap.attr("x_zero_point")
    m = np.float32(np.float64(np.float32(gap.attr("x_scale"))) / (30 * np.float64(np.float32(gap.attr("y_scale")))))
    want = np.clip(np.rint(s.astype(np.float32) * m) + gap.attr("y_zero_point"), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(yq, want)


def test_regions_without_calibrated_average_ranges():
    """A stored calibration table without the average's range (made before averages were observed)
    leaves the average in fp32: the conv before it gets a float output, as before."""
    rng = np.random.default_rng(2)
    parts = [_conv(rng, "a", "X", "ya", 3, 16),
             ([helper.make_node("GlobalAveragePool", ["ya"], ["gap"], name="gap"),
               helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
               helper.make_node("Gemm", ["flat", "fc_w"], ["Y"], name="fc", transB=1)],
              {"fc_w": rng.standard_normal((10, 16)).astype(np.float32)})]
    compiled, _ = quantized_with_inputs(_model(parts, (3, 9, 7), (10,)), (3, 9, 7))
    q = compiled.quantization
    ranges = {k: v for k, v in q.calibration.ranges.items() if k != "gap"}
    g = quantize_graph(q.fp32, ranges).graph
    assert [n.op for n in g.nodes][:3] == ["QuantizeLinear", "QConv", "GlobalAveragePool"]
    assert g.nodes[1].attr("output_dtype") == "float32"
