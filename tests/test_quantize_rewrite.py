"""The quantize rewrite: exact IR after the rewrite (MNIST and a small conv/relu/pool/gemm
graph), consistency of scales along int8 chains, what stays fp32 and why, and the rewritten
graph's interpreter output against the fp32 graph."""

import numpy as np
import pytest
from onnx import helper

import lepton_compiler as lc
from lepton_compiler.api import compile_graph
from lepton_compiler.demo import bundled_model_path
from lepton_compiler.ir.verifier import verify
from lepton_compiler.ops import qmath
from lepton_compiler.ops.interpreter import interpret
from lepton_compiler.quantize.calibration import calibrate, input_specs, load_calibration
from lepton_compiler.quantize.rewrite import MIN_MACS, observed_values, quantize_graph
from conftest import make_model
from quantize_testing import mnist_calibration, small_cnn, small_data


def calibrated(graph, x, name="x", method="minmax"):
    feeds = load_calibration({name: x}, input_specs(graph))
    return calibrate(graph, feeds, observed_values(graph), method).ranges


def structure(graph):
    return [(n.op, [None if v is None else v.name for v in n.inputs], [str(v.type) for v in n.outputs])
            for n in graph.nodes]


def node(graph, name):
    return next(n for n in graph.nodes if n.name == name)


@pytest.fixture(scope="module")
def mnist():
    graph = lc.optimize(bundled_model_path())
    x, _ = mnist_calibration(200)
    return graph, x, calibrated(graph, x, "input")


def test_mnist_int8_graph(mnist):
    graph, x, ranges = mnist
    q = quantize_graph(graph, ranges)
    verify(q.graph)
    assert structure(q.graph) == [
        ("QuantizeLinear", ["input", "input_scale", "input_zero_point"], ["uint8[N, 1, 28, 28]"]),
        ("QConv", ["input_quantized", "conv1.weight_int8", "conv1.bias_int32"], ["uint8[N, 32, 13, 13]"]),
        ("QConv", ["/pool1/MaxPool_output_0", "conv2.weight_int8", "conv2.bias_int32"], ["uint8[N, 64, 5, 5]"]),
        ("QConv", ["/pool2/MaxPool_output_0", "conv3.weight_int8", "conv3.bias_int32"], ["uint8[N, 64, 3, 3]"]),
        ("Flatten", ["/relu3/Relu_output_0"], ["uint8[N, 576]"]),
        ("QGemm", ["/flatten/Flatten_output_0", "fc1.weight_int8", "fc1.bias_int32"], ["uint8[N, 64]"]),
        ("QGemm", ["/relu4/Relu_output_0", "fc2.weight_int8", "fc2.bias_int32"], ["float32[N, 10]"]),
    ]
    assert [n.name for n in q.graph.nodes[1:]] == ["/conv1/Conv", "/conv2/Conv", "/conv3/Conv", "/flatten/Flatten",
                                                  "/fc1/Gemm", "/fc2/Gemm"]
    assert q.int8_layers == ["/conv1/Conv", "/conv2/Conv", "/conv3/Conv", "/fc1/Gemm", "/fc2/Gemm"]
    assert [d.output for d in q.layers] == ["uint8"] * 4 + ["float32"]
    assert {c.name for c in q.graph.constants} == {v for n in q.graph.nodes for v in
                                                   [i.name for i in n.inputs if i.is_const]}   # no fp32 weights left
    conv1, conv2 = node(q.graph, "/conv1/Conv"), node(q.graph, "/conv2/Conv")
    assert conv1.domain == "lepton" and conv1.attrs["pool_kernel"] == [2, 2] and conv1.attrs["pool_strides"] == [2, 2]
    # Relu is the clamp [y_zero_point, 255]; every ReLU output range starts at 0, so the zero point is 0.
    for n in q.graph.nodes[1:4] + [q.graph.nodes[5]]:
        assert n.attrs["y_min"] == n.attrs["y_zero_point"] == 0 and n.attrs["y_max"] == 255
        assert "activation" not in n.attrs
    # each int8 value has one scale: the producer's y_scale is the consumer's x_scale
    assert conv2.attrs["x_scale"] == conv1.attrs["y_scale"]
    assert node(q.graph, "/fc1/Gemm").attrs["a_scale"] == node(q.graph, "/conv3/Conv").attrs["y_scale"]
    assert node(q.graph, "/fc2/Gemm").attrs["a_scale"] == node(q.graph, "/fc1/Gemm").attrs["y_scale"]
    fc2 = node(q.graph, "/fc2/Gemm")
    assert fc2.attrs["softmax"] == 1 and fc2.attrs["output_dtype"] == "float32"
    assert conv1.attrs["y_scale"] == qmath.choose_uint8(*ranges["/pool1/MaxPool_output_0"])[0]
    assert q.graph.nodes[0].inputs[1].const == np.float32(qmath.choose_uint8(*ranges["input"])[0])


