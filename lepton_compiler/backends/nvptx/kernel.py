"""A small GPU kernel builder whose kernels are emitted twice from the same Python code: for the GPU and for the host.

A kernel is a ``KernelSpec``: its launch shape (block size, grid as a function of the batch), its buffers,
its per-thread state (floats that live across barriers, the accumulators), its shared-memory arrays and
its body as a tree of **steps**:

* ``Phase(emit)``: straight-line code run by every thread; ``emit(t)`` writes its IR through a
  ``Thread`` (``t.tid``, ``t.bid``, ``t.ptr(value)``, ``t.shared(name)``, ``t.state(i)``, ...).
  Values do not cross from one phase to the next except through shared memory, the per-thread
  state or global buffers.
* ``Loop(name, count, steps)``: ``count`` (a compile-time constant, the same for every thread)
  iterations of the steps; ``t.loop(name)`` is the iteration index inside them.

Between two phases there is a block-wide barrier (``bar.sync 0``), unless the first phase says
``barrier=False`` (it then must not communicate with other threads through memory).

``emit_device`` turns a spec into one NVPTX kernel (``ptx_kernel`` calling convention: an ``.entry`` in the
PTX): indices from ``llvm.nvvm.read.ptx.sreg.*``, buffers in the global address space, shared arrays in
address space 3, the state in registers (a private array that LLVM promotes).

``emit_host`` turns the same spec into host code that runs the grid on the CPU, for testing without a GPU:
every phase becomes a function of ``(block index, thread index, loop indices, state, shared, buffers)`` and a
driver runs, for each block, each phase for every thread of the block before the next phase starts. This is
exactly one of the schedules a barrier allows, so a kernel that is correct on the GPU computes the same here,
and the numbers the tests check come from the very IR the GPU runs (only the index source, address spaces and
the target differ).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence, Union

from llvmlite import ir

from ...ir import Value, dim_factors

I1 = ir.IntType(1)
I8 = ir.IntType(8)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
F32 = ir.FloatType()
VOID = ir.VoidType()
GLOBAL, SHARED = 1, 3
INT_LIMIT = 2 ** 31 - 1
"""Kernels index with 32-bit integers: no tensor may hold more elements (the runtime checks the batch)."""

IntLike = Union[int, ir.Value]


@dataclass
class Phase:
    emit: Callable[["Thread"], None]
    name: str = "phase"
    barrier: bool = True


@dataclass
class Loop:
    name: str
    count: int
    steps: list


@dataclass(frozen=True)
class GridDim:
    """``ceil((per_batch * batch + fixed) / tile)`` blocks along one axis."""

    per_batch: int = 0
    fixed: int = 1
    tile: int = 1

    def blocks(self, batch: int) -> int:
        return max(1, -(-(self.per_batch * batch + self.fixed) // self.tile))

    def to_json(self) -> list:
        return [self.per_batch, self.fixed, self.tile]


def extent(d) -> GridDim:
    """A grid dim covering ``d`` (an int or a dim such as ``"N*169"``) one element per block."""
    symbols, factor = dim_factors(d)
    return GridDim(factor, 0, 1) if symbols else GridDim(0, factor, 1)


@dataclass
class KernelSpec:
    name: str
    op: str
    node: str
    buffers: list[Value]             # read or written, in parameter order
    outputs: list[Value]             # the buffers it writes
    block: tuple[int, int, int]
    grid: tuple[GridDim, GridDim, GridDim]
    steps: list
    state: int = 0                   # per-thread floats
    shared: dict = field(default_factory=dict)   # name -> number of floats
    batch_symbol: Optional[str] = None
    notes: str = ""                  # how it is tiled, for reports

    @property
    def threads(self) -> int:
        return self.block[0] * self.block[1] * self.block[2]

    @property
    def shared_bytes(self) -> int:
        return 4 * sum(self.shared.values())

    def loop_names(self) -> list[str]:
        names: list[str] = []

        def walk(steps):
            for s in steps:
                if isinstance(s, Loop):
                    names.append(s.name)
                    walk(s.steps)
        walk(self.steps)
        return names

    def phases(self) -> list[Phase]:
        out: list[Phase] = []

        def walk(steps):
            for s in steps:
                if isinstance(s, Loop):
                    walk(s.steps)
                else:
                    out.append(s)
        walk(self.steps)
        return out


class Thread:
    """What a phase's code sees: one thread's indices, the buffers and memories, and IR helpers."""

    def __init__(self, spec: KernelSpec, fn: ir.Function, b: ir.IRBuilder, batch: ir.Value, tid, bid,
                 loops: dict, state: ir.Value, shared: dict, buffers: dict, entry: ir.Block):
        self.spec, self.fn, self.b, self.batch = spec, fn, b, batch
        self.module = fn.module
        self.tid, self.bid = tid, bid
        self._loops, self._state, self._shared, self._buffers = loops, state, shared, buffers
        self.entry = entry

    # -- indices and memories ----------------------------------------------------------------------
    @property
    def linear_tid(self) -> ir.Value:
        bx, by, _ = self.spec.block
        return self.add(self.tid[0], self.add(self.mul(self.tid[1], bx), self.mul(self.tid[2], bx * by)))

    def loop(self, name: str) -> ir.Value:
        return self._loops[name]

    def ptr(self, value: Value) -> ir.Value:
        return self._buffers[value]

    def shared(self, name: str) -> ir.Value:
        return self._shared[name]

    def state(self, index: int) -> ir.Value:
        return self.b.gep(self._state, [self.i32(index)], inbounds=True)

    def dim(self, d) -> ir.Value:
        """A dim as an i32: a constant, or the batch times a constant."""
        symbols, factor = dim_factors(d)
        if not symbols:
            return self.i32(factor)
        return self.batch if factor == 1 else self.mul(self.batch, factor)

    # -- arithmetic (i32 indices; Python ints fold) ---------------------------------------------------
    def i32(self, x: IntLike) -> ir.Value:
        return ir.Constant(I32, int(x)) if isinstance(x, int) else x

    def f32(self, x: float) -> ir.Constant:
        return ir.Constant(F32, float(x))

    def add(self, a: IntLike, b: IntLike) -> ir.Value:
        if isinstance(b, int) and b == 0:
            return self.i32(a)
        if isinstance(a, int) and a == 0:
            return self.i32(b)
        return self.b.add(self.i32(a), self.i32(b))

    def mul(self, a: IntLike, b: IntLike) -> ir.Value:
        if isinstance(b, int) and b == 1:
            return self.i32(a)
        if isinstance(a, int) and a == 1:
            return self.i32(b)
        return self.b.mul(self.i32(a), self.i32(b))

    def div(self, a: IntLike, b: IntLike) -> ir.Value:
        return self.i32(a) if isinstance(b, int) and b == 1 else self.b.udiv(self.i32(a), self.i32(b))

    def rem(self, a: IntLike, b: IntLike) -> ir.Value:
        return self.i32(0) if isinstance(b, int) and b == 1 else self.b.urem(self.i32(a), self.i32(b))

    def lt(self, a: IntLike, b: IntLike) -> ir.Value:
        return self.b.icmp_signed("<", self.i32(a), self.i32(b))

    def in_range(self, x: ir.Value, stop: IntLike) -> ir.Value:
        """``0 <= x < stop`` as one unsigned compare."""
        return self.b.icmp_unsigned("<", x, self.i32(stop))

    def and_(self, *conds: ir.Value) -> ir.Value:
        out = conds[0]
        for c in conds[1:]:
            out = self.b.and_(out, c)
        return out

    def load(self, ptr: ir.Value, offset: IntLike) -> ir.Value:
        return self.b.load(self.b.gep(ptr, [self.i32(offset)], inbounds=True))

    def store(self, value: ir.Value, ptr: ir.Value, offset: IntLike) -> None:
        self.b.store(value, self.b.gep(ptr, [self.i32(offset)], inbounds=True))

    def local(self, initial: ir.Value) -> ir.Value:
        """A per-thread scalar variable (a stack slot in the entry block that LLVM turns into a register)."""
        with self.b.goto_block(self.entry):
            self.b.position_at_start(self.entry)
            slot = self.b.alloca(initial.type)
        self.b.store(initial, slot)
        return slot

    # -- control flow -----------------------------------------------------------------------------
    @contextmanager
    def for_range(self, stop: IntLike, start: IntLike = 0, step: IntLike = 1, name: str = "i") -> Iterator[ir.Value]:
        """A per-thread loop ``for (i = start; i < stop; i += step)`` (no barrier may be inside)."""
        b = self.b
        start_v, stop_v = self.i32(start), self.i32(stop)
        before = b.block
        header = self.fn.append_basic_block(f"{name}.head")
        body = self.fn.append_basic_block(f"{name}.body")
        done = self.fn.append_basic_block(f"{name}.end")
        b.branch(header)
        b.position_at_end(header)
        index = b.phi(I32, name=name)
        index.add_incoming(start_v, before)
        b.cbranch(b.icmp_signed("<", index, stop_v), body, done)
        b.position_at_end(body)
        yield index
        following = b.add(index, self.i32(step), name=f"{name}.next")
        index.add_incoming(following, b.block)
        b.branch(header)
        b.position_at_end(done)

    @contextmanager
    def if_(self, cond: ir.Value):
        with self.b.if_then(cond):
            yield

    # -- float helpers (same definitions as the cpu backend's) ------------------------------------------
    def intrinsic(self, name: str, *args: ir.Value) -> ir.Value:
        full = f"{name}.f32"
        fn = self.module.globals.get(full)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(F32, [a.type for a in args]), full)
        return self.b.call(fn, list(args))

    def fma(self, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
        return self.intrinsic("llvm.fmuladd", a, b, c)

    def max(self, acc: ir.Value, x: ir.Value) -> ir.Value:
        """NaN-propagating running maximum (as numpy and the reference interpreter)."""
        larger = self.b.select(self.b.fcmp_ordered(">", x, acc), x, acc)
        return self.b.select(self.b.fcmp_unordered("uno", x, x), x, larger)

    def const_like(self, x: ir.Value, value: float) -> ir.Constant:
        return ir.Constant(x.type, float(value))


# -- the GPU kernel ----------------------------------------------------------------------------------
SREG = "llvm.nvvm.read.ptx.sreg."
BARRIER = "llvm.nvvm.barrier0"


def _declare(module: ir.Module, name: str, ret, args=()) -> ir.Function:
    fn = module.globals.get(name)
    return fn if fn is not None else ir.Function(module, ir.FunctionType(ret, list(args)), name)


def _buffer_params(fn: ir.Function, spec: KernelSpec, first: int) -> dict:
    buffers = {}
    for value, arg in zip(spec.buffers, fn.args[first:]):
        arg.name = "".join(c if c.isalnum() else "_" for c in value.name) or "buf"
        arg.add_attribute("noalias")   # the planner never lets an output share bytes with an input
        buffers[value] = arg
    return buffers


def emit_device(module: ir.Module, spec: KernelSpec) -> ir.Function:
    """``spec`` as one NVPTX kernel ``void name(i32 batch, float addrspace(1)* buffers...)``."""
    params = [I32] + [F32.as_pointer(GLOBAL) for _ in spec.buffers]
    fn = ir.Function(module, ir.FunctionType(VOID, params), spec.name)
    fn.calling_convention = "ptx_kernel"
    fn.args[0].name = "batch"
    buffers = _buffer_params(fn, spec, 1)
    entry = fn.append_basic_block("entry")
    b = ir.IRBuilder(entry)
    tid = [b.call(_declare(module, f"{SREG}tid.{a}", I32), []) for a in "xyz"]
    bid = [b.call(_declare(module, f"{SREG}ctaid.{a}", I32), []) for a in "xyz"]
    state = b.alloca(ir.ArrayType(F32, max(1, spec.state)), name="state")
    state = b.gep(state, [ir.Constant(I32, 0), ir.Constant(I32, 0)])
    shared = {}
    for name, count in spec.shared.items():
        g = ir.GlobalVariable(module, ir.ArrayType(F32, count), f"{spec.name}.{name}", addrspace=SHARED)
        g.linkage = "internal"
        g.align = 16
        g.initializer = ir.Constant(ir.ArrayType(F32, count), ir.Undefined)
        shared[name] = b.gep(g, [ir.Constant(I32, 0), ir.Constant(I32, 0)], inbounds=True)
    barrier = _declare(module, BARRIER, VOID)
    loops: dict = {}
    phases = spec.phases()
    last = phases[-1] if phases else None

    def run(steps):
        for step in steps:
            if isinstance(step, Loop):
                thread = Thread(spec, fn, b, fn.args[0], tid, bid, loops, state, shared, buffers, entry)
                with thread.for_range(step.count, name=step.name) as i:
                    loops[step.name] = i
                    run(step.steps)
                del loops[step.name]
            else:
                step.emit(Thread(spec, fn, b, fn.args[0], tid, bid, loops, state, shared, buffers, entry))
                if step.barrier and step is not last:
                    b.call(barrier, [])
    run(spec.steps)
    b.ret_void()
    return fn


# -- the host emulation --------------------------------------------------------------------------------
def emit_host(module: ir.Module, spec: KernelSpec) -> ir.Function:
    """``spec`` as host code: ``void name(i32 batch, i32 gx, i32 gy, i32 gz, float* buffers...)`` runs the
    whole grid on the calling thread, block after block, phase by phase."""
    loop_names = spec.loop_names()
    nthreads = spec.threads
    # one function per phase
    phase_fns = {}
    phase_params = [I32] * 7 + [I32] * len(loop_names) + [F32.as_pointer(), F32.as_pointer()] + \
        [F32.as_pointer() for _ in spec.buffers]
    for index, phase in enumerate(spec.phases()):
        fn = ir.Function(module, ir.FunctionType(VOID, phase_params), f"{spec.name}.phase{index}.{phase.name}")
        fn.linkage = "internal"
        args = fn.args
        batch, bid, tid = args[0], list(args[1:4]), list(args[4:7])
        loops = dict(zip(loop_names, args[7:7 + len(loop_names)]))
        state, shared_base = args[7 + len(loop_names)], args[8 + len(loop_names)]
        state.add_attribute("noalias")
        buffers = _buffer_params(fn, spec, 9 + len(loop_names))
        entry = fn.append_basic_block("entry")
        b = ir.IRBuilder(entry)
        shared, offset = {}, 0
        for name, count in spec.shared.items():
            shared[name] = b.gep(shared_base, [ir.Constant(I32, offset)], inbounds=True)
            offset += count
        phase.emit(Thread(spec, fn, b, batch, tid, bid, loops, state, shared, buffers, entry))
        b.ret_void()
        phase_fns[id(phase)] = fn

    params = [I32] * 4 + [F32.as_pointer() for _ in spec.buffers]
    driver = ir.Function(module, ir.FunctionType(VOID, params), spec.name)
    batch, grid = driver.args[0], driver.args[1:4]
    buffers = list(driver.args[4:])
    entry = driver.append_basic_block("entry")
    b = ir.IRBuilder(entry)
    state = b.alloca(ir.ArrayType(F32, max(1, nthreads * spec.state)))
    state = b.gep(state, [ir.Constant(I32, 0), ir.Constant(I32, 0)])
    shared = b.alloca(ir.ArrayType(F32, max(1, sum(spec.shared.values()))))
    shared = b.gep(shared, [ir.Constant(I32, 0), ir.Constant(I32, 0)])
    t = Thread(spec, driver, b, batch, None, None, {}, state, {}, {}, entry)
    loops: dict = {}

    def run(steps, bid):
        for step in steps:
            if isinstance(step, Loop):
                with t.for_range(step.count, name=step.name) as i:
                    loops[step.name] = i
                    run(step.steps, bid)
                    del loops[step.name]
                continue
            with t.for_range(spec.block[2], name="tz") as tz, t.for_range(spec.block[1], name="ty") as ty, \
                    t.for_range(spec.block[0], name="tx") as tx:
                linear = t.add(tx, t.add(t.mul(ty, spec.block[0]), t.mul(tz, spec.block[0] * spec.block[1])))
                mine = b.gep(state, [t.mul(linear, spec.state)], inbounds=True)
                indices = [loops.get(n, ir.Constant(I32, 0)) for n in loop_names]
                b.call(phase_fns[id(step)], [batch, *bid, tx, ty, tz, *indices, mine, shared, *buffers])

    with t.for_range(grid[2], name="bz") as bz, t.for_range(grid[1], name="by") as by, \
            t.for_range(grid[0], name="bx") as bx:
        run(spec.steps, [bx, by, bz])
    b.ret_void()
    assert nthreads <= 1024
    return driver


def cooperative(t: Thread, total: int, body: Callable[[ir.Value], None]) -> None:
    """Every thread of the block handles elements ``linear_tid, linear_tid + threads, ...`` of ``total``."""
    with t.for_range(total, start=t.linear_tid, step=t.spec.threads, name="coop") as e:
        body(e)


def static_tail(shape: Sequence) -> bool:
    """Whether every dim after the first is a compile-time constant."""
    return all(not dim_factors(d)[0] for d in shape[1:])
