"""Shared by the quantization tests: a small conv/relu/pool/gemm model, MNIST calibration data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import helper

from conftest import make_model

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
