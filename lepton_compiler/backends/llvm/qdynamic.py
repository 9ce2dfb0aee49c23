"""``DynQGemm``: a float matrix quantized at run time, times constant int8 weights (``ops/dynamic_quant.py``).

``y[m, n] = act(fp32(fp32(acc[m, n]) * fp32(a_scale * b_scale[n])) + bias[n])`` with
``acc[m, n] = sum_k (q[m, k] - a_zp) * b[n, k]``, where ``(q, a_scale, a_zp)`` is
``DynamicQuantizeLinear`` of the **whole** ``a`` (every leading dim is a row: ``[B, S, K]`` is
``B * S`` rows). The kernel, per call:

1. **Range.** min and max over all of ``a`` (vector compares, NaN ignored), then ``a_scale`` and
   ``a_zp`` in ONNX Runtime's fp32 order. With threads, every thread computes the range of the
   whole tensor before it touches its rows: the scale is the same bits on every thread and no
   thread waits for another (the range reads ``M * K`` floats, the product does ``M * K * N``
   multiply-adds).
2. **Rows.** The thread's rows, up to ``MAX_MACRO`` at a time (a macro tile): they are quantized
   once (``saturate(rint(x / a_scale) + a_zp)``, a division as ONNX Runtime does) into a stack
   buffer in the dot-product path's element type (u8, or i16 on the pmaddwd path), ``K`` padded
   to a multiple of four. Then for each group of ``B`` column blocks, whose packed weights are
   contiguous over all of ``K`` (so they stay in cache while every row of the macro tile uses
   them), register tiles of rows x ``B`` blocks accumulate over the groups of four with
   ``int8dot``'s paths (VNNI, pmaddwd, portable).
3. **Epilogue.** The accumulator starts at ``a_zp * (-sum_k b[n, k])`` (the column sums are
   compile-time constants, the zero point is the run-time one), so it ends as the exact sum.
   Then ``fp32(acc) * (a_scale * b_scale[n])``, ``+ bias[n]`` (two roundings, no FMA), the
   activation, and the row is written out.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from ...ir import Node, shape_product
from .activations import VECTOR_ACTIVATIONS, activate
from .codegen import F32, I8, KernelBuilder
from .int8dot import I32, choose_path, vec_load, vec_store
from .registry import NotLowerable, lowering

FLT_MAX = float(np.finfo(np.float32).max)
MAX_TILE = 8
MAX_MACRO = 96
STAGE_BYTES = 1 << 17
"""Rows quantized at once (a macro tile) and the stack buffer they may take: each weight block is
read from memory once per macro tile, not once per register tile."""


def choose_tile(path, blocks_total: int, registers: int) -> tuple[int, int]:
    """(rows, column blocks) per register tile: the accumulators plus one group's weights and a
    broadcast fit in the vector registers."""
    rows_cap = MAX_TILE
    best = (1, 1)
    for blocks in (4, 3, 2, 1):
        if blocks_total % blocks:
            continue
        budget = registers - blocks * path.weight_registers - 2
        tile = max(1, min(rows_cap, budget // blocks))
        if tile * blocks > best[0] * best[1]:
            best = (tile, blocks)
    return best


class DynQGemmKernel:
    def __init__(self, k: KernelBuilder, node: Node):
        self.k, self.node = k, node
        a, w = node.inputs[0], node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if not w.is_const or (bias is not None and not bias.is_const):
            raise NotLowerable("DynQGemm needs a constant b and bias")
        self.a, self.y = a, node.outputs[0]
        self.n, self.kk = w.type.shape
        self.rows_dim = shape_product(a.type.shape[:-1])
        self.groups = -(-self.kk // 4)
        self.kp = self.groups * 4
        wpad = np.zeros((self.n, self.kp), np.int8)
        wpad[:, :self.kk] = w.const
        self.path = path = choose_path(k)
        self.lanes = lanes = path.lanes
        self.blocks_total = -(-self.n // lanes)
        self.npad = self.blocks_total * lanes
        self.packed = path.pack(wpad.reshape(self.n, self.groups, 4))   # [G, blocks, 4 * lanes]
        negsum = np.zeros(self.npad, np.int32)
        negsum[:self.n] = -wpad.astype(np.int64).sum(axis=1)
        self.negsum = k.constant(f"{node.name}.colsum", negsum)
        scales = np.ones(self.npad, np.float32)
        scales[:self.n] = np.broadcast_to(np.asarray(node.attr("b_scales"), np.float32), (self.n,))
        self.b_scales = k.constant(f"{node.name}.b_scales", scales)
        self.bias = None
        if bias is not None:
            padded = np.zeros(self.npad, np.float32)
            padded[:self.n] = np.asarray(bias.const, np.float32).ravel()
            self.bias = k.constant(f"{node.name}.bias", padded)
        self.activation = node.attr("activation", "")
        self.activation_params = list(node.attr("activation_params", []))
        row_bytes = self.kp * path.x_type.width // 8
        self.tile, self.tile_blocks = choose_tile(path, self.blocks_total, 32 if lanes == 16 else 16)
        # Each group of tile_blocks column blocks contiguous over all of K: [blocks / tb, G, tb, 4 * lanes].
        tb = self.tile_blocks
        packed = self.packed.reshape(self.groups, self.blocks_total // tb, tb, 4 * lanes).transpose(1, 0, 2, 3)
        self.weights = k.constant(f"{node.name}.packed", np.ascontiguousarray(packed))
        self.macro = max(1, min(MAX_MACRO, STAGE_BYTES // row_bytes))
        if self.macro >= self.tile:
            self.macro -= self.macro % self.tile
        self.vf = ir.VectorType(F32, lanes)
        self.vi = ir.VectorType(I32, lanes)

    # -- 1. the range and the quantization parameters ----------------------------------------------
    def emit_range(self) -> tuple[ir.Value, ir.Value]:
        """(min, max) over every element of ``a``; NaN never replaces a bound."""
        k, b = self.k, self.k.b
        width = 16
        vf = ir.VectorType(F32, width)
        a = k.ptr(self.a)
        total = k.dim(shape_product(self.a.type.shape))
        lo = k.scalar_slot(ir.Constant(vf, [FLT_MAX] * width))
        hi = k.scalar_slot(ir.Constant(vf, [-FLT_MAX] * width))
        chunks = b.udiv(total, k.i64(width))
        with k.loop(chunks, name="rng") as i:
            x = k.vload(a, b.mul(i, k.i64(width)), width)
            low, high = b.load(lo), b.load(hi)
            b.store(b.select(b.fcmp_ordered("<", x, low), x, low), lo)
            b.store(b.select(b.fcmp_ordered(">", x, high), x, high), hi)
        lo_s = k.scalar_slot(k.f32(FLT_MAX))
        hi_s = k.scalar_slot(k.f32(-FLT_MAX))
        low, high = b.load(lo), b.load(hi)
        for lane in range(width):
            index = ir.Constant(I32, lane)
            for vec, slot, cmp in ((low, lo_s, "<"), (high, hi_s, ">")):
                x, cur = b.extract_element(vec, index), b.load(slot)
                b.store(b.select(b.fcmp_ordered(cmp, x, cur), x, cur), slot)
        with k.loop(total, start=b.mul(chunks, k.i64(width)), name="rngt") as i:
            x = k.load(a, i)
            for slot, cmp in ((lo_s, "<"), (hi_s, ">")):
                cur = b.load(slot)
                b.store(b.select(b.fcmp_ordered(cmp, x, cur), x, cur), slot)
        return b.load(lo_s), b.load(hi_s)

    def emit_params(self) -> tuple[ir.Value, ir.Value]:
        """(a_scale, a_zp as a float): ONNX Runtime's ``GetQuantizationParameter`` step by step."""
        k, b = self.k, self.k.b
        zero = k.f32(0.0)
        lo, hi = self.emit_range()
        lo = b.select(b.fcmp_ordered("<", zero, lo), zero, lo)            # std::min(min, 0.0f)
        hi = b.select(b.fcmp_ordered("<", hi, zero), zero, hi)            # std::max(max, 0.0f)
        scale = b.select(b.fcmp_ordered("==", hi, lo), k.f32(1.0), b.fdiv(b.fsub(hi, lo), k.f32(255.0)))
        initial = b.fsub(zero, b.fdiv(lo, scale))
        clamped = b.select(b.fcmp_ordered("<", initial, k.f32(255.0)), initial, k.f32(255.0))
        clamped = b.select(b.fcmp_ordered("<", clamped, zero), zero, clamped)
        return scale, k.intrinsic("llvm.rint", clamped)

    # -- 2. rows -----------------------------------------------------------------------------------
    def emit_quantize_rows(self, m0: ir.Value, rows: ir.Value, stage: ir.Value, scale, zp) -> None:
        """Rows ``m0 .. m0 + rows`` of ``a`` quantized into ``stage`` (``kp`` elements a row)."""
        k, b, path = self.k, self.k.b, self.path
        a = k.ptr(self.a)
        lo, hi = k.f32(0.0), k.f32(255.0)
        fill = path.stage_value(k, b.trunc(b.fptosi(zp, I32), I8))
        with k.loop(rows, name="qr") as t:
            row = b.gep(a, [b.mul(b.add(m0, t), k.i64(self.kk))])
            base = b.mul(t, k.i64(self.kp))
            with k.loop(self.kk, name="qa") as i:
                v = b.fadd(k.intrinsic("llvm.rint", b.fdiv(k.load(row, i), scale)), zp)
                v = b.select(b.fcmp_ordered("<", v, lo), lo, v)
                v = b.select(b.fcmp_ordered(">", v, hi), hi, v)
                v = b.select(b.fcmp_unordered("uno", v, v), lo, v)
                k.store(path.stage_value(k, b.trunc(b.fptosi(v, I32), I8)), stage, b.add(base, i))
            for i in range(self.kk, self.kp):
                k.store(fill, stage, b.add(base, k.i64(i)))

    def finish(self, acc: ir.Value, block: ir.Value, scale: ir.Value) -> ir.Value:
        k, b = self.k, self.k.b
        at = b.mul(block, k.i64(self.lanes))
        factor = b.fmul(k.splat(scale, self.lanes), vec_load(k, self.b_scales, at, self.vf))   # fp32(a_scale * b_scale)
        y = b.fmul(b.sitofp(acc, self.vf), factor)
        if self.bias is not None:
            y = b.fadd(y, vec_load(k, self.bias, at, self.vf))
        if not self.activation:
            return y
        if self.activation in VECTOR_ACTIVATIONS:
            return activate(k, self.activation, y, self.activation_params)
        for lane in range(self.lanes):
            index = ir.Constant(I32, lane)
            y = b.insert_element(y, activate(k, self.activation, b.extract_element(y, index),
                                             self.activation_params), index)
        return y

    def store_block(self, y: ir.Value, row: ir.Value, block: ir.Value, spill: ir.Value) -> None:
        """Output vector ``y`` of row ``row``, column block ``block``: stored whole, or (the last,
        partial block) through ``spill``, only the columns that exist."""
        k, b = self.k, self.k.b
        dst = b.gep(k.ptr(self.y), [b.add(b.mul(row, k.i64(self.n)), b.mul(block, k.i64(self.lanes)))])
        full = self.n // self.lanes
        if full == self.blocks_total:
            vec_store(k, y, dst, 0)
            return
        with b.if_else(b.icmp_signed("<", block, k.i64(full))) as (whole, partial):
            with whole:
                vec_store(k, y, dst, 0)
            with partial:
                vec_store(k, y, spill, 0)
                for j in range(self.n - full * self.lanes):
                    k.store(k.load(spill, j), dst, j)

    def emit_micro(self, row0: ir.Value, srow: ir.Value, rows: int, blocks: list, stage, spill, scale, zp_vec):
        """``rows`` rows (output row ``row0``, staged row ``srow``) x ``blocks`` in registers."""
        k, b, path = self.k, self.k.b, self.path
        four_l = 4 * self.lanes
        inits = [b.mul(zp_vec, vec_load(k, self.negsum, b.mul(blk, k.i64(self.lanes)), self.vi)) for blk in blocks]
        acc = [[k.scalar_slot(init) for init in inits] for _ in range(rows)]
        bases = [b.mul(b.add(srow, k.i64(t)), k.i64(self.kp)) for t in range(rows)]
        tb = self.tile_blocks
        wbase = b.mul(b.udiv(blocks[0], k.i64(tb)), k.i64(self.groups * tb))
        with k.loop(self.groups, name="grp") as grp:
            wrow = b.add(wbase, b.mul(grp, k.i64(tb)))
            ws = [path.load_w(k, self.weights, b.mul(b.add(wrow, k.i64(j)), k.i64(four_l))) for j in range(len(blocks))]
            off = b.mul(grp, k.i64(4))
            for t in range(rows):
                xv = path.load_x(k, stage, b.add(bases[t], off))
                for j in range(len(blocks)):
                    b.store(path.dot(k, b.load(acc[t][j]), xv, ws[j]), acc[t][j])
        for t in range(rows):
            for j, blk in enumerate(blocks):
                self.store_block(self.finish(b.load(acc[t][j]), blk, scale), b.add(row0, k.i64(t)), blk, spill)

    def emit_macro(self, m0: ir.Value, rows: ir.Value, stage, spill, scale, zp, zp_vec) -> None:
        """Rows ``m0 .. m0 + rows`` (at most ``macro``): quantized once, then each group of column
        blocks runs over all of them while its weights stay in cache."""
        k, b = self.k, self.k.b
        self.emit_quantize_rows(m0, rows, stage, scale, zp)
        tile = self.tile
        tiles = b.udiv(rows, k.i64(tile))
        with k.loop(self.blocks_total // self.tile_blocks, name="ng") as ng:
            blocks = [b.add(b.mul(ng, k.i64(self.tile_blocks)), k.i64(j)) for j in range(self.tile_blocks)]
            with k.loop(tiles, name="mt") as t:
                srow = b.mul(t, k.i64(tile))
                self.emit_micro(b.add(m0, srow), srow, tile, blocks, stage, spill, scale, zp_vec)
            if tile > 1:
                with k.loop(rows, start=b.mul(tiles, k.i64(tile)), name="mr") as r:
                    self.emit_micro(b.add(m0, r), r, 1, blocks, stage, spill, scale, zp_vec)

    def emit(self) -> None:
        k, b = self.k, self.k.b
        scale, zp = self.emit_params()
        zp_vec = k.splat(b.fptosi(zp, I32), self.lanes)
        macro = self.macro
        stage = k.stack_array(self.path.x_type, macro * self.kp)
        spill = k.stack_array(F32, self.lanes)
        # This thread's rows (the parallel loop of KernelBuilder, by hand), then macro tiles of them.
        stop = k.dim(self.rows_dim)
        chunk = b.udiv(b.add(stop, b.sub(k.parts, k.i64(1))), k.parts)
        lo = b.mul(k.part, chunk)
        hi = b.add(lo, chunk)
        hi = b.select(b.icmp_signed("<", hi, stop), hi, stop)
        k.parallel, k.work_per_iteration, k.parallel_extent = True, self.n * self.kk, self.rows_dim
        count = b.select(b.icmp_signed("<", lo, hi), b.sub(hi, lo), k.i64(0))
        with k.loop(b.udiv(b.add(count, k.i64(macro - 1)), k.i64(macro)), name="mac") as mi:
            m0 = b.add(lo, b.mul(mi, k.i64(macro)))
            left = b.sub(hi, m0)
            rows = b.select(b.icmp_signed("<", left, k.i64(macro)), left, k.i64(macro))
            self.emit_macro(m0, rows, stage, spill, scale, zp, zp_vec)


@lowering("DynQGemm")
def lower_dyn_qgemm(k: KernelBuilder, node: Node) -> None:
    DynQGemmKernel(k, node).emit()
