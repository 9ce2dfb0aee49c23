"""Deploy without Python: ``lepton compile --emit so|header``, the C API, and C programs built against it.

Every library here is built and linked with the system C compiler inside the test, and its outputs
are compared bit for bit with the Python runtime's on the same batches.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from onnx import helper

import lepton_compiler as lc
from lepton_compiler.errors import LeptonError
from lepton_compiler.export import clib
from lepton_compiler.export.templates import STATUS

from conftest import make_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "lepton_compiler", "demo", "mnist_cnn.onnx")
ALT_MODEL = os.path.join(ROOT, "tests", "data", "mnist_alt_opset11.onnx")
EXAMPLE = os.path.join(ROOT, "examples", "c")
S = {name: value for name, value, _ in STATUS}   # "OK" -> 0, "ERR_NULL_POINTER" -> 1, ...

try:
    CC = clib.find_c_compiler()
except LeptonError:
    CC = None
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler")
STRICT_C = ["-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror"]


def lepton(*args, env=None, cwd=None):
    full_env = dict(os.environ if env is None else env)
    full_env.setdefault("PYTHONWARNINGS", "ignore")
    return subprocess.run([sys.executable, "-m", "lepton_compiler.cli", *map(str, args)], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=300)


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def one_line_error(proc, *fragments):
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lepton: error:"), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def cc(*args):
    proc = subprocess.run(CC + [*map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and not proc.stderr.strip(), f"{' '.join(map(str, args))}\n{proc.stderr}"


def images(n=None):
    sys.path.insert(0, EXAMPLE)
    try:
        import make_raw
    finally:
        sys.path.remove(EXAMPLE)
    return make_raw.load(n)


def python_outputs(model_path, x, batch, threads=None):
    """The Python runtime's outputs on ``x`` run in chunks of ``batch`` (as the C programs run it)."""
    model = lc.compile(model_path, threads=threads)
    name = model.inputs[0].name
    return np.concatenate([model.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


# -- building ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("clib")


@pytest.fixture(scope="module")
def raw(work):
    """The example's raw input files, written by examples/c/make_raw.py."""
    ok(subprocess.run([sys.executable, os.path.join(EXAMPLE, "make_raw.py"), "-o", work], capture_output=True,
                      text=True, timeout=120))
    return work / "mnist_images.f32", work / "mnist_labels.u8"


def build(work, model, name, *extra, lib=None):
    """``lepton compile MODEL --emit so`` and ``--emit header`` into ``work``; returns the library path."""
    lib = work / (lib or f"lib{name}.so")
    proc = ok(lepton("compile", model, "--emit", "so", "--name", name, "-o", lib, *extra))
    assert proc.stderr == "", proc.stderr       # the C compiler had nothing to say
    ok(lepton("compile", model, "--emit", "header", "--name", name, "-o", work / f"{name}.h"))
    return lib


@pytest.fixture(scope="module")
def mnist_lib(work):
    return build(work, MODEL, "mnist")


@pytest.fixture(scope="module")
def example(work, mnist_lib):
    """examples/c/mnist_classify.c built against libmnist.so (strict C99, no warnings)."""
    exe = work / "mnist_classify"
    cc(*STRICT_C, "-O2", "-I", work, "-o", exe, os.path.join(EXAMPLE, "mnist_classify.c"), "-L", work, "-lmnist",
       f"-Wl,-rpath,{work}")
    return exe


def run_example(exe, raw, *args, cwd=None):
    proc = subprocess.run([str(exe), str(raw[0]), str(raw[1]), *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# -- the example program -------------------------------------------------------------------------

@pytest.mark.parametrize("batch,threads", [(64, 1), (7, 2), (1000, 0)])
def test_example_program_matches_python_bit_for_bit(work, raw, example, batch, threads):
    dump = work / f"out_{batch}_{threads}.f32"
    args = ["--batch", batch, "--dump", dump] + (["--threads", threads] if threads else [])
    out = run_example(example, raw, *args)
    x, y = images()
    expected = python_outputs(MODEL, x, batch, threads or None)
    got = np.fromfile(dump, np.float32).reshape(expected.shape)
    assert got.tobytes() == expected.tobytes()
    correct = int((expected.argmax(1) == y).sum())
    assert f"accuracy: {100 * correct / len(y):.2f}% ({correct}/{len(y)})" in out
    assert "model: input 'input' float32[N, 1, 28, 28] -> output 'probabilities' float32[N, 10]" in out
    assert f"images: 1000, batch {batch}, threads {threads or len(os.sched_getaffinity(0))}" in out


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_makefile_builds_and_runs_the_example(tmp_path):
    for file in ("Makefile", "make_raw.py", "mnist_classify.c"):
        shutil.copy(os.path.join(EXAMPLE, file), tmp_path)
    lepton_cmd = f"{sys.executable} -m lepton_compiler.cli"
    proc = subprocess.run(["make", "run", f"LEPTON={lepton_cmd}", f"PYTHON={sys.executable}", f"MODEL={MODEL}",
                           f"CC={' '.join(CC)}"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    x, y = images()
    expected = python_outputs(MODEL, x, 64)
    correct = int((expected.argmax(1) == y).sum())
    assert f"accuracy: {100 * correct / len(y):.2f}% ({correct}/{len(y)})" in proc.stdout
    assert (tmp_path / "libmnist.so").exists() and (tmp_path / "mnist.h").exists()


# -- two models in one program -------------------------------------------------------------------

TWO_MODELS = r"""
#include <stdio.h>
#include <stdlib.h>
#include "mnist.h"
#include "alt.h"

static int check(const char *what, int got, int want) {
    if (got != want) { fprintf(stderr, "%s: status %d, expected %d\n", what, got, want); exit(1); }
    return 0;
}

int main(int argc, char **argv) {
    long n = argc == 4 ? atol(argv[2]) : 0;
    float *x = malloc((size_t)n * 784 * sizeof(float)), *ya = malloc((size_t)n * 40), *yb = malloc((size_t)n * 40);
    FILE *f = fopen(argv[1], "rb");
    mnist_context *a = NULL;
    alt_context *b = NULL;
    const void *in[1];
    void *out[1];
    if (n < 1 || !f || fread(x, sizeof(float) * 784, (size_t)n, f) != (size_t)n) return 2;
    fclose(f);
    check("mnist_create", mnist_create(&a, n), LEPTON_OK);
    check("alt_create", alt_create(&b, 16), LEPTON_OK);
    in[0] = x;
    out[0] = ya;
    check("mnist_run", mnist_run(a, n, in, out), LEPTON_OK);
    out[0] = yb;
    check("alt_run too large", alt_run(b, n, in, out), LEPTON_ERR_BATCH_RANGE);
    check("alt_set_max_batch", alt_set_max_batch(b, n), LEPTON_OK);
    check("alt_run", alt_run(b, n, in, out), LEPTON_OK);
    /* bad calls: error codes, no crash */
    check("run NULL ctx", mnist_run(NULL, 1, in, out), LEPTON_ERR_NULL_POINTER);
    check("run NULL inputs", alt_run(b, 1, NULL, out), LEPTON_ERR_NULL_POINTER);
    check("run batch 0", mnist_run(a, 0, in, out), LEPTON_ERR_BATCH_RANGE);
    check("create NULL", alt_create(NULL, 1), LEPTON_ERR_NULL_POINTER);
    f = fopen(argv[3], "wb");
    fwrite(ya, 40, (size_t)n, f);
    fwrite(yb, 40, (size_t)n, f);
    fclose(f);
    check("mnist_free", mnist_free(a), LEPTON_OK);
    check("alt_free", alt_free(b), LEPTON_OK);
    puts("two models ok");
    return 0;
}
"""


def test_two_models_link_into_one_program(work, raw, mnist_lib):
    alt_lib = build(work, ALT_MODEL, "alt")
    source = work / "two_models.c"
    source.write_text(TWO_MODELS)
    exe = work / "two_models"
    cc(*STRICT_C, "-I", work, "-o", exe, source, "-L", work, "-lmnist", "-lalt", f"-Wl,-rpath,{work}")
    n = 50
    proc = subprocess.run([str(exe), str(raw[0]), str(n), str(work / "two.f32")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "two models ok", proc.stderr
    got = np.fromfile(work / "two.f32", np.float32).reshape(2, n, 10)
    x, _ = images(n)
    assert got[0].tobytes() == python_outputs(MODEL, x, n).tobytes()
    assert got[1].tobytes() == python_outputs(ALT_MODEL, x, n).tobytes()
    assert not np.array_equal(got[0], got[1])       # two different models really ran
    # Each library exports its API and nothing else.
    for lib, name in ((mnist_lib, "mnist"), (alt_lib, "alt")):
        assert exported_symbols(lib) == {f"{name}_{f}" for f in clib.API_FUNCTIONS}


def exported_symbols(lib) -> set[str]:
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("no nm")
    out = subprocess.run([nm, "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def needed_libraries(lib) -> set[str]:
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("no readelf")
    out = subprocess.run([readelf, "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    return {line.split("[")[1].split("]")[0] for line in out.splitlines() if "(NEEDED)" in line}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks ELF dependencies")
def test_library_depends_on_libc_libm_and_libgomp_only_when_threaded(work, mnist_lib):
    assert needed_libraries(mnist_lib) <= {"libc.so.6", "libm.so.6", "libgomp.so.1"}
    # Built from Python, on one thread: no libgomp; the header it was compiled with is --emit header's.
    lib = clib.build_library(MODEL, work / "libsingle.so", name="single", threads=1)
    assert not lib.threads and lib.weights_path is None and lib.compiler_output == ""
    assert needed_libraries(lib.path) <= {"libc.so.6", "libm.so.6"}
    assert lib.header == clib.header_for(MODEL, "single", threads=1)
    assert "Default: 1." in lib.header
    single = Library(lib.path, "single")
    status, ctx = single.context(2)
    value = ctypes.c_int64()
    assert status == S["OK"] and single.set_threads(ctx, 4) == S["OK"]
    assert single.threads(ctx, ctypes.byref(value)) == S["OK"] and value.value == 1
    x, _ = images(2)
    y = np.empty((2, 10), np.float32)
    assert single.run_arrays(ctx, 2, [x], [y]) == S["OK"]
    assert y.tobytes() == python_outputs(MODEL, x, 2, threads=1).tobytes()
    single.free(ctx)


# -- ctypes: Python as a second consumer ---------------------------------------------------------

class TensorInfo(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("dtype", ctypes.c_int32), ("element_size", ctypes.c_int32),
                ("rank", ctypes.c_int64), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("dim_names", ctypes.POINTER(ctypes.c_char_p))]


class Library:
    """A model library through ctypes, its functions typed as the header declares them."""

    def __init__(self, path, name):
        self.lib = ctypes.CDLL(str(path))
        P, I64, VP = ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p
        PI64 = ctypes.POINTER(ctypes.c_int64)
        types = {
            "create": [ctypes.POINTER(P), I64], "create_with_weights": [ctypes.POINTER(P), I64, ctypes.c_char_p],
            "free": [P], "set_max_batch": [P, I64], "max_batch": [P, PI64], "set_threads": [P, I64],
            "threads": [P, PI64], "run": [P, I64, ctypes.POINTER(VP), ctypes.POINTER(VP)], "check_batch": [I64],
            "num_inputs": [PI64], "num_outputs": [PI64], "input_info": [I64, ctypes.POINTER(TensorInfo)],
            "output_info": [I64, ctypes.POINTER(TensorInfo)], "input_size": [I64, I64, PI64],
            "output_size": [I64, I64, PI64],
        }
        for fn, argtypes in types.items():
            f = getattr(self.lib, f"{name}_{fn}")
            f.argtypes, f.restype = argtypes, ctypes.c_int
            setattr(self, fn, f)

    def context(self, max_batch, weights=None):
        ctx = ctypes.c_void_p()
        status = self.create(ctypes.byref(ctx), max_batch) if weights is None else \
            self.create_with_weights(ctypes.byref(ctx), max_batch, os.fsencode(weights))
        return status, ctx

    def info(self, output: bool, index: int) -> dict:
        info = TensorInfo()
        assert (self.output_info if output else self.input_info)(index, ctypes.byref(info)) == S["OK"]
        return {"name": info.name.decode(), "dtype": info.dtype, "element_size": info.element_size,
                "shape": [info.shape[d] for d in range(info.rank)],
                "dims": [None if not info.dim_names[d] else info.dim_names[d].decode() for d in range(info.rank)]}

    def run_arrays(self, ctx, batch, inputs, outputs):
        ins = (ctypes.c_void_p * max(1, len(inputs)))(*[a.ctypes.data for a in inputs])
        outs = (ctypes.c_void_p * max(1, len(outputs)))(*[a.ctypes.data for a in outputs])
        return self.run(ctx, batch, ins, outs)


def test_ctypes_consumer_bit_for_bit(mnist_lib):
    lib = Library(mnist_lib, "mnist")
    count = ctypes.c_int64()
    assert lib.num_inputs(ctypes.byref(count)) == S["OK"] and count.value == 1
    assert lib.num_outputs(ctypes.byref(count)) == S["OK"] and count.value == 1
    assert lib.info(False, 0) == {"name": "input", "dtype": 1, "element_size": 4, "shape": [-1, 1, 28, 28],
                                  "dims": ["N", None, None, None]}
    assert lib.info(True, 0) == {"name": "probabilities", "dtype": 1, "element_size": 4, "shape": [-1, 10],
                                 "dims": ["N", None]}
    size = ctypes.c_int64()
    assert lib.input_size(0, 3, ctypes.byref(size)) == S["OK"] and size.value == 3 * 784 * 4
    assert lib.output_size(0, 3, ctypes.byref(size)) == S["OK"] and size.value == 3 * 10 * 4

    x, _ = images(100)
    status, ctx = lib.context(100)
    assert status == S["OK"] and ctx.value
    try:
        for threads in (1, 2):
            assert lib.set_threads(ctx, threads) == S["OK"]
            got = np.full((100, 10), np.nan, np.float32)
            assert lib.run_arrays(ctx, 100, [x], [got]) == S["OK"]
            assert got.tobytes() == python_outputs(MODEL, x, 100).tobytes()
        one = np.empty((1, 10), np.float32)
        assert lib.run_arrays(ctx, 1, [x[5:6]], [one]) == S["OK"]
        assert one.tobytes() == python_outputs(MODEL, x[5:6], 1).tobytes()
    finally:
        assert lib.free(ctx) == S["OK"]


def test_error_codes(mnist_lib):
    lib = Library(mnist_lib, "mnist")
    x, _ = images(8)
    y = np.empty((8, 10), np.float32)
    ins = (ctypes.c_void_p * 1)(x.ctypes.data)
    outs = (ctypes.c_void_p * 1)(y.ctypes.data)
    null_in = (ctypes.c_void_p * 1)(None)
    value = ctypes.c_int64()
    info = TensorInfo()

    # creation
    assert lib.create(None, 4) == S["ERR_NULL_POINTER"]
    for bad in (0, -1, -(2 ** 63)):
        status, ctx = lib.context(bad)
        assert status == S["ERR_BATCH_RANGE"] and not ctx.value
    status, ctx = lib.context(2 ** 62)           # the workspace cannot be that large
    assert status == S["ERR_OUT_OF_MEMORY"] and not ctx.value
    status, ctx = lib.context(4, weights="/nonexistent.bin")   # embedded weights: no file to name
    assert status == S["ERR_INVALID_ARGUMENT"]
    assert lib.create_with_weights(ctypes.byref(ctypes.c_void_p()), 4, None) == S["ERR_NULL_POINTER"]

    status, ctx = lib.context(4)
    assert status == S["OK"]
    try:
        # running
        assert lib.run(None, 1, ins, outs) == S["ERR_NULL_POINTER"]
        assert lib.run(ctx, 1, None, outs) == S["ERR_NULL_POINTER"]
        assert lib.run(ctx, 1, ins, None) == S["ERR_NULL_POINTER"]
        assert lib.run(ctx, 1, null_in, outs) == S["ERR_NULL_POINTER"]
        assert lib.run(ctx, 1, ins, null_in) == S["ERR_NULL_POINTER"]
        for batch in (0, -3, 5, 2 ** 40):
            assert lib.run(ctx, batch, ins, outs) == S["ERR_BATCH_RANGE"], batch
        assert lib.run(ctx, 4, ins, outs) == S["OK"]
        # growing the workspace lifts the limit; a failed resize leaves the context as it was
        assert lib.set_max_batch(ctx, 8) == S["OK"]
        assert lib.max_batch(ctx, ctypes.byref(value)) == S["OK"] and value.value == 8
        assert lib.set_max_batch(ctx, 0) == S["ERR_BATCH_RANGE"]
        assert lib.set_max_batch(ctx, 2 ** 62) == S["ERR_OUT_OF_MEMORY"]
        assert lib.max_batch(ctx, ctypes.byref(value)) == S["OK"] and value.value == 8
        assert lib.run(ctx, 8, ins, outs) == S["OK"]
        assert y.tobytes() == python_outputs(MODEL, x, 8).tobytes()
        assert lib.set_max_batch(None, 8) == S["ERR_NULL_POINTER"]
        assert lib.max_batch(ctx, None) == S["ERR_NULL_POINTER"]
        # threads
        assert lib.set_threads(ctx, 0) == S["ERR_INVALID_ARGUMENT"]
        assert lib.set_threads(None, 1) == S["ERR_NULL_POINTER"]
        assert lib.threads(ctx, None) == S["ERR_NULL_POINTER"]
        assert lib.set_threads(ctx, 3) == S["OK"]
        assert lib.threads(ctx, ctypes.byref(value)) == S["OK"] and value.value == 3
        # queries
        assert lib.input_info(1, ctypes.byref(info)) == S["ERR_INDEX"]
        assert lib.output_info(-1, ctypes.byref(info)) == S["ERR_INDEX"]
        assert lib.input_info(0, None) == S["ERR_NULL_POINTER"]
        assert lib.num_inputs(None) == S["ERR_NULL_POINTER"]
        assert lib.input_size(0, 0, ctypes.byref(value)) == S["ERR_BATCH_RANGE"]
        assert lib.input_size(0, 2 ** 62, ctypes.byref(value)) == S["ERR_BATCH_RANGE"]   # overflow
        assert lib.output_size(2, 1, ctypes.byref(value)) == S["ERR_INDEX"]
        assert lib.check_batch(0) == S["ERR_BATCH_RANGE"]
        assert lib.check_batch(12345) == S["OK"]
    finally:
        assert lib.free(ctx) == S["OK"]
    assert lib.free(None) == S["ERR_NULL_POINTER"]


def test_batch_rules_and_static_dims(work, rng):
    """A model whose kernel allows only some batch sizes (N broadcast against 3), with a static output."""
    c = rng.standard_normal((3, 4)).astype(np.float32)
    model = make_model([helper.make_node("Add", ["x", "c"], ["y"])], [("x", ["N", 4])], [("y", [3, 4])], {"c": c})
    path = work / "bcast.onnx"
    path.write_bytes(model.SerializeToString())
    lib_path = build(work, path, "bcast")
    assert "one of 1, 3" in (work / "bcast.h").read_text()
    lib = Library(lib_path, "bcast")
    assert lib.info(True, 0) == {"name": "y", "dtype": 1, "element_size": 4, "shape": [3, 4], "dims": [None, None]}
    size = ctypes.c_int64()
    assert lib.output_size(0, 3, ctypes.byref(size)) == S["OK"] and size.value == 48   # no batch dim
    assert [lib.check_batch(b) for b in (1, 2, 3, 4)] == [S["OK"], S["ERR_BATCH_RULE"], S["OK"], S["ERR_BATCH_RULE"]]
    status, ctx = lib.context(4)
    assert status == S["OK"]
    try:
        compiled = lc.compile(str(path))
        for batch in (1, 3):
            x = rng.standard_normal((batch, 4)).astype(np.float32)
            y = np.empty((3, 4), np.float32)
            assert lib.run_arrays(ctx, batch, [x], [y]) == S["OK"]
            assert y.tobytes() == compiled.run(None, {"x": x})[0].tobytes()
        x = np.zeros((2, 4), np.float32)
        assert lib.run_arrays(ctx, 2, [x], [y]) == S["ERR_BATCH_RULE"]
    finally:
        lib.free(ctx)


def test_model_without_a_dynamic_dim_runs_batch_one_only(work, rng):
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", [2, 5])], [("y", [2, 5])])
    path = work / "static.onnx"
    path.write_bytes(model.SerializeToString())
    lib = Library(build(work, path, "fixed"), "fixed")
    status, ctx = lib.context(4)
    assert status == S["OK"]
    x = rng.standard_normal((2, 5)).astype(np.float32)
    y = np.empty((2, 5), np.float32)
    assert lib.run_arrays(ctx, 2, [x], [y]) == S["ERR_BATCH_RULE"]
    assert lib.run_arrays(ctx, 1, [x], [y]) == S["OK"]
    assert y.tobytes() == np.maximum(x, 0).tobytes()
    lib.free(ctx)


# -- external weights ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def external_lib(work, mnist_lib):
    directory = work / "external"
    directory.mkdir()
    lib = directory / "libmnistx.so"
    proc = ok(lepton("compile", MODEL, "--emit", "so", "--name", "mnist", "--weights", "external", "-o", lib))
    assert "weights in" in proc.stdout
    return lib


def test_external_weights_are_loaded_and_checked(work, external_lib, mnist_lib):
    weights = external_lib.with_suffix(".bin")
    assert weights.exists()
    assert os.path.getsize(external_lib) + os.path.getsize(weights) // 2 < os.path.getsize(mnist_lib)
    lib = Library(external_lib, "mnist")
    x, _ = images(20)
    expected = python_outputs(MODEL, x, 20)

    def runs_with(path=None):
        status, ctx = lib.context(20, weights=path)
        if status != S["OK"]:
            assert not ctx.value
            return status
        y = np.empty((20, 10), np.float32)
        try:
            assert lib.run_arrays(ctx, 20, [x], [y]) == S["OK"]
        finally:
            lib.free(ctx)
        assert y.tobytes() == expected.tobytes()
        return status

    assert runs_with() == S["OK"]                       # the .bin beside the library
    data = weights.read_bytes()
    variants = {
        "copy.bin": data,
        "truncated.bin": data[:-100],
        "header_only.bin": data[:64],
        "empty.bin": b"",
        "longer.bin": data + b"\0",
        "flipped.bin": data[:5000] + bytes([data[5000] ^ 0x10]) + data[5001:],
        "other_header.bin": b"NOTLEPTN" + data[8:],
    }
    for file, content in variants.items():
        (work / file).write_bytes(content)
    assert runs_with(work / "copy.bin") == S["OK"]
    for file in variants:
        if file != "copy.bin":
            assert runs_with(work / file) == S["ERR_WEIGHTS_CORRUPT"], file
    assert runs_with(work / "no_such.bin") == S["ERR_WEIGHTS_MISSING"]
    # The other model's weights file is refused too.
    alt = work / "alt_external.so"
    ok(lepton("compile", ALT_MODEL, "--emit", "so", "--name", "altx", "--weights", "external", "-o", alt))
    assert runs_with(alt.with_suffix(".bin")) == S["ERR_WEIGHTS_CORRUPT"]


def test_external_weights_are_found_beside_the_library(work, raw):
    """The example program, run from another directory against an external-weights library."""
    deploy = work / "deploy"
    deploy.mkdir()
    ok(lepton("compile", MODEL, "--emit", "so", "--name", "mnist", "--weights", "external", "-o",
              deploy / "libmnist.so"))
    assert (deploy / "libmnist.bin").exists()
    ok(lepton("compile", MODEL, "--emit", "header", "--name", "mnist", "-o", deploy / "mnist.h"))
    exe = deploy / "mnist_classify"
    cc(*STRICT_C, "-I", deploy, "-o", exe, os.path.join(EXAMPLE, "mnist_classify.c"), "-L", deploy, "-lmnist",
       "-Wl,-rpath,$ORIGIN")
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    out = run_example(exe, raw, "--batch", 50, "--dump", work / "deploy.f32", cwd=elsewhere)
    assert "accuracy:" in out
    x, _ = images()
    assert np.fromfile(work / "deploy.f32", np.float32).tobytes() == python_outputs(MODEL, x, 50).tobytes()
    os.unlink(deploy / "libmnist.bin")
    proc = subprocess.run([str(exe), str(raw[0]), str(raw[1])], capture_output=True, text=True, cwd=elsewhere)
    assert proc.returncode == 1
    assert "create: the weights file cannot be opened (status 7)" in proc.stderr


# -- the command line ----------------------------------------------------------------------------

def test_emit_obj_with_name_renames_the_entry_point(work):
    obj = work / "named.o"
    ok(lepton("compile", MODEL, "--emit", "obj", "--name", "digits", "-o", obj))
    data = obj.read_bytes()
    assert data[:4] == b"\x7fELF" and b"digits_main" in data and b"lepton_main" not in data
    nm = shutil.which("nm")
    if nm:
        symbols = subprocess.run([nm, "-g", "--defined-only", str(obj)], capture_output=True, text=True).stdout
        assert [line.split()[-1] for line in symbols.splitlines()] == ["digits_main"]
    # and the Python runtime can still run a model whose entry point is renamed
    model = clib.compile_model(MODEL, name="digits")
    x, _ = images(3)
    assert model.native.entry == "digits_main"
    assert model.run(None, {"input": x})[0].tobytes() == lc.compile(MODEL).run(None, {"input": x})[0].tobytes()


def test_header_compiles_as_c_and_cpp(work, mnist_lib):
    source = work / "both.c"
    source.write_text('#include "mnist.h"\n#include "alt.h"\n#include "mnist.h"\nint main(void) { return 0; }\n')
    if not (work / "alt.h").exists():
        ok(lepton("compile", ALT_MODEL, "--emit", "header", "--name", "alt", "-o", work / "alt.h"))
    cc(*STRICT_C, "-fsyntax-only", "-I", work, source)
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    proc = subprocess.run([cxx, "-std=c++11", "-Wall", "-Wextra", "-pedantic", "-Werror", "-fsyntax-only", "-x", "c++",
                           "-I", str(work), str(source)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_header_needs_no_c_compiler_and_so_names_what_is_missing(work, mnist_lib, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CC"}
    env["PATH"] = str(tmp_path)                     # nothing on it
    header = tmp_path / "m.h"
    ok(lepton("compile", MODEL, "--emit", "header", "--name", "mnist", "-o", header, env=env))
    assert header.read_text() == (work / "mnist.h").read_text()
    line = one_line_error(lepton("compile", MODEL, "--emit", "so", "-o", tmp_path / "libm.so", env=env),
                          "C compiler", "cc, gcc or clang")
    assert "CC" in line
    assert not (tmp_path / "libm.so").exists()
    # $CC naming a compiler that is not there
    env["CC"] = "no-such-cc --flag"
    one_line_error(lepton("compile", MODEL, "--emit", "so", "-o", tmp_path / "libm.so", env=env), "no-such-cc")
    # the Python path needs no toolchain
    del env["CC"]
    ok(lepton("compile", MODEL, "-o", tmp_path / "m.lepton", env=env))
    assert lc.load(tmp_path / "m.lepton").run(None, {"input": images(2)[0]})[0].shape == (2, 10)


def test_command_line_errors(tmp_path):
    one_line_error(lepton("compile", MODEL, "--emit", "so", "--name", "1abc", "-o", tmp_path / "a.so"), "--name")
    one_line_error(lepton("compile", MODEL, "--emit", "so", "--name", "a-b", "-o", tmp_path / "a.so"), "--name")
    one_line_error(lepton("compile", MODEL, "--emit", "so"), "-o")
    one_line_error(lepton("compile", MODEL, "--emit", "obj", "--weights", "external", "-o", tmp_path / "a.o"),
                   "--weights applies to --emit so")
    one_line_error(lepton("compile", MODEL, "--emit", "onnx", "--name", "x", "-o", tmp_path / "a.onnx"),
                   "--name applies")
    one_line_error(lepton("compile", MODEL, "--name", "x", "-o", tmp_path / "a.lepton"), "--name applies")
    proc = ok(lepton("compile", MODEL, "--emit", "llvm", "--name", "digits"))
    assert "define void @digits_main(" in proc.stdout and "lepton_main" not in proc.stdout
    one_line_error(lepton("compile", MODEL, "--target", "ort", "--emit", "so", "-o", tmp_path / "a.so"),
                   "--target cpu")
    one_line_error(lepton("compile", MODEL, "--emit", "so", "-o", tmp_path / "missing_dir" / "a.so"),
                   "no such directory")
    assert clib.default_name("models/3-layer.net.onnx") == "m_3_layer_net"
    assert clib.default_name(b"bytes") == "model"
