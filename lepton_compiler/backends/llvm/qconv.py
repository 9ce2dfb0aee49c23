"""``QConv``: int8 convolution on the dot-product paths of ``int8dot.py``.

Per image, the input is first *staged* in a stack buffer with its padding made real
(filled with the activation zero point, which contributes nothing once the
compile-time compensation ``-x_zp * sum(w)`` is in the accumulator) and with four
reduction values side by side, so that every group of four is one 32-bit load:

``channels`` layout  ``[Hs][Ws][C/4*4]`` (NHWC): a group is four input channels at
                     one tap; any stride and dilation.
``columns`` layout   ``[C][Hs][Ws]`` (NCHW, padded): a group is four consecutive
                     kernel columns of one (channel, kernel row), the weights past
                     the kernel's width zero; for few channels (the first layer).

The layout with fewer groups wins. The reduction then runs over a compile-time
table of group offsets: a tile of ``T`` output positions x ``B`` blocks of output
channels stays in registers, each group loads ``T`` broadcast activations and ``B``
weight vectors (weights packed at compile time as ``[group][block][4 * lanes]``).
Requantized vectors go to a ``[position][channel]`` stack buffer, max pooling (if
fused) reduces those rows, and the result is written out in NCHW.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from ...ir import Node, TensorType, Value, shape_product
from ...ops.nn import conv_window, infer_conv, infer_maxpool, pool_window
from ...ops.fused import pool_node
from .codegen import KernelBuilder
from .conv import Geometry2D
from .int8dot import Epilogue, choose_path, vec_load, vec_store
from .registry import NotLowerable, lowering

MAX_STAGE_BYTES = 1 << 20
"""Largest staged image: it lives on the stack of the thread running the kernel (worker
threads may have small stacks); a larger input is refused with NotLowerable."""
MAX_ROW_BUFFER = 64 << 10
MAX_TILE = 12


def float_conv(node: Node) -> Node:
    """A detached float Conv with the node's shapes and conv attributes (for the window)."""
    keep = ("kernel_shape", "strides", "pads", "dilations", "group", "auto_pad")
    attrs = {a: v for a, v in node.attrs.items() if a in keep}
    values = [Value(f"{node.name}.{i}", TensorType("float32", v.type.shape)) for i, v in enumerate(node.inputs[:2])]
    return Node("Conv", node.name, values, [Value(f"{node.name}.conv", TensorType("float32", ()))], attrs)


