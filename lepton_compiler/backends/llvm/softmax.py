"""Softmax along one axis: max, sum of exponentials, divide."""

from __future__ import annotations

from llvmlite import ir

from ...ir import Node
from ...ops.shapes import normalize_axis
from .codegen import KernelBuilder
from .registry import lowering


def emit_softmax_row(k: KernelBuilder, src: ir.Value, dst: ir.Value, length: ir.Value, stride: ir.Value) -> None:
    """Softmax of ``src[j * stride]`` for j < length into ``dst`` (which may be ``src``)."""
    b = k.b
    peak = k.scalar_slot(k.f32(float("-inf")))
    with k.loop(length, name="mx") as j:
        b.store(k.max(b.load(peak), k.load(src, b.mul(j, stride))), peak)
    total = k.scalar_slot(k.f32(0.0))
    top = b.load(peak)
    with k.loop(length, name="ex") as j:
        at = b.mul(j, stride)
        e = k.intrinsic("llvm.exp", b.fsub(k.load(src, at), top))
        k.store(e, dst, at)
        b.store(b.fadd(b.load(total), e), total)
    denom = b.load(total)
    with k.loop(length, name="dv") as j:
        at = b.mul(j, stride)
        k.store(b.fdiv(k.load(dst, at), denom), dst, at)


@lowering("Softmax")
def lower_softmax(k: KernelBuilder, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    dims = k.dims(x)
    axis = normalize_axis(node, node.attr("axis", -1), len(dims))
    outer, length, inner = k.product(dims[:axis]), dims[axis], k.product(dims[axis + 1:])
    b = k.b
    with k.loop(outer, name="o") as o, k.loop(inner, name="in") as i:
        base = b.add(b.mul(o, b.mul(length, inner)), i)
        emit_softmax_row(k, b.gep(k.ptr(x), [base]), b.gep(k.ptr(y), [base]), length, inner)
