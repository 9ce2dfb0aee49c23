"""Builds the LLVM module of a model: one function per kernel and one entry point.

The entry point is ``void lepton_main(i64 batch, i8** io, i8** consts, i8* workspace)``:
``io`` holds the input then output buffers, ``consts`` the constants, and the
workspace is one block of ``per_batch * batch + fixed`` bytes for intermediates.
"""

from __future__ import annotations

from llvmlite import ir

from ...errors import UnsupportedOpError
from ...ir import Graph, Value
from ...ops import REGISTRY
from . import conv, dense, elementwise, layout, softmax  # noqa: F401  (register lowerings)
from .codegen import I8, I64, LLVM_TYPES, VOID, KernelBuilder, _ident
from .plan import Plan, Storage, make_plan, size_in_bytes
from .registry import LOWERINGS, NotLowerable
from .target import Target

ENTRY = "lepton_main"


def build_module(graph: Graph, target: Target) -> tuple[ir.Module, Plan]:
    plan = make_plan(graph)
    module = ir.Module(name=graph.name)
    module.triple = target.triple
    lanes = target.vector_bits() // 32
    i8pp = I8.as_pointer().as_pointer()
    entry_fn = ir.Function(module, ir.FunctionType(VOID, [I64, i8pp, i8pp, I8.as_pointer()]), ENTRY)
    batch, io, consts, workspace = entry_fn.args
    for arg, name in zip(entry_fn.args, ("batch", "io", "consts", "workspace")):
        arg.name = name
    b = ir.IRBuilder(entry_fn.append_basic_block("entry"))

    def address(storage: Storage) -> ir.Value:
        if storage.kind == "workspace":
            offset = b.add(b.mul(batch, ir.Constant(I64, storage.per_batch)), ir.Constant(I64, storage.fixed))
            return b.gep(workspace, [offset])
        table = io if storage.kind == "io" else consts
        return b.load(b.gep(table, [ir.Constant(I64, storage.index)]))

    def typed(value: Value) -> ir.Value:
        return b.bitcast(address(plan.storage[value]), LLVM_TYPES[value.type.dtype].as_pointer())

    def add_constant(name, array):
        return plan.add_constant(name, array).index

    used_by_kernels: set[Value] = set()
    for index, node in enumerate(plan.kernels):
        static = REGISTRY[node.op].static_inputs
        buffers: list[Value] = []
        for i, v in enumerate(node.inputs):
            if v is not None and i not in static and v not in buffers:
                buffers.append(v)
        buffers += [v for v in node.outputs if v in plan.storage]
        kernel = KernelBuilder(module, f"k{index}_{_ident(node.op)}_{_ident(node.name)}", buffers, add_constant,
                               lanes=lanes, registers=target.vector_registers(), batch_symbol=plan.batch_symbol)
        try:
            LOWERINGS[node.op](kernel, node)
        except NotLowerable as exc:
            raise UnsupportedOpError([(node.op, node.name, node.domain, graph.opset)], str(exc)) from None
        kernel.finish()
        used_by_kernels |= kernel.used
        plan.batch_rules += [(allowed, f"node '{node.name}' ({node.op}): {why}") for allowed, why in kernel.batch_rules]
        b.call(kernel.fn, [batch, consts] + [typed(v) for v in buffers])

    used = {v for v, _ in plan.copies} | used_by_kernels
    for value, storage in plan.storage.items():
        if storage.kind == "const" and value not in used:
            plan.drop_constant(storage.index)  # only its repacked form is read
    memcpy = module.declare_intrinsic("llvm.memcpy", [I8.as_pointer(), I8.as_pointer(), I64])
    for value, slot in plan.copies:
        row, batched = size_in_bytes(value)
        size = b.mul(batch, ir.Constant(I64, row)) if batched else ir.Constant(I64, row)
        dst = b.load(b.gep(io, [ir.Constant(I64, slot)]))
        b.call(memcpy, [dst, address(plan.storage[value]), size, ir.Constant(ir.IntType(1), 0)])
    b.ret_void()
    return module, plan
