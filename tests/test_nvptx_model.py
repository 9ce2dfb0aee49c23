"""target="cuda" end to end: the MNIST PTX, ptxas, the MNIST numbers (host emulation), the runtime's launch
logic (through a stand-in for CuPy that runs the emulated kernels), the error paths and the CLI.

Only the tests marked ``gpu`` need a real NVIDIA GPU with CuPy; everything else runs anywhere.
"""

import ctypes
import importlib.util
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import lepton_compiler as lc
from lepton_compiler.backends.nvptx import build_ptx, find_ptxas, normalize_gpu, run_ptxas
from lepton_compiler.backends.nvptx.emulate import HostEmulator
from lepton_compiler.errors import InputError, LeptonError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(ROOT, "lepton_compiler", "demo", "mnist_cnn.onnx")
DATA = os.path.join(ROOT, "lepton_compiler", "demo", "mnist_test1000.npz")
PTXAS = find_ptxas()


def _gpu_available() -> bool:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


gpu = pytest.mark.skipif(not _gpu_available(), reason="needs an NVIDIA GPU with CuPy (cupy-cuda12x)")


@pytest.fixture(scope="module")
def mnist():
    graph = lc.optimize(MNIST)
    ptx, gplan = build_ptx(graph, "sm_90")
    data = np.load(DATA)
    return graph, ptx, gplan, data["x"].astype(np.float32) / 255.0, data["y"]


def test_mnist_ptx_structure(mnist):
    _, ptx, gplan, _, _ = mnist
    assert ".target sm_90" in ptx and ".address_size 64" in ptx
    entries = [line.split()[2].split("(")[0] for line in ptx.splitlines() if line.startswith(".visible .entry")]
    assert entries == ["k0_FusedConv__conv1_Conv", "k1_FusedConv__conv2_Conv", "k2_FusedConv__conv3_Conv",
                       "k3_FusedGemm__fc1_Gemm", "k4_FusedGemm__fc2_Gemm"]
    assert [launch.kernel for launch in gplan.launches] == entries
    for name in entries:   # every kernel tiles through shared memory and synchronizes the block
        body = ptx.split(f".entry {name}(")[1].split(".entry")[0]
        assert ".shared" in body and "bar.sync" in body and "%tid.x" in body and "%ctaid.x" in body
    assert "call" not in ptx   # no library calls: exp is inline arithmetic
    assert all(launch.shared_bytes <= 48 * 1024 for launch in gplan.launches)
    # batch-dependent grids: N * positions / 64 blocks for the convolutions
    assert gplan.launches[0].grid_for(1000) == (-(-1000 * 169 // 64), 1, 1)


@pytest.mark.skipif(PTXAS is None, reason="ptxas not found (pip install nvidia-cuda-nvcc-cu12)")
@pytest.mark.parametrize("arch", ["sm_90", "sm_80", "sm_75"])
def test_mnist_ptx_assembles_with_ptxas(mnist, arch):
    graph = mnist[0]
    ptx, _ = build_ptx(graph, arch)
    report = run_ptxas(ptx, arch)
    used = [line for line in report.splitlines() if "Used" in line]
    assert len(used) == 5
    assert "0 bytes spill stores" in report and "spill stores" in report


@pytest.mark.skipif(PTXAS is None, reason="ptxas not found (pip install nvidia-cuda-nvcc-cu12)")
def test_ptxas_rejects_broken_ptx():
    with pytest.raises(LeptonError, match="ptxas rejected"):
        run_ptxas(".version 7.8\n.target sm_90\n.address_size 64\n.visible .entry k() { bogus; }\n")


def test_mnist_host_emulation_matches_cpu_backend_and_ort(mnist):
    import onnxruntime as ort
    graph, _, gplan, x, y = mnist
    out = HostEmulator(graph, gplan).run(x)[0]
    cpu = lc.compile(MNIST)(x)
    session = ort.InferenceSession(MNIST, providers=["CPUExecutionProvider"])
    ref = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert out.shape == (1000, 10)
    assert (out.argmax(1) == cpu.argmax(1)).all() and (out.argmax(1) == ref.argmax(1)).all()
    assert np.abs(out - cpu).max() <= 1e-4 and np.abs(out - ref).max() <= 1e-4
    assert (out.argmax(1) == y).mean() > 0.9


def test_mnist_host_emulation_batch_sizes(mnist):
    graph, _, gplan, x, _ = mnist
    emulator = HostEmulator(graph, gplan)
    cpu = lc.compile(MNIST)
    for batch in (1, 3, 64, 65, 257):
        np.testing.assert_allclose(emulator.run(x[:batch])[0], cpu(x[:batch]), atol=1e-5)


def test_gpu_names():
    assert normalize_gpu("sm_90") == "sm_90" and normalize_gpu("90") == "sm_90" and normalize_gpu((8, 6)) == "sm_86"
    assert normalize_gpu("9.0") == "sm_90" and normalize_gpu("sm_90a") == "sm_90a"
    for bad in ("sm_12", "h100", "sm_99"):
        with pytest.raises(LeptonError):
            normalize_gpu(bad)


# -- the api without a GPU -----------------------------------------------------------------------------------------
def test_cuda_target_without_cupy_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)   # import cupy -> ImportError
    with pytest.raises(LeptonError, match="needs CuPy.*cupy-cuda12x"):
        lc.compile(MNIST, target="cuda")


def test_cuda_target_without_gpu_is_a_clear_error(monkeypatch):
    fake = types.ModuleType("cupy")

    def no_device():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(LeptonError, match="needs an NVIDIA GPU"):
        lc.compile(MNIST, target="cuda", gpu="sm_90")


def test_cuda_options_are_checked():
    with pytest.raises(LeptonError, match="gpu= applies to target='cuda'"):
        lc.compile(MNIST, gpu="sm_90")
    with pytest.raises(LeptonError, match="mcpu= does not apply"):
        lc.compile(MNIST, target="cuda", mcpu="x86-64")


# -- the runtime, with a stand-in for CuPy that runs the emulated kernels -----------------------------------------------
class FakeArray:
    """A 'device' array: host memory, but it looks like a GPU array to CudaModel."""

    def __init__(self, array):
        self.array = np.ascontiguousarray(array)
        self.data = types.SimpleNamespace(ptr=self.array.ctypes.data)
        self.shape, self.dtype = self.array.shape, self.array.dtype

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.data.ptr, False), "version": 3}


