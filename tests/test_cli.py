"""The ``lepton`` command line, end to end in subprocesses."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from lepton_compiler.backends.llvm.target import host_target
from lepton_compiler.demo import bundled_model_path
from lepton_compiler.passes.pipeline import passes_for_level

MODEL = bundled_model_path()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALT_MODEL = os.path.join(ROOT, "tests", "data", "mnist_alt_opset11.onnx")
TOL = 1e-5


def lepton(*args, cwd=None, timeout=120):
    """Run ``python -m lepton_compiler.cli ARGS``; returns the CompletedProcess (text mode)."""
    env = dict(os.environ)
    env.setdefault("PYTHONWARNINGS", "ignore")
    return subprocess.run([sys.executable, "-m", "lepton_compiler.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


def assert_ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0, f"expected failure\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{proc.stderr}"
    assert lines[0].startswith("lepton: error:"), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _images(n):
    with np.load(os.path.join(os.path.dirname(MODEL), "mnist_test1000.npz"), allow_pickle=False) as data:
        return data["x"][:n].astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def x_npy(work):
    x = _images(50)
    path = work / "x.npy"
    np.save(path, x)
    return path, x


@pytest.fixture(scope="module")
def artifact(work):
    out = work / "out.lepton"
    proc = lepton("compile", MODEL, "-o", out)
    assert_ok(proc)
    assert out.is_file()
    assert re.search(r"wrote .*out\.lepton \([\d,]+ bytes\) for \S+", proc.stdout), proc.stdout
    return out


# -- compile and run ---------------------------------------------------------------------------

def test_compile_and_run(artifact, x_npy, work):
    path, x = x_npy
    out = work / "out.npz"
    proc = lepton("run", artifact, "--input", f"input={path}", "--output", out)
    assert_ok(proc)
    assert "probabilities" in proc.stdout
    with np.load(out, allow_pickle=False) as data:
        assert list(data.keys()) == ["probabilities"]
        got = data["probabilities"]
    ref = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert got.shape == (50, 10) and got.dtype == np.float32
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert np.abs(got - ref).max() <= TOL


def test_run_prints_summary(artifact, x_npy):
    path, _ = x_npy
    proc = lepton("run", artifact, "--input", f"input={path}")
    assert_ok(proc)
    assert "probabilities: float32[50, 10]" in proc.stdout


def test_compile_and_run_alt_model(work):
    art = work / "alt.lepton"
    assert_ok(lepton("compile", ALT_MODEL, "-o", art, "--mcpu", "x86-64-v3" if "avx2" in host_target().features
                     else "x86-64-v2"))
    x = _images(9)
    np.save(work / "alt_x.npy", x)
    out = work / "alt.npz"
    assert_ok(lepton("run", art, "--input", f"x={work / 'alt_x.npy'}", "--output", out))
    with np.load(out, allow_pickle=False) as data:
        got = data["y"]
    ref = ort.InferenceSession(ALT_MODEL, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(got - ref).max() <= TOL
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_run_output_without_npz_suffix(artifact, x_npy, work):
    """``--output`` without .npz: the file the message names must be the file written."""
    path, _ = x_npy
    out = work / "plain_output"
    proc = lepton("run", artifact, "--input", f"input={path}", "--output", out)
    assert_ok(proc)
    m = re.match(r"wrote (.+): probabilities$", proc.stdout.strip())
    assert m, proc.stdout
    written = m.group(1)
    assert os.path.isfile(written), f"the message names {written!r}, but the files are {sorted(os.listdir(work))}"
    with np.load(written, allow_pickle=False) as data:
        assert data["probabilities"].shape == (50, 10)


# -- emit ----------------------------------------------------------------------------------------

def test_emit_llvm(work):
    proc = lepton("compile", MODEL, "--emit", "llvm")
    assert_ok(proc)
    assert "define" in proc.stdout
    assert "lepton_main" in proc.stdout
    assert re.search(r"define\b.*@lepton_main\(", proc.stdout)
    # to a file as well
    path = work / "m.ll"
    assert_ok(lepton("compile", MODEL, "--emit", "llvm", "-o", path))
    text = path.read_text()
    assert "define" in text and "lepton_main" in text


def test_emit_asm():
    proc = lepton("compile", MODEL, "--emit", "asm")
    assert_ok(proc)
    assert "lepton_main" in proc.stdout
    if "fma" in host_target().features:
        assert "vfmadd" in proc.stdout
    if "avx512f" in host_target().features:
        assert "zmm" in proc.stdout


def test_emit_obj(work):
    path = work / "f.o"
    proc = lepton("compile", MODEL, "--emit", "obj", "-o", path)
    assert_ok(proc)
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF"
    assert b"lepton_main" in data


def test_emit_onnx(work):
    path = work / "f.onnx"
    proc = lepton("compile", MODEL, "--emit", "onnx", "-o", path)
    assert_ok(proc)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    # the optimized model still computes the same function
    x = _images(5)
    a = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    b = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.abs(a - b).max() <= TOL


def test_emit_binary_needs_output():
    assert_one_line_error(lepton("compile", MODEL, "--emit", "obj"), "-o")
    assert_one_line_error(lepton("compile", MODEL, "--emit", "onnx"), "-o")


def test_print_ir_after_all(work):
    proc = lepton("compile", MODEL, "--print-ir-after-all", "--emit", "obj", "-o", work / "p.o")
    assert_ok(proc)
    names = [p.name for p in passes_for_level(3)]
    assert names, "opt level 3 runs no passes"
    headers = re.findall(r"^// -----// IR after (\S+) \([\d.]+ ms\) //----- //$", proc.stdout, re.M)
    assert headers == names
    # each header is followed by a whole printed graph
    chunks = re.split(r"^// -----// IR after .*$", proc.stdout, flags=re.M)[1:]
    assert len(chunks) == len(names)
    for chunk in chunks:
        assert "graph " in chunk
        assert "input  %input: float32[N, 1, 28, 28]" in chunk
        assert "output %probabilities: float32[N, 10]" in chunk
    assert "= Softmax[axis=1](" in chunks[0]  # before fusion
    final_ops = re.findall(r"= ([\w.]+)\[", chunks[-1]) + re.findall(r"= ([\w.]+)\(", chunks[-1])
    assert sorted(final_ops) == sorted(["lepton.FusedConv"] * 3 + ["Flatten"] + ["lepton.FusedGemm"] * 2)
    assert "6 kernels" not in proc.stderr and "5 kernels" in proc.stderr  # the summary goes to stderr with --emit


# -- demo and bench ------------------------------------------------------------------------------

def test_demo():
    proc = lepton("demo", timeout=300)
    assert_ok(proc)
    assert "accuracy" in proc.stdout
    assert "1000/1000" in proc.stdout
    m = re.search(r"accuracy\s+lepton ([\d.]+)%\s+ONNX Runtime ([\d.]+)%", proc.stdout)
    assert m, proc.stdout
    assert m.group(1) == m.group(2)
    assert float(m.group(1)) > 95.0
    # int8, calibrated on the 200 bundled training images (the figures: tests/test_demo_int8.py)
    m = re.search(r"accuracy .*lepton int8 ([\d.]+)%", proc.stdout)
    assert m and float(m.group(1)) >= 96.0, proc.stdout
    assert re.search(r"int8 vs lepton fp32: argmax \d+/1000", proc.stdout), proc.stdout
    assert "minmax calibration on 200 training images" in proc.stdout
    assert re.search(r"^ +lepton +lepton int8 +ONNX Runtime +ORT/lepton +ORT/int8$", proc.stdout, re.M)
    for batch in (1, 64):
        row = re.search(rf"^  batch {batch:>2} (.*)$", proc.stdout, re.M)
        assert row and len(row.group(1).split()) == 5, proc.stdout
        assert all(float(v.rstrip("x")) > 0 for v in row.group(1).split())


def test_bench():
    proc = lepton("bench", "--batch", "1", "--min-time", "0.05")
    assert_ok(proc)
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("|") and "batch" in line)
    assert "ONNX Runtime" in header
    rows = [line for line in lines if re.match(r"^\|\s*1\s*\|", line)]
    assert len(rows) == 1, proc.stdout
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert len(cells) == len(header.strip("|").split("|"))
    assert float(cells[2]) > 0 and float(cells[3]) > 0


def table(stdout):
    lines = stdout.splitlines()
    header = next(line for line in lines if line.startswith("|") and "batch" in line)
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if re.match(r"^\|\s*\d", line)]
    return columns, rows


def test_bench_int8_bundled():
    proc = lepton("bench", "--quantize", "int8", "--batch", "1,4", "--min-time", "0.05", timeout=300)
    assert_ok(proc)
    columns, rows = table(proc.stdout)
    for name in ("lepton fp32 µs/image", "lepton int8 µs/image", "ORT fp32 µs/image", "ORT int8 µs/image",
                 "ORT int8 / lepton int8"):
        assert name in columns, columns
    assert [r[:2] for r in rows] == [["1", "1"], ["4", "1"]]
    for row in rows:
        assert len(row) == len(columns) and all(float(c.rstrip("x")) > 0 for c in row)
    assert "200 samples of the bundled training images; lepton: minmax" in proc.stdout
    m = re.search(r"top-1 on the 1000 test images: lepton fp32 ([\d.]+)%, lepton int8 ([\d.]+)%, "
                  r"ORT fp32 ([\d.]+)%, ORT int8 ([\d.]+)%", proc.stdout)
    assert m and all(float(v) >= 96.0 for v in m.groups()), proc.stdout


def test_bench_int8_other_model(work):
    # another model has no default calibration data: one clear line
    assert_one_line_error(lepton("bench", ALT_MODEL, "--quantize", "int8"), "--calibration", "bundled")
    assert_one_line_error(lepton("bench", "--calibration", work / "c.npz"), "--quantize int8")
    assert_one_line_error(lepton("bench", "--quantize", "int8", "--target", "ort"), "--target cpu")
    data = work / "alt_calibration.npz"
    np.savez(data, x=_images(40))   # this model's input is named "x"; an opset-11 model for ORT's quantizer
    proc = lepton("bench", ALT_MODEL, "--quantize", "int8", "--calibration", data, "--calibration-method",
                  "percentile", "--batch", "2", "--min-time", "0.05", timeout=300)
    assert_ok(proc)
    columns, rows = table(proc.stdout)
    assert "lepton int8 µs/image" in columns and "ORT int8 µs/image" in columns and len(rows) == 1
    assert "40 samples of" in proc.stdout and "lepton: percentile" in proc.stdout
    assert "top-1" not in proc.stdout   # no labelled test data for another model


# -- errors ----------------------------------------------------------------------------------

def test_error_not_onnx(work):
    bad = work / "notonnx.onnx"
    bad.write_text("hello, this is not a protobuf\n")
    assert_one_line_error(lepton("compile", bad, "-o", work / "a.lepton"), "notonnx.onnx")
    assert not (work / "a.lepton").exists()


def test_error_missing_file(work):
    assert_one_line_error(lepton("compile", work / "missing.onnx", "-o", work / "b.lepton"), "missing.onnx")


def test_error_unknown_op(work):
    graph = helper.make_graph([helper.make_node("FooBar", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    path = work / "unknown_op.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert_one_line_error(lepton("compile", path, "-o", work / "c.lepton"), "FooBar")


def test_error_wrong_input_name(artifact, x_npy):
    path, _ = x_npy
    assert_one_line_error(lepton("run", artifact, "--input", f"wrong={path}"), "'wrong'", "input")


def test_error_bad_input_syntax(artifact, x_npy):
    path, _ = x_npy
    assert_one_line_error(lepton("run", artifact, "--input", str(path)), "NAME=FILE.npy")
    assert_one_line_error(lepton("run", artifact, "--input", "input="), "NAME=FILE.npy")


def test_error_input_file_missing(artifact, work):
    assert_one_line_error(lepton("run", artifact, "--input", f"input={work / 'nope.npy'}"), "nope.npy")


def test_error_missing_input(artifact):
    assert_one_line_error(lepton("run", artifact), "missing input 'input'")


def test_error_wrong_dtype_input(artifact, work):
    path = work / "x64.npy"
    np.save(path, _images(2).astype(np.float64))
    assert_one_line_error(lepton("run", artifact, "--input", f"input={path}"), "float64")


def test_error_run_not_artifact(work):
    assert_one_line_error(lepton("run", MODEL), "not a lepton artifact")
    assert_one_line_error(lepton("run", work / "nope.lepton"), "nope.lepton")


def test_error_missing_output_option():
    assert_one_line_error(lepton("compile", MODEL), "-o")


def test_error_unknown_mcpu(work):
    assert_one_line_error(lepton("compile", MODEL, "--mcpu", "not-a-cpu", "-o", work / "d.lepton"), "not-a-cpu")


def test_error_unwritable_output(work):
    assert_one_line_error(lepton("compile", MODEL, "-o", work / "no" / "such" / "dir" / "e.lepton"),
                          "cannot write")
