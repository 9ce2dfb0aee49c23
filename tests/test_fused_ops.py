"""The fused ops: reference semantics equal the unfused ONNX ops, and the LLVM kernels equal the reference."""

import numpy as np
import pytest

from lepton_compiler.api import compile_graph
from lepton_compiler.ir import Graph, Node, TensorType, Value
from lepton_compiler.ops import infer_graph, interpret
from lepton_compiler.ops.fused import DOMAIN

RNG = np.random.default_rng(7)


def const(name, shape):
    array = RNG.standard_normal(shape).astype(np.float32)
    return Value(name, TensorType.of(array), array)


def single_node_graph(op, inputs, attrs, consts):
    out = Value("y", TensorType("float32", ()))
    node = Node(op, "fused", inputs, [out], attrs, domain=DOMAIN)
    graph = Graph("g", [v for v in inputs if v is not None and not v.is_const], [out], [node], consts)
    return infer_graph(graph)


def check_against_reference(graph, feeds, rtol=1e-5, atol=1e-5):
    compiled = compile_graph(graph)
    expected = interpret(graph, feeds)
    actual = compiled.run(None, feeds)
    for e, a in zip(expected, actual):
        assert e.shape == a.shape
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


CONV_CASES = [
    ("relu+pool", {"activation": "Relu", "activation_params": [], "pool_kernel": [2, 2], "pool_strides": [2, 2]}),
    ("leaky+pool-ceil", {"activation": "LeakyRelu", "activation_params": [0.1], "pool_kernel": [3, 3],
                         "pool_strides": [2, 2], "pool_pads": [1, 1, 1, 1], "pool_ceil_mode": 1}),
    ("clip", {"activation": "Clip", "activation_params": [0.0, 6.0]}),
    ("sigmoid", {"activation": "Sigmoid", "activation_params": []}),
    ("tanh", {"activation": "Tanh", "activation_params": []}),
    ("hardswish", {"activation": "HardSwish", "activation_params": []}),
]


@pytest.mark.parametrize("name,attrs", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_fused_conv_kernel_matches_reference(name, attrs):
    x = Value("x", TensorType("float32", ("N", 3, 11, 9)))
    w, b = const("w", (5, 3, 3, 3)), const("b", (5,))
    graph = single_node_graph("FusedConv", [x, w, b], {"pads": [1, 1, 1, 1], **attrs}, [w, b])
    check_against_reference(graph, {"x": RNG.standard_normal((2, 3, 11, 9)).astype(np.float32)})


def test_fused_conv_with_residual_and_relu():
    x = Value("x", TensorType("float32", ("N", 4, 7, 7)))
    r = Value("r", TensorType("float32", ("N", 6, 7, 7)))
    w = const("w", (6, 2, 3, 3))
    graph = single_node_graph("FusedConv", [x, w, None, r],
                              {"pads": [1, 1, 1, 1], "group": 2, "activation": "Relu", "activation_params": []}, [w])
    feeds = {"x": RNG.standard_normal((3, 4, 7, 7)).astype(np.float32),
             "r": RNG.standard_normal((3, 6, 7, 7)).astype(np.float32)}
    check_against_reference(graph, feeds)


@pytest.mark.parametrize("activation,softmax", [("Relu", 0), ("", 1), ("Tanh", 1)])
def test_fused_gemm_kernel_matches_reference(activation, softmax):
    a = Value("a", TensorType("float32", ("N", 12)))
    w, c = const("w", (10, 12)), const("c", (10,))
    attrs = {"transB": 1, "activation": activation, "activation_params": [], "softmax": softmax}
    graph = single_node_graph("FusedGemm", [a, w, c], attrs, [w, c])
    check_against_reference(graph, {"a": RNG.standard_normal((5, 12)).astype(np.float32)})


def test_fused_elementwise_program():
    a = Value("a", TensorType("float32", ("N", 3, 4)))
    b = const("b", (3, 1))
    program = ["Add 0 1", "LeakyRelu[0.2] 2", "Mul 3 0", "Sigmoid 4"]
    graph = single_node_graph("FusedElementwise", [a, b], {"program": program}, [b])
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    check_against_reference(graph, {"a": x})
    t = x + graph.constants[0].const
    t = np.where(t < 0, 0.2 * t, t) * x
    np.testing.assert_allclose(interpret(graph, {"a": x})[0], 1 / (1 + np.exp(-t)), rtol=1e-6)


def test_fused_conv_reference_equals_unfused_ops():
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    xv = Value("x", TensorType("float32", ("N", 3, 8, 8)))
    w, b = const("w", (4, 3, 3, 3)), const("b", (4,))
    fused = single_node_graph("FusedConv", [xv, w, b], {"activation": "Relu", "activation_params": [],
                                                        "pool_kernel": [2, 2], "pool_strides": [2, 2]}, [w, b])
    c, r, p = (Value(n, TensorType("float32", ())) for n in "crp")
    plain = infer_graph(Graph("g", [xv], [p], [
        Node("Conv", "conv", [xv, w, b], [c]),
        Node("Relu", "relu", [c], [r]),
        Node("MaxPool", "pool", [r], [p], {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ], [w, b]))
    np.testing.assert_allclose(interpret(fused, {"x": x})[0], interpret(plain, {"x": x})[0], rtol=1e-6)
