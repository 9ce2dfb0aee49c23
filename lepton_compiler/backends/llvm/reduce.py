"""Reductions over any set of axes (ReduceSum, ReduceMean, ReduceMax) and LogSoftmax.

A reduction walks its input once in memory order and folds each element into the
output element it projects to (the output is initialized first; ReduceMean scales it
at the end), so every axis set reads contiguous memory.
"""

from __future__ import annotations

from llvmlite import ir

from ...ir import Node
from ...ops.reduce import reduce_axes
from .codegen import KernelBuilder
from .registry import lowering


def row_major_strides(k: KernelBuilder, dims) -> list:
    strides = [k.i64(1)] * len(dims)
    for axis in reversed(range(len(dims) - 1)):
        strides[axis] = k.b.mul(strides[axis + 1], dims[axis + 1])
    return strides


@lowering("ReduceSum", "ReduceMean", "ReduceMax")
def lower_reduce(k: KernelBuilder, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    axes = set(reduce_axes(node))
    b = k.b
    shape = x.type.shape
    rank = len(shape)
    if axes and axes == set(range(rank - len(axes), rank)) and k.lanes >= 4 and \
            all(isinstance(d, int) for d in shape[rank - len(axes):]):
        lower_trailing_reduce(k, node, len(axes))
        return
    in_dims = k.dims(x)
    kept = [i for i in range(len(in_dims)) if i not in axes]
    out_strides = row_major_strides(k, [in_dims[i] for i in kept])
    out_size = k.product([in_dims[i] for i in kept])
    is_max = node.op == "ReduceMax"
    with k.loop(out_size, name="init") as i:
        k.store(k.f32(float("-inf") if is_max else 0.0), k.ptr(y), i)
    with k.loops(in_dims, name="r") as index:
        at = k.i64(0)
        for axis, stride in zip(kept, out_strides):
            at = b.add(at, b.mul(index[axis], stride))
        v = k.load(k.ptr(x), k.linear(index, in_dims))
        acc = k.load(k.ptr(y), at)
        k.store(k.max(acc, v) if is_max else b.fadd(acc, v), k.ptr(y), at)
    if node.op == "ReduceMean" and axes:
        count = k.product([in_dims[i] for i in sorted(axes)])
        inverse = b.fdiv(k.f32(1.0), b.uitofp(count, ir.FloatType()))
        with k.loop(out_size, name="mean") as i:
            k.store(b.fmul(k.load(k.ptr(y), i), inverse), k.ptr(y), i)


def lower_trailing_reduce(k: KernelBuilder, node: Node, count: int) -> None:
    """Reduced axes that are the last ``count`` (a contiguous block per output element, as
    ReduceMean over H and W of NCHW): one vector reduction per block."""
    from .pool import plane_reduce

    x, y = node.inputs[0], node.outputs[0]
    b = k.b
    shape = x.type.shape
    size = 1
    for d in shape[len(shape) - count:]:
        size *= d
    outer = k.product(k.dims(x)[:len(shape) - count])
    with k.loop(outer, name="blk") as i:
        total = plane_reduce(k, b.gep(k.ptr(x), [b.mul(i, k.i64(size))]), size, node.op == "ReduceMax")
        if node.op == "ReduceMean":
            total = b.fmul(total, b.fdiv(k.f32(1.0), k.f32(float(size))))
        k.store(total, k.ptr(y), i)
