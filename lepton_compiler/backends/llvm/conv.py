"""Direct convolution (1-D and 2-D, groups, strides, dilations, pads), with the fused
epilogue of ``FusedConv``: residual add, activation and max pooling.

Loop order: image, output channel, output row; then input channel and kernel
row; then a loop over the output row per kernel column whose bounds are
computed at compile time, so padding needs no test in the inner loop, which is
contiguous for stride 1 and vectorizes. With pooling, each conv row is built in
a stack buffer and max-reduced into the pooled row at once: the full conv
output never reaches memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from llvmlite import ir

from ...ir import Node, Value, shape_product
from ...ops.fused import conv_node, conv_output_type, pool_node
from ...ops.nn import conv_window, pool_window
from ...ops.shapes import Window
from .activations import activate
from .codegen import F32, KernelBuilder
from .elementwise import broadcast_strides
from .registry import NotLowerable, lowering


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
        raise NotLowerable(f"{len(spatial)}-D windows are not supported by the cpu backend")

    def column_range(self, kw: int) -> tuple[int, int]:
        """Output columns ``[lo, hi)`` whose input column for kernel column ``kw`` is not padding."""
        off = kw * self.d_w - self.p_left
        lo = max(0, -(off // self.s_w) if off < 0 else 0)
        hi = min(self.out_w, (self.in_w - 1 - off) // self.s_w + 1) if self.in_w - 1 - off >= 0 else 0
        return lo, hi

    def input_row(self, k: KernelBuilder, out_row: ir.Value, kh: int) -> ir.Value:
        return k.b.sub(k.b.add(k.b.mul(out_row, k.i64(self.s_h)), k.i64(kh * self.d_h)), k.i64(self.p_top))


def emit_window_row(k: KernelBuilder, g: Geometry2D, src: ir.Value, dst: ir.Value, kw: int, combine) -> None:
    """``dst[ow] = combine(dst[ow], src[ow * s_w + kw * d_w - p_left])`` over the columns that are not padding."""
    lo, hi = g.column_range(kw)
    if lo >= hi:
        return
    off = kw * g.d_w - g.p_left
    with k.loop(hi, start=lo, name="ow") as ow:
        col = k.b.add(k.b.mul(ow, k.i64(g.s_w)), k.i64(off))
        k.store(combine(k.load(dst, ow), k.load(src, col)), dst, ow)


@dataclass
class ConvParts:
    x: Value
    w: Value
    bias: Optional[Value]
    residual: Optional[Value]
    conv_shape: tuple       # [N, OC, OH, OW] (or 1-D) of the conv before pooling
    activation: str
    activation_params: list


def emit_conv_row(k: KernelBuilder, parts: ConvParts, g: Geometry2D, group: int,
                  n: ir.Value, oc: ir.Value, oh: ir.Value, row: ir.Value) -> None:
    """One output row of the conv with bias, residual and activation applied."""
    b = k.b
    channels, out_channels = parts.x.type.shape[1], parts.w.type.shape[0]
    icg, ocg = channels // group, out_channels // group
    xp, wp = k.ptr(parts.x), k.ptr(parts.w)
    init = k.load(k.ptr(parts.bias), oc) if parts.bias is not None else k.f32(0.0)
    with k.loop(g.out_w, name="ow0") as ow:
        k.store(init, row, ow)
    first_in = b.mul(b.udiv(oc, k.i64(ocg)), k.i64(icg))
    with k.loop(icg, name="ic") as ic:
        cin = b.add(first_in, ic)
        for kh in range(g.k_h):
            ih = g.input_row(k, oh, kh)
            with b.if_then(k.in_range(ih, g.in_h)):
                src = b.gep(xp, [k.linear([n, cin, ih, 0], [None, channels, g.in_h, g.in_w])])
                for kw in range(g.k_w):
                    weight = k.load(wp, k.linear([oc, ic, kh, kw], [None, icg, g.k_h, g.k_w]))
                    emit_window_row(k, g, src, row, kw, lambda acc, v, weight=weight: k.fma(weight, v, acc))
    if parts.residual is None and not parts.activation:
        return
    if parts.residual is not None:
        shape4 = parts.conv_shape if len(parts.conv_shape) == 4 else parts.conv_shape[:2] + (1,) + parts.conv_shape[2:]
        res_shape = parts.residual.type.shape
        res_shape = res_shape if len(parts.conv_shape) == 4 else res_shape[:-1] + (1,) + res_shape[-1:]
        strides = broadcast_strides(k, res_shape, shape4)
        res_base = b.add(b.add(b.mul(n, k.i64(strides[0])), b.mul(oc, k.i64(strides[1]))),
                         b.mul(oh, k.i64(strides[2])))
    with k.loop(g.out_w, name="ep") as ow:
        value = k.load(row, ow)
        if parts.residual is not None:
            at = b.add(res_base, b.mul(ow, k.i64(strides[3])))
            value = b.fadd(value, k.load(k.ptr(parts.residual), at))
        k.store(activate(k, parts.activation, value, parts.activation_params), row, ow)


def conv_parts(node: Node) -> tuple[ConvParts, Geometry2D]:
    x, w = node.inputs[0], node.inputs[1]
    plain = conv_node(node) if node.op == "FusedConv" else node
    shape = conv_output_type(node).shape if node.op == "FusedConv" else node.outputs[0].type.shape
    parts = ConvParts(
        x, w,
        node.inputs[2] if len(node.inputs) > 2 else None,
        node.inputs[3] if len(node.inputs) > 3 else None,
        shape, node.attr("activation", ""), list(node.attr("activation_params", [])))
    return parts, Geometry2D.of(node, x.type.shape[2:], conv_window(plain))


@lowering("Conv", "FusedConv")
def lower_conv(k: KernelBuilder, node: Node) -> None:
    from .conv_simd import SimdConv
    from .conv_spatial import SpatialConv
    from .winograd import WinogradConv

    variant = choose_conv_kernel(node, k.lanes, k.registers)
    if variant == "spatial":
        SpatialConv(k, node, k.lanes, k.registers).emit()
    elif variant == "winograd":
        WinogradConv(k, node, k.lanes, k.registers).emit()
    elif variant == "simd":
        SimdConv(k, node, k.lanes, k.registers).emit()
    else:
        lower_direct_conv(k, node)


SPATIAL_CALIBRATION = 0.75
"""The two kernels' cost estimates side by side: measured on Zen 5 (ResNet's 3x3 layers at 10x10
to 56x56, 16 and 32 channels), the spatial kernel took 0.6-0.8 of the time its estimate gave
relative to the channel-blocked one's."""

