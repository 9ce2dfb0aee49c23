"""Shared by the quantization tests: a small conv/relu/pool/gemm model, MNIST calibration data,
and the check that every uint8 value of an int8 graph is the same compiled, interpreted and in ORT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import helper

import lepton_compiler as lc
from conftest import make_model, ort_run
from lepton_compiler.api import compile_graph
from lepton_compiler.ops import interpret

MNIST_TRAIN = Path(__file__).resolve().parents[1] / "examples" / "mnist" / "data" / "mnist_train4000.npz"


def small_cnn(seed: int = 0, clip: bool = False):
    """Conv(3->8, 3x3, pad 1) -> Relu|Clip -> MaxPool 2x2 -> Flatten -> Gemm(128->32) -> Relu
    -> Gemm(32->5) -> Softmax, on [N, 3, 8, 8]."""
    rng = np.random.default_rng(seed)
    act = helper.make_node("Clip", ["c", "lo", "hi"], ["r"], name="clip") if clip else \
        helper.make_node("Relu", ["c"], ["r"], name="relu")
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        act,
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["g"], name="fc1", transB=1),
        helper.make_node("Relu", ["g"], ["h"], name="relu2"),
        helper.make_node("Gemm", ["h", "w3", "b3"], ["z"], name="fc2", transB=1),
        helper.make_node("Softmax", ["z"], ["y"], name="softmax", axis=1),
    ]
    inits = {"w1": rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32),
             "b1": rng.normal(0, 0.1, 8).astype(np.float32),
             "w2": rng.normal(0, 0.1, (32, 128)).astype(np.float32),
             "b2": rng.normal(0, 0.1, 32).astype(np.float32),
             "w3": rng.normal(0, 0.3, (5, 32)).astype(np.float32),
             "b3": rng.normal(0, 0.1, 5).astype(np.float32)}
    if clip:
        inits.update(lo=np.array(0.0, np.float32), hi=np.array(1.5, np.float32))
    return make_model(nodes, [("x", ["N", 3, 8, 8])], [("y", ["N", 5])], inits)


def small_data(n: int = 40, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, 3, 8, 8)).astype(np.float32)


def mnist_calibration(n: int = 200):
    """The first ``n`` training images as the model takes them, and their labels."""
    data = np.load(MNIST_TRAIN)
    return data["x"][:n].astype(np.float32) / 255, data["y"][:n]


def quantized_with_inputs(model, shape, seed=1):
    """``model`` compiled in int8 (calibrated on 16 normal samples of ``shape``), and 5 fresh inputs."""
    rng = np.random.default_rng(seed)
    cal = rng.standard_normal((16,) + tuple(shape)).astype(np.float32)
    compiled = lc.compile(model, quantize="int8", calibration={"X": cal}, threads=1)
    return compiled, rng.standard_normal((5,) + tuple(shape)).astype(np.float32)


def check_uint8_values_exact(compiled, x):
    """Every uint8 value: compiled == interpreter, and the ONNX export run by ORT == interpreter."""
    g = compiled.quantization.graph.copy()
    uint8 = [v for v in g.values() if v.type.dtype == "uint8" and not v.is_const]
    g.outputs = list(g.outputs) + uint8
    model = compile_graph(g, options={"threads": 1})
    exported = g.to_onnx()
    for batch in (x[:1], x):
        want = interpret(g, {"X": batch})
        got = model.run(None, {"X": batch})
        ort = ort_run(exported, {"X": batch})
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5 * float(np.max(np.abs(want[0]))))
        for value, a, b, c in zip(uint8, got[1:], want[1:], ort[1:]):
            np.testing.assert_array_equal(a, b, err_msg=value.name)
            np.testing.assert_array_equal(c, b, err_msg=f"ORT {value.name}")
    return g
