"""Convolution vectorized over output positions (NCHW rows), for the layers where blocking over
output channels does not pay: depthwise and other grouped convs, layers with few output
channels, 1x1 convs over a whole plane, narrow (few input channel) strided stems.

A vector holds ``L`` consecutive outputs of one row (``L`` floats: 16 with AVX-512, 8 with AVX2,
4 with SSE/NEON). A block of ``R`` output channels (of one group) x ``H`` output rows x ``V``
vectors of accumulators stays in registers for the whole reduction; per input channel and kernel
tap, each input row the block reads is loaded once per vector (stride 2: two loads and one
even-lane shuffle) and multiply-added, with a broadcast weight, into every accumulator that reads
it: ``R`` channels x the rows whose window covers it. Weights are repacked at compile time as
``[group][channel block][ic][kh][kw][R]``, zero-padded, so the ``R`` broadcasts of a tap are
adjacent.

Columns: tiles of ``V * L`` outputs whose taps never read padding run in a loop; the tiles at
the two ends of a row are unrolled at compile time, each vector's lanes that read padding (or
lie past the row) masked off with constant masks (masked loads read nothing they are not asked
to, so a row at the end of a buffer is safe). Rows: blocks of ``H`` rows in a loop, an input row
outside the image skips its loads and products; the last ``out_h % H`` rows are one more block.
A 1x1, stride-1, unpadded conv is one row of ``OH * OW`` positions.

Epilogue in registers: the bias is the accumulators' initial value; a residual of the output's
shape is added, then the activation, and the vectors are stored (the last one of a row masked).
Output channels past the layer's (the padded ``R`` block) are computed and not stored.
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

I1 = ir.IntType(1)
I32 = ir.IntType(32)


@dataclass(frozen=True)
class SpatialBlocking:
    lanes: int   # L: outputs per vector
    R: int       # output channels per block
    H: int       # output rows per block
    V: int       # vectors per row in a tile

    @property
    def tile(self) -> int:
        return self.V * self.lanes


def flat_geometry(g: Geometry2D) -> Geometry2D:
    """A 1x1, stride-1, unpadded conv as one row over the whole plane (else ``g``)."""
    if (g.k_h, g.k_w, g.s_h, g.s_w, g.p_top, g.p_left) == (1, 1, 1, 1, 0, 0) and \
            (g.out_h, g.out_w) == (g.in_h, g.in_w):
        n = g.in_h * g.in_w
        return Geometry2D(1, n, 1, n, 1, 1, 1, 1, 1, 1, 0, 0)
    return g


def distinct_rows(g: Geometry2D, H: int) -> int:
    return len({h * g.s_h + kh * g.d_h for h in range(H) for kh in range(g.k_h)})


def block_cost(g: Geometry2D, icg: int, ocg: int, groups: int, L: int, R: int, H: int, V: int) -> float:
    """Estimated cycles of the layer (per image) with this blocking. Per block and input channel:
    every FMA reads its broadcast weight from memory (LLVM hoists the broadcasts out of the loops
    and spills them), so the loads (those weights plus the input vectors; stride 2: two loads and a
    shuffle per vector) over two ports bound the time; plus loop overheads (each input row the
    block reads has its own channel loop: rows x 6 cycles, fitted to measured 3x3 layers, which
    ran faster with two vectors than with two rows) and the epilogue. The block
    count includes what padding the channels, rows and columns to ``R``, ``H`` and ``V * L`` wastes."""
    ls = 1 if g.s_w == 1 else 3
    rows = distinct_rows(g, H)
    fma = R * H * V * g.k_h * g.k_w
    loads = fma + V * ls * rows * g.k_w
    vec_row = -(-g.out_w // L)
    blocks = groups * -(-ocg // R) * -(-g.out_h // H) * -(-vec_row // V)
    return blocks * (icg * (loads / 2 + 6 * rows) + R * H * V + 4)  # each input row: a loop of its own


def simd_cost(node: Node, lanes: int, registers: int) -> float:
    """The same estimate for ``conv_simd.SimdConv`` (vectors over output channels): per tile and
    input channel, the broadcast inputs and the weight vectors over two load ports (or the FMAs
    where more), then a scalar transposing store per output element."""
    from .conv_simd import choose_blocking

    parts, g = conv_parts(node)
    out_channels, channels = parts.w.type.shape[0], parts.x.type.shape[1]
    blk = choose_blocking(out_channels, g.out_w, lanes, registers)
    groups = -(-blk.oc_blocks // blk.blocks)
    taps = g.k_h * g.k_w
    tiles = -(-g.out_w // blk.tile)
    fma, loads = blk.tile * blk.blocks * taps, blk.tile * taps + blk.blocks * taps
    return groups * g.out_h * (tiles * channels * (max(fma, loads) / 2 + 3) + g.out_w * blk.group_width)


def choose_spatial_blocking(g: Geometry2D, icg: int, ocg: int, groups: int, lanes: int,
                            registers: int) -> SpatialBlocking:
    L = lanes
    while L > 4 and L // 2 >= g.out_w:
        L //= 2  # a row narrower than half a vector: half-width vectors, same instruction count
    budget = 24 if registers >= 32 else 11
    vec_row = -(-g.out_w // L)
    best, best_cost = None, None
    # Measured on Zen 5: 3x3 layers ran 15-20% faster with 8 channels x 2 vectors than with 16 x 1,
    # while 1x1 and 7x7 layers favoured 16 channels (each weight broadcast folded into one FMA).
    max_r = 8 if 1 < g.k_w <= 3 else 16
    for R in range(1, min(ocg, max_r) + 1):
        for H in range(1, min(g.out_h, 8) + 1):
            for V in range(1, min(vec_row, 6) + 1):
                if R * H * V > budget or V * (2 if g.s_w == 2 else 1) + R * H * V > registers - 1:
                    continue
                penalty = 1.0
                if registers >= 32 and icg == 1 and R * H * V + V * (2 if g.s_w == 2 else 1) + \
                        R * g.k_h * g.k_w + 6 > registers:
                    penalty = 1.5  # depthwise: LLVM keeps the taps' broadcast weights in registers too
                if icg == 1 and H > 6:
                    penalty = 1.5  # depthwise 3x3 16x16 (and 56x56): 6 rows ran faster than 8 (measured)
                if distinct_rows(g, H) * g.k_w * R * H * V > 4096:
                    continue  # code size
                cost = block_cost(g, icg, ocg, groups, L, R, H, V) * penalty
                if best_cost is None or cost < best_cost - 1e-9:
                    best, best_cost = SpatialBlocking(L, R, H, V), cost
    return best


def spatial_supported(node: Node, lanes: int) -> bool:
    """Whether this kernel handles the conv: 1-D or 2-D, constant weights and bias, column stride
    1 or 2, a vector activation, a residual only of the output's own shape, no fused pooling."""
    x, w = node.inputs[0], node.inputs[1]
    if lanes < 4 or len(x.type.shape) not in (3, 4) or not w.is_const:
        return False
    if len(node.inputs) > 2 and node.inputs[2] is not None and not node.inputs[2].is_const:
        return False
    activation = node.attr("activation", "")
    if activation and activation not in VECTOR_ACTIVATIONS:
        return False
    parts, g = conv_parts(node)
    if g.s_w not in (1, 2):
        return False
    if parts.residual is not None and tuple(parts.residual.type.shape) != tuple(parts.conv_shape):
        return False
    if node.attr("pool_kernel") is not None:
        p = pool_geometry(node, parts)
        if parts.residual is not None or p.s_w not in (1, 2) or band_bytes(g, p, 16, lanes, 1) > MAX_BAND_BYTES:
            return False
    return g.out_h > 0 and g.out_w > 0


