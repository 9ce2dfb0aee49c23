"""Builds the LLVM module of a model: one function per kernel and one entry point.

The entry point is::

    void lepton_main(i64 batch, i8** io, i8** consts, i8* workspace,
                     i64 threads, i8** omp, i64* timings)

(``{prefix}_main`` in a C library, see ``export/clib.py``: ``build_module``'s ``entry``).
``io`` holds the input then output buffers, ``consts`` the constants, and the
workspace is one block of ``per_batch * batch + fixed`` bytes for intermediates.
Kernels with a parallel outer loop are run on ``threads`` threads through
libgomp's ``GOMP_parallel`` when ``omp`` (its function pointers, see
``OMP_FUNCTIONS``) is not null and the work is large enough; otherwise every
kernel runs on the calling thread. The object code therefore does not depend
on libgomp being present. When ``timings`` is not null, the nanoseconds spent
in kernel ``i`` are added to ``timings[i]`` (the profiler's instrumented run).
"""

from __future__ import annotations

from llvmlite import ir

from ...errors import UnsupportedOpError
from ...ir import Graph, Value, dim_factors
from ...ops import REGISTRY
from . import conv, conv_transpose, dense, elementwise, layout, norm, pool, reduce, softmax, tensor  # noqa: F401
from . import qconv, qdense, qdynamic, qlookup, qpool, quantize  # noqa: F401  (int8 kernels)
from .codegen import I8, I64, LLVM_TYPES, VOID, KernelBuilder, _ident
from .plan import Plan, Storage, make_plan, size_in_bytes
from .registry import LOWERINGS, NotLowerable
from .target import Target

ENTRY = "lepton_main"
OMP_FUNCTIONS = ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads")
PARALLEL_MIN_WORK = 4_000_000
"""Multiply-adds below which a kernel runs on one thread: waking sleeping threads costs
microseconds (about what 4 M multiply-adds take on one core)."""

I8P = I8.as_pointer()
I32 = ir.IntType(32)
TASK_FN = ir.FunctionType(VOID, [I8P])
GOMP_PARALLEL = ir.FunctionType(VOID, [TASK_FN.as_pointer(), I8P, I32, I32])
OMP_INT = ir.FunctionType(I32, [])


