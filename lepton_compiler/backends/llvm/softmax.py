"""Softmax along one axis: max, sum of exponentials, divide."""

from __future__ import annotations

from ...ir import Node
from ...ops.shapes import normalize_axis
from .codegen import KernelBuilder
from .registry import lowering


@lowering("Softmax")
def lower_softmax(k: KernelBuilder, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    dims = k.dims(x)
    axis = normalize_axis(node, node.attr("axis", -1), len(dims))
    outer, length, inner = k.product(dims[:axis]), dims[axis], k.product(dims[axis + 1:])
    xp, yp = k.ptr(x), k.ptr(y)
    b = k.b
    with k.loop(outer, name="o") as o, k.loop(inner, name="in") as i:
        base = b.add(b.mul(o, b.mul(length, inner)), i)
        at = lambda j: b.add(base, b.mul(j, inner))  # noqa: E731
        peak = k.scalar_slot(k.f32(float("-inf")))
        with k.loop(length, name="mx") as j:
            b.store(k.max(b.load(peak), k.load(xp, at(j))), peak)
        total = k.scalar_slot(k.f32(0.0))
        top = b.load(peak)
        with k.loop(length, name="ex") as j:
            e = k.intrinsic("llvm.exp", b.fsub(k.load(xp, at(j)), top))
            k.store(e, yp, at(j))
            b.store(b.fadd(b.load(total), e), total)
        denom = b.load(total)
        with k.loop(length, name="dv") as j:
            k.store(b.fdiv(k.load(yp, at(j)), denom), yp, at(j))
