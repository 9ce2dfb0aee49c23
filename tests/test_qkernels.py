"""The int8 kernels (QConv, QGemm, QuantizeLinear, DequantizeLinear) on every dot-product path
(VNNI 512/256, pmaddwd 512/256, portable) against the reference interpreter: uint8 outputs
exactly equal, float outputs to a few ulps."""

import re

import numpy as np
import pytest

from lepton_compiler.api import compile_graph
from lepton_compiler.backends.llvm import int8dot
from lepton_compiler.backends.llvm.target import host_target, named_target
from lepton_compiler.errors import LeptonError, UnsupportedOpError
from lepton_compiler.ops import interpret
from qkernel_testing import RESIDUAL_CASES, QBuilder, add_qconv, add_qgemm, mnist_int8_graph, residual_graph

HOST_PATH = int8dot.path_name(host_target())
PATHS = [p for p in int8dot.PATHS if p in int8dot._RUNS[HOST_PATH]]

# (channels, spatial, out channels, kernel, attrs, options of add_qconv)
CONV_CASES = [
    (3, (9, 11), 20, (3, 3), {}, {}),
    (1, (28, 28), 32, (3, 3), dict(pool_kernel=[2, 2], pool_strides=[2, 2]), dict(x_zero_point=0)),
    (5, (8, 7), 17, (3, 2), dict(pads=[1, 0, 2, 1], strides=[2, 1]), dict(per_channel=False)),
    (6, (9, 9), 33, (3, 3), dict(dilations=[2, 2], pads=[1, 1, 1, 1], y_min=95, y_max=200), {}),
    (7, (10, 9), 12, (5, 5), dict(pads=[2, 2, 2, 2], strides=[2, 2], dilations=[1, 2]), dict(x_zero_point=255)),
    (32, (13, 13), 64, (3, 3), dict(pool_kernel=[2, 2], pool_strides=[2, 2], y_min=90), {}),
    (9, (7, 8), 19, (3, 3), dict(pads=[1, 1, 1, 1], pool_kernel=[3, 3], pool_strides=[2, 2], pool_pads=[1, 1, 1, 1]),
     {}),
    (4, (7, 7), 10, (3, 3), dict(activation="Relu"), dict(output_dtype="float32")),
    (5, (6, 5), 9, (2, 2), dict(activation="Tanh", pool_kernel=[2, 2]), dict(output_dtype="float32", bias=False)),
    (2, (15,), 11, (4,), dict(pads=[2, 1], strides=[2]), {}),
    (64, (5, 5), 64, (3, 3), dict(y_min=90), {}),
    (3, (6, 6), 8, (1, 1), {}, dict(bias=False, w_range=1)),
]
GEMM_CASES = [  # (depth, cols, attrs, options of add_qgemm)
    (576, 64, dict(y_min=70), {}),
    (13, 10, {}, dict(per_channel=False)),
    (37, 19, dict(y_min=80, y_max=120), dict(bias=False)),
    (64, 10, dict(softmax=1), dict(output_dtype="float32")),
    (30, 17, dict(activation="Relu"), dict(output_dtype="float32", a_zero_point=0)),
]


def conv_graph(seed=0):
    rng = np.random.default_rng(seed)
    b = QBuilder()
    outs = []
    for i, (channels, spatial, oc, kernel, attrs, options) in enumerate(CONV_CASES):
        x = b.input(f"x{i}", ("N", channels, *spatial), "uint8")
        outs.append(add_qconv(b, rng, x, oc, kernel, dict(attrs, kernel_shape=list(kernel)), **options))
    for i, (depth, cols, attrs, options) in enumerate(GEMM_CASES):
        a = b.input(f"a{i}", ("N", depth), "uint8")
        outs.append(add_qgemm(b, rng, a, cols, attrs, **options))
    return b.graph(*outs)


def feeds_for(graph, batch, seed=1):
    rng = np.random.default_rng(seed)
    return {v.name: rng.integers(0, 256, (batch,) + v.type.shape[1:]).astype(np.uint8) for v in graph.inputs}


def assert_matches(got, expected):
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape
        if g.dtype == np.uint8:
            np.testing.assert_array_equal(g, e)
        else:
            np.testing.assert_allclose(g, e, rtol=2e-6, atol=1e-6)


@pytest.fixture(scope="module")
def graph():
    return conv_graph()


