"""The code-generation target: triple, CPU and features, and whether this host can run it."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache

import llvmlite.binding as llvm

from ...errors import ArtifactError, LeptonError

_init_lock = threading.Lock()
_probe_lock = threading.Lock()
_initialized = False
_all_initialized = False

# Features implied by the generic x86-64 levels, so artifacts built for them can be checked.
X86_LEVELS = {
    "x86-64": {"sse", "sse2"},
    "x86-64-v2": {"sse", "sse2", "sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "cx16"},
    "x86-64-v3": {"sse", "sse2", "sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "cx16",
                  "avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave"},
    "x86-64-v4": {"sse", "sse2", "sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "cx16",
                  "avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave",
                  "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
}


def initialize(all_targets: bool = False) -> None:
    """Register this host's LLVM target (and, with ``all_targets``, every target LLVM was built with,
    NVPTX among them, for the cuda backend) with its assembly printer."""
    global _initialized, _all_initialized
    with _init_lock:
        if not _initialized:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            llvm.initialize_native_asmparser()
            _initialized = True
        if all_targets and not _all_initialized:
            llvm.initialize_all_targets()
            llvm.initialize_all_asmprinters()
            _all_initialized = True


@dataclass(frozen=True)
class Target:
    """What code is generated for. ``features`` are the enabled ('+') LLVM feature names."""

    triple: str
    cpu: str
    features: tuple[str, ...]

    @property
    def feature_string(self) -> str:
        return ",".join("+" + f for f in self.features)

    def vector_bits(self) -> int:
        """Width of the widest float vector registers the target has."""
        f = set(self.features)
        if "avx512f" in f:
            return 512
        if "avx" in f:
            return 256
        if f & {"sse", "neon", "sse2"} or self.triple.startswith("aarch64"):
            return 128
        return 0

    def int8_path(self) -> tuple[str, int]:
        """The int8 dot-product instructions of the target and their width in bits:
        ``("vnni", 512)`` (AVX512-VNNI), ``("vnni", 256)`` (AVX-VNNI or AVX512-VNNI with VL),
        ``("pmaddwd", 512 | 256)`` (AVX512BW / AVX2) or ``("portable", bits)``. A named CPU
        other than the host and the x86-64 levels has no known features here: portable."""
        f = set(self.features)
        if {"avx512vnni", "avx512bw"} <= f:
            return "vnni", 512
        if "avxvnni" in f or {"avx512vnni", "avx512vl"} <= f:
            return "vnni", 256
        if "avx512bw" in f:
            return "pmaddwd", 512
        if "avx2" in f:
            return "pmaddwd", 256
        return "portable", max(self.vector_bits(), 128)

    def vector_registers(self) -> int:
        return 32 if "avx512f" in self.features or self.triple.startswith("aarch64") else 16

    def to_json(self) -> dict:
        return {"triple": self.triple, "cpu": self.cpu, "features": list(self.features)}

    @classmethod
    def from_json(cls, data: dict) -> "Target":
        return cls(str(data["triple"]), str(data["cpu"]), tuple(str(f) for f in data["features"]))


@lru_cache(maxsize=None)
def host_target() -> Target:
    initialize()
    features = llvm.get_host_cpu_features()
    enabled = tuple(sorted(name for name, on in features.items() if on))
    return Target(llvm.get_process_triple(), llvm.get_host_cpu_name(), enabled)


def named_target(cpu: str) -> Target:
    """The host triple with a named CPU (``--mcpu``) and that CPU's default features."""
    initialize()
    host = host_target()
    if cpu in ("native", host.cpu):
        return host
    if not _is_known_cpu(host.triple, cpu):
        raise LeptonError(f"unknown CPU '{cpu}' for {host.triple}")
    features = tuple(sorted(X86_LEVELS.get(cpu, ())))
    return Target(host.triple, cpu, features)


@lru_cache(maxsize=None)
def _is_known_cpu(triple: str, cpu: str) -> bool:
    """LLVM only warns on stderr about an unknown CPU name (and then codes for a generic one);
    capture that warning to turn it into an error. File descriptor 2 is process-wide: one thread at
    a time (two interleaved captures would leave stderr pointing at a deleted temporary file)."""
    import os
    import tempfile

    with _probe_lock, tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        try:
            os.dup2(capture.fileno(), 2)
            llvm.Target.from_triple(triple).create_target_machine(cpu=cpu, features="")
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        return b"not a recognized processor" not in capture.read()


def check_runnable(target: Target) -> None:
    """Raise ``ArtifactError`` unless code for ``target`` can run on this host."""
    host = host_target()
    if target.triple.split("-")[0] != host.triple.split("-")[0]:
        raise ArtifactError(f"code built for {target.triple} cannot run on this {host.triple} host")
    if target.cpu in (host.cpu, "generic") or target.cpu in X86_LEVELS:
        missing = sorted(set(target.features) - set(host.features))
        if missing:
            raise ArtifactError(f"code built for CPU '{target.cpu}' needs features this host "
                                f"('{host.cpu}') lacks: {', '.join(missing)}; recompile it here")
        return
    raise ArtifactError(f"code built for CPU '{target.cpu}' cannot be verified to run on this host "
                        f"('{host.cpu}'); recompile it here or build for a generic level such as x86-64-v3")


def target_machine(target: Target):
    """An LLVM target machine for ``target``; named CPUs keep their own default features."""
    initialize()
    features = target.feature_string if target.cpu == host_target().cpu else ""
    return llvm.Target.from_triple(target.triple).create_target_machine(
        cpu=target.cpu, features=features, opt=3, reloc="pic", codemodel="small")
