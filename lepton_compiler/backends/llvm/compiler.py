"""LLVM IR text -> optimized module -> object code, and object code -> callable entry point."""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import llvmlite.binding as llvm

from ...errors import LeptonError
from .module import ENTRY
from .target import Target, initialize, target_machine

_lock = threading.Lock()  # LLVM's global state is not safe to drive from two threads at once


@dataclass
class NativeCode:
    """The result of compiling one model's module for one target."""

    target: Target
    llvm_ir: str      # optimized
    obj: bytes
    entry: str = ENTRY  # the entry point's symbol

    def assembly(self) -> str:
        with _lock:
            module = llvm.parse_assembly(self.llvm_ir)
            return target_machine(self.target).emit_assembly(module)


def compile_ir(llvm_ir: str, target: Target, entry: str = ENTRY) -> NativeCode:
    """Verify, optimize at O3 for ``target`` and emit object code; ``entry`` is the entry point's name."""
    initialize()
    with _lock:
        try:
            module = llvm.parse_assembly(llvm_ir)
            module.verify()
        except RuntimeError as exc:  # a lowering bug, not a user error; say so plainly
            raise LeptonError(f"internal error: generated LLVM IR is invalid: {exc}") from None
        if entry not in {f.name for f in module.functions if not f.is_declaration}:
            raise LeptonError(f"internal error: the module defines no entry point '{entry}'")
        module.triple = target.triple
        tm = target_machine(target)
        module.data_layout = str(tm.target_data)
        options = llvm.create_pipeline_tuning_options(speed_level=3)
        options.loop_vectorization = True
        options.slp_vectorization = True
        options.loop_unrolling = True
        builder = llvm.create_pass_builder(tm, options)
        builder.getModulePassManager().run(module, builder)
        return NativeCode(target, str(module), tm.emit_object(module), entry)


EntryFn = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                           ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p)
"""``lepton_main(batch, io, consts, workspace, threads, omp, timings)``; see module.py."""


class LoadedCode:
    """Object code linked into this process by MCJIT; ``entry`` calls ``lepton_main``."""

    def __init__(self, obj: bytes, target: Target, entry: str = ENTRY):
        initialize()
        with _lock:
            host = llvm.parse_assembly("")
            host.triple = target.triple
            self._engine = llvm.create_mcjit_compiler(host, target_machine(target))
            self._engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
            self._engine.finalize_object()
            address = self._engine.get_function_address(entry)
        if not address:
            raise LeptonError(f"object code has no '{entry}' entry point")
        self.address = address
        self.entry = EntryFn(address)
