"""``CudaModel``: a model's PTX loaded on an NVIDIA GPU through CuPy (``target="cuda"``).

The same contract as ``CompiledModel``: ``run(output_names, feed)``, ``model(x)``, ``inputs``,
``outputs``, and the same input checks (``ModelSignature``), done before anything reaches the GPU.
Weights are uploaded once, when the model is made. A feed of numpy arrays is uploaded, run and the
outputs come back as numpy arrays; a feed of device arrays (CuPy arrays, or anything with
``__cuda_array_interface__`` or ``__dlpack__`` on the GPU, such as a CUDA ``torch.Tensor``) is used in
place and the outputs stay on the GPU as CuPy arrays.

Kernels are launched in the order of the plan on CuPy's current stream, each with
``(i32 batch, buffer pointers...)``; intermediates live in one device workspace per batch size, laid
out by the memory planner.
"""

from __future__ import annotations

import os
import tempfile
import threading
from typing import Mapping, Optional, Sequence

import numpy as np

from ..backends.llvm.plan import size_in_bytes
from ..errors import InputError, LeptonError, ResourceError
from ..ir import eval_dim
from .signature import ModelSignature

CUPY_HINT = "pip install 'lepton_compiler[cuda]' (CuPy for CUDA 12: cupy-cuda12x)"


def require_cupy():
    """CuPy and a visible CUDA GPU, or a ``LeptonError`` that says which is missing."""
    try:
        import cupy
    except ImportError as exc:
        raise LeptonError(f"target='cuda' needs CuPy, which is not installed ({exc}); {CUPY_HINT}. "
                          "PTX can be generated without it: `lepton compile --target cuda --emit ptx`") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError: no driver, no device
        raise LeptonError(f"target='cuda' needs an NVIDIA GPU and its driver; CuPy found none ({exc})") from None
    if count < 1:
        raise LeptonError("target='cuda' needs an NVIDIA GPU; CuPy sees no CUDA device")
    return cupy


def detect_gpu() -> str:
    """The compute capability of CuPy's current device as ``sm_XY``."""
    cupy = require_cupy()
    return f"sm_{cupy.cuda.Device().compute_capability}"


DLPACK_CUDA = (2, 13)   # kDLCUDA, kDLCUDAManaged


def _is_device_array(x) -> bool:
    """A CuPy array, or another GPU array that CuPy can take without a copy."""
    if isinstance(x, np.ndarray):
        return False
    if hasattr(x, "__cuda_array_interface__"):
        return True
    try:
        return hasattr(x, "__dlpack__") and int(x.__dlpack_device__()[0]) in DLPACK_CUDA
    except Exception:
        return False


def _proxy(shape, dtype) -> np.ndarray:
    """A numpy stand-in with the shape and dtype of a device array, for the shared feed checks (which
    only look at dtype, shape and flags). It owns one element and is never read."""
    one = np.zeros(1, dtype)
    strides, step = [], one.itemsize
    for d in reversed(shape):
        strides.append(step)
        step *= max(int(d), 1)
    return np.lib.stride_tricks.as_strided(one, shape=tuple(shape), strides=tuple(reversed(strides)), writeable=False)