def fake_cupy(state):
    cp = types.ModuleType("cupy")
    cp.ndarray = FakeArray
    cp.uint8 = np.uint8
    cp.asarray = lambda a: a if isinstance(a, FakeArray) else FakeArray(np.asarray(a))
    cp.ascontiguousarray = cp.asarray
    cp.asnumpy = lambda a: a.array.copy()
    cp.empty = lambda shape, dtype: FakeArray(np.full(shape, np.nan, dtype) if np.dtype(dtype).kind == "f"
                                              else np.empty(shape, dtype))

    class Device:
        id, compute_capability = 0, "90"

        def __init__(self, *args):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def memcpy(dst, src, nbytes, kind, stream):
        ctypes.memmove(dst, src, nbytes)

    cp.cuda = types.SimpleNamespace(
        Device=Device, get_current_stream=lambda: types.SimpleNamespace(ptr=0),
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, memcpyAsync=memcpy, memcpyDeviceToDevice=3))

    class RawModule:
        def __init__(self, path):
            with open(path) as f:
                state["ptx"] = f.read()

        def get_function(self, name):
            def launch(grid, block, args):
                state["launches"].append((name, grid, block))
                emulator = state["emulator"]
                spec = next(s for s in emulator.gplan.specs if s.name == name)
                assert tuple(block) == spec.block and isinstance(args[0], np.int32)
                emulator._fns[name](int(args[0]), *grid, *[int(a) for a in args[1:]])
            return launch
    cp.RawModule = RawModule
    return cp


