"""Winograd F(2x2, 3x3): the weight transform, when it is chosen, and its numbers against the reference."""

import numpy as np
import pytest

from lepton_compiler.api import compile_graph
from lepton_compiler.backends.llvm.winograd import G, transform_weights, winograd_pays, winograd_supported
from lepton_compiler.ir import Graph, Node, TensorType, Value
from lepton_compiler.ops import infer_graph, interpret
from lepton_compiler.ops.fused import DOMAIN

RNG = np.random.default_rng(5)


def conv_graph(channels, out_channels, size, attrs, op="FusedConv"):
    w = RNG.standard_normal((out_channels, channels, 3, 3)).astype(np.float32) * 0.2
    b = RNG.standard_normal(out_channels).astype(np.float32)
    wv, bv = Value("w", TensorType.of(w), w), Value("b", TensorType.of(b), b)
    x = Value("x", TensorType("float32", ("N", channels, *size)))
    y = Value("y", TensorType("float32", ()))
    node = Node(op, "conv", [x, wv, bv], [y], attrs, domain=DOMAIN if op == "FusedConv" else "")
    return infer_graph(Graph("g", [x], [y], [node], [wv, bv]))


def test_weight_transform_is_g_g_gt_packed_by_lanes():
    w = RNG.standard_normal((20, 3, 3, 3))
    u = transform_weights(w, 16)
    assert u.shape == (2, 16, 3, 16)
    expected = G @ w[17, 2] @ G.T
    np.testing.assert_allclose(u[1, :, 2, 1].reshape(4, 4), expected, rtol=1e-6)
    assert not u[1, :, :, 4:].any()  # channels 20..31 are padding


def test_interior_chunks_of_wide_rows_become_loops():
    from lepton_compiler.backends.llvm.winograd import WinogradConv

    class Probe(WinogradConv):
        def __init__(self, node):  # geometry only: no kernel is emitted
            from lepton_compiler.backends.llvm.conv import conv_parts
            from lepton_compiler.backends.llvm.winograd import tile_grid
            self.parts, self.g = conv_parts(node)
            self.grid = tile_grid(node, self.g)

    padded = Probe(conv_graph(8, 32, (9, 61), {"pads": [1, 1, 1, 1]}).nodes[0])
    # 31 tiles in chunks of 7: the first touches the left padding, the last ones the row's end
    assert padded._chunks(7) == [(0, 7, 1), (7, 7, 3), (28, 3, 1)]
    plain = Probe(conv_graph(16, 16, (6, 44), {}).nodes[0])
    assert plain._chunks(7) == [(0, 7, 3)]  # 21 tiles, every column inside


def test_chosen_only_where_it_saves_work():
    pooled = {"activation": "Relu", "activation_params": [], "pool_kernel": [2, 2], "pool_strides": [2, 2]}
    mnist_conv2 = conv_graph(32, 64, (13, 13), pooled).nodes[0]
    assert winograd_supported(mnist_conv2, 16) and winograd_pays(mnist_conv2)
    mnist_conv3 = conv_graph(64, 64, (5, 5), {"activation": "Relu", "activation_params": []}).nodes[0]
    assert winograd_supported(mnist_conv3, 16) and not winograd_pays(mnist_conv3)  # 4 tiles for 9 outputs
    few_channels = conv_graph(1, 32, (28, 28), {}).nodes[0]
    assert not winograd_supported(few_channels, 16)
    strided = conv_graph(16, 16, (12, 12), {"strides": [2, 2]}).nodes[0]
    assert not winograd_supported(strided, 16)
    overlapping_pool = conv_graph(16, 16, (12, 12), {**pooled, "pool_kernel": [3, 3]}).nodes[0]
    assert not winograd_supported(overlapping_pool, 16)


CASES = [
    ("pooled-mnist-like", 32, 64, (13, 13), {"activation": "Relu", "activation_params": [],
                                             "pool_kernel": [2, 2], "pool_strides": [2, 2]}),
    ("padded-odd", 16, 24, (11, 9), {"pads": [1, 1, 1, 1], "activation": "LeakyRelu", "activation_params": [0.1]}),
    ("asymmetric-pads", 8, 16, (10, 14), {"pads": [0, 1, 2, 0]}),
    ("pooled-padded", 12, 40, (16, 15), {"pads": [1, 1, 1, 1], "pool_kernel": [2, 2], "pool_strides": [2, 2],
                                         "activation": "Clip", "activation_params": [0.0, 6.0]}),
    # wide rows: whole chunks of tiles inside the image run in a loop (see WinogradConv._chunks)
    ("wide", 16, 16, (6, 44), {}),
    ("wide-padded", 8, 32, (9, 61), {"pads": [1, 1, 1, 1], "activation": "Relu", "activation_params": []}),
]


@pytest.mark.parametrize("name,channels,out_channels,size,attrs", CASES, ids=[c[0] for c in CASES])
def test_matches_the_reference(name, channels, out_channels, size, attrs):
    graph = conv_graph(channels, out_channels, size, attrs)
    assert winograd_supported(graph.nodes[0], 16) and winograd_pays(graph.nodes[0])
    compiled = compile_graph(graph)
    for batch in (1, 3):
        x = RNG.standard_normal((batch, channels, *size)).astype(np.float32)
        expected = interpret(graph, {"x": x})[0]
        actual = compiled.run(None, {"x": x})[0]
        scale = np.abs(expected).max()
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=2e-6 * scale)
