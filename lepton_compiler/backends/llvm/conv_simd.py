"""Register-blocked convolution with explicit vectors, for CPUs with SIMD units.

Output channels are packed in blocks of ``lanes`` (the vector width: 16 floats
for AVX-512, 8 for AVX2, 4 for SSE/NEON); weights are repacked at compile time
as ``[oc_block][ic][kh][kw][lanes]``, zero-padded. For one output row, a tile
of ``tile`` positions x ``blocks`` channel blocks of accumulators stays in
registers for the whole reduction over input channels and kernel taps: each
input value is loaded once, broadcast, and multiply-added into ``blocks``
vectors. Tiles in the middle of the row, whose taps are never padding, run in
a loop; edge tiles are unrolled with the padded taps skipped at compile time.

Finished rows (bias and, where it can, the activation applied in registers)
go to a stack buffer laid out ``[ow][channel]``; max pooling reduces those
buffers with vector max, and the result is written out channel by channel in
NCHW. The full conv output of a pooled layer never reaches memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from ...ir import Node, shape_product
from ...ops.fused import conv_output_type, pool_node
from ...ops.nn import pool_window
from .activations import VECTOR_ACTIVATIONS, activate
from .codegen import F32, KernelBuilder
from .conv import Geometry2D, conv_parts

MAX_TILE = {32: 12, 16: 6}  # positions per tile, by vector register count


@dataclass(frozen=True)
class Blocking:
    lanes: int       # floats per vector
    blocks: int      # channel blocks computed together (each input broadcast feeds this many FMAs)
    tile: int        # output positions per tile
    oc_blocks: int   # channel blocks in total (output channels padded up to a multiple of lanes)

    @property
    def group_width(self) -> int:
        return self.blocks * self.lanes


def choose_blocking(out_channels: int, out_w: int, lanes: int, registers: int) -> Blocking:
    """The tile (positions x channel blocks) with the most accumulators that fit in registers:
    FMA latency needs about 8 independent chains in flight, and each broadcast input then
    feeds ``blocks`` of them."""
    oc_blocks = -(-out_channels // lanes)
    budget = registers - 4  # weights, a broadcast, spare
    best = None
    for blocks in (b for b in (4, 2, 1) if oc_blocks % b == 0):
        tile = max(1, min(out_w, budget // blocks, MAX_TILE.get(registers, 6)))
        if best is None or tile * blocks > best.tile * best.blocks:
            best = Blocking(lanes, blocks, tile, oc_blocks)
    return best


def simd_supported(node: Node, lanes: int) -> bool:
    """Whether the vector kernel handles this conv (else the direct kernel does)."""
    if lanes < 4 or node.attr("group", 1) != 1 or len(node.inputs[0].type.shape) not in (3, 4):
        return False
    if not node.inputs[1].is_const or (len(node.inputs) > 2 and node.inputs[2] is not None and not node.inputs[2].is_const):
        return False
    activation = node.attr("activation", "")
    residual = len(node.inputs) > 3 and node.inputs[3] is not None
    pooled = node.attr("pool_kernel") is not None
    if pooled and (residual or (activation and activation not in VECTOR_ACTIVATIONS)):
        return False
    return True


def pack_weights(w: np.ndarray, lanes: int) -> np.ndarray:
    """[OC, IC, KH, KW] (or 1-D) -> [OC/lanes, IC, KH, KW, lanes], zero-padded."""
    w4 = w.reshape(w.shape[:2] + (1,) * (4 - w.ndim) + w.shape[2:]) if w.ndim < 4 else w
    oc, ic, kh, kw = w4.shape
    blocks = -(-oc // lanes)
    padded = np.zeros((blocks * lanes, ic, kh, kw), np.float32)
    padded[:oc] = w4
    return np.ascontiguousarray(padded.reshape(blocks, lanes, ic, kh, kw).transpose(0, 2, 3, 4, 1))


def pack_bias(bias, out_channels: int, lanes: int) -> np.ndarray:
    padded = np.zeros(-(-out_channels // lanes) * lanes, np.float32)
    if bias is not None:
        padded[:out_channels] = bias
    return padded


class SimdConv:
    """Emits one FusedConv/Conv with the blocked vector kernel."""

    def __init__(self, k: KernelBuilder, node: Node, lanes: int, registers: int):
        self.k, self.node = k, node
        self.parts, self.g = conv_parts(node)
        self.out_channels = self.parts.w.type.shape[0]
        self.channels = self.parts.x.type.shape[1]
        self.blk = choose_blocking(self.out_channels, self.g.out_w, lanes, registers)
        self.vec = ir.VectorType(F32, lanes)
        self.weights = k.constant(f"{node.name}.packed", pack_weights(self.parts.w.const, lanes))
        bias = self.parts.bias.const if self.parts.bias is not None else None
        self.bias = k.constant(f"{node.name}.bias", pack_bias(bias, self.out_channels, lanes))
        activation = self.parts.activation
        self.late_epilogue = self.parts.residual is not None or (activation and activation not in VECTOR_ACTIVATIONS)

    # -- one conv row into a [ow][group_width] buffer ---------------------------------------------
    def emit_row(self, n: ir.Value, group: ir.Value, oh: ir.Value, dst: ir.Value) -> None:
        g, blk = self.g, self.blk
        lo, hi = self.interior()
        start = 0
        if lo > 0:
            self.emit_tiles(n, group, oh, dst, 0, lo)
            start = lo
        count = (hi - lo) // blk.tile if hi > lo else 0
        if count:
            with self.k.loop(count, name="tile") as t:
                ow0 = self.k.b.add(self.k.i64(lo), self.k.b.mul(t, self.k.i64(blk.tile)))
                self.emit_tile(n, group, oh, dst, ow0, blk.tile, interior=True)
            start = lo + count * blk.tile
        if start < g.out_w:
            self.emit_tiles(n, group, oh, dst, start, g.out_w)

    def interior(self) -> tuple[int, int]:
        """Output columns ``[lo, hi)`` whose every tap reads real input (no padding)."""
        g = self.g
        lo = -(-g.p_left // g.s_w)
        last = g.in_w - 1 - (g.k_w - 1) * g.d_w + g.p_left
        hi = last // g.s_w + 1 if last >= 0 else 0
        return min(lo, g.out_w), max(min(hi, g.out_w), min(lo, g.out_w))

    def emit_tiles(self, n, group, oh, dst, start: int, stop: int) -> None:
        for ow0 in range(start, stop, self.blk.tile):
            self.emit_tile(n, group, oh, dst, self.k.i64(ow0), min(self.blk.tile, stop - ow0), interior=False,
                           static_ow0=ow0)

    def emit_tile(self, n, group, oh, dst, ow0: ir.Value, width: int, interior: bool, static_ow0: int = 0) -> None:
        k, g, blk = self.k, self.g, self.blk
        b = k.b
        gw = blk.group_width
        first_block = b.mul(group, k.i64(blk.blocks))
        acc = [[k.scalar_slot(k.vload(self.bias, b.mul(b.add(first_block, k.i64(j)), k.i64(blk.lanes)), blk.lanes))
                for j in range(blk.blocks)] for _ in range(width)]
        taps = g.k_h * g.k_w
        with k.loop(self.channels, name="ic") as ic:
            for kh in range(g.k_h):
                ih = g.input_row(k, oh, kh)
                with b.if_then(k.in_range(ih, g.in_h)):
                    src = b.gep(k.ptr(self.parts.x), [k.linear([n, ic, ih, 0], [None, self.channels, g.in_h, g.in_w])])
                    for kw in range(g.k_w):
                        weights = []
                        for j in range(blk.blocks):
                            block = b.add(first_block, k.i64(j))
                            at = b.mul(b.add(b.mul(b.add(b.mul(block, k.i64(self.channels)), ic), k.i64(taps)),
                                             k.i64(kh * g.k_w + kw)), k.i64(blk.lanes))
                            weights.append(k.vload(self.weights, at, blk.lanes))
                        for t in range(width):
                            off = t * g.s_w + kw * g.d_w - g.p_left
                            if interior:
                                col = b.add(b.mul(ow0, k.i64(g.s_w)), k.i64(off))
                            else:
                                col_static = static_ow0 * g.s_w + off
                                if not 0 <= col_static < g.in_w:
                                    continue  # padding
                                col = k.i64(col_static)
                            xv = k.splat(k.load(src, col), blk.lanes)
                            for j in range(blk.blocks):
                                b.store(k.fma(xv, weights[j], b.load(acc[t][j])), acc[t][j])
        for t in range(width):
            for j in range(blk.blocks):
                value = b.load(acc[t][j])
                if not self.late_epilogue:
                    value = activate(k, self.parts.activation, value, self.parts.activation_params)
                k.vstore(value, dst, b.add(b.mul(b.add(ow0, k.i64(t)), k.i64(gw)), k.i64(j * blk.lanes)))

    # -- writing rows out --------------------------------------------------------------------------
    def store_row(self, n, group, row_index, src, out_h: int, out_w: int, residual_row=None) -> None:
        """``out[n, c, row, :] = src[:, c - first]`` for the group's channels (with the late epilogue)."""
        k, blk = self.k, self.blk
        b = k.b
        y = k.ptr(self.node.outputs[0])
        first = b.mul(group, k.i64(blk.group_width))
        with k.loop(blk.group_width, name="c") as c:
            channel = b.add(first, c)
            with b.if_then(b.icmp_signed("<", channel, k.i64(self.out_channels))):
                dst = b.gep(y, [k.linear([n, channel, row_index, 0], [None, self.out_channels, out_h, out_w])])
                with k.loop(out_w, name="w") as w:
                    value = k.load(src, b.add(b.mul(w, k.i64(blk.group_width)), c))
                    if self.late_epilogue:
                        value = self.late(n, channel, row_index, w, value)
                    k.store(value, dst, w)

    def late(self, n, channel, oh, ow, value):
        """Residual add and activation, per element, for what cannot be done in registers."""
        k = self.k
        b = k.b
        residual = self.parts.residual
        if residual is not None:
            from .elementwise import broadcast_strides
            shape = self.parts.conv_shape
            strides = broadcast_strides(k, residual.type.shape, shape)
            index = [n, channel] + ([oh] if len(shape) == 4 else []) + [ow]
            at = k.i64(0)
            for i, s in zip(index, strides):
                at = b.add(at, b.mul(i, k.i64(s)))
            value = b.fadd(value, k.load(k.ptr(residual), at))
        return activate(k, self.parts.activation, value, self.parts.activation_params)

    # -- the kernel --------------------------------------------------------------------------------
    def emit(self) -> None:
        k, g, blk = self.k, self.g, self.blk
        groups = -(-blk.oc_blocks // blk.blocks)
        pooled = self.node.attr("pool_kernel") is not None
        extent = shape_product([self.parts.x.type.shape[0], groups])
        work = g.out_h * g.out_w * blk.group_width * self.channels * g.k_h * g.k_w
        b = k.b
        if not pooled:
            row = k.stack_array(F32, g.out_w * blk.group_width)
            with k.parallel_loop(extent, work) as i:
                n, grp = b.udiv(i, k.i64(groups)), b.urem(i, k.i64(groups))
                with k.loop(g.out_h, name="oh") as oh:
                    self.emit_row(n, grp, oh, row)
                    self.store_row(n, grp, oh, row, g.out_h, g.out_w)
            return
        p = Geometry2D.of(self.node, self.parts.conv_shape[2:],
                          pool_window(pool_node(self.node, conv_output_type(self.node))))
        rows = [k.stack_array(F32, g.out_w * blk.group_width) for _ in range(p.k_h)]
        pooled_row = k.stack_array(F32, p.out_w * blk.group_width)
        with k.parallel_loop(extent, work) as i:
            n, grp = b.udiv(i, k.i64(groups)), b.urem(i, k.i64(groups))
            with k.loop(p.out_h, name="ph") as ph:
                self.emit_pooled_row(p, rows, pooled_row, n, grp, ph)

    def emit_pooled_row(self, p: Geometry2D, rows, pooled_row, n, grp, ph) -> None:
        """The conv rows of one pooling window, then their max into one pooled row."""
        k = self.k
        b = k.b
        # Rows a window shares with the previous one (pool stride below the window, no dilation)
        # are copied from that window's buffers instead of being computed again: a 3x3, stride-2
        # pool computes each conv row once instead of 1.5 times.
        reuse = p.k_h - p.s_h if p.s_h < p.k_h and p.d_h == 1 else 0
        valid = [k.in_range(p.input_row(k, ph, pkh), p.in_h) for pkh in range(p.k_h)]
        if reuse:
            with b.if_else(b.icmp_signed("==", ph, k.i64(0))) as (first, later):
                with first:
                    for pkh in range(reuse):
                        with b.if_then(valid[pkh]):
                            self.emit_row(n, grp, p.input_row(k, ph, pkh), rows[pkh])
                with later:
                    size = self.g.out_w * self.blk.group_width
                    for pkh in range(reuse):
                        with b.if_then(valid[pkh]):
                            with k.loop(size // self.blk.lanes, name="keep") as i:
                                at = b.mul(i, k.i64(self.blk.lanes))
                                k.vstore(k.vload(rows[pkh + p.s_h], at, self.blk.lanes), rows[pkh], at)
        for pkh in range(reuse, p.k_h):
            with b.if_then(valid[pkh]):
                self.emit_row(n, grp, p.input_row(k, ph, pkh), rows[pkh])
        self.emit_pool(p, rows, valid, pooled_row)
        self.store_row(n, grp, ph, pooled_row, p.out_h, p.out_w)

    def emit_pool(self, p: Geometry2D, rows, valid, out) -> None:
        """``out[pw] = max`` over the window's valid rows and columns, one vector per channel block."""
        k, blk = self.k, self.blk
        b = k.b
        gw = blk.group_width
        with k.loop(p.out_w, name="pw") as pw:
            for j in range(blk.blocks):
                best = k.scalar_slot(ir.Constant(self.vec, [float("-inf")] * blk.lanes))
                for pkh in range(p.k_h):
                    with b.if_then(valid[pkh]):
                        for pkw in range(p.k_w):
                            col = b.add(b.mul(pw, k.i64(p.s_w)), k.i64(pkw * p.d_w - p.p_left))
                            with b.if_then(k.in_range(col, p.in_w)):
                                v = k.vload(rows[pkh], b.add(b.mul(col, k.i64(gw)), k.i64(j * blk.lanes)), blk.lanes)
                                b.store(k.max(b.load(best), v), best)
                k.vstore(b.load(best), out, b.add(b.mul(pw, k.i64(gw)), k.i64(j * blk.lanes)))