class CudaModel(ModelSignature):
    backend = "cuda"

    def __init__(self, *, inputs, outputs, ptx: str, gpu: str, gplan, model_bytes: bytes = b"",
                 options: Optional[Mapping] = None):
        self._inputs, self._outputs = tuple(inputs), tuple(outputs)
        self.ptx, self.gpu, self.gplan = ptx, gpu, gplan
        self.plan = gplan.plan
        self.batch_symbol = self.plan.batch_symbol
        self.model_bytes = model_bytes
        self.options = dict(options or {})
        self.summary = dict(gplan.summary)
        self._lock = threading.Lock()
        self._cp = cupy = require_cupy()
        self.device = cupy.cuda.Device().id
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.ptx")
            with open(path, "w") as f:
                f.write(ptx)
            try:
                module = cupy.RawModule(path=path)
                self._functions = {launch.kernel: module.get_function(launch.kernel) for launch in gplan.launches}
            except Exception as exc:
                raise LeptonError(f"the CUDA driver did not load the PTX for {gpu}: {type(exc).__name__}: {exc}") \
                    from None
        self._module = module
        try:
            self._constants = [cupy.asarray(np.ascontiguousarray(c)) for c in self.plan.constants]
        except Exception as exc:
            raise ResourceError(f"could not upload the weights to the GPU: {exc}") from None
        self._workspace = None   # (batch, device array)

    def __repr__(self) -> str:
        ins = ", ".join(map(str, self._inputs))
        outs = ", ".join(map(str, self._outputs))
        return f"<CudaModel ({ins}) -> ({outs}) for {self.gpu} on device {self.device}>"

    # -- running -----------------------------------------------------------------------------------
    def _check_batch(self, batch: int) -> None:
        limit = self.gplan.max_batch
        if limit is not None and batch > limit:
            raise InputError(f"{self.batch_symbol}={batch} is too large for the cuda kernels' 32-bit indexing "
                             f"(at most {limit}); run it in smaller batches")

    def run(self, output_names: Optional[Sequence[str]], feed: Mapping) -> list:
        cp = self._cp
        wanted = self._select_outputs(output_names)
        on_device = isinstance(feed, Mapping) and any(_is_device_array(v) for v in feed.values())
        if on_device:
            device_feed = {}
            for name, value in feed.items():
                if _is_device_array(value):
                    value = cp.asarray(value) if hasattr(value, "__cuda_array_interface__") else cp.from_dlpack(value)
                    device_feed[name] = value
            checked = {k: (_proxy(v.shape, v.dtype) if k in device_feed else v) for k, v in feed.items()}
            _, batch = self._check_feed(checked)
            arrays = [cp.ascontiguousarray(device_feed[i.name]) if i.name in device_feed else cp.asarray(feed[i.name])
                      for i in self._inputs]
        else:
            host, batch = self._check_feed(feed)
            arrays = [cp.asarray(a) for a in host]
        with self._lock, cp.cuda.Device(self.device):
            outs = [cp.empty(tuple(eval_dim(d, {self.batch_symbol: batch}) for d in info.shape), info.dtype)
                    for info in self._outputs]
            self._launch(batch, arrays + outs)
        chosen = [outs[i] for i in wanted]
        return chosen if on_device else [cp.asnumpy(o) for o in chosen]

    def _launch(self, batch: int, io: list) -> None:
        cp = self._cp
        per_batch, fixed = self.plan.workspace
        if self._workspace is None or self._workspace[0] != batch:
            self._workspace = None
            self._workspace = (batch, cp.empty(per_batch * batch + fixed + 256, cp.uint8))
        base = self._workspace[1].data.ptr
        base += (-base) % 256

        def address(storage) -> np.uint64:
            if storage.kind == "io":
                return np.uint64(io[storage.index].data.ptr)
            if storage.kind == "const":
                return np.uint64(self._constants[storage.index].data.ptr)
            return np.uint64(base + storage.per_batch * batch + storage.fixed)

        b = np.int32(batch)
        for launch in self.gplan.launches:
            args = (b, *[address(s) for s in launch.args])
            self._functions[launch.kernel](launch.grid_for(batch), launch.block, args)
        for value, slot in self.plan.copies:
            row, batched = size_in_bytes(value)
            nbytes = row * batch if batched else row
            src = address(self.plan.storage[value])
            cp.cuda.runtime.memcpyAsync(int(io[slot].data.ptr), int(src), nbytes,
                                        cp.cuda.runtime.memcpyDeviceToDevice, cp.cuda.get_current_stream().ptr)

    def save(self, path) -> None:
        raise LeptonError("a target='cuda' model cannot be saved in this version; keep the ONNX file, or write the "
                          "PTX with `lepton compile --target cuda --emit ptx`")
