"""Elementwise kernels: ``FusedElementwise`` programs, standalone activations and broadcast binary ops.

One thread per output element (256 per block, no shared memory); every operand is read through its own
broadcast strides from the output's multi-index. Only the leading dim may be dynamic (the batch).
"""

from __future__ import annotations

from ...ir import Node, dim_factors
from ...ops.activations import activation_params
from ...ops.fused import parse_step
from .conv import _broadcast_strides
from .kernel import GridDim, KernelSpec, Phase, Thread, static_tail
from .math import ACTIVATIONS, activate
from .registry import NotLowerable, lowering

THREADS = 256


def _binary(t: Thread, op: str, x, y):
    b = t.b
    if op == "Add":
        return b.fadd(x, y)
    if op == "Sub":
        return b.fsub(x, y)
    if op == "Mul":
        return b.fmul(x, y)
    if op == "Div":
        return b.fdiv(x, y)
    if op == "Max":
        return t.max(x, y)
    if op == "Min":   # NaN-propagating like numpy
        smaller = b.select(b.fcmp_ordered("<", y, x), y, x)
        return b.select(b.fcmp_unordered("uno", y, y), y, smaller)
    if op == "PRelu":
        return b.select(b.fcmp_ordered("<", x, t.f32(0.0)), b.fmul(x, y), x)
    raise NotLowerable(f"{op} has no cuda kernel")


BINARY_OPS = ("Add", "Sub", "Mul", "Div", "Max", "Min", "PRelu")


def _elementwise(node: Node, name: str, operands, program) -> KernelSpec:
    """``program(t, [operand values]) -> result`` applied at every element of the output."""
    y = node.outputs[0]
    for v in list(operands) + [y]:
        if v.type.dtype != "float32":
            raise NotLowerable(f"'{v.name}' is {v.type}; the cuda backend computes float32 only")
        if not static_tail(v.type.shape):
            raise NotLowerable(f"'{v.name}' has a dynamic dim after the first: {v.type}")
    shape = list(y.type.shape)
    strides = [_broadcast_strides(v.type.shape, shape) for v in operands]
    symbols, factor = dim_factors(shape[0]) if shape else ((), 1)
    inner = 1
    for d in shape[1:]:
        inner *= int(d)
    total = GridDim(inner * factor, 0, THREADS) if symbols else GridDim(0, inner * (factor if shape else 1), THREADS)

    def body(t: Thread):
        e = t.add(t.mul(t.bid[0], THREADS), t.tid[0])
        limit = t.mul(t.dim(shape[0]), inner) if shape else t.i32(1)
        with t.if_(t.lt(e, limit)):
            # the output's multi-index, innermost first
            index, rest = [], e
            for d in reversed(shape[1:]):
                index.append(t.rem(rest, int(d)))
                rest = t.div(rest, int(d))
            index.append(rest)
            index.reverse()
            values = []
            for v, st in zip(operands, strides):
                off = t.i32(0)
                for i, s in zip(index, st):
                    if s:
                        off = t.add(off, t.mul(i, s))
                values.append(t.load(t.ptr(v), off))
            t.store(program(t, values), t.ptr(y), e)

    buffers = list(dict.fromkeys(list(operands) + [y]))
    return KernelSpec(name, node.op, node.name, buffers, [y], (THREADS, 1, 1), (total, GridDim(), GridDim()),
                      [Phase(body, "elementwise", barrier=False)], notes="one thread per element")


@lowering("FusedElementwise")
def lower_fused_elementwise(node: Node, name: str) -> KernelSpec:
    operands = list(node.inputs)
    steps = [parse_step(s) for s in node.attr("program")]
    for op, _, _ in steps:
        if op not in BINARY_OPS and op not in ACTIVATIONS:
            raise NotLowerable(f"step {op} has no cuda kernel")

    def program(t: Thread, xs):
        values = list(xs)
        for op, params, args in steps:
            if op in BINARY_OPS:
                values.append(_binary(t, op, values[args[0]], values[args[1]]))
            else:
                values.append(activate(t, op, values[args[0]], params))
        return values[-1]
    return _elementwise(node, name, operands, program)


@lowering(*[op for op in ACTIVATIONS])
def lower_activation(node: Node, name: str) -> KernelSpec:
    params = activation_params(node)
    return _elementwise(node, name, [node.inputs[0]], lambda t, xs: activate(t, node.op, xs[0], params))


@lowering(*BINARY_OPS)
def lower_binary(node: Node, name: str) -> KernelSpec:
    return _elementwise(node, name, list(node.inputs[:2]), lambda t, xs: _binary(t, node.op, xs[0], xs[1]))
