"""Softmax and LogSoftmax along one axis: a max, a sum of exponentials, then the outputs."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from llvmlite import ir

from ...ir import Node
from ...ops.shapes import normalize_axis
from .codegen import KernelBuilder
from .registry import lowering


@contextmanager
def axis_rows(k: KernelBuilder, node: Node) -> Iterator[tuple[ir.Value, ir.Value, ir.Value, ir.Value]]:
    """One iteration per row along the node's axis: ``(src, dst, length, stride)``."""
    x, y = node.inputs[0], node.outputs[0]
    dims = k.dims(x)
    axis = normalize_axis(node, node.attr("axis", -1), len(dims))
    outer, length, inner = k.product(dims[:axis]), dims[axis], k.product(dims[axis + 1:])
    b = k.b
    with k.loop(outer, name="o") as o, k.loop(inner, name="in") as i:
        base = b.add(b.mul(o, b.mul(length, inner)), i)
        yield b.gep(k.ptr(x), [base]), b.gep(k.ptr(y), [base]), length, inner


def row_max(k: KernelBuilder, src: ir.Value, length: ir.Value, stride: ir.Value) -> ir.Value:
    b = k.b
    peak = k.scalar_slot(k.f32(float("-inf")))
    with k.loop(length, name="mx") as j:
        b.store(k.max(b.load(peak), k.load(src, b.mul(j, stride))), peak)
    return b.load(peak)


def exp_sum(k: KernelBuilder, src, length, stride, top, dst=None) -> ir.Value:
    """``sum(exp(src - top))``, storing each exponential in ``dst`` when given."""
    b = k.b
    total = k.scalar_slot(k.f32(0.0))
    with k.loop(length, name="ex") as j:
        at = b.mul(j, stride)
        e = k.intrinsic("llvm.exp", b.fsub(k.load(src, at), top))
        if dst is not None:
            k.store(e, dst, at)
        b.store(b.fadd(b.load(total), e), total)
    return b.load(total)


def emit_softmax_row(k: KernelBuilder, src: ir.Value, dst: ir.Value, length: ir.Value, stride: ir.Value) -> None:
    """Softmax of ``src[j * stride]`` for j < length into ``dst`` (which may be ``src``)."""
    b = k.b
    denom = exp_sum(k, src, length, stride, row_max(k, src, length, stride), dst)
    with k.loop(length, name="dv") as j:
        at = b.mul(j, stride)
        k.store(b.fdiv(k.load(dst, at), denom), dst, at)


@lowering("Softmax")
def lower_softmax(k: KernelBuilder, node: Node) -> None:
    with axis_rows(k, node) as (src, dst, length, stride):
        emit_softmax_row(k, src, dst, length, stride)


@lowering("LogSoftmax")
def lower_log_softmax(k: KernelBuilder, node: Node) -> None:
    """``x - max - log(sum(exp(x - max)))``."""
    b = k.b
    with axis_rows(k, node) as (src, dst, length, stride):
        top = row_max(k, src, length, stride)
        shift = b.fadd(top, k.intrinsic("llvm.log", exp_sum(k, src, length, stride, top)))
        with k.loop(length, name="out") as j:
            at = b.mul(j, stride)
            k.store(b.fsub(k.load(src, at), shift), dst, at)
