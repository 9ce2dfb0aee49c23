"""``compile(model, keep=[...])``: intermediate values of the original graph, equal to ONNX Runtime's."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import lepton_compiler as lc
from lepton_compiler.demo import bundled_model_path, mnist_test_images

from conftest import make_model, ort_run

MODEL = bundled_model_path()
KEPT = ["/conv2/Conv_output_0", "/pool1/MaxPool_output_0", "/relu4/Relu_output_0"]


def with_outputs(path_or_model, names) -> onnx.ModelProto:
    """The model with ``names`` added as graph outputs (ONNX Runtime's way to see intermediates)."""
    model = onnx.load(path_or_model) if isinstance(path_or_model, str) else path_or_model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for name in names:
        copy.graph.output.append(helper.ValueInfoProto(name=name))
    return copy


@pytest.fixture(scope="module")
def images():
    return mnist_test_images()[0][:16]


def test_kept_values_equal_onnxruntime(images):
    model = lc.compile(MODEL, keep=KEPT)
    assert [o.name for o in model.outputs] == ["probabilities"] + KEPT
    got = model.run(["/conv2/Conv_output_0", "/relu4/Relu_output_0"], {"input": images})
    ref = ort_run(with_outputs(MODEL, KEPT), {"input": images})
    expected = dict(zip(["probabilities"] + KEPT, ref))
    assert got[0].shape == (16, 64, 11, 11) and got[1].shape == (16, 64)
    np.testing.assert_allclose(got[0], expected["/conv2/Conv_output_0"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], expected["/relu4/Relu_output_0"], rtol=1e-5, atol=1e-5)
    probs, conv2, pool1, relu4 = model.run(None, {"input": images})
    np.testing.assert_allclose(probs, expected["probabilities"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pool1, expected["/pool1/MaxPool_output_0"], rtol=1e-5, atol=1e-5)


def test_keeping_a_value_stops_its_fusion():
    graph = lc.optimize(MODEL, 3, keep=["/conv2/Conv_output_0"])
    (conv2,) = [n for n in graph.nodes if n.name == "/conv2/Conv"]
    assert conv2.op == "Conv" and conv2.outputs[0].name == "/conv2/Conv_output_0"
    assert [n.name for n in graph.nodes if n.op == "Relu"] == ["/relu2/Relu"]  # Relu2 and MaxPool2 stay apart
    assert len(graph.nodes) == 8
    assert [v.name for v in graph.outputs] == ["probabilities", "/conv2/Conv_output_0"]


def test_a_small_model_with_a_named_intermediate(rng):
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv2_out"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv2_out"], ["relu_out"], name="relu"),
             helper.make_node("MaxPool", ["relu_out"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2])]
    model = make_model(nodes, [("x", ["N", 2, 6, 6])], [("y", ["N", 4, 3, 3])], {"w": w})
    x = rng.standard_normal((3, 2, 6, 6)).astype(np.float32)
    compiled = lc.compile(model, keep=["conv2_out", "relu_out"])
    conv, relu = compiled.run(["conv2_out", "relu_out"], {"x": x})
    ref = ort_run(with_outputs(model, ["conv2_out", "relu_out"]), {"x": x})
    np.testing.assert_allclose(conv, ref[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(relu, ref[2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(compiled.run(["y"], {"x": x})[0], ref[0], rtol=1e-5, atol=1e-5)


def test_unknown_names_list_valid_ones():
    with pytest.raises(lc.LeptonError) as info:
        lc.compile(MODEL, keep=["conv2_out"])
    message = str(info.value)
    assert "'conv2_out'" in message and "/conv1/Conv_output_0" in message and "13 in all" in message
    with pytest.raises(lc.LeptonError):
        lc.optimize(MODEL, keep=[3])


def test_kept_values_survive_save_and_load(tmp_path, images):
    model = lc.compile(MODEL, keep=["/pool2/MaxPool_output_0"])
    path = tmp_path / "kept.lepton"
    model.save(path)
    loaded = lc.load(path)
    a = model.run(["/pool2/MaxPool_output_0"], {"input": images})[0]
    b = loaded.run(["/pool2/MaxPool_output_0"], {"input": images})[0]
    np.testing.assert_array_equal(a, b)


def test_keep_with_target_ort(images):
    model = lc.compile(MODEL, target="ort", providers=["CPUExecutionProvider"], keep=["/relu3/Relu_output_0"])
    got = model.run(["/relu3/Relu_output_0"], {"input": images})[0]
    ref = ort_run(with_outputs(MODEL, ["/relu3/Relu_output_0"]), {"input": images})[1]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
