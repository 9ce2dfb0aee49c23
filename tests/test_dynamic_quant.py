"""Dynamic quantization (``onnxruntime.quantization.quantize_dynamic``): DynamicQuantizeLinear against
ONNX Runtime bit for bit, the fuse-dynamic-quant pass's IR on models quantize_dynamic makes here, and
the compiled DynQGemm on every int8 dot-product path equal to ONNX Runtime running the same model
(exactly: same int32 accumulators, same fp32 operations in the same order)."""

import logging
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lepton_compiler as lc
from lepton_compiler.api import optimize
from lepton_compiler.backends.llvm import int8dot
from lepton_compiler.backends.llvm.target import host_target
from lepton_compiler.demo import bundled_model_path, mnist_test_images
from lepton_compiler.errors import UnsupportedOpError
from lepton_compiler.ops import interpret
from lepton_compiler.ops.dynamic_quant import dynamic_quantize

quantization = pytest.importorskip("onnxruntime.quantization")
logging.getLogger().setLevel(logging.ERROR)   # quantize_dynamic's "consider pre-processing" warning

HOST_PATH = int8dot.path_name(host_target())
PATHS = [p for p in int8dot.PATHS if p in int8dot._RUNS[HOST_PATH]]


# -- models --------------------------------------------------------------------------------------------
def mlp(dims, rank=2, bias=True, seq=5, shared_input=False, seed=0) -> onnx.ModelProto:
    """MatMul (+ Add) (+ Relu between layers); rank 3 reads ``x[N, seq, K]``. ``shared_input``: a
    second MatMul reads the first layer's input too (quantize_dynamic shares its DynamicQuantizeLinear)."""
    rng = np.random.default_rng(seed)
    inits, nodes, x = [], [], "x"
    for i, (k, n) in enumerate(zip(dims[:-1], dims[1:])):
        inits.append(numpy_helper.from_array((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), f"W{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"W{i}"], [f"mm{i}"], name=f"mm{i}"))
        x = f"mm{i}"
        if bias:
            inits.append(numpy_helper.from_array((rng.standard_normal(n) * 0.1).astype(np.float32), f"B{i}"))
            nodes.append(helper.make_node("Add", [x, f"B{i}"], [f"add{i}"], name=f"add{i}"))
            x = f"add{i}"
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"relu{i}"], name=f"relu{i}"))
            x = f"relu{i}"
    lead = ["N"] if rank == 2 else ["N", seq]
    outputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, lead + [dims[-1]])]
    if shared_input:
        inits.append(numpy_helper.from_array(rng.standard_normal((dims[0], 7)).astype(np.float32), "Wside"))
        nodes.append(helper.make_node("MatMul", ["x", "Wside"], ["side"], name="side"))
        outputs.append(helper.make_tensor_value_info("side", TensorProto.FLOAT, lead + [7]))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, lead + [dims[0]])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def quantized(tmp_path, model: onnx.ModelProto, name="m", **options) -> str:
    src, dst = tmp_path / f"{name}.onnx", tmp_path / f"{name}_int8.onnx"
    onnx.save(model, str(src))
    options.setdefault("weight_type", quantization.QuantType.QInt8)
    quantization.quantize_dynamic(str(src), str(dst), **options)
    return str(dst)


def ort_run(path, feeds):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]).run(None, feeds)


def feed(shape, seed=0, kind="normal"):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32) * 3
    return {"normal": x, "positive": np.abs(x) + 0.5, "negative": -np.abs(x) - 0.25,
            "constant": np.full(shape, 1.75, np.float32), "zeros": np.zeros(shape, np.float32)}[kind]


def assert_same(got, expected):
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_array_equal(g, e)


