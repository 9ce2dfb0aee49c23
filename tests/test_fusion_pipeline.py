"""The fusion passes in pipeline order on whole models, against ONNX Runtime."""

from __future__ import annotations

import os

import numpy as np
import pytest
from onnx import helper

from conftest import make_model, ort_run
from lepton_compiler.api import compile_graph
from lepton_compiler.demo import bundled_model_path
from lepton_compiler.frontends.onnx import import_model
from lepton_compiler.ir import Graph, Node
from lepton_compiler.ir.verifier import verify
from lepton_compiler.ops import interpret
from lepton_compiler.passes.base import PassOptions
from lepton_compiler.passes.dead_code import DEAD_CODE
from lepton_compiler.passes.fold_batchnorm import FOLD_BATCHNORM
from lepton_compiler.passes.fold_channel_affine import FOLD_CHANNEL_AFFINE
from lepton_compiler.passes.fuse_activation import FUSE_ACTIVATION
from lepton_compiler.passes.fuse_elementwise import FUSE_ELEMENTWISE
from lepton_compiler.passes.fuse_pool import FUSE_POOL
from lepton_compiler.passes.fuse_residual import FUSE_RESIDUAL
from lepton_compiler.passes.fuse_softmax import FUSE_SOFTMAX
from lepton_compiler.passes.matmul_add_to_gemm import MATMUL_ADD_TO_GEMM

PIPELINE = [FOLD_BATCHNORM, FOLD_CHANNEL_AFFINE, MATMUL_ADD_TO_GEMM, FUSE_RESIDUAL, FUSE_ACTIVATION,
            FUSE_POOL, FUSE_SOFTMAX, FUSE_ELEMENTWISE, DEAD_CODE]
TOL = 1e-5


def optimize(graph: Graph) -> tuple[Graph, dict[str, bool]]:
    """Run the pipeline, verifying after each pass; returns the graph and which passes fired."""
    fired = {}
    for p in PIPELINE:
        result = p.run(graph, PassOptions())
        verify(result.graph)
        fired[p.name] = result.modified
        graph = result.graph
    return graph, fired


def describe(node: Node) -> str:
    """``FusedConv[residual, Relu, pool 2x2]``-style summary of what a node computes."""
    parts = []
    if node.op == "FusedConv" and len(node.inputs) > 3 and node.inputs[3] is not None:
        parts.append("residual")
    if node.attr("activation"):
        parts.append(node.attr("activation"))
    if node.attr("pool_kernel") is not None:
        parts.append("pool " + "x".join(map(str, node.attr("pool_kernel"))))
    if node.attr("softmax"):
        parts.append("softmax")
    return f"{node.op}[{', '.join(parts)}]" if parts else node.op


def check_against_ort(model, graph: Graph, feed: dict[str, np.ndarray]) -> None:
    expected = ort_run(model, feed)
    assert all(np.ptp(e) > 0.1 for e in expected)   # the outputs are not trivially flat
    by_interpreter = interpret(graph, feed)
    by_native = compile_graph(graph).run(None, feed)
    for e, i, n in zip(expected, by_interpreter, by_native):
        assert i.shape == e.shape and n.shape == e.shape
        assert np.abs(i - e).max() <= TOL
        assert np.abs(n - e).max() <= TOL


# -- (i) the bundled MNIST CNN ----------------------------------------------------------------------
def test_mnist_fuses_to_six_kernels_and_matches_onnxruntime():
    import onnx

    path = bundled_model_path()
    graph, fired = optimize(import_model(path))
    assert [describe(n) for n in graph.nodes] == [
        "FusedConv[Relu, pool 2x2]",
        "FusedConv[Relu, pool 2x2]",
        "FusedConv[Relu]",
        "Flatten",
        "FusedGemm[Relu]",
        "FusedGemm[softmax]",
    ]
    assert fired == {"fold-batchnorm": False, "fold-channel-affine": False, "matmul-add-to-gemm": False,
                     "fuse-residual": False, "fuse-activation": True, "fuse-pool": True, "fuse-softmax": True,
                     "fuse-elementwise": False, "dead-code": False}
    assert [v.name for v in graph.outputs] == ["probabilities"]
    with np.load(os.path.join(os.path.dirname(path), "mnist_test1000.npz"), allow_pickle=False) as data:
        x = data["x"][:16].astype(np.float32) / 255.0
    check_against_ort(onnx.load(path), graph, {"input": x})


