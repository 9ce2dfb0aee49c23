"""The cuda backend's kernels, one node at a time: PTX structure, ptxas, and numbers.

Numbers come from the host emulation (``backends/nvptx/emulate.py``): the same kernel IR the GPU gets,
compiled for this CPU with thread and block indices as arguments, the grid run block by block and
phase by phase (barriers respected), through the same launch plan as the CUDA runtime. They are
compared with the reference interpreter (numpy, float64 inside).
"""

import numpy as np
import pytest

from lepton_compiler.backends.nvptx import build_ptx, find_ptxas, plan_gpu, run_ptxas
from lepton_compiler.backends.nvptx.emulate import HostEmulator
from lepton_compiler.backends.nvptx.kernel import Phase, KernelSpec, GridDim, emit_host
from lepton_compiler.backends.nvptx.math import exp
from lepton_compiler.errors import UnsupportedOpError
from lepton_compiler.ir import Graph, Node, TensorType, Value
from lepton_compiler.ops import infer_graph, interpret
from lepton_compiler.ops.fused import DOMAIN

RNG = np.random.default_rng(12)
PTXAS = find_ptxas()
needs_ptxas = pytest.mark.skipif(PTXAS is None, reason="ptxas not found (pip install nvidia-cuda-nvcc-cu12)")


def const(name, shape, scale=1.0):
    array = (RNG.standard_normal(shape) * scale).astype(np.float32)
    return Value(name, TensorType.of(array), array)


def graph_of(op, inputs, attrs, consts, domain=DOMAIN):
    out = Value("y", TensorType("float32", ()))
    node = Node(op, "node", inputs, [out], attrs, domain=domain)
    return infer_graph(Graph("g", [v for v in inputs if v is not None and not v.is_const], [out], [node], consts))


def check(graph, feeds, rtol=2e-5, atol=2e-5):
    """Emulated kernels equal the reference; returns the PTX so callers can look at it."""
    expected = interpret(graph, feeds)
    actual = HostEmulator(graph).run(*[feeds[v.name] for v in graph.inputs])
    for e, a in zip(expected, actual):
        assert e.shape == a.shape
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)
    ptx, _ = build_ptx(graph)
    if PTXAS is not None:
        run_ptxas(ptx)
    return ptx


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# -- convolution ------------------------------------------------------------------------------------------
CONV_CASES = [
    ("relu+pool", (2, 3, 11, 9), (5, 3, 3, 3), {"pads": [1, 1, 1, 1], "activation": "Relu", "activation_params": [],
                                                 "pool_kernel": [2, 2], "pool_strides": [2, 2]}),
    ("leaky+pool3-pad-ceil", (3, 3, 11, 9), (5, 3, 3, 3),
     {"pads": [1, 1, 1, 1], "activation": "LeakyRelu", "activation_params": [0.1], "pool_kernel": [3, 3],
      "pool_strides": [2, 2], "pool_pads": [1, 1, 1, 1], "pool_ceil_mode": 1}),
    ("stride2-dilation2", (2, 4, 13, 12), (7, 4, 3, 3), {"strides": [2, 2], "dilations": [2, 2],
                                                        "pads": [2, 1, 2, 1]}),
    ("asym-kernel-clip", (1, 2, 10, 10), (3, 2, 1, 5), {"pads": [0, 2, 0, 2], "activation": "Clip",
                                                       "activation_params": [0.0, 0.5]}),
    ("depthwise-sigmoid", (2, 6, 8, 8), (6, 1, 3, 3), {"group": 6, "pads": [1, 1, 1, 1],
                                                       "activation": "Sigmoid", "activation_params": []}),
    ("group2-tanh", (2, 4, 7, 7), (6, 2, 3, 3), {"group": 2, "activation": "Tanh", "activation_params": []}),
    ("many-channels-chunks", (2, 70, 5, 5), (40, 70, 3, 3), {"pads": [1, 1, 1, 1], "activation": "Elu",
                                                              "activation_params": [1.0]}),
    ("5x5-hardswish", (1, 3, 9, 9), (9, 3, 5, 5), {"activation": "HardSwish", "activation_params": []}),
]


