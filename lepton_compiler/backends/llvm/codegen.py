"""Small helpers for emitting kernels with llvmlite: typed buffers, dims, loops, intrinsics."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
from llvmlite import ir

from ...errors import LeptonError
from ...ir import Dim, Value, dim_factors

I1 = ir.IntType(1)
I8 = ir.IntType(8)
I64 = ir.IntType(64)
F32 = ir.FloatType()
VOID = ir.VoidType()

LLVM_TYPES = {
    "float32": ir.FloatType(), "float64": ir.DoubleType(), "int64": I64, "int32": ir.IntType(32),
    "int16": ir.IntType(16), "int8": I8, "uint8": I8, "bool": I8,
}

IntLike = Union[int, ir.Value]


class KernelBuilder:
    """Builds one kernel function ``void name(i64 batch, i8** consts, i64 part, i64 parts, T* noalias buf0, ...)``.

    A kernel whose outermost loop is a ``parallel_loop`` may be run by ``parts``
    threads at once, each doing the ``part``-th chunk; any other kernel is only
    ever called with ``part = 0, parts = 1``.

    Lowerings read buffers through ``ptr(value)``, shapes through ``dims(value)``
    (the batch symbol becomes the runtime ``batch`` argument) and emit loops with
    ``loop``. Everything else is plain ``llvmlite.ir.IRBuilder`` on ``self.b``.
    """

    def __init__(self, module: ir.Module, name: str, buffers: Sequence[Value], add_constant,
                 lanes: int = 0, registers: int = 16, batch_symbol: str | None = None):
        self.module = module
        self.batch_symbol = batch_symbol
        self.batch_rules: list[tuple[tuple[int, ...], str]] = []
        """Batch sizes the kernel is valid for, with the reason (checked by the runtime)."""
        self._add_constant = add_constant
        self.lanes = lanes            # floats per vector register of the target (0: no SIMD kernels)
        self.registers = registers    # vector registers of the target
        arg_types = [I64, I8.as_pointer().as_pointer(), I64, I64] + [LLVM_TYPES[v.type.dtype].as_pointer()
                                                                      for v in buffers]
        self.fn = ir.Function(module, ir.FunctionType(VOID, arg_types), name)
        self.fn.linkage = "internal"
        for arg in self.fn.args[4:]:
            arg.add_attribute("noalias")
        self.batch, self.consts, self.part, self.parts = self.fn.args[:4]
        for arg, arg_name in zip(self.fn.args[:4], ("batch", "consts", "part", "parts")):
            arg.name = arg_name
        self.parallel = False
        """Whether the kernel splits its outermost loop across threads."""
        self.work_per_iteration = 0
        """Estimated multiply-adds of one ``parallel_loop`` iteration, to decide whether threads pay off."""
        self.parallel_extent: Dim = 0
        self.work_scale: Dim = 1
        """A dim the work of one iteration is multiplied by at run time (see ``parallel_range``)."""
        self.target = None
        """The ``Target`` code is generated for (set by ``build_module``; the int8 kernels read its features)."""
        self._ptrs = {}
        self.used: set[Value] = set()  # buffers the kernel reads or writes (a repacked weight is not one)
        for value, arg in zip(buffers, self.fn.args[4:]):
            arg.name = _ident(value.name)
            self._ptrs.setdefault(value, arg)
        self.entry = self.fn.append_basic_block("entry")
        self.b = ir.IRBuilder(self.entry)

    def require_batch(self, allowed: tuple[int, ...], reason: str) -> None:
        self.batch_rules.append((tuple(sorted(set(allowed))), reason))

    # -- buffers and shapes ------------------------------------------------------------------
    def has_buffer(self, value: Value) -> bool:
        """Whether the plan gave ``value`` a buffer (an output nothing reads has none)."""
        return value in self._ptrs

    def ptr(self, value: Value) -> ir.Value:
        self.used.add(value)
        return self._ptrs[value]

    def dim(self, d: Dim) -> ir.Value:
        """A dim as an i64: constant, or the batch (times a constant factor, as in ``N*60``)."""
        symbols, factor = dim_factors(d)
        if not symbols:
            return ir.Constant(I64, factor)
        return self.batch if factor == 1 else self.b.mul(self.batch, ir.Constant(I64, factor))

    def dims(self, value: Value) -> list[ir.Value]:
        return [self.dim(d) for d in value.type.shape]

    def i64(self, x: IntLike) -> ir.Value:
        return ir.Constant(I64, x) if isinstance(x, int) else x

    def f32(self, x: float) -> ir.Constant:
        return ir.Constant(F32, float(x))

    def product(self, factors: Sequence[IntLike]) -> ir.Value:
        """Product of ints and IR values, with the constant part folded in Python."""
        static, dynamic = 1, []
        for f in factors:
            if isinstance(f, int):
                static *= f
            elif isinstance(f, ir.Constant):
                static *= f.constant
            else:
                dynamic.append(f)
        result: ir.Value = ir.Constant(I64, static)
        for f in dynamic:
            result = self.b.mul(result, f)
        return result

    def linear(self, index: Sequence[IntLike], dims: Sequence[IntLike | None]) -> ir.Value:
        """Row-major offset of ``index`` in a tensor of shape ``dims`` (``dims[0]`` is not needed)."""
        offset = self.i64(index[0])
        for i, d in zip(index[1:], dims[1:]):
            offset = self.b.add(self.b.mul(offset, self.i64(d)), self.i64(i))
        return offset

    def load(self, ptr: ir.Value, offset: IntLike) -> ir.Value:
        return self.b.load(self.b.gep(ptr, [self.i64(offset)], inbounds=True))

    def store(self, value: ir.Value, ptr: ir.Value, offset: IntLike) -> None:
        self.b.store(value, self.b.gep(ptr, [self.i64(offset)], inbounds=True))

    def constant(self, name: str, array: np.ndarray) -> ir.Value:
        """A float32 constant prepared at compile time (packed weights), passed by the
        runtime like any other constant."""
        index = self._add_constant(name, array)
        raw = self.b.load(self.b.gep(self.consts, [ir.Constant(I64, index)]))
        return self.b.bitcast(raw, LLVM_TYPES[str(array.dtype)].as_pointer())

    # -- control flow ------------------------------------------------------------------------
    def vector_tiles(self, count: int, lanes: int, body: Callable[[ir.Value, int], None], name: str = "t") -> None:
        """``body(start, width)`` over ``count`` elements in tiles of ``lanes``: a loop over the full
        tiles (``width == lanes``), then the partial last one, if any."""
        full = count // lanes
        if full:
            with self.loop(full, name=name) as t:
                body(self.b.mul(t, self.i64(lanes)), lanes)
        if count % lanes:
            body(self.i64(full * lanes), count % lanes)

    @contextmanager
    def loop(self, stop: IntLike, start: IntLike = 0, name: str = "i") -> Iterator[ir.Value]:
        """``for (i = start; i < stop; ++i)`` with the body emitted inside the ``with``."""
        b = self.b
        start_v, stop_v = self.i64(start), self.i64(stop)
        before = b.block
        header = self.fn.append_basic_block(f"{name}.head")
        body = self.fn.append_basic_block(f"{name}.body")
        done = self.fn.append_basic_block(f"{name}.end")
        b.branch(header)
        b.position_at_end(header)
        index = b.phi(I64, name=name)
        index.add_incoming(start_v, before)
        b.cbranch(b.icmp_signed("<", index, stop_v), body, done)
        b.position_at_end(body)
        yield index
        following = b.add(index, ir.Constant(I64, 1), name=f"{name}.next")
        index.add_incoming(following, b.block)
        b.branch(header)
        b.position_at_end(done)

    def parallel_range(self, extent: Dim, work: int, scale: Dim = 1) -> tuple[ir.Value, ir.Value]:
        """This call's chunk ``[lo, hi)`` of the kernel's outermost range ``[0, extent)``, split
        into ``parts`` contiguous chunks; the caller emits the loop over it.

        ``work`` estimates the multiply-adds (or element operations) of one iteration, times the
        run-time value of ``scale`` (a dim such as ``"N"`` where an iteration covers every row of
        a dynamic batch).
        """
        b = self.b
        stop_v = self.dim(extent)
        chunk = b.udiv(b.add(stop_v, b.sub(self.parts, self.i64(1))), self.parts)
        lo = b.mul(self.part, chunk)
        hi = b.add(lo, chunk)
        hi = b.select(b.icmp_signed("<", hi, stop_v), hi, stop_v)
        lo = b.select(b.icmp_signed("<", lo, hi), lo, hi)
        self.parallel = True
        self.work_per_iteration = work
        self.parallel_extent = extent
        self.work_scale = scale
        return lo, hi

    @contextmanager
    def parallel_loop(self, extent: Dim, work: int, name: str = "par") -> Iterator[ir.Value]:
        """The kernel's outermost loop over ``extent`` iterations (a dim such as ``"N*2"``),
        split into ``parts`` chunks of which this call runs one.

        ``work`` estimates the multiply-adds (or element operations) of one iteration.
        """
        lo, hi = self.parallel_range(extent, work)
        with self.loop(hi, start=lo, name=name) as i:
            yield i

    @contextmanager
    def loops(self, stops: Sequence[IntLike], name: str = "i") -> Iterator[list[ir.Value]]:
        """A nest of loops, outermost first."""
        if not stops:
            yield []
            return
        with self.loop(stops[0], name=f"{name}0") as first:
            with self.loops(stops[1:], name=name + "_") as rest:
                yield [first, *rest]

    def in_range(self, x: ir.Value, stop: IntLike) -> ir.Value:
        """``0 <= x < stop`` as one unsigned compare."""
        return self.b.icmp_unsigned("<", x, self.i64(stop))

    def scalar_slot(self, initial: ir.Value) -> ir.Value:
        """A stack slot in the entry block (mem2reg turns it into a register)."""
        with self.b.goto_block(self.entry):
            self.b.position_at_start(self.entry)
            slot = self.b.alloca(initial.type)
        self.b.store(initial, slot)
        return slot

    def stack_array(self, element: ir.Type, count: int) -> ir.Value:
        """A fixed-size scratch array on the stack (allocated once, in the entry block)."""
        with self.b.goto_block(self.entry):
            self.b.position_at_start(self.entry)
            array = self.b.alloca(ir.ArrayType(element, count))
        return self.b.gep(array, [ir.Constant(I64, 0), ir.Constant(I64, 0)])

    # -- vectors -------------------------------------------------------------------------------
    def vload(self, ptr: ir.Value, offset: IntLike, lanes: int) -> ir.Value:
        """``lanes`` consecutive floats from ``ptr + offset`` (element alignment only)."""
        vptr = self.b.bitcast(self.b.gep(ptr, [self.i64(offset)], inbounds=True), ir.VectorType(F32, lanes).as_pointer())
        return self.b.load(vptr, align=4)

    def vstore(self, value: ir.Value, ptr: ir.Value, offset: IntLike) -> None:
        vptr = self.b.bitcast(self.b.gep(ptr, [self.i64(offset)], inbounds=True), value.type.as_pointer())
        self.b.store(value, vptr, align=4)

    def splat(self, scalar: ir.Value, lanes: int) -> ir.Value:
        """``scalar`` in every lane (the load folds into a broadcast operand of the FMA)."""
        vec_type = ir.VectorType(scalar.type, lanes)
        one = self.b.insert_element(ir.Constant(vec_type, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
        return self.b.shuffle_vector(one, ir.Constant(vec_type, ir.Undefined),
                                     ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))

    def const_like(self, x: ir.Value, value: float) -> ir.Constant:
        """A float constant of ``x``'s type: a scalar, or the same value in every lane."""
        if isinstance(x.type, ir.VectorType):
            return ir.Constant(x.type, [float(value)] * x.type.count)
        return ir.Constant(x.type, float(value))

    # -- math --------------------------------------------------------------------------------
    def intrinsic(self, name: str, *args: ir.Value) -> ir.Value:
        """Call an overloaded intrinsic whose arguments and result share one type."""
        full = f"{name}.{_type_suffix(args[0].type)}"
        fn = self.module.globals.get(full)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(args[0].type, [a.type for a in args]), full)
        return self.b.call(fn, list(args))

    def fma(self, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
        """``a * b + c``, fused where the CPU has FMA (``llvm.fmuladd``: ``llvm.fma`` would
        become a slow libm call on CPUs without it)."""
        return self.intrinsic("llvm.fmuladd", a, b, c)

    def max(self, acc: ir.Value, x: ir.Value) -> ir.Value:
        """A running maximum that propagates NaN (as numpy and the reference interpreter do):
        ``x > acc ? x : acc`` (``vmaxps``) keeps a NaN ``acc``, and a NaN ``x`` is taken over it;
        without the second select a window of NaNs would come out as the initial -inf."""
        larger = self.b.select(self.b.fcmp_ordered(">", x, acc), x, acc)
        return self.b.select(self.b.fcmp_unordered("uno", x, x), x, larger)

    def finish(self) -> ir.Function:
        self.b.ret_void()
        return self.fn


def _type_suffix(t: ir.Type) -> str:
    """LLVM's overload suffix: ``f32``, ``v16f32``."""
    if isinstance(t, ir.VectorType):
        return f"v{t.count}{_type_suffix(t.element)}"
    return t.intrinsic_name


def _ident(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._" else "_" for c in name) or "v"


class CodePaths:
    """A kernel family's code paths (instruction sets), one of which tests may force.

    ``runs(natural)`` is the set of paths a target whose best path is ``natural`` can run;
    ``choose(natural, where)`` gives the path to emit: ``natural``, or the forced one if the
    target can run it (else a ``LeptonError`` naming ``where``)."""

    def __init__(self, what: str, paths: Sequence[str], runs: Callable[[str], set]):
        self.what, self.paths, self.runs = what, tuple(paths), runs
        self._forced: Optional[str] = None

    @contextmanager
    def forced(self, name: Optional[str]) -> Iterator[None]:
        """Emit every kernel of the family compiled inside the ``with`` on path ``name`` (tests only)."""
        if name is not None and name not in self.paths:
            raise ValueError(f"unknown {self.what} path {name!r}; one of {self.paths}")
        saved, self._forced = self._forced, name
        try:
            yield
        finally:
            self._forced = saved

    def choose(self, natural: str, where: str) -> str:
        if self._forced is None:
            return natural
        if self._forced not in self.runs(natural):
            raise LeptonError(f"{self.what} path {self._forced} cannot run on {where} (it has {natural})")
        return self._forced