# -- (ii) a residual network built here -------------------------------------------------------------
def residual_model(rng: np.random.Generator):
    """Normalize the input, stem Conv-BN-Relu, one residual block (Conv-BN-Relu-Conv-BN, a
    per-channel layer scale, Add the block input, Relu), MaxPool, Flatten, MatMul + Add, Softmax."""
    c = 8
    inits = {
        "mean": rng.random((1, 3, 1, 1)).astype(np.float32),
        "std": (0.5 + rng.random((3, 1, 1))).astype(np.float32),
        "w0": (0.3 * rng.standard_normal((c, 3, 3, 3))).astype(np.float32),
        "b0": rng.standard_normal(c).astype(np.float32),
        "w1": (0.2 * rng.standard_normal((c, c, 3, 3))).astype(np.float32),
        "w2": (0.2 * rng.standard_normal((c, c, 3, 3))).astype(np.float32),
        "b2": rng.standard_normal(c).astype(np.float32),
        "gamma": (0.5 + rng.random((c, 1, 1))).astype(np.float32),
        "fc_w": (0.1 * rng.standard_normal((c * 4 * 4, 10))).astype(np.float32),
        "fc_b": rng.standard_normal(10).astype(np.float32),
    }
    for bn in ("bn0", "bn1", "bn2"):
        inits[f"{bn}_scale"] = (0.5 + rng.random(c)).astype(np.float32)
        inits[f"{bn}_bias"] = rng.standard_normal(c).astype(np.float32)
        inits[f"{bn}_mean"] = rng.standard_normal(c).astype(np.float32)
        inits[f"{bn}_var"] = (0.5 + rng.random(c)).astype(np.float32)

    def bn(name, x, y):
        return helper.make_node("BatchNormalization", [x, f"{name}_scale", f"{name}_bias", f"{name}_mean",
                                                       f"{name}_var"], [y], name=name, epsilon=1e-3)

    pads = {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]}
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["centered"], name="sub"),
        helper.make_node("Div", ["centered", "std"], ["normalized"], name="div"),
        helper.make_node("Conv", ["normalized", "w0", "b0"], ["c0"], name="conv0", **pads),
        bn("bn0", "c0", "n0"),
        helper.make_node("Relu", ["n0"], ["a0"], name="relu0"),
        helper.make_node("Conv", ["a0", "w1"], ["c1"], name="conv1", **pads),
        bn("bn1", "c1", "n1"),
        helper.make_node("Relu", ["n1"], ["a1"], name="relu1"),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], name="conv2", **pads),
        bn("bn2", "c2", "n2"),
        helper.make_node("Mul", ["n2", "gamma"], ["scaled"], name="layer_scale"),
        helper.make_node("Add", ["a0", "scaled"], ["sum"], name="add"),
        helper.make_node("Relu", ["sum"], ["a2"], name="relu2"),
        helper.make_node("MaxPool", ["a2"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["flat"], name="flatten", axis=1),
        helper.make_node("MatMul", ["flat", "fc_w"], ["logits0"], name="matmul"),
        helper.make_node("Add", ["logits0", "fc_b"], ["logits"], name="bias"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    return make_model(nodes, [("x", ["N", 3, 8, 8])], [("probs", ["N", 10])], inits)


def test_residual_network_fuses_and_matches_onnxruntime(rng):
    model = residual_model(rng)
    graph, fired = optimize(import_model(model))
    assert [describe(n) for n in graph.nodes] == [
        "FusedElementwise",
        "FusedConv[Relu]",
        "FusedConv[Relu]",
        "FusedConv[residual, Relu, pool 2x2]",
        "Flatten",
        "FusedGemm[softmax]",
    ]
    assert graph.nodes[0].attr("program") == ["Sub 0 1", "Div 3 2"]
    assert graph.nodes[3].inputs[3] is graph.nodes[1].outputs[0]     # the block input
    assert fired == {"fold-batchnorm": True, "fold-channel-affine": True, "matmul-add-to-gemm": True,
                     "fuse-residual": True, "fuse-activation": True, "fuse-pool": True, "fuse-softmax": True,
                     "fuse-elementwise": True, "dead-code": False}
    assert {v.name for v in graph.constants} == {"mean", "std", "w0_folded", "b0_folded", "w1_folded",
                                                 "conv1_bias", "w2_folded_1", "b2_folded_1", "fc_w", "fc_b"}
    for batch in (1, 3):
        x = rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)
        check_against_ort(model, graph, {"x": x})


@pytest.mark.parametrize("p", PIPELINE, ids=lambda p: p.name)
def test_each_pass_is_idempotent_on_the_optimized_models(p, rng):
    for source in (bundled_model_path(), residual_model(rng)):
        graph, _ = optimize(import_model(source))
        result = p.run(graph, PassOptions())
        assert not result.modified and str(result.graph) == str(graph)
