"""The register-blocked GEMM (backends/llvm/gemm.py) against ONNX Runtime and the reference interpreter:
edge sizes of M, N and K (1, 7, 17, 33, 129, 1000: partial panels, partial row blocks, several
reduction blocks), transA/transB, alpha/beta, every broadcast of C, fused activations and softmax,
constant and run-time B, batched MatMul, threads 1 and 2 (the same bits), and each x86 vector width."""

from __future__ import annotations

import re

import numpy as np
import pytest
from onnx import helper

import lepton_compiler as lc
from conftest import assert_matches_ort, make_model, random_feeds
from lepton_compiler.api import compile_graph
from lepton_compiler.backends.llvm import gemm
from lepton_compiler.backends.llvm.target import X86_LEVELS, host_target
from lepton_compiler.ir import Graph, Node, TensorType, Value
from lepton_compiler.ops import infer_graph, interpret
from lepton_compiler.ops.fused import DOMAIN

RTOL, ATOL = 1e-5, 1e-4
SIZES = (1, 7, 17, 33, 129, 1000)
ROWS = (1, 3, 6, 7, 17, 33, 129)   # batch sizes run through one compiled model: every remainder of 8 and 6 rows


@pytest.fixture
def short_blocks(monkeypatch):
    """Reduction blocks of at most 256 steps, so K = 777 or 1000 runs several (K is split into
    blocks of at most gemm.KC_MAX = 1024 otherwise)."""
    monkeypatch.setattr(gemm, "KC_MAX", 256)


def normal(rng, *shape, scale=1.0):
    return np.asarray(scale * rng.standard_normal(shape), np.float32)


def gemm_model(rng, m, n, kk, attrs=None, c_shape=None, b_const=True, c_const=True, post=()):
    """``Y = post(Gemm(A, B, C))`` with ``A`` [M, K] (M = "N", the batch, where ``m`` is None)."""
    attrs = dict(attrs or {})
    rows = "N" if m is None else m
    a_shape = [kk, rows] if attrs.get("transA") else [rows, kk]
    b_shape = [n, kk] if attrs.get("transB") else [kk, n]
    inputs, inits, names = [("A", a_shape)], {}, ["A", "B"]
    if b_const:
        inits["B"] = normal(rng, *b_shape, scale=1 / np.sqrt(kk))
    else:
        inputs.append(("B", b_shape))
    if c_shape is not None:
        names.append("C")
        if c_const and "N" not in c_shape:
            inits["C"] = normal(rng, *c_shape)
        else:
            inputs.append(("C", c_shape))
    out = "g" if post else "Y"
    nodes = [helper.make_node("Gemm", names, [out], **attrs)]
    for i, (op, op_attrs) in enumerate(post):
        dst = "Y" if i == len(post) - 1 else f"p{i}"
        nodes.append(helper.make_node(op, [out], [dst], **op_attrs))
        out = dst
    return make_model(nodes, inputs, [("Y", None)], inits, opset=13)


def feeds_for(model, rng, batches, scale_b=None):
    def draw(rng, name, shape):
        return (scale_b if name == "B" and scale_b else 1.0) * rng.standard_normal(shape)
    return random_feeds(model, rng, batches, draw)


def check(model, rng, batches=ROWS, kk=1, **kw):
    return assert_matches_ort(model, feeds_for(model, rng, batches, 1 / np.sqrt(kk)), RTOL, ATOL, **kw)


# -- shapes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kk", SIZES)
def test_gemm_edge_sizes(n, kk, rng):
    """Every N x K of SIZES, each at every M of ROWS (one compile, the batch is M)."""
    model = gemm_model(rng, None, n, kk, {"transB": 1}, [n])
    check(model, rng, ROWS if n * kk < 100_000 else (1, 6, 33), kk=kk)


@pytest.mark.parametrize("m", [1000, 129])
def test_gemm_many_rows(m, rng):
    """Several row macro blocks, and a static M."""
    model = gemm_model(rng, m, 33, 129, {}, [33])
    check(model, rng, (m,), kk=129)