@pytest.mark.parametrize("path", PATHS)
def test_every_path_equals_the_interpreter(graph, path):
    with int8dot.forced_path(path):
        model = compile_graph(graph, options={"threads": 1})
    for batch in (1, 7):
        feeds = feeds_for(graph, batch, seed=batch)
        assert_matches(model.run(None, feeds), interpret(graph, feeds))


@pytest.mark.parametrize("level, path", [("x86-64-v3", "pmaddwd256"), ("x86-64-v2", "portable"),
                                         ("x86-64-v4", "pmaddwd512")])
def test_x86_levels_choose_their_path(graph, level, path):
    target = named_target(level)
    assert int8dot.path_name(target) == path
    if path not in int8dot._RUNS[HOST_PATH]:
        pytest.skip(f"this host cannot run {level} code")
    model = compile_graph(graph, mcpu=level, options={"threads": 1})
    feeds = feeds_for(graph, 3)
    assert_matches(model.run(None, feeds), interpret(graph, feeds))


def test_two_threads_split_the_work():
    rng = np.random.default_rng(5)
    b = QBuilder()
    x = b.input("x", ("N", 32, 13, 13), "uint8")
    a = b.input("a", ("N", 600), "uint8")
    conv = add_qconv(b, rng, x, 64, (3, 3), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    fc = add_qgemm(b, rng, a, 130, dict(y_min=75))
    g = b.graph(conv, fc)
    model = compile_graph(g, options={"threads": 2})
    for batch in (7, 64):
        feeds = feeds_for(g, batch)
        assert_matches(model.run(None, feeds), interpret(g, feeds))


def test_vnni_build_uses_vpdpbusd(graph):
    if not HOST_PATH.startswith("vnni"):
        pytest.skip("this host has no VNNI")
    asm = compile_graph(graph).assembly()
    assert re.search(r"vpdpbusd\s+.*%zmm", asm) if HOST_PATH == "vnni512" else "vpdpbusd" in asm
    with int8dot.forced_path("vnni256"):
        asm256 = compile_graph(graph).assembly()
    assert re.search(r"vpdpbusd\s+.*%ymm", asm256) and not re.search(r"vpdpbusd\s+.*%zmm", asm256)


def test_avx2_build_uses_exact_vpmaddwd(graph):
    if "pmaddwd256" not in PATHS:
        pytest.skip("this host has no AVX2")
    asm = compile_graph(graph, mcpu="x86-64-v3").assembly()
    assert "vpmaddwd" in asm and "vpmaddubsw" not in asm and "vpdpbusd" not in asm and "zmm" not in asm


def test_forcing_a_path_the_target_lacks_is_refused(graph):
    with int8dot.forced_path("vnni512"), pytest.raises(LeptonError, match="cannot run"):
        compile_graph(graph, mcpu="x86-64-v3")


# -- grouped and depthwise convolutions, large layers ----------------------------------------------
def dw(channels, **attrs):
    return dict(group=channels, **attrs)


GROUP_CASES = [  # as CONV_CASES; group == channels == out channels is depthwise
    (16, (9, 10), 16, (3, 3), dw(16, pads=[1, 1, 1, 1]), {}),
    (19, (7, 8), 19, (3, 3), dw(19, strides=[2, 2], pads=[1, 0, 1, 1]), dict(x_zero_point=255)),
    (24, (11, 9), 24, (5, 5), dw(24, pads=[2, 2, 2, 2], dilations=[1, 2], y_min=95, y_max=200), {}),
    (33, (10, 10), 33, (3, 3), dw(33, pads=[1, 1, 1, 1], pool_kernel=[2, 2], pool_strides=[2, 2], y_min=90),
     dict(x_zero_point=0)),
    (17, (9, 8), 17, (3, 3), dw(17, pool_kernel=[3, 3], pool_strides=[2, 2], pool_pads=[1, 1, 1, 1]),
     dict(per_channel=False)),
    (8, (6, 6), 8, (3, 3), dw(8, activation="Relu"), dict(output_dtype="float32")),
    (9, (5, 7), 9, (2, 2), dw(9, activation="Tanh", pool_kernel=[2, 2]), dict(output_dtype="float32", bias=False)),
    (5, (15,), 5, (3,), dw(5, pads=[1, 2], strides=[2]), {}),
    (6, (7, 7), 12, (3, 3), dict(group=6, pads=[1, 1, 1, 1]), {}),                  # channel multiplier 2
    (8, (9, 9), 12, (3, 3), dict(group=4, pads=[1, 1, 1, 1], y_min=100), {}),       # 2 in, 3 out per group
    (64, (6, 6), 64, (3, 3), dict(group=2), {}),
    (12, (8, 9), 18, (2, 3), dict(group=3, strides=[2, 2]), dict(per_channel=False)),
    (16, (6, 6), 32, (1, 1), dict(group=4, pool_kernel=[2, 2], pool_strides=[2, 2]), {}),
    (6, (12, 11), 9, (5, 5), dict(group=3, pads=[2, 2, 2, 2]), dict(x_zero_point=200)),
    (10, (7, 7), 15, (3, 3), dict(group=5, dilations=[2, 2], pads=[2, 2, 2, 2], activation="Relu"),
     dict(output_dtype="float32")),
    (40, (5, 6), 24, (3, 3), dict(group=8, pads=[1, 1, 1, 1], y_min=92, y_max=180), {}),
    (2, (12, 11), 40, (7, 7), dict(group=2, pads=[3, 3, 3, 2], pool_kernel=[2, 2], pool_strides=[2, 2]), {}),
]


def group_graph(seed=2):
    rng = np.random.default_rng(seed)
    b = QBuilder()
    outs = []
    for i, (channels, spatial, oc, kernel, attrs, options) in enumerate(GROUP_CASES):
        x = b.input(f"x{i}", ("N", channels, *spatial), "uint8")
        outs.append(add_qconv(b, rng, x, oc, kernel, dict(attrs, kernel_shape=list(kernel)), **options))
    return b.graph(*outs)


@pytest.mark.parametrize("path", PATHS)
def test_grouped_and_depthwise_on_every_path(path):
    g = group_graph()
    with int8dot.forced_path(path):
        model = compile_graph(g, options={"threads": 1})
    for batch in (1, 3):
        feeds = feeds_for(g, batch, seed=batch + 10)
        assert_matches(model.run(None, feeds), interpret(g, feeds))


@pytest.mark.parametrize("path", PATHS)
def test_banded_staging_on_every_path(path, monkeypatch):
    """Every case staged in bands of output rows (tiny limits), grouped and depthwise too."""
    from lepton_compiler.backends.llvm import qconv

    monkeypatch.setattr(qconv, "MAX_STAGE_BYTES", 0)
    monkeypatch.setattr(qconv, "MAX_BAND_BYTES", 700)
    rng = np.random.default_rng(8)
    b = QBuilder()
    outs = []
    for i, (channels, spatial, oc, kernel, attrs, options) in enumerate(CONV_CASES[:9] + GROUP_CASES[:5] + GROUP_CASES[9:11] + GROUP_CASES[-1:]):
        x = b.input(f"x{i}", ("N", channels, *spatial), "uint8")
        outs.append(add_qconv(b, rng, x, oc, kernel, dict(attrs, kernel_shape=list(kernel)), **options))
    g = b.graph(*outs)
    with int8dot.forced_path(path):
        model = compile_graph(g, options={"threads": 1})
    feeds = feeds_for(g, 2, seed=4)
    assert_matches(model.run(None, feeds), interpret(g, feeds))


def test_large_layers_are_staged_in_bands():
    """224x224x64 (3.2 MB staged) and a depthwise one, plus a pooled 130x130x64: exact, batch 1."""
    from lepton_compiler.backends.llvm import qconv

    rng = np.random.default_rng(9)
    b = QBuilder()
    x = b.input("x", ("N", 64, 224, 224), "uint8")
    x2 = b.input("x2", ("N", 64, 130, 130), "uint8")
    outs = [add_qconv(b, rng, x, 16, (3, 3), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], y_min=90)),
            add_qconv(b, rng, x, 64, (3, 3), dict(kernel_shape=[3, 3], pads=[0, 0, 1, 1], strides=[2, 2],
                                                  group=64)),
            add_qconv(b, rng, x2, 8, (3, 3), dict(kernel_shape=[3, 3], pool_kernel=[3, 3], pool_strides=[2, 2],
                                                  pool_pads=[1, 1, 1, 1]))]
    g = b.graph(*outs)
    assert 64 * 226 * 226 > qconv.MAX_STAGE_BYTES and 64 * 132 * 130 > qconv.MAX_STAGE_BYTES
    model = compile_graph(g, options={"threads": 1})
    feeds = feeds_for(g, 1)
    assert_matches(model.run(None, feeds), interpret(g, feeds))


