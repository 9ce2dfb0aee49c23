"""InstanceNormalization: per (image, channel) plane, mean and variance (two passes, summed
in double), then ``x * a + b`` with ``a = scale[c] / sqrt(var + eps)``, ``b = B[c] - mean * a``."""

from __future__ import annotations

from llvmlite import ir

from ...ir import Node, dim_factors, shape_product
from .codegen import KernelBuilder
from .registry import lowering

F64 = ir.DoubleType()


@lowering("InstanceNormalization")
def lower_instance_norm(k: KernelBuilder, node: Node) -> None:
    x, scale, bias = node.inputs
    y = node.outputs[0]
    dims = k.dims(x)
    channels = x.type.shape[1]
    size = k.product(dims[2:])
    b = k.b
    count = b.sitofp(size, F64)
    work = 3 * dim_factors(shape_product(x.type.shape[2:]))[1]
    with k.parallel_loop(shape_product(x.type.shape[:2]), work, name="nc") as nc:
        c = b.urem(nc, k.i64(channels))
        offset = b.mul(nc, size)
        src, dst = b.gep(k.ptr(x), [offset]), b.gep(k.ptr(y), [offset])
        total = k.scalar_slot(ir.Constant(F64, 0.0))
        with k.loop(size, name="sum") as i:
            b.store(b.fadd(b.load(total), b.fpext(k.load(src, i), F64)), total)
        mean = b.fdiv(b.load(total), count)
        squares = k.scalar_slot(ir.Constant(F64, 0.0))
        with k.loop(size, name="var") as i:
            d = b.fsub(b.fpext(k.load(src, i), F64), mean)
            b.store(b.fadd(b.load(squares), b.fmul(d, d)), squares)
        var = b.fdiv(b.load(squares), count)
        root = k.intrinsic("llvm.sqrt", b.fadd(var, ir.Constant(F64, float(node.attr("epsilon", 1e-5)))))
        a = b.fdiv(b.fpext(k.load(k.ptr(scale), c), F64), root)
        shift = b.fsub(b.fpext(k.load(k.ptr(bias), c), F64), b.fmul(mean, a))
        a32, shift32 = b.fptrunc(a, ir.FloatType()), b.fptrunc(shift, ir.FloatType())
        with k.loop(size, name="norm") as i:
            k.store(k.fma(k.load(src, i), a32, shift32), dst, i)