FORCED_KERNEL: Optional[str] = None
"""Tests and benchmarks: a variant every conv that kernel supports gets instead of the chosen one."""


def choose_conv_kernel(node: Node, lanes: int, registers: Optional[int] = None) -> str:
    """"winograd", "spatial", "simd" or "direct": the kernel a Conv/FusedConv gets on a target
    with ``lanes`` floats per vector and ``registers`` vector registers (``lepton inspect``
    reports the same choice)."""
    from .conv_simd import simd_supported
    from .conv_spatial import simd_cost, spatial_cost, spatial_supported
    from .winograd import winograd_pays, winograd_supported

    registers = registers or (32 if lanes >= 16 else 16)
    supported = {"winograd": lambda: winograd_supported(node, lanes), "spatial": lambda: spatial_supported(node, lanes),
                 "simd": lambda: simd_supported(node, lanes), "direct": lambda: True}
    if FORCED_KERNEL is not None and supported[FORCED_KERNEL]():
        return FORCED_KERNEL
    if winograd_supported(node, lanes) and winograd_pays(node):
        return "winograd"
    simd, spatial = simd_supported(node, lanes), spatial_supported(node, lanes)
    if simd and node.attr("pool_kernel") is not None:
        # measured on ResNet's and SqueezeNet's stems (7x7/2 and 3x3/2 convs, 3x3/2 pools, 20 to
        # 112 outputs a row): the channel-blocked kernel's pooled rows ran 1.15-1.25x faster than
        # the spatial kernel's bands (which pooled grouped layers still get)
        return "simd"
    if simd and spatial:
        return "spatial" if SPATIAL_CALIBRATION * spatial_cost(node, lanes, registers) < simd_cost(node, lanes, registers) \
            else "simd"
    if spatial:
        return "spatial"
    if simd:
        return "simd"
    return "direct"


