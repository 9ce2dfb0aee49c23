"""QuantizeLinear and DequantizeLinear (per tensor or per axis; uint8, int8 and, for
DequantizeLinear, int32), in the order of ``ops/qmath.py``:

``q = saturate(rint(x / scale) + zero_point)`` with NaN -> 0 (a division, as ONNX Runtime
does, not a multiply by the reciprocal), and ``y = fp32(q - zero_point) * scale``.
The elementwise loops are scalar code that LLVM vectorizes.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from ...ir import Node, Value
from .codegen import F32, I64, KernelBuilder
from .registry import NotLowerable, lowering

I32 = ir.IntType(32)
LIMITS = {"uint8": (0, 255), "int8": (-128, 127)}


def _params(node: Node, x: Value):
    """(scale[], zero point[], axis) as compile-time arrays; axis is None for a per-tensor scale."""
    scale_v = node.inputs[1]
    zp_v = node.inputs[2] if len(node.inputs) > 2 else None
    if not scale_v.is_const or (zp_v is not None and not zp_v.is_const):
        raise NotLowerable(f"{node.op} needs a constant scale and zero point")
    scale = np.asarray(scale_v.const, np.float32).reshape(-1)
    zp = np.zeros(scale.shape, np.int64) if zp_v is None else np.asarray(zp_v.const).astype(np.int64).reshape(-1)
    if scale.size == 1:
        return scale, zp, None
    rank = x.type.rank
    return scale, zp, node.attr("axis", 1) % rank


def _loops(k: KernelBuilder, x: Value, axis, body) -> None:
    """``body(flat index, axis index or None)`` over every element of ``x``."""
    dims = k.dims(x)
    if axis is None:
        with k.parallel_loop(x.type.shape[0] if x.type.rank else 1, 1, name="q0") as i:
            inner = k.product(dims[1:]) if x.type.rank else k.i64(1)
            with k.loop(inner, name="q") as j:
                body(k.b.add(k.b.mul(i, inner), j), None)
        return
    outer, length, inner = k.product(dims[:axis]), dims[axis], k.product(dims[axis + 1:])
    b = k.b
    with k.loop(outer, name="qo") as o, k.loop(length, name="qa") as a:
        base = b.mul(b.add(b.mul(o, length), a), inner)
        with k.loop(inner, name="qi") as i:
            body(b.add(base, i), a)


@lowering("QuantizeLinear")
def lower_quantize(k: KernelBuilder, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    scale, zp, axis = _params(node, x)
    lo, hi = LIMITS[y.type.dtype]
    scales = k.constant(f"{node.name}.scale", scale)
    zps = k.constant(f"{node.name}.zero_point", zp.astype(np.float32))
    xp, yp = k.ptr(x), k.ptr(y)
    b = k.b
    zero = k.i64(0)

    def body(i, a):
        s = k.load(scales, a if a is not None else zero)
        z = k.load(zps, a if a is not None else zero)
        v = b.fadd(k.intrinsic("llvm.rint", b.fdiv(k.load(xp, i), s)), z)
        v = b.select(b.fcmp_ordered("<", v, k.f32(lo)), k.f32(lo), v)
        v = b.select(b.fcmp_ordered(">", v, k.f32(hi)), k.f32(hi), v)
        v = b.select(b.fcmp_unordered("uno", v, v), k.f32(0.0), v)
        k.store(b.trunc(b.fptosi(v, I32), ir.IntType(8)), yp, i)

    _loops(k, x, axis, body)


@lowering("DequantizeLinear")
def lower_dequantize(k: KernelBuilder, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    scale, zp, axis = _params(node, x)
    wide = I64 if x.type.dtype == "int32" else I32
    scales = k.constant(f"{node.name}.scale", scale)
    zps = k.constant(f"{node.name}.zero_point", zp)
    xp, yp = k.ptr(x), k.ptr(y)
    b = k.b
    zero = k.i64(0)
    extend = b.zext if x.type.dtype == "uint8" else b.sext

    def body(i, a):
        s = k.load(scales, a if a is not None else zero)
        z = k.load(zps, a if a is not None else zero)
        z = z if wide is I64 else b.trunc(z, I32)
        q = b.sub(extend(k.load(xp, i), wide), z)
        k.store(b.fmul(b.sitofp(q, F32), s), yp, i)

    _loops(k, x, axis, body)

