"""``lepton.QLookup`` (``ops/qlookup.py``): activations that are not a clamp inside int8 regions.

* the table ``quantize(act(dequantize(q)))`` against a direct numpy computation, for every
  activation of ``ACTIVATIONS``;
* every kernel path (AVX-512 VBMI, AVX2, scalar) equals the interpreter on odd sizes and batches,
  and the standard-ONNX export (``Gather(table, Cast(x, int32))``) run by ONNX Runtime equals it;
* the rewrite's exact IR for conv -> HardSwish -> conv and gemm -> Sigmoid -> gemm (the layer's
  uint8 pre-activation output, then the QLookup into the activation's range), a standalone
  activation in a region, and a stored calibration table without pre-activation ranges (float
  output, as before); compiled == interpreter == ORT on every uint8 value.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from onnx import helper

from conftest import make_model, ort_run
from lepton_compiler.api import compile_graph
from lepton_compiler.backends.llvm import qlookup as kernel
from lepton_compiler.backends.llvm.target import host_target
from lepton_compiler.errors import LeptonError
from lepton_compiler.ops import interpret, qlookup, qmath
from lepton_compiler.ops.activations import ACTIVATIONS
from lepton_compiler.quantize.rewrite import preactivation_name, quantize_graph
from qkernel_testing import QBuilder
from quantize_testing import check_uint8_values_exact, quantized_with_inputs

HOST = kernel.natural_path(host_target())
RUNNABLE = kernel.PATHS[kernel.PATHS.index(HOST):]


# -- the table -----------------------------------------------------------------------------------
def direct_table(act: str, params, x_scale, x_zp, y_scale, y_zp) -> np.ndarray:
    x = (np.arange(256, dtype=np.int64) - x_zp).astype(np.float32) * np.float32(x_scale)
    with np.errstate(all="ignore"):
        y = ACTIVATIONS[act].reference(x.astype(np.float64), list(params)).astype(np.float32)
        q = np.rint(y / np.float32(y_scale)) + np.float32(y_zp)
    return np.nan_to_num(np.clip(q, 0, 255), nan=0.0).astype(np.uint8)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("x_params, y_params", [((0.05, 128), (0.01, 0)), ((0.1173, 37), (0.0311, 201)),
                                                ((0.002, 255), (0.5, 3))])
def test_table_is_quantize_act_dequantize(act, x_params, y_params):
    params = ACTIVATIONS[act].defaults if act != "Clip" else (-1.5, 2.25)
    got = qlookup.table(act, params, x_params, y_params)
    assert got.dtype == np.uint8 and got.shape == (256,)
    np.testing.assert_array_equal(got, direct_table(act, params, *x_params, *y_params))


# -- the kernel ----------------------------------------------------------------------------------
def lookup_graph(n: int, seed: int):
    rng = np.random.default_rng(seed)
    b = QBuilder()
    x = b.input("x", ("N", n), "uint8")
    t = b.const("table", rng.integers(0, 256, 256).astype(np.uint8))
    return b.graph(b.op("QLookup", [x, t], domain="lepton"))


@pytest.mark.parametrize("n", [1, 7, 63, 64, 65, 1000])
@pytest.mark.parametrize("path", kernel.PATHS)
def test_every_path_equals_the_interpreter(path, n):
    if path not in RUNNABLE:
        pytest.skip(f"this host cannot run the {path} path")
    g = lookup_graph(n, n)
    with kernel.forced_path(path):
        model = compile_graph(g, options={"threads": 1})
    rng = np.random.default_rng(n + 1)
    for batch in (1, 3):
        feed = {"x": rng.integers(0, 256, (batch, n)).astype(np.uint8)}
        want = interpret(g, feed)[0]
        np.testing.assert_array_equal(want, g.constants[0].const[feed["x"]])
        np.testing.assert_array_equal(model.run(None, feed)[0], want)


def test_every_byte_value_on_two_threads():
    g = lookup_graph(256 * 5, 3)
    feed = {"x": np.tile(np.arange(256, dtype=np.uint8), 4 * 5).reshape(4, -1)}
    want = interpret(g, feed)[0]
    for path in RUNNABLE:
        with kernel.forced_path(path):
            model = compile_graph(g, options={"threads": 2})
        np.testing.assert_array_equal(model.run(None, feed)[0], want)


@pytest.mark.parametrize("path, instruction", [("vbmi", "vperm[it]2b"), ("avx2", "vpshufb")])
def test_vector_paths_use_their_instructions(path, instruction):
    if path not in RUNNABLE:
        pytest.skip(f"this host cannot run the {path} path")
    with kernel.forced_path(path):
        asm = compile_graph(lookup_graph(1000, 0), options={"threads": 1}).assembly()
    assert re.search(instruction, asm)


def test_forcing_a_path_the_target_lacks_is_refused():
    # x86-64-v3 (AVX2, no AVX-512) has no vpermt2b, whatever this host has
    with kernel.forced_path("vbmi"), pytest.raises(LeptonError, match="cannot run"):
        compile_graph(lookup_graph(64, 0), mcpu="x86-64-v3", options={"threads": 1})


@pytest.mark.parametrize("n", [1, 65, 1000])
def test_export_through_ort_is_exact(n):
    g = lookup_graph(n, 7)
    feed = {"x": np.random.default_rng(n).integers(0, 256, (3, n)).astype(np.uint8)}
    np.testing.assert_array_equal(ort_run(g.to_onnx(), feed)[0], interpret(g, feed)[0])


# -- the rewrite ---------------------------------------------------------------------------------
def _model(nodes, inits, x_shape, out_shape):
    return make_model(nodes, [("X", ["N"] + list(x_shape))], [("Y", ["N"] + list(out_shape))], inits)


def _conv_act_conv(act: str, rng, attrs=None):
    nodes = [helper.make_node("Conv", ["X", "a_w", "a_b"], ["a_c"], name="a", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node(act, ["a_c"], ["ya"], name="act", **(attrs or {})),
             helper.make_node("Conv", ["ya", "b_w", "b_b"], ["Y"], name="b", kernel_shape=[1, 1])]
    inits = {"a_w": (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32),
             "a_b": (rng.standard_normal(8) * 0.1).astype(np.float32),
             "b_w": (rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32),
             "b_b": (rng.standard_normal(4) * 0.1).astype(np.float32)}
    return _model(nodes, inits, (3, 9, 11), (4, 9, 11)), (3, 9, 11)


def _gemm_sigmoid_gemm(rng):
    nodes = [helper.make_node("Gemm", ["X", "a_w", "a_b"], ["a_c"], name="a", transB=1),
             helper.make_node("Sigmoid", ["a_c"], ["ya"], name="act"),
             helper.make_node("Gemm", ["ya", "b_w", "b_b"], ["Y"], name="b", transB=1)]
    inits = {"a_w": (rng.standard_normal((96, 64)) * 0.2).astype(np.float32),
             "a_b": (rng.standard_normal(96) * 0.1).astype(np.float32),
             "b_w": (rng.standard_normal((10, 96)) * 0.2).astype(np.float32),
             "b_b": (rng.standard_normal(10) * 0.1).astype(np.float32)}
    return _model(nodes, inits, (64,), (10,)), (64,)


def _check_lookup_ir(compiled, layer_op: str, act: str, params=()):
    q = compiled.quantization
    g, ranges = q.graph, q.calibration.ranges
    assert [(n.op, n.name) for n in g.nodes] == [("QuantizeLinear", "X/QuantizeLinear"), (layer_op, "a"),
                                                 ("QLookup", f"a/{act}"), (layer_op, "b")]
    a, lookup, b = g.nodes[1:]
    pre = qmath.choose_uint8(*ranges[preactivation_name("ya")])
    post = qmath.choose_uint8(*ranges["ya"])
    assert (a.attr("y_scale"), a.attr("y_zero_point"), a.attr("y_min"), a.attr("y_max"), a.attr("output_dtype")) == \
        (pre[0], pre[1], 0, 255, "uint8")
    assert a.attr("activation") is None
    assert lookup.inputs[0] is a.outputs[0] and lookup.outputs[0].name == "ya" and lookup.attrs == {}
    np.testing.assert_array_equal(lookup.inputs[1].const, qlookup.table(act, list(params), pre, post))
    prefix = "x" if layer_op == "QConv" else "a"
    assert b.inputs[0] is lookup.outputs[0]
    assert (b.attr(f"{prefix}_scale"), b.attr(f"{prefix}_zero_point"), b.attr("output_dtype")) == \
        (post[0], post[1], "float32")
    assert [d.output for d in q.quantized.layers] == ["uint8", "float32"]
    # the pre-activation range is the layer's output without its activation
    assert ranges[preactivation_name("ya")][0] < 0 < ranges["ya"][1]


def test_conv_hardswish_conv():
    compiled, x = quantized_with_inputs(*_conv_act_conv("HardSwish", np.random.default_rng(0)))
    _check_lookup_ir(compiled, "QConv", "HardSwish")
    check_uint8_values_exact(compiled, x)


def test_gemm_sigmoid_gemm():
    compiled, x = quantized_with_inputs(*_gemm_sigmoid_gemm(np.random.default_rng(1)))
    _check_lookup_ir(compiled, "QGemm", "Sigmoid")
    check_uint8_values_exact(compiled, x)


@pytest.mark.parametrize("act, attrs, params", [("LeakyRelu", {"alpha": 0.2}, (0.2,)), ("Tanh", {}, ()),
                                                ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, (0.3, 0.4)),
                                                ("Elu", {"alpha": 0.7}, (0.7,))])
def test_other_activations_keep_the_region(act, attrs, params):
    compiled, x = quantized_with_inputs(*_conv_act_conv(act, np.random.default_rng(2), attrs))
    _check_lookup_ir(compiled, "QConv", act, params)
    check_uint8_values_exact(compiled, x)


def test_without_preactivation_ranges_the_output_stays_float():
    """A calibration table stored before pre-activation ranges were observed: float output, as before."""
    compiled, _ = quantized_with_inputs(*_conv_act_conv("HardSwish", np.random.default_rng(0)))
    q = compiled.quantization
    ranges = {k: v for k, v in q.calibration.ranges.items() if k != preactivation_name("ya")}
    g = quantize_graph(q.fp32, ranges).graph
    assert [n.op for n in g.nodes] == ["QuantizeLinear", "QConv", "QuantizeLinear", "QConv"]
    assert (g.nodes[1].attr("output_dtype"), g.nodes[1].attr("activation")) == ("float32", "HardSwish")


def test_a_float_reader_keeps_the_float_output():
    """The activation's output is also the model's output: the layer keeps its float output."""
    model, shape = _conv_act_conv("HardSwish", np.random.default_rng(0))
    model.graph.output.append(helper.make_tensor_value_info("ya", 1, None))
    compiled, _ = quantized_with_inputs(model, shape)
    g = compiled.quantization.graph
    assert "QLookup" not in [n.op for n in g.nodes]
    assert g.nodes[1].attr("output_dtype") == "float32"


def test_standalone_activation_in_a_region():
    """conv -> Relu -> MaxPool -> Tanh -> conv: the pool stays fused, the standalone Tanh reads the
    pooled uint8 value and becomes a QLookup (its own calibrated output range) under its own name."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["X", "a_w", "a_b"], ["a_c"], name="a", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["a_c"], ["a_r"], name="relu"),
             helper.make_node("MaxPool", ["a_r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Tanh", ["p"], ["t"], name="tanh"),
             helper.make_node("Conv", ["t", "b_w", "b_b"], ["Y"], name="b", kernel_shape=[1, 1])]
    inits = {"a_w": (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32),
             "a_b": (rng.standard_normal(8) * 0.1).astype(np.float32),
             "b_w": (rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32),
             "b_b": (rng.standard_normal(4) * 0.1).astype(np.float32)}
    compiled, x = quantized_with_inputs(_model(nodes, inits, (3, 10, 12), (4, 5, 6)), (3, 10, 12))
    q = compiled.quantization
    g = q.graph
    assert [(n.op, n.name) for n in g.nodes] == [("QuantizeLinear", "X/QuantizeLinear"), ("QConv", "a"),
                                                 ("QLookup", "tanh"), ("QConv", "b")]
    a, lookup, b = g.nodes[1:]
    pre = (a.attr("y_scale"), a.attr("y_zero_point"))
    assert pre == qmath.choose_uint8(*q.calibration.ranges["p"])
    post = qmath.choose_uint8(*q.calibration.ranges["t"])
    np.testing.assert_array_equal(lookup.inputs[1].const, qlookup.table("Tanh", [], pre, post))
    assert (b.attr("x_scale"), b.attr("x_zero_point")) == post
    check_uint8_values_exact(compiled, x)