class EntryBuilder:
    """The entry function: computes buffer addresses and calls (or fans out) each kernel."""

    def __init__(self, module: ir.Module, plan: Plan, entry: str = ENTRY):
        self.module, self.plan = module, plan
        args = [I64, I8P.as_pointer(), I8P.as_pointer(), I8P, I64, I8P.as_pointer(), I64.as_pointer()]
        self.fn = ir.Function(module, ir.FunctionType(VOID, args), entry)
        names = ("batch", "io", "consts", "workspace", "threads", "omp", "timings")
        for arg, name in zip(self.fn.args, names):
            arg.name = name
        self.batch, self.io, self.consts, self.workspace, self.threads, self.omp, self.timings = self.fn.args
        self.b = ir.IRBuilder(self.fn.append_basic_block("entry"))
        self.clock = self._start_clock()

    # -- addresses -------------------------------------------------------------------------------
    def address(self, storage: Storage) -> ir.Value:
        b = self.b
        if storage.kind == "workspace":
            offset = b.add(b.mul(self.batch, ir.Constant(I64, storage.per_batch)), ir.Constant(I64, storage.fixed))
            return b.gep(self.workspace, [offset])
        table = self.io if storage.kind == "io" else self.consts
        return b.load(b.gep(table, [ir.Constant(I64, storage.index)]))

    def typed(self, value: Value) -> ir.Value:
        return self.b.bitcast(self.address(self.plan.storage[value]), LLVM_TYPES[value.type.dtype].as_pointer())

    # -- calls -----------------------------------------------------------------------------------
    def call(self, kernel: KernelBuilder, buffers: list[ir.Value]) -> None:
        b = self.b
        one, zero = ir.Constant(I64, 1), ir.Constant(I64, 0)
        if not kernel.parallel:
            b.call(kernel.fn, [self.batch, self.consts, zero, one] + buffers)
            return
        symbols, factor = dim_factors(kernel.parallel_extent)
        extent = b.mul(self.batch, ir.Constant(I64, factor)) if symbols else ir.Constant(I64, factor)
        work = b.mul(extent, ir.Constant(I64, kernel.work_per_iteration))
        scale_symbols, scale_factor = dim_factors(kernel.work_scale)
        if scale_symbols or scale_factor != 1:
            scale = b.mul(self.batch, ir.Constant(I64, scale_factor)) if scale_symbols else ir.Constant(I64, scale_factor)
            work = b.mul(work, scale)
        wanted = b.and_(b.icmp_signed(">", self.threads, one),
                        b.and_(b.icmp_unsigned("!=", self.omp, ir.Constant(self.omp.type, None)),
                               b.and_(b.icmp_signed(">=", work, ir.Constant(I64, PARALLEL_MIN_WORK)),
                                      b.icmp_signed(">", extent, one))))
        with b.if_else(wanted) as (parallel, serial):
            with parallel:
                self._fan_out(kernel, buffers)
            with serial:
                b.call(kernel.fn, [self.batch, self.consts, zero, one] + buffers)

    def _fan_out(self, kernel: KernelBuilder, buffers: list[ir.Value]) -> None:
        """GOMP_parallel(task, args, threads, 0): each thread calls the kernel on its part."""
        b = self.b
        task = self._task(kernel, len(buffers))
        slots = [b.inttoptr(self.batch, I8P), b.bitcast(self.consts, I8P), b.bitcast(self.omp, I8P)]
        slots += [b.bitcast(v, I8P) for v in buffers]
        frame = b.alloca(ir.ArrayType(I8P, len(slots)))
        for i, v in enumerate(slots):
            b.store(v, b.gep(frame, [ir.Constant(I64, 0), ir.Constant(I64, i)]))
        gomp = b.bitcast(b.load(b.gep(self.omp, [ir.Constant(I64, 0)])), GOMP_PARALLEL.as_pointer())
        threads = b.trunc(self.threads, I32)
        b.call(gomp, [task, b.bitcast(frame, I8P), threads, ir.Constant(I32, 0)])

    def _task(self, kernel: KernelBuilder, n_buffers: int) -> ir.Function:
        """``void task(i8* frame)``: unpack the frame, ask libgomp which part this thread is."""
        task = ir.Function(self.module, TASK_FN, f"{kernel.fn.name}.task")
        task.linkage = "internal"
        b = ir.IRBuilder(task.append_basic_block("entry"))
        frame = b.bitcast(task.args[0], I8P.as_pointer())
        slot = lambda i: b.load(b.gep(frame, [ir.Constant(I64, i)]))  # noqa: E731
        batch = b.ptrtoint(slot(0), I64)
        consts = b.bitcast(slot(1), I8P.as_pointer())
        omp = b.bitcast(slot(2), I8P.as_pointer())

        def omp_call(index: int) -> ir.Value:
            fn = b.bitcast(b.load(b.gep(omp, [ir.Constant(I64, index)])), OMP_INT.as_pointer())
            return b.sext(b.call(fn, []), I64)

        part, parts = omp_call(1), omp_call(2)
        params = kernel.fn.args[4:]
        buffers = [b.bitcast(slot(3 + i), params[i].type) for i in range(n_buffers)]
        b.call(kernel.fn, [batch, consts, part, parts] + buffers)
        b.ret_void()
        return task

    # -- timing ----------------------------------------------------------------------------------
    def _start_clock(self):
        """The profiler's clock: ``clock_gettime(CLOCK_MONOTONIC)`` in nanoseconds."""
        timespec = ir.LiteralStructType([I64, I64])
        clock_gettime = ir.Function(self.module, ir.FunctionType(I32, [I32, timespec.as_pointer()]), "clock_gettime")
        slot = self.b.alloca(timespec)
        last = self.b.alloca(I64)

        def now() -> ir.Value:
            self.b.call(clock_gettime, [ir.Constant(I32, 1), slot])
            sec = self.b.load(self.b.gep(slot, [ir.Constant(I32, 0), ir.Constant(I32, 0)]))
            nsec = self.b.load(self.b.gep(slot, [ir.Constant(I32, 0), ir.Constant(I32, 1)]))
            return self.b.add(self.b.mul(sec, ir.Constant(I64, 1_000_000_000)), nsec)

        self._now, self._last = now, last
        self.profiling = self.b.icmp_unsigned("!=", self.timings, ir.Constant(self.timings.type, None))
        with self.b.if_then(self.profiling):
            self.b.store(now(), last)

    def record(self, index: int) -> None:
        b = self.b
        with b.if_then(self.profiling):
            t = self._now()
            cell = b.gep(self.timings, [ir.Constant(I64, index)])
            b.store(b.add(b.load(cell), b.sub(t, b.load(self._last))), cell)
            b.store(t, self._last)


def build_module(graph: Graph, target: Target, entry: str = ENTRY) -> tuple[ir.Module, Plan]:
    """The module and its plan; ``entry`` names the entry point (``{prefix}_main`` for a C library,
    so that two models link into one program: every other function has internal linkage)."""
    plan = make_plan(graph)
    module = ir.Module(name=graph.name)
    module.triple = target.triple
    entry = EntryBuilder(module, plan, entry)
    lanes = target.vector_bits() // 32

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
        kernel.target = target
        try:
            LOWERINGS[node.op](kernel, node)
        except NotLowerable as exc:
            raise UnsupportedOpError([(node.op, node.name, node.domain, graph.opset)], str(exc)) from None
        kernel.finish()
        used_by_kernels |= kernel.used
        plan.batch_rules += [(allowed, f"node '{node.name}' ({node.op}): {why}") for allowed, why in kernel.batch_rules]
        entry.call(kernel, [entry.typed(v) for v in buffers])
        entry.record(index)

    used = {v for v, _ in plan.copies} | used_by_kernels
    for value, storage in plan.storage.items():
        if storage.kind == "const" and value not in used:
            plan.drop_constant(storage.index)  # only its repacked form is read
    b = entry.b
    memcpy = module.declare_intrinsic("llvm.memcpy", [I8P, I8P, I64])
    for value, slot in plan.copies:
        row, batched = size_in_bytes(value)
        size = b.mul(entry.batch, ir.Constant(I64, row)) if batched else ir.Constant(I64, row)
        dst = b.load(b.gep(entry.io, [ir.Constant(I64, slot)]))
        b.call(memcpy, [dst, entry.address(plan.storage[value]), size, ir.Constant(ir.IntType(1), 0)])
    b.ret_void()
    return module, plan
