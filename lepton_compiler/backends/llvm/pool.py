"""AveragePool (1-D and 2-D), GlobalAveragePool, GlobalMaxPool and LRN.

AveragePool sums each output row from the input rows its windows cover (the same
padding-free column ranges as MaxPool, computed at compile time), then scales the
row by ``1 / count``: a compile-time table per output position that already knows
``count_include_pad``, ceil_mode's partial windows and dilations.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from ...ir import Node, Value, dim_factors, shape_product
from ...ops.nn import pool_window
from ...ops.pool import inverse_counts, lrn_params, lrn_span
from .codegen import F32, KernelBuilder
from .conv import Geometry2D, emit_window_row
from .conv_spatial import masked_load
from .registry import lowering


def _plane_size(x: Value) -> int:
    """Elements of one (image, channel) plane, for the work estimate (a dynamic dim counts as 1)."""
    return dim_factors(shape_product(x.type.shape[2:]))[1]


@lowering("AveragePool")
def lower_avgpool(k: KernelBuilder, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    win = pool_window(node)
    g = Geometry2D.of(node, x.type.shape[2:], win)
    inverse = k.constant(f"{node.name}.inverse_counts",
                         inverse_counts(node, win, x.type.shape[2:]).astype(np.float32).reshape(-1))
    b = k.b
    work = g.out_h * g.out_w * g.k_h * g.k_w
    with k.parallel_loop(shape_product(x.type.shape[:2]), work, name="nc") as nc:
        with k.loop(g.out_h, name="oh") as oh:
            row = b.gep(k.ptr(y), [k.linear([nc, oh, 0], [None, g.out_h, g.out_w])])
            with k.loop(g.out_w, name="ow0") as ow:
                k.store(k.f32(0.0), row, ow)
            for kh in range(g.k_h):
                ih = g.input_row(k, oh, kh)
                with b.if_then(k.in_range(ih, g.in_h)):
                    src = b.gep(k.ptr(x), [k.linear([nc, ih, 0], [None, g.in_h, g.in_w])])
                    for kw in range(g.k_w):
                        emit_window_row(k, g, src, row, kw, b.fadd)
            scale = b.gep(inverse, [b.mul(oh, k.i64(g.out_w))])
            with k.loop(g.out_w, name="avg") as ow:
                k.store(b.fmul(k.load(row, ow), k.load(scale, ow)), row, ow)


def plane_reduce(k: KernelBuilder, plane, size: int, is_max: bool):
    """The sum (or NaN-propagating max) of ``size`` floats at ``plane`` (a size known at compile
    time): up to four vector accumulators, a masked tail, then a tree across the lanes."""
    b = k.b
    L = k.lanes
    vec = ir.VectorType(F32, L)
    start = float("-inf") if is_max else 0.0
    combine = k.max if is_max else b.fadd
    full = size // L
    chains = max(1, min(4, full))
    accs = [k.scalar_slot(ir.Constant(vec, [start] * L)) for _ in range(chains)]
    if full // chains:
        with k.loop(full // chains, name="red") as i:
            base = b.mul(i, k.i64(chains * L))
            for c in range(chains):
                b.store(combine(b.load(accs[c]), k.vload(plane, b.add(base, k.i64(c * L)), L)), accs[c])
    for v in range(full // chains * chains, full):
        b.store(combine(b.load(accs[0]), k.vload(plane, v * L, L)), accs[0])
    acc = b.load(accs[0])
    for c in range(1, chains):
        acc = combine(acc, b.load(accs[c]))
    if size % L:
        tail = masked_load(k, plane, full * L, [j < size % L for j in range(L)], L)
        if is_max:  # the masked-off lanes read as 0: replace them by -inf
            keep = ir.Constant(ir.VectorType(ir.IntType(1), L), [int(j < size % L) for j in range(L)])
            tail = b.select(keep, tail, ir.Constant(vec, [start] * L))
        acc = combine(acc, tail)
    width = L
    while width > 1:  # halves added (or maxed) onto each other
        half = width // 2
        lo = b.shuffle_vector(acc, acc, ir.Constant(ir.VectorType(ir.IntType(32), half), list(range(half))))
        hi = b.shuffle_vector(acc, acc, ir.Constant(ir.VectorType(ir.IntType(32), half), list(range(half, width))))
        acc, width = combine(lo, hi), half
    return b.extract_element(acc, ir.Constant(ir.IntType(32), 0))


@lowering("GlobalAveragePool", "GlobalMaxPool")
def lower_global_pool(k: KernelBuilder, node: Node) -> None:
    """One reduction over the spatial positions of each (image, channel) plane."""
    x, y = node.inputs[0], node.outputs[0]
    dims = k.dims(x)
    size = k.product(dims[2:])
    average = node.op == "GlobalAveragePool"
    b = k.b
    static = dim_factors(shape_product(x.type.shape[2:]))
    if k.lanes >= 4 and not static[0]:
        with k.parallel_loop(shape_product(x.type.shape[:2]), _plane_size(x), name="nc") as nc:
            total = plane_reduce(k, b.gep(k.ptr(x), [b.mul(nc, size)]), static[1], not average)
            if average:
                total = b.fdiv(total, k.f32(float(static[1])))
            k.store(total, k.ptr(y), nc)
        return
    with k.parallel_loop(shape_product(x.type.shape[:2]), _plane_size(x), name="nc") as nc:
        plane = b.gep(k.ptr(x), [b.mul(nc, size)])
        acc = k.scalar_slot(k.f32(0.0 if average else float("-inf")))
        with k.loop(size, name="s") as s:
            v = k.load(plane, s)
            b.store(b.fadd(b.load(acc), v) if average else k.max(b.load(acc), v), acc)
        total = b.load(acc)
        if average:
            total = b.fdiv(total, b.uitofp(size, total.type))
        k.store(total, k.ptr(y), nc)


@lowering("LRN")
def lower_lrn(k: KernelBuilder, node: Node) -> None:
    """``y = x / (bias + alpha / size * sum of x^2 over nearby channels) ** beta``; the sum is
    accumulated in ``y`` one channel plane at a time."""
    x, y = node.inputs[0], node.outputs[0]
    size, alpha, beta, bias = lrn_params(node)
    before, after = lrn_span(size)
    dims = k.dims(x)
    channels = x.type.shape[1]
    plane = k.product(dims[2:])
    b = k.b
    with k.parallel_loop(shape_product(x.type.shape[:2]), _plane_size(x) * (size + 20), name="nc") as nc:
        n, c = b.udiv(nc, k.i64(channels)), b.urem(nc, k.i64(channels))
        out = b.gep(k.ptr(y), [b.mul(nc, plane)])
        with k.loop(plane, name="z") as s:
            k.store(k.f32(0.0), out, s)
        low = b.sub(c, k.i64(before))
        low = b.select(b.icmp_signed("<", low, k.i64(0)), k.i64(0), low)
        high = b.add(c, k.i64(after + 1))
        high = b.select(b.icmp_signed(">", high, k.i64(channels)), k.i64(channels), high)
        with k.loop(high, start=low, name="cc") as cc:
            src = b.gep(k.ptr(x), [b.mul(b.add(b.mul(n, k.i64(channels)), cc), plane)])
            with k.loop(plane, name="sq") as s:
                v = k.load(src, s)
                k.store(k.fma(v, v, k.load(out, s)), out, s)
        src = b.gep(k.ptr(x), [b.mul(nc, plane)])
        with k.loop(plane, name="div") as s:
            base = b.fadd(k.f32(bias), b.fmul(k.f32(alpha / size), k.load(out, s)))
            k.store(b.fdiv(k.load(src, s), k.intrinsic("llvm.pow", base, k.f32(beta))), out, s)
