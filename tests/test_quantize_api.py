"""lc.compile(..., quantize="int8") and lepton compile --quantize: MNIST accuracy, native code
equal to the reference interpreter's int8 semantics, keep_fp32, the accuracy-aware mode, the
report, artifacts, and refused requests."""

from pathlib import Path

import numpy as np
import pytest

import lepton_compiler as lc
from lepton_compiler.cli import main
from lepton_compiler.demo import bundled_model_path
from lepton_compiler.ops.interpreter import interpret
from lepton_compiler.runtime.artifact import _recompile
from quantize_testing import mnist_calibration, small_cnn, small_data

TEST_SET = Path(lc.__file__).parent / "demo" / "mnist_test1000.npz"


def mnist_test_images():
    data = np.load(TEST_SET)
    return data["x"].astype(np.float32) / 255, data["y"]


@pytest.fixture(scope="module")
def mnist_int8():
    x, _ = mnist_calibration(200)
    return lc.compile(bundled_model_path(), quantize="int8", calibration={"input": x}, threads=1)


def test_mnist_int8_accuracy_within_half_a_point(mnist_int8):
    x, y = mnist_test_images()
    fp32 = lc.compile(bundled_model_path(), threads=1)
    acc_fp32 = np.mean(fp32(x).argmax(1) == y)
    acc_int8 = np.mean(mnist_int8(x).argmax(1) == y)
    assert acc_fp32 - acc_int8 <= 0.005, (acc_fp32, acc_int8)


def test_native_int8_equals_the_reference_interpreter(mnist_int8):
    x, _ = mnist_test_images()
    x = x[:128]
    graph = mnist_int8.quantization.graph
    names = ["/pool1/MaxPool_output_0", "/pool2/MaxPool_output_0", "/relu4/Relu_output_0"]
    ref = interpret(graph, {"input": x}, names + ["probabilities"])
    native = mnist_int8(x)
    assert np.array_equal(native.argmax(1), ref[-1].argmax(1))
    np.testing.assert_allclose(native, ref[-1], rtol=1e-5, atol=1e-6)
    assert all(r.dtype == np.uint8 for r in ref[:-1])


def test_summary_and_options(mnist_int8):
    info = mnist_int8.summary["quantization"]
    assert info["int8_layers"] == ["/conv1/Conv", "/conv2/Conv", "/conv3/Conv", "/fc1/Gemm", "/fc2/Gemm"]
    assert info["fp32_layers"] == [] and info["method"] == "minmax" and info["samples"] == 200
    assert [d["output"] for d in info["layers"]] == ["uint8"] * 4 + ["float32"]
    options = mnist_int8.options
    assert options["quantize"] == "int8" and options["calibration_method"] == "minmax"
    assert options["keep_fp32"] == [] and "input" in options["calibration"]["ranges"]
    assert any(k.startswith("lepton.QConv") for k in mnist_int8.summary["kernels"])


def test_artifact_round_trip_and_recompile(mnist_int8, tmp_path):
    path = tmp_path / "mnist8.lepton"
    mnist_int8.save(path)
    loaded = lc.load(path)
    x, _ = mnist_test_images()
    x = x[:64]
    assert loaded.summary["quantization"] == mnist_int8.summary["quantization"]
    assert np.array_equal(loaded(x), mnist_int8(x))
    assert np.array_equal(_recompile(path)(x), mnist_int8(x))     # from the stored calibration table


def test_report(mnist_int8):
    report = lc.quantization_report(mnist_int8)
    assert [r.name for r in report.rows] == ["/conv1/Conv", "/conv2/Conv", "/conv3/Conv", "/fc1/Gemm", "/fc2/Gemm",
                                             "probabilities"]
    assert all(30.0 < r.sqnr_db < 100.0 for r in report.rows)
    assert report.row("/fc2/Gemm").precision == "int8 -> float32"
    assert report.row("probabilities").max_abs_error < 0.05
    table = report.format()
    assert table.splitlines()[0] == "int8 vs fp32 on 200 calibration samples (calibration method: minmax)"
    assert "| /conv2/Conv | Conv | int8 -> uint8 |" in table
    with pytest.raises(lc.LeptonError, match="quantization_report needs a model compiled here with quantize='int8'"):
        lc.quantization_report(lc.compile(small_cnn()))


