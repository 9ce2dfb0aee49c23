"""The whole pipeline at each -O level: agreement with ONNX Runtime, and what -O3 makes of MNIST."""

import numpy as np
import onnxruntime as ort
import pytest

import lepton_compiler as lc
from lepton_compiler.demo import bundled_model_path, mnist_test_images
from lepton_compiler.ir.verifier import verify
from lepton_compiler.passes import passes_for_level

from test_fusion_pipeline import residual_model


def ort_outputs(model, feed):
    data = model if isinstance(model, (bytes, str)) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.mark.parametrize("opt_level", [0, 1, 2, 3])
def test_mnist_at_every_level_matches_onnxruntime(opt_level):
    x = mnist_test_images()[0][:32]
    compiled = lc.compile(bundled_model_path(), opt_level=opt_level, verify=True)
    ours = compiled.run(None, {"input": x})[0]
    theirs = ort_outputs(bundled_model_path(), {"input": x})[0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    assert (ours.argmax(1) == theirs.argmax(1)).all()


@pytest.mark.parametrize("opt_level", [0, 1, 2, 3])
def test_residual_network_at_every_level_matches_onnxruntime(opt_level):
    rng = np.random.default_rng(11)
    model = residual_model(rng)
    compiled = lc.compile(model, opt_level=opt_level, verify=True)
    for batch in (1, 3):
        x = rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)
        np.testing.assert_allclose(compiled(x), ort_outputs(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_mnist_at_O3_is_six_nodes_in_five_kernels():
    graph = lc.optimize(bundled_model_path(), opt_level=3)
    verify(graph)
    assert [n.op for n in graph.nodes] == ["FusedConv", "FusedConv", "FusedConv", "Flatten", "FusedGemm", "FusedGemm"]
    compiled = lc.compile(bundled_model_path(), opt_level=3)
    assert len(compiled.summary["kernels"]) == 5  # the Flatten is a view
    per_image, fixed = compiled.summary["workspace"]
    assert fixed == 0 and 0 < per_image < compiled.summary["workspace_unshared"][0]


def test_levels_are_nested_and_named():
    names = [[p.name for p in passes_for_level(level)] for level in range(4)]
    assert names[0] == []
    for lower, higher in zip(names, names[1:]):
        assert higher[: len(lower)] == lower
    assert "fuse-pool" in names[3] and "fuse-pool" not in names[2]


def test_unknown_level_is_an_error():
    with pytest.raises(lc.LeptonError, match="opt_level must be 0, 1, 2 or 3, not 4"):
        lc.optimize(bundled_model_path(), opt_level=4)