# -- DynamicQuantizeLinear --------------------------------------------------------------------------
def _dql_model(shape) -> bytes:
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "y_scale", "y_zero_point"], name="dql")
    graph = helper.make_graph([node], "dql", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, shape),
                               helper.make_tensor_value_info("y_scale", TensorProto.FLOAT, []),
                               helper.make_tensor_value_info("y_zero_point", TensorProto.UINT8, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _dql_inputs():
    rng = np.random.default_rng(7)
    fixed = [rng.standard_normal((7, 33)), np.abs(rng.standard_normal((5, 9))) + 0.1,
             -np.abs(rng.standard_normal(64)) - 3, np.full((4, 4), 2.5), np.full(3, -1.0), np.zeros(6),
             np.array([3.7]), np.array([-0.2]), np.array([0.0]), rng.uniform(-1e-30, 1e-30, 100),
             rng.standard_normal((3, 5, 200)) * 1e4, rng.uniform(-3, 100, 1000),
             rng.integers(-255, 256, 513) / 2.0, np.linspace(-1, 1, 256), np.array([1e-38, -1e-38])]
    for seed in range(60):
        r = np.random.default_rng(seed)
        fixed.append(r.standard_normal(r.integers(1, 300)) * r.uniform(0.01, 100) + r.uniform(-3, 3))
    return [np.asarray(x, np.float32) for x in fixed]


def test_dynamic_quantize_linear_equals_ort():
    """y, scale (its bits) and zero point, on random, all-positive, all-negative, constant, all-zero,
    single-element, tiny and huge inputs; through the importer and the reference interpreter too."""
    for x in _dql_inputs():
        expected = ort.InferenceSession(_dql_model(list(x.shape)), providers=["CPUExecutionProvider"]).run(None, {"x": x})
        q, scale, zp = dynamic_quantize(x)
        np.testing.assert_array_equal(q, expected[0])
        assert np.float32(scale).tobytes() == expected[1].tobytes()
        assert zp == expected[2]
    x = _dql_inputs()[0]
    graph = lc.optimize(_dql_model(list(x.shape)), opt_level=0)
    got = interpret(graph, {"x": x})
    expected = ort.InferenceSession(_dql_model(list(x.shape)), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert [g.dtype for g in got] == [np.uint8, np.float32, np.uint8]
    assert_same([np.asarray(g) for g in got], expected)


# -- the pass -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_pass_builds_dynqgemm(tmp_path, per_channel, rank, bias):
    dims = (24, 40, 10)
    path = quantized(tmp_path, mlp(dims, rank=rank, bias=bias), per_channel=per_channel)
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}
    graph = optimize(path)
    assert [n.op for n in graph.nodes] == ["DynQGemm", "DynQGemm"]
    first, second = graph.nodes
    assert first.inputs[0] is graph.inputs[0] and second.inputs[0] is first.outputs[0]
    assert second.outputs[0] is graph.outputs[0]
    assert (first.attr("activation"), second.attr("activation")) == ("Relu", "")
    for i, node in enumerate(graph.nodes):
        assert node.domain == "lepton" and len(node.inputs) == (3 if bias else 2)
        w, zp = weights[f"W{i}_quantized"], weights[f"W{i}_zero_point"]
        np.testing.assert_array_equal(node.inputs[1].const, (w.astype(np.int64) - zp.astype(np.int64)).T)
        assert node.inputs[1].const.dtype == np.int8
        np.testing.assert_array_equal(np.float32(node.attr("b_scales")), weights[f"W{i}_scale"].ravel())
        assert len(node.attr("b_scales")) == (dims[i + 1] if per_channel else 1)
        if bias:
            np.testing.assert_array_equal(node.inputs[2].const, weights[f"B{i}"])
    assert graph.outputs[0].type.shape == (("N", 10) if rank == 2 else ("N", 5, 10))


def test_shared_dynamic_quantize_feeds_two_layers(tmp_path):
    path = quantized(tmp_path, mlp((16, 12, 6), shared_input=True))
    graph = optimize(path)
    assert sorted(n.op for n in graph.nodes) == ["DynQGemm"] * 3
    assert sum(n.inputs[0] is graph.inputs[0] for n in graph.nodes) == 2
    x = feed((9, 16))
    assert_same(lc.compile(path, threads=1).run(None, {"x": x}), ort_run(path, {"x": x}))


def test_uint8_weights_that_do_not_fit_int8_stay_and_are_refused(tmp_path):
    path = quantized(tmp_path, mlp((16, 12, 6)), weight_type=quantization.QuantType.QUInt8)
    graph = optimize(path)
    assert "MatMulInteger" in [n.op for n in graph.nodes]   # (a layer whose w - zp happens to fit int8 is fused)
    x = feed((4, 16))
    assert_same([np.asarray(v) for v in interpret(graph, {"x": x})], ort_run(path, {"x": x}))
    with pytest.raises(UnsupportedOpError, match="DynamicQuantizeLinear|MatMulInteger"):
        lc.compile(path)


# -- compiled, against ONNX Runtime ------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dynq")
    return {
        "per-tensor": quantized(tmp, mlp((37, 19, 5)), "a"),
        "per-channel": quantized(tmp, mlp((64, 130, 33, 10), seed=1), "b", per_channel=True),
        "rank3": quantized(tmp, mlp((29, 48, 7), rank=3, seed=2), "c", per_channel=True),
        "no-bias": quantized(tmp, mlp((8, 17, 3), bias=False, seed=3), "d"),
    }


@pytest.mark.parametrize("path", PATHS)
def test_every_path_equals_ort(models, path):
    """Bit for bit: DynamicQuantizeLinear's range, scale, zero point and rounding, the exact int32
    sums, fp32(acc) * fp32(a_scale * w_scale), then + bias, then Relu, as ONNX Runtime computes them."""
    for name, model_path in models.items():
        with int8dot.forced_path(path):
            model = lc.compile(model_path, threads=1)
        for batch in (1, 3, 16):
            shape = (batch, 5) if name == "rank3" else (batch,)
            k = onnx.load(model_path).graph.input[0].type.tensor_type.shape.dim[-1].dim_value
            for kind in ("normal", "positive", "negative", "constant", "zeros"):
                x = feed(shape + (k,), seed=batch, kind=kind)
                got, expected = model.run(None, {"x": x}), ort_run(model_path, {"x": x})
                assert_same(got, expected)
        x = feed((2, 5, k) if name == "rank3" else (2, k))
        assert_same([np.asarray(v) for v in interpret(optimize(model_path), {"x": x})], ort_run(model_path, {"x": x}))


def test_two_threads_split_rows_after_the_whole_range(tmp_path):
    """Rows split across threads (above the 4 M multiply-add threshold); the range is of the whole
    tensor on every thread, so the result is the same bits as one thread and as ONNX Runtime."""
    path = quantized(tmp_path, mlp((512, 300, 10)), per_channel=True)
    one, two = lc.compile(path, threads=1), lc.compile(path, threads=2)
    for batch in (31, 64):
        x = feed((batch, 512), seed=batch)
        x[batch - 1, 3] = 40.0   # the range is set by the last row, which the second thread owns
        expected = ort_run(path, {"x": x})
        assert_same(one.run(None, {"x": x}), expected)
        assert_same(two.run(None, {"x": x}), expected)


def test_vnni_build_uses_vpdpbusd(models):
    if not HOST_PATH.startswith("vnni"):
        pytest.skip("this host has no VNNI")
    asm = lc.compile(models["per-channel"]).assembly()
    assert re.search(r"vpdpbusd\s+.*%zmm", asm) if HOST_PATH == "vnni512" else "vpdpbusd" in asm


# -- MNIST ----------------------------------------------------------------------------------------------
def test_mnist_dynamic_matches_ort_argmax(tmp_path):
    """The bundled CNN with its Gemm layers quantized by quantize_dynamic (the convs stay fp32):
    lepton's argmax agrees with ONNX Runtime's on the 1000 test images. Not bit for bit: lepton's
    fp32 convs (and Winograd) round differently from ONNX Runtime's, so fc1's run-time range can
    differ by an ulp; the int8 layers themselves are exact (the tests above)."""
    images, _ = mnist_test_images()
    path = quantized(tmp_path, onnx.load(bundled_model_path()), "mnist", per_channel=True,
                     op_types_to_quantize=["MatMul", "Gemm"])
    graph = optimize(path)
    assert [n.op for n in graph.nodes if n.op == "DynQGemm"] == ["DynQGemm"] * 2
    model = lc.compile(path, threads=1)
    agree = 0
    for start in range(0, len(images), 100):
        x = images[start:start + 100]
        got, expected = model.run(None, {"input": x})[0], ort_run(path, {"input": x})[0]
        agree += int((got.argmax(1) == expected.argmax(1)).sum())
        np.testing.assert_allclose(got, expected, atol=2e-3)
    assert agree >= 990, f"{agree} of 1000"


def test_mnist_conv_integer_is_refused_clearly(tmp_path):
    """quantize_dynamic's ConvInteger (run-time activation zero point) has no CPU kernel: refused by name."""
    path = quantized(tmp_path, onnx.load(bundled_model_path()), "mnist_all")
    with pytest.raises(UnsupportedOpError, match="ConvInteger"):
        lc.compile(path)
