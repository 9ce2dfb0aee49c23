"""CompiledModel: signature, input validation, threads, save/load and artifact checks, mcpu, backend."""

from __future__ import annotations

import json
import os
import threading
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import lepton_compiler as lc
from lepton_compiler.backends.llvm.target import host_target
from lepton_compiler.demo import bundled_model_path
from lepton_compiler.errors import ArtifactError, LeptonError
from lepton_compiler.runtime.artifact import manifest_digest

MODEL = bundled_model_path()
TOL = 1e-5


def _images(n):
    with np.load(os.path.join(os.path.dirname(MODEL), "mnist_test1000.npz"), allow_pickle=False) as data:
        return data["x"][:n].astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def model():
    return lc.compile(MODEL)


@pytest.fixture(scope="module")
def session():
    return ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def x():
    return _images(16)


@pytest.fixture(scope="module")
def artifact(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("artifact") / "mnist.lepton"
    model.save(path)
    return path


def _ort(session, x):
    return session.run(None, {"input": x})[0]


def _rewrite_zip(src, dst, name, transform):
    """Copy the zip ``src`` to ``dst`` with member ``name`` replaced by ``transform(old_bytes)``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        assert name in zin.namelist()
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == name:
                data = transform(data)
            zout.writestr(info.filename, data)


def _flip_byte(data: bytes) -> bytes:
    b = bytearray(data)
    b[len(b) // 2] ^= 0x5A
    return bytes(b)


def _edit_manifest(edit, reseal=False):
    """Edit the manifest; ``reseal`` recomputes its own checksum, as if a (future or foreign)
    lepton had written it, so that the checks behind the checksum are what is tested."""
    def transform(data):
        manifest = json.loads(data)
        edit(manifest)
        if reseal:
            manifest["manifest_sha256"] = manifest_digest(manifest)
        return json.dumps(manifest).encode()
    return transform


def test_edited_manifest_fails_its_checksum(artifact, tmp_path):
    bad = tmp_path / "edited.lepton"
    _rewrite_zip(artifact, bad, "manifest.json", _edit_manifest(lambda m: m.update(batch_symbol="M")))
    with pytest.raises(ArtifactError, match="the manifest checksum does not match"):
        lc.load(bad)


# -- signature and outputs ------------------------------------------------------------------------

def test_signature(model):
    (inp,) = model.inputs
    (out,) = model.outputs
    assert (inp.name, inp.dtype, tuple(inp.shape)) == ("input", "float32", ("N", 1, 28, 28))
    assert (out.name, out.dtype, tuple(out.shape)) == ("probabilities", "float32", ("N", 10))
    assert str(inp) == "input: float32[N, 1, 28, 28]"
    assert str(out) == "probabilities: float32[N, 10]"
    # inputs/outputs are copies: mutating them does not change the model
    model.inputs.clear()
    assert len(model.inputs) == 1


def test_run_none_vs_named_output(model, session, x):
    all_outs = model.run(None, {"input": x})
    named = model.run(["probabilities"], {"input": x})
    assert isinstance(all_outs, list) and isinstance(named, list)
    assert len(all_outs) == 1 and len(named) == 1
    assert all_outs[0].shape == (16, 10) and all_outs[0].dtype == np.float32
    np.testing.assert_array_equal(all_outs[0], named[0])
    assert np.abs(all_outs[0] - _ort(session, x)).max() <= TOL
    assert model.run([], {"input": x}) == []


def test_unknown_output_name(model, x):
    with pytest.raises(lc.InputError) as info:
        model.run(["nope"], {"input": x})
    assert str(info.value) == "unknown output 'nope'; the model's outputs are: probabilities"


# -- input validation ---------------------------------------------------------------------------

def _bad_feeds(x):
    return [
        ("wrong name", {"image": x},
         "unknown input 'image'; the model's inputs are: input"),
        ("missing", {},
         "missing input 'input'; the model's inputs are: input"),
        ("extra", {"input": x, "extra": x},
         "unknown input 'extra'; the model's inputs are: input"),
        ("float64", {"input": x.astype(np.float64)},
         "input 'input' has dtype float64; the model expects float32"),
        ("rank", {"input": x[0]},
         "input 'input' has shape [1, 28, 28] (rank 3); the model expects rank 4: [N, 1, 28, 28]"),
        ("fixed dim", {"input": np.zeros((2, 1, 28, 27), np.float32)},
         "input 'input' has shape [2, 1, 28, 27]; dim 3 must be 28 (the model expects [N, 1, 28, 28])"),
        ("channels", {"input": np.zeros((2, 3, 28, 28), np.float32)},
         "input 'input' has shape [2, 3, 28, 28]; dim 1 must be 1 (the model expects [N, 1, 28, 28])"),
        ("batch 0", {"input": np.zeros((0, 1, 28, 28), np.float32)},
         "input 'input' has N=0 in dim 0; it must be at least 1"),
        ("list", {"input": x.tolist()},
         "input 'input' must be a numpy array, got list"),
    ]


@pytest.mark.parametrize("case", range(9), ids=[c[0] for c in _bad_feeds(np.zeros((1, 1, 28, 28)))])
def test_input_errors(model, x, case):
    _, feed, message = _bad_feeds(x)[case]
    with pytest.raises(lc.InputError) as info:
        model.run(None, feed)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, LeptonError)
    assert str(info.value) == message


def test_feed_not_a_dict(model, x):
    with pytest.raises(lc.InputError) as info:
        model.run(None, [x])
    assert str(info.value) == "feed must be a dict of input name -> numpy array, got list"


def test_call_errors(model, x):
    with pytest.raises(lc.InputError) as info:
        model(x, x)
    assert str(info.value) == "the model takes 1 inputs, got 2"
    with pytest.raises(lc.InputError) as info:
        model(x, input=x)
    assert str(info.value) == "input 'input' is given twice"


def test_non_contiguous_and_readonly_inputs(model, session, x):
    expected = model.run(None, {"input": np.ascontiguousarray(x)})[0]
    # strided view of a bigger array
    big = np.zeros((16, 1, 56, 56), np.float32)
    big[:, :, ::2, ::2] = x
    strided = big[:, :, ::2, ::2]
    assert not strided.flags.c_contiguous
    # transposed view of a transposed copy (values equal x, memory order is not C)
    transposed = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not transposed.flags.c_contiguous
    fortran = np.asfortranarray(x)
    readonly = x.copy()
    readonly.setflags(write=False)
    # every other image, via a negative-free step on the batch axis
    every_other = x[::2]
    for name, arr in [("strided", strided), ("transposed", transposed), ("fortran", fortran),
                      ("readonly", readonly)]:
        got = model.run(None, {"input": arr})[0]
        np.testing.assert_array_equal(got, expected, err_msg=name)
    got = model.run(None, {"input": every_other})[0]
    np.testing.assert_array_equal(got, model.run(None, {"input": np.ascontiguousarray(every_other)})[0])
    assert np.abs(got - _ort(session, np.ascontiguousarray(every_other))).max() <= TOL
    # the inputs were not modified
    np.testing.assert_array_equal(strided, x)
    np.testing.assert_array_equal(readonly, x)


def test_concurrent_runs(model):
    xs = [_images(200)[i * 7:(i * 7) + b] for i, b in enumerate([1, 3, 7, 16, 5, 32, 2, 9])]
    expected = [model.run(None, {"input": xb})[0] for xb in xs]
    errors = []
    results = {}

    def worker(tid):
        try:
            for rep in range(6):
                for k, xb in enumerate(xs):
                    k2 = (k + tid) % len(xs)
                    out = model.run(None, {"input": xs[k2]})[0]
                    results[(tid, rep, k2)] = out
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 4 * 6 * len(xs)
    for (tid, rep, k), out in results.items():
        np.testing.assert_array_equal(out, expected[k], err_msg=f"thread {tid} rep {rep} input {k}")


def test_concurrent_first_run_of_fresh_model(x):
    """Several threads hitting a freshly loaded model at once (lazy native load)."""
    fresh = lc.compile(MODEL)
    expected = lc.compile(MODEL).run(None, {"input": x})[0]
    outs, errors = [None] * 4, []
    barrier = threading.Barrier(4)

    def worker(i):
        try:
            barrier.wait()
            outs[i] = fresh.run(None, {"input": x})[0]
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for out in outs:
        np.testing.assert_array_equal(out, expected)


# -- save / load ------------------------------------------------------------------------------

def test_save_load_round_trip(model, artifact, x):
    assert zipfile.is_zipfile(artifact)
    with zipfile.ZipFile(artifact) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("manifest.json"))
    assert {"manifest.json", "native.o", "weights.bin", "model.onnx"} <= names
    assert manifest["format"] == "lepton-artifact"
    assert manifest["version"] == 1
    loaded = lc.load(artifact)
    assert isinstance(loaded, lc.CompiledModel)
    assert loaded.inputs == model.inputs
    assert loaded.outputs == model.outputs
    assert loaded.target == model.target
    for batch in (1, 7, 16):
        a = model.run(None, {"input": x[:batch]})[0]
        b = loaded.run(None, {"input": x[:batch]})[0]
        assert a.tobytes() == b.tobytes()
    # load accepts str as well as Path; saving a loaded model again gives a loadable artifact
    again = lc.load(str(artifact))
    resaved = artifact.parent / "resaved.lepton"
    again.save(str(resaved))
    third = lc.load(resaved)
    assert third.run(None, {"input": x})[0].tobytes() == model.run(None, {"input": x})[0].tobytes()


def test_save_overwrites_existing_file(model, tmp_path, x):
    path = tmp_path / "m.lepton"
    path.write_bytes(b"old contents")
    model.save(path)
    assert lc.load(path).run(None, {"input": x})[0].tobytes() == model.run(None, {"input": x})[0].tobytes()
    assert sorted(os.listdir(tmp_path)) == ["m.lepton"]


def test_save_to_missing_directory(model, tmp_path):
    path = tmp_path / "no" / "such" / "dir" / "m.lepton"
    with pytest.raises(LeptonError) as info:
        model.save(path)
    assert "cannot write" in str(info.value)
    assert not path.exists()


def test_save_to_unwritable_directory(model, tmp_path, artifact):
    d = tmp_path / "ro"
    d.mkdir()
    target = d / "m.lepton"
    old = artifact.read_bytes()
    target.write_bytes(old)
    d.chmod(0o500)
    try:
        if os.access(d, os.W_OK):
            # root ignores directory permissions: the save then succeeds and must be whole
            model.save(target)
            assert lc.load(target).inputs == model.inputs
        else:
            with pytest.raises(LeptonError):
                model.save(target)
            assert target.read_bytes() == old
        assert sorted(os.listdir(d)) == ["m.lepton"]
    finally:
        d.chmod(0o700)


def test_failed_save_is_atomic(model, artifact, tmp_path, monkeypatch):
    """A write that fails halfway leaves the old file intact and no temporary file behind."""
    from lepton_compiler.runtime import artifact as artifact_mod

    target = tmp_path / "m.lepton"
    old = b"previous artifact bytes"
    target.write_bytes(old)
    real_writestr = zipfile.ZipFile.writestr
    calls = {"n": 0}

    def failing_writestr(self, name, data, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real_writestr(self, name, data, *args, **kwargs)

    monkeypatch.setattr(artifact_mod.zipfile.ZipFile, "writestr", failing_writestr)
    with pytest.raises(LeptonError) as info:
        model.save(target)
    monkeypatch.undo()
    assert calls["n"] == 3
    assert "No space left on device" in str(info.value)
    assert target.read_bytes() == old
    assert sorted(os.listdir(tmp_path)) == ["m.lepton"]

    # the same for a save over a directory (os.replace fails at the very end)
    as_dir = tmp_path / "adir"
    as_dir.mkdir()
    with pytest.raises(LeptonError):
        model.save(as_dir)
    assert as_dir.is_dir() and os.listdir(as_dir) == []
    assert sorted(os.listdir(tmp_path)) == ["adir", "m.lepton"]


@pytest.mark.parametrize("member", ["native.o", "weights.bin", "model.onnx"])
def test_tampered_artifact(artifact, tmp_path, member):
    bad = tmp_path / "bad.lepton"
    _rewrite_zip(artifact, bad, member, _flip_byte)
    with pytest.raises(ArtifactError) as info:
        lc.load(bad)
    assert isinstance(info.value, LeptonError)
    assert "checksum" in str(info.value)
    assert member in str(info.value)


def test_missing_member(artifact, tmp_path):
    bad = tmp_path / "bad.lepton"
    with zipfile.ZipFile(artifact) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            if info.filename != "native.o":
                zout.writestr(info.filename, zin.read(info.filename))
    with pytest.raises(ArtifactError) as info:
        lc.load(bad)
    assert "native.o" in str(info.value)


def test_truncated_artifact(artifact, tmp_path):
    data = artifact.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 100):
        bad = tmp_path / f"trunc{cut}.lepton"
        bad.write_bytes(data[:cut])
        with pytest.raises(ArtifactError):
            lc.load(bad)


def test_not_a_zip(tmp_path):
    bad = tmp_path / "x.lepton"
    bad.write_bytes(b"this is not a zip file at all\n" * 10)
    with pytest.raises(ArtifactError) as info:
        lc.load(bad)
    assert "not a lepton artifact" in str(info.value)
    # an ONNX file is not an artifact either
    with pytest.raises(ArtifactError):
        lc.load(MODEL)


def test_missing_artifact(tmp_path):
    with pytest.raises(ArtifactError) as info:
        lc.load(tmp_path / "nope.lepton")
    assert "nope.lepton" in str(info.value)


def test_zip_without_manifest(tmp_path):
    bad = tmp_path / "x.lepton"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(ArtifactError) as info:
        lc.load(bad)
    assert "manifest" in str(info.value)


def test_manifest_other_version(artifact, tmp_path):
    bad = tmp_path / "v2.lepton"
    _rewrite_zip(artifact, bad, "manifest.json", _edit_manifest(lambda m: m.update(version=2), reseal=True))
    with pytest.raises(ArtifactError) as info:
        lc.load(bad)
    assert "version 2" in str(info.value)


def test_manifest_not_json(artifact, tmp_path):
    bad = tmp_path / "j.lepton"
    _rewrite_zip(artifact, bad, "manifest.json", lambda data: data[: len(data) // 2])
    with pytest.raises(ArtifactError):
        lc.load(bad)


def test_manifest_malformed(artifact, tmp_path):
    bad = tmp_path / "m.lepton"
    _rewrite_zip(artifact, bad, "manifest.json", _edit_manifest(lambda m: m.pop("target")))
    with pytest.raises(ArtifactError) as info:
        lc.load(bad)
    assert "malformed" in str(info.value)


def _missing_feature():
    host = set(host_target().features)
    for name in ("amx-tile", "amx-int8", "amx-bf16", "avx10.2-512", "sme", "avx512fp16"):
        if name not in host:
            return name
    raise AssertionError("host has every candidate feature")


def test_manifest_feature_host_lacks(artifact, tmp_path):
    feature = _missing_feature()
    bad = tmp_path / "feat.lepton"

    def edit(m):
        m["target"]["features"] = sorted(m["target"]["features"] + [feature])
    _rewrite_zip(artifact, bad, "manifest.json", _edit_manifest(edit, reseal=True))
    with pytest.raises(ArtifactError) as info:
        lc.load(bad)
    assert feature in str(info.value)
    assert "lacks" in str(info.value)


def test_manifest_other_triple(artifact, tmp_path):
    bad = tmp_path / "arm.lepton"

    def edit(m):
        m["target"]["triple"] = "aarch64-unknown-linux-gnu"
    _rewrite_zip(artifact, bad, "manifest.json", _edit_manifest(edit, reseal=True))
    with pytest.raises(ArtifactError) as info:
        lc.load(bad)
    assert "aarch64-unknown-linux-gnu" in str(info.value)


def test_manifest_unknown_cpu(artifact, tmp_path):
    bad = tmp_path / "cpu.lepton"

    def edit(m):
        m["target"]["cpu"] = "some-future-cpu"
    _rewrite_zip(artifact, bad, "manifest.json", _edit_manifest(edit, reseal=True))
    with pytest.raises(ArtifactError) as info:
        lc.load(bad)
    assert "some-future-cpu" in str(info.value)


def test_manifest_constant_out_of_range(artifact, tmp_path):
    bad = tmp_path / "w.lepton"

    def edit(m):
        m["constants"][0]["offset"] = 10 ** 9
    _rewrite_zip(artifact, bad, "manifest.json", _edit_manifest(edit, reseal=True))
    with pytest.raises(ArtifactError) as info:
        lc.load(bad)
    assert "does not fit" in str(info.value)


def test_manifest_negative_workspace(artifact, tmp_path, x):
    """A manifest whose workspace sizes are negative is damaged: load must refuse it
    (not hand back a model whose run() raises numpy's ValueError)."""
    bad = tmp_path / "ws.lepton"
    _rewrite_zip(artifact, bad, "manifest.json", _edit_manifest(lambda m: m.update(workspace=[-(10 ** 9), 0]), reseal=True))
    with pytest.raises(ArtifactError):
        lc.load(bad).run(None, {"input": x})


_CHILD = """
import sys, numpy as np, lepton_compiler as lc
from lepton_compiler.errors import ArtifactError
try:
    m = lc.load(sys.argv[1])
except ArtifactError as exc:
    print("ARTIFACT_ERROR", exc)
    sys.exit(0)
feed = {m.inputs[0].name: np.zeros([64 if isinstance(d, str) else d for d in m.inputs[0].shape], np.float32)}
m.run(None, feed)
print("LOADED_AND_RAN")
"""


@pytest.mark.parametrize("edit", [
    pytest.param(lambda m: m.update(workspace=[0, 0]), id="workspace-zeroed"),
    pytest.param(lambda m: m["inputs"][0].update(shape=["N", 1, 14, 14]), id="input-shape"),
    pytest.param(lambda m: m["outputs"][0].update(shape=["N", 2]), id="output-shape"),
])
def test_manifest_corruption_is_detected(artifact, tmp_path, edit):
    """A manifest edited so that it no longer describes native.o (sizes of the workspace or the
    I/O buffers) must be refused by load with ArtifactError: otherwise the native code reads or
    writes out of bounds. Run in a child process because the failure mode is a segfault."""
    import subprocess
    import sys

    bad = tmp_path / "m.lepton"
    _rewrite_zip(artifact, bad, "manifest.json", _edit_manifest(edit))
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "ARTIFACT_ERROR" in proc.stdout, (
        f"exit {proc.returncode}; stdout: {proc.stdout.strip()!r}; stderr tail: {proc.stderr[-300:]!r}")


# -- targets ------------------------------------------------------------------------------------

def test_mcpu_portable(session, x, tmp_path):
    portable = lc.compile(MODEL, mcpu="x86-64-v2")
    assert portable.target.cpu == "x86-64-v2"
    assert portable.target.triple == host_target().triple
    out = portable.run(None, {"input": x})[0]
    ref = _ort(session, x)
    assert (out.argmax(1) == ref.argmax(1)).all()
    assert np.abs(out - ref).max() <= TOL
    # the portable artifact can be saved and loaded on this host
    path = tmp_path / "v2.lepton"
    portable.save(path)
    loaded = lc.load(path)
    assert loaded.target.cpu == "x86-64-v2"
    assert loaded.run(None, {"input": x})[0].tobytes() == out.tobytes()


def test_mcpu_unknown():
    with pytest.raises(LeptonError) as info:
        lc.compile(MODEL, mcpu="not-a-cpu")
    assert "not-a-cpu" in str(info.value)


def test_compile_option_errors():
    for kwargs in ({"target": "gpu"}, {"quantize": "int8"}, {"providers": ["CPUExecutionProvider"]},
                   {"threads": 0}, {"opt_level": 7}):
        with pytest.raises(LeptonError):
            lc.compile(MODEL, **kwargs)


# -- onnx.backend interface ----------------------------------------------------------------------

def test_backend_prepare(session, x):
    proto = onnx.load(MODEL)
    rep = lc.backend.prepare(proto, device="CPU")
    outs = rep.run([x])
    assert isinstance(outs, tuple) and len(outs) == 1
    ref = _ort(session, x)
    assert np.abs(outs[0] - ref).max() <= TOL
    assert (outs[0].argmax(1) == ref.argmax(1)).all()
    np.testing.assert_array_equal(rep.run(x)[0], outs[0])
    np.testing.assert_array_equal(rep.run({"input": x})[0], outs[0])
    assert lc.backend.supports_device("CPU")
    assert not lc.backend.supports_device("CUDA")


def test_backend_run_model(session, x):
    outs = lc.backend.run_model(onnx.load(MODEL), [x[:3]])
    assert np.abs(outs[0] - _ort(session, x[:3])).max() <= TOL


def test_backend_cuda_refused():
    with pytest.raises(LeptonError) as info:
        lc.backend.prepare(onnx.load(MODEL), device="CUDA")
    assert "CUDA" in str(info.value)
