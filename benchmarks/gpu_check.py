#!/usr/bin/env python3
"""The GPU check of ``target="cuda"`` (issue 12): one script for a machine with an NVIDIA GPU.

1. compiles the bundled MNIST CNN for ``cuda`` (PTX from LLVM's NVPTX target, loaded through CuPy);
2. runs the 1000 bundled test images and compares with the cpu backend: argmax identical and
   max |difference| <= 1e-4 (also for batch 4096 and for a CuPy-array feed);
3. times batch 1 and batch 4096 next to PyTorch on the same GPU, with the same architecture and the
   same weights (built from the ONNX initializers; TF32 off so both compute in float32).

Run from the repository root::

    python3 benchmarks/gpu_check.py            # add --install-cupy to pip install cupy-cuda12x if missing

Prints a compact table; exits 1 if the agreement checks fail, 2 if CuPy or the GPU is missing.
Well under 5 minutes (about half a minute of timing; the first PTX load is JIT-compiled by the driver).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODEL = os.path.join(ROOT, "lepton_compiler", "demo", "mnist_cnn.onnx")
DATA = os.path.join(ROOT, "lepton_compiler", "demo", "mnist_test1000.npz")
TOLERANCE = 1e-4


def torch_model(onnx_path: str = MODEL, device: str = "cpu"):
    """The MNIST CNN in PyTorch with the ONNX file's weights: conv1 1->32 3x3, ReLU, pool 2, conv2 32->64 3x3,
    ReLU, pool 2, conv3 64->64 3x3, ReLU, flatten, fc1 576->64, ReLU, fc2 64->10, softmax."""
    import onnx
    import torch
    from onnx import numpy_helper
    from torch import nn

    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(onnx_path).graph.initializer}

    class MnistCnn(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2, self.conv3 = nn.Conv2d(1, 32, 3), nn.Conv2d(32, 64, 3), nn.Conv2d(64, 64, 3)
            self.fc1, self.fc2 = nn.Linear(576, 64), nn.Linear(64, 10)

        def forward(self, x):
            x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
            x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
            x = torch.relu(self.conv3(x)).flatten(1)
            return torch.softmax(self.fc2(torch.relu(self.fc1(x))), dim=1)

    model = MnistCnn()
    state = {name: torch.from_numpy(np.array(weights[name])) for name in model.state_dict()}
    model.load_state_dict(state)
    return model.eval().to(device)


def test_images():
    data = np.load(DATA)
    return (data["x"].astype(np.float32) / 255.0), data["y"]


def ensure_cupy(install: bool):
    try:
        import cupy
        return cupy
    except ImportError:
        if not install:
            print("gpu_check: CuPy is not installed. Install it with `pip install cupy-cuda12x` (or rerun with "
                  "--install-cupy); target='cuda' loads its PTX through CuPy.", file=sys.stderr)
            sys.exit(2)
    print("gpu_check: installing cupy-cuda12x with pip ...", flush=True)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "cupy-cuda12x"], timeout=240)
    try:
        import cupy
        return cupy
    except ImportError:
        print(f"gpu_check: pip could not install cupy-cuda12x (exit {done.returncode}); no CuPy, no check.",
              file=sys.stderr)
        sys.exit(2)


def per_call(fn, sync, min_time: float, max_calls: int = 100_000) -> float:
    """Median seconds per call over rounds of repeated calls (after warm-up), the device synchronized."""
    for _ in range(3):
        fn()
    sync()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_time / 5 and calls < max_calls:
        fn()
        calls += 1
    sync()
    per = max((time.perf_counter() - start) / max(calls, 1), 1e-7)
    reps = max(1, int(min_time / 5 / per))
    rounds = []
    for _ in range(5):
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        rounds.append((time.perf_counter() - t0) / reps)
    return float(np.median(rounds))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--install-cupy", action="store_true", help="pip install cupy-cuda12x if it is missing")
    parser.add_argument("--min-time", type=float, default=1.5, help="seconds of timing per measurement")
    parser.add_argument("--big-batch", type=int, default=4096)
    args = parser.parse_args()

    cupy = ensure_cupy(args.install_cupy)
    import lepton_compiler as lc
    from lepton_compiler.backends.nvptx import find_ptxas, run_ptxas

    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        print(f"gpu_check: CuPy sees no GPU ({exc})", file=sys.stderr)
        return 2
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print(f"device: {name}, compute capability {cupy.cuda.Device().compute_capability}, {count} device(s); "
          f"CuPy {cupy.__version__}, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}, "
          f"driver {cupy.cuda.runtime.driverGetVersion()}")

    failures = []
    t0 = time.perf_counter()
    cpu = lc.compile(MODEL)
    t1 = time.perf_counter()
    gpu = lc.compile(MODEL, target="cuda")
    t2 = time.perf_counter()
    print(f"compile: cpu {t1 - t0:.2f} s; cuda {t2 - t1:.2f} s for {gpu.gpu} ({len(gpu.ptx):,} bytes of PTX, "
          f"{len(gpu.gplan.launches)} kernels)")
    ptxas = find_ptxas()
    if ptxas:
        report = run_ptxas(gpu.ptx, gpu.gpu, ptxas)
        print("ptxas: " + "; ".join(line.split("info    : ")[-1] for line in report.splitlines() if "Used" in line))
    for launch in gpu.gplan.launches:
        print(f"  {launch.kernel}: block {launch.block}, grid(1000) {launch.grid_for(1000)}, "
              f"{launch.shared_bytes} B shared")

    # -- agreement ---------------------------------------------------------------------------------------
    x, y = test_images()
    ref = cpu(x)
    out = gpu(x)
    diff = float(np.abs(out - ref).max())
    same = bool((out.argmax(1) == ref.argmax(1)).all())
    acc_gpu, acc_cpu = float((out.argmax(1) == y).mean()), float((ref.argmax(1) == y).mean())
    print(f"1000 images: max |cuda - cpu| = {diff:.2e}, argmax identical: {same}, accuracy cuda {acc_gpu:.3f} "
          f"cpu {acc_cpu:.3f}")
    if not same or diff > TOLERANCE:
        failures.append(f"1000 images: max diff {diff:.2e}, argmax identical {same}")
    ones = np.stack([gpu(x[i:i + 1])[0] for i in range(16)])
    d1 = float(np.abs(ones - ref[:16]).max())
    print(f"batch 1 (16 images one at a time): max |cuda - cpu| = {d1:.2e}")
    if d1 > TOLERANCE:
        failures.append(f"batch 1: max diff {d1:.2e}")
    big = np.ascontiguousarray(np.resize(x, (args.big_batch,) + x.shape[1:]))
    ref_big = cpu(big)
    dev_big = cupy.asarray(big)
    out_big = gpu(dev_big)
    assert isinstance(out_big, cupy.ndarray), type(out_big)
    d_big = float(np.abs(cupy.asnumpy(out_big) - ref_big).max())
    same_big = bool((cupy.asnumpy(out_big).argmax(1) == ref_big.argmax(1)).all())
    print(f"batch {args.big_batch} (CuPy feed, CuPy output): max |cuda - cpu| = {d_big:.2e}, argmax identical: "
          f"{same_big}")
    if not same_big or d_big > TOLERANCE:
        failures.append(f"batch {args.big_batch}: max diff {d_big:.2e}, argmax identical {same_big}")

    # -- PyTorch on the same GPU ----------------------------------------------------------------------------
    rows = []
    try:
        import torch
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        tmodel = torch_model(MODEL, "cuda")
        with torch.no_grad():
            tout = tmodel(torch.from_numpy(x).cuda()).cpu().numpy()
        print(f"torch {torch.__version__} (cuDNN {torch.backends.cudnn.version()}): max |torch - cpu| = "
              f"{np.abs(tout - ref).max():.2e}")
    except Exception as exc:  # report, still time lepton
        print(f"torch unavailable on the GPU: {type(exc).__name__}: {exc}")
        torch = None

    sync = cupy.cuda.Device().synchronize
    for batch in (1, args.big_batch):
        xb = np.ascontiguousarray(big[:batch])
        xd = cupy.asarray(xb)
        row = {"batch": batch}
        row["lepton (device arrays)"] = per_call(lambda: gpu(xd), sync, args.min_time)
        row["lepton (numpy in/out)"] = per_call(lambda: gpu(xb), sync, args.min_time)
        if torch is not None:
            xt = torch.from_numpy(xb).cuda()
            with torch.no_grad():
                row["torch (device tensors)"] = per_call(lambda: tmodel(xt), torch.cuda.synchronize, args.min_time)
                row["torch (numpy in/out)"] = per_call(
                    lambda: tmodel(torch.from_numpy(xb).cuda()).cpu().numpy(), torch.cuda.synchronize, args.min_time)
        row["lepton cpu backend"] = per_call(lambda: cpu(xb), lambda: None, min(args.min_time, 1.0))
        rows.append(row)

    columns = [c for c in rows[0] if c != "batch"]
    print()
    print(f"{'batch':>6} | " + " | ".join(f"{c:>22}" for c in columns))
    print("-" * (9 + 25 * len(columns)))
    for row in rows:
        cells = []
        for c in columns:
            sec = row.get(c)
            cells.append(f"{'-':>22}" if sec is None else
                         f"{sec * 1e6:>10.1f} us {row['batch'] / sec:>8.0f}/s")
        print(f"{row['batch']:>6} | " + " | ".join(cells))
    for row in rows:
        if "torch (device tensors)" in row:
            print(f"batch {row['batch']}: lepton / torch time (device arrays) = "
                  f"{row['lepton (device arrays)'] / row['torch (device tensors)']:.2f}")
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    print("OK: cuda agrees with the cpu backend (argmax identical, max |diff| <= 1e-4)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