def test_keep_fp32_and_methods():
    x = small_data(30)
    for method in ("percentile", "entropy"):
        model = lc.compile(small_cnn(), quantize="int8", calibration=[{"x": x[:10]}, {"x": x[10:]}],
                           calibration_method=method, keep_fp32=["conv"])
        info = model.summary["quantization"]
        assert info["method"] == method and info["fp32_layers"] == ["conv"] and info["int8_layers"] == ["fc1", "fc2"]
        ref = interpret(model.quantization.graph, {"x": x})[0]
        np.testing.assert_allclose(model(x), ref, rtol=1e-5, atol=1e-6)
        assert [n.op for n in model.quantization.graph.nodes][:3] == ["FusedConv", "Flatten", "QuantizeLinear"]


def test_accuracy_aware_mode_with_max_error():
    x = small_data(40)
    free = lc.compile(small_cnn(), quantize="int8", calibration={"x": x}, max_error=1.0)
    assert free.quantization.search.met and free.quantization.search.returned == []
    model = lc.compile(small_cnn(), quantize="int8", calibration={"x": x}, max_error=1e-4)
    search = model.quantization.search
    assert search.met and search.bound == "max_error" and search.returned
    assert sorted(n for n, _ in search.ranking) == ["conv", "fc1", "fc2"]
    sqnr = [v for _, v in search.ranking]
    assert sqnr == sorted(sqnr)                                    # worst (lowest SQNR) first
    assert all(s.metric > 1e-4 for s in search.steps[:-1]) and search.steps[-1].metric <= 1e-4
    assert search.returned == [n for n, _ in search.ranking if n in search.returned]   # in ranking order
    assert model.options["keep_fp32"] == search.returned
    fp32 = interpret(lc.optimize(small_cnn()), {"x": x})[0]
    assert np.max(np.abs(model(x) - fp32)) <= 1e-4 + 1e-6
    text = search.format()
    assert "max_error = 0.0001" in text and "bound met" in text


def test_accuracy_aware_mode_with_labels():
    x, y = mnist_calibration(100)
    model = lc.compile(bundled_model_path(), quantize="int8", calibration={"input": x}, calibration_method="entropy",
                       max_accuracy_drop=0.0, labels=y)
    search = model.quantization.search
    assert search.bound == "max_accuracy_drop" and search.fp32_accuracy is not None and search.met
    assert search.steps[-1].metric <= 0.0
    assert len(search.ranking) == 5


@pytest.mark.parametrize("kwargs, message", [
    ({"quantize": "int4", "calibration": {}}, "quantize='int4' is not available; use quantize='int8' or None"),
    ({"quantize": "int8"}, "quantize='int8' needs calibration="),
    ({"calibration": {"x": small_data(2)}}, "calibration= applies to quantize='int8'"),
    ({"keep_fp32": ["conv"]}, "keep_fp32= applies to quantize='int8'"),
    ({"quantize": "int8", "calibration": {"x": small_data(2)}, "calibration_method": "kl"},
     "unknown calibration method 'kl'; use one of minmax, percentile, entropy"),
    ({"quantize": "int8", "calibration": {"x": small_data(2)}, "target": "ort"}, "quantize='int8' applies to "
     "target='cpu'"),
    ({"quantize": "int8", "calibration": {"x": small_data(4)}, "max_accuracy_drop": 1.0},
     "max_accuracy_drop= needs labels= (one class per calibration sample); without labels use max_error="),
    ({"quantize": "int8", "calibration": {"x": small_data(4)}, "max_accuracy_drop": 1.0, "labels": [0, 1]},
     "labels= has 2 entries for 4 calibration samples"),
    ({"quantize": "int8", "calibration": {"x": small_data(4)}, "max_accuracy_drop": 1.0, "max_error": 0.1},
     "give max_accuracy_drop= or max_error=, not both"),
    ({"quantize": "int8", "calibration": {"x": small_data(4)}, "max_error": -1},
     "max_error= must be a finite number >= 0, not -1"),
    ({"quantize": "int8", "calibration": {"x": small_data(4)[:, :1]}},
     "calibration input 'x' has shape [4, 1, 8, 8]; the model takes [N, 3, 8, 8]"),
])
def test_refused_requests(kwargs, message):
    with pytest.raises(lc.LeptonError) as info:
        lc.compile(small_cnn(), **kwargs)
    assert str(info.value).startswith(message)