def test_mnist_weights_and_bias(mnist):
    graph, _, ranges = mnist
    q = quantize_graph(graph, ranges)
    conv2 = node(q.graph, "/conv2/Conv")
    w = graph.value("conv2.weight").const
    wq, scales = conv2.inputs[1].const, np.asarray(conv2.attrs["w_scales"], np.float32)
    assert wq.dtype == np.int8 and scales.shape == (64,)
    assert np.abs(wq).reshape(64, -1).max(axis=1).tolist() == [127] * 64       # symmetric, per output channel
    assert np.all(np.abs(wq * scales[:, None, None, None] - w) <= scales[:, None, None, None] / 2 + 1e-9)
    bias = conv2.inputs[2].const
    units = np.float32(conv2.attrs["x_scale"]) * scales
    assert bias.dtype == np.int32
    assert np.array_equal(bias, np.rint(graph.value("conv2.bias").const.astype(np.float64) / units).astype(np.int32))


def test_mnist_int8_interpreter_output_close_to_fp32(mnist):
    graph, x, ranges = mnist
    q = quantize_graph(graph, ranges)
    ref = interpret(graph, {"input": x})[0]
    out = interpret(q.graph, {"input": x})[0]
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.max(np.abs(out - ref)) < 0.05
    assert np.mean(out.argmax(1) == ref.argmax(1)) >= 0.99


def test_small_graph_structure_and_values():
    graph = lc.optimize(small_cnn())
    x = small_data(40)
    q = quantize_graph(graph, calibrated(graph, x))
    verify(q.graph)
    assert structure(q.graph) == [
        ("QuantizeLinear", ["x", "x_scale", "x_zero_point"], ["uint8[N, 3, 8, 8]"]),
        ("QConv", ["x_quantized", "w1_int8", "b1_int32"], ["uint8[N, 8, 4, 4]"]),
        ("Flatten", ["p"], ["uint8[N, 128]"]),
        ("QGemm", ["f", "w2_int8", "b2_int32"], ["uint8[N, 32]"]),
        ("QGemm", ["h", "w3_int8", "b3_int32"], ["float32[N, 5]"]),
    ]
    conv = node(q.graph, "conv")
    assert conv.attrs["x_zero_point"] > 0          # a signed input: asymmetric uint8
    assert {k: conv.attrs[k] for k in ("kernel_shape", "pads", "pool_kernel")} == \
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "pool_kernel": [2, 2]}
    ref, out = interpret(graph, {"x": x})[0], interpret(q.graph, {"x": x})[0]
    assert np.max(np.abs(out - ref)) < 0.05
    # the first QConv's output is what requantizing the exact integer conv gives
    xq = qmath.quantize(x, np.float32(conv.attrs["x_scale"]), conv.attrs["x_zero_point"])
    assert np.array_equal(interpret(q.graph, {"x": x}, ["x_quantized"])[0], xq)


def test_clip_becomes_the_clamp():
    graph = lc.optimize(small_cnn(clip=True))
    ranges = calibrated(graph, small_data(40))
    q = quantize_graph(graph, ranges)
    conv = node(q.graph, "conv")
    scale, zp = conv.attrs["y_scale"], conv.attrs["y_zero_point"]
    assert zp == 0
    assert conv.attrs["y_min"] == 0 and conv.attrs["y_max"] == min(255, int(np.rint(np.float32(1.5) / np.float32(scale))))
    assert "activation" not in conv.attrs


