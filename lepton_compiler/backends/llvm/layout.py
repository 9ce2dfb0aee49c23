"""Data movement: Transpose."""

from __future__ import annotations

from ...ir import Node
from .codegen import KernelBuilder
from .registry import lowering


@lowering("Transpose")
def lower_transpose(k: KernelBuilder, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    in_dims = k.dims(x)
    perm = node.attr("perm", list(reversed(range(len(in_dims)))))
    # Element strides of the input, then read in the output's axis order.
    strides = [k.i64(1)] * len(in_dims)
    for axis in reversed(range(len(in_dims) - 1)):
        strides[axis] = k.b.mul(strides[axis + 1], in_dims[axis + 1])
    out_dims = k.dims(y)
    with k.loops(out_dims, name="t") as index:
        src = k.i64(0)
        for i, axis in zip(index, perm):
            src = k.b.add(src, k.b.mul(i, strides[axis]))
        k.store(k.load(k.ptr(x), src), k.ptr(y), k.linear(index, out_dims))
