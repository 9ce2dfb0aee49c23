"""Elementwise kernels with numpy broadcasting: one loop nest, one scalar function."""

from __future__ import annotations

from typing import Callable

from llvmlite import ir

from ...ir import Node
from .codegen import KernelBuilder
from .registry import lowering

ScalarFn = Callable[[KernelBuilder, list[ir.Value]], ir.Value]

SCALAR_FNS: dict[str, ScalarFn] = {
    "Relu": lambda k, xs: k.b.select(k.b.fcmp_ordered("<", xs[0], k.f32(0.0)), k.f32(0.0), xs[0]),
    "Add": lambda k, xs: k.b.fadd(xs[0], xs[1]),
    "Sub": lambda k, xs: k.b.fsub(xs[0], xs[1]),
    "Mul": lambda k, xs: k.b.fmul(xs[0], xs[1]),
    "Div": lambda k, xs: k.b.fdiv(xs[0], xs[1]),
}


def broadcast_strides(k: KernelBuilder, in_shape, out_shape) -> list[ir.Value | int]:
    """Element strides of an input read at output indices: 0 along broadcast dims."""
    rank = len(out_shape)
    padded = (1,) * (rank - len(in_shape)) + tuple(in_shape)
    strides: list = [0] * rank
    step: ir.Value | int = 1
    for axis in reversed(range(rank)):
        d = padded[axis]
        if d == 1 and out_shape[axis] != 1:
            strides[axis] = 0
        else:
            strides[axis] = step
        step = d * step if isinstance(d, int) and isinstance(step, int) else k.b.mul(k.i64(step), k.dim(d))
    return strides


def emit_elementwise(k: KernelBuilder, node: Node, fn: ScalarFn) -> None:
    out = node.outputs[0]
    y = k.ptr(out)
    operands = [v for v in node.inputs if v is not None]
    if all(v.type.shape == out.type.shape for v in operands):
        with k.loop(k.product(k.dims(out))) as i:
            k.store(fn(k, [k.load(k.ptr(v), i) for v in operands]), y, i)
        return
    strides = [broadcast_strides(k, v.type.shape, out.type.shape) for v in operands]
    dims = k.dims(out)
    with k.loops(dims) as index:
        scalars = []
        for v, st in zip(operands, strides):
            offset = ir.Constant(ir.IntType(64), 0)
            for i, s in zip(index, st):
                if not (isinstance(s, int) and s == 0):
                    offset = k.b.add(offset, k.b.mul(i, k.i64(s)))
            scalars.append(k.load(k.ptr(v), offset))
        k.store(fn(k, scalars), y, k.linear(index, dims))


for _op, _fn in SCALAR_FNS.items():
    lowering(_op)(lambda k, node, _fn=_fn: emit_elementwise(k, node, _fn))
