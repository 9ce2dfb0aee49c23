"""``CompiledModel``: native code, its constants and its signature; validates and runs inputs."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from ..backends.llvm.compiler import LoadedCode, NativeCode
from ..backends.llvm.module import OMP_FUNCTIONS
from ..backends.llvm.target import check_runnable
from ..errors import InputError, ResourceError
from ..ir import Dim, eval_dim
from .signature import ModelSignature

WORKSPACE_ALIGN = 64
GOMP_SPINCOUNT = 0
_omp_lock = threading.Lock()
_omp_table = None


def resolve_threads(threads: Optional[int]) -> int:
    if threads is not None:
        return int(threads)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def parallel_runtime():
    """libgomp's functions for generated code (see backends/llvm/module.py), or None when
    libgomp is not installed: the kernels then run on the calling thread."""
    global _omp_table
    with _omp_lock:
        if _omp_table is None:
            if "OMP_WAIT_POLICY" not in os.environ:
                # libgomp's default spin (300,000 rounds) makes a waiting thread hold its core:
                # on a busy machine the thread that still has work then waits for a time slice,
                # and a 25 µs run takes milliseconds. Waiting threads sleep instead; kernels
                # are only split when they have enough work to cover the wake-up
                # (backends/llvm/module.py, PARALLEL_MIN_WORK).
                os.environ.setdefault("GOMP_SPINCOUNT", str(GOMP_SPINCOUNT))
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("gomp") or "libgomp.so.1")
                addresses = [ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in OMP_FUNCTIONS]
                _omp_table = (lib, (ctypes.c_void_p * len(addresses))(*addresses))
            except (OSError, AttributeError):
                _omp_table = (None, None)
        return _omp_table[1]


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output: name, numpy dtype name, shape (symbolic dims as strings)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: dict) -> "TensorInfo":
        shape = tuple(d if isinstance(d, str) else int(d) for d in data["shape"])
        return cls(str(data["name"]), str(np.dtype(data["dtype"])), shape)

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype}[{', '.join(map(str, self.shape))}]"


def _address(array: np.ndarray) -> int:
    """The address of a contiguous array's data. ``ctypes.c_char.from_buffer`` takes a third of the
    time of ``array.ctypes.data`` (a microsecond a call, which counts in a 13 µs run) but needs a
    writable buffer; read-only inputs take the slow way."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(array))
    except (TypeError, ValueError):
        return array.ctypes.data