def test_gemm_default_reduction_blocks(rng):
    """K = 2500: three blocks of 834 with the default block size; bias, Relu."""
    assert -(-2500 // gemm.choose_blocking(16, 32, 2500).kc) == 3
    model = gemm_model(rng, None, 100, 2500, {"transB": 1}, [100], post=[("Relu", {})])
    check(model, rng, (1, 9), kk=2500)


# -- attributes and C ---------------------------------------------------------------------------
ATTR_CASES = {
    # name: (attrs, C shape or None, B constant?, C constant?)
    "plain": ({}, [33], True, True),
    "transA": ({"transA": 1}, [33], True, True),
    "transB_alpha_beta": ({"transB": 1, "alpha": 0.5, "beta": 2.0}, [1, 33], True, True),
    "transA_transB": ({"transA": 1, "transB": 1, "beta": -0.25}, ["N", 33], True, False),
    "alpha_no_C": ({"alpha": -1.5}, None, True, True),
    "beta_zero": ({"beta": 0.0}, [33], True, True),
    "C_scalar": ({"beta": 0.3}, [], True, True),
    "C_1": ({}, [1], True, True),
    "C_1x1": ({}, [1, 1], True, True),
    "C_Mx1": ({"beta": 1.5}, ["N", 1], True, False),
    "C_MxN": ({}, ["N", 33], True, False),
    "C_N_input": ({"beta": 0.75}, [33], True, False),
    "C_scalar_input": ({}, [], True, False),
    "B_input": ({}, [33], False, True),
    "B_input_C_MxN": ({"beta": 2.0}, ["N", 33], False, False),
    "B_input_transA": ({"transA": 1}, [1, 33], False, True),
    "B_input_transB_fallback": ({"transB": 1}, [33], False, True),
    "B_input_alpha_fallback": ({"alpha": 2.0}, [33], False, True),
}


@pytest.mark.parametrize("kk", [17, 1000])
@pytest.mark.parametrize("case", list(ATTR_CASES), ids=list(ATTR_CASES))
def test_gemm_attributes_and_c_broadcasts(case, kk, rng, short_blocks):
    """K = 1000 runs four reduction blocks: C starts the first, later ones reload the sums."""
    attrs, c_shape, b_const, c_const = ATTR_CASES[case]
    model = gemm_model(rng, None, 33, kk, attrs, c_shape, b_const, c_const)
    check(model, rng, (1, 7, 17), kk=kk)


def test_gemm_static_rows_c_mx1(rng):
    model = gemm_model(rng, 9, 40, 20, {"transA": 1}, [9, 1])
    check(model, rng, (9,), kk=20)


# -- fused epilogues ------------------------------------------------------------------------------
POSTS = {
    "relu": [("Relu", {})],
    "clip": [("Clip", {})],
    "sigmoid": [("Sigmoid", {})],
    "tanh": [("Tanh", {})],
    "leaky": [("LeakyRelu", {"alpha": 0.1})],
    "softmax": [("Softmax", {"axis": -1})],
    "relu_softmax": [("Relu", {}), ("Softmax", {"axis": -1})],
}


@pytest.mark.parametrize("n,kk", [(10, 1000), (129, 33), (1000, 17)])
@pytest.mark.parametrize("post", list(POSTS), ids=list(POSTS))
def test_gemm_fused_activation_and_softmax(post, n, kk, rng, short_blocks):
    """Gemm + activation (+ softmax), fused by the passes into one FusedGemm; the activation
    runs once, after the last reduction block."""
    if post == "clip":
        model = gemm_model(rng, None, n, kk, {"transB": 1}, [n])
        # Clip takes min/max as inputs from opset 11 on
        model.graph.node.append(helper.make_node("Clip", ["g", "lo", "hi"], ["Y"]))
        model.graph.node[0].output[0] = "g"
        model.graph.initializer.extend([helper.make_tensor("lo", 1, [], [-0.5]),
                                        helper.make_tensor("hi", 1, [], [0.5])])
    else:
        model = gemm_model(rng, None, n, kk, {"transB": 1}, [n], post=POSTS[post])
    compiled = lc.compile(model)
    assert [node.op for node in lc.optimize(model).nodes] == ["FusedGemm"]
    check(model, rng, (1, 7, 17), kk=kk, compiled=compiled)


def fused_graph(rng, n, kk, attrs, c_shape=(None,)):
    a = Value("a", TensorType("float32", ("N", kk)))
    w_array = normal(rng, n, kk, scale=1 / np.sqrt(kk))
    w = Value("w", TensorType.of(w_array), w_array)
    c_array = normal(rng, n)
    c = Value("c", TensorType.of(c_array), c_array)
    out = Value("y", TensorType("float32", ()))
    node = Node("FusedGemm", "fused", [a, w, c], [out], {"transB": 1, "activation_params": [], **attrs},
                domain=DOMAIN)
    return infer_graph(Graph("g", [a], [out], [node], [w, c]))


@pytest.mark.parametrize("activation,params", [("Relu", []), ("Clip", [0.0, 6.0]), ("Sigmoid", []), ("Tanh", []),
                                               ("HardSwish", []), ("Erf", [])])
@pytest.mark.parametrize("softmax", [0, 1])
def test_fused_gemm_against_the_interpreter(activation, params, softmax, rng, short_blocks):
    graph = fused_graph(rng, 37, 777, {"activation": activation, "activation_params": params, "softmax": softmax})
    compiled = compile_graph(graph)
    for batch in (1, 6, 13):
        feed = {"a": normal(rng, batch, 777)}
        np.testing.assert_allclose(compiled.run(None, feed)[0], interpret(graph, feed)[0], rtol=RTOL, atol=ATOL)


# -- MatMul ---------------------------------------------------------------------------------------
MATMUL_CASES = {
    # name: (A shape, B shape, B constant?)
    "2d_const_edges": (["N", 129], [129, 33], True),
    "3d_const_flattened": (["N", 7, 1000], [1000, 17], True),
    "3d_const_batch_of_ones": (["N", 5, 33], [1, 33, 129], True),
    "batched_const": (["N", 3, 7, 17], [3, 17, 33], True),
    "attention_scores": (["N", 4, 17, 33], ["N", 4, 33, 17], False),
    "attention_values": (["N", 4, 17, 17], ["N", 4, 17, 129], False),
    "2d_inputs_big_k": (["N", 1000], [1000, 7], False),
    "broadcast_b_input": (["N", 2, 9, 33], [33, 40], False),
    "vector_times_const": ([129], [129, 33], True),
    "matrix_times_vector_const": (["N", 33], [33], True),
    "matrix_times_vector_input": (["N", 33], [33], False),
}


@pytest.mark.parametrize("case", list(MATMUL_CASES), ids=list(MATMUL_CASES))
def test_matmul_blocked(case, rng, short_blocks):
    a_shape, b_shape, b_const = MATMUL_CASES[case]
    inputs, inits = [("A", a_shape)], {}
    kk = a_shape[-1]
    if b_const:
        inits["B"] = normal(rng, *b_shape, scale=1 / np.sqrt(kk))
    else:
        inputs.append(("B", b_shape))
    model = make_model([helper.make_node("MatMul", ["A", "B"], ["Y"])], inputs, [("Y", None)], inits, opset=13)
    dynamic = any("N" in s for s in (a_shape, b_shape))
    check(model, rng, (1, 2, 5) if dynamic else (1,), kk=kk)


# -- threads --------------------------------------------------------------------------------------
THREAD_CASES = {
    # name: (N, K, post): big enough (over 4 M multiply-adds at batch 64) to be split
    "panels": (1000, 129, [("Relu", {})]),        # 21 panels on AVX-512, 63 on AVX2: split by panels
    "rows_softmax": (129, 1000, [("Softmax", {"axis": -1})]),   # softmax: split by rows
    "few_panels": (33, 1000, []),                   # one or two panels: split by rows
}


@pytest.mark.parametrize("case", list(THREAD_CASES), ids=list(THREAD_CASES))
def test_two_threads_give_the_same_bits(case, rng, short_blocks):
    n, kk, post = THREAD_CASES[case]
    model = gemm_model(rng, None, n, kk, {"transB": 1}, [n], post=post)
    one, two = lc.compile(model, threads=1), lc.compile(model, threads=2)
    for batch in (1, 63, 64, 200):
        feed = {"A": normal(rng, batch, kk)}
        assert np.array_equal(one.run(None, feed)[0], two.run(None, feed)[0])
    check(model, rng, (63,), kk=kk, compiled=two)


def test_parallel_range_covers_every_panel_once(rng):
    """More threads than panels per thread: the chunks may be empty but never overlap or miss a panel."""
    model = gemm_model(rng, None, 1000, 100, {"transB": 1}, [1000])
    compiled = lc.compile(model, threads=7)
    feed = {"A": normal(rng, 128, 100)}
    np.testing.assert_array_equal(compiled.run(None, feed)[0], lc.compile(model, threads=1).run(None, feed)[0])
    check(model, rng, (128,), kk=100, compiled=compiled)


# -- the blocking and the packed layout -----------------------------------------------------------
@pytest.mark.parametrize("lanes,registers", [(16, 32), (8, 16), (4, 16), (4, 32)])
def test_blocking_fits_the_registers(lanes, registers):
    blk = gemm.choose_blocking(lanes, registers, 1000)
    assert blk.mr * blk.nv + blk.nv + 1 <= registers
    assert blk.mr * blk.nv >= registers // 2
    assert blk.kc <= gemm.KC_MAX and -(-1000 // blk.kc) * blk.kc - 1000 < -(-1000 // gemm.KC_MAX)
    assert blk.mc % blk.mr == 0


@pytest.mark.parametrize("n", [1, 15, 16, 64, 65, 100])
def test_pack_b_layout(n):
    blk = gemm.Blocking(lanes=16, mr=6, nv=4, kc=8, mc=96)
    b = np.arange(5 * n, dtype=np.float32).reshape(5, n) + 1
    packed = gemm.pack_b(b, blk)
    p = gemm.Panels.of(n, blk)
    assert packed.size == 5 * p.padded(blk)
    for j in range(p.count):
        width = blk.nr if j < p.full else p.tail_vectors * blk.lanes
        panel = packed[j * 5 * blk.nr:][:5 * width].reshape(5, width)
        cols = b[:, j * blk.nr:j * blk.nr + width]
        np.testing.assert_array_equal(panel[:, :cols.shape[1]], cols)
        assert not panel[:, cols.shape[1]:].any()


# -- every x86 vector width -----------------------------------------------------------------------
LEVELS = {"x86-64-v4": "zmm", "x86-64-v3": "ymm", "x86-64-v2": "xmm"}


@pytest.mark.parametrize("level", list(LEVELS))
def test_each_vector_width(level, rng, short_blocks):
    model = gemm_model(rng, None, 129, 1000, {"transB": 1, "alpha": 0.5}, ["N", 1], c_const=False,
                       post=[("Relu", {})])
    compiled = lc.compile(model, mcpu=level)
    asm = compiled.assembly()
    if level == "x86-64-v2":
        assert re.search(r"mulps\s+%xmm", asm) and "ymm" not in asm
    else:
        assert re.search(r"vfmadd\d+ps\s+[^\n]*%" + LEVELS[level], asm)
        if level == "x86-64-v3":
            assert "zmm" not in asm
    if not (host_target().triple.startswith("x86_64") and X86_LEVELS[level] <= set(host_target().features)):
        pytest.skip(f"this host cannot run {level} code")
    check(model, rng, (1, 5, 7, 11, 13), kk=1000, compiled=compiled)
    mm = make_model([helper.make_node("MatMul", ["A", "B"], ["Y"])], [("A", ["N", 3, 17, 33]), ("B", ["N", 3, 33, 19])],
                    [("Y", None)], opset=13)
    check(mm, rng, (1, 2), kk=33, compiled=lc.compile(mm, mcpu=level))
