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
from ..errors import InputError
from ..ir import Dim, eval_dim

WORKSPACE_ALIGN = 64
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


def _shape_str(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


class CompiledModel:
    """A model compiled to native code. Safe to ``run`` from several threads at once."""

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
        self._load_lock = threading.Lock()

    # -- description ---------------------------------------------------------------------------
    @property
    def inputs(self) -> list[TensorInfo]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[TensorInfo]:
        return list(self._outputs)

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
                self._loaded = LoadedCode(self.native.obj, self.target)
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
        outs = [np.empty(self._concrete(info.shape, batch), info.dtype) for info in self._outputs]
        per_batch, fixed = self.workspace
        raw = np.empty(per_batch * batch + fixed + WORKSPACE_ALIGN, np.uint8)
        base = raw.ctypes.data
        base += (-base) % WORKSPACE_ALIGN
        io = (ctypes.c_void_p * (len(arrays) + len(outs)))(*[a.ctypes.data for a in arrays + outs])
        omp = parallel_runtime() if self.threads > 1 else None
        self._entry()(batch, io, self._const_table, base, self.threads, omp, timings)
        return [outs[i] for i in wanted]

    def __call__(self, *args: np.ndarray, **kwargs: np.ndarray):
        """``model(x)`` or ``model(input=x)``: one output as an array, several as a list."""
        if len(args) > len(self._inputs):
            raise InputError(f"the model takes {len(self._inputs)} inputs, got {len(args)}")
        feed = {info.name: a for info, a in zip(self._inputs, args)}
        for name, value in kwargs.items():
            if name in feed:
                raise InputError(f"input '{name}' is given twice")
            feed[name] = value
        outs = self.run(None, feed)
        return outs[0] if len(outs) == 1 else outs

    def _select_outputs(self, names: Optional[Sequence[str]]) -> list[int]:
        if names is None:
            return list(range(len(self._outputs)))
        if isinstance(names, str):
            raise InputError("output_names must be a list of names or None")
        index = {info.name: i for i, info in enumerate(self._outputs)}
        unknown = [n for n in names if n not in index]
        if unknown:
            raise InputError(f"unknown output '{unknown[0]}'; the model's outputs are: "
                             + ", ".join(info.name for info in self._outputs))
        return [index[n] for n in names]

    def _check_feed(self, feed: Mapping[str, np.ndarray]) -> tuple[list[np.ndarray], int]:
        """Validate every input before native code sees it; return contiguous arrays and the batch."""
        if not isinstance(feed, Mapping):
            raise InputError(f"feed must be a dict of input name -> numpy array, got {type(feed).__name__}")
        names = [info.name for info in self._inputs]
        extra = [k for k in feed if k not in names]
        if extra:
            raise InputError(f"unknown input '{extra[0]}'; the model's inputs are: {', '.join(names)}")
        missing = [n for n in names if n not in feed]
        if missing:
            raise InputError(f"missing input '{missing[0]}'; the model's inputs are: {', '.join(names)}")
        batch: Optional[int] = None
        arrays = []
        for info in self._inputs:
            array = feed[info.name]
            if not isinstance(array, np.ndarray):
                raise InputError(f"input '{info.name}' must be a numpy array, got {type(array).__name__}")
            if array.dtype != np.dtype(info.dtype):
                raise InputError(f"input '{info.name}' has dtype {array.dtype}; the model expects {info.dtype}")
            if array.ndim != len(info.shape):
                raise InputError(f"input '{info.name}' has shape {_shape_str(array.shape)} (rank {array.ndim}); "
                                 f"the model expects rank {len(info.shape)}: {_shape_str(info.shape)}")
            for axis, (want, got) in enumerate(zip(info.shape, array.shape)):
                if isinstance(want, str):
                    if got < 1:
                        raise InputError(f"input '{info.name}' has {want}={got} in dim {axis}; it must be at least 1")
                    if batch is not None and got != batch:
                        raise InputError(f"input '{info.name}' has {want}={got} in dim {axis}, but another "
                                         f"input has {want}={batch}")
                    batch = got
                elif want != got:
                    raise InputError(f"input '{info.name}' has shape {_shape_str(array.shape)}; dim {axis} must be "
                                     f"{want} (the model expects {_shape_str(info.shape)})")
            arrays.append(np.require(array, requirements="CA"))
        batch = batch if batch is not None else 1
        for allowed, reason in self.summary.get("batch_rules", []):
            if batch not in allowed:
                raise InputError(f"{self.batch_symbol}={batch} is not valid for this model: {reason} "
                                 f"({self.batch_symbol} must be one of {', '.join(map(str, allowed))})")
        return arrays, batch

    def _concrete(self, shape, batch: int) -> tuple[int, ...]:
        return tuple(eval_dim(d, {self.batch_symbol: batch}) for d in shape)

    # -- saving --------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the artifact (native object, weights, manifest) atomically to ``path``."""
        from .artifact import save
        save(self, path)