def test_cuda_model_runtime_with_emulated_device(monkeypatch, mnist):
    graph, _, gplan, x, _ = mnist
    state = {"launches": []}
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(state))
    model = lc.compile(MNIST, target="cuda")
    assert model.gpu == "sm_90" and state["ptx"] == model.ptx and ".entry k0_FusedConv" in model.ptx
    state["emulator"] = HostEmulator(model.gplan.plan.graph, model.gplan)
    cpu = lc.compile(MNIST)
    out = model(x[:300])                                    # numpy in, numpy out
    assert isinstance(out, np.ndarray) and out.shape == (300, 10)
    np.testing.assert_allclose(out, cpu(x[:300]), atol=1e-5)
    assert [name for name, _, _ in state["launches"]] == [launch.kernel for launch in gplan.launches]
    assert state["launches"][0][1] == (-(-300 * 169 // 64), 1, 1)
    dev = model.run(None, {"input": FakeArray(x[:5])})[0]  # device in, device out
    assert isinstance(dev, FakeArray)
    np.testing.assert_allclose(dev.array, cpu(x[:5]), atol=1e-5)
    one = model(x[7:8])                                     # a new batch size: a new workspace
    np.testing.assert_allclose(one, cpu(x[7:8]), atol=1e-5)
    with pytest.raises(InputError, match="dtype"):
        model(x[:2].astype(np.float64))
    with pytest.raises(InputError, match="dtype"):
        model(FakeArray(x[:2].astype(np.float64)))
    with pytest.raises(InputError, match="shape"):
        model(FakeArray(x[:2, :, :27]))
    with pytest.raises(InputError, match="unknown input"):
        model.run(None, {"image": x[:1]})
    with pytest.raises(LeptonError, match="cannot be saved"):
        model.save("m.lepton")


@gpu
def test_mnist_on_the_gpu(mnist):
    graph, _, _, x, _ = mnist
    model = lc.compile(MNIST, target="cuda")
    cpu = lc.compile(MNIST)(x)
    out = model(x)
    assert (out.argmax(1) == cpu.argmax(1)).all() and np.abs(out - cpu).max() <= 1e-4


# -- the command line --------------------------------------------------------------------------------------------
def lepton(*args):
    return subprocess.run([sys.executable, "-m", "lepton_compiler.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_cli_emit_ptx_and_llvm(tmp_path):
    out = tmp_path / "m.ptx"
    done = lepton("compile", "--target", "cuda", "--emit", "ptx", MNIST, "-o", str(out))
    assert done.returncode == 0, done.stderr
    ptx = out.read_text()
    assert ".target sm_90" in ptx and ptx.count(".visible .entry") == 5
    assert "k4_FusedGemm__fc2_Gemm" in done.stdout and "shared" in done.stdout
    done = lepton("compile", "--target", "cuda", "--gpu", "sm_80", "--emit", "ptx", MNIST, "-o", str(out))
    assert done.returncode == 0 and ".target sm_80" in out.read_text()
    ll = tmp_path / "m.ll"
    done = lepton("compile", "--target", "cuda", "--emit", "llvm", MNIST, "-o", str(ll))
    assert done.returncode == 0 and "ptx_kernel" in ll.read_text() and "nvptx64-nvidia-cuda" in ll.read_text()


@pytest.mark.parametrize("args,message", [
    (["--target", "cuda"], "--emit ptx"),
    (["--emit", "ptx"], "apply to --target cuda"),
    (["--target", "cuda", "--emit", "obj"], "--emit obj does not apply"),
    (["--target", "cuda", "--emit", "ptx", "--gpu", "sm_7"], "GPU architecture"),
    (["--target", "cuda", "--emit", "ptx", "--mcpu", "x86-64"], "--mcpu does not apply"),
])
def test_cli_cuda_errors_are_one_line(args, message):
    done = lepton("compile", *args, MNIST, "-o", os.devnull)
    assert done.returncode != 0 and message in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


# -- the GPU script's CPU-side parts ----------------------------------------------------------------------------------
def test_gpu_check_torch_model_reproduces_ort():
    torch = pytest.importorskip("torch")
    import onnxruntime as ort
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "benchmarks", "gpu_check.py"))
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    x, _ = gpu_check.test_images()
    with torch.no_grad():
        out = gpu_check.torch_model(MNIST, "cpu")(torch.from_numpy(x[:200])).numpy()
    session = ort.InferenceSession(MNIST, providers=["CPUExecutionProvider"])
    ref = session.run(None, {session.get_inputs()[0].name: x[:200]})[0]
    assert np.abs(out - ref).max() <= 1e-5 and (out.argmax(1) == ref.argmax(1)).all()