def test_keep_fp32_and_region_edges():
    graph = lc.optimize(small_cnn())
    ranges = calibrated(graph, small_data(40))
    q = quantize_graph(graph, ranges, keep_fp32=["conv"])
    assert [n.op for n in q.graph.nodes] == ["FusedConv", "Flatten", "QuantizeLinear", "QGemm", "QGemm"]
    assert q.graph.nodes[2].inputs[0].name == "f" and q.fp32_layers == ["conv"]
    assert q.layers[0].reason == "keep_fp32"
    # fc1 in fp32: fc2 (160 multiply-adds) would open a region of its own: not worth it;
    # the conv's output then feeds fp32 code: float output with its Relu.
    q = quantize_graph(graph, ranges, keep_fp32=["fc1"])
    assert [n.op for n in q.graph.nodes] == ["QuantizeLinear", "QConv", "Flatten", "FusedGemm", "FusedGemm"]
    conv = node(q.graph, "conv")
    assert conv.attrs["output_dtype"] == "float32" and conv.attrs["activation"] == "Relu"
    fc2 = next(d for d in q.layers if d.name == "fc2")
    assert not fc2.int8 and fc2.reason.startswith("not worth it: 160 multiply-adds per item") and 160 < MIN_MACS
    ref, out = interpret(graph, {"x": small_data(5)})[0], interpret(q.graph, {"x": small_data(5)})[0]
    assert np.max(np.abs(out - ref)) < 0.05
    with pytest.raises(lc.LeptonError) as info:
        quantize_graph(graph, ranges, keep_fp32=["relu"])
    assert str(info.value) == "keep_fp32: the model has no conv or dense layer 'relu'; its layers: conv, fc1, fc2"


def test_graph_output_and_float_reader_get_float_outputs():
    graph = lc.optimize(small_cnn())
    graph.outputs.append(graph.value("h"))          # fc1's output is also a model output
    q = quantize_graph(graph, calibrated(graph, small_data(20)))
    fc1, fc2 = node(q.graph, "fc1"), node(q.graph, "fc2")
    assert fc1.attrs["output_dtype"] == "float32" and fc1.attrs["activation"] == "Relu"
    assert fc2.inputs[0].producer.op == "QuantizeLinear"   # a new int8 region starts after it
    assert [str(v.type) for v in q.graph.outputs] == ["float32[N, 5]", "float32[N, 32]"]


def test_unsupported_layers_stay_fp32():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "x2"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "wdyn"], ["y"], name="dynamic", kernel_shape=[1, 1]),
             helper.make_node("Flatten", ["y"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "g"], ["z"], name="gemm_t", transA=1)]
    model = make_model(nodes, [("x", [2, 4, 6, 6]), ("x2", [2, 4, 1, 1]), ("wdyn", [4, 4, 1, 1])], [("z", [144, 3])],
                       {"w": rng.normal(0, 1, (4, 4, 3, 3)).astype(np.float32),
                        "b": np.zeros(4, np.float32), "g": rng.normal(0, 1, (2, 3)).astype(np.float32)})
    graph = lc.optimize(model)
    assert observed_values(graph) == []
    q = quantize_graph(graph, {})
    assert {d.name: d.reason for d in q.layers} == {"conv": "its residual float32[2, 4, 1, 1] broadcasts (int8 takes "
                                                            "one of the conv output's shape)",
                                                    "dynamic": "its weights are not constant",
                                                    "gemm_t": "transA is not supported in int8"}
    assert not any(n.op.startswith("Q") for n in q.graph.nodes)


def test_missing_range_is_an_error():
    graph = lc.optimize(small_cnn())
    with pytest.raises(lc.LeptonError, match="quantize: no calibrated range for 'x' \\(layer 'conv'\\)"):
        quantize_graph(graph, {})


