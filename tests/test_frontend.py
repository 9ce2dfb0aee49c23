"""ONNX import: the IR it builds, the ONNX it exports, the reference interpreter, and its errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import lepton_compiler as lc
from lepton_compiler.frontends.onnx import import_model
from lepton_compiler.ops import ShapeError, interpret
from conftest import make_model, ort_run


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def ops_of(graph) -> list[str]:
    return [n.op for n in graph.nodes]


def type_of(graph, name: str) -> str:
    return str(graph.value(name).type)


# -- structure of the imported IR --------------------------------------------------------------
def test_symbolic_batch_is_kept_through_every_op(rng):
    nodes = [helper.make_node("Conv", ["X", "W", "B"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "W2", "B2"], ["Y"], transB=1, name="fc")]
    inits = {"W": f32(rng, 4, 3, 3, 3), "B": f32(rng, 4), "W2": f32(rng, 10, 4 * 3 * 2), "B2": f32(rng, 10)}
    model = make_model(nodes, [("X", ["N", 3, 7, 5])], [("Y", ["N", 10])], inits, opset=13)
    assert str(lc.optimize(model, opt_level=0)) == "\n".join([
        "graph test (opset 13) {",  # the source opset; the IR itself has opset-17 semantics
        "  input  %X: float32[N, 3, 7, 5]",
        "  const  %W: float32[4, 3, 3, 3]",
        "  const  %B: float32[4]",
        "  const  %W2: float32[10, 24]",
        "  const  %B2: float32[10]",
        "  %c: float32[N, 4, 7, 5] = Conv[pads=[1, 1, 1, 1]](%X, %W, %B)  # conv",
        "  %r: float32[N, 4, 7, 5] = Relu(%c)  # relu",
        "  %p: float32[N, 4, 3, 2] = MaxPool[kernel_shape=[2, 2], strides=[2, 2]](%r)  # pool",
        "  %f: float32[N, 24] = Flatten(%p)  # flatten",
        "  %Y: float32[N, 10] = Gemm[transB=1](%f, %W2, %B2)  # fc",
        "  output %Y: float32[N, 10]",
        "}",
    ])


def test_unnamed_dims_get_a_symbol_of_their_own():
    model = make_model([helper.make_node("Relu", ["X"], ["Y"])], [("X", [None, 4])], [("Y", [None, 4])])
    graph = import_model(model)
    assert type_of(graph, "X") == "float32[X_dim0, 4]"
    assert type_of(graph, "Y") == "float32[X_dim0, 4]"


def test_input_without_a_shape_is_not_taken_for_a_scalar():
    """A value_info with no shape field has an unknown rank; importing it as rank 0 would be wrong."""
    model = make_model([helper.make_node("Relu", ["X"], ["Y"])], [("X", None)], [("Y", None)])
    try:
        graph = import_model(model)
    except lc.LeptonError as exc:
        assert "'X'" in str(exc)
    else:
        pytest.fail(f"an input of unknown rank was imported as {graph.inputs[0].type}")


def test_nodes_out_of_order_are_sorted():
    nodes = [helper.make_node("Relu", ["a"], ["Y"], name="second"),
             helper.make_node("Add", ["X", "X"], ["a"], name="first")]
    graph = import_model(make_model(nodes, [("X", ["N", 2])], [("Y", ["N", 2])]))
    assert [n.name for n in graph.nodes] == ["first", "second"]


@pytest.mark.parametrize("shape,axis,flat", [
    (["N", 3, 4, 5], 1, "float32[N, 60]"),
    ([2, 3, 4, 5], 2, "float32[6, 20]"),
    ([2, 3, 4, 5], None, "float32[2, 60]"),
], ids=["4d_axis1", "4d_axis2_static", "4d_default_axis"])
def test_softmax_before_13_becomes_flatten_softmax_reshape(shape, axis, flat):
    attrs = {} if axis is None else {"axis": axis}
    node = helper.make_node("Softmax", ["X"], ["Y"], name="sm", **attrs)
    model = make_model([node], [("X", shape)], [("Y", shape)], opset=11)
    graph = lc.optimize(model, opt_level=0)
    assert ops_of(graph) == ["Flatten", "Softmax", "Shape", "Reshape"]
    flatten, softmax, shape_of, reshape = graph.nodes
    assert flatten.attrs == {"axis": 1 if axis is None else axis}
    assert softmax.attrs == {"axis": -1} and softmax.name == "sm"
    assert softmax.inputs == flatten.outputs and shape_of.inputs == graph.inputs
    assert reshape.inputs == [softmax.outputs[0], shape_of.outputs[0]]
    assert str(flatten.outputs[0].type) == flat
    assert graph.outputs[0] is reshape.outputs[0] and reshape.outputs[0].name == "Y"
    assert str(graph.outputs[0].type) == "float32[" + ", ".join(map(str, shape)) + "]"


@pytest.mark.parametrize("opset", [7, 11])
def test_softmax_before_13_on_the_last_axis_stays_one_node(opset):
    for shape, axis in (([2, 6], 1), (["N", 3, 4], 2), (["N", 3, 4], -1)):
        model = make_model([helper.make_node("Softmax", ["X"], ["Y"], axis=axis)], [("X", shape)], [("Y", shape)],
                           opset=opset)
        graph = lc.optimize(model, opt_level=0)
        assert ops_of(graph) == ["Softmax"]
        assert graph.nodes[0].attrs == {"axis": -1}


def test_softmax_13_is_kept_as_is():
    model = make_model([helper.make_node("Softmax", ["X"], ["Y"], axis=1)], [("X", ["N", 3, 4, 5])],
                       [("Y", ["N", 3, 4, 5])], opset=13)
    graph = lc.optimize(model, opt_level=0)
    assert ops_of(graph) == ["Softmax"] and graph.nodes[0].attrs == {"axis": 1}


def test_unsqueeze_axes_attribute_becomes_a_constant_input():
    model = make_model([helper.make_node("Unsqueeze", ["X"], ["Y"], axes=[0, -1], name="unsq")],
                       [("X", ["N", 3])], [("Y", [1, "N", 3, 1])], opset=11)
    graph = lc.optimize(model, opt_level=0)
    assert str(graph) == "\n".join([
        "graph test (opset 11) {",
        "  input  %X: float32[N, 3]",
        "  const  %unsq_axes: int64[2]",
        "  %Y: float32[1, N, 3, 1] = Unsqueeze(%X, %unsq_axes)  # unsq",
        "  output %Y: float32[1, N, 3, 1]",
        "}",
    ])
    (node,) = graph.nodes
    assert node.attrs == {}
    np.testing.assert_array_equal(node.inputs[1].const, [0, -1])
    assert node.inputs[1].const.dtype == np.int64


def test_unsqueeze_13_takes_axes_as_input():
    model = make_model([helper.make_node("Unsqueeze", ["X", "axes"], ["Y"])], [("X", ["N", 3])],
                       [("Y", ["N", 1, 3])], {"axes": np.array([1], np.int64)}, opset=13)
    graph = lc.optimize(model, opt_level=0)
    assert [v.name for v in graph.nodes[0].inputs] == ["X", "axes"]
    assert type_of(graph, "Y") == "float32[N, 1, 3]"


def _shape_chain_model(opset: int):
    """``x.view(x.size(0), -1)`` as exporters write it."""
    idx = helper.make_tensor("idx", TensorProto.INT64, [], [0])
    nodes = [helper.make_node("Constant", [], ["c0"], value=idx),
             helper.make_node("Shape", ["X"], ["s"]),
             helper.make_node("Gather", ["s", "c0"], ["g"], axis=0)]
    inits = {"m1": np.array([-1], np.int64)}
    if opset >= 13:
        inits["axes"] = np.array([0], np.int64)
        nodes.append(helper.make_node("Unsqueeze", ["g", "axes"], ["u"]))
    else:
        nodes.append(helper.make_node("Unsqueeze", ["g"], ["u"], axes=[0]))
    nodes += [helper.make_node("Concat", ["u", "m1"], ["target"], axis=0),
              helper.make_node("Reshape", ["X", "target"], ["Y"])]
    return make_model(nodes, [("X", ["N", 3, 4, 5])], [("Y", ["N", 60])], inits, opset=opset)


@pytest.mark.parametrize("opset", [11, 13])
def test_reshape_target_from_a_shape_chain_keeps_the_symbolic_batch(opset):
    graph = lc.optimize(_shape_chain_model(opset), opt_level=0)
    assert ops_of(graph) == ["Shape", "Gather", "Unsqueeze", "Concat", "Reshape"]
    assert type_of(graph, "s") == "int64[4]"
    assert type_of(graph, "g") == "int64[]"
    assert type_of(graph, "target") == "int64[2]"
    assert type_of(graph, "Y") == "float32[N, 60]"
    # The target is known at compile time, symbol included.
    target = graph.value("target").known
    assert [str(getattr(t, "name", t)) for t in target.tolist()] == ["N", "-1"]


@pytest.mark.parametrize("target,expected", [
    ([0, -1], "float32[N, 60]"),
    ([-1, 60], "float32[N, 60]"),
    ([0, 3, -1], "float32[N, 3, 20]"),
    ([-1, 4, 5], "float32[N*3, 4, 5]"),
    ([0, 0, 0, 0], "float32[N, 3, 4, 5]"),
], ids=["0,-1", "-1,60", "0,3,-1", "-1,4,5", "0,0,0,0"])
def test_reshape_target_resolution_with_symbolic_batch(target, expected):
    model = make_model([helper.make_node("Reshape", ["X", "shape"], ["Y"])], [("X", ["N", 3, 4, 5])],
                       [("Y", None)], {"shape": np.array(target, np.int64)}, opset=13)
    assert type_of(lc.optimize(model, opt_level=0), "Y") == expected


def test_reshape_may_move_the_batch_into_another_dim():
    """[N, 3, 4] -> [2, -1] is [2, 6N]: valid for every N (even N only would be a wrong guess)."""
    model = make_model([helper.make_node("Reshape", ["X", "shape"], ["Y"], name="rs")], [("X", ["N", 3, 4])],
                       [("Y", None)], {"shape": np.array([2, -1], np.int64)}, opset=13)
    assert str(import_model(model).outputs[0].type) == "float32[2, N*6]"


def test_reshape_that_cannot_hold_the_elements_is_rejected():
    model = make_model([helper.make_node("Reshape", ["X", "shape"], ["Y"], name="rs")], [("X", ["N", 3, 4])],
                       [("Y", None)], {"shape": np.array([5, -1], np.int64)}, opset=13)
    with pytest.raises(ShapeError, match=r"^node 'rs' \(Reshape\): cannot reshape \['N', 3, 4\] to \[5, -1\]"):
        import_model(model)


def test_opset_7_forms_import():
    """Gemm's broadcast attribute and Dropout's ratio attribute are dropped; Dropout keeps one input."""
    nodes = [helper.make_node("Gemm", ["X", "W", "b"], ["g"], broadcast=1, transB=1, name="fc"),
             helper.make_node("Dropout", ["g"], ["Y"], ratio=0.3, name="drop")]
    model = make_model(nodes, [("X", ["N", 4])], [("Y", ["N", 3])],
                       {"W": np.ones((3, 4), np.float32), "b": np.ones(3, np.float32)}, opset=7)
    graph = lc.optimize(model, opt_level=0)
    assert ops_of(graph) == ["Gemm", "Dropout"]
    assert graph.nodes[0].attrs == {"transB": 1}
    assert graph.nodes[1].attrs == {} and len(graph.nodes[1].inputs) == 1


def test_constant_nodes_become_constants():
    nodes = [helper.make_node("Constant", [], ["k"], value_floats=[1.0, 2.0]),
             helper.make_node("Constant", [], ["i"], value_int=3),
             helper.make_node("Add", ["X", "k"], ["Y"])]
    graph = import_model(make_model(nodes, [("X", ["N", 2])], [("Y", ["N", 2])], opset=13))
    assert ops_of(graph) == ["Add"]
    consts = {v.name: v for v in graph.constants}
    assert str(consts["k"].type) == "float32[2]" and str(consts["i"].type) == "int64[]"
    np.testing.assert_array_equal(consts["k"].const, [1.0, 2.0])


def test_opset_3_removes_identity_and_dropout():
    nodes = [helper.make_node("Identity", ["X"], ["a"]), helper.make_node("Dropout", ["a"], ["b"]),
             helper.make_node("Relu", ["b"], ["Y"])]
    model = make_model(nodes, [("X", ["N", 2])], [("Y", ["N", 2])], opset=13)
    assert ops_of(lc.optimize(model, opt_level=0)) == ["Identity", "Dropout", "Relu"]
    graph = lc.optimize(model, opt_level=3)
    assert ops_of(graph) == ["Relu"] and graph.nodes[0].inputs == graph.inputs


# -- export and the reference interpreter ------------------------------------------------------
def _round_trip_model(rng):
    """Conv, pooling, Dropout, Identity, the shape chain (opset-11 Unsqueeze), Gemm and a 4-D
    pre-13 Softmax; nodes listed out of order."""
    nodes = [helper.make_node("Conv", ["X", "W", "B"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Dropout", ["p"], ["d"], ratio=0.5),
             helper.make_node("Identity", ["d"], ["d2"]),
             helper.make_node("Shape", ["d2"], ["s"]),
             helper.make_node("Gather", ["s", "c0"], ["g"], axis=0),
             helper.make_node("Unsqueeze", ["g"], ["u"], axes=[0]),
             helper.make_node("Concat", ["u", "m1"], ["target"], axis=0),
             helper.make_node("Reshape", ["d2", "target"], ["flat"]),
             helper.make_node("Gemm", ["flat", "W2", "B2"], ["logits"], transB=1),
             helper.make_node("Softmax", ["pre"], ["probs"]),
             helper.make_node("Reshape", ["logits", "s4"], ["pre"])]
    inits = {"W": f32(rng, 4, 3, 3, 3), "B": f32(rng, 4), "c0": np.array(0, np.int64),
             "m1": np.array([-1], np.int64), "W2": f32(rng, 12, 4 * 3 * 3), "B2": f32(rng, 12),
             "s4": np.array([0, 3, 2, 2], np.int64)}
    return make_model(nodes, [("X", ["N", 3, 7, 6])], [("probs", ["N", 3, 2, 2]), ("logits", ["N", 12])],
                      inits, opset=11)


@pytest.mark.parametrize("opt_level", [0, 3])
def test_to_onnx_round_trip_checks_and_agrees_with_the_original(opt_level, rng):
    model = _round_trip_model(rng)
    graph = lc.optimize(model, opt_level=opt_level)
    exported = graph.to_onnx()
    onnx.checker.check_model(exported, full_check=True)
    assert [o.name for o in exported.graph.output] == ["probs", "logits"]
    assert [i.name for i in exported.graph.input] == ["X"]
    assert exported.opset_import[0].version == 17
    exported_ops = [n.op_type for n in exported.graph.node]
    assert all(n.domain in ("", "ai.onnx") for n in exported.graph.node)  # fused ops are expanded
    if not any(op.startswith("Fused") for op in ops_of(graph)):
        assert exported_ops == ops_of(graph)
    assert "Flatten" in exported_ops
    for batch in (1, 5):
        feed = {"X": f32(rng, batch, 3, 7, 6)}
        for got, want in zip(ort_run(exported, feed), ort_run(model, feed)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_to_onnx_keeps_symbolic_dims_and_constant_outputs():
    c = helper.make_tensor("c", TensorProto.FLOAT, [2], [1.0, 2.0])
    nodes = [helper.make_node("Constant", [], ["C"], value=c), helper.make_node("Relu", ["X"], ["Y"])]
    model = make_model(nodes, [("X", ["N", 3])], [("Y", ["N", 3]), ("C", [2])], opset=13)
    exported = lc.optimize(model).to_onnx()
    onnx.checker.check_model(exported, full_check=True)
    dims = exported.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and dims[1].dim_value == 3
    y, constant = ort_run(exported, {"X": np.array([[-1, 0, 2]] * 2, np.float32)})
    np.testing.assert_array_equal(y, [[0, 0, 2]] * 2)
    np.testing.assert_array_equal(constant, [1.0, 2.0])


@pytest.mark.parametrize("opt_level", [0, 3])
def test_reference_interpreter_agrees_with_ort(opt_level, rng):
    model = _round_trip_model(rng)
    graph = lc.optimize(model, opt_level=opt_level)
    for batch in (1, 4):
        feed = {"X": f32(rng, batch, 3, 7, 6)}
        got = interpret(graph, feed)
        want = ort_run(model, feed)
        assert [g.shape for g in got] == [w.shape for w in want]
        for g, w in zip(got, want):
            assert g.dtype == np.float32
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    # Named intermediate outputs.
    (flat,) = interpret(graph, feed, outputs=["flat"])
    assert flat.shape == (4, 36)


def test_reference_interpreter_elementwise_broadcast(rng):
    nodes = [helper.make_node("Sub", ["A", "B"], ["s"]), helper.make_node("Div", ["s", "C"], ["d"]),
             helper.make_node("Relu", ["d"], ["Y"])]
    model = make_model(nodes, [("A", ["N", 3, 1, 5]), ("B", [4, 1])], [("Y", ["N", 3, 4, 5])],
                       {"C": np.array([1.5, -2.0, 0.5, 3.0, -1.0], np.float32)}, opset=13)
    graph = import_model(model)
    feed = {"A": f32(rng, 2, 3, 1, 5), "B": f32(rng, 4, 1)}
    np.testing.assert_allclose(interpret(graph, feed)[0], ort_run(model, feed)[0], rtol=1e-5, atol=1e-5)


# -- errors ------------------------------------------------------------------------------------
def test_unknown_ops_are_all_listed_at_once():
    nodes = [helper.make_node("Foo", ["X"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Baz", ["b"], ["c"]),
             helper.make_node("Frob", ["c"], ["Y"], domain="ai.onnx", name="frob")]
    model = make_model(nodes, [("X", ["N", 3])], [("Y", ["N", 3])], opset=13)
    expected = ("unsupported operators: Foo (node 'first', domain 'ai.onnx', opset 13); "
                "Baz (node 'Baz_2', domain 'ai.onnx', opset 13); "
                "Frob (node 'frob', domain 'ai.onnx', opset 13): not supported")
    for entry in (lc.compile, import_model, lambda m: lc.optimize(m, opt_level=0)):
        with pytest.raises(lc.UnsupportedOpError) as info:
            entry(model)
        assert str(info.value) == expected
        assert [op for op, *_ in info.value.ops] == ["Foo", "Baz", "Frob"]


def test_one_unknown_op_message():
    model = make_model([helper.make_node("HardSwish", ["X"], ["Y"], name="hs")], [("X", ["N", 3])],
                       [("Y", ["N", 3])], opset=13)  # HardSwish exists from opset 14
    with pytest.raises(lc.UnsupportedOpError) as info:
        lc.compile(model)
    assert str(info.value) == "unsupported operator: HardSwish (node 'hs', domain 'ai.onnx', opset 13): not supported"
    assert info.value.ops == [("HardSwish", "hs", "", 13)]


def test_custom_domain_op_reports_its_domain_and_that_domains_opset():
    nodes = [helper.make_node("Relu", ["X"], ["a"], name="ok"),
             helper.make_node("FancyAct", ["a"], ["Y"], domain="com.acme", name="fancy")]
    model = make_model(nodes, [("X", ["N", 3])], [("Y", ["N", 3])], opset=13, extra_opsets={"com.acme": 2})
    with pytest.raises(lc.UnsupportedOpError) as info:
        lc.compile(model)
    assert str(info.value) == \
        "unsupported operator: FancyAct (node 'fancy', domain 'com.acme', opset 2): not supported"


def test_standard_op_name_in_a_custom_domain_is_unsupported():
    model = make_model([helper.make_node("Relu", ["X"], ["Y"], domain="com.acme", name="r")], [("X", ["N", 3])],
                       [("Y", ["N", 3])], opset=13, extra_opsets={"com.acme": 1})
    with pytest.raises(lc.UnsupportedOpError) as info:
        import_model(model)
    assert info.value.ops[0][:3] == ("Relu", "r", "com.acme")
    assert "domain 'com.acme'" in str(info.value)


@pytest.mark.parametrize("training", ["true_constant", "graph_input"])
def test_dropout_in_training_mode_is_unsupported(training):
    node = helper.make_node("Dropout", ["X", "ratio", "t"], ["Y"], name="drop")
    inputs = [("X", ["N", 3])]
    inits = {"ratio": np.array(0.5, np.float32)}
    if training == "true_constant":
        inits["t"] = np.array(True)
    else:
        inputs.append(("t", [], TensorProto.BOOL))
    model = make_model([node], inputs, [("Y", ["N", 3])], inits, opset=13)
    with pytest.raises(lc.UnsupportedOpError) as info:
        import_model(model)
    assert str(info.value) == \
        "unsupported operator: Dropout (node 'drop', domain 'ai.onnx', opset 13): training mode is not supported"


@pytest.mark.parametrize("data", [b"this is not an onnx model", b"\x00\x01\x02\xff\xfe", bytes(range(256))],
                         ids=["text", "short_binary", "all_bytes"])
def test_not_onnx_bytes(data):
    with pytest.raises(lc.ModelFormatError, match=r"^the given bytes is not an ONNX model"):
        lc.compile(data)


def test_empty_bytes():
    with pytest.raises(lc.ModelFormatError, match=r"no graph or IR version"):
        lc.compile(b"")


def test_not_onnx_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"GIF89a definitely not protobuf \xff\xff\xff")
    with pytest.raises(lc.ModelFormatError, match=r"is not an ONNX model") as info:
        lc.compile(str(path))
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "missing.onnx"
    with pytest.raises(lc.ModelFormatError) as info:
        lc.compile(path)
    assert str(info.value) == f"cannot read model '{path}': No such file or directory"


def test_wrong_source_type():
    with pytest.raises(lc.ModelFormatError, match=r"^expected a path, bytes or onnx.ModelProto, got int$"):
        lc.compile(42)


def test_model_from_path_and_bytes_imports_the_same(tmp_path):
    model = _shape_chain_model(13)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    texts = {str(lc.optimize(src, opt_level=0)) for src in (model, str(path), path, model.SerializeToString())}
    assert len(texts) == 1


def test_opset_6_is_rejected():
    model = make_model([helper.make_node("Relu", ["X"], ["Y"])], [("X", [1, 3])], [("Y", [1, 3])], opset=6,
                       ir_version=3)
    with pytest.raises(lc.ModelFormatError) as info:
        lc.compile(model)
    assert str(info.value) == "opset 6 is older than 7, the oldest lepton reads"


def test_no_default_domain_opset():
    model = make_model([helper.make_node("Relu", ["X"], ["Y"])], [("X", [1, 3])], [("Y", [1, 3])])
    del model.opset_import[:]
    with pytest.raises(lc.ModelFormatError, match="imports no version of the default ONNX domain"):
        lc.compile(model)


def test_node_reading_an_undefined_value():
    nodes = [helper.make_node("Relu", ["X"], ["a"], name="fine"),
             helper.make_node("Add", ["a", "ghost"], ["Y"], name="reader")]
    model = make_model(nodes, [("X", [1, 3])], [("Y", [1, 3])])
    with pytest.raises(lc.ModelFormatError) as info:
        lc.compile(model)
    assert str(info.value) == "node 'reader' reads 'ghost', which nothing defines"


def test_cycle():
    nodes = [helper.make_node("Add", ["X", "b"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["b"], name="relu")]
    model = make_model(nodes, [("X", [1, 3])], [("b", [1, 3])])
    with pytest.raises(lc.ModelFormatError) as info:
        lc.compile(model)
    assert str(info.value) == "the graph has a cycle through node 'add'"


def test_graph_output_never_produced():
    model = make_model([helper.make_node("Relu", ["X"], ["Y"])], [("X", [1, 3])], [("Z", [1, 3])])
    with pytest.raises(lc.ModelFormatError) as info:
        lc.compile(model)
    assert str(info.value) == "graph output 'Z' is never produced"


def test_value_defined_twice():
    nodes = [helper.make_node("Relu", ["X"], ["Y"]), helper.make_node("Relu", ["X"], ["Y"])]
    model = make_model(nodes, [("X", [1, 3])], [("Y", [1, 3])])
    with pytest.raises(lc.ModelFormatError, match=r"^value 'Y' is defined more than once$"):
        import_model(model)


@pytest.mark.parametrize("raw", [False, True], ids=["float_data", "raw_data"])
def test_initializer_data_not_matching_dims(raw):
    w = TensorProto()
    w.name, w.data_type = "W", TensorProto.FLOAT
    w.dims.extend([2, 3])
    if raw:
        w.raw_data = np.ones(7, np.float32).tobytes()
    else:
        w.float_data.extend([1.0, 2.0, 3.0, 4.0, 5.0])
    model = make_model([helper.make_node("Add", ["X", "W"], ["Y"])], [("X", [2, 3])], [("Y", [2, 3])], [w])
    with pytest.raises(lc.ModelFormatError) as info:
        lc.compile(model)
    assert str(info.value).startswith("initializer 'W': ")
    assert "(2,3)" in str(info.value).replace(" ", "") or "[2, 3]" in str(info.value)


def test_unsupported_input_element_type():
    model = make_model([helper.make_node("Relu", ["X"], ["Y"])], [("X", [1, 3], TensorProto.STRING)],
                       [("Y", [1, 3])])
    with pytest.raises(lc.ModelFormatError, match=r"^input 'X' has unsupported element type 8$"):
        import_model(model)


def test_conv_group_not_dividing_channels():
    node = helper.make_node("Conv", ["X", "W"], ["Y"], group=2, name="conv")
    model = make_model([node], [("X", ["N", 3, 5, 5])], [("Y", None)], {"W": np.ones((4, 1, 3, 3), np.float32)})
    with pytest.raises(ShapeError) as info:
        lc.compile(model)
    assert isinstance(info.value, lc.ModelFormatError)
    assert str(info.value) == \
        "node 'conv' (Conv): group 2 does not divide input channels 3 and output channels 4"


def test_conv_weight_channels_not_matching_group():
    node = helper.make_node("Conv", ["X", "W"], ["Y"], group=2, name="conv")
    model = make_model([node], [("X", ["N", 4, 5, 5])], [("Y", None)], {"W": np.ones((4, 1, 3, 3), np.float32)})
    with pytest.raises(ShapeError) as info:
        import_model(model)
    assert str(info.value) == "node 'conv' (Conv): input channels 4 / group 2 do not match the weight's 1"


@pytest.mark.parametrize("make,message", [
    (lambda: helper.make_node("Add", ["X"], ["Y"], name="n"), r"^node 'n' \(Add\)"),
    (lambda: helper.make_node("Softmax", ["X"], ["Y"], axis=5, name="n"), r"^node 'n' \(Softmax\): axis 5 is out"),
    (lambda: helper.make_node("Softmax", ["X"], ["Y"], axis="one", name="n"), r"^node 'n' \(Softmax\)"),
    (lambda: helper.make_node("MaxPool", ["X"], ["Y"], name="n", kernel_shape=[2]),
     r"^node 'n' \(MaxPool\): expects \[N, C, spatial"),
    (lambda: helper.make_node("Flatten", ["X"], ["Y"], axis=7, name="n"), r"^node 'n' \(Flatten\): axis 7"),
    (lambda: helper.make_node("Gemm", ["X", "X"], ["Y"], name="n"), r"^node 'n' \(Gemm\): inner dims differ"),
], ids=["missing_input", "axis_out_of_range", "string_axis", "maxpool_2d_input", "flatten_axis", "gemm_dims"])
def test_malformed_nodes_raise_model_format_errors(make, message):
    model = make_model([make()], [("X", [2, 3])], [("Y", None)], opset=13)
    with pytest.raises(lc.ModelFormatError, match=message):
        import_model(model)


def test_maxpool_without_kernel_shape():
    model = make_model([helper.make_node("MaxPool", ["X"], ["Y"], name="pool")], [("X", ["N", 2, 4, 4])],
                       [("Y", None)], opset=13)
    with pytest.raises(lc.ModelFormatError) as info:
        import_model(model)
    assert str(info.value) == "node 'pool' (MaxPool): kernel_shape attribute is required"


def test_reshape_target_not_known_at_compile_time():
    model = make_model([helper.make_node("Reshape", ["X", "s"], ["Y"], name="rs")],
                       [("X", [2, 3]), ("s", [2], TensorProto.INT64)], [("Y", None)], opset=13)
    with pytest.raises(lc.LeptonError, match=r"shape must be known at compile time"):
        import_model(model)
