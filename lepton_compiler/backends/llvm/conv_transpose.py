"""ConvTranspose (1-D and 2-D, groups, strides, dilations, pads, output_padding, output_shape).

Scatter form: each input row, for each kernel row that lands inside the output, adds
``x[ih, iw] * w[kh, kw]`` into output row ``ih * s_h + kh * d_h - p_top`` at columns
``iw * s_w + kw * d_w - p_left``. The kernel taps are unrolled and each tap's range of
input columns that land inside the output is computed at compile time, so the inner
loop has no bounds test. One (image, output channel) plane at a time: planes are
independent, which is what a parallel outer loop needs.
"""

from __future__ import annotations

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


@lowering("ConvTranspose")
def lower_conv_transpose(k: KernelBuilder, node: Node) -> None:
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
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
