"""Activation functions as scalar LLVM code, keyed like ``ops.activations.ACTIVATIONS``."""

from __future__ import annotations

from typing import Callable, Sequence

from llvmlite import ir

from .codegen import F32, KernelBuilder

ScalarAct = Callable[[KernelBuilder, ir.Value, Sequence[float]], ir.Value]


def _relu(k: KernelBuilder, x, p):
    return k.b.select(k.b.fcmp_ordered("<", x, k.f32(0.0)), k.f32(0.0), x)


def _leaky_relu(k: KernelBuilder, x, p):
    return k.b.select(k.b.fcmp_ordered("<", x, k.f32(0.0)), k.b.fmul(x, k.f32(p[0])), x)


def _clip(k: KernelBuilder, x, p):
    low = k.b.select(k.b.fcmp_ordered("<", x, k.f32(p[0])), k.f32(p[0]), x)
    return k.b.select(k.b.fcmp_ordered(">", low, k.f32(p[1])), k.f32(p[1]), low)


def _sigmoid(k: KernelBuilder, x, p):
    e = k.intrinsic("llvm.exp", k.b.fneg(x))
    return k.b.fdiv(k.f32(1.0), k.b.fadd(k.f32(1.0), e))


def _tanh(k: KernelBuilder, x, p):
    fn = k.module.globals.get("tanhf") or ir.Function(k.module, ir.FunctionType(F32, [F32]), "tanhf")
    return k.b.call(fn, [x])


def _hard_swish(k: KernelBuilder, x, p):
    gate = _clip(k, k.b.fadd(k.b.fmul(x, k.f32(1.0 / 6.0)), k.f32(0.5)), [0.0, 1.0])
    return k.b.fmul(x, gate)


SCALAR_ACTIVATIONS: dict[str, ScalarAct] = {
    "Relu": _relu, "LeakyRelu": _leaky_relu, "Clip": _clip, "Sigmoid": _sigmoid, "Tanh": _tanh,
    "HardSwish": _hard_swish,
}


def activate(k: KernelBuilder, name: str, x: ir.Value, params: Sequence[float]) -> ir.Value:
    """Apply the named activation (``""`` = none) to a scalar."""
    return SCALAR_ACTIVATIONS[name](k, x, params) if name else x
