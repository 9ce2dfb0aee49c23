"""target="ort": lepton's optimized graph as standard ONNX, run by ONNX Runtime.

Everything here runs on the CPU execution provider, which every onnxruntime has. The one test that
needs a GPU (``onnxruntime-gpu`` with CUDA and a device) is skipped elsewhere, with that reason.
"""

from __future__ import annotations

import json
import logging
import threading
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import lepton_compiler as lc
from lepton_compiler.backends import ort as ort_backend
from lepton_compiler.backends.ort import CPU, ProviderRequest, provider_request, resolve_providers
from lepton_compiler.demo import bundled_model_path, mnist_test_images
from lepton_compiler.errors import ArtifactError, LeptonError
from lepton_compiler.runtime import OrtModel
from lepton_compiler.runtime.artifact import manifest_digest

from conftest import make_model
from test_fusion_pipeline import residual_model
from test_runtime import _bad_feeds, _edit_manifest, _flip_byte, _rewrite_zip
from test_cli import assert_ok, assert_one_line_error, lepton

MODEL = bundled_model_path()
TOL = 1e-5
CUDA = "CUDAExecutionProvider"
HAS_CUDA = CUDA in ort.get_available_providers()


def reference(model, feed: dict) -> list[np.ndarray]:
    """Plain ONNX Runtime on the original model, CPU provider, its default settings."""
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, providers=[CPU]).run(None, feed)


@pytest.fixture(scope="module")
def images():
    return mnist_test_images()[0]


@pytest.fixture(scope="module")
def mnist_reference(images):
    return reference(MODEL, {"input": images})[0]


@pytest.fixture(scope="module")
def model():
    return lc.compile(MODEL, target="ort", providers=[CPU])


@pytest.fixture(scope="module")
def cpu_model():
    return lc.compile(MODEL)


# -- numerics against plain ONNX Runtime ----------------------------------------------------------

def test_mnist_1000_images_match_onnxruntime(model, images, mnist_reference):
    assert isinstance(model, OrtModel)
    got = model.run(None, {"input": images})[0]
    assert got.shape == (1000, 10) and got.dtype == np.float32
    assert np.abs(got - mnist_reference).max() <= TOL
    assert (got.argmax(1) == mnist_reference.argmax(1)).all()


def test_providers_report_the_session(model):
    assert model.providers == [CPU]
    assert model.providers == model.session.get_providers()
    assert "CPUExecutionProvider" in repr(model)


def test_exported_onnx_passes_the_checker(model):
    proto = model.onnx_model()
    onnx.checker.check_model(proto, full_check=True)
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}   # lepton's fused ops expanded
    assert proto.ir_version == helper.find_min_ir_version_for(list(proto.opset_import))
    # the nodes the session runs are lepton's -O3 graph, not the original
    assert model.summary["nodes"][0].startswith("lepton.FusedConv")


@pytest.mark.parametrize("opt_level", [0, 1, 2, 3])
def test_every_opt_level_matches_onnxruntime(opt_level, images, mnist_reference):
    m = lc.compile(MODEL, target="ort", providers=[CPU], opt_level=opt_level)
    got = m.run(None, {"input": images})[0]
    assert np.abs(got - mnist_reference).max() <= TOL
    assert (got.argmax(1) == mnist_reference.argmax(1)).all()
    assert m.options["opt_level"] == opt_level


@pytest.mark.parametrize("level", ["disabled", "basic", "extended", "all"])
def test_ort_optimization_levels(level, images, mnist_reference):
    m = lc.compile(MODEL, target="ort", providers=[CPU], ort_optimization=level, threads=1)
    got = m.run(None, {"input": images[:200]})[0]
    assert np.abs(got - mnist_reference[:200]).max() <= TOL
    assert m.settings.optimization == level
    expected = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                "all": "ORT_ENABLE_ALL"}[level]
    assert m.session.get_session_options().graph_optimization_level == getattr(ort.GraphOptimizationLevel, expected)