def choose_tile(path, blocks_total: int, positions: int, registers: int) -> tuple[int, int]:
    """(positions, channel blocks) per register tile: accumulators plus one group's weights
    and a broadcast must fit in the vector registers."""
    best = (1, 1)
    for blocks in (4, 3, 2, 1):
        if blocks_total % blocks:
            continue
        budget = registers - blocks * path.weight_registers - 2
        tile = max(1, min(positions, budget // blocks, MAX_TILE))
        if tile * blocks > best[0] * best[1]:
            best = (tile, blocks)
    return best


class QConvKernel:
    def __init__(self, k: KernelBuilder, node: Node):
        self.k, self.node = k, node
        x, w = node.inputs[0], node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if node.attr("group", 1) != 1:
            raise NotLowerable("grouped int8 convolution (group > 1) is not supported by the cpu backend")
        if not w.is_const or (bias is not None and not bias.is_const):
            raise NotLowerable("QConv needs constant weights and bias")
        if x.type.rank not in (3, 4):
            raise NotLowerable(f"{x.type.rank - 2}-D int8 convolution is not supported by the cpu backend")
        self.x, self.y = x, node.outputs[0]
        fconv = float_conv(node)
        self.conv_shape = infer_conv(fconv)[0].shape
        self.g = g = Geometry2D.of(node, x.type.shape[2:], conv_window(fconv))
        self.channels, self.out_channels = x.type.shape[1], w.type.shape[0]
        w4 = w.const.reshape(self.out_channels, self.channels, g.k_h, g.k_w).astype(np.int8)
        self.path = path = choose_path(k)
        self.lanes = path.lanes
        self.blocks_total = -(-self.out_channels // self.lanes)
        self.ocpad = self.blocks_total * self.lanes
        self.epilogue = Epilogue(k, node, "x", w4, None if bias is None else bias.const, self.lanes)
        self.zp = int(node.attr("x_zero_point"))
        self._layout(w4)
        self.weights = k.constant(f"{node.name}.packed", path.pack(self.wg))
        self.table = k.constant(f"{node.name}.offsets", self.offsets)

    # -- layout of the staged input and the groups --------------------------------------------
    def _layout(self, w4: np.ndarray) -> None:
        g, c = self.g, self.channels
        need_h = (g.out_h - 1) * g.s_h + (g.k_h - 1) * g.d_h + 1
        self.hs = max(g.p_top + g.in_h, need_h)
        by_channel = g.k_h * g.k_w * -(-c // 4)
        by_column = c * g.k_h * -(-g.k_w // 4)
        self.columns = g.d_w == 1 and by_column < by_channel
        oc = self.out_channels
        if self.columns:
            quads = -(-g.k_w // 4)
            self.ws = max(g.p_left + g.in_w, (g.out_w - 1) * g.s_w + 4 * quads)
            self.cstride = 1
            wpad = np.zeros((oc, c, g.k_h, quads * 4), np.int8)
            wpad[..., :g.k_w] = w4
            self.wg = wpad.reshape(oc, c * g.k_h * quads, 4)
            self.offsets = np.array([ci * self.hs * self.ws + kh * g.d_h * self.ws + 4 * q
                                     for ci in range(c) for kh in range(g.k_h) for q in range(quads)], np.int64)
            self.stage_size = c * self.hs * self.ws
        else:
            cp = -(-c // 4) * 4
            self.ws = max(g.p_left + g.in_w, (g.out_w - 1) * g.s_w + (g.k_w - 1) * g.d_w + 1)
            self.cstride = cp
            wpad = np.zeros((oc, cp, g.k_h, g.k_w), np.int8)
            wpad[:, :c] = w4
            self.wg = wpad.reshape(oc, cp // 4, 4, g.k_h, g.k_w).transpose(0, 3, 4, 1, 2).reshape(oc, -1, 4)
            self.offsets = np.array([(kh * g.d_h * self.ws + kw * g.d_w) * cp + 4 * q
                                     for kh in range(g.k_h) for kw in range(g.k_w) for q in range(cp // 4)], np.int64)
            self.stage_size = self.hs * self.ws * cp
        self.groups = len(self.offsets)
        if self.stage_size * np.dtype(self.path.x_dtype).itemsize > MAX_STAGE_BYTES:
            raise NotLowerable(f"the int8 convolution's staged input ({self.stage_size} values) exceeds the "
                               f"{MAX_STAGE_BYTES >> 20} MiB the kernel stages on the stack")

    # -- staging ---------------------------------------------------------------------------------
    def emit_stage(self, n: ir.Value, stage: ir.Value) -> None:
        k, g, b = self.k, self.g, self.k.b
        fill = self.path.stage_value(k, ir.Constant(ir.IntType(8), self.zp))
        with k.loop(self.stage_size, name="fill") as i:
            k.store(fill, stage, i)
        src = k.ptr(self.x)
        plane = g.in_h * g.in_w
        with k.loop(self.channels, name="sc") as c, k.loop(g.in_h, name="sh") as ih:
            row = b.gep(src, [b.add(b.mul(b.add(b.mul(n, k.i64(self.channels)), c), k.i64(plane)),
                                    b.mul(ih, k.i64(g.in_w)))])
            if self.columns:
                at = b.add(b.mul(b.add(b.mul(c, k.i64(self.hs)), b.add(ih, k.i64(g.p_top))), k.i64(self.ws)),
                           k.i64(g.p_left))
                dst = b.gep(stage, [at])
                with k.loop(g.in_w, name="sw") as iw:
                    k.store(self.path.stage_value(k, k.load(row, iw)), dst, iw)
            else:
                at = b.add(b.mul(b.add(b.mul(b.add(ih, k.i64(g.p_top)), k.i64(self.ws)), k.i64(g.p_left)),
                                 k.i64(self.cstride)), c)
                dst = b.gep(stage, [at])
                with k.loop(g.in_w, name="sw") as iw:
                    k.store(self.path.stage_value(k, k.load(row, iw)), dst, b.mul(iw, k.i64(self.cstride)))

    # -- the reduction -----------------------------------------------------------------------------
    def base(self, p: ir.Value) -> ir.Value:
        """Element offset in the staged image of output position ``p`` (flattened oh, ow)."""
        k, g, b = self.k, self.g, self.k.b
        oh, ow = b.udiv(p, k.i64(g.out_w)), b.urem(p, k.i64(g.out_w))
        return b.add(b.mul(oh, k.i64(g.s_h * self.ws * self.cstride)), b.mul(ow, k.i64(g.s_w * self.cstride)))

    def emit_tile(self, stage, p0: ir.Value, width: int, block0: ir.Value, blocks: int, dst, row0: ir.Value,
                  raw: bool = False) -> None:
        """Positions ``p0 .. p0+width`` x channel blocks ``block0 .. block0+blocks`` into
        ``dst[(row0 + t) * ocpad + channel]``: finished, or the int32 accumulators if ``raw``."""
        k, b, path = self.k, self.k.b, self.path
        bases = [self.base(b.add(p0, k.i64(t))) for t in range(width)]
        blocks_ir = [b.add(block0, k.i64(j)) for j in range(blocks)]
        acc = [[k.scalar_slot(self.epilogue.initial(blk)) for blk in blocks_ir] for _ in range(width)]
        four_l = 4 * self.lanes
        with k.loop(self.groups, name="grp") as grp:
            off = k.load(self.table, grp)
            wrow = b.mul(grp, k.i64(self.blocks_total))
            ws = [path.load_w(k, self.weights, b.mul(b.add(wrow, blk), k.i64(four_l))) for blk in blocks_ir]
            for t in range(width):
                xv = path.load_x(k, stage, b.add(bases[t], off))
                for j in range(blocks):
                    b.store(path.dot(k, b.load(acc[t][j]), xv, ws[j]), acc[t][j])
        for t in range(width):
            for j, blk in enumerate(blocks_ir):
                out = b.load(acc[t][j]) if raw else self.epilogue.finish(b.load(acc[t][j]), blk)
                at = b.add(b.mul(b.add(row0, k.i64(t)), k.i64(self.ocpad)), b.mul(blk, k.i64(self.lanes)))
                vec_store(k, out, dst, at)

    def emit_range(self, stage, p0: ir.Value, length: int, dst, raw: bool = False) -> None:
        """Output positions ``p0 .. p0+length`` (all channels) into ``dst[position - p0][channel]``."""
        k, b = self.k, self.k.b
        tile, blocks = self.tile, self.tile_blocks
        with k.loop(self.blocks_total // blocks, name="og") as og:
            block0 = b.mul(og, k.i64(blocks))
            full = length // tile
            if full:
                with k.loop(full, name="tile") as t:
                    row0 = b.mul(t, k.i64(tile))
                    self.emit_tile(stage, b.add(p0, row0), tile, block0, blocks, dst, row0, raw)
            if length % tile:
                row0 = k.i64(full * tile)
                self.emit_tile(stage, b.add(p0, row0), length % tile, block0, blocks, dst, row0, raw)

    def write_out(self, n: ir.Value, src, p0: ir.Value, length: int, plane: int) -> None:
        """``y[n, c, p0 + i] = src[i][c]`` for the real channels."""
        k, b = self.k, self.k.b
        y = k.ptr(self.y)
        with k.loop(self.out_channels, name="wc") as c:
            dst = b.gep(y, [b.add(b.mul(b.add(b.mul(n, k.i64(self.out_channels)), c), k.i64(plane)), p0)])
            with k.loop(length, name="wp") as i:
                k.store(k.load(src, b.add(b.mul(i, k.i64(self.ocpad)), c)), dst, i)

    # -- the kernel ------------------------------------------------------------------------------
    def emit(self) -> None:
        k, g, b = self.k, self.g, self.k.b
        element = self.epilogue.element
        esize = 1 if self.epilogue.uint8 else 4
        self.tile, self.tile_blocks = choose_tile(self.path, self.blocks_total, g.out_w if self.pooled else
                                                  g.out_h * g.out_w, 32 if self.lanes == 16 else 16)
        stage = k.stack_array(self.path.x_type, self.stage_size)
        work = g.out_h * g.out_w * self.out_channels * self.groups * 4
        if self.pooled:
            self.emit_pooled(stage, element, work)
            return
        rows = max(1, min(g.out_h, MAX_ROW_BUFFER // (g.out_w * self.ocpad * esize)))
        buf = k.stack_array(element, rows * g.out_w * self.ocpad)
        plane = g.out_h * g.out_w
        with k.parallel_loop(self.x.type.shape[0], work, name="img") as n:
            self.emit_stage(n, stage)
            chunk = rows * g.out_w
            if g.out_h // rows:
                with k.loop(g.out_h // rows, name="chunk") as r:
                    p0 = b.mul(r, k.i64(chunk))
                    self.emit_range(stage, p0, chunk, buf)
                    self.write_out(n, buf, p0, chunk, plane)
            if g.out_h % rows:
                p0 = k.i64(g.out_h // rows * chunk)
                self.emit_range(stage, p0, g.out_h % rows * g.out_w, buf)
                self.write_out(n, buf, p0, g.out_h % rows * g.out_w, plane)

    @property
    def pooled(self) -> bool:
        return self.node.attr("pool_kernel") is not None

    def pool_raw(self) -> bool:
        """Whether to max-pool the int32 accumulators and requantize only the pooled values:
        exact for a uint8 output, whose requantization is non-decreasing in the accumulator
        when every multiplier is positive."""
        ep = self.epilogue
        return ep.uint8 and bool(np.all(ep.factor_values > 0))

    def emit_pooled(self, stage, element, work) -> None:
        k, g, b = self.k, self.g, self.k.b
        conv_type = TensorType("float32", self.conv_shape)
        pnode = pool_node(self.node, conv_type)
        p = Geometry2D.of(self.node, self.conv_shape[2:], pool_window(pnode))
        pooled_shape = infer_maxpool(pnode)[0].shape
        plane = shape_product(pooled_shape[2:])
        ep = self.epilogue
        raw = self.pool_raw()
        row_type = ep.acc_type if raw else ep.out_type
        rows = [k.stack_array(row_type.element, g.out_w * self.ocpad) for _ in range(p.k_h)]
        pooled_row = k.stack_array(element, p.out_w * self.ocpad)
        lowest = ir.Constant(row_type, [-(2 ** 31)] * self.lanes) if raw else ep.lowest()
        with k.parallel_loop(self.x.type.shape[0], work, name="img") as n:
            self.emit_stage(n, stage)
            with k.loop(p.out_h, name="ph") as ph:
                valid = []
                for pkh in range(p.k_h):
                    oh = p.input_row(k, ph, pkh)
                    ok = k.in_range(oh, p.in_h)
                    valid.append(ok)
                    with b.if_then(ok):
                        self.emit_range(stage, b.mul(oh, k.i64(g.out_w)), g.out_w, rows[pkh], raw)
                with k.loop(p.out_w, name="pw") as pw:
                    for j in range(self.blocks_total):
                        best = k.scalar_slot(lowest)
                        for pkh in range(p.k_h):
                            with b.if_then(valid[pkh]):
                                for pkw in range(p.k_w):
                                    col = b.add(b.mul(pw, k.i64(p.s_w)), k.i64(pkw * p.d_w - p.p_left))
                                    with b.if_then(k.in_range(col, p.in_w)):
                                        at = b.add(b.mul(col, k.i64(self.ocpad)), k.i64(j * self.lanes))
                                        v = vec_load(k, rows[pkh], at, row_type)
                                        b.store(k.intrinsic("llvm.smax", b.load(best), v) if raw
                                                else ep.vmax(b.load(best), v), best)
                        value = b.load(best)
                        if raw:
                            value = ep.finish(value, k.i64(j))
                        vec_store(k, value, pooled_row, b.add(b.mul(pw, k.i64(self.ocpad)), k.i64(j * self.lanes)))
                self.write_out(n, pooled_row, b.mul(ph, k.i64(p.out_w)), p.out_w, plane)


@lowering("QConv")
def lower_qconv(k: KernelBuilder, node: Node) -> None:
    QConvKernel(k, node).emit()

