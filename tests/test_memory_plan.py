"""The backend's buffer plan: kernels chosen, views shared, workspace bytes reused by lifetime."""

import numpy as np

from lepton_compiler.api import compile_graph
from lepton_compiler.backends.llvm.plan import Storage, make_plan
from lepton_compiler.ir import Graph, Node, TensorType, Value
from lepton_compiler.ops import infer_graph, interpret

ROW = 1024 * 4  # bytes per image of a [N, 1024] float32 tensor (a multiple of 64)


def relu_chain(length: int, view_output: bool = False) -> Graph:
    t = TensorType("float32", ("N", 1024))
    values = [Value("x", t)] + [Value(f"v{i}", t) for i in range(length)]
    nodes = [Node("Relu", f"relu{i}", [values[i]], [values[i + 1]]) for i in range(length)]
    out = values[-1]
    if view_output:
        out = Value("flat", t)
        nodes.append(Node("Flatten", "flatten", [values[-1]], [out], {"axis": 1}))
    return infer_graph(Graph("chain", [values[0]], [out], nodes, []))


def test_lifetimes_let_buffers_share_bytes():
    plan = make_plan(relu_chain(5))
    # v0..v3 are intermediates; v0/v2 and v1/v3 can share, v4 is the caller's output array.
    assert plan.workspace_unshared == (4 * ROW, 0)
    assert plan.workspace == (2 * ROW, 0)
    offsets = [plan.storage[plan.kernels[i].outputs[0]] for i in range(4)]
    assert offsets == [Storage("workspace", per_batch=0), Storage("workspace", per_batch=ROW)] * 2
    assert plan.storage[plan.kernels[4].outputs[0]] == Storage("io", 1)


def test_kernel_never_writes_over_its_input():
    plan = make_plan(relu_chain(3))
    first, second = (plan.storage[plan.kernels[i].outputs[0]] for i in range(2))
    assert first != second


def test_a_view_that_is_a_graph_output_is_written_in_place():
    plan = make_plan(relu_chain(2, view_output=True))
    assert plan.copies == []  # the last Relu writes straight into the output array
    assert plan.storage[plan.kernels[-1].outputs[0]] == Storage("io", 1)


def test_shared_workspace_gives_the_same_numbers():
    graph = relu_chain(6)
    x = np.random.default_rng(3).standard_normal((3, 1024)).astype(np.float32)
    np.testing.assert_array_equal(compile_graph(graph).run(None, {"x": x})[0], interpret(graph, {"x": x})[0])