def test_input_too_large_to_stage_is_refused_clearly():
    """Refused only when the rows one output row reads exceed the stack budget."""
    rng = np.random.default_rng(0)
    b = QBuilder()
    x = b.input("x", (1, 2048, 200, 200), "uint8")
    y = add_qconv(b, rng, x, 8, (3, 3), dict(kernel_shape=[3, 3]))
    with pytest.raises(UnsupportedOpError, match="staged input"):
        compile_graph(b.graph(y))


# -- QuantizeLinear / DequantizeLinear ---------------------------------------------------------
SPECIAL = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 0.5, 1.5, 2.5, -0.5, -2.5, 127.5, -128.5, 3e9, -0.0],
                   np.float32)


def quantize_graph(shape, dtype, per_axis, axis=1):
    rng = np.random.default_rng(3)
    b = QBuilder()
    x = b.input("x", shape, "float32")
    count = shape[axis] if per_axis else 1
    scale = rng.uniform(0.01, 0.5, count).astype(np.float32) if per_axis else np.float32(0.37)
    lo, hi = (0, 255) if dtype == "uint8" else (-128, 127)
    zp = rng.integers(lo, hi + 1, count).astype(dtype) if per_axis else np.array(lo + 77, dtype)
    attrs = {"axis": axis} if per_axis else {}
    q = b.op("QuantizeLinear", [x, b.const("s", scale), b.const("z", zp)], attrs)
    s2 = (scale * 1.5).astype(np.float32)
    d = b.op("DequantizeLinear", [q, b.const("s2", s2), b.const("z2", zp)], attrs)
    return b.graph(q, d)


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("per_axis, axis", [(False, 1), (True, 1), (True, 3), (True, -3)])
def test_quantize_and_dequantize(dtype, per_axis, axis):
    shape = ("N", 3, 4, 5)
    g = quantize_graph(shape, dtype, per_axis, axis)
    model = compile_graph(g, options={"threads": 1})
    rng = np.random.default_rng(4)
    for batch in (1, 7):
        x = (rng.standard_normal((batch, 3, 4, 5)) * 60).astype(np.float32)
        x.reshape(-1)[:len(SPECIAL)] = SPECIAL
        x.reshape(-1)[-len(SPECIAL):] = SPECIAL * np.float32(0.37)   # exact halves after the division
        expected = interpret(g, {"x": x})
        got = model.run(None, {"x": x})
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])


