"""``lepton inspect`` and ``tools.inspect.inspect_model``: exact counts, fusion plan, memory plan, kernels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper

import lepton_compiler as lc
from lepton_compiler.backends.llvm.target import host_target
from lepton_compiler.demo import bundled_model_path
from lepton_compiler.tools.inspect import inspect_model
from lepton_compiler.tools.lineage import trace

from conftest import make_model
from test_cli import assert_ok, lepton

MODEL = bundled_model_path()

# Hand-computed, per image: OH*OW*OC*IC*KH*KW for the convs, K*N for the dense layers.
MNIST_LAYERS = {
    "/conv1/Conv": (320, 26 * 26 * 32 * 1 * 9),          # 194,688
    "/conv2/Conv": (18_496, 11 * 11 * 64 * 32 * 9),      # 2,230,272
    "/conv3/Conv": (36_928, 3 * 3 * 64 * 64 * 9),        # 331,776
    "/fc1/Gemm": (36_928, 576 * 64),                     # 36,864
    "/fc2/Gemm": (650, 64 * 10),                         # 640
}


@pytest.fixture(scope="module")
def mnist():
    return inspect_model(MODEL, 3)


def test_mnist_multiply_adds_and_parameters(mnist):
    assert mnist.total_macs == 2_794_240
    assert mnist.total_params == 93_322
    assert len(mnist.layers) == 13
    for layer in mnist.layers:
        params, macs = MNIST_LAYERS.get(layer.name, (0, 0))
        assert (layer.params, layer.macs) == (params, macs), layer
    assert mnist.layer("/pool1/MaxPool").output_shape == ["N", 32, 13, 13]
    assert mnist.op_counts == {"Conv": 3, "Relu": 4, "MaxPool": 2, "Flatten": 1, "Gemm": 2, "Softmax": 1}
    assert [str(t) for t in mnist.inputs] == ["input: float32[N, 1, 28, 28]"]
    assert [str(t) for t in mnist.outputs] == ["probabilities: float32[N, 10]"]


def test_mnist_fusion_plan(mnist):
    assert [(n.op, n.covers) for n in mnist.plan] == [
        ("lepton.FusedConv", ["/conv1/Conv", "/relu1/Relu", "/pool1/MaxPool"]),
        ("lepton.FusedConv", ["/conv2/Conv", "/relu2/Relu", "/pool2/MaxPool"]),
        ("lepton.FusedConv", ["/conv3/Conv", "/relu3/Relu"]),
        ("Flatten", ["/flatten/Flatten"]),
        ("lepton.FusedGemm", ["/fc1/Gemm", "/relu4/Relu"]),
        ("lepton.FusedGemm", ["/fc2/Gemm", "/softmax/Softmax"]),
    ]
    assert len(mnist.plan) == 6 and len(mnist.kernels) == 5
    assert mnist.plan[3].kernel is None  # a view: no kernel
    assert sum(n.macs for n in mnist.plan) == 2_794_240
    assert mnist.removed == {}


def test_mnist_memory_plan_and_kernels_match_the_compiler(mnist):
    compiled = lc.compile(MODEL)
    assert list(mnist.workspace) == list(compiled.summary["workspace"])
    assert list(mnist.workspace_unshared) == list(compiled.summary["workspace_unshared"])
    assert mnist.workspace[0] < mnist.workspace_unshared[0]
    assert [f"{n.op} {n.name}" for n in mnist.kernels] == compiled.summary["kernels"]
    target = host_target()
    assert (mnist.target_cpu, mnist.vector_bits) == (target.cpu, target.vector_bits())
    if target.vector_bits() >= 128:
        # conv1 has one input channel (too few for Winograd); conv2's 11x11 output pays for it; conv3's 3x3 does not
        assert [n.kernel for n in mnist.kernels] == ["simd", "winograd", "simd", "dense", "dense"]


@pytest.mark.skipif(not host_target().triple.startswith("x86_64"), reason="x86-64 CPU names")
def test_kernel_variants_follow_the_target():
    s = inspect_model(MODEL, 3, mcpu="x86-64")
    assert (s.target_cpu, s.vector_bits) == ("x86-64", 128)
    assert [n.kernel for n in s.kernels] == ["simd", "winograd", "simd", "dense", "dense"]


def test_lower_levels_keep_more_nodes():
    o1 = inspect_model(MODEL, 1)
    assert len(o1.plan) == 13 and all(len(n.covers) == 1 for n in o1.plan)
    assert o1.total_macs == 2_794_240
    assert len(o1.kernels) == 12  # all but the Flatten, a view
    assert [n.kernel for n in o1.plan[1:3]] == ["relu", "pool"]


def test_hand_computed_counts_for_conv_dense_pool_and_matmul():
    rng = np.random.default_rng(0)
    f = np.float32
    inits = {
        "w": rng.standard_normal((8, 2, 3, 3)).astype(f),      # group 2: IC/group = 2
        "b": rng.standard_normal(8).astype(f),
        "g": rng.standard_normal((5, 8 * 4 * 4)).astype(f),     # Gemm transB: N=5, K=128
        "m": rng.standard_normal((5, 7)).astype(f),            # MatMul [N,5] x [5,7]
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", group=2, strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["c"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "g"], ["d"], name="dense", transB=1),
        helper.make_node("MatMul", ["d", "m"], ["y"], name="matmul"),
    ]
    model = make_model(nodes, [("x", ["N", 4, 16, 16])], [("y", ["N", 7])], inits)
    s = inspect_model(model, 3)
    got = {layer.name: (layer.params, layer.macs) for layer in s.layers}
    assert got == {
        "conv": (8 * 2 * 9 + 8, 8 * 8 * 8 * 2 * 3 * 3),   # OH=OW=8 (stride 2, pad 1), OC=8, IC/group=2
        "pool": (0, 0),
        "flat": (0, 0),
        "dense": (5 * 128, 128 * 5),
        "matmul": (35, 5 * 7),
    }
    assert s.total_macs == 9216 + 640 + 35
    assert s.layer("pool").output_shape == ["N", 8, 4, 4]


def test_lineage_follows_folds_and_removals():
    rng = np.random.default_rng(1)
    f = np.float32
    inits = {"w": rng.standard_normal((4, 3, 3, 3)).astype(f), "s": rng.random(4).astype(f) + 0.5,
             "bb": rng.standard_normal(4).astype(f), "mean": rng.standard_normal(4).astype(f),
             "var": rng.random(4).astype(f) + 0.5}
    nodes = [
        helper.make_node("Identity", ["x"], ["xi"], name="id"),
        helper.make_node("Conv", ["xi", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "bb", "mean", "var"], ["n"], name="bn"),
        helper.make_node("Relu", ["n"], ["y"], name="relu"),
    ]
    model = make_model(nodes, [("x", ["N", 3, 8, 8])], [("y", ["N", 4, 8, 8])], inits)
    lineage = trace(model, 3)
    final = lineage.final
    assert len(final.graph.nodes) == 1
    assert final.covered(final.graph.nodes[0]) == ("id", "conv", "bn", "relu")


def test_cli_inspect():
    proc = lepton("inspect", MODEL)
    assert_ok(proc)
    assert "2,794,240" in proc.stdout and "93,322" in proc.stdout
    assert "/conv2/Conv + /relu2/Relu + /pool2/MaxPool" in proc.stdout
    assert "fusion plan at -O3 (6 nodes, 5 kernels)" in proc.stdout
    assert "peak workspace" in proc.stdout and "target:" in proc.stdout
    proc = lepton("inspect", MODEL, "--json", "-O", "2")
    assert_ok(proc)
    data = json.loads(proc.stdout)
    assert data["total_macs"] == 2_794_240 and data["opt_level"] == 2 and len(data["plan"]) == 13
