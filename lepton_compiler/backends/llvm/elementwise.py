"""Elementwise kernels with numpy broadcasting: one loop nest, one scalar function."""

from __future__ import annotations

from typing import Callable

import numpy as np
from llvmlite import ir

from ...ir import Node, dim_factors, shape_product
from ...ops.activations import ACTIVATIONS, activation_params
from ...ops.fused import parse_step
from .activations import activate
from .codegen import KernelBuilder
from .registry import NotLowerable, lowering

ScalarFn = Callable[[KernelBuilder, list[ir.Value]], ir.Value]

BINARY_FNS: dict[str, Callable] = {
    "Add": lambda k, a, b: k.b.fadd(a, b),
    "Sub": lambda k, a, b: k.b.fsub(a, b),
    "Mul": lambda k, a, b: k.b.fmul(a, b),
    "Div": lambda k, a, b: k.b.fdiv(a, b),
    "Max": lambda k, a, b: k.intrinsic("llvm.maximum", a, b),   # NaN in, NaN out (as numpy)
    "Min": lambda k, a, b: k.intrinsic("llvm.minimum", a, b),
    "Pow": lambda k, a, b: k.intrinsic("llvm.pow", a, b),
    "PRelu": lambda k, x, slope: k.b.select(k.b.fcmp_ordered("<", x, k.const_like(x, 0.0)), k.b.fmul(x, slope), x),
}
"""Binary ops of the IR and of ``FusedElementwise`` programs (``ops.fused.BINARY``), on scalars or vectors."""


def broadcast_strides(k: KernelBuilder, in_shape, out_shape) -> list[ir.Value | int]:
    """Element strides of an input read at output indices: 0 along broadcast dims.

    A dynamic input dim against a static output dim D (numpy allows the batch to
    be 1 or D there) gets a stride chosen at run time, and the runtime refuses
    other batch sizes before native code runs.
    """
    rank = len(out_shape)
    padded = (1,) * (rank - len(in_shape)) + tuple(in_shape)
    strides: list = [0] * rank
    step: ir.Value | int = 1
    for axis in reversed(range(rank)):
        d, out = padded[axis], out_shape[axis]
        if d == 1 and out != 1:
            strides[axis] = 0
        elif isinstance(d, str) and isinstance(out, int) and out != 1:
            if d != k.batch_symbol:
                raise NotLowerable(f"broadcasting the dynamic dim {d} against {out} is not supported")
            k.require_batch((1, out), f"its dim {d} is broadcast against {out}")
            is_one = k.b.icmp_signed("==", k.batch, k.i64(1))
            strides[axis] = k.b.select(is_one, k.i64(0), k.i64(step))
        else:
            strides[axis] = step
        step = d * step if isinstance(d, int) and isinstance(step, int) else k.b.mul(k.i64(step), k.dim(d))
    return strides


def emit_elementwise(k: KernelBuilder, node: Node, fn: ScalarFn) -> None:
    emit_elementwise_values(k, [v for v in node.inputs if v is not None], node.outputs[0], fn)


def emit_elementwise_values(k: KernelBuilder, operands, out, fn: ScalarFn) -> None:
    """``out[i] = fn(operands broadcast at i)``: one flat loop when no operand broadcasts."""
    y = k.ptr(out)
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


for _op, _binary in BINARY_FNS.items():
    lowering(_op)(lambda k, node, _binary=_binary: emit_elementwise(k, node, lambda k, xs: _binary(k, *xs)))


@lowering(*ACTIVATIONS)
def lower_activation(k: KernelBuilder, node: Node) -> None:
    params = activation_params(node)
    x = node.inputs[0]
    emit_elementwise_values(k, [x], node.outputs[0], lambda k, xs: activate(k, node.op, xs[0], params))


@lowering("FusedElementwise")
def lower_fused_elementwise(k: KernelBuilder, node: Node) -> None:
    steps = [parse_step(s) for s in node.attr("program")]

    def program(k: KernelBuilder, xs: list[ir.Value]) -> ir.Value:
        values = list(xs)
        for op, params, operands in steps:
            args = [values[o] for o in operands]
            values.append(BINARY_FNS[op](k, *args) if op in BINARY_FNS else activate(k, op, args[0], params))
        return values[-1]

    emit_elementwise(k, node, program)


@lowering("BatchNormalization")
def lower_batchnorm(k: KernelBuilder, node: Node) -> None:
    """``x * a[c] + b[c]``: ``a`` and ``b`` folded at compile time when the statistics are
    constants, else computed per channel at run time."""
    from ...ops.nn import batchnorm_affine

    x, y = node.inputs[0], node.outputs[0]
    params = node.inputs[1:5]
    folded = all(p.is_const for p in params)
    if folded:
        a, b = batchnorm_affine(node, *(p.const for p in params))
        a_ptr = k.constant(f"{node.name}.scale", a.astype(np.float32))
        b_ptr = k.constant(f"{node.name}.shift", b.astype(np.float32))
    dims = k.dims(x)
    inner = k.product(dims[2:])
    work = dim_factors(shape_product(x.type.shape[2:]))[1]
    with k.parallel_loop(shape_product(x.type.shape[:2]), work, name="nc") as nc:
        c = k.b.urem(nc, dims[1])
        if folded:
            scale, shift = k.load(a_ptr, c), k.load(b_ptr, c)
        else:
            gamma, beta, mean, var = (k.load(k.ptr(p), c) for p in params)
            root = k.intrinsic("llvm.sqrt", k.b.fadd(var, k.f32(node.attr("epsilon", 1e-5))))
            scale = k.b.fdiv(gamma, root)
            shift = k.b.fsub(beta, k.b.fmul(mean, scale))
        base = k.b.mul(nc, inner)
        with k.loop(inner, name="s") as s:
            at = k.b.add(base, s)
            k.store(k.fma(k.load(k.ptr(x), at), scale, shift), k.ptr(y), at)
