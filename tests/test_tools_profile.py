"""``lepton profile``: time per compiled kernel, keyed by ONNX nodes, next to ONNX Runtime's profile."""

from __future__ import annotations

import pytest

import lepton_compiler as lc
from lepton_compiler.demo import bundled_model_path
from lepton_compiler.tools.profile import _match_ort_name, make_feed, profile_model

from test_cli import assert_ok, assert_one_line_error, lepton

MODEL = bundled_model_path()


@pytest.fixture(scope="module")
def profile():
    return profile_model(MODEL, batch=16, threads=1, repeats=40)


def test_every_kernel_has_a_row_with_both_times(profile):
    kernels = lc.compile(MODEL).summary["kernels"]
    assert [k.kernel for k in profile.kernels] == kernels
    assert [k.covers for k in profile.kernels][0] == ["/conv1/Conv", "/relu1/Relu", "/pool1/MaxPool"]
    for k in profile.kernels:
        assert k.seconds > 0 and k.ort_seconds > 0 and k.ort_nodes, k
    assert profile.ort_wall > 0 and profile.repeats == 40 and profile.ort_repeats == 40
    # ORT's Flatten is no kernel in lepton (a view): a row of its own, matched to its ONNX node
    assert "/flatten/Flatten" in [u.onnx_node for u in profile.unmatched]


def test_kernels_cover_the_run(profile):
    # the kernels are timed inside the same runs that are timed end to end
    assert profile.kernel_total <= profile.wall * 1.02
    assert profile.kernel_total >= 0.5 * profile.wall


def test_table(profile):
    text = profile.format()
    lines = text.splitlines()
    header = next(line for line in lines if "lepton µs" in line)
    assert "ORT µs" in header and "covers (ONNX nodes)" in header
    for k in profile.kernels:
        (row,) = [line for line in lines if line.strip().startswith(k.kernel + " ")]
        assert " + ".join(k.covers) in row
        assert float(row.split()[-2]) > 0  # the ORT column
    assert "sum of kernels" in text and "end to end" in text


def test_ort_names_map_to_onnx_nodes():
    import onnx
    proto = onnx.load(MODEL)
    names = [n.name for n in proto.graph.node]
    assert _match_ort_name("/conv1/Conv", names, proto) == "/conv1/Conv"
    assert _match_ort_name("fused /fc1/Gemm", names, proto) == "/fc1/Gemm"
    assert _match_ort_name("/relu1/Relu_output_0_nchwc", names, proto) == "/relu1/Relu"
    assert _match_ort_name("ReorderOutput", names, proto) is None


def test_random_feed_follows_the_batch():
    model = lc.compile(MODEL)
    feed = make_feed(model.inputs, 5)
    assert feed["input"].shape == (5, 1, 28, 28) and feed["input"].dtype.name == "float32"


def test_cli_profile():
    proc = lepton("profile", MODEL, "--batch", "4", "--repeats", "20", "--ort-optimization", "basic")
    assert_ok(proc)
    assert "lepton.FusedConv /conv2/Conv" in proc.stdout and "ORT µs" in proc.stdout
    assert "batch 4, 1 thread" in proc.stdout
    assert_one_line_error(lepton("profile", MODEL, "--batch", "0"), "--batch must be a positive integer")
