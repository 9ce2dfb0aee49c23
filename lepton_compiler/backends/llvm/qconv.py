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

MAX_STACK_BYTES = 1 << 20
"""Largest staging buffer: it lives on the stack of the thread running the kernel (worker
threads may have small stacks); a layer whose single output row needs more is refused."""
MAX_STAGE_BYTES = MAX_STACK_BYTES
"""Largest image staged whole; a larger one is staged in bands of output rows."""
MAX_BAND_BYTES = 256 << 10
"""Largest band, when the image is staged in bands (a band stays in L2)."""
STAGE_SLACK = 64
"""Elements past the staged band (vector loads near its end)."""
MAX_ROW_BUFFER = 64 << 10
MAX_TILE = 12


def float_conv(node: Node) -> Node:
    """A detached float Conv with the node's shapes and conv attributes (for the window)."""
    keep = ("kernel_shape", "strides", "pads", "dilations", "group", "auto_pad")
    attrs = {a: v for a, v in node.attrs.items() if a in keep}
    values = [Value(f"{node.name}.{i}", TensorType("float32", v.type.shape)) for i, v in enumerate(node.inputs[:2])]
    return Node("Conv", node.name, values, [Value(f"{node.name}.conv", TensorType("float32", ()))], attrs)


VECTOR_WRITE_BACK = True
VECTOR_STAGING = True


def load_bytes(k: KernelBuilder, ptr: ir.Value, offset: ir.Value, count: int, vec: ir.VectorType) -> ir.Value:
    """``count`` bytes from ``ptr + offset`` as a 16-byte vector (the rest undefined)."""
    if count == vec.count:
        return vec_load(k, ptr, offset, vec)
    part = vec_load(k, ptr, offset, ir.VectorType(vec.element, count))
    return k.b.shuffle_vector(part, ir.Constant(part.type, ir.Undefined),
                              ir.Constant(ir.VectorType(ir.IntType(32), vec.count),
                                          [i if i < count else count for i in range(vec.count)]))


def first(k: KernelBuilder, v: ir.Value, count: int) -> ir.Value:
    """The first ``count`` elements of vector ``v``."""
    if count == v.type.count:
        return v
    return k.b.shuffle_vector(v, ir.Constant(v.type, ir.Undefined),
                              ir.Constant(ir.VectorType(ir.IntType(32), count), list(range(count))))