@pytest.mark.parametrize("name,xshape,wshape,attrs", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_fused_conv(name, xshape, wshape, attrs):
    x = Value("x", TensorType("float32", ("N",) + xshape[1:]))
    w, b = const("w", wshape, 0.3), const("b", (wshape[0],))
    graph = graph_of("FusedConv", [x, w, b], dict(attrs), [w, b])
    ptx = check(graph, {"x": randn(*xshape)})
    assert ".entry k0_FusedConv_node(" in ptx and ".shared" in ptx and "bar.sync" in ptx


def test_fused_conv_with_residual_no_bias():
    x = Value("x", TensorType("float32", ("N", 4, 7, 7)))
    r = Value("r", TensorType("float32", ("N", 6, 7, 7)))
    w = const("w", (6, 2, 3, 3))
    graph = graph_of("FusedConv", [x, w, None, r], {"pads": [1, 1, 1, 1], "group": 2, "activation": "Relu",
                                                    "activation_params": []}, [w])
    check(graph, {"x": randn(3, 4, 7, 7), "r": randn(3, 6, 7, 7)})


def test_fused_conv_with_broadcast_residual_and_pool():
    x = Value("x", TensorType("float32", ("N", 3, 8, 8)))
    r = const("r", (1, 4, 1, 8))
    w, b = const("w", (4, 3, 3, 3)), const("b", (4,))
    graph = graph_of("FusedConv", [x, w, b, r], {"pads": [1, 1, 1, 1], "activation": "Relu", "activation_params": [],
                                                 "pool_kernel": [2, 2], "pool_strides": [2, 2]}, [w, b, r])
    check(graph, {"x": randn(2, 3, 8, 8)})


def test_plain_conv_static_batch():
    x = Value("x", TensorType("float32", (3, 2, 6, 5)))
    w = const("w", (3, 2, 2, 2))
    graph = graph_of("Conv", [x, w], {}, [w], domain="")
    check(graph, {"x": randn(3, 2, 6, 5)})


# -- gemm -------------------------------------------------------------------------------------------------------
GEMM_CASES = [
    # (M, K, N, attrs, c shape)
    ("relu", 5, 12, 10, {"transB": 1, "activation": "Relu"}, (10,)),
    ("softmax", 70, 33, 10, {"transB": 1, "softmax": 1}, (10,)),
    ("softmax-wide", 9, 20, 150, {"softmax": 1, "activation": "Tanh"}, (1, 150)),
    ("alpha-beta-matrix-c", 67, 40, 65, {"alpha": 0.5, "beta": -2.0, "activation": "Sigmoid"}, ("M", 65)),
    ("no-c-k-odd", 130, 17, 3, {"transB": 1}, None),
    ("column-c", 20, 16, 70, {"activation": "LeakyRelu", "activation_params": [0.2]}, ("M", 1)),
]


@pytest.mark.parametrize("name,M,K,N,attrs,cshape", GEMM_CASES, ids=[c[0] for c in GEMM_CASES])
def test_fused_gemm(name, M, K, N, attrs, cshape):
    static_m = cshape is not None and "M" in cshape      # a C with M rows needs a static M
    a = Value("a", TensorType("float32", (M if static_m else "N", K)))
    w = const("w", (N, K) if attrs.get("transB") else (K, N), 0.3)
    full = {"activation": "", "activation_params": [], "softmax": 0, **attrs}
    full.setdefault("activation_params", [])
    inputs, consts = [a, w], [w]
    if cshape is not None:
        c = const("c", tuple(M if d == "M" else d for d in cshape))
        inputs.append(c)
        consts.append(c)
    graph = graph_of("FusedGemm", inputs, full, consts)
    ptx = check(graph, {"a": randn(M, K)})
    assert ".shared" in ptx and "bar.sync" in ptx


def test_gemm_trans_a_static_m():
    a = Value("a", TensorType("float32", (23, 37)))   # A^T: M = 37, K = 23
    w = const("w", (23, 19))
    graph = graph_of("Gemm", [a, w], {"transA": 1}, [w], domain="")
    check(graph, {"a": randn(23, 37)})


def test_softmax_rows_sum_to_one_with_large_logits():
    a = Value("a", TensorType("float32", ("N", 8)))
    w = const("w", (8, 30), 40.0)   # logits in the hundreds: exp must not overflow
    graph = graph_of("FusedGemm", [a, w], {"activation": "", "activation_params": [], "softmax": 1}, [w])
    a_in = randn(11, 8)
    out = HostEmulator(graph).run(a_in)[0]
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out, interpret(graph, {"a": a_in})[0], atol=2e-6)


# -- elementwise ------------------------------------------------------------------------------------------------------
def test_fused_elementwise_program_with_broadcast():
    a = Value("a", TensorType("float32", ("N", 3, 4)))
    b = const("b", (3, 1))
    program = ["Add 0 1", "LeakyRelu[0.2] 2", "Mul 3 0", "Sigmoid 4", "Max 5 1", "Min 6 0"]
    graph = graph_of("FusedElementwise", [a, b], {"program": program}, [b])
    check(graph, {"a": randn(5, 3, 4)})


@pytest.mark.parametrize("op,attrs", [("Relu", {}), ("Sigmoid", {}), ("Tanh", {}), ("Exp", {}), ("Abs", {}),
                                      ("Elu", {"alpha": 0.7}), ("HardSigmoid", {}), ("Neg", {}), ("Selu", {})])
