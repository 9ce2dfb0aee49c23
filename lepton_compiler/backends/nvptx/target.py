"""The NVPTX target: GPU architecture names, LLVM IR -> optimized module -> PTX text, ``ptxas``.

PTX is emitted by LLVM's NVPTX back end (part of the LLVM that llvmlite ships) for the triple
``nvptx64-nvidia-cuda`` and a compute capability (``sm_90`` for an H100). LLVM chooses the lowest
PTX ISA version that the architecture needs, so the PTX loads on the oldest driver that knows the GPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from typing import Optional

import llvmlite.binding as llvm

from ...errors import LeptonError
from ..llvm.compiler import _lock, run_o3  # _lock: LLVM's global state, one thread at a time, shared with the cpu backend
from ..llvm.target import initialize as initialize_llvm

TRIPLE = "nvptx64-nvidia-cuda"
DEFAULT_GPU = "sm_90"


def initialize() -> None:
    """Register every target LLVM was built with (NVPTX among them) and their assembly printers."""
    initialize_llvm(all_targets=True)


def normalize_gpu(gpu) -> str:
    """``"sm_90"``, ``"90"``, ``"9.0"``, ``(9, 0)`` or ``"sm_90a"`` -> ``"sm_90"`` / ``"sm_90a"``."""
    if isinstance(gpu, (tuple, list)) and len(gpu) == 2:
        gpu = f"{int(gpu[0])}{int(gpu[1])}"
    text = str(gpu).strip().lower()
    match = re.fullmatch(r"(?:sm_?|compute_?)?(\d+)(?:\.(\d))?([a-z]?)", text)
    if not match:
        raise LeptonError(f"unknown GPU architecture {gpu!r}; give a compute capability such as 'sm_90' (H100), "
                          "'sm_80' (A100) or 'sm_89' (L4)")
    major_minor = match.group(1) + (match.group(2) or "")
    if int(major_minor) < 50:
        raise LeptonError(f"GPU architecture sm_{major_minor} is older than the oldest the NVPTX target here supports "
                          "(sm_50)")
    name = f"sm_{major_minor}{match.group(3)}"
    if name not in supported_gpus():
        raise LeptonError(f"LLVM's NVPTX target does not know GPU architecture {name!r}; known: "
                          + ", ".join(sorted(supported_gpus(), key=_gpu_order)))
    return name


def _gpu_order(name: str):
    digits = re.sub(r"\D", "", name)
    return (int(digits or 0), name)


KNOWN_GPUS = frozenset({
    "sm_50", "sm_52", "sm_53", "sm_60", "sm_61", "sm_62", "sm_70", "sm_72", "sm_75", "sm_80", "sm_86", "sm_87",
    "sm_88", "sm_89", "sm_90", "sm_90a", "sm_100", "sm_100a", "sm_101", "sm_101a", "sm_103", "sm_103a", "sm_110",
    "sm_110a", "sm_120", "sm_120a", "sm_121", "sm_121a"})
"""The architectures LLVM 22's NVPTX target accepts (each checked to create a target machine without
LLVM's "not a recognized processor" warning; LLVM only warns, so the list is kept here)."""


def supported_gpus() -> frozenset:
    return KNOWN_GPUS


def target_machine(gpu: str):
    initialize()
    return llvm.Target.from_triple(TRIPLE).create_target_machine(cpu=gpu, features="", opt=3)


def data_layout(gpu: str = DEFAULT_GPU) -> str:
    return str(target_machine(gpu).target_data)


def optimize(module, tm) -> None:
    """LLVM's O3 pipeline for ``tm`` (unrolls the kernels' short constant loops, promotes the
    per-thread accumulators to registers)."""
    run_o3(module, tm, vectorize=False)


def emit_ptx(llvm_ir: str, gpu: str = DEFAULT_GPU) -> str:
    """Verify, optimize and emit PTX for ``gpu`` from the text of an NVPTX LLVM module."""
    initialize()
    with _lock:
        try:
            module = llvm.parse_assembly(llvm_ir)
            module.verify()
        except RuntimeError as exc:
            raise LeptonError(f"internal error: generated NVPTX IR is invalid: {exc}") from None
        tm = target_machine(gpu)
        module.triple = TRIPLE
        module.data_layout = str(tm.target_data)
        optimize(module, tm)
        return tm.emit_assembly(module)


# -- ptxas -----------------------------------------------------------------------------------------
def find_ptxas() -> Optional[str]:
    """``ptxas`` from ``$PTXAS``, the PATH, ``$CUDA_HOME/bin`` or the ``nvidia-cuda-nvcc-cu12`` wheel; else None."""
    candidates = [os.environ.get("PTXAS"), shutil.which("ptxas")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            candidates.append(os.path.join(home, "bin", "ptxas"))
    try:
        import nvidia.cuda_nvcc as wheel  # the nvidia-cuda-nvcc-cu12 wheel (a namespace package)
        for root in getattr(wheel, "__path__", []):
            candidates.append(os.path.join(root, "bin", "ptxas"))
    except ImportError:
        pass
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def run_ptxas(ptx: str, gpu: str = DEFAULT_GPU, ptxas: Optional[str] = None) -> str:
    """Assemble ``ptx`` for ``gpu`` with ``ptxas -v``; returns its report (registers, shared memory per
    kernel). A ``LeptonError`` with ptxas's messages when the PTX does not assemble."""
    ptxas = ptxas or find_ptxas()
    if ptxas is None:
        raise LeptonError("ptxas was not found (install the CUDA toolkit or `pip install nvidia-cuda-nvcc-cu12`, "
                          "or set $PTXAS)")
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "model.ptx"), os.path.join(tmp, "model.cubin")
        with open(src, "w") as f:
            f.write(ptx)
        done = subprocess.run([ptxas, f"-arch={gpu}", "-v", src, "-o", out], capture_output=True, text=True,
                              timeout=300)
    if done.returncode != 0:
        raise LeptonError(f"ptxas rejected the PTX:\n{done.stderr.strip() or done.stdout.strip()}")
    return done.stderr + done.stdout
