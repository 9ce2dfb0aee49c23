"""Data movement: Concat, Split, Slice, Pad, Expand, Gather (constant indices), and the
fills ConstantOfShape and Range when their results are too large to store as constants.

Slice bounds, pads and gather indices are compile-time values, so every index
computation is a multiply-add of loop counters; only the batch is read at run time.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from ...ir import Node, Value
from ...ops.shapes import normalize_axis
from ...ops.tensor import fill_value, pad_params, range_params
from .codegen import KernelBuilder
from .elementwise import emit_elementwise_values
from .registry import NotLowerable, lowering


def _block(k: KernelBuilder, value: Value, axis: int) -> tuple[ir.Value, ir.Value]:
    """(rows, row length) of ``value`` seen as [prod(dims[:axis]), prod(dims[axis:])]."""
    dims = k.dims(value)
    return k.product(dims[:axis]), k.product(dims[axis:])


def emit_copy_rows(k: KernelBuilder, src: ir.Value, src_row: ir.Value, dst: ir.Value, dst_row: ir.Value,
                   rows: ir.Value, length: ir.Value) -> None:
    """``dst[r * dst_row + e] = src[r * src_row + e]`` for r < rows, e < length."""
    b = k.b
    with k.loop(rows, name="row") as r:
        s, d = b.gep(src, [b.mul(r, src_row)]), b.gep(dst, [b.mul(r, dst_row)])
        with k.loop(length, name="e") as e:
            k.store(k.load(s, e), d, e)


@lowering("Concat")
def lower_concat(k: KernelBuilder, node: Node) -> None:
    y = node.outputs[0]
    axis = normalize_axis(node, node.attr("axis", 0), y.type.rank)
    rows, out_row = _block(k, y, axis)
    offset = k.i64(0)
    for x in node.inputs:
        _, length = _block(k, x, axis)
        emit_copy_rows(k, k.ptr(x), length, k.b.gep(k.ptr(y), [offset]), out_row, rows, length)
        offset = k.b.add(offset, length)


@lowering("Split")
def lower_split(k: KernelBuilder, node: Node) -> None:
    x = node.inputs[0]
    axis = normalize_axis(node, node.attr("axis", 0), x.type.rank)
    rows, in_row = _block(k, x, axis)
    offset = k.i64(0)
    for y in node.outputs:
        _, length = _block(k, y, axis)
        if k.has_buffer(y):
            emit_copy_rows(k, k.b.gep(k.ptr(x), [offset]), in_row, k.ptr(y), length, rows, length)
        offset = k.b.add(offset, length)


def _strides(k: KernelBuilder, dims: list) -> list:
    strides = [k.i64(1)] * len(dims)
    for axis in reversed(range(len(dims) - 1)):
        strides[axis] = k.b.mul(strides[axis + 1], dims[axis + 1])
    return strides


@lowering("Slice")
def lower_slice(k: KernelBuilder, node: Node) -> None:
    from ...ops.tensor import _slice_params

    x, y = node.inputs[0], node.outputs[0]
    index = _slice_params(node, x.type.rank)
    in_dims, out_dims = k.dims(x), k.dims(y)
    strides = _strides(k, in_dims)
    starts, steps = [], []
    for d, sl in zip(x.type.shape, index):
        if sl == slice(None):
            starts.append(0)
            steps.append(1)
        else:  # the type rule made sure the dim is static
            start, _, step = sl.indices(d)
            starts.append(start)
            steps.append(step)
    b = k.b
    with k.loops(out_dims, name="s") as out_index:
        src = k.i64(0)
        for i, start, step, stride in zip(out_index, starts, steps, strides):
            src = b.add(src, b.mul(b.add(k.i64(start), b.mul(i, k.i64(step))), stride))
        k.store(k.load(k.ptr(x), src), k.ptr(y), k.linear(out_index, out_dims))


@lowering("Pad")
def lower_pad(k: KernelBuilder, node: Node) -> None:
    """Each output element reads the input element its mode maps it to (constant mode: the
    value where any axis falls outside the input; the address is clamped so it is always valid)."""
    x, y = node.inputs[0], node.outputs[0]
    begin, end, mode, value = pad_params(node)
    out_dims = k.dims(y)
    b = k.b
    fill = k.f32(float(value))
    if any(d == 0 for d in x.type.shape):  # nothing to read: every element is the constant
        with k.loop(k.product(out_dims), name="fill") as i:
            k.store(fill, k.ptr(y), i)
        return
    in_dims = k.dims(x)
    strides = _strides(k, in_dims)
    zero = k.i64(0)
    with k.loops(out_dims, name="p") as out_index:
        src = zero
        inside = ir.Constant(ir.IntType(1), 1)
        for i, pad, pad_end, d, stride in zip(out_index, begin, end, in_dims, strides):
            j = b.sub(i, k.i64(pad)) if pad else i
            if pad != 0 or pad_end != 0:
                last = b.sub(d, k.i64(1))
                below, above = b.icmp_signed("<", j, zero), b.icmp_signed(">", j, last)
                if mode == "constant":
                    inside = b.and_(inside, b.not_(b.or_(below, above)))
                    j = b.select(below, zero, b.select(above, last, j))
                elif mode == "edge":
                    j = b.select(below, zero, b.select(above, last, j))
                elif mode == "reflect":
                    j = b.select(below, b.neg(j), b.select(above, b.sub(b.add(last, last), j), j))
                else:  # wrap
                    r = b.srem(j, d)
                    j = b.select(b.icmp_signed("<", r, zero), b.add(r, d), r)
            src = b.add(src, b.mul(j, stride))
        v = k.load(k.ptr(x), src)
        if mode == "constant":
            v = b.select(inside, v, fill)
        k.store(v, k.ptr(y), k.linear(out_index, out_dims))


@lowering("Expand")
def lower_expand(k: KernelBuilder, node: Node) -> None:
    emit_elementwise_values(k, [node.inputs[0]], node.outputs[0], lambda k, xs: xs[0])


@lowering("Cast")
def lower_cast(k: KernelBuilder, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if x.type.dtype != y.type.dtype:
        raise NotLowerable(f"casting {x.type.dtype} to {y.type.dtype} at run time is not supported")
    emit_elementwise_values(k, [x], y, lambda k, xs: xs[0])


@lowering("Gather")
def lower_gather(k: KernelBuilder, node: Node) -> None:
    """``y[o, j, e] = x[o, indices[j], e]`` with the indices (a compile-time table) checked and
    made non-negative at compile time."""
    x, indices, y = node.inputs[0], node.inputs[1], node.outputs[0]
    axis = normalize_axis(node, node.attr("axis", 0), x.type.rank)
    size = x.type.shape[axis]
    if indices.known is None or indices.known.dtype == object:
        raise NotLowerable("the indices must be known at compile time")
    if not isinstance(size, int):
        raise NotLowerable(f"gathering along the dynamic dim {size} is not supported")
    table = np.asarray(indices.known, np.int64).reshape(-1)
    if np.any((table < -size) | (table >= size)):
        raise NotLowerable(f"indices out of range for dim {size}")
    table = np.where(table < 0, table + size, table)
    dims = k.dims(x)
    outer, inner = k.product(dims[:axis]), k.product(dims[axis + 1:])
    at = k.constant(f"{node.name}.indices", table)
    b = k.b
    with k.loop(outer, name="o") as o, k.loop(len(table), name="j") as j:
        src = b.gep(k.ptr(x), [b.mul(b.add(b.mul(o, k.i64(size)), k.load(at, j)), inner)])
        dst = b.gep(k.ptr(y), [b.mul(b.add(b.mul(o, k.i64(len(table))), j), inner)])
        with k.loop(inner, name="e") as e:
            k.store(k.load(src, e), dst, e)


@lowering("ConstantOfShape")
def lower_constant_of_shape(k: KernelBuilder, node: Node) -> None:
    y = node.outputs[0]
    value = k.f32(float(fill_value(node)))
    with k.loop(k.product(k.dims(y)), name="fill") as i:
        k.store(value, k.ptr(y), i)


@lowering("Range")
def lower_range(k: KernelBuilder, node: Node) -> None:
    """``start + i * delta``, computed in double and rounded once (as the reference does)."""
    y = node.outputs[0]
    start, _, delta = (float(v) for v in range_params(node))
    b = k.b
    f64 = ir.DoubleType()
    with k.loop(k.product(k.dims(y)), name="r") as i:
        v = b.fadd(ir.Constant(f64, start), b.fmul(b.sitofp(i, f64), ir.Constant(f64, delta)))
        k.store(b.fptrunc(v, ir.FloatType()), k.ptr(y), i)
