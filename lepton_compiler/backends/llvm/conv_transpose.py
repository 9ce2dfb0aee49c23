"""ConvTranspose (1-D and 2-D, groups, strides, dilations, pads, output_padding, output_shape).

Scatter form: each input row, for each kernel row that lands inside the output, adds
``x[ih, iw] * w[kh, kw]`` into output row ``ih * s_h + kh * d_h - p_top`` at columns
``iw * s_w + kw * d_w - p_left``. The kernel taps are unrolled and each tap's range of
input columns that land inside the output is computed at compile time, so the inner
loop has no bounds test. One (image, output channel) plane at a time: planes are
independent, which is what a parallel outer loop needs.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from ...ir import Node, shape_product
from ...ops.nn import conv_transpose_window
from .codegen import KernelBuilder
from .conv import Geometry2D
from .registry import lowering


class TransposedGeometry2D(Geometry2D):
    """A 1-D or 2-D transposed window seen as 2-D; the fields mean what they do for a conv,
    with input and output swapping roles in ``column_range``."""

    def column_range(self, kw: int) -> tuple[int, int]:
        """Input columns ``[lo, hi)`` whose output column for kernel column ``kw`` is inside the output."""
        off = kw * self.d_w - self.p_left
        lo = max(0, -(off // self.s_w))                       # ceil(-off / s_w)
        hi = min(self.in_w, (self.out_w - 1 - off) // self.s_w + 1) if self.out_w - 1 - off >= 0 else 0
        return lo, hi


def upsampling_supported(node: Node, g: Geometry2D, lanes: int) -> bool:
    """The vector kernel's case: kernel == stride (each output gets exactly one tap per input
    channel), column stride 1 or 2, no padding, dilation or output_padding, one group, constant
    weights (and bias)."""
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    return (lanes >= 4 and x.type.rank in (3, 4) and w.is_const and (bias is None or bias.is_const)
            and node.attr("group", 1) == 1 and (g.k_h, g.k_w) == (g.s_h, g.s_w) and g.s_w in (1, 2)
            and (g.d_h, g.d_w, g.p_top, g.p_left) == (1, 1, 0, 0)
            and (g.out_h, g.out_w) == (g.in_h * g.s_h, g.in_w * g.s_w))


def lower_upsampling(k: KernelBuilder, node: Node, g: Geometry2D) -> None:
    """``y[oc, ih*s_h + kh, iw*s_w + kw] = b[oc] + sum_ic x[ic, ih, iw] * w[ic, oc, kh, kw]``: per output
    row (its ``kh`` and ``ih`` fixed), ``R`` channels x ``s_w`` column phases x ``V`` vectors over ``iw``
    of accumulators in registers over the input channels, each input vector loaded once for all of
    them; with ``s_w = 2`` the two phases are interleaved by shuffles into contiguous output vectors.
    Weights are repacked as ``[oc block][kh][ic][kw][R]``; a row's tail is masked."""
    from .conv_spatial import masked_load, masked_store

    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    in_channels, out_channels = w.type.shape[0], w.type.shape[1]
    L = k.lanes
    while L > 4 and L // 2 >= g.in_w:
        L //= 2
    R = min(out_channels, 8 // g.s_w if k.registers < 32 else 16 // g.s_w)
    V = max(1, min(-(-g.in_w // L), (24 if k.registers >= 32 else 11) // (R * g.s_w)))
    blocks = -(-out_channels // R)
    w4 = w.const.reshape(in_channels, out_channels, g.k_h, g.k_w)
    padded = np.zeros((in_channels, blocks * R, g.k_h, g.k_w), np.float32)
    padded[:, :out_channels] = w4
    packed = padded.reshape(in_channels, blocks, R, g.k_h, g.k_w).transpose(1, 3, 0, 4, 2)
    wp = k.constant(f"{node.name}.upsampling", np.ascontiguousarray(packed).reshape(-1))
    bvals = np.zeros(blocks * R, np.float32)
    if bias is not None:
        bvals[:out_channels] = bias.const
    bp = k.constant(f"{node.name}.upsampling_bias", bvals)
    b = k.b
    i32 = ir.IntType(32)
    xp, yp = k.ptr(x), k.ptr(y)
    T = V * L
    work = g.out_h * g.out_w * R * in_channels
    with k.parallel_loop(shape_product([x.type.shape[0], blocks]), work, name="nob") as i:
        n, ob = b.udiv(i, k.i64(blocks)), b.urem(i, k.i64(blocks))
        with k.loop(g.out_h, name="oh") as oh:
            ih, kh = b.udiv(oh, k.i64(g.s_h)), b.urem(oh, k.i64(g.s_h))
            w_row = b.mul(b.add(b.mul(ob, k.i64(g.k_h)), kh), k.i64(in_channels * g.k_w * R))

            def tile(iw0, nvec: int, width: int) -> None:
                acc = [[[k.scalar_slot(k.splat(k.load(bp, b.add(b.mul(ob, k.i64(R)), k.i64(r))), L))
                         for _ in range(nvec)] for _ in range(g.s_w)] for r in range(R)]
                with k.loop(in_channels, name="ic") as ic:
                    src = b.gep(xp, [k.linear([n, ic, ih, iw0], [None, in_channels, g.in_h, g.in_w])])
                    xs = [masked_load(k, src, v * L, [v * L + j < width for j in range(L)], L) for v in range(nvec)]
                    at = b.add(w_row, b.mul(ic, k.i64(g.k_w * R)))
                    for kw in range(g.s_w):
                        for r in range(R):
                            wv = k.splat(k.load(wp, b.add(at, k.i64(kw * R + r))), L)
                            for v in range(nvec):
                                slot = acc[r][kw][v]
                                b.store(k.fma(xs[v], wv, b.load(slot)), slot)
                for r in range(R):
                    oc = b.add(b.mul(ob, k.i64(R)), k.i64(r))
                    with b.if_then(b.icmp_signed("<", oc, k.i64(out_channels))):
                        base = k.linear([n, oc, oh, b.mul(iw0, k.i64(g.s_w))], [None, out_channels, g.out_h, g.out_w])
                        for v in range(nvec):
                            if g.s_w == 1:
                                masked_store(k, b.load(acc[r][0][v]), yp, b.add(base, k.i64(v * L)),
                                             [v * L + j < width for j in range(L)], L)
                                continue
                            a0, a1 = b.load(acc[r][0][v]), b.load(acc[r][1][v])
                            for half in range(2):
                                order = [j // 2 + (L if j % 2 else 0) + half * (L // 2) for j in range(L)]
                                out = b.shuffle_vector(a0, a1, ir.Constant(ir.VectorType(i32, L), order))
                                first = 2 * v * L + half * L
                                masked_store(k, out, yp, b.add(base, k.i64(first)),
                                             [first + j < 2 * width for j in range(L)], L)

            full = g.in_w // T
            if full:
                with k.loop(full, name="iwt") as t:
                    tile(b.mul(t, k.i64(T)), V, T)
            rest = g.in_w - full * T
            if rest:
                tile(k.i64(full * T), -(-rest // L), rest)


@lowering("ConvTranspose")
def lower_conv_transpose(k: KernelBuilder, node: Node) -> None:
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    g0 = TransposedGeometry2D.of(node, x.type.shape[2:], conv_transpose_window(node))
    if upsampling_supported(node, g0, k.lanes):
        lower_upsampling(k, node, g0)
        return
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    g = TransposedGeometry2D.of(node, x.type.shape[2:], conv_transpose_window(node))
    group = node.attr("group", 1)
    in_channels, ocg = w.type.shape[0], w.type.shape[1]
    icg, out_channels = in_channels // group, ocg * group
    b = k.b
    xp, wp = k.ptr(x), k.ptr(w)
    work = icg * g.in_h * g.in_w * g.k_h * g.k_w
    with k.parallel_loop(shape_product([x.type.shape[0], out_channels]), work, name="noc") as i:
        n, oc = b.udiv(i, k.i64(out_channels)), b.urem(i, k.i64(out_channels))
        plane = b.gep(k.ptr(y), [b.mul(b.add(b.mul(n, k.i64(out_channels)), oc), k.i64(g.out_h * g.out_w))])
        init = k.load(k.ptr(bias), oc) if bias is not None else k.f32(0.0)
        with k.loop(g.out_h * g.out_w, name="init") as i:
            k.store(init, plane, i)
        grp, local = b.udiv(oc, k.i64(ocg)), b.urem(oc, k.i64(ocg))
        with k.loop(icg, name="ic") as icl:
            ic = b.add(b.mul(grp, k.i64(icg)), icl)
            src_plane = b.gep(xp, [b.mul(b.add(b.mul(n, k.i64(in_channels)), ic), k.i64(g.in_h * g.in_w))])
            w_base = b.mul(b.add(b.mul(ic, k.i64(ocg)), local), k.i64(g.k_h * g.k_w))
            with k.loop(g.in_h, name="ih") as ih:
                src = b.gep(src_plane, [b.mul(ih, k.i64(g.in_w))])
                for kh in range(g.k_h):
                    oh = b.add(b.mul(ih, k.i64(g.s_h)), k.i64(kh * g.d_h - g.p_top))
                    with b.if_then(k.in_range(oh, g.out_h)):
                        dst = b.gep(plane, [b.mul(oh, k.i64(g.out_w))])
                        for kw in range(g.k_w):
                            lo, hi = g.column_range(kw)
                            if lo >= hi:
                                continue
                            weight = k.load(wp, b.add(w_base, k.i64(kh * g.k_w + kw)))
                            with k.loop(hi, start=lo, name="iw") as iw:
                                ow = b.add(b.mul(iw, k.i64(g.s_w)), k.i64(kw * g.d_w - g.p_left))
                                k.store(k.fma(k.load(src, iw), weight, k.load(dst, ow)), dst, ow)
