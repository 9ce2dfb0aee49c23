"""Winograd F(2x2, 3x3) convolution for 3x3, stride-1, undilated, ungrouped 2-D layers.

Each 2x2 block of outputs comes from a 4x4 block of inputs with 16 products per
channel pair instead of 36: weights are transformed once at compile time
(``U = G g Gᵀ``), a row of input tiles is transformed at run time
(``V = Bᵀ d B``), the 16 transformed positions are multiplied and summed over
input channels as 16 small register-blocked products (vectors over output
channels, broadcast inputs), and ``Aᵀ M A`` turns them back into 2x2 outputs
with the bias and activation applied in registers. A fused 2x2, stride-2 max
pool lines up with the output tiles exactly, so only the tiles the pool reads
are computed and the pooled value is the max of a tile's four outputs.

Numerics: the transforms add and subtract inputs and scale by 1/2 exactly, so
the only extra error is rounding in the longer sums; on the MNIST model the
outputs stay within 2e-6 of the direct convolution (see tests/test_winograd.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from ...ir import Node, shape_product
from .activations import VECTOR_ACTIVATIONS, activate
from .codegen import F32, KernelBuilder
from .conv import conv_parts
from .conv_simd import pack_bias

G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
MIN_CHANNELS = 8
"""Below this many input channels the transforms cost more than the products save."""


@dataclass(frozen=True)
class TileGrid:
    tiles_h: int
    tiles_w: int
    pooled: bool   # a fused 2x2/2 max pool: one output per tile


def pool_lines_up(node: Node) -> bool:
    """A fused MaxPool 2x2, stride 2, no padding or dilation: each pool window is one output tile."""
    return (list(node.attr("pool_kernel")) == [2, 2] and list(node.attr("pool_strides", [1, 1])) == [2, 2]
            and not any(node.attr("pool_pads", [0] * 4)) and list(node.attr("pool_dilations", [1, 1])) == [1, 1])


def winograd_supported(node: Node, lanes: int) -> bool:
    x, w = node.inputs[0], node.inputs[1]
    if lanes < 4 or x.type.rank != 4 or w.type.shape[2:] != (3, 3) or not w.is_const:
        return False
    if node.attr("group", 1) != 1 or list(node.attr("strides", [1, 1])) != [1, 1]:
        return False
    if list(node.attr("dilations", [1, 1])) != [1, 1] or node.attr("auto_pad", "NOTSET") != "NOTSET":
        return False
    if len(node.inputs) > 2 and node.inputs[2] is not None and not node.inputs[2].is_const:
        return False
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        return False  # residual
    activation = node.attr("activation", "")
    if activation and activation not in VECTOR_ACTIVATIONS:
        return False
    if node.attr("pool_kernel") is not None and not pool_lines_up(node):
        return False
    return x.type.shape[1] >= MIN_CHANNELS


def winograd_pays(node: Node) -> bool:
    """Fewer multiply-adds than the direct kernel by a margin that covers the transforms."""
    _, g = conv_parts(node)
    grid = tile_grid(node, g)
    direct = g.out_h * g.out_w * 9
    return grid.tiles_h * grid.tiles_w * 16 < 0.7 * direct


def tile_grid(node: Node, g) -> TileGrid:
    if node.attr("pool_kernel") is not None:
        return TileGrid(g.out_h // 2, g.out_w // 2, True)
    return TileGrid(-(-g.out_h // 2), -(-g.out_w // 2), False)


def transform_weights(w: np.ndarray, lanes: int) -> np.ndarray:
    """[OC, IC, 3, 3] -> U packed as [OC/lanes, 16, IC, lanes] (zero-padded channels)."""
    oc, ic = w.shape[:2]
    u = np.einsum("ak,oikl,bl->oiab", G, w.astype(np.float64), G).reshape(oc, ic, 16)
    blocks = -(-oc // lanes)
    padded = np.zeros((blocks * lanes, ic, 16), np.float64)
    padded[:oc] = u
    return np.ascontiguousarray(padded.reshape(blocks, lanes, ic, 16).transpose(0, 3, 2, 1)).astype(np.float32)


class WinogradConv:
    def __init__(self, k: KernelBuilder, node: Node, lanes: int, registers: int):
        self.k, self.node = k, node
        self.parts, self.g = conv_parts(node)
        self.grid = tile_grid(node, self.g)
        self.lanes = lanes
        self.channels = self.parts.x.type.shape[1]
        self.out_channels = self.parts.w.type.shape[0]
        self.oc_blocks = -(-self.out_channels // lanes)
        self.blocks = 2 if self.oc_blocks % 2 == 0 else 1
        self.span = max(1, min(self.grid.tiles_w, (registers - 4) // self.blocks))  # tiles per accumulator set
        self.u = k.constant(f"{node.name}.winograd", transform_weights(self.parts.w.const, lanes))
        bias = self.parts.bias.const if self.parts.bias is not None else None
        self.bias = k.constant(f"{node.name}.bias", pack_bias(bias, self.out_channels, lanes))
        self.vec = ir.VectorType(F32, lanes)

    def emit(self) -> None:
        k, grid = self.k, self.grid
        b = k.b
        tw = grid.tiles_w
        v_row = k.stack_array(F32, 16 * self.channels * tw)          # [16][IC][tiles_w]
        m_row = k.stack_array(F32, tw * 16 * self.blocks * self.lanes)  # [tiles_w][16][blocks*lanes]
        groups = self.oc_blocks // self.blocks
        work = tw * 16 * self.channels * self.oc_blocks * self.lanes
        extent = shape_product([self.parts.x.type.shape[0], grid.tiles_h])
        with k.parallel_loop(extent, work, name="row") as i:
            n, th = b.udiv(i, k.i64(grid.tiles_h)), b.urem(i, k.i64(grid.tiles_h))
            self.transform_inputs(n, th, v_row)
            with k.loop(groups, name="grp") as grp:
                self.multiply(grp, v_row, m_row)
                self.transform_outputs(n, th, grp, m_row)

    # -- V = Bᵀ d B for one row of tiles ----------------------------------------------------------
    def transform_inputs(self, n, th, v_row) -> None:
        """Vectors over the tiles of a chunk: each input row is loaded once as a vector of the
        columns the chunk reads, Bᵀ combines the four rows, and even/odd lane shuffles do B."""
        k, g = self.k, self.g
        b = k.b
        chunk = max(1, (self.lanes - 2) // 2)
        with k.loop(self.channels, name="ic") as ic:
            rows = []
            for r in range(4):
                ih = b.add(b.mul(th, k.i64(2)), k.i64(r - g.p_top))
                inside = k.in_range(ih, g.in_h)
                clamped = b.select(inside, ih, k.i64(0))
                base = b.gep(k.ptr(self.parts.x), [k.linear([n, ic, clamped, 0], [None, self.channels, g.in_h, g.in_w])])
                rows.append((inside, base))
            for t0, width, count in self._chunks(chunk):
                if count == 1:
                    self._transform_chunk(v_row, rows, ic, k.i64(t0), width, static_first=2 * t0 - g.p_left)
                    continue
                with k.loop(count, name="chunk") as c:
                    start = b.add(k.i64(t0), b.mul(c, k.i64(chunk)))
                    self._transform_chunk(v_row, rows, ic, start, width, static_first=None)

    def _chunks(self, chunk: int) -> list[tuple[int, int, int]]:
        """(first tile, tiles, repeats): runs of whole chunks whose columns are all inside the
        image become one loop; chunks touching padding or the row's end are emitted alone."""
        g, tw = self.g, self.grid.tiles_w
        runs: list[tuple[int, int, int, bool]] = []
        for t0 in range(0, tw, chunk):
            width = min(chunk, tw - t0)
            first = 2 * t0 - g.p_left
            interior = width == chunk and first >= 0 and first + 2 * width + 2 <= g.in_w
            last = runs[-1] if runs else None
            if interior and last and last[3] and last[0] + last[2] * chunk == t0:
                runs[-1] = (last[0], chunk, last[2] + 1, True)
            else:
                runs.append((t0, width, 1, interior))
        return [(t0, width, count) for t0, width, count, _ in runs]

    def _transform_chunk(self, v_row, rows, ic, t0, width: int, static_first) -> None:
        """V for ``width`` tiles from tile ``t0``: each input row loaded once as a vector of the
        columns they read; Bᵀ combines the rows, even/odd lane shuffles apply B."""
        k, g, tw = self.k, self.g, self.grid.tiles_w
        b = k.b
        count = 2 * width + 2
        if static_first is not None:
            d = [self._row_vector(row, static_first, count) for row in rows]
        else:
            first = b.sub(b.mul(t0, k.i64(2)), k.i64(g.p_left))
            zero = ir.Constant(ir.VectorType(F32, count), [0.0] * count)
            d = [b.select(inside, k.vload(base, first, count), zero) for inside, base in rows]
        q = [b.fsub(d[0], d[2]), b.fadd(d[1], d[2]), b.fsub(d[2], d[1]), b.fsub(d[1], d[3])]
        for r, vec in enumerate(q):
            even, odd = self._lanes(vec, 0, width), self._lanes(vec, 1, width)
            even2, odd2 = self._lanes(vec, 2, width), self._lanes(vec, 3, width)
            parts = [b.fsub(even, even2), b.fadd(odd, even2), b.fsub(even2, odd), b.fsub(odd, odd2)]
            for c, part in enumerate(parts):
                at = b.add(b.mul(k.i64((r * 4 + c) * self.channels), k.i64(tw)), b.add(b.mul(ic, k.i64(tw)), t0))
                k.vstore(part, v_row, at)

    def _row_vector(self, row, first: int, count: int) -> ir.Value:
        """Columns ``first .. first+count-1`` of an input row (zeros for padding and for a row
        outside the image): one vector load when every column is inside."""
        k = self.k
        b = k.b
        inside, base = row
        vec_type = ir.VectorType(F32, count)
        zero = ir.Constant(vec_type, [0.0] * count)
        if first >= 0 and first + count <= self.g.in_w:
            vec = k.vload(base, first, count)
        else:
            vec = zero
            for j in range(count):
                if 0 <= first + j < self.g.in_w:
                    vec = b.insert_element(vec, k.load(base, first + j), ir.Constant(ir.IntType(32), j))
        return b.select(inside, vec, zero)

    def _lanes(self, vec: ir.Value, start: int, width: int) -> ir.Value:
        """Lanes ``start, start+2, ...`` (``width`` of them): one column of every tile in the chunk."""
        mask = ir.Constant(ir.VectorType(ir.IntType(32), width), [start + 2 * t for t in range(width)])
        return self.k.b.shuffle_vector(vec, ir.Constant(vec.type, ir.Undefined), mask)

    # -- M[ξ] = U[ξ] · V[ξ] summed over input channels ---------------------------------------------
    def multiply(self, grp, v_row, m_row) -> None:
        k, tw, lanes = self.k, self.grid.tiles_w, self.lanes
        b = k.b
        gw = self.blocks * lanes
        zero = ir.Constant(self.vec, [0.0] * lanes)
        with k.loop(16, name="xi") as xi:
            for start in range(0, tw, self.span):
                width = min(self.span, tw - start)
                acc = [[k.scalar_slot(zero) for _ in range(self.blocks)] for _ in range(width)]
                with k.loop(self.channels, name="c") as c:
                    weights = []
                    for j in range(self.blocks):
                        block = b.add(b.mul(grp, k.i64(self.blocks)), k.i64(j))
                        at = b.mul(b.add(b.mul(b.add(b.mul(block, k.i64(16)), xi), k.i64(self.channels)), c),
                                   k.i64(lanes))
                        weights.append(k.vload(self.u, at, lanes))
                    v_base = b.mul(b.add(b.mul(xi, k.i64(self.channels)), c), k.i64(tw))
                    for t in range(width):
                        xv = k.splat(k.load(v_row, b.add(v_base, k.i64(start + t))), lanes)
                        for j in range(self.blocks):
                            b.store(k.fma(xv, weights[j], b.load(acc[t][j])), acc[t][j])
                for t in range(width):
                    for j in range(self.blocks):
                        at = b.add(b.mul(b.add(k.i64((start + t) * 16), xi), k.i64(gw)), k.i64(j * lanes))
                        k.vstore(b.load(acc[t][j]), m_row, at)

    # -- Y = Aᵀ M A, bias, activation, pooling, NCHW stores ----------------------------------------
    def transform_outputs(self, n, th, grp, m_row) -> None:
        k, g, lanes = self.k, self.g, self.lanes
        b = k.b
        gw = self.blocks * lanes
        with k.loop(self.grid.tiles_w, name="t") as t:
            for j in range(self.blocks):
                block = b.add(b.mul(grp, k.i64(self.blocks)), k.i64(j))
                base = b.mul(t, k.i64(16 * gw))
                m = [k.vload(m_row, b.add(base, k.i64(xi * gw + j * lanes)), lanes) for xi in range(16)]
                y = self._at_m_a(m)
                bias = k.vload(self.bias, b.mul(block, k.i64(lanes)), lanes)
                y = [activate(k, self.parts.activation, b.fadd(v, bias), self.parts.activation_params) for v in y]
                if self.grid.pooled:
                    best = k.max(k.max(y[0], y[1]), k.max(y[2], y[3]))
                    self._store_lanes(best, n, block, th, t, self.grid.tiles_h, self.grid.tiles_w)
                    continue
                for r in range(2):
                    for c in range(2):
                        oh = b.add(b.mul(th, k.i64(2)), k.i64(r))
                        ow = b.add(b.mul(t, k.i64(2)), k.i64(c))
                        inside = b.and_(b.icmp_signed("<", oh, k.i64(g.out_h)), b.icmp_signed("<", ow, k.i64(g.out_w)))
                        with b.if_then(inside):
                            self._store_lanes(y[2 * r + c], n, block, oh, ow, g.out_h, g.out_w)

    def _at_m_a(self, m) -> list[ir.Value]:
        b = self.k.b

        def at(v0, v1, v2, v3):
            return [b.fadd(b.fadd(v0, v1), v2), b.fsub(b.fsub(v1, v2), v3)]

        t = [at(*[m[r * 4 + c] for r in range(4)]) for c in range(4)]   # t[c][i] = (Aᵀ M)[i, c]
        y = []
        for i in range(2):
            y += at(*[t[c][i] for c in range(4)])
        return y   # y00, y01, y10, y11

    def _store_lanes(self, vector, n, block, row, col, out_h: int, out_w: int) -> None:
        k, lanes = self.k, self.lanes
        b = k.b
        y = k.ptr(self.node.outputs[0])
        for lane in range(lanes):
            channel = b.add(b.mul(block, k.i64(lanes)), k.i64(lane))
            value = b.extract_element(vector, ir.Constant(ir.IntType(32), lane))
            at = k.linear([n, channel, row, col], [None, self.out_channels, out_h, out_w])
            if self.out_channels % lanes:
                with b.if_then(b.icmp_signed("<", channel, k.i64(self.out_channels))):
                    k.store(value, y, at)
            else:
                k.store(value, y, at)