def lower_direct_conv(k: KernelBuilder, node: Node) -> None:
    """The portable kernel: any group count, residual with pooling, scalar-only activations."""
    parts, g = conv_parts(node)
    y = node.outputs[0]
    out_channels = parts.w.type.shape[0]
    group = node.attr("group", 1)
    b = k.b
    if node.op == "FusedConv" and node.attr("pool_kernel") is not None:
        emit_pooled_conv(k, node, parts, g)
        return
    work = g.out_h * g.out_w * parts.x.type.shape[1] // group * g.k_h * g.k_w
    with k.parallel_loop(shape_product([parts.x.type.shape[0], out_channels]), work) as i:
        n, oc = b.udiv(i, k.i64(out_channels)), b.urem(i, k.i64(out_channels))
        with k.loop(g.out_h, name="oh") as oh:
            row = b.gep(k.ptr(y), [k.linear([n, oc, oh, 0], [None, out_channels, g.out_h, g.out_w])])
            emit_conv_row(k, parts, g, group, n, oc, oh, row)


def emit_pooled_conv(k: KernelBuilder, node: Node, parts: ConvParts, g: Geometry2D) -> None:
    """Conv rows built one at a time in a stack buffer and max-reduced into the pooled rows."""
    y = node.outputs[0]
    out_channels = parts.w.type.shape[0]
    p = Geometry2D.of(node, parts.conv_shape[2:], pool_window(pool_node(node, conv_output_type(node))))
    scratch = k.stack_array(F32, g.out_w)
    b = k.b
    with k.loop(k.dim(parts.x.type.shape[0]), name="n") as n, k.loop(out_channels, name="oc") as oc:
        with k.loop(p.out_h, name="ph") as ph:
            prow = b.gep(k.ptr(y), [k.linear([n, oc, ph, 0], [None, out_channels, p.out_h, p.out_w])])
            with k.loop(p.out_w, name="pw0") as pw:
                k.store(k.f32(float("-inf")), prow, pw)
            for pkh in range(p.k_h):
                oh = p.input_row(k, ph, pkh)
                with b.if_then(k.in_range(oh, p.in_h)):
                    emit_conv_row(k, parts, g, node.attr("group", 1), n, oc, oh, scratch)
                    for pkw in range(p.k_w):
                        emit_window_row(k, p, scratch, prow, pkw, k.max)


