"""``lepton.QAveragePool``: the int8 average pool of ``ops/qpool.py``.

Per output position: ``S = sum(x - x_zp)`` over the window's input elements in int32 (exact:
``|S| <= 255 * MAX_COUNT``), then ``clamp(rint(fp32(S) * M[p]) + y_zp, 0, 255)`` with ``M`` the
compile-time table of ``ops/qpool.multipliers``. A global pool sums the plane's bytes (the loop
vectorizes) and subtracts ``count * x_zp`` once; a windowed one reads the taps that are not
padding (the column ranges known at compile time, as the float AveragePool).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from ...ir import Node, shape_product
from ...ops import qpool
from ...ops.qpool import avg_node
from ...ops.nn import pool_window
from .codegen import F32, KernelBuilder
from .conv import Geometry2D
from .registry import NotLowerable, lowering

I32 = ir.IntType(32)
I8 = ir.IntType(8)


def _requantize(k: KernelBuilder, total: ir.Value, m: ir.Value, y_zp: int) -> ir.Value:
    """``clamp(rint(fp32(total) * m) + y_zp, 0, 255)`` as an i8."""
    b = k.b
    v = b.fadd(k.intrinsic("llvm.rint", b.fmul(b.sitofp(total, F32), m)), k.f32(float(y_zp)))
    v = k.intrinsic("llvm.maxnum", v, k.f32(0.0))
    v = k.intrinsic("llvm.minnum", v, k.f32(255.0))
    return b.trunc(b.fptoui(v, I32), I8)


@lowering("QAveragePool")
def lower_qavgpool(k: KernelBuilder, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    x_zp, y_zp = int(node.attr("x_zero_point")), int(node.attr("y_zero_point"))
    m = qpool.multipliers(node.attr("x_scale"), node.attr("y_scale"), qpool.counts(node)).reshape(-1)
    b = k.b
    if node.attr("global_pool", 0):
        size = int(np.prod(x.type.shape[2:], dtype=np.int64))
        with k.parallel_loop(shape_product(x.type.shape[:2]), size, name="nc") as nc:
            plane = b.gep(k.ptr(x), [b.mul(nc, k.i64(size))])
            acc = k.scalar_slot(ir.Constant(I32, 0))
            with k.loop(size, name="s") as s:
                b.store(b.add(b.load(acc), b.zext(k.load(plane, s), I32)), acc)
            total = b.sub(b.load(acc), ir.Constant(I32, size * x_zp))
            k.store(_requantize(k, total, k.f32(float(m[0])), y_zp), k.ptr(y), nc)
        return
    if x.type.rank not in (3, 4):
        raise NotLowerable(f"{x.type.rank - 2}-D windows are not supported by the cpu backend")
    win = pool_window(avg_node(node))
    g = Geometry2D.of(node, x.type.shape[2:], win)
    table = k.constant(f"{node.name}.multipliers", m.astype(np.float32))
    with k.parallel_loop(shape_product(x.type.shape[:2]), g.out_h * g.out_w * g.k_h * g.k_w, name="nc") as nc:
        plane = b.gep(k.ptr(x), [b.mul(nc, k.i64(g.in_h * g.in_w))])
        out = b.gep(k.ptr(y), [b.mul(nc, k.i64(g.out_h * g.out_w))])
        with k.loop(g.out_h, name="oh") as oh:
            row = b.gep(out, [b.mul(oh, k.i64(g.out_w))])
            scale = b.gep(table, [b.mul(oh, k.i64(g.out_w))])
            sums = k.stack_array(I32, g.out_w)
            with k.loop(g.out_w, name="z") as ow:
                k.store(ir.Constant(I32, 0), sums, ow)
            for kh in range(g.k_h):
                ih = g.input_row(k, oh, kh)
                with b.if_then(k.in_range(ih, g.in_h)):
                    src = b.gep(plane, [b.mul(ih, k.i64(g.in_w))])
                    for kw in range(g.k_w):
                        lo, hi = g.column_range(kw)
                        if lo >= hi:
                            continue
                        off = kw * g.d_w - g.p_left
                        with k.loop(hi, start=lo, name="ow") as ow:
                            col = b.add(b.mul(ow, k.i64(g.s_w)), k.i64(off))
                            v = b.sub(b.zext(k.load(src, col), I32), ir.Constant(I32, x_zp))
                            k.store(b.add(k.load(sums, ow), v), sums, ow)
            with k.loop(g.out_w, name="q") as ow:
                k.store(_requantize(k, k.load(sums, ow), k.load(scale, ow), y_zp), row, ow)