MAX_BAND_BYTES = 128 * 1024
"""The stack buffer of a pooled layer's conv rows stays below this."""
MAX_PHASE_BYTES = 64 * 1024
"""Stride 2: the even/odd split input rows of a block, when they fit (else shuffles per tap)."""


def pool_geometry(node: Node, parts) -> Geometry2D:
    return Geometry2D.of(node, parts.conv_shape[2:], pool_window(pool_node(node, conv_output_type(node))))


def band_shape(g: Geometry2D, p: Geometry2D, lanes: int, P: int) -> tuple[int, int]:
    """(rows, width) of the band buffer for ``P`` pooled rows."""
    rows = (P - 1) * p.s_h + (p.k_h - 1) * p.d_h + 1
    right = max(0, (p.out_w - 1) * p.s_w + (p.k_w - 1) * p.d_w - p.p_left - (g.out_w - 1))
    return rows, p.p_left + g.out_w + right + 2 * lanes


def band_bytes(g: Geometry2D, p: Geometry2D, R: int, lanes: int, P: int) -> int:
    rows, width = band_shape(g, p, lanes, P)
    return 4 * R * rows * width


def band_pooled_rows(g: Geometry2D, p: Geometry2D, R: int, lanes: int) -> int:
    """Pooled rows per band: up to 8, evenly split, within ``MAX_BAND_BYTES``."""
    bands = -(-p.out_h // 8)
    P = -(-p.out_h // bands)
    while P > 1 and band_bytes(g, p, R, lanes, P) > MAX_BAND_BYTES:
        P -= 1
    return P


def spatial_cost(node: Node, lanes: int, registers: int) -> float:
    parts, g = conv_parts(node)
    pooled = node.attr("pool_kernel") is not None
    g = g if pooled else flat_geometry(g)
    group = node.attr("group", 1)
    icg, ocg = parts.x.type.shape[1] // group, parts.w.type.shape[0] // group
    blk = choose_spatial_blocking(g, icg, ocg, group, lanes, registers)
    cost = block_cost(g, icg, ocg, group, blk.lanes, blk.R, blk.H, blk.V)
    if pooled:  # bands recompute the rows they share
        p = pool_geometry(node, parts)
        P = band_pooled_rows(g, p, blk.R, blk.lanes)
        rows, _ = band_shape(g, p, blk.lanes, P)
        cost *= rows * -(-p.out_h // P) / g.out_h
    return cost


def pack_spatial_weights(w: np.ndarray, group: int, R: int) -> np.ndarray:
    """[OC, ICg, KH, KW] (or 1-D) -> [group][ceil(OCg/R)][ICg][KH][KW][R], zero-padded."""
    w4 = w.reshape(w.shape[:2] + (1,) * (4 - w.ndim) + w.shape[2:]) if w.ndim < 4 else w
    oc, icg, kh, kw = w4.shape
    ocg = oc // group
    blocks = -(-ocg // R)
    padded = np.zeros((group, blocks * R, icg, kh, kw), np.float32)
    padded[:, :ocg] = w4.reshape(group, ocg, icg, kh, kw)
    packed = padded.reshape(group, blocks, R, icg, kh, kw).transpose(0, 1, 3, 4, 5, 2)
    return np.ascontiguousarray(packed).reshape(-1)


def pack_spatial_bias(bias, out_channels: int, group: int, R: int) -> np.ndarray:
    ocg = out_channels // group
    blocks = -(-ocg // R)
    padded = np.zeros((group, blocks * R), np.float32)
    if bias is not None:
        padded[:, :ocg] = np.asarray(bias, np.float32).reshape(group, ocg)
    return padded.reshape(-1)


def _intrinsic(k: KernelBuilder, name: str, fnty: ir.FunctionType):
    fn = k.module.globals.get(name)
    return fn if fn is not None else ir.Function(k.module, fnty, name)


def masked_load(k: KernelBuilder, ptr, offset, mask: list[bool], L: int) -> ir.Value:
    """``L`` floats from ``ptr + offset``, the lanes off in the constant ``mask`` zero and not read."""
    vec = ir.VectorType(F32, L)
    if all(mask):
        return k.vload(ptr, offset, L)
    if not any(mask):
        return ir.Constant(vec, [0.0] * L)
    mvec = ir.VectorType(I1, L)
    fn = _intrinsic(k, f"llvm.masked.load.v{L}f32.p0", ir.FunctionType(vec, [vec.as_pointer(), I32, mvec, vec]))
    vptr = k.b.bitcast(k.b.gep(ptr, [k.i64(offset)]), vec.as_pointer())
    return k.b.call(fn, [vptr, ir.Constant(I32, 4), ir.Constant(mvec, [int(m) for m in mask]),
                         ir.Constant(vec, [0.0] * L)])


def masked_store(k: KernelBuilder, value, ptr, offset, mask: list[bool], L: int) -> None:
    """``value`` to ``ptr + offset``, only the lanes on in the constant ``mask``."""
    if all(mask):
        k.vstore(value, ptr, offset)
        return
    if not any(mask):
        return
    vec = ir.VectorType(F32, L)
    mvec = ir.VectorType(I1, L)
    fn = _intrinsic(k, f"llvm.masked.store.v{L}f32.p0",
                    ir.FunctionType(ir.VoidType(), [vec, vec.as_pointer(), I32, mvec]))
    vptr = k.b.bitcast(k.b.gep(ptr, [k.i64(offset)]), vec.as_pointer())
    k.b.call(fn, [value, vptr, ir.Constant(I32, 4), ir.Constant(mvec, [int(m) for m in mask])])


def launder(k: KernelBuilder, ptr: ir.Value) -> ir.Value:
    """``ptr`` through an empty inline asm the optimizer cannot see through: loads from it are not
    hoisted out of the loop it is emitted in. Without it, in a layer with few input channels
    (whose channel loop LLVM unrolls) every weight broadcast of the layer was hoisted out of the
    tile loops and spilled, and each FMA then read a whole vector from a stack bigger than L1."""
    fnty = ir.FunctionType(ptr.type, [ptr.type])
    return k.b.call(ir.InlineAsm(fnty, "", "=r,0", side_effect=True), [ptr])


class SpatialConv:
    """Emits one Conv/FusedConv with the position-vectorized kernel."""

    def __init__(self, k: KernelBuilder, node: Node, lanes: int, registers: int):
        self.k, self.node = k, node
        self.parts, g = conv_parts(node)
        self.g = g if node.attr("pool_kernel") is not None else flat_geometry(g)
        self.group = node.attr("group", 1)
        self.channels = self.parts.x.type.shape[1]
        self.out_channels = self.parts.w.type.shape[0]
        self.icg, self.ocg = self.channels // self.group, self.out_channels // self.group
        self.blk = choose_spatial_blocking(self.g, self.icg, self.ocg, self.group, lanes, registers)
        self.L = self.blk.lanes
        self.vec = ir.VectorType(F32, self.L)
        self.oc_blocks = -(-self.ocg // self.blk.R)
        self.weights = k.constant(f"{node.name}.spatial", pack_spatial_weights(self.parts.w.const, self.group,
                                                                              self.blk.R))
        bias = self.parts.bias.const if self.parts.bias is not None else None
        self.band = None
        self.pool = None
        self.phase = None
        if self.g.s_w == 2:
            g2, L = self.g, self.L
            span = (-(-g2.out_w // L) * L + (g2.k_w - 1) * g2.d_w // 2 + 2 * L) // L * L
            offsets = sorted({h * g2.s_h + kh * g2.d_h for h in range(self.blk.H) for kh in range(g2.k_h)})
            # splitting costs about 6 operations per L columns of each row; the shuffles it saves,
            # 2 per vector and kernel column (measured: a 7x7 stem gained 10%, a 3x3 layer lost)
            pays = span // L * 6 < -(-g2.out_w // L) * g2.k_w * 2
            if pays and 4 * self.icg * len(offsets) * 2 * span <= MAX_PHASE_BYTES and span // L <= 40:
                self.phase = _Phases(k.stack_array(F32, self.icg * len(offsets) * 2 * span), span,
                                     {off: i for i, off in enumerate(offsets)})
        if node.attr("pool_kernel") is not None:
            self.pool = pool_geometry(node, self.parts)
        self.bias = k.constant(f"{node.name}.spatial_bias", pack_spatial_bias(bias, self.out_channels, self.group,
                                                                             self.blk.R))

    def masked_load(self, ptr, offset, mask: list[bool]) -> ir.Value:
        return masked_load(self.k, ptr, offset, mask, self.L)

    def masked_store(self, value, ptr, offset, mask: list[bool]) -> None:
        masked_store(self.k, value, ptr, offset, mask, self.L)

    # -- input vectors ---------------------------------------------------------------------------
    def input_vector(self, row, col, static_col) -> ir.Value | None:
        """Inputs ``row[col + j * s_w]`` for the ``L`` lanes ``j``; ``static_col`` (an int) when the
        column is known at compile time (an edge tile: padded lanes are masked), else ``None``
        (an interior tile: every lane is real input). ``None`` when every lane is padding."""
        k, g, L = self.k, self.g, self.L
        b = k.b
        span = L * g.s_w
        if static_col is not None:
            valid = [0 <= static_col + i < g.in_w for i in range(span)]
            if g.s_w == 1:
                if not any(valid):
                    return None
                return self.masked_load(row, col, valid)
            needed = [valid[2 * j] for j in range(L)]
            if not any(needed):
                return None
            lo = self.masked_load(row, col, [valid[i] and i % 2 == 0 for i in range(L)])
            hi = self.masked_load(row, b.add(col, k.i64(L)), [valid[L + i] and i % 2 == 0 for i in range(L)])
        else:
            if g.s_w == 1:
                return k.vload(row, col, L)
            lo = k.vload(row, col, L)
            hi = k.vload(row, b.add(col, k.i64(L)), L)
        return b.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(I32, L), [2 * j for j in range(L)]))

    # -- one tile: R channels x H rows x V vectors -------------------------------------------------
    def emit_tile(self, n, grp, ob, oh0, H: int, ow0, nvec: int, width: int, static_ow0) -> None:
        """Outputs ``[ow0, ow0 + width)`` of rows ``oh0 .. oh0 + H - 1`` for the block's channels
        (``nvec`` vectors per row); ``static_ow0`` is ``ow0`` as an int for an edge tile."""
        k, g, blk, L = self.k, self.g, self.blk, self.L
        b = k.b
        R = blk.R
        bias_at = b.mul(b.add(b.mul(grp, k.i64(self.oc_blocks)), ob), k.i64(R))
        init = [k.splat(k.load(self.bias, b.add(bias_at, k.i64(r))), L) for r in range(R)]
        acc = [[[k.scalar_slot(init[r]) for _ in range(nvec)] for _ in range(H)] for r in range(R)]
        # input rows the block reads, each with the (output row, kernel row) pairs that read it
        users: dict[int, list[tuple[int, int]]] = {}
        for h in range(H):
            for kh in range(g.k_h):
                users.setdefault(h * g.s_h + kh * g.d_h, []).append((h, kh))
        taps = g.k_h * g.k_w
        weights = launder(k, self.weights)
        w_block = b.mul(b.add(b.mul(grp, k.i64(self.oc_blocks)), ob), k.i64(self.icg * taps * R))
        first_in = b.mul(grp, k.i64(self.icg))
        xp = k.ptr(self.parts.x)
        for off in sorted(users):
            ih = b.sub(b.add(b.mul(oh0, k.i64(g.s_h)), k.i64(off)), k.i64(g.p_top))
            with b.if_then(k.in_range(ih, g.in_h)):
                with k.loop(self.icg, name="ic") as ic:
                    row = b.gep(xp, [k.linear([n, b.add(first_in, ic), ih, 0],
                                              [None, self.channels, g.in_h, g.in_w])])
                    w_ic = b.add(w_block, b.mul(ic, k.i64(taps * R)))
                    for kw in range(g.k_w):
                        shift = kw * g.d_w - g.p_left
                        xs = []
                        for v in range(nvec):
                            if self.phase is not None:
                                xs.append(self.phase_vector(ic, off, kw, b.add(ow0, k.i64(v * L))))
                            elif static_ow0 is not None:
                                sc = (static_ow0 + v * L) * g.s_w + shift
                                xs.append(self.input_vector(row, k.i64(sc), sc))
                            else:
                                col = b.add(b.mul(b.add(ow0, k.i64(v * L)), k.i64(g.s_w)), k.i64(shift))
                                xs.append(self.input_vector(row, col, None))
                        if all(x is None for x in xs):
                            continue
                        for h, kh in users[off]:
                            wt = b.add(w_ic, k.i64((kh * g.k_w + kw) * R))
                            for r in range(R):
                                wv = k.splat(k.load(weights, b.add(wt, k.i64(r))), L)
                                for v in range(nvec):
                                    if xs[v] is not None:
                                        slot = acc[r][h][v]
                                        b.store(k.fma(xs[v], wv, b.load(slot)), slot)
        self.epilogue(n, grp, ob, oh0, H, ow0, nvec, width, acc)

    def epilogue(self, n, grp, ob, oh0, H, ow0, nvec, width, acc) -> None:
        k, g, L = self.k, self.g, self.L
        b = k.b
        y = k.ptr(self.node.outputs[0])
        residual = k.ptr(self.parts.residual) if self.parts.residual is not None else None
        for r in range(self.blk.R):
            local = b.add(b.mul(ob, k.i64(self.blk.R)), k.i64(r))
            channel = b.add(b.mul(grp, k.i64(self.ocg)), local)
            if self.band is not None:  # a pooled layer: rows go to the band buffer
                y, row0 = self.band.buffer, self.band.row0
            with b.if_then(b.icmp_signed("<", local, k.i64(self.ocg))) if self.ocg % self.blk.R and self.band is None \
                    else _nothing():
                for h in range(H):
                    if self.band is None:
                        base = k.linear([n, channel, b.add(oh0, k.i64(h)), ow0],
                                        [None, self.out_channels, g.out_h, g.out_w])
                    else:
                        base = b.add(b.add(b.mul(b.sub(b.add(oh0, k.i64(h)), row0), k.i64(self.band.width)),
                                           k.i64(r * self.band.rows * self.band.width + self.band.left)), ow0)
                    for v in range(nvec):
                        mask = [v * L + j < width for j in range(L)]
                        at = b.add(base, k.i64(v * L))
                        value = b.load(acc[r][h][v])
                        if residual is not None:
                            value = b.fadd(value, self.masked_load(residual, at, mask))
                        value = activate(k, self.parts.activation, value, self.parts.activation_params)
                        self.masked_store(value, y, at, mask)

    # -- stride 2: rows split into even and odd columns once --------------------------------------
    def fill_phases(self, n, grp, oh0, H: int) -> None:
        """Each input row the block reads, per input channel, as its even and its odd columns of
        the padded row (``[ic][row][parity][span]``, padding zero): every tap of every tile then
        reads one contiguous vector, with no shuffle and no mask."""
        k, g, L, ph = self.k, self.g, self.L, self.phase
        b = k.b
        even = ir.Constant(ir.VectorType(I32, L), [2 * j for j in range(L)])
        odd = ir.Constant(ir.VectorType(I32, L), [2 * j + 1 for j in range(L)])
        offsets = sorted({h * g.s_h + kh * g.d_h for h in range(H) for kh in range(g.k_h)})
        first_in = b.mul(grp, k.i64(self.icg))
        xp = k.ptr(self.parts.x)
        for off in offsets:
            ih = b.sub(b.add(b.mul(oh0, k.i64(g.s_h)), k.i64(off)), k.i64(g.p_top))
            with b.if_then(k.in_range(ih, g.in_h)):
                with k.loop(self.icg, name="split") as ic:
                    src = b.gep(xp, [k.linear([n, b.add(first_in, ic), ih, 0], [None, self.channels, g.in_h, g.in_w])])
                    dst = b.gep(ph.buffer, [b.mul(b.add(b.mul(ic, k.i64(len(ph.index))), k.i64(ph.index[off])),
                                                  k.i64(2 * ph.span))])
                    for j in range(ph.span // L):
                        c0 = 2 * j * L - g.p_left
                        lo = self.masked_load(src, k.i64(c0), [0 <= c0 + i < g.in_w for i in range(L)])
                        hi = self.masked_load(src, k.i64(c0 + L), [0 <= c0 + L + i < g.in_w for i in range(L)])
                        k.vstore(b.shuffle_vector(lo, hi, even), dst, j * L)
                        k.vstore(b.shuffle_vector(lo, hi, odd), dst, ph.span + j * L)

    def phase_vector(self, ic, off: int, kw: int, ow) -> ir.Value:
        """Inputs of outputs ``ow .. ow + L - 1`` for tap ``kw`` of input row ``off`` (padded column
        ``2 * ow + kw * d_w``: parity ``kw * d_w % 2``, index ``ow + kw * d_w // 2``)."""
        k, ph = self.k, self.phase
        b = k.b
        tap = kw * self.g.d_w
        row = b.mul(b.add(b.mul(ic, k.i64(len(ph.index))), k.i64(ph.index[off])), k.i64(2 * ph.span))
        return k.vload(ph.buffer, b.add(b.add(row, k.i64(tap % 2 * ph.span + tap // 2)), ow), self.L)

    # -- rows and columns --------------------------------------------------------------------------
    def interior_tiles(self) -> tuple[int, int]:
        """``(first, count)``: tiles of ``V * L`` outputs from ``first`` on that read no padding and
        end inside the row (``first`` is a multiple of the tile, so the edge tile before is whole)."""
        g, T = self.g, self.blk.tile
        lo = -(-g.p_left // g.s_w)
        first = -(-lo // T) * T
        # last start s with (s + T - 1) * s_w + (k_w - 1) * d_w - p_left + s_w - 1 <= in_w - 1
        last_in = (g.in_w - g.s_w - (g.k_w - 1) * g.d_w + g.p_left) // g.s_w - T + 1
        last = min(last_in, g.out_w - T)
        if last < first:
            return first, 0
        return first, (last - first) // T + 1

    def emit_row_block(self, n, grp, ob, oh0, H: int) -> None:
        k, g, T, L = self.k, self.g, self.blk.tile, self.L
        if self.phase is not None:
            self.fill_phases(n, grp, oh0, H)
            full = g.out_w // T
            if full:
                with k.loop(full, name="tile") as t:
                    self.emit_tile(n, grp, ob, oh0, H, k.b.mul(t, k.i64(T)), self.blk.V, T, None)
            if g.out_w % T:
                width = g.out_w % T
                self.emit_tile(n, grp, ob, oh0, H, k.i64(full * T), -(-width // L), width, full * T)
            return
        first, count = self.interior_tiles()
        starts = list(range(0, min(first, g.out_w), T)) if count else []
        for s in starts:
            self.emit_tile(n, grp, ob, oh0, H, k.i64(s), self.blk.V, min(T, g.out_w - s), s)
        if count:
            with k.loop(count, name="tile") as t:
                ow0 = k.b.add(k.i64(first), k.b.mul(t, k.i64(T)))
                self.emit_tile(n, grp, ob, oh0, H, ow0, self.blk.V, T, None)
        rest = first + count * T if count else 0
        for s in range(rest, g.out_w, T):
            width = min(T, g.out_w - s)
            self.emit_tile(n, grp, ob, oh0, H, k.i64(s), -(-width // L), width, s)

    def emit(self) -> None:
        k, g, blk = self.k, self.g, self.blk
        b = k.b
        per_image = self.group * self.oc_blocks
        work = g.out_h * g.out_w * blk.R * self.icg * g.k_h * g.k_w
        if self.pool is not None:
            self.emit_pooled(per_image, work)
            return
        with k.parallel_loop(shape_product([self.parts.x.type.shape[0], per_image]), work) as i:
            n, rest = b.udiv(i, k.i64(per_image)), b.urem(i, k.i64(per_image))
            grp, ob = b.udiv(rest, k.i64(self.oc_blocks)), b.urem(rest, k.i64(self.oc_blocks))
            self.emit_rows(n, grp, ob, k.i64(0), g.out_h)

    def emit_rows(self, n, grp, ob, first_row, count: int) -> None:
        """Conv rows ``first_row .. first_row + count - 1`` in blocks of ``H``."""
        k, blk = self.k, self.blk
        b = k.b
        full = count // blk.H
        if full:
            with k.loop(full, name="rows") as rb:
                self.emit_row_block(n, grp, ob, b.add(first_row, b.mul(rb, k.i64(blk.H))), blk.H)
        if count % blk.H:
            self.emit_row_block(n, grp, ob, b.add(first_row, k.i64(full * blk.H)), count % blk.H)

    # -- fused max pooling -------------------------------------------------------------------------
    def emit_pooled(self, per_image: int, work: int) -> None:
        """Bands of ``P`` pooled rows: the conv rows their windows read (``rows``, so a band
        recomputes the rows it shares with the next) go to a stack buffer ``[R][rows][width]``
        whose pool padding (columns, and rows outside the conv output) is -inf; then each pooled
        row is the max of its window rows, vector by vector (stride 2: even lanes by shuffles)."""
        k, g, p, blk, L = self.k, self.g, self.pool, self.blk, self.L
        b = k.b
        P = band_pooled_rows(g, p, blk.R, L)
        bands = -(-p.out_h // P)
        rows, width = band_shape(g, p, L, P)
        buffer = k.stack_array(F32, blk.R * rows * width)
        minus_inf = ir.Constant(self.vec, [float("-inf")] * L)
        y = k.ptr(self.node.outputs[0])
        with k.loop(blk.R * rows, name="padrow") as pr:  # the padding columns, once per call
            row = b.gep(buffer, [b.mul(pr, k.i64(width))])
            for c in list(range(p.p_left)) + list(range(p.p_left + g.out_w, width)):
                k.store(k.f32(float("-inf")), row, c)
        with k.parallel_loop(shape_product([self.parts.x.type.shape[0], per_image]), work) as i:
            n, rest = b.udiv(i, k.i64(per_image)), b.urem(i, k.i64(per_image))
            grp, ob = b.udiv(rest, k.i64(self.oc_blocks)), b.urem(rest, k.i64(self.oc_blocks))
            with k.loop(bands, name="band") as band:
                ph0 = b.mul(band, k.i64(P))
                row0 = b.sub(b.mul(ph0, k.i64(p.s_h)), k.i64(p.p_top))
                self.band = _Band(buffer, row0, rows, width, p.p_left)
                self.emit_rows(n, grp, ob, row0, rows)
                self.band = None
                with k.loop(rows, name="edge") as j:  # rows outside the conv output: -inf
                    with b.if_then(b.not_(k.in_range(b.add(row0, j), g.out_h))):
                        for r in range(blk.R):
                            dst = b.gep(buffer, [b.add(b.mul(j, k.i64(width)), k.i64(r * rows * width + p.p_left))])
                            with k.loop(g.out_w, name="inf") as c:
                                k.store(k.f32(float("-inf")), dst, c)
                left = b.sub(k.i64(p.out_h), ph0)
                count = b.select(b.icmp_signed("<", left, k.i64(P)), left, k.i64(P))
                with k.loop(count, name="prow") as j:
                    for r in range(blk.R):
                        local = b.add(b.mul(ob, k.i64(blk.R)), k.i64(r))
                        channel = b.add(b.mul(grp, k.i64(self.ocg)), local)
                        guard = b.if_then(b.icmp_signed("<", local, k.i64(self.ocg))) if self.ocg % blk.R else _nothing()
                        with guard:
                            out = b.gep(y, [k.linear([n, channel, b.add(ph0, j), 0],
                                                     [None, self.out_channels, p.out_h, p.out_w])])
                            src = b.gep(buffer, [b.add(b.mul(b.mul(j, k.i64(p.s_h)), k.i64(width)),
                                                       k.i64(r * rows * width))])
                            self.emit_pool_row(src, out, width, minus_inf)

    def emit_pool_row(self, src, out, width: int, minus_inf) -> None:
        k, p, L = self.k, self.pool, self.L
        b = k.b

        def vector(pw0, lanes_valid: int) -> None:
            best = minus_inf
            for pkh in range(p.k_h):
                row = b.gep(src, [k.i64(pkh * p.d_h * width)])
                for pkw in range(p.k_w):
                    col = b.add(b.mul(pw0, k.i64(p.s_w)), k.i64(pkw * p.d_w))
                    if p.s_w == 1:
                        v = k.vload(row, col, L)
                    else:
                        lo, hi = k.vload(row, col, L), k.vload(row, b.add(col, k.i64(L)), L)
                        v = b.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(I32, L), [2 * j for j in range(L)]))
                    best = k.max(best, v)
            self.masked_store(best, out, pw0, [j < lanes_valid for j in range(L)])

        k.vector_tiles(p.out_w, L, vector, name="pw")


@dataclass
class _Phases:
    buffer: ir.Value
    span: int                 # floats per phase row
    index: dict               # input row offset in the block -> its row in the buffer


@dataclass
class _Band:
    buffer: ir.Value
    row0: ir.Value   # the conv row in buffer row 0
    rows: int
    width: int
    left: int        # pool padding columns before the conv's column 0


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