# -- residual adds -----------------------------------------------------------------------------------
def residual_cnn(seed=0):
    """conv1 -> Relu (h) -> conv2 + h -> Relu (s) -> conv3 + x -> Relu -> Flatten -> Gemm: an identity
    shortcut from inside the int8 region (h) and one from the model input (x, fp32)."""
    rng = np.random.default_rng(seed)
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", **conv),
             helper.make_node("Relu", ["c1"], ["h"], name="relu1"),
             helper.make_node("Conv", ["h", "w2", "b2"], ["c2"], name="conv2", **conv),
             helper.make_node("Add", ["c2", "h"], ["a2"], name="add2"),
             helper.make_node("Relu", ["a2"], ["s"], name="relu2"),
             helper.make_node("Conv", ["s", "w3"], ["c3"], name="conv3", **conv),
             helper.make_node("Add", ["x", "c3"], ["a3"], name="add3"),
             helper.make_node("Relu", ["a3"], ["t"], name="relu3"),
             helper.make_node("Flatten", ["t"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wf"], ["y"], name="fc", transB=1)]
    inits = {"w1": rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), "b1": rng.normal(0, 0.1, 8).astype(np.float32),
             "w2": rng.normal(0, 0.15, (8, 8, 3, 3)).astype(np.float32), "b2": rng.normal(0, 0.1, 8).astype(np.float32),
             "w3": rng.normal(0, 0.15, (8, 8, 3, 3)).astype(np.float32),
             "wf": rng.normal(0, 0.1, (5, 8 * 6 * 6)).astype(np.float32)}
    return make_model(nodes, [("x", ["N", 8, 6, 6])], [("y", ["N", 5])], inits)


def test_residual_adds_quantize():
    graph = lc.optimize(residual_cnn())
    assert [n.op for n in graph.nodes] == ["FusedConv", "FusedConv", "FusedConv", "Flatten", "Gemm"]
    x = np.random.default_rng(3).normal(0, 1, (40, 8, 6, 6)).astype(np.float32)
    ranges = calibrated(graph, x)
    assert {"x", "h", "s", "t"} <= set(observed_values(graph))
    q = quantize_graph(graph, ranges)
    verify(q.graph)
    assert structure(q.graph) == [
        ("QuantizeLinear", ["x", "x_scale", "x_zero_point"], ["uint8[N, 8, 6, 6]"]),
        ("QConv", ["x_quantized", "w1_int8", "b1_int32"], ["uint8[N, 8, 6, 6]"]),
        ("QConv", ["h", "w2_int8", "b2_int32", "h"], ["uint8[N, 8, 6, 6]"]),
        ("QConv", ["s", "w3_int8", None, "x_quantized"], ["uint8[N, 8, 6, 6]"]),
        ("Flatten", ["t"], ["uint8[N, 288]"]),
        ("QGemm", ["f", "wf_int8"], ["float32[N, 5]"]),
    ]
    conv1, conv2, conv3 = (node(q.graph, n) for n in ("conv1", "conv2", "conv3"))
    # the residual's scale is its producer's (conv1's output) or the region edge's QuantizeLinear
    assert (conv2.attrs["r_scale"], conv2.attrs["r_zero_point"]) == (conv1.attrs["y_scale"], conv1.attrs["y_zero_point"])
    assert (conv3.attrs["r_scale"], conv3.attrs["r_zero_point"]) == (conv1.attrs["x_scale"], conv1.attrs["x_zero_point"])
    assert conv2.attrs["y_scale"] == qmath.choose_uint8(*ranges["s"])[0]
    assert conv2.attrs["y_min"] == conv2.attrs["y_zero_point"] == 0      # Relu after the add: the clamp
    assert q.int8_layers == ["conv1", "conv2", "conv3", "fc"]
    ref, out = interpret(graph, {"x": x})[0], interpret(q.graph, {"x": x})[0]
    assert 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((out - ref).astype(np.float64) ** 2)) > 30
    # the same int8 graph compiled: equal to the interpreter
    model = compile_graph(q.graph)
    np.testing.assert_allclose(model.run(None, {"x": x})[0], out, rtol=1e-5, atol=1e-5)


def test_residual_layer_after_an_fp32_layer():
    """conv2 in fp32 (keep_fp32): conv3's input ``s`` comes from fp32 code and is quantized at the edge,
    its residual ``x`` shares the QuantizeLinear conv1 reads; conv1's output h feeds fp32 conv2, so
    conv1 ends its region with a float output."""
    graph = lc.optimize(residual_cnn())
    x = np.random.default_rng(3).normal(0, 1, (40, 8, 6, 6)).astype(np.float32)
    q = quantize_graph(graph, calibrated(graph, x), keep_fp32=["conv2"])
    assert [n.op for n in q.graph.nodes] == ["QuantizeLinear", "QConv", "FusedConv", "QuantizeLinear", "QConv",
                                             "Flatten", "QGemm"]
    assert node(q.graph, "conv1").attrs["output_dtype"] == "float32"
    conv3 = node(q.graph, "conv3")
    assert conv3.inputs[0].producer.op == "QuantizeLinear" and conv3.inputs[3].name == "x_quantized"
