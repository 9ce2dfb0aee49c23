"""The position-vectorized convolution (``backends/llvm/conv_spatial.py``) and the vector
ConvTranspose for upsampling layers (``conv_transpose.py``) against ONNX Runtime on awkward
shapes: channels that are no multiple of the vector width, odd sizes, strides 1 and 2, padding
(asymmetric too), dilation, depthwise and grouped layers, 1-D, fused bias, activation and
residual, batch 1 and odd batches, one and two threads, and every x86 vector width."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import lepton_compiler as lc
import lepton_compiler.backends.llvm.conv as conv
from conftest import make_model, ort_run
from lepton_compiler.backends.llvm.conv_spatial import spatial_supported
from lepton_compiler.backends.llvm.target import X86_LEVELS, host_target
from lepton_compiler.frontends.onnx import import_model
from lepton_compiler.passes import optimize_graph

ATOL = 2e-5
HOST = set(host_target().features)
LEVELS = ["x86-64-v4", "x86-64-v3", "x86-64-v2"]


def runnable(level: str) -> bool:
    return host_target().triple.startswith("x86_64") and X86_LEVELS[level] <= HOST


def conv_model(cin, cout, size, k, stride=1, pads=None, dilation=1, group=1, bias=True, act=None,
               residual=False, seed=0):
    """Conv (+ Add of the input as a residual) (+ activation); ``size`` is (h, w) or (w,) for 1-D."""
    rng = np.random.default_rng(seed)
    nd = len(size)
    kernel = (k,) * nd
    inits = {"W": (rng.standard_normal((cout, cin // group) + kernel) / np.sqrt(cin // group * k ** nd)).astype(np.float32)}
    inputs = ["X", "W"]
    if bias:
        inits["B"] = rng.standard_normal(cout).astype(np.float32)
        inputs.append("B")
    pads = [k // 2] * (2 * nd) if pads is None else pads
    nodes = [helper.make_node("Conv", inputs, ["C"], strides=[stride] * nd, pads=pads, dilations=[dilation] * nd,
                              group=group)]
    out = "C"
    if residual:
        nodes.append(helper.make_node("Add", ["C", "R"], ["S"]))
        out = "S"
    if act == "Relu6":
        inits["lo"], inits["hi"] = np.float32(0.0), np.float32(6.0)
        nodes.append(helper.make_node("Clip", [out, "lo", "hi"], ["A"]))
        out = "A"
    elif act:
        nodes.append(helper.make_node(act, [out], ["A"]))
        out = "A"
    nodes[-1].output[0] = "Y"
    inputs_spec = [("X", ["N", cin] + list(size))]
    if residual:
        inputs_spec.append(("R", ["N"] + residual_shape(cin, cout, size, k, stride, pads, dilation)))
    return make_model(nodes, inputs_spec, [("Y", None)], inits)


def residual_shape(cin, cout, size, k, stride, pads, dilation):
    nd = len(size)
    pads = [k // 2] * (2 * nd) if pads is None else pads
    out = [(s + pads[i] + pads[i + nd] - dilation * (k - 1) - 1) // stride + 1 for i, s in enumerate(size)]
    return [cout] + out


@pytest.fixture
def forced(monkeypatch):
    def force(kind):
        monkeypatch.setattr(conv, "FORCED_KERNEL", kind)
    return force


def check(model, x_shape, batches=(1, 3), threads=1, mcpu=None, extra=None, seed=1):
    compiled = lc.compile(model, threads=threads, **({"mcpu": mcpu} if mcpu else {}))
    rng = np.random.default_rng(seed)
    for batch in batches:
        feed = {"X": rng.standard_normal([batch] + list(x_shape)).astype(np.float32)}
        if extra is not None:
            feed["R"] = rng.standard_normal([batch] + list(extra)).astype(np.float32)
        if mcpu and not runnable(mcpu):
            continue  # the code was still generated
        (want,), (got,) = ort_run(model, feed), compiled.run(None, feed)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=ATOL)
    return compiled


SPATIAL_CASES = [
    # cin, cout, size, k, stride, pads, dilation, group, act, residual
    (3, 16, (17, 23), 3, 2, None, 1, 1, "Relu6", False),          # few-channel strided stem
    (3, 5, (31, 29), 7, 2, [3, 2, 1, 3], 1, 1, "Relu", False),    # 7x7, asymmetric pads
    (48, 48, (16, 16), 3, 1, None, 1, 48, "HardSwish", False),    # depthwise
    (13, 13, (9, 35), 3, 2, None, 1, 13, None, False),            # depthwise, strided, odd width
    (6, 12, (11, 19), 3, 1, None, 1, 6, "Relu", False),           # depthwise multiplier 2
    (12, 9, (10, 7), 3, 1, [1, 0, 2, 1], 2, 3, None, False),      # grouped, dilated, asymmetric pads
    (16, 48, (16, 16), 1, 1, [0, 0, 0, 0], 1, 1, "HardSwish", False),  # 1x1 over the whole plane
    (19, 7, (13, 11), 1, 1, [0, 0, 0, 0], 1, 1, None, True),      # 1x1 with a residual
    (16, 21, (15, 15), 1, 2, [0, 0, 0, 0], 1, 1, None, False),    # 1x1 strided
    (5, 3, (40, 70), 3, 1, None, 1, 1, "Sigmoid", False),         # long rows: interior tile loop
    (7, 10, (9, 100), 5, 2, None, 1, 1, None, True),              # strided, long rows, residual
    (4, 4, (6, 6), 3, 1, [2, 2, 2, 2], 3, 2, None, False),        # dilation 3, wide padding
    (8, 6, (37,), 3, 1, None, 1, 1, "Relu", False),               # 1-D
    (6, 6, (53,), 5, 2, None, 1, 6, None, False),                 # 1-D depthwise strided
    (3, 16, (20, 230), 7, 2, [3, 3, 2, 3], 1, 1, "Relu", False),   # wide 7x7 stem: rows split by parity
    (5, 9, (11, 171), 5, 2, [3, 2, 1, 2], 2, 1, None, True),      # split rows, dilation 2, odd pad
    (2, 4, (3, 99), 6, 2, [2, 3, 1, 0], 1, 2, None, False),       # split rows, even kernel, groups
]


@pytest.mark.parametrize("case", SPATIAL_CASES, ids=lambda c: f"{c[0]}x{c[1]}_{'x'.join(map(str, c[2]))}_k{c[3]}s{c[4]}g{c[7]}")
def test_spatial_conv_matches_ort(case, forced):
    cin, cout, size, k, stride, pads, dilation, group, act, residual = case
    forced("spatial")
    model = conv_model(cin, cout, size, k, stride, pads, dilation, group, act=act, residual=residual,
                       bias=bool(cout % 2))
    extra = residual_shape(cin, cout, size, k, stride, pads, dilation) if residual else None
    graph = optimize_graph(import_model(model.SerializeToString()), 3)
    (node,) = [n for n in graph.nodes if n.op in ("Conv", "FusedConv")]
    assert spatial_supported(node, 16) and spatial_supported(node, 4)
    assert (len(node.inputs) > 3 and node.inputs[3] is not None) == residual  # the residual is fused
    check(model, [cin] + list(size), extra=extra)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("case", [SPATIAL_CASES[i] for i in (0, 3, 6, 7, 10, 14)], ids=lambda c: f"{c[0]}x{c[1]}_k{c[3]}s{c[4]}g{c[7]}")
def test_spatial_conv_each_vector_width(case, level, forced):
    cin, cout, size, k, stride, pads, dilation, group, act, residual = case
    forced("spatial")
    model = conv_model(cin, cout, size, k, stride, pads, dilation, group, act=act, residual=residual)
    extra = residual_shape(cin, cout, size, k, stride, pads, dilation) if residual else None
    check(model, [cin] + list(size), batches=(1, 2), mcpu=level, extra=extra)


@pytest.mark.parametrize("threads", [1, 2])
def test_spatial_conv_threads(threads, forced):
    """Large enough (above the 4 M multiply-add threshold) to be split across threads."""
    forced("spatial")
    for group in (1, 40):
        model = conv_model(40, 40, (45, 47), 3, 1, group=group, act="Relu")
        check(model, [40, 45, 47], batches=(1, 3), threads=threads)


def test_default_choice_uses_the_spatial_kernel_where_it_pays():
    """Depthwise and 1x1 layers of a MobileNet-like graph get the position-vectorized kernel."""
    rng = np.random.default_rng(0)
    inits = {"W1": rng.standard_normal((32, 16, 1, 1)).astype(np.float32),
             "W2": rng.standard_normal((32, 1, 3, 3)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["X", "W1"], ["A"]),
             helper.make_node("Conv", ["A", "W2"], ["Y"], group=32, pads=[1, 1, 1, 1])]
    model = make_model(nodes, [("X", ["N", 16, 20, 20])], [("Y", None)], inits)
    graph = optimize_graph(import_model(model.SerializeToString()), 3)
    convs = [n for n in graph.nodes if n.op in ("Conv", "FusedConv")]
    assert [conv.choose_conv_kernel(n, 16, 32) for n in convs] == ["spatial", "spatial"]
    assert [conv.choose_conv_kernel(n, 8, 16) for n in convs] == ["spatial", "spatial"]
    check(model, [16, 20, 20])


POOLED_CASES = [
    # cin, cout, size, k, stride, pad, act, pool kernel, pool stride, pool pad, ceil_mode
    (3, 16, (61, 67), 7, 2, 3, "Relu", 3, 2, 1, 0),    # the ResNet stem
    (3, 16, (47, 47), 3, 2, 0, "Relu", 3, 2, 0, 1),    # the SqueezeNet stem (ceil mode)
    (5, 7, (20, 21), 3, 1, 1, None, 2, 2, 0, 0),       # channels past a block, odd width
    (4, 9, (13, 70), 3, 1, 1, "Relu", 3, 1, 1, 0),     # pool stride 1, long rows
    (6, 10, (15, 9), 3, 2, 1, "HardSwish", 2, 2, 0, 1),
    (4, 8, (25, 19), 3, 1, 1, "Relu", 4, 1, 2, 1),      # pool 4x4 stride 1: three rows shared
]


def pooled_model(cin, cout, size, k, stride, pad, act, pk, ps, pp, ceil, seed=0):
    rng = np.random.default_rng(seed)
    inits = {"W": (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32),
             "B": rng.standard_normal(cout).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["X", "W", "B"], ["C"], strides=[stride] * 2, pads=[pad] * 4)]
    out = "C"
    if act:
        nodes.append(helper.make_node(act, ["C"], ["A"]))
        out = "A"
    nodes.append(helper.make_node("MaxPool", [out], ["Y"], kernel_shape=[pk, pk], strides=[ps, ps], pads=[pp] * 4,
                                  ceil_mode=ceil))
    return make_model(nodes, [("X", ["N", cin] + list(size))], [("Y", None)], inits)


@pytest.mark.parametrize("level", [None, "x86-64-v3", "x86-64-v2"])
@pytest.mark.parametrize("case", POOLED_CASES, ids=lambda c: f"{c[0]}x{c[1]}_{'x'.join(map(str, c[2]))}_k{c[3]}s{c[4]}_pool{c[7]}s{c[8]}")
@pytest.mark.parametrize("kernel", ["spatial", "simd"])
def test_conv_with_fused_max_pool(case, level, kernel, forced):
    """The spatial kernel's row bands, and the channel-blocked kernel's rows shared by
    overlapping pool windows (copied, not computed again)."""
    forced(kernel)
    model = pooled_model(*case)
    graph = optimize_graph(import_model(model.SerializeToString()), 3)
    (node,) = [n for n in graph.nodes if n.op in ("Conv", "FusedConv")]
    assert node.attr("pool_kernel") is not None and spatial_supported(node, 16)
    check(model, [case[0]] + list(case[2]), batches=(1, 3), mcpu=level)


def test_pooled_choice():
    """Pooled layers get the channel-blocked kernel where it applies, the spatial one when grouped."""
    for size in ((224, 224), (40, 40)):
        model = pooled_model(3, 16, size, 7, 2, 3, "Relu", 3, 2, 1, 0)
        graph = optimize_graph(import_model(model.SerializeToString()), 3)
        (node,) = [n for n in graph.nodes if n.op == "FusedConv"]
        assert conv.choose_conv_kernel(node, 16, 32) == "simd"
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["X", "W"], ["C"], pads=[1, 1, 1, 1], group=8),
             helper.make_node("MaxPool", ["C"], ["Y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])]
    model = make_model(nodes, [("X", ["N", 8, 21, 30])], [("Y", None)],
                       {"W": rng.standard_normal((8, 1, 3, 3)).astype(np.float32)})
    graph = optimize_graph(import_model(model.SerializeToString()), 3)
    (node,) = [n for n in graph.nodes if n.op == "FusedConv"]
    assert conv.choose_conv_kernel(node, 16, 32) == "spatial"
    check(model, [8, 21, 30])


# -- ConvTranspose ---------------------------------------------------------------------------------
def conv_transpose_model(cin, cout, size, k, stride, bias=True, pads=None, seed=0):
    rng = np.random.default_rng(seed)
    nd = len(size)
    inits = {"W": rng.standard_normal((cin, cout) + (k,) * nd).astype(np.float32)}
    inputs = ["X", "W"]
    if bias:
        inits["B"] = rng.standard_normal(cout).astype(np.float32)
        inputs.append("B")
    attrs = {"strides": [stride] * nd}
    if pads is not None:
        attrs["pads"] = pads
    return make_model([helper.make_node("ConvTranspose", inputs, ["Y"], **attrs)], [("X", ["N", cin] + list(size))],
                      [("Y", None)], inits)


TRANSPOSE_CASES = [
    (16, 8, (8, 10), 2, 2, True),    # the U-Net upsampling
    (5, 3, (7, 21), 2, 2, False),    # odd width: a masked tail
    (4, 19, (3, 37), 2, 2, True),    # channels past a block
    (6, 5, (5, 9), 1, 1, True),      # 1x1
    (3, 4, (4, 50), 3, 3, True),     # stride 3 rows, stride 3 columns: the scalar kernel
    (7, 6, (45,), 2, 2, True),       # 1-D
    (4, 3, (6, 7), 3, 2, True),      # overlapping taps: the scalar kernel
]


@pytest.mark.parametrize("level", [None] + LEVELS)
@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=lambda c: f"{c[0]}x{c[1]}_{'x'.join(map(str, c[2]))}_k{c[3]}s{c[4]}")
def test_conv_transpose_matches_ort(case, level):
    cin, cout, size, k, stride, bias = case
    model = conv_transpose_model(cin, cout, size, k, stride, bias)
    check(model, [cin] + list(size), batches=(1, 3), mcpu=level)


def test_conv_transpose_threads():
    model = conv_transpose_model(64, 32, (40, 44), 2, 2)
    for threads in (1, 2):
        check(model, [64, 40, 44], batches=(1, 2), threads=threads)


# -- vector MaxPool, global pooling and trailing-axis reductions -------------------------------------
MAXPOOL_CASES = [
    # size, kernel, stride, pads, ceil_mode, dilation
    ((11, 11), 3, 2, [0, 0, 0, 0], 1, 1),      # SqueezeNet's
    ((112, 112), 3, 2, [1, 1, 1, 1], 0, 1),    # ResNet's
    ((16, 20), 2, 2, [0, 0, 0, 0], 0, 1),      # U-Net's
    ((9, 37), 3, 1, [1, 0, 1, 2], 0, 1),       # stride 1, asymmetric pads
    ((13, 23), 2, 2, [1, 1, 0, 0], 1, 2),      # dilated, ceil mode
    ((41,), 4, 2, [1, 2], 0, 1),               # 1-D
    ((10, 10), 3, 3, [0, 0, 0, 0], 0, 1),      # stride 3: the scalar kernel
]


@pytest.mark.parametrize("level", [None, "x86-64-v3", "x86-64-v2"])
@pytest.mark.parametrize("case", MAXPOOL_CASES, ids=lambda c: f"{'x'.join(map(str, c[0]))}_k{c[1]}s{c[2]}")
def test_maxpool_matches_ort(case, level):
    size, kernel, stride, pads, ceil, dilation = case
    nd = len(size)
    node = helper.make_node("MaxPool", ["X"], ["Y"], kernel_shape=[kernel] * nd, strides=[stride] * nd, pads=pads,
                            ceil_mode=ceil, dilations=[dilation] * nd)
    model = make_model([node], [("X", ["N", 5] + list(size))], [("Y", None)])
    check(model, [5] + list(size), batches=(1, 3), mcpu=level)


def test_maxpool_propagates_nan():
    node = helper.make_node("MaxPool", ["X"], ["Y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    model = make_model([node], [("X", ["N", 2, 9, 40])], [("Y", None)])
    x = np.random.default_rng(0).standard_normal((1, 2, 9, 40)).astype(np.float32)
    x[0, 0, 4, 17] = np.nan
    got = lc.compile(model).run(None, {"X": x})[0]
    assert np.isnan(got[0, 0, 2, 8]) and np.isnan(got[0, 0, 2, 9])
    assert np.isnan(got).sum() == 2  # the windows of (2, 8) and (2, 9) hold (4, 17)
    np.testing.assert_array_equal(got[0, 1], ort_run(model, {"X": x})[0][0, 1])


@pytest.mark.parametrize("level", [None, "x86-64-v3", "x86-64-v2"])
@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "ReduceSum"])
@pytest.mark.parametrize("size", [(1, 1), (5, 5), (8, 8), (15, 16), (56, 57)])
def test_plane_reductions_match_ort(op, size, level):
    attrs = {"keepdims": 0} if op.startswith("Reduce") else {}
    inputs = ["X"]
    inits = {}
    if op == "ReduceSum":
        inits["axes"] = np.array([2, 3], np.int64)
        inputs.append("axes")
    elif op.startswith("Reduce"):
        attrs["axes"] = [2, 3]
    model = make_model([helper.make_node(op, inputs, ["Y"], **attrs)], [("X", ["N", 7] + list(size))], [("Y", None)],
                       inits)
    check(model, [7] + list(size), batches=(1, 3), mcpu=level)
