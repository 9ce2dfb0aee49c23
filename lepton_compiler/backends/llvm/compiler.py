"""LLVM IR text -> optimized module -> object code, and object code -> callable entry point."""

from __future__ import annotations

import ctypes
import itertools
import threading
from dataclasses import dataclass
from typing import Sequence

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


def run_o3(module: "llvm.ModuleRef", tm: "llvm.TargetMachine", vectorize: bool = True) -> None:
    """LLVM's O3 module pipeline for ``tm``, with loop unrolling and (unless told not to) the loop
    and SLP vectorizers."""
    options = llvm.create_pipeline_tuning_options(speed_level=3)
    options.loop_vectorization = vectorize
    options.slp_vectorization = vectorize
    options.loop_unrolling = True
    builder = llvm.create_pass_builder(tm, options)
    builder.getModulePassManager().run(module, builder)


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
        run_o3(module, tm)
        return NativeCode(target, str(module), tm.emit_object(module), entry)


EntryFn = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                           ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p)
"""``lepton_main(batch, io, consts, workspace, threads, omp, timings)``; see module.py."""


_library_names = itertools.count()


class LinkedObject:
    """Object code linked into this process by ORC's LLJIT with JITLink; ``addresses`` maps each
    exported symbol to its address. Keep the object alive while its code may run.

    Not MCJIT: its RuntimeDyld maps code and read-only data (constant pools, .eh_frame) separately,
    and where a large mapping lies between them (a Ray worker maps the object store) the 32-bit
    PC-relative references from one to the other overflow and LLVM aborts the process. JITLink
    places all sections of the object in one allocation.
    """

    def __init__(self, obj: bytes, tm: "llvm.TargetMachine", symbols: Sequence[str]):
        with _lock:
            self._jit = llvm.create_lljit_compiler(tm, use_jit_link=True)
            try:
                builder = llvm.JITLibraryBuilder().add_object_img(obj).add_current_process()
                for name in symbols:
                    builder = builder.export_symbol(name)
                self._library = builder.link(self._jit, f"lepton{next(_library_names)}")
                self.addresses = {name: self._library[name] for name in symbols}
            except (RuntimeError, KeyError) as exc:
                raise LeptonError(f"object code cannot be linked (symbols {list(symbols)}): {exc}") from None
        missing = [name for name, address in self.addresses.items() if not address]
        if missing:
            raise LeptonError(f"object code has no {', '.join(repr(m) for m in missing)}")

    def __del__(self):
        self.__dict__.pop("_library", None)  # unload the library while its JIT still exists


class LoadedCode:
    """A model's object code linked into this process; ``entry`` calls ``lepton_main``."""

    def __init__(self, obj: bytes, target: Target, entry: str = ENTRY):
        initialize()
        self._linked = LinkedObject(obj, target_machine(target), [entry])
        self.address = self._linked.addresses[entry]
        self.entry = EntryFn(self.address)