def test_dequantize_int32_and_scalar_shapes():
    rng = np.random.default_rng(6)
    b = QBuilder()
    x = b.input("x", ("N", 6), "int32")
    d = b.op("DequantizeLinear", [x, b.const("s", np.float32(0.001)), b.const("z", np.int32(-12345))])
    g = b.graph(d)
    model = compile_graph(g)
    x = rng.integers(-2**31, 2**31, (5, 6)).astype(np.int32)
    x[0, :2] = [-2**31, 2**31 - 1]
    np.testing.assert_array_equal(model.run(None, {"x": x})[0], interpret(g, {"x": x})[0])


# -- the MNIST CNN, quantized by hand ------------------------------------------------------------
def test_int8_mnist_matches_the_interpreter():
    from lepton_compiler.demo import bundled_model_path, mnist_test_images

    images, labels = mnist_test_images()
    g = mnist_int8_graph(bundled_model_path(), images[:100])
    model = compile_graph(g, options={"threads": 1})
    x = images[:64]
    expected = interpret(g, {"input": x})[0]
    got = model(x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert (got.argmax(1) == labels[:64]).mean() >= 0.95
    np.testing.assert_allclose(model(images[:1]), expected[:1], rtol=1e-5, atol=1e-6)


# -- QConv with a residual (uint8, added before rounding, clamp, activation and pooling) ----------------
def test_residual_reference_is_the_documented_formula():
    """The interpreter's QConv with a residual is ``clamp(rint(fp32(acc) * M + fp32(r - r_zp) * R) + y_zp)``
    with ``R = fp32(r_scale / y_scale)`` (float output: ``act(fp32(acc) * S + fp32(r - r_zp) * r_scale)``)."""
    from lepton_compiler.ops import qmath
    from lepton_compiler.ops.quant import integer_conv

    g = residual_graph(RESIDUAL_CASES[:2] + RESIDUAL_CASES[7:8])
    feeds = feeds_for(g, 2)
    for node, out in zip(g.nodes, interpret(g, feeds)):
        a = node.attrs
        acc = integer_conv(node, feeds[node.inputs[0].name], node.inputs[1].const, a["x_zero_point"])
        acc = (acc + node.inputs[2].const.astype(np.int64).reshape(1, -1, 1, 1)).astype(np.float32)
        r = (feeds[node.inputs[3].name].astype(np.int64) - a["r_zero_point"]).astype(np.float32)
        if a.get("output_dtype", "uint8") == "uint8":
            m = qmath.multipliers(a["x_scale"], a["w_scales"], a["y_scale"]).reshape(1, -1, 1, 1)
            v = acc * m + r * (np.float32(a["r_scale"]) / np.float32(a["y_scale"]))
            want = np.clip(np.rint(v) + a["y_zero_point"], a.get("y_min", 0), a.get("y_max", 255)).astype(np.uint8)
            assert np.mean((want > a.get("y_min", 0)) & (want < a.get("y_max", 255))) > 0.5   # mostly unclamped
        else:
            s = qmath.input_scales(a["x_scale"], a["w_scales"]).reshape(1, -1, 1, 1)
            want = np.maximum(acc * s + r * np.float32(a["r_scale"]), 0)
        assert want.dtype == out.dtype
        np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("path", PATHS)
def test_residual_on_every_path(path):
    g = residual_graph(RESIDUAL_CASES)
    with int8dot.forced_path(path):
        model = compile_graph(g, options={"threads": 1})
    for batch in (1, 3):
        feeds = feeds_for(g, batch, seed=batch + 20)
        assert_matches(model.run(None, feeds), interpret(g, feeds))


@pytest.mark.parametrize("path", ["vnni512", "portable"])
def test_residual_banded_and_threaded(path, monkeypatch):
    from lepton_compiler.backends.llvm import qconv

    if path not in PATHS:
        pytest.skip(f"this host cannot run {path}")
    monkeypatch.setattr(qconv, "MAX_STAGE_BYTES", 0)
    monkeypatch.setattr(qconv, "MAX_BAND_BYTES", 700)
    g = residual_graph(RESIDUAL_CASES[:7], seed=12)
    with int8dot.forced_path(path):
        model = compile_graph(g, options={"threads": 2})
    feeds = feeds_for(g, 5, seed=31)
    assert_matches(model.run(None, feeds), interpret(g, feeds))


def test_residual_type_rule():
    b = QBuilder()
    x = b.input("x", ("N", 4, 6, 6), "uint8")
    bad = b.input("bad", ("N", 8, 6, 6), "uint8")
    wrong_dtype = b.input("f", ("N", 8, 4, 4), "float32")
    with pytest.raises(LeptonError, match="conv output's shape"):
        b.op("QConv", [x, b.const("w", np.ones((8, 4, 3, 3), np.int8)), None, bad],
             dict(kernel_shape=[3, 3], x_scale=0.1, x_zero_point=0, w_scales=[0.1], y_scale=0.2, y_zero_point=0,
                  r_scale=0.1, r_zero_point=0), "lepton")
    with pytest.raises(LeptonError, match="residual must be uint8"):
        b.op("QConv", [x, b.const("w2", np.ones((8, 4, 3, 3), np.int8)), None, wrong_dtype],
             dict(kernel_shape=[3, 3], x_scale=0.1, x_zero_point=0, w_scales=[0.1], y_scale=0.2, y_zero_point=0,
                  r_scale=0.1, r_zero_point=0), "lepton")
    ok = b.input("ok", ("N", 8, 4, 4), "uint8")
    with pytest.raises(LeptonError, match="r_zero_point"):
        b.op("QConv", [x, b.const("w3", np.ones((8, 4, 3, 3), np.int8)), None, ok],
             dict(kernel_shape=[3, 3], x_scale=0.1, x_zero_point=0, w_scales=[0.1], y_scale=0.2, y_zero_point=0,
                  r_scale=0.1), "lepton")
