"""``lepton bisect``: finds the pass (and the layer) where a planted fault makes lepton leave ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

from lepton_compiler.demo import bundled_model_path, mnist_test_images
from lepton_compiler.passes import pipeline
from lepton_compiler.passes.base import Pass, PassResult
from lepton_compiler.tools import bisect as bisect_tool
from lepton_compiler.tools.bisect import bisect_model, error_of

from test_cli import assert_ok, lepton

MODEL = bundled_model_path()


def corrupt_conv2(graph, options):
    """A test-only pass with a planted fault: conv2's weights scaled by 1.5 (same names, same IR text)."""
    g = graph.copy()
    for c in g.constants:
        if c.name == "conv2.weight":
            c.const = c.const * np.float32(1.5)
            c.known = c.const
    return PassResult(g, True)


CORRUPT = Pass("corrupt-weights", corrupt_conv2)


@pytest.fixture(scope="module")
def feed():
    return {"input": mnist_test_images()[0][:4]}


def plant(monkeypatch, after: str) -> None:
    """Insert CORRUPT into -O3 right after the pass named ``after``."""
    passes = list(pipeline.LEVELS[3])
    index = max(i for i, p in enumerate(passes) if p.name == after) + 1
    monkeypatch.setitem(pipeline.LEVELS, 3, passes[:index] + [CORRUPT] + passes[index:])


def test_finds_a_planted_fault_before_fusion(monkeypatch, feed):
    plant(monkeypatch, "canonicalize-reshape")
    result = bisect_model(MODEL, feed, opt_level=3)
    assert result.found and result.stage == "corrupt-weights" and result.mode == "interpreter"
    assert result.previous == "canonicalize-reshape"
    assert (result.layer.node, result.layer.value) == ("/conv2/Conv", "/conv2/Conv_output_0")
    assert all(c.interpreter_ok and c.native_ok for c in result.checks[:-1])
    text = str(result)
    assert "first difference: after pass 'corrupt-weights'" in text
    assert ">> %/conv2/Conv_output_0" in text  # the IR around the layer
    assert "constants whose contents changed (same names): conv2.weight" in text


def test_finds_a_planted_fault_after_fusion(monkeypatch, feed):
    plant(monkeypatch, "fuse-softmax")
    result = bisect_model(MODEL, feed, opt_level=3)
    assert result.stage == "corrupt-weights"
    assert result.layer.node == "/conv2/Conv" and result.layer.op == "lepton.FusedConv"
    assert result.layer.covers == ["/conv2/Conv", "/relu2/Relu", "/pool2/MaxPool"]
    assert result.layer.value == "/pool2/MaxPool_output_0"


def test_a_fault_only_native_code_makes_is_blamed_on_the_backend(monkeypatch, feed):
    real = bisect_tool._Runner._run

    def broken_backend(self, graph, mode, names):
        values = real(self, graph, mode, names)
        if mode == "native" and any(n.op == "FusedGemm" for n in graph.nodes):
            values = [v * np.float32(1.01) if name == "/relu4/Relu_output_0" else v for v, name in zip(values, names)]
        return values

    monkeypatch.setattr(bisect_tool._Runner, "_run", broken_backend)
    result = bisect_model(MODEL, feed, opt_level=3)
    assert (result.stage, result.mode) == ("fuse-activation", "native")
    assert result.layer.node == "/fc1/Gemm" and result.layer.covers == ["/fc1/Gemm", "/relu4/Relu"]
    assert "native code only" in str(result)


def test_agreement_and_tolerance(feed):
    result = bisect_model(MODEL, feed, opt_level=1, tolerance=1e-4)
    assert not result.found and len(result.checks) == 1 + len(pipeline.LEVELS[1])
    assert "agrees with ONNX Runtime after every stage" in str(result)
    assert error_of(np.ones(3), np.ones(3)) == 0.0
    assert error_of(np.ones(3), np.ones(4)) == float("inf")
    assert error_of(np.array([np.nan]), np.array([1.0])) == float("inf")


def test_cli_bisect(tmp_path, feed):
    path = tmp_path / "x.npy"
    np.save(path, feed["input"])
    proc = lepton("bisect", MODEL, "--input", f"input={path}", "-O", "1")
    assert_ok(proc)
    assert "agrees with ONNX Runtime" in proc.stdout
    help_text = lepton("bisect", "--help").stdout
    assert "'lepton compile --quantize int8 --report' gives the per-layer error" in " ".join(help_text.split())
    proc = lepton("bisect", MODEL, "--input", f"input={path}", "-O", "0", "--tolerance", "1e-12")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "first difference: after the import" in proc.stdout