def test_unary_ops(op, attrs):
    x = Value("x", TensorType("float32", ("N", 33)))
    graph = graph_of(op, [x], attrs, [], domain="")
    check(graph, {"x": randn(9, 33) * 3})


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min", "PRelu"])
def test_binary_ops_broadcast(op):
    x = Value("x", TensorType("float32", ("N", 2, 5)))
    y = const("c", (5,)) if op != "Div" else Value("c", TensorType.of(np.full(5, 1.5, np.float32)),
                                                    np.full(5, 1.5, np.float32))
    graph = graph_of(op, [x, y], {}, [y], domain="")
    check(graph, {"x": randn(4, 2, 5)})


def test_exp_accuracy_over_the_float_range():
    """``math.exp`` (range reduction + polynomial, no libdevice) against numpy, emulated on the host."""
    x = np.concatenate([np.linspace(-110, 90, 20001, dtype=np.float32),
                        np.array([0.0, -0.0, 1e-30, np.inf, -np.inf, np.nan, 88.7, -87.0], np.float32)])
    v = Value("x", TensorType("float32", ("N",)))
    graph = graph_of("Exp", [v], {}, [], domain="")
    out = HostEmulator(graph).run(x)[0]
    expected = np.exp(x.astype(np.float64))
    normal = (np.abs(expected) > 1.2e-38) & (expected < 3.4e38)
    rel = np.abs(out[normal] - expected[normal]) / expected[normal]
    assert rel.max() < 3e-7
    assert np.isnan(out[np.isnan(x)]).all()
    assert out[x == np.inf][0] == np.inf and out[x == -np.inf][0] == 0.0
    assert (out[x > 88.73] == np.inf).all() and (out[x < -104] == 0.0).all()
    assert exp is not None


# -- the kernel builder and plan -----------------------------------------------------------------------------------
def test_unsupported_ops_are_reported_all_at_once():
    x = Value("x", TensorType("float32", ("N", 4)))
    mid, out = Value("m", TensorType("float32", ())), Value("o", TensorType("float32", ()))
    graph = infer_graph(Graph("g", [x], [out], [Node("Log", "log1", [x], [mid]),
                                                Node("Erf", "erf1", [mid], [out])], []))
    with pytest.raises(UnsupportedOpError) as info:
        plan_gpu(graph)
    assert [op[:2] for op in info.value.ops] == [("Log", "log1"), ("Erf", "erf1")]
    assert "no cuda kernel" in str(info.value)


def test_conv_3d_is_unsupported_op_error():
    x = Value("x", TensorType("float32", ("N", 2, 4, 4, 4)))
    w = const("w", (3, 2, 2, 2, 2))
    graph = graph_of("Conv", [x, w], {}, [w], domain="")
    with pytest.raises(UnsupportedOpError, match="2-D convolutions"):
        plan_gpu(graph)


def test_host_emulation_respects_barriers():
    """A kernel that reverses a block's values through shared memory needs the barrier between its two
    phases; the host driver runs each phase for all threads first, so the result is exact."""
    x = Value("x", TensorType("float32", (256,)))
    y = Value("y", TensorType("float32", (256,)))

    def write(t):
        t.store(t.load(t.ptr(x), t.linear_tid), t.shared("s"), t.linear_tid)

    def read(t):
        t.store(t.load(t.shared("s"), t.b.sub(t.i32(63), t.linear_tid)), t.ptr(y),
                t.add(t.mul(t.bid[0], 64), t.linear_tid))

    spec = KernelSpec("rev", "Test", "rev", [x, y], [y], (64, 1, 1), (GridDim(0, 4, 1), GridDim(), GridDim()),
                      [Phase(write, "write"), Phase(read, "read")], shared={"s": 64})
    import ctypes

    import llvmlite.binding as llvm
    from llvmlite import ir

    from lepton_compiler.backends.nvptx.kernel import emit_device
    from lepton_compiler.backends.nvptx.target import emit_ptx, initialize

    module = ir.Module("t")
    emit_host(module, spec)
    initialize()
    engine_mod = llvm.parse_assembly(str(module))
    tm = llvm.Target.from_default_triple().create_target_machine()
    engine = llvm.create_mcjit_compiler(engine_mod, tm)
    engine.finalize_object()
    fn = ctypes.CFUNCTYPE(None, *([ctypes.c_int32] * 4 + [ctypes.c_void_p] * 2))(engine.get_function_address("rev"))
    xs = np.arange(256, dtype=np.float32)
    ys = np.zeros(256, np.float32)
    fn(1, 4, 1, 1, xs.ctypes.data, ys.ctypes.data)
    np.testing.assert_array_equal(ys, np.tile(xs[:64][::-1], 4))

    device = ir.Module("d")
    emit_device(device, spec)
    ptx = emit_ptx(str(device))
    assert ptx.count("bar.sync") == 1 and ".shared" in ptx and "%tid.x" in ptx
