"""Direct convolution (1-D and 2-D, groups, strides, dilations, pads).

Loop order: image, output channel, output row; then input channel and kernel
row; then a loop over the output row per kernel column whose bounds are
computed at compile time so that padding needs no test in the inner loop,
which is contiguous for stride 1 and vectorizes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import UnsupportedOpError
from ...ir import Node
from ...ops.nn import conv_window, pool_window
from ...ops.shapes import Window
from .codegen import KernelBuilder
from .registry import lowering


@dataclass(frozen=True)
class Geometry2D:
    """A 1-D or 2-D window seen as 2-D (a 1-D one gets a height of 1)."""

    in_h: int
    in_w: int
    out_h: int
    out_w: int
    k_h: int
    k_w: int
    s_h: int
    s_w: int
    d_h: int
    d_w: int
    p_top: int
    p_left: int

    @classmethod
    def of(cls, node: Node, spatial: tuple, win: Window) -> "Geometry2D":
        if len(spatial) == 1:
            return cls(1, spatial[0], 1, win.out[0], 1, win.kernel[0], 1, win.strides[0], 1,
                       win.dilations[0], 0, win.pads_begin[0])
        if len(spatial) == 2:
            return cls(spatial[0], spatial[1], win.out[0], win.out[1], win.kernel[0], win.kernel[1],
                       win.strides[0], win.strides[1], win.dilations[0], win.dilations[1],
                       win.pads_begin[0], win.pads_begin[1])
        raise UnsupportedOpError([(node.op, node.name, "", 17)], f"{len(spatial)}-D windows are not supported")

    def column_range(self, kw: int) -> tuple[int, int]:
        """Output columns ``[lo, hi)`` whose input column for kernel column ``kw`` is not padding."""
        off = kw * self.d_w - self.p_left
        lo = max(0, -(off // self.s_w) if off < 0 else 0)
        hi = min(self.out_w, (self.in_w - 1 - off) // self.s_w + 1) if self.in_w - 1 - off >= 0 else 0
        return lo, hi


@lowering("Conv")
def lower_conv(k: KernelBuilder, node: Node) -> None:
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    y = node.outputs[0]
    g = Geometry2D.of(node, x.type.shape[2:], conv_window(node))
    group = node.attr("group", 1)
    channels, out_channels = x.type.shape[1], w.type.shape[0]
    icg, ocg = channels // group, out_channels // group
    xp, wp, yp = k.ptr(x), k.ptr(w), k.ptr(y)
    b = k.b
    with k.loop(k.dim(x.type.shape[0]), name="n") as n, k.loop(out_channels, name="oc") as oc:
        first_in = b.mul(b.udiv(oc, k.i64(ocg)), k.i64(icg))
        with k.loop(g.out_h, name="oh") as oh:
            row = b.gep(yp, [k.linear([n, oc, oh, 0], [None, out_channels, g.out_h, g.out_w])])
            init = k.load(k.ptr(bias), oc) if bias is not None else k.f32(0.0)
            with k.loop(g.out_w, name="ow0") as ow:
                k.store(init, row, ow)
            with k.loop(icg, name="ic") as ic:
                cin = b.add(first_in, ic)
                for kh in range(g.k_h):
                    ih = b.sub(b.add(b.mul(oh, k.i64(g.s_h)), k.i64(kh * g.d_h)), k.i64(g.p_top))
                    with b.if_then(k.in_range(ih, g.in_h)):
                        src = b.gep(xp, [k.linear([n, cin, ih, 0], [None, channels, g.in_h, g.in_w])])
                        for kw in range(g.k_w):
                            lo, hi = g.column_range(kw)
                            if lo >= hi:
                                continue
                            weight = k.load(wp, k.linear([oc, ic, kh, kw], [None, icg, g.k_h, g.k_w]))
                            off = kw * g.d_w - g.p_left
                            with k.loop(hi, start=lo, name="ow") as ow:
                                col = b.add(b.mul(ow, k.i64(g.s_w)), k.i64(off))
                                k.store(k.fma(weight, k.load(src, col), k.load(row, ow)), row, ow)


@lowering("MaxPool")
def lower_maxpool(k: KernelBuilder, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    g = Geometry2D.of(node, x.type.shape[2:], pool_window(node))
    channels = x.type.shape[1]
    xp, yp = k.ptr(x), k.ptr(y)
    b = k.b
    with k.loop(k.dim(x.type.shape[0]), name="n") as n, k.loop(channels, name="c") as c:
        with k.loop(g.out_h, name="oh") as oh:
            row = b.gep(yp, [k.linear([n, c, oh, 0], [None, channels, g.out_h, g.out_w])])
            with k.loop(g.out_w, name="ow0") as ow:
                k.store(k.f32(float("-inf")), row, ow)
            for kh in range(g.k_h):
                ih = b.sub(b.add(b.mul(oh, k.i64(g.s_h)), k.i64(kh * g.d_h)), k.i64(g.p_top))
                with b.if_then(k.in_range(ih, g.in_h)):
                    src = b.gep(xp, [k.linear([n, c, ih, 0], [None, channels, g.in_h, g.in_w])])
                    for kw in range(g.k_w):
                        lo, hi = g.column_range(kw)
                        off = kw * g.d_w - g.p_left
                        if lo >= hi:
                            continue
                        with k.loop(hi, start=lo, name="ow") as ow:
                            col = b.add(b.mul(ow, k.i64(g.s_w)), k.i64(off))
                            k.store(k.max(k.load(row, ow), k.load(src, col)), row, ow)