def transpose_bytes(k: KernelBuilder, rows: list) -> list:
    """16 vectors of 16 bytes (row ``r``) into 16 vectors (column ``j``): four rounds of
    interleaving row ``i`` with row ``i + 8`` (``punpcklbw`` / ``punpckhbw``)."""
    b = k.b
    mask_type = ir.VectorType(ir.IntType(32), 16)
    low = ir.Constant(mask_type, [v for i in range(8) for v in (i, i + 16)])
    high = ir.Constant(mask_type, [v for i in range(8, 16) for v in (i, i + 16)])
    for _ in range(4):
        rows = [b.shuffle_vector(rows[i // 2], rows[i // 2 + 8], low if i % 2 == 0 else high) for i in range(16)]
    return rows


class _DepthwiseDot:
    weight_registers = 1     # for choose_tile: a depthwise tap takes one weight vector per block


_DEPTHWISE = _DepthwiseDot()


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
        if not w.is_const or (bias is not None and not bias.is_const):
            raise NotLowerable("QConv needs constant weights and bias")
        if x.type.rank not in (3, 4):
            raise NotLowerable(f"{x.type.rank - 2}-D int8 convolution is not supported by the cpu backend")
        self.x, self.y = x, node.outputs[0]
        fconv = float_conv(node)
        self.conv_shape = infer_conv(fconv)[0].shape
        self.g = g = Geometry2D.of(node, x.type.shape[2:], conv_window(fconv))
        self.channels, self.out_channels = x.type.shape[1], w.type.shape[0]
        self.group = node.attr("group", 1)
        self.icg, self.ocg = self.channels // self.group, self.out_channels // self.group
        w4 = w.const.reshape(self.out_channels, self.icg, g.k_h, g.k_w).astype(np.int8)
        self.path = path = choose_path(k)
        self.lanes = path.lanes
        self.zp = int(node.attr("x_zero_point"))
        self.depthwise = self.group > 1 and self.icg == 1 and self.ocg == 1
        if self.depthwise:
            self._depthwise_layout(w4)
        else:
            self._layout(w4)
        self.epilogue = Epilogue(k, node, "x", w4, None if bias is None else bias.const, self.lanes,
                                 self.slots, self.ocpad)
        self.residual = self.epilogue.residual
        if self.residual is not None:   # offset of each padded slot's channel plane (padding: channel 0)
            self.conv_plane = shape_product(self.conv_shape[2:])
            offsets = np.zeros(self.ocpad, np.int64)
            offsets[self.slots] = np.arange(self.out_channels) * self.conv_plane
            self.residual_table = k.constant(f"{node.name}.residual_offsets", offsets)
        self.n = None
        self._bands()
        self.table = k.constant(f"{node.name}.offsets", self.offsets)

    # -- layout of the staged input and the groups --------------------------------------------
    def _units(self) -> int:
        """Groups of the convolution per *unit*: a unit is a dense convolution of its groups'
        channels with block-diagonal weights, so that few output channels per group still
        fill vectors. The count minimizing dot products plus epilogues wins."""
        g, lanes = self.g, self.lanes
        best = None
        for per in range(1, self.group + 1):
            units = -(-self.group // per)
            uic, uoc = per * self.icg, per * self.ocg
            by_channel = g.k_h * g.k_w * -(-uic // 4)
            by_column = uic * g.k_h * -(-g.k_w // 4) if g.d_w == 1 else by_channel
            cost = units * -(-uoc // lanes) * (min(by_channel, by_column) + 3)
            if best is None or (cost, units) < best[0]:
                best = ((cost, units), per)
        return best[1]

    def _layout(self, w4: np.ndarray) -> None:
        g, lanes = self.g, self.lanes
        per = self._units()
        self.units = -(-self.group // per)
        uic, uoc = per * self.icg, per * self.ocg
        self.uic, self.uoc = uic, uoc
        self.blocks_u = -(-uoc // lanes)
        self.uocp = self.blocks_u * lanes
        self.ocpad = self.units * self.uocp
        self.blocks_total = self.units * self.blocks_u
        o = np.arange(self.out_channels)
        self.slots = o // uoc * self.uocp + o % uoc
        by_channel = g.k_h * g.k_w * -(-uic // 4)
        by_column = uic * g.k_h * -(-g.k_w // 4)
        self.columns = g.d_w == 1 and by_column < by_channel
        # dense per-unit weights [unit][uoc][uic][kh][kw], block-diagonal
        dense = np.zeros((self.units * per, self.ocg, per, self.icg, g.k_h, g.k_w), np.int8)
        grouped = w4.reshape(self.group, self.ocg, self.icg, g.k_h, g.k_w)
        for gi in range(self.group):
            dense[gi, :, gi % per] = grouped[gi]
        dense = dense.reshape(self.units, per, self.ocg, per * self.icg, g.k_h, g.k_w).reshape(
            self.units, uoc, uic, g.k_h, g.k_w)
        if self.columns:
            quads = -(-g.k_w // 4)
            self.ucp = uic
            self.cstride = 1
            self.ws = max(g.p_left + g.in_w, (g.out_w - 1) * g.s_w + 4 * quads)
            wpad = np.zeros((self.units, uoc, uic, g.k_h, quads * 4), np.int8)
            wpad[..., :g.k_w] = dense
            wg = wpad.reshape(self.units, uoc, uic * g.k_h * quads, 4)
            self.offset_of = lambda hb: np.array([ci * hb * self.ws + kh * g.d_h * self.ws + 4 * q for ci in range(uic)
                                                  for kh in range(g.k_h) for q in range(quads)], np.int64)
        else:
            cp = -(-uic // 4) * 4
            self.ucp = cp
            self.cstride = self.units * cp
            self.ws = max(g.p_left + g.in_w, (g.out_w - 1) * g.s_w + (g.k_w - 1) * g.d_w + 1)
            wpad = np.zeros((self.units, uoc, cp, g.k_h, g.k_w), np.int8)
            wpad[:, :, :uic] = dense
            wg = wpad.reshape(self.units, uoc, cp // 4, 4, g.k_h, g.k_w).transpose(0, 1, 4, 5, 2, 3).reshape(
                self.units, uoc, -1, 4)
            cs = self.cstride
            self.offset_of = lambda hb: np.array([(kh * g.d_h * self.ws + kw * g.d_w) * cs + 4 * q
                                                  for kh in range(g.k_h) for kw in range(g.k_w)
                                                  for q in range(cp // 4)], np.int64)
        self.groups = wg.shape[2]
        self.staged_channels = self.units * self.ucp
        self.x_type, self.x_dtype, self.stage_value = self.path.x_type, self.path.x_dtype, self.path.stage_value
        packed = np.stack([self.path.pack(wg[u]) for u in range(self.units)])
        self.weights = self.k.constant(f"{self.node.name}.packed", packed)

    def _depthwise_layout(self, w4: np.ndarray) -> None:
        """One input channel per output channel: ``[Hs][Ws][C]`` staging (channels padded to
        whole vectors), each tap one vector multiply-add of ``lanes`` channels."""
        g, lanes = self.g, self.lanes
        self.units, self.ucp, self.columns = 1, 0, False
        self.blocks_total = self.blocks_u = -(-self.channels // lanes)
        self.ocpad = self.uocp = self.cstride = self.staged_channels = self.blocks_total * lanes
        self.slots = np.arange(self.out_channels)
        self.ws = max(g.p_left + g.in_w, (g.out_w - 1) * g.s_w + (g.k_w - 1) * g.d_w + 1)
        cs = self.cstride
        self.offset_of = lambda hb: np.array([(kh * g.d_h * self.ws + kw * g.d_w) * cs
                                              for kh in range(g.k_h) for kw in range(g.k_w)], np.int64)
        self.groups = g.k_h * g.k_w
        wd = np.zeros((self.groups, cs), np.int32)
        wd[:, :self.channels] = w4.reshape(self.channels, -1).T
        self.weights = self.k.constant(f"{self.node.name}.packed", wd)
        self.x_type, self.x_dtype, self.stage_value = ir.IntType(8), np.uint8, lambda k, byte: byte

    def staged_rows(self, out_rows: int) -> int:
        g = self.g
        return (out_rows - 1) * g.s_h + (g.k_h - 1) * g.d_h + 1

    def stage_bytes(self, out_rows: int) -> int:
        return (self.staged_rows(out_rows) * self.ws * self.staged_channels + STAGE_SLACK) * \
            np.dtype(self.x_dtype).itemsize

    def _bands(self) -> None:
        """Stage the whole image when it fits in ``MAX_STAGE_BYTES``, else bands of output
        rows (restaged per band, overlapping by the kernel's height) of at most ``MAX_BAND_BYTES``."""
        g = self.g
        self.banded = self.stage_bytes(g.out_h) > MAX_STAGE_BYTES
        if self.banded:
            if self.pooled:
                pnode = pool_node(self.node, TensorType("float32", self.conv_shape))
                p = pool_window(pnode)
                span = (p.kernel[0] - 1) * p.dilations[0] + 1 if len(p.kernel) == 2 else 1
                self.band_rows = min(span, g.out_h)
            else:
                self.band_rows = max((r for r in range(1, g.out_h + 1) if self.stage_bytes(r) <= MAX_BAND_BYTES),
                                     default=1)
            if self.stage_bytes(self.band_rows) > MAX_STACK_BYTES:
                raise NotLowerable(f"the int8 convolution's staged input ({self.stage_bytes(self.band_rows)} bytes "
                                   f"for {self.band_rows} output rows) exceeds the {MAX_STACK_BYTES} bytes "
                                   "the kernel stages on the stack")
        else:
            self.band_rows = g.out_h
        self.hb = self.staged_rows(self.band_rows)
        self.offsets = self.offset_of(self.hb)
        self.stage_size = self.hb * self.ws * self.staged_channels + STAGE_SLACK

    # -- staging ---------------------------------------------------------------------------------
    def staged_channel(self, c: ir.Value) -> ir.Value:
        """Where input channel ``c`` goes among the staged channels (units are padded)."""
        k, b = self.k, self.k.b
        if self.units == 1:
            return c
        uic = k.i64(self.uic)
        return b.add(b.mul(b.udiv(c, uic), k.i64(self.ucp)), b.urem(c, uic))

    def emit_stage(self, n: ir.Value, stage: ir.Value, org: ir.Value) -> None:
        """Stage the input rows that output rows ``org ..`` (a band of ``band_rows``) read."""
        k, g, b = self.k, self.g, self.k.b
        fill = self.stage_value(k, ir.Constant(ir.IntType(8), self.zp))
        with k.loop(self.stage_size, name="fill") as i:
            k.store(fill, stage, i)
        src = k.ptr(self.x)
        plane = g.in_h * g.in_w
        row0 = b.mul(org, k.i64(g.s_h))      # first staged row, in padded coordinates
        lo = b.sub(k.i64(g.p_top), row0)
        lo = b.select(b.icmp_signed(">", lo, k.i64(0)), lo, k.i64(0))
        hi = b.sub(k.i64(g.p_top + g.in_h), row0)
        hi = b.select(b.icmp_signed("<", hi, k.i64(self.hb)), hi, k.i64(self.hb))
        vector = not self.columns and self.units == 1 and g.in_w >= 8 and self.channels >= 16 and VECTOR_STAGING
        if vector:
            self.emit_stage_tiles(n, stage, row0, lo, hi)
        with k.loop(self.channels, start=self.channels // 16 * 16 if vector else 0, name="sc") as c:
            sc = self.staged_channel(c)
            with k.loop(hi, start=lo, name="sh") as j:
                ih = b.sub(b.add(row0, j), k.i64(g.p_top))
                row = b.gep(src, [b.add(b.mul(b.add(b.mul(n, k.i64(self.channels)), c), k.i64(plane)),
                                        b.mul(ih, k.i64(g.in_w)))])
                if self.columns:
                    at = b.add(b.mul(b.add(b.mul(sc, k.i64(self.hb)), j), k.i64(self.ws)), k.i64(g.p_left))
                    dst = b.gep(stage, [at])
                    with k.loop(g.in_w, name="sw") as iw:
                        k.store(self.stage_value(k, k.load(row, iw)), dst, iw)
                else:
                    at = b.add(b.mul(b.add(b.mul(j, k.i64(self.ws)), k.i64(g.p_left)), k.i64(self.cstride)), sc)
                    dst = b.gep(stage, [at])
                    with k.loop(g.in_w, name="sw") as iw:
                        k.store(self.stage_value(k, k.load(row, iw)), dst, b.mul(iw, k.i64(self.cstride)))

    def emit_stage_tiles(self, n, stage, row0, lo, hi) -> None:
        """The NHWC staging of whole blocks of 16 channels: tiles of 16 channels x 16 (or 8)
        columns transposed in registers, the last tile of a row overlapping the one before."""
        k, g, b = self.k, self.g, self.k.b
        width = 16 if g.in_w >= 16 else 8
        vec = ir.VectorType(ir.IntType(8), 16)
        wide = self.x_type.width != 8
        src = k.ptr(self.x)
        with k.loop(self.channels // 16, name="sb") as cb, k.loop(hi, start=lo, name="sh") as j:
            ih = b.sub(b.add(row0, j), k.i64(g.p_top))
            c0 = b.mul(cb, k.i64(16))
            first_row = b.add(b.mul(b.add(b.mul(n, k.i64(self.channels)), c0), k.i64(g.in_h * g.in_w)),
                              b.mul(ih, k.i64(g.in_w)))
            dst_row = b.add(b.mul(b.add(b.mul(j, k.i64(self.ws)), k.i64(g.p_left)), k.i64(self.cstride)), c0)
            with k.loop(-(-g.in_w // width), name="st") as t:
                w0 = b.mul(t, k.i64(width))
                w0 = b.select(b.icmp_signed(">", w0, k.i64(g.in_w - width)), k.i64(g.in_w - width), w0)
                rows = [load_bytes(k, src, b.add(first_row, b.add(k.i64(r * g.in_h * g.in_w), w0)), width, vec)
                        for r in range(16)]
                cols = transpose_bytes(k, rows)
                for i in range(width):
                    v = b.zext(cols[i], ir.VectorType(self.x_type, 16)) if wide else cols[i]
                    vec_store(k, v, stage, b.add(dst_row, b.mul(b.add(w0, k.i64(i)), k.i64(self.cstride))))

    # -- the reduction -----------------------------------------------------------------------------
    def base(self, p: ir.Value) -> ir.Value:
        """Element offset in the staged band (origin ``self.org``) of output position ``p`` (flattened oh, ow)."""
        k, g, b = self.k, self.g, self.k.b
        oh, ow = b.udiv(p, k.i64(g.out_w)), b.urem(p, k.i64(g.out_w))
        oh = b.sub(oh, self.org)
        return b.add(b.mul(oh, k.i64(g.s_h * self.ws * self.cstride)), b.mul(ow, k.i64(g.s_w * self.cstride)))

    def unit_shift(self, unit: ir.Value) -> ir.Value:
        """Element offset of a unit's first staged channel."""
        k = self.k
        step = self.ucp if not self.columns else self.ucp * self.hb * self.ws
        return k.b.mul(unit, k.i64(step))

    def emit_tile(self, stage, p0: ir.Value, width: int, unit: ir.Value, block0: ir.Value, blocks: int, dst,
                  row0: ir.Value, raw: bool = False) -> None:
        """Positions ``p0 .. p0+width`` x channel blocks ``block0 .. block0+blocks`` of ``unit`` into
        ``dst[(row0 + t) * ocpad + channel]``: finished, or the int32 accumulators if ``raw``."""
        k, b, path = self.k, self.k.b, self.path
        shift = self.unit_shift(unit)
        bases = [b.add(self.base(b.add(p0, k.i64(t))), shift) for t in range(width)]
        local = [b.add(block0, k.i64(j)) for j in range(blocks)]
        blocks_ir = [b.add(b.mul(unit, k.i64(self.blocks_u)), blk) for blk in local]
        acc = [[k.scalar_slot(self.epilogue.initial(blk)) for blk in blocks_ir] for _ in range(width)]
        lanes = self.lanes
        if self.depthwise:
            vx = ir.VectorType(self.x_type, lanes)
            with k.loop(self.groups, name="tap") as tap:
                off = k.load(self.table, tap)
                ws = [vec_load(k, self.weights, b.add(b.mul(tap, k.i64(self.ocpad)), b.mul(blk, k.i64(lanes))),
                               self.epilogue.acc_type) for blk in blocks_ir]
                for t in range(width):
                    for j, blk in enumerate(blocks_ir):
                        xv = vec_load(k, stage, b.add(b.add(bases[t], off), b.mul(blk, k.i64(lanes))), vx)
                        xv = b.zext(xv, self.epilogue.acc_type)
                        b.store(b.add(b.load(acc[t][j]), b.mul(xv, ws[j])), acc[t][j])
        else:
            four_l = 4 * lanes
            with k.loop(self.groups, name="grp") as grp:
                off = k.load(self.table, grp)
                wrow = b.mul(b.add(b.mul(unit, k.i64(self.groups)), grp), k.i64(self.blocks_u))
                ws = [path.load_w(k, self.weights, b.mul(b.add(wrow, blk), k.i64(four_l))) for blk in local]
                for t in range(width):
                    xv = path.load_x(k, stage, b.add(bases[t], off))
                    for j in range(blocks):
                        b.store(path.dot(k, b.load(acc[t][j]), xv, ws[j]), acc[t][j])
        res = self.residual_tile(p0, width, blocks_ir) if self.residual is not None and not raw else None
        for t in range(width):
            for j, blk in enumerate(blocks_ir):
                out = b.load(acc[t][j]) if raw else \
                    self.epilogue.finish(b.load(acc[t][j]), blk, None if res is None else res[t][j])
                at = b.add(b.mul(b.add(row0, k.i64(t)), k.i64(self.ocpad)), b.mul(blk, k.i64(lanes)))
                vec_store(k, out, dst, at)

    def residual_tile(self, p0: ir.Value, width: int, blocks_ir: list) -> list:
        """The residual at conv positions ``p0 .. p0+width`` of image ``self.n``, as ``[t][j]``
        vectors of ``lanes`` channels (block ``blocks_ir[j]``): per block, one run of ``width``
        bytes per channel (NCHW), transposed in registers."""
        k, b, lanes = self.k, self.k.b, self.lanes
        vec = ir.VectorType(ir.IntType(8), 16)
        src = k.ptr(self.residual)
        image = b.add(b.mul(self.n, k.i64(self.out_channels * self.conv_plane)), p0)
        out = [[None] * len(blocks_ir) for _ in range(width)]
        for j, blk in enumerate(blocks_ir):
            rows = [load_bytes(k, src, b.add(image, k.load(self.residual_table, b.add(b.mul(blk, k.i64(lanes)),
                                                                                      k.i64(lane)))), width, vec)
                    for lane in range(lanes)]
            cols = transpose_bytes(k, rows + [ir.Constant(vec, ir.Undefined)] * (16 - lanes))
            for t in range(width):
                out[t][j] = first(k, cols[t], lanes)
        return out

    def emit_range(self, stage, p0: ir.Value, length: int, dst, raw: bool = False) -> None:
        """Output positions ``p0 .. p0+length`` (all channels) into ``dst[position - p0][channel]``."""
        k, b = self.k, self.k.b
        tile, blocks = self.tile, self.tile_blocks
        with k.loop(self.units, name="unit") as unit, k.loop(self.blocks_u // blocks, name="og") as og:
            block0 = b.mul(og, k.i64(blocks))
            full = length // tile
            if full:
                with k.loop(full, name="tile") as t:
                    row0 = b.mul(t, k.i64(tile))
                    self.emit_tile(stage, b.add(p0, row0), tile, unit, block0, blocks, dst, row0, raw)
            if length % tile:
                row0 = k.i64(full * tile)
                self.emit_tile(stage, b.add(p0, row0), length % tile, unit, block0, blocks, dst, row0, raw)

    def slot(self, c: ir.Value) -> ir.Value:
        """Column of output channel ``c`` in a ``[position][ocpad]`` buffer."""
        k, b = self.k, self.k.b
        if self.units == 1:
            return c
        uoc = k.i64(self.uoc)
        return b.add(b.mul(b.udiv(c, uoc), k.i64(self.uocp)), b.urem(c, uoc))

    def write_out(self, n: ir.Value, src, p0: ir.Value, length, plane: int, most: int = 0) -> None:
        """``y[n, c, p0 + i] = src[i][slot(c)]`` for the real channels and ``i < length`` (an int,
        or an IR value of at most ``most``). A uint8 output goes by transposed 16 x 16 byte tiles."""
        k, b = self.k, self.k.b
        most = length if isinstance(length, int) else most
        if self.epilogue.uint8 and most >= 8 and VECTOR_WRITE_BACK:
            width = 16 if most >= 16 else 8
            short = b.icmp_signed("<", k.i64(length), k.i64(width))
            with b.if_else(short) as (then, otherwise):
                with then:
                    self.write_out_scalar(n, src, p0, length, plane)
                with otherwise:
                    self.write_out_tiles(n, src, p0, k.i64(length), plane, width)
            return
        self.write_out_scalar(n, src, p0, length, plane)

    def write_out_scalar(self, n, src, p0, length, plane) -> None:
        k, b = self.k, self.k.b
        y = k.ptr(self.y)
        with k.loop(self.out_channels, name="wc") as c:
            dst = b.gep(y, [b.add(b.mul(b.add(b.mul(n, k.i64(self.out_channels)), c), k.i64(plane)), p0)])
            col = self.slot(c)
            with k.loop(length, name="wp") as i:
                k.store(k.load(src, b.add(b.mul(i, k.i64(self.ocpad)), col)), dst, i)

    def write_out_tiles(self, n, src, p0, length: ir.Value, plane: int, width: int) -> None:
        """Tiles of ``width`` positions x 16 slots, transposed in registers into per-channel runs;
        the last tile of positions overlaps the one before it (``length >= width``)."""
        k, b = self.k, self.k.b
        y = k.ptr(self.y)
        channel_of = np.full(-(-self.ocpad // 16) * 16, -1, np.int64)
        channel_of[self.slots] = np.arange(self.out_channels)
        table = None if self.units == 1 else k.constant(f"{self.node.name}.channel_of", channel_of)
        tiles = b.udiv(b.add(length, k.i64(width - 1)), k.i64(width))
        vec = ir.VectorType(ir.IntType(8), 16)
        with k.loop(tiles, name="wt") as t:
            i0 = b.mul(t, k.i64(width))
            last = b.sub(length, k.i64(width))
            i0 = b.select(b.icmp_signed(">", i0, last), last, i0)
            with k.loop(len(channel_of) // 16, name="ws") as sb:
                rows = [load_bytes(k, src, b.add(b.mul(b.add(i0, k.i64(r)), k.i64(self.ocpad)),
                                                 b.mul(sb, k.i64(16))), 16, vec) for r in range(width)]
                cols = transpose_bytes(k, rows + [ir.Constant(vec, ir.Undefined)] * (16 - width))
                for j in range(16):
                    slot = b.add(b.mul(sb, k.i64(16)), k.i64(j))
                    c = slot if table is None else k.load(table, slot)
                    real = b.icmp_signed("<", c, k.i64(self.out_channels))
                    if table is not None:
                        real = b.and_(real, b.icmp_signed(">=", c, k.i64(0)))
                    with b.if_then(real):
                        at = b.add(b.add(b.mul(b.add(b.mul(n, k.i64(self.out_channels)), c), k.i64(plane)), p0), i0)
                        vec_store(k, first(k, cols[j], width), y, at)

    # -- the kernel ------------------------------------------------------------------------------
    def emit(self) -> None:
        k, g, b = self.k, self.g, self.k.b
        element = self.epilogue.element
        esize = 1 if self.epilogue.uint8 else 4
        registers = 32 if self.lanes == 16 else 16
        path = _DEPTHWISE if self.depthwise else self.path
        self.tile, self.tile_blocks = choose_tile(path, self.blocks_u, g.out_w if self.pooled else
                                                  g.out_h * g.out_w, registers)
        stage = k.stack_array(self.x_type, self.stage_size)
        work = g.out_h * g.out_w * self.out_channels * self.groups * (1 if self.depthwise else 4)
        self.org = k.i64(0)
        if self.pooled:
            self.emit_pooled(stage, element, work)
            return
        rows = max(1, min(g.out_h, MAX_ROW_BUFFER // (g.out_w * self.ocpad * esize)))
        if self.banded:
            rows = min(rows, self.band_rows)
        buf = k.stack_array(element, rows * g.out_w * self.ocpad + 16)
        plane = g.out_h * g.out_w
        with k.parallel_loop(self.x.type.shape[0], work, name="img") as n:
            self.n = n
            if not self.banded:
                self.emit_stage(n, stage, self.org)

            def part(r0: ir.Value, count: int) -> None:
                if self.banded:
                    self.org = r0
                    self.emit_stage(n, stage, r0)
                p0 = b.mul(r0, k.i64(g.out_w))
                self.emit_range(stage, p0, count * g.out_w, buf)
                self.write_out(n, buf, p0, count * g.out_w, plane)

            if g.out_h // rows:
                with k.loop(g.out_h // rows, name="chunk") as r:
                    part(b.mul(r, k.i64(rows)), rows)
            if g.out_h % rows:
                part(k.i64(g.out_h // rows * rows), g.out_h % rows)

    @property
    def pooled(self) -> bool:
        return self.node.attr("pool_kernel") is not None

    def pool_raw(self) -> bool:
        """Whether to max-pool the int32 accumulators and requantize only the pooled values:
        exact for a uint8 output, whose requantization is non-decreasing in the accumulator
        when every multiplier is positive, and no residual (its term differs per position)."""
        ep = self.epilogue
        return ep.uint8 and ep.residual is None and bool(np.all(ep.factor_values > 0))

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
        esize = 1 if ep.uint8 else 4
        chunk = max(1, min(p.out_h, MAX_ROW_BUFFER // (p.out_w * self.ocpad * esize)))
        pooled = k.stack_array(element, chunk * p.out_w * self.ocpad + 16)
        lowest = ir.Constant(row_type, [-(2 ** 31)] * self.lanes) if raw else ep.lowest()
        with k.parallel_loop(self.x.type.shape[0], work, name="img") as n:
            self.n = n
            if not self.banded:
                self.emit_stage(n, stage, self.org)
            chunks = -(-p.out_h // chunk)
            with k.loop(chunks, name="pc") as pc:
                r0 = b.mul(pc, k.i64(chunk))
                r1 = b.add(r0, k.i64(chunk))
                r1 = b.select(b.icmp_signed("<", r1, k.i64(p.out_h)), r1, k.i64(p.out_h))
                with k.loop(r1, start=r0, name="ph") as ph:
                    pooled_row = b.gep(pooled, [b.mul(b.sub(ph, r0), k.i64(p.out_w * self.ocpad))])
                    self.emit_pooled_row(n, stage, p, ph, rows, pooled_row, row_type, lowest, raw)
                count = b.mul(b.sub(r1, r0), k.i64(p.out_w))
                self.write_out(n, pooled, b.mul(r0, k.i64(p.out_w)), count, plane, chunk * p.out_w)

    def emit_pooled_row(self, n, stage, p, ph, rows, pooled_row, row_type, lowest, raw) -> None:
        """Pooled row ``ph`` (all channels) into ``pooled_row[pw][slot]``."""
        k, g, b, ep = self.k, self.g, self.k.b, self.epilogue
        if self.banded:   # the conv rows of this pooled row, from the first one that exists
            top = p.input_row(k, ph, 0)
            self.org = b.select(b.icmp_signed(">", top, k.i64(0)), top, k.i64(0))
            self.emit_stage(n, stage, self.org)
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


@lowering("QConv")
def lower_qconv(k: KernelBuilder, node: Node) -> None:
    QConvKernel(k, node).emit()

