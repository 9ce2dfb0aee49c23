"""The fusion report: where each pattern fired, and why candidates were refused."""

from __future__ import annotations

import numpy as np
from onnx import helper

from lepton_compiler.demo import bundled_model_path
from lepton_compiler.frontends.onnx import import_model
from lepton_compiler.passes import PassOptions, optimize_graph
from lepton_compiler.passes.fusion import FusionNote
from lepton_compiler.tools.report import fusion_report

from conftest import make_model
from test_cli import assert_ok, lepton

MODEL = bundled_model_path()


def conv_used_twice(output_too: bool = False):
    """x -> Conv -> c; Relu(c) -> r; Add(r, c) -> y (and c a graph output when ``output_too``)."""
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "b": rng.standard_normal(4).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "c"], ["y"], name="add")]
    outputs = [("y", ["N", 4, 8, 8])] + ([("c", ["N", 4, 8, 8])] if output_too else [])
    return make_model(nodes, [("x", ["N", 3, 8, 8])], outputs, inits)


def test_mnist_report_lists_where_each_pattern_fired():
    report = fusion_report(MODEL, 3)
    activation = report.pattern("fuse-activation")
    assert [(f.node, f.covers) for f in activation.fired] == [
        ("/conv1/Conv", ["/conv1/Conv", "/relu1/Relu"]), ("/conv2/Conv", ["/conv2/Conv", "/relu2/Relu"]),
        ("/conv3/Conv", ["/conv3/Conv", "/relu3/Relu"]), ("/fc1/Gemm", ["/fc1/Gemm", "/relu4/Relu"])]
    pool = report.pattern("fuse-pool")
    assert [f.covers for f in pool.fired] == [["/conv1/Conv", "/relu1/Relu", "/pool1/MaxPool"],
                                               ["/conv2/Conv", "/relu2/Relu", "/pool2/MaxPool"]]
    assert [f.covers for f in report.pattern("fuse-softmax").fired] == [["/fc2/Gemm", "/softmax/Softmax"]]
    assert all(not p.refused for p in report.patterns)
    assert not report.pattern("fuse-residual").fired
    text = str(report)
    assert "fired    /conv2/Conv -> lepton.FusedConv covering /conv2/Conv + /relu2/Relu + /pool2/MaxPool" in text
    assert "fuse-residual" in text and "no candidates" in text


def test_conv_output_used_twice_is_the_reason():
    report = fusion_report(conv_used_twice(), 3)
    (activation,) = report.pattern("fuse-activation").refused
    assert (activation.node, activation.op, activation.partner, activation.partner_op) == ("relu", "Relu", "conv", "Conv")
    assert activation.reason == "Conv output used twice (by relu, add)"
    (residual,) = report.pattern("fuse-residual").refused
    assert (residual.node, residual.partner) == ("add", "conv")
    assert residual.reason.startswith("Conv output used twice")
    assert not report.pattern("fuse-activation").fired and not report.pattern("fuse-residual").fired
    assert "refused  Relu relu with Conv conv: Conv output used twice (by relu, add)" in str(report)


def test_graph_output_is_the_reason():
    model = conv_used_twice(output_too=True)
    reasons = {r.reason for r in fusion_report(model, 3).pattern("fuse-activation").refused}
    assert reasons == {"Conv output 'c' is a graph output"}


def test_kept_values_show_up_as_refusals():
    report = fusion_report(MODEL, 3, keep=["/conv2/Conv_output_0"])
    (refused,) = report.pattern("fuse-activation").refused
    assert refused.node == "/relu2/Relu" and "is a graph output" in refused.reason
    assert ["/conv2/Conv", "/relu2/Relu"] not in [f.covers for f in report.pattern("fuse-activation").fired]


def test_already_fused_and_softmax_reasons():
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
             "g": rng.standard_normal((4 * 4 * 4, 5)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("MaxPool", ["p"], ["r"], name="pool2", kernel_shape=[1, 1]),  # a second pool
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "g"], ["d"], name="dense"),
             helper.make_node("Softmax", ["d"], ["s"], name="softmax"),
             helper.make_node("Relu", ["s"], ["y"], name="last")]
    model = make_model(nodes, [("x", ["N", 3, 8, 8])], [("y", ["N", 5])], inits)
    report = fusion_report(model, 3)
    (pool,) = report.pattern("fuse-pool").refused
    assert (pool.node, pool.partner, pool.reason) == ("pool2", "conv", "conv already has a pool fused")
    (softmax,) = report.pattern("fuse-softmax").refused
    assert (softmax.node, softmax.reason) == ("softmax", "the Softmax output is not a graph output")


def test_explaining_does_not_change_the_passes():
    notes: list = []
    plain = optimize_graph(import_model(conv_used_twice()), 3)
    explained = optimize_graph(import_model(conv_used_twice()), 3, PassOptions(explain=notes))
    assert str(plain) == str(explained)
    assert notes and all(isinstance(n, FusionNote) for n in notes)
    assert PassOptions(explain=notes) == PassOptions()  # an output, not a setting


def test_low_levels_have_no_patterns():
    assert "no fusion patterns" in str(fusion_report(MODEL, 1))


def test_cli_compile_report(tmp_path):
    proc = lepton("compile", MODEL, "--report")
    assert_ok(proc)
    assert proc.stdout.startswith("fusion report (-O3):")
    assert "fired    /fc2/Gemm -> lepton.FusedGemm covering /fc2/Gemm + /softmax/Softmax" in proc.stdout
    out = tmp_path / "m.lepton"
    proc = lepton("compile", MODEL, "--report", "-o", out)
    assert_ok(proc)
    assert out.is_file() and "fusion report" in proc.stdout and "wrote" in proc.stdout