def test_session_settings(model):
    options = model.session.get_session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC   # the default
    assert options.intra_op_num_threads == 0                                                   # all cores
    two = lc.compile(MODEL, target="ort", providers=[CPU], threads=2)
    assert two.session.get_session_options().intra_op_num_threads == 2
    for bad in ({"threads": 0}, {"ort_optimization": "fast"}):
        with pytest.raises(LeptonError):
            lc.compile(MODEL, target="ort", providers=[CPU], **bad)


def nhwc_residual_model(rng: np.random.Generator):
    """An NHWC input (Transpose to NCHW), Conv-BN-Relu, a residual block (Conv-BN-Relu-Conv-BN, Add the
    block input, Relu), Flatten, Gemm, Softmax."""
    c = 4
    inits = {
        "w0": (0.3 * rng.standard_normal((c, 3, 3, 3))).astype(np.float32),
        "b0": rng.standard_normal(c).astype(np.float32),
        "w1": (0.3 * rng.standard_normal((c, c, 3, 3))).astype(np.float32),
        "w2": (0.3 * rng.standard_normal((c, c, 3, 3))).astype(np.float32),
        "fc_w": (0.2 * rng.standard_normal((10, c * 6 * 6))).astype(np.float32),
        "fc_b": rng.standard_normal(10).astype(np.float32),
    }
    for bn in ("bn0", "bn1", "bn2"):
        inits[f"{bn}_scale"] = (0.5 + rng.random(c)).astype(np.float32)
        inits[f"{bn}_bias"] = rng.standard_normal(c).astype(np.float32)
        inits[f"{bn}_mean"] = rng.standard_normal(c).astype(np.float32)
        inits[f"{bn}_var"] = (0.5 + rng.random(c)).astype(np.float32)

    def bn(name, x, y):
        return helper.make_node("BatchNormalization", [x] + [f"{name}_{k}" for k in ("scale", "bias", "mean", "var")],
                                [y], name=name, epsilon=1e-3)

    pads = {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]}
    nodes = [
        helper.make_node("Transpose", ["x"], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w0", "b0"], ["c0"], name="conv0", **pads),
        bn("bn0", "c0", "n0"),
        helper.make_node("Relu", ["n0"], ["a0"], name="relu0"),
        helper.make_node("Conv", ["a0", "w1"], ["c1"], name="conv1", **pads),
        bn("bn1", "c1", "n1"),
        helper.make_node("Relu", ["n1"], ["a1"], name="relu1"),
        helper.make_node("Conv", ["a1", "w2"], ["c2"], name="conv2", **pads),
        bn("bn2", "c2", "n2"),
        helper.make_node("Add", ["n2", "a0"], ["sum"], name="residual"),
        helper.make_node("Relu", ["sum"], ["a2"], name="relu2"),
        helper.make_node("Flatten", ["a2"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    return make_model(nodes, [("x", ["N", 6, 6, 3])], [("probs", ["N", 10])], inits)


@pytest.mark.parametrize("opt_level", [0, 3])
@pytest.mark.parametrize("build", [nhwc_residual_model, residual_model], ids=["nhwc-residual", "residual"])
def test_batchnorm_residual_models_match_onnxruntime(build, opt_level):
    rng = np.random.default_rng(5)
    proto = build(rng)
    m = lc.compile(proto, target="ort", providers=[CPU], opt_level=opt_level)
    onnx.checker.check_model(m.onnx_model(), full_check=True)
    if opt_level == 3:
        assert "BatchNormalization" not in {n.op_type for n in m.onnx_model().graph.node}   # folded by lepton
    shape = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    for batch in (1, 5):
        x = rng.standard_normal([batch] + shape[1:]).astype(np.float32)
        got = m(x)
        want = reference(proto, {proto.graph.input[0].name: x})[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)


def test_two_dynamic_dims():
    """The cpu backend allows one dynamic dim; ONNX Runtime any number. The checks stay per symbol."""
    proto = make_model([helper.make_node("Add", ["a", "b"], ["c"], name="add")],
                       [("a", ["N", "S"]), ("b", ["N", "S"])], [("c", ["N", "S"])])
    m = lc.compile(proto, target="ort", providers=[CPU])
    a, b = np.ones((2, 5), np.float32), np.full((2, 5), 2, np.float32)
    np.testing.assert_array_equal(m(a, b), a + b)
    with pytest.raises(lc.InputError) as info:
        m(a, b[:, :4])
    assert str(info.value) == "input 'b' has S=4 in dim 1, but another input has S=5"


# -- the run contract, the same as the cpu target's ----------------------------------------------

@pytest.mark.parametrize("case", range(9), ids=[c[0] for c in _bad_feeds(np.zeros((1, 1, 28, 28)))])
def test_input_errors_are_the_cpu_targets(model, cpu_model, images, case):
    _, feed, message = _bad_feeds(images[:16])[case]
    with pytest.raises(lc.InputError) as ours:
        model.run(None, feed)
    with pytest.raises(lc.InputError) as cpus:
        cpu_model.run(None, feed)
    assert isinstance(ours.value, ValueError)
    assert str(ours.value) == str(cpus.value) == message


def test_other_usage_errors_are_the_cpu_targets(model, cpu_model, images):
    x = images[:4]
    calls = [lambda m: m.run(None, [x]), lambda m: m(x, x), lambda m: m(x, input=x),
             lambda m: m.run(["nope"], {"input": x}), lambda m: m.run("probabilities", {"input": x})]
    for call in calls:
        with pytest.raises(lc.InputError) as ours:
            call(model)
        with pytest.raises(lc.InputError) as cpus:
            call(cpu_model)
        assert str(ours.value) == str(cpus.value)


def test_run_signature(model, cpu_model, images):
    x = images[:16]
    assert model.inputs == cpu_model.inputs and model.outputs == cpu_model.outputs
    model.inputs.clear()
    assert len(model.inputs) == 1
    everything = model.run(None, {"input": x})
    named = model.run(["probabilities"], {"input": x})
    assert isinstance(everything, list) and len(everything) == 1
    np.testing.assert_array_equal(everything[0], named[0])
    np.testing.assert_array_equal(model(x), everything[0])
    np.testing.assert_array_equal(model(input=x), everything[0])
    assert model.run([], {"input": x}) == []
    # non-contiguous, Fortran-ordered and read-only inputs give the same result
    big = np.zeros((16, 1, 56, 56), np.float32)
    big[:, :, ::2, ::2] = x
    readonly = x.copy()
    readonly.setflags(write=False)
    for arr in (big[:, :, ::2, ::2], np.asfortranarray(x), readonly):
        np.testing.assert_array_equal(model(arr), everything[0])


def test_concurrent_runs(model, images):
    xs = [images[i * 10:i * 10 + b] for i, b in enumerate([1, 3, 7, 16])]
    expected = [model(x) for x in xs]
    errors = []

    def worker(t):
        try:
            for rep in range(5):
                for k in range(len(xs)):
                    k2 = (k + t) % len(xs)
                    np.testing.assert_array_equal(model(xs[k2]), expected[k2])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_run_on_device_cpu(model, images):
    x = images[:8]
    (value,) = model.run_on_device(None, {"input": x}, device="cpu")
    assert isinstance(value, ort.OrtValue) and value.device_name().lower() == "cpu"
    np.testing.assert_array_equal(value.numpy(), model(x))
    with pytest.raises(LeptonError, match="cannot be left on 'cuda'"):
        model.run_on_device(None, {"input": x}, device="cuda")
    with pytest.raises(lc.InputError):
        model.run_on_device(None, {"input": x.astype(np.float64)}, device="cpu")


def test_onnxruntime_failure_is_a_lepton_error():
    """What lepton's checks cannot know (here: a batch that does not broadcast) comes back from
    onnxruntime as a LeptonError, not as onnxruntime's own exception."""
    proto = make_model([helper.make_node("Add", ["a", "k"], ["c"], name="add")],
                       [("a", ["N", 3])], [("c", [4, 3])], {"k": np.ones((4, 3), np.float32)})
    m = lc.compile(proto, target="ort", providers=[CPU], opt_level=0)
    np.testing.assert_array_equal(m(np.ones((1, 3), np.float32)), np.full((4, 3), 2, np.float32))
    with pytest.raises(LeptonError, match="onnxruntime failed to run the model"):
        m(np.ones((2, 3), np.float32))


# -- providers ---------------------------------------------------------------------------------

def test_missing_provider_alone_is_an_error():
    with pytest.raises(LeptonError) as info:
        lc.compile(MODEL, target="ort", providers=[CUDA])
    message = str(info.value)
    assert f"'{CUDA}' is not installed" in message
    assert "pip install onnxruntime-gpu" in message and "lepton_compiler[gpu]" in message


@pytest.mark.skipif(HAS_CUDA, reason="CUDAExecutionProvider is installed here")
def test_missing_provider_falls_back_to_cpu_with_one_warning(caplog, images, mnist_reference):
    with caplog.at_level(logging.WARNING, logger="lepton_compiler"):
        m = lc.compile(MODEL, target="ort", providers=[CUDA, CPU])
        got = m.run(None, {"input": images[:100]})[0]
        m.run(None, {"input": images[:10]})
    records = [r for r in caplog.records if r.name == "lepton_compiler"]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].levelno == logging.WARNING
    assert CUDA in records[0].getMessage() and "pip install onnxruntime-gpu" in records[0].getMessage()
    assert m.providers == [CPU]
    assert np.abs(got - mnist_reference[:100]).max() <= TOL


def test_no_warning_when_every_provider_is_there(caplog):
    with caplog.at_level(logging.DEBUG, logger="lepton_compiler"):
        lc.compile(MODEL, target="ort", providers=[CPU])
    assert not [r for r in caplog.records if r.name == "lepton_compiler"]


@pytest.mark.skipif(HAS_CUDA, reason="CUDAExecutionProvider is installed here")
def test_strict_refuses_a_missing_provider():
    with pytest.raises(LeptonError) as info:
        lc.compile(MODEL, target="ort", providers=[CUDA, CPU], strict=True)
    assert CUDA in str(info.value) and "strict" in str(info.value)
    assert "pip install onnxruntime-gpu" in str(info.value)
    # strict with what is installed is fine
    assert lc.compile(MODEL, target="ort", providers=[CPU], strict=True).providers == [CPU]


def test_unknown_provider_names():
    with pytest.raises(LeptonError) as info:
        lc.compile(MODEL, target="ort", providers=["NoSuchExecutionProvider"])
    assert "unknown execution provider 'NoSuchExecutionProvider'" in str(info.value)
    # a typo is an error even next to a valid name: it would otherwise fall back without a word
    with pytest.raises(LeptonError, match="'cudaExecutionProvider'"):
        lc.compile(MODEL, target="ort", providers=["cudaExecutionProvider", CPU])


def test_auto_picks_the_best_installed_provider():
    auto = provider_request("auto")
    assert provider_request(None) == auto
    known = ort.get_all_providers()
    assert resolve_providers(auto, [CPU], known).providers == [CPU]
    assert resolve_providers(auto, ["AzureExecutionProvider", CPU], known).providers == [CPU]
    assert resolve_providers(auto, [CUDA, CPU], known).providers == [CUDA, CPU]
    assert resolve_providers(auto, ["TensorrtExecutionProvider", CUDA, CPU], known).providers == \
        ["TensorrtExecutionProvider", CUDA, CPU]
    assert resolve_providers(auto, ["DmlExecutionProvider", CPU], known).providers == ["DmlExecutionProvider", CPU]
    assert resolve_providers(auto, ["CoreMLExecutionProvider", "DmlExecutionProvider", CPU], known).providers == \
        ["DmlExecutionProvider", CPU]
    assert ProviderRequest.from_json(auto.to_json()) == auto
    m = lc.compile(MODEL, target="ort", providers="auto")
    assert m.providers == resolve_providers(auto).providers[:len(m.providers)]
    default = lc.compile(MODEL, target="ort")
    assert default.options["providers"] == ["auto"] and default.providers == m.providers


def test_auto_artifact_resolves_again_on_load(tmp_path, images):
    m = lc.compile(MODEL, target="ort")
    m.save(tmp_path / "auto.lepton")
    loaded = lc.load(tmp_path / "auto.lepton")
    assert loaded.request == provider_request("auto") and loaded.providers == m.providers
    assert loaded(images[:4]).tobytes() == m(images[:4]).tobytes()


def test_resolution_keeps_order_and_appends_cpu():
    known = ort.get_all_providers()
    here = [CUDA, "DmlExecutionProvider", CPU]
    r = resolve_providers(provider_request(["DmlExecutionProvider", CUDA]), here, known)
    assert r.providers == ["DmlExecutionProvider", CUDA, CPU] and r.missing == []
    r = resolve_providers(provider_request([CUDA], strict=True), here, known)
    assert r.providers == [CUDA]                       # strict: no CPU appended
    r = resolve_providers(provider_request(["TensorrtExecutionProvider", CUDA]), here, known)
    assert r.providers == [CUDA, CPU] and r.missing == ["TensorrtExecutionProvider"]


def test_provider_options():
    r = provider_request([CUDA, CPU], [{"device_id": 1}, {}])
    assert r.options == ({"device_id": "1"}, {})
    assert provider_request([(CUDA, {"device_id": 0}), CPU]).options == ({"device_id": "0"}, {})
    assert ProviderRequest.from_json(r.to_json()) == r
    for bad in ([CUDA], "oops", [{}, {}, {}]):
        with pytest.raises(LeptonError):
            provider_request([CUDA, CPU], bad)
    for providers in ("CPUExecutionProvider", [], [CPU, CPU], ["auto", CPU], [3]):
        with pytest.raises(LeptonError):
            provider_request(providers)
    with pytest.raises(LeptonError, match="not both"):
        provider_request([(CUDA, {})], [{}])
    m = lc.compile(MODEL, target="ort", providers=[CPU], provider_options=[{"arena_extend_strategy":
                                                                           "kSameAsRequested"}])
    assert m.request.options == ({"arena_extend_strategy": "kSameAsRequested"},)
    assert m.options["provider_options"] == [{"arena_extend_strategy": "kSameAsRequested"}]
    assert CPU in m.provider_options   # (the CPU provider reports no options back)


class _FakeSession:
    def __init__(self, model, options, providers, provider_options, enable_fallback):
        if providers[0] == CUDA:
            raise RuntimeError("CUDA failure 35: CUDA driver version is insufficient\nmore detail")
        self._providers = [p for p in providers if p != "TensorrtExecutionProvider"]  # started quietly without it

    def get_providers(self):
        return self._providers


class _FakeOrt:
    __version__ = "0.0-fake"
    InferenceSession = _FakeSession
    SessionOptions = ort.SessionOptions
    GraphOptimizationLevel = ort.GraphOptimizationLevel

    @staticmethod
    def get_available_providers():
        return ["TensorrtExecutionProvider", CUDA, CPU]

    @staticmethod
    def get_all_providers():
        return ort.get_all_providers()


def test_providers_that_fail_to_start(monkeypatch, caplog):
    """A provider that is installed but cannot start (no driver, no TensorRT) is dropped with one
    warning, or refused under strict; simulated, since this needs a GPU build of onnxruntime."""
    monkeypatch.setattr(ort_backend, "_ort", lambda: _FakeOrt)
    settings = ort_backend.SessionSettings()
    with caplog.at_level(logging.WARNING, logger="lepton_compiler"):
        session = ort_backend.create_session(b"", provider_request([CUDA]), settings)
    assert session.get_providers() == [CPU]
    (record,) = [r for r in caplog.records if r.name == "lepton_compiler"]
    assert f"'{CUDA}' failed to start (CUDA failure 35: CUDA driver version is insufficient)" in record.getMessage()
    with pytest.raises(LeptonError, match="CUDA driver version is insufficient"):
        ort_backend.create_session(b"", provider_request([CUDA], strict=True), settings)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lepton_compiler"):
        session = ort_backend.create_session(b"", provider_request(["TensorrtExecutionProvider", CPU]), settings)
    assert session.get_providers() == [CPU]
    (record,) = [r for r in caplog.records if r.name == "lepton_compiler"]
    assert "'TensorrtExecutionProvider' failed to start" in record.getMessage()
    with pytest.raises(LeptonError, match="TensorrtExecutionProvider' failed to start"):
        ort_backend.create_session(b"", provider_request(["TensorrtExecutionProvider", CPU], strict=True), settings)


def test_option_errors():
    with pytest.raises(LeptonError, match="quantize"):
        lc.compile(MODEL, target="ort", providers=[CPU], quantize="int8")
    with pytest.raises(LeptonError, match="mcpu"):
        lc.compile(MODEL, target="ort", mcpu="x86-64-v2")
    for kwargs in ({"providers": [CPU]}, {"provider_options": [{}]}, {"strict": True},
                   {"ort_optimization": "all"}):
        with pytest.raises(LeptonError, match="applies to target='ort'"):
            lc.compile(MODEL, **kwargs)
    with pytest.raises(LeptonError, match="'tpu'"):
        lc.compile(MODEL, target="tpu")


@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu with CUDAExecutionProvider and a CUDA GPU")
def test_cuda_provider(images, mnist_reference):  # pragma: no cover - GPU machines only
    m = lc.compile(MODEL, target="ort", providers=[CUDA], strict=True)
    assert m.providers[0] == CUDA
    got = m.run(None, {"input": images})[0]
    assert np.abs(got - mnist_reference).max() <= 1e-4
    assert (got.argmax(1) == mnist_reference.argmax(1)).all()
    (value,) = m.run_on_device(None, {"input": images[:8]}, device="cuda")
    assert value.device_name().lower() == "cuda"
    np.testing.assert_allclose(value.numpy(), got[:8], rtol=1e-5, atol=1e-6)


# -- artifacts ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    m = lc.compile(MODEL, target="ort", providers=[CPU], threads=1, ort_optimization="extended", opt_level=2)
    path = tmp_path_factory.mktemp("ort") / "mnist-ort.lepton"
    m.save(path)
    return m, path


def test_save_load_round_trip(artifact, images):
    m, path = artifact
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("manifest.json"))
        assert zf.read("optimized.onnx") == m.onnx_bytes
        assert zf.read("model.onnx") == m.model_bytes
    assert names == {"manifest.json", "optimized.onnx", "model.onnx"}
    assert manifest["backend"] == "ort" and manifest["version"] == 1
    assert manifest["ort"]["request"] == {"providers": [CPU], "options": [{}], "strict": False}
    assert manifest["ort"]["settings"] == {"threads": 1, "optimization": "extended"}
    loaded = lc.load(path)
    assert isinstance(loaded, OrtModel)
    assert loaded.providers == [CPU]
    assert loaded.inputs == m.inputs and loaded.outputs == m.outputs
    assert loaded.request == m.request and loaded.settings == m.settings and loaded.options == m.options
    assert loaded.session.get_session_options().intra_op_num_threads == 1
    for batch in (1, 7, 64):
        assert loaded(images[:batch]).tobytes() == m(images[:batch]).tobytes()
    resaved = path.parent / "resaved.lepton"
    lc.load(str(path)).save(str(resaved))
    assert lc.load(resaved)(images[:3]).tobytes() == m(images[:3]).tobytes()


@pytest.mark.parametrize("member", ["optimized.onnx", "model.onnx"])
def test_tampered_ort_artifact(artifact, tmp_path, member):
    bad = tmp_path / "bad.lepton"
    _rewrite_zip(artifact[1], bad, member, _flip_byte)
    with pytest.raises(ArtifactError, match=f"checksum of {member}"):
        lc.load(bad)


def test_edited_ort_manifest(artifact, tmp_path):
    bad = tmp_path / "edited.lepton"
    _rewrite_zip(artifact[1], bad, "manifest.json",
                 _edit_manifest(lambda m: m["ort"]["request"].update(providers=[CUDA])))
    with pytest.raises(ArtifactError, match="manifest checksum"):
        lc.load(bad)


@pytest.mark.skipif(HAS_CUDA, reason="CUDAExecutionProvider is installed here")
def test_artifact_asking_for_a_missing_provider(artifact, tmp_path, caplog):
    """The provider request is resolved on load: an artifact built for CUDA (with CPU fallback) loads
    on a machine without it, with the warning; one built for CUDA alone says what to install."""
    fallback = tmp_path / "cuda-cpu.lepton"
    _rewrite_zip(artifact[1], fallback, "manifest.json",
                 _edit_manifest(lambda m: m["ort"]["request"].update(providers=[CUDA, CPU], options=[{}, {}]),
                                reseal=True))
    with caplog.at_level(logging.WARNING, logger="lepton_compiler"):
        assert lc.load(fallback).providers == [CPU]
    assert len([r for r in caplog.records if r.name == "lepton_compiler"]) == 1
    alone = tmp_path / "cuda.lepton"
    _rewrite_zip(artifact[1], alone, "manifest.json",
                 _edit_manifest(lambda m: m["ort"]["request"].update(providers=[CUDA]), reseal=True))
    with pytest.raises(LeptonError, match="pip install onnxruntime-gpu"):
        lc.load(alone)


def test_cpu_artifacts_say_cpu_and_old_ones_still_load(cpu_model, tmp_path, images):
    path = tmp_path / "cpu.lepton"
    cpu_model.save(path)
    with zipfile.ZipFile(path) as zf:
        assert json.loads(zf.read("manifest.json"))["backend"] == "cpu"
    old = tmp_path / "old.lepton"   # as written before the field existed
    _rewrite_zip(path, old, "manifest.json", _edit_manifest(lambda m: m.pop("backend"), reseal=True))
    with zipfile.ZipFile(old) as zf:
        assert "backend" not in json.loads(zf.read("manifest.json"))
    loaded = lc.load(old)
    assert isinstance(loaded, lc.CompiledModel)
    assert loaded(images[:5]).tobytes() == cpu_model(images[:5]).tobytes()
    future = tmp_path / "future.lepton"
    _rewrite_zip(path, future, "manifest.json", _edit_manifest(lambda m: m.update(backend="npu"), reseal=True))
    with pytest.raises(ArtifactError, match="backend 'npu'"):
        lc.load(future)
    assert manifest_digest({"a": 1}) == manifest_digest({"a": 1, "manifest_sha256": "x"})


# -- the command line ----------------------------------------------------------------------------

def test_cli_compile_and_run(tmp_path, images):
    x = images[:50]
    np.save(tmp_path / "x.npy", x)
    art, out = tmp_path / "m.lepton", tmp_path / "o.npz"
    proc = lepton("compile", MODEL, "--target", "ort", "--providers", CPU, "-o", art)
    assert_ok(proc)
    assert "for onnxruntime on CPUExecutionProvider" in proc.stdout
    assert_ok(lepton("run", art, "--input", f"input={tmp_path / 'x.npy'}", "--output", out))
    with np.load(out, allow_pickle=False) as data:
        got = data["probabilities"]
    want = reference(MODEL, {"input": x})[0]
    assert np.abs(got - want).max() <= TOL and (got.argmax(1) == want.argmax(1)).all()


def test_cli_provider_errors(tmp_path):
    art = tmp_path / "m.lepton"
    if not HAS_CUDA:
        assert_one_line_error(lepton("compile", MODEL, "--target", "ort", "--providers", CUDA, "-o", art),
                              CUDA, "pip install onnxruntime-gpu")
        assert_one_line_error(lepton("compile", MODEL, "--target", "ort", "--providers", f"{CUDA},{CPU}",
                                     "--strict", "-o", art), CUDA, "strict")
        # the fallback: a warning on stderr, and the artifact
        proc = lepton("compile", MODEL, "--target", "ort", "--providers", f"{CUDA},{CPU}", "-o", art)
        assert_ok(proc)
        assert f"'{CUDA}' is not installed" in proc.stderr
    assert_one_line_error(lepton("compile", MODEL, "--providers", CPU, "-o", art), "target='ort'")
    assert_one_line_error(lepton("compile", MODEL, "--target", "ort", "--emit", "llvm"), "--emit llvm")


def test_cli_bench_target_ort():
    proc = lepton("bench", "--target", "ort", "--providers", CPU, "--batch", "2", "--min-time", "0.02")
    assert_ok(proc)
    assert "| 2 | 1 |" in proc.stdout
