"""Runs a model's GPU kernels on the CPU: the host build of the same kernels, the same launch plan.

``HostEmulator(graph)`` compiles ``module.host_module`` (every kernel as a host driver that runs its grid,
block by block and phase by phase, see ``kernel.emit_host``) for this CPU, links it as the cpu backend
links its code (``LinkedObject``), and then executes the launch plan exactly as the CUDA runtime (``runtime/cuda_model.py``) does: one workspace
laid out by the plan, weights in their constant slots, each launch's buffers at their planned offsets,
its grid computed from the batch, and the plan's output copies. It is for tests (without a GPU):
it shows the kernels compute the model, not how fast a GPU does.
"""

from __future__ import annotations

import ctypes

import llvmlite.binding as llvm
import numpy as np

from ...errors import InputError
from ...ir import Graph, eval_dim
from ..llvm.compiler import LinkedObject, _lock
from ..llvm.plan import size_in_bytes
from .module import GpuPlan, host_module, plan_gpu
from .target import initialize, optimize


class HostEmulator:
    def __init__(self, graph: Graph, gplan: GpuPlan | None = None, opt: bool = True):
        initialize()
        self.graph = graph
        self.gplan = gplan or plan_gpu(graph)
        self.plan = self.gplan.plan
        self.llvm_ir = str(host_module(self.gplan))
        with _lock:
            module = llvm.parse_assembly(self.llvm_ir)
            module.verify()
            target = llvm.Target.from_default_triple()
            tm = target.create_target_machine(cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features()
                                              .flatten(), opt=3 if opt else 0)
            module.triple = llvm.get_process_triple()
            module.data_layout = str(tm.target_data)
            if opt:
                optimize(module, tm)
            obj = tm.emit_object(module)
        self._linked = LinkedObject(obj, tm, [spec.name for spec in self.gplan.specs])
        self._fns = {}
        for spec in self.gplan.specs:
            argtypes = [ctypes.c_int32] * 4 + [ctypes.c_void_p] * len(spec.buffers)
            self._fns[spec.name] = ctypes.CFUNCTYPE(None, *argtypes)(self._linked.addresses[spec.name])
        self.constants = [np.require(c, requirements="CA") for c in self.plan.constants]

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        graph, plan = self.graph, self.plan
        arrays = [np.ascontiguousarray(x, dtype=np.float32) for x in inputs]
        sizes = {}
        for value, array in zip(graph.inputs, arrays):
            if array.ndim != len(value.type.shape):
                raise InputError(f"input '{value.name}' has rank {array.ndim}, expected {len(value.type.shape)}")
            for want, got in zip(value.type.shape, array.shape):
                if isinstance(want, str):
                    sizes[want] = got
        batch = sizes.get(plan.batch_symbol, 1)
        outs = [np.empty([eval_dim(d, {plan.batch_symbol: batch}) for d in v.type.shape], np.float32)
                for v in graph.outputs]
        io = arrays + outs
        per_batch, fixed = plan.workspace
        workspace = np.zeros(per_batch * batch + fixed + 64, np.uint8)
        base = workspace.ctypes.data + (-workspace.ctypes.data) % 64

        def address(storage) -> int:
            if storage.kind == "io":
                return io[storage.index].ctypes.data
            if storage.kind == "const":
                return self.constants[storage.index].ctypes.data
            return base + storage.per_batch * batch + storage.fixed

        for launch in self.gplan.launches:
            gx, gy, gz = launch.grid_for(batch)
            self._fns[launch.kernel](batch, gx, gy, gz, *[address(s) for s in launch.args])
        for value, slot in plan.copies:
            row, batched = size_in_bytes(value)
            ctypes.memmove(io[slot].ctypes.data, address(plan.storage[value]), row * batch if batched else row)
        return outs