@lowering("MaxPool")
def lower_maxpool(k: KernelBuilder, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    g = Geometry2D.of(node, x.type.shape[2:], pool_window(node))
    byte = x.type.dtype in ("uint8", "int8")
    if byte:
        byte_max = _byte_max(k, x.type.dtype == "int8")
        if k.lanes >= 4 and g.s_w in (1, 2) and g.out_h * maxpool_row_width(g, 4 * k.lanes) <= 128 * 1024:
            lower_vector_maxpool(k, node, g, byte=True)
            return
    elif k.lanes >= 4 and g.s_w in (1, 2) and 4 * g.out_h * maxpool_row_width(g, k.lanes) <= 128 * 1024:
        lower_vector_maxpool(k, node, g)
        return
    channels = x.type.shape[1]
    b = k.b
    lowest = ir.Constant(ir.IntType(8), -128 if x.type.dtype == "int8" else 0) if byte else k.f32(float("-inf"))
    with k.loop(k.dim(x.type.shape[0]), name="n") as n, k.loop(channels, name="c") as c:
        with k.loop(g.out_h, name="oh") as oh:
            row = b.gep(k.ptr(y), [k.linear([n, c, oh, 0], [None, channels, g.out_h, g.out_w])])
            with k.loop(g.out_w, name="ow0") as ow:
                k.store(lowest, row, ow)
            for kh in range(g.k_h):
                ih = g.input_row(k, oh, kh)
                with b.if_then(k.in_range(ih, g.in_h)):
                    src = b.gep(k.ptr(x), [k.linear([n, c, ih, 0], [None, channels, g.in_h, g.in_w])])
                    for kw in range(g.k_w):
                        emit_window_row(k, g, src, row, kw, byte_max if byte else k.max)


def _byte_max(k: KernelBuilder, signed: bool):
    """The max of two 8-bit values or vectors (``llvm.smax`` / ``llvm.umax``: ``pmaxsb`` / ``pmaxub``)."""
    return lambda acc, v: k.intrinsic("llvm.smax" if signed else "llvm.umax", acc, v)


def _byte_vector_access(k: KernelBuilder, L: int):
    """Unaligned load, masked load (off lanes 0) and masked store of ``L`` bytes: the 8-bit forms of
    ``vload`` / ``conv_spatial.masked_load`` / ``masked_store``."""
    from .conv_spatial import _intrinsic

    i8, i32 = ir.IntType(8), ir.IntType(32)
    vec, mvec = ir.VectorType(i8, L), ir.VectorType(ir.IntType(1), L)
    b = k.b

    def at(ptr, offset):
        return b.bitcast(b.gep(ptr, [k.i64(offset)], inbounds=True), vec.as_pointer())

    def load(ptr, offset, mask):
        if mask is None or all(mask):
            return b.load(at(ptr, offset), align=1)
        fn = _intrinsic(k, f"llvm.masked.load.v{L}i8.p0", ir.FunctionType(vec, [vec.as_pointer(), i32, mvec, vec]))
        return b.call(fn, [at(ptr, offset), ir.Constant(i32, 1), ir.Constant(mvec, [int(m) for m in mask]),
                           ir.Constant(vec, [0] * L)])

    def store(value, ptr, offset, mask):
        if mask is None or all(mask):
            b.store(value, at(ptr, offset), align=1)
            return
        if not any(mask):
            return
        fn = _intrinsic(k, f"llvm.masked.store.v{L}i8.p0",
                        ir.FunctionType(ir.VoidType(), [vec, vec.as_pointer(), i32, mvec]))
        b.call(fn, [value, at(ptr, offset), ir.Constant(i32, 1), ir.Constant(mvec, [int(m) for m in mask])])

    return load, store


def lower_vector_maxpool(k: KernelBuilder, node: Node, g: Geometry2D, byte: bool = False) -> None:
    """Per output row: the max of the window's input rows, vector by vector, into a stack row
    whose padding columns are -inf; then the max across the window's columns, ``L`` outputs at a
    time (column stride 2: the even lanes of two loads). Max is exact, so the result is the same
    bits as the scalar kernel's (NaN included).

    ``byte``: a uint8 / int8 tensor (an int8 region's activations), the same passes on vectors of
    four times as many bytes, with an unsigned / signed max and the dtype's minimum (0 / -128) as
    padding: it never wins over a real value, and a window of padding only (ceil_mode) gives the
    minimum, as ONNX Runtime's MaxPool does."""
    from .conv_spatial import masked_load, masked_store

    x, y = node.inputs[0], node.outputs[0]
    b = k.b
    if byte:
        L = maxpool_lanes(g, 4 * k.lanes)
        elem = ir.IntType(8)
        vec = ir.VectorType(elem, L)
        minus_inf = ir.Constant(vec, [-128 if x.type.dtype == "int8" else 0] * L)
        width = maxpool_row_width(g, 4 * k.lanes)
        bload, bstore = _byte_vector_access(k, L)
        vmax = _byte_max(k, x.type.dtype == "int8")

        def vload(ptr, offset, lanes):
            return bload(ptr, offset, None)

        def vstore(value, ptr, offset):
            bstore(value, ptr, offset, None)

        def mload(k, ptr, offset, mask, lanes):
            return bload(ptr, offset, mask)

        def mstore(k, value, ptr, offset, mask, lanes):
            bstore(value, ptr, offset, mask)
    else:
        L = maxpool_lanes(g, k.lanes)
        elem = F32
        vec = ir.VectorType(F32, L)
        minus_inf = ir.Constant(vec, [float("-inf")] * L)
        width = maxpool_row_width(g, k.lanes)
        vload, vstore, mload, mstore, vmax = k.vload, k.vstore, masked_load, masked_store, k.max
    rows = k.stack_array(elem, g.out_h * width)
    with k.loop(g.out_h * width // L, name="fill") as i:
        vstore(minus_inf, rows, b.mul(i, k.i64(L)))
    channels = x.type.shape[1]
    even = ir.Constant(ir.VectorType(ir.IntType(32), L), [2 * j for j in range(L)])
    work = g.out_h * g.out_w * g.k_h * g.k_w
    with k.parallel_loop(shape_product([x.type.shape[0], channels]), work, name="nc") as nc:
        plane = b.gep(k.ptr(x), [b.mul(nc, k.i64(g.in_h * g.in_w))])
        out_plane = b.gep(k.ptr(y), [b.mul(nc, k.i64(g.out_h * g.out_w))])
        # pass 1, every output row: the max over the window's rows (its own stack row, so that
        # pass 2 does not load what was just stored: store forwarding fails on those loads)
        with k.loop(g.out_h, name="oh") as oh:
            middle = b.gep(rows, [b.add(b.mul(oh, k.i64(width)), k.i64(g.p_left))])

            def rows_max(at, mask):
                best = k.scalar_slot(minus_inf)
                for kh in range(g.k_h):
                    ih = g.input_row(k, oh, kh)
                    with b.if_then(k.in_range(ih, g.in_h)):
                        src = b.gep(plane, [b.mul(ih, k.i64(g.in_w))])
                        v = vload(src, at, L) if mask is None else mload(k, src, at, mask, L)
                        b.store(vmax(b.load(best), v), best)
                if mask is None:
                    vstore(b.load(best), middle, at)
                else:
                    mstore(k, b.load(best), middle, at, mask, L)

            k.vector_tiles(g.in_w, L, lambda at, width: rows_max(at, None if width == L else
                                                                 [j < width for j in range(L)]), name="iw")
        # pass 2: the max across the window's columns
        with k.loop(g.out_h, name="oh2") as oh:
            row = b.gep(rows, [b.mul(oh, k.i64(width))])
            out_row = b.gep(out_plane, [b.mul(oh, k.i64(g.out_w))])

            def columns_max(ow0, valid: int):
                best = minus_inf
                for kw in range(g.k_w):
                    col = b.add(b.mul(ow0, k.i64(g.s_w)), k.i64(kw * g.d_w))
                    if g.s_w == 1:
                        v = vload(row, col, L)
                    else:
                        v = b.shuffle_vector(vload(row, col, L), vload(row, b.add(col, k.i64(L)), L), even)
                    best = vmax(best, v)
                mstore(k, best, out_row, ow0, [j < valid for j in range(L)], L)

            k.vector_tiles(g.out_w, L, columns_max, name="ow")


def maxpool_lanes(g: Geometry2D, lanes: int) -> int:
    L = lanes
    while L > 4 and L // 2 >= g.out_w:
        L //= 2
    return L


def maxpool_row_width(g: Geometry2D, lanes: int) -> int:
    """Floats per stack row of the vector MaxPool: pool padding, the input row, and room for the
    last vector's loads (all -inf but the input), a whole number of vectors."""
    L = maxpool_lanes(g, lanes)
    right = max(0, (g.out_w - 1) * g.s_w + (g.k_w - 1) * g.d_w - g.p_left - (g.in_w - 1))
    last_load = (g.out_w - 1) // L * L * g.s_w + (g.k_w - 1) * g.d_w + L * g.s_w
    width = max(g.p_left + g.in_w + right, last_load)
    return -(-width // L) * L