# -- command line ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def calibration_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cal")
    x, y = mnist_calibration(100)
    np.savez(folder / "cal.npz", input=x)
    np.save(folder / "labels.npy", y)
    return folder


def test_cli_compile_report_and_run(calibration_files, tmp_path, capsys):
    out = tmp_path / "m8.lepton"
    cal = str(calibration_files / "cal.npz")
    assert main(["compile", bundled_model_path(), "--quantize", "int8", "--calibration", cal, "--keep-fp32",
                 "/conv1/Conv", "-o", str(out), "--report"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text
    assert "int8: 4 layers (/conv2/Conv, /conv3/Conv, /fc1/Gemm, /fc2/Gemm); fp32: /conv1/Conv (keep_fp32); " \
           "calibration: minmax on 100 samples" in text
    assert "| /conv1/Conv | Conv | fp32 | exact | 0 | keep_fp32 |" in text
    assert lc.load(out).summary["quantization"]["fp32_layers"] == ["/conv1/Conv"]
    x, _ = mnist_test_images()
    np.save(tmp_path / "x.npy", x[:8])
    assert main(["run", str(out), "--input", f"input={tmp_path / 'x.npy'}"]) == 0


def test_cli_report_alone_and_accuracy_mode(calibration_files, capsys):
    cal, labels = str(calibration_files / "cal.npz"), str(calibration_files / "labels.npy")
    assert main(["compile", bundled_model_path(), "--quantize", "int8", "--calibration", cal,
                 "--calibration-method", "percentile", "--report"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "int8 vs fp32 on 100 calibration samples (calibration method: percentile)"
    assert len(lines) == 3 + 6
    assert main(["compile", bundled_model_path(), "--quantize", "int8", "--calibration", cal,
                 "--max-accuracy-drop", "0.5", "--labels", labels, "--report"]) == 0
    text = capsys.readouterr().out
    assert "accuracy-aware quantization: max_accuracy_drop = 0.5 (top-1 accuracy drop (points))" in text


@pytest.mark.parametrize("argv, message", [
    (["--quantize", "int8"], "lepton: error: quantize='int8' needs calibration="),
    (["--calibration", "cal.npz"], "lepton: error: calibration= applies to quantize='int8'"),
    (["--quantize", "int8", "--calibration", "missing.npz", "--report"],
     "lepton: error: cannot read calibration data from 'missing.npz'"),
    (["--quantize", "int8", "--calibration", "cal.npz", "--emit", "onnx"],
     "lepton: error: --quantize writes an artifact (-o) or --emit llvm|asm|obj"),
    (["--quantize", "int8", "--calibration", "cal.npz", "--target", "ort"],
     "lepton: error: --quantize applies to --target cpu, not ort"),
])
def test_cli_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compile", bundled_model_path(), *argv]) == 1
    assert capsys.readouterr().err.startswith(message)


# -- benchmark arithmetic and ONNX Runtime's int8 model (speed is never asserted) ---------------------
def test_int8_benchmark_table_and_ort_quantized_model():
    import onnx
    from lepton_compiler.bench import Int8Row, format_int8_table, ort_quantize_static, ort_session

    row = Int8Row(batch=64, threads=1, lepton_fp32_us=1280.0, lepton_int8_us=640.0, ort_fp32_us=1920.0,
                  ort_int8_us=960.0)
    assert (row.vs_ort_fp32, row.vs_ort_int8, row.vs_lepton_fp32) == (3.0, 1.5, 2.0)
    assert "| 64 | 1 | 20.0 | 10.0 | 30.0 | 15.0 | 3.00x | 1.50x | 2.00x |" in format_int8_table([row])
    x = small_data(20)
    quantized = ort_quantize_static(small_cnn().SerializeToString(), {"x": x})
    ops = {n.op_type for n in onnx.load_from_string(quantized).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    ours = lc.compile(small_cnn(), quantize="int8", calibration={"x": x})(x)
    theirs = ort_session(quantized, 1).run(None, {"x": x})[0]
    assert np.mean(ours.argmax(1) == theirs.argmax(1)) >= 0.9