class CompiledModel(ModelSignature):
    """A model compiled to native code. Safe to ``run`` from several threads at once."""

    backend = "cpu"

    def __init__(self, *, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], native: NativeCode,
                 constants: Sequence[np.ndarray], constant_names: Sequence[str], workspace: tuple[int, int],
                 batch_symbol: Optional[str], model_bytes: bytes, options: Mapping,
                 summary: Optional[Mapping] = None):
        self._inputs = tuple(inputs)
        self._outputs = tuple(outputs)
        self.native = native
        self.constants = [np.require(c, requirements="CA") for c in constants]
        self.constant_names = list(constant_names)
        self.workspace = tuple(workspace)
        self.batch_symbol = batch_symbol
        self.model_bytes = model_bytes
        self.options = dict(options)
        self.summary = dict(summary or {})
        self.threads = resolve_threads(self.options.get("threads"))
        """Threads the kernels may use (``threads=`` at compile time; None means every core)."""
        """Kernels and workspace bytes as planned at compile time (see ``api.compile_summary``)."""
        self._const_table = (ctypes.c_void_p * max(1, len(self.constants)))(
            *[c.ctypes.data for c in self.constants])
        self._loaded: Optional[LoadedCode] = None
        self._scratch = threading.local()
        self._load_lock = threading.Lock()

    # -- description (inputs, outputs: see ModelSignature) ---------------------------------------
    @property
    def target(self):
        return self.native.target

    @property
    def llvm_ir(self) -> str:
        """The optimized LLVM IR of the model."""
        return self.native.llvm_ir

    def assembly(self) -> str:
        return self.native.assembly()

    def __repr__(self) -> str:
        ins = ", ".join(map(str, self._inputs))
        outs = ", ".join(map(str, self._outputs))
        return f"<CompiledModel ({ins}) -> ({outs}) for {self.target.cpu}>"

    # -- running -------------------------------------------------------------------------------
    def _entry(self):
        with self._load_lock:
            if self._loaded is None:
                check_runnable(self.target)
                self._loaded = LoadedCode(self.native.obj, self.target, self.native.entry)
            return self._loaded.entry

    def run(self, output_names: Optional[Sequence[str]], feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """ONNX Runtime's signature: ``run(None, {"input": x})`` returns every output as a list."""
        return self._run(output_names, feed, None)

    def run_profiled(self, feed: Mapping[str, np.ndarray], repeats: int = 1) -> tuple[list[np.ndarray], list[float]]:
        """Run ``repeats`` times with the kernels timed; returns the outputs and the mean
        seconds per run spent in each kernel (in the order of ``summary["kernels"]``)."""
        timings = np.zeros(max(1, len(self.summary.get("kernels", []))), np.int64)
        for _ in range(repeats):
            outs = self._run(None, feed, timings.ctypes.data)
        return outs, [float(t) / repeats * 1e-9 for t in timings[: len(self.summary.get("kernels", []))]]

    def _run(self, output_names, feed, timings) -> list[np.ndarray]:
        wanted = self._select_outputs(output_names)
        arrays, batch = self._check_feed(feed)
        try:
            outs = [np.empty(shape, dtype) for shape, dtype in self._output_layouts(batch)]
            base = self._workspace_for(batch)
        except MemoryError:
            per_batch, fixed, _ = self._memory_rule()
            raise ResourceError(f"out of memory: {self.batch_symbol or 'the batch'}={batch} needs "
                                f"{per_batch * batch + fixed:,} bytes; run it in smaller batches, or set "
                                "max_memory to what this machine can spare") from None
        io = (ctypes.c_void_p * (len(arrays) + len(outs)))(*map(_address, arrays + outs))
        omp = parallel_runtime() if self.threads > 1 else None
        self._entry()(batch, io, self._const_table, base, self.threads, omp, timings)
        return [outs[i] for i in wanted]

    def _output_layouts(self, batch: int) -> list[tuple[tuple[int, ...], np.dtype]]:
        """Output shapes and dtypes for a batch size (the last one is cached)."""
        cached = self.__dict__.get("_last_layouts")
        if cached is None or cached[0] != batch:
            layouts = [(self._concrete(info.shape, batch), np.dtype(info.dtype)) for info in self._outputs]
            cached = self._last_layouts = (batch, layouts)
        return cached[1]

    def _workspace_for(self, batch: int) -> int:
        """An aligned workspace address, kept per thread for the last batch size it ran
        (concurrent calls never share one; a new array per call would cost more than the
        smallest models take to run)."""
        cached = getattr(self._scratch, "workspace", None)
        if cached is None or cached[0] != batch:
            per_batch, fixed = self.workspace
            raw = np.empty(per_batch * batch + fixed + WORKSPACE_ALIGN, np.uint8)
            base = raw.ctypes.data
            cached = self._scratch.workspace = (batch, raw, base + (-base) % WORKSPACE_ALIGN)
        return cached[2]

    def _run_bytes(self) -> tuple[int, int]:
        """Weights, workspace and outputs of one run, as ``(per_batch, fixed)`` bytes (see ModelSignature)."""
        out_per_batch, out_fixed = super()._run_bytes()
        weights = sum(int(c.nbytes) for c in self.constants)
        per_batch, fixed = self.workspace
        return per_batch + out_per_batch, fixed + WORKSPACE_ALIGN + out_fixed + weights

    def _check_batch(self, batch: int) -> None:
        """The batch sizes the generated kernels allow (``_check_feed`` of ModelSignature does the rest)."""
        for allowed, reason in self.summary.get("batch_rules", []):
            if batch not in allowed:
                raise InputError(f"{self.batch_symbol}={batch} is not valid for this model: {reason} "
                                 f"({self.batch_symbol} must be one of {', '.join(map(str, allowed))})")

    def _concrete(self, shape, batch: int) -> tuple[int, ...]:
        return tuple(eval_dim(d, {self.batch_symbol: batch}) for d in shape)

    # -- saving --------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the artifact (native object, weights, manifest) atomically to ``path``."""
        from .artifact import save
        save(self, path)
