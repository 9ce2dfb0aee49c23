"""Register-blocked fp32 GEMM with explicit vectors: ``y[M, N] = act(init + a[M, K] @ b[K, N])``.

The output is cut into column panels ``nr = nv * lanes`` floats wide (``lanes``: the
target's vector width) and row blocks of ``mr`` rows. One micro-tile of ``mr x nv``
vector accumulators stays in registers over a block of ``kc`` (up to 1024) steps of the
reduction: each step loads ``nv`` vectors of ``b`` and broadcasts one ``a`` value per row into
``nv`` FMAs. ``mr x nv`` is chosen to keep most vector registers busy (8 x 3 on
AVX-512's 32 registers, 6 x 2 on AVX2/SSE's 16).

A constant ``b`` (the weights) is packed at compile time, ``alpha`` folded in and
``transB`` resolved: panel after panel, each ``[K][nr]`` (k-major, one row of a
panel is ``nv`` consecutive vectors), the last panel narrower (as many vectors as
the remaining columns need) and zero-padded. A ``b`` that is a run-time input
(``MatMul`` of two activations) is read in place, row-major, with masked loads
on the last partial vector.

Loops, outermost first: row macro blocks of ``mc`` rows; blocks of ``kc`` of
the reduction; panels; row blocks. A ``kc x nr`` sliver of ``b`` stays in
L1/L2 while every row block of the macro block passes over it, and the macro
block's ``mc x kc`` slice of ``a`` stays in L2 across panels. The first
reduction block starts the accumulators from ``beta * C`` (read with C's
broadcast strides; a constant row bias is packed, premultiplied and padded) or
zero; later blocks reload the partial sums from ``y``; the last applies a
vector activation in registers before the store. Activations without a vector
form and the fused softmax run over the macro block's finished rows.

Every output element is the same chain of FMAs, ``init + a[i,0] b[0,j] + a[i,1]
b[1,j] + ...`` in order, whatever tile, row block or thread computes it, so the
results are the same bits for any thread count. Threads take contiguous ranges of
column panels (each reads only its share of the weights) or, with a fused
softmax (which needs whole rows) or few panels, of rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from llvmlite import ir

from ...ir import Dim, dim_factors
from .activations import VECTOR_ACTIVATIONS, activate
from .codegen import F32, I1, IntLike, KernelBuilder
from .softmax import emit_softmax_row

I32 = ir.IntType(32)
KC_MAX = 1024         # reduction steps per block (at most)
MC_ROWS = 96          # rows per macro block (rounded down to whole row blocks)
MIN_PANELS_TO_SPLIT = 4


@dataclass(frozen=True)
class Blocking:
    lanes: int   # floats per vector
    mr: int      # rows of a micro-tile
    nv: int      # vectors per panel (columns of a micro-tile / lanes)
    kc: int      # reduction steps per block
    mc: int      # rows per macro block (a multiple of mr)

    @property
    def nr(self) -> int:
        return self.nv * self.lanes


def choose_blocking(lanes: int, registers: int, k_dim: int) -> Blocking:
    """``mr x nv`` accumulators plus ``nv`` vectors of ``b`` and a broadcast in the registers
    (8 x 3 of 32: 24 accumulators, a little faster than 6 x 4 here and whole tiles at batch
    sizes that are multiples of 8; 6 x 2 of 16); the reduction split into equal blocks of at
    most ``KC_MAX`` steps; macro blocks of about ``MC_ROWS`` rows."""
    mr, nv = (8, 3) if registers >= 32 else (6, 2)
    blocks = max(1, -(-k_dim // KC_MAX))
    kc = -(-k_dim // blocks)
    return Blocking(lanes, mr, nv, kc, mr * max(1, MC_ROWS // mr))


@dataclass(frozen=True)
class Panels:
    """The column panels of an ``N``-column output: ``full`` panels ``nr`` wide, then a
    ``tail`` panel of ``tail_vectors`` vectors (0: none) whose last vector has ``tail_last``
    valid lanes."""
    n: int
    full: int
    tail_vectors: int
    tail_last: int

    @classmethod
    def of(cls, n: int, blk: Blocking) -> "Panels":
        full, rest = divmod(n, blk.nr)
        vectors = -(-rest // blk.lanes)
        return cls(n, full, vectors, rest - (vectors - 1) * blk.lanes if vectors else blk.lanes)

    @property
    def count(self) -> int:
        return self.full + (1 if self.tail_vectors else 0)

    def padded(self, blk: Blocking) -> int:
        return self.full * blk.nr + self.tail_vectors * blk.lanes


def pack_b(b: np.ndarray, blk: Blocking) -> np.ndarray:
    """``[K, N]`` -> full panels ``[N // nr][K][nr]`` then the tail panel ``[K][tail_vectors * lanes]``
    (zero-padded), flat. A stack ``[..., K, N]`` packs matrix after matrix."""
    if b.ndim > 2:
        return np.concatenate([pack_b(m, blk) for m in b.reshape((-1,) + b.shape[-2:])])
    k, n = b.shape
    p = Panels.of(n, blk)
    parts = []
    if p.full:
        parts.append(b[:, :p.full * blk.nr].reshape(k, p.full, blk.nr).transpose(1, 0, 2).ravel())
    if p.tail_vectors:
        tail = np.zeros((k, p.tail_vectors * blk.lanes), np.float32)
        tail[:, :n - p.full * blk.nr] = b[:, p.full * blk.nr:]
        parts.append(tail.ravel())
    return np.ascontiguousarray(np.concatenate(parts).astype(np.float32))


def pack_row(row: np.ndarray, blk: Blocking) -> np.ndarray:
    """A bias ``[N]`` padded with zeros to whole vectors of every panel."""
    p = Panels.of(row.shape[-1], blk)
    out = np.zeros(p.padded(blk), np.float32)
    out[:row.shape[-1]] = row
    return out


@dataclass
class Init:
    """Where the first reduction block starts: ``zero``; ``row`` (a packed, padded bias
    vector ``ptr``, premultiplied by beta); or ``c`` (``beta * ptr[i * sm + j * sn]``,
    ``sn`` 0 or 1)."""
    kind: str = "zero"
    ptr: Optional[ir.Value] = None
    sm: IntLike = 0
    sn: IntLike = 0
    beta: float = 1.0


@dataclass
class Operands:
    """Pointers of one GEMM: ``a[i * a_row + p * a_col]``, ``b`` packed (``packed``) or
    row-major ``[K][N]``, and the row-major output ``y``."""
    a: ir.Value
    a_row: IntLike
    a_col: IntLike
    b: ir.Value
    packed: bool
    y: ir.Value
    init: Init


class Gemm:
    """Emits ``y = act(init + a @ b)`` (then softmax over each row) for rows ``[r_lo, r_hi)``
    and column panels ``[j_lo, j_hi)``."""

    def __init__(self, k: KernelBuilder, blk: Blocking, n: int, kk: int, activation: str = "",
                 params: Sequence[float] = (), softmax: bool = False):
        self.k, self.blk, self.n, self.kk = k, blk, n, kk
        self.panels = Panels.of(n, blk)
        self.activation, self.params, self.softmax = activation, list(params), softmax
        self.vector_activation = activation in VECTOR_ACTIVATIONS
        self.vec = ir.VectorType(F32, blk.lanes)

    # -- the loop nest ----------------------------------------------------------------------------
    def emit(self, ops: Operands, r_lo: ir.Value, r_hi: ir.Value, j_lo: IntLike, j_hi: IntLike) -> None:
        k, blk = self.k, self.blk
        b = k.b
        j_lo, j_hi = k.i64(j_lo), k.i64(j_hi)
        rows = b.sub(r_hi, r_lo)
        macro = b.udiv(b.add(rows, k.i64(blk.mc - 1)), k.i64(blk.mc))
        with k.loop(macro, name="mb") as mb:
            m0 = b.add(r_lo, b.mul(mb, k.i64(blk.mc)))
            m1 = b.add(m0, k.i64(blk.mc))
            m1 = b.select(b.icmp_signed("<", m1, r_hi), m1, r_hi)
            blocks = -(-self.kk // blk.kc)
            if blocks == 1:
                self.emit_panels(ops, m0, m1, j_lo, j_hi, k.i64(0), k.i64(self.kk), True, True)
            else:
                with k.loop(blocks, name="kb") as kb:
                    k0 = b.mul(kb, k.i64(blk.kc))
                    k1 = b.add(k0, k.i64(blk.kc))
                    k1 = b.select(b.icmp_signed("<", k1, k.i64(self.kk)), k1, k.i64(self.kk))
                    first = b.icmp_signed("==", kb, k.i64(0))
                    last = b.icmp_signed("==", kb, k.i64(blocks - 1))
                    self.emit_panels(ops, m0, m1, j_lo, j_hi, k0, k1, first, last)
            if (self.activation and not self.vector_activation) or self.softmax:
                self.emit_row_epilogue(ops, m0, m1, j_lo, j_hi)

    def emit_panels(self, ops, m0, m1, j_lo, j_hi, k0, k1, first, last) -> None:
        """Panels ``[j_lo, j_hi)`` x rows ``[m0, m1)``: whole row blocks panel by panel, then the
        rows left over (fewer than ``mr``) by tiles of 4, 2, 1 rows over several panels at once,
        then the tail panel."""
        k, p, blk = self.k, self.panels, self.blk
        b = k.b
        rows = b.sub(m1, m0)
        count = b.udiv(rows, k.i64(blk.mr))
        rest = b.sub(rows, b.mul(count, k.i64(blk.mr)))
        row_rest = b.add(m0, b.mul(count, k.i64(blk.mr)))
        if p.full:
            stop = b.select(b.icmp_signed("<", j_hi, k.i64(p.full)), j_hi, k.i64(p.full))
            start = b.select(b.icmp_signed("<", j_lo, stop), j_lo, stop)
            with k.loop(stop, start=start, name="jp") as j:
                with k.loop(count, name="rb") as t:
                    self.emit_tile(ops, b.add(m0, b.mul(t, k.i64(blk.mr))), blk.mr, j, blk.nv, blk.lanes,
                                   k0, k1, first, last)

            def rest_of_full_panels(row0: ir.Value, rows_left: int) -> None:
                group = self.panel_group(rows_left)
                groups = b.udiv(b.sub(stop, start), k.i64(group))
                with k.loop(groups, name="jg") as g:
                    j = b.add(start, b.mul(g, k.i64(group)))
                    self.emit_tile(ops, row0, rows_left, j, group * blk.nv, blk.lanes, k0, k1, first, last)
                if group > 1:
                    with k.loop(stop, start=b.add(start, b.mul(groups, k.i64(group))), name="j1") as j:
                        self.emit_tile(ops, row0, rows_left, j, blk.nv, blk.lanes, k0, k1, first, last)

            self.switch_rows(rest, row_rest, rest_of_full_panels)
        if p.tail_vectors:
            has_tail = b.and_(b.icmp_signed("<=", j_lo, k.i64(p.full)), b.icmp_signed(">", j_hi, k.i64(p.full)))
            with b.if_then(has_tail):
                tail = k.i64(p.full)
                with k.loop(count, name="rt") as t:
                    self.emit_tile(ops, b.add(m0, b.mul(t, k.i64(blk.mr))), blk.mr, tail, p.tail_vectors, p.tail_last,
                                   k0, k1, first, last)
                self.switch_rows(rest, row_rest, lambda row0, rows_left: self.emit_tile(
                    ops, row0, rows_left, tail, p.tail_vectors, p.tail_last, k0, k1, first, last))

    def switch_rows(self, rest: ir.Value, row_rest: ir.Value, emit) -> None:
        """The run-time number of rows ``rest`` (< mr) from ``row_rest`` on, as tiles of 4, 2 and 1
        rows (its binary digits): ``emit(row0, rows)`` for each that is set."""
        k = self.k
        b = k.b
        size = 1
        while size * 2 < self.blk.mr:
            size *= 2
        while size >= 1:
            with b.if_then(b.icmp_unsigned("!=", b.and_(rest, k.i64(size)), k.i64(0))):
                emit(b.add(row_rest, b.and_(rest, k.i64(-2 * size))), size)
            size //= 2

    def panel_group(self, rows: int) -> int:
        """Full panels a tile of ``rows`` (< mr) rows covers at once: enough independent
        accumulators to hide the FMA latency (a GEMV at batch 1 is one row), within the
        registers (vectors of ``b`` used by one row only fold into the FMAs)."""
        blk = self.blk
        group = max(1, min(blk.mr // rows, 4))
        while group > 1 and rows * blk.nv * group + (blk.nv * group if rows > 1 else 0) + 1 > self.k.registers:
            group -= 1
        return group

    # -- one micro-tile -------------------------------------------------------------------------
    def emit_tile(self, ops: Operands, row0, mr: int, j, nv: int, last_lanes: int, k0, k1, first, last) -> None:
        """Rows ``[row0, row0 + mr)`` x ``nv`` vectors from panel ``j`` on (whole panels, ``nv`` a
        multiple of the blocking's, or the tail panel, whose last vector has ``last_lanes`` valid
        lanes) over the reduction steps ``[k0, k1)``."""
        k, blk = self.k, self.blk
        b = k.b
        lanes = blk.lanes
        col0 = b.mul(j, k.i64(blk.nr))
        y_rows = [b.gep(ops.y, [b.add(b.mul(b.add(row0, k.i64(r)), k.i64(self.n)), col0)], inbounds=True)
                  for r in range(mr)]
        partial = last_lanes < lanes

        def y_load(r, v):
            if partial and v == nv - 1:
                return masked_load(k, y_rows[r], v * lanes, lanes, last_lanes)
            return k.vload(y_rows[r], v * lanes, lanes)

        slots = []
        for r in range(mr):
            row = []
            for v in range(nv):
                init = None if first is False else self.init_vector(ops, b.add(row0, k.i64(r)), col0, v, nv, last_lanes)
                if first is True:
                    value = init
                elif first is False:
                    value = y_load(r, v)
                else:
                    value = b.select(first, init, y_load(r, v))
                row.append(k.scalar_slot(value))
            slots.append(row)

        # the reduction: nv vectors of b (panel after panel where the tile covers several), one
        # broadcast of a per row
        if ops.packed:
            width = blk.nr if nv % blk.nv == 0 else nv * lanes   # whole panels, or the narrower tail
            panel_vectors = width // lanes
            panels = [b.gep(ops.b, [b.mul(b.add(j, k.i64(g)), k.i64(self.kk * blk.nr))], inbounds=True)
                      for g in range(-(-nv // panel_vectors))]
        else:
            width, panel_vectors = self.n, nv
            panels = [b.gep(ops.b, [col0], inbounds=True)]
        a_rows = [b.gep(ops.a, [b.mul(b.add(row0, k.i64(r)), k.i64(ops.a_row))], inbounds=True) for r in range(mr)]
        with k.loop(k1, start=k0, name="p") as p:
            at = b.mul(p, k.i64(width))
            bv = []
            for v in range(nv):
                panel, w = panels[v // panel_vectors], v % panel_vectors
                if not ops.packed and partial and v == nv - 1:
                    bv.append(masked_load(k, panel, b.add(at, k.i64(w * lanes)), lanes, last_lanes))
                else:
                    bv.append(k.vload(panel, b.add(at, k.i64(w * lanes)), lanes))
            for r in range(mr):
                s = k.splat(k.load(a_rows[r], b.mul(p, k.i64(ops.a_col))), lanes)
                for v in range(nv):
                    b.store(k.fma(s, bv[v], b.load(slots[r][v])), slots[r][v])

        for r in range(mr):
            for v in range(nv):
                value = b.load(slots[r][v])
                if self.vector_activation and last is not False:
                    done = activate(k, self.activation, value, self.params)
                    value = done if last is True else b.select(last, done, value)
                if partial and v == nv - 1:
                    masked_store(k, value, y_rows[r], v * lanes, last_lanes)
                else:
                    k.vstore(value, y_rows[r], v * lanes)

    def init_vector(self, ops: Operands, row, col0, v: int, nv: int, last_lanes: int) -> ir.Value:
        k, lanes = self.k, self.blk.lanes
        b = k.b
        init = ops.init
        if init.kind == "zero":
            return ir.Constant(self.vec, [0.0] * lanes)
        if init.kind == "row":
            return k.vload(init.ptr, b.add(col0, k.i64(v * lanes)), lanes)
        base = b.mul(row, k.i64(init.sm))
        if isinstance(init.sn, int) and init.sn == 0:
            value = k.splat(k.load(init.ptr, base), lanes)
        else:
            at = b.add(base, b.mul(b.add(col0, k.i64(v * lanes)), k.i64(init.sn)))
            if v == nv - 1 and last_lanes < lanes:
                value = masked_load(k, init.ptr, at, lanes, last_lanes)
            else:
                value = k.vload(init.ptr, at, lanes)
        if init.beta != 1.0:
            value = b.fmul(value, k.const_like(value, init.beta))
        return value

    # -- what needs whole rows ------------------------------------------------------------------
    def emit_row_epilogue(self, ops: Operands, m0, m1, j_lo, j_hi) -> None:
        """Scalar activations over the columns of panels ``[j_lo, j_hi)``; softmax over whole rows
        (the caller gives this kernel every panel when it fuses one)."""
        k = self.k
        b = k.b
        c_lo = b.mul(j_lo, k.i64(self.blk.nr))
        c_hi = b.mul(j_hi, k.i64(self.blk.nr))
        c_hi = b.select(b.icmp_signed("<", c_hi, k.i64(self.n)), c_hi, k.i64(self.n))
        with k.loop(m1, start=m0, name="er") as i:
            row = b.gep(ops.y, [b.mul(i, k.i64(self.n))], inbounds=True)
            if self.activation and not self.vector_activation:
                with k.loop(c_hi, start=c_lo, name="ea") as c:
                    k.store(activate(k, self.activation, k.load(row, c), self.params), row, c)
            if self.softmax:
                emit_softmax_row(k, row, row, k.i64(self.n), k.i64(1))


# -- masked vector memory access ------------------------------------------------------------------
def _mask(lanes: int, count: int) -> ir.Constant:
    return ir.Constant(ir.VectorType(I1, lanes), [1] * count + [0] * (lanes - count))


def _intrinsic(k: KernelBuilder, name: str, fn_type: ir.FunctionType) -> ir.Function:
    return k.module.globals.get(name) or ir.Function(k.module, fn_type, name)


def masked_load(k: KernelBuilder, ptr: ir.Value, offset: IntLike, lanes: int, count: int) -> ir.Value:
    """The first ``count`` of ``lanes`` floats at ``ptr + offset``, zeros in the others (nothing
    past them is read)."""
    vec = ir.VectorType(F32, lanes)
    fn = _intrinsic(k, f"llvm.masked.load.v{lanes}f32.p0",
                    ir.FunctionType(vec, [vec.as_pointer(), I32, ir.VectorType(I1, lanes), vec]))
    vptr = k.b.bitcast(k.b.gep(ptr, [k.i64(offset)], inbounds=True), vec.as_pointer())
    return k.b.call(fn, [vptr, ir.Constant(I32, 4), _mask(lanes, count), ir.Constant(vec, [0.0] * lanes)])


def masked_store(k: KernelBuilder, value: ir.Value, ptr: ir.Value, offset: IntLike, count: int) -> None:
    """The first ``count`` lanes of ``value`` to ``ptr + offset``."""
    vec = value.type
    fn = _intrinsic(k, f"llvm.masked.store.v{vec.count}f32.p0",
                    ir.FunctionType(ir.VoidType(), [vec, vec.as_pointer(), I32, ir.VectorType(I1, vec.count)]))
    vptr = k.b.bitcast(k.b.gep(ptr, [k.i64(offset)], inbounds=True), vec.as_pointer())
    k.b.call(fn, [value, vptr, ir.Constant(I32, 4), _mask(vec.count, count)])


# -- the kernel's outer split -------------------------------------------------------------------
def emit_split(k: KernelBuilder, gemm: Gemm, ops: Operands, rows: Dim, kk: int) -> None:
    """The whole GEMM as the kernel's parallel loop: over column panels (each thread reads only
    its share of ``b``), or over rows where a fused softmax needs whole rows or there are few
    panels."""
    p = gemm.panels
    if not gemm.softmax and p.count >= MIN_PANELS_TO_SPLIT:
        lo, hi = k.parallel_range(p.count, kk * gemm.blk.nr * _static_part(rows), scale=_dynamic_part(rows))
        gemm.emit(ops, k.i64(0), k.dim(rows), lo, hi)
    else:
        lo, hi = k.parallel_range(rows, kk * gemm.n)
        gemm.emit(ops, lo, hi, 0, p.count)


def _static_part(d: Dim) -> int:
    return dim_factors(d)[1]


def _dynamic_part(d: Dim) -> Dim:
    symbols = dim_factors(d)[0]
    return symbols[0] if symbols else 1
