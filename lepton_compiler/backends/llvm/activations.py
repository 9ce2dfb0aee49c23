"""Activation functions as scalar LLVM code, keyed like ``ops.activations.ACTIVATIONS``."""

from __future__ import annotations

from typing import Callable, Sequence

from llvmlite import ir

from .codegen import F32, KernelBuilder

ScalarAct = Callable[[KernelBuilder, ir.Value, Sequence[float]], ir.Value]


def _relu(k: KernelBuilder, x, p):
    zero = k.const_like(x, 0.0)
    return k.b.select(k.b.fcmp_ordered("<", x, zero), zero, x)


def _leaky_relu(k: KernelBuilder, x, p):
    return k.b.select(k.b.fcmp_ordered("<", x, k.const_like(x, 0.0)), k.b.fmul(x, k.const_like(x, p[0])), x)


def _clip(k: KernelBuilder, x, p):
    lo, hi = k.const_like(x, p[0]), k.const_like(x, p[1])
    low = k.b.select(k.b.fcmp_ordered("<", x, lo), lo, x)
    return k.b.select(k.b.fcmp_ordered(">", low, hi), hi, low)


def _sigmoid(k: KernelBuilder, x, p):
    e = k.intrinsic("llvm.exp", k.b.fneg(x))
    one = k.const_like(x, 1.0)
    return k.b.fdiv(one, k.b.fadd(one, e))


def _tanh(k: KernelBuilder, x, p):
    if isinstance(x.type, ir.VectorType):
        raise ValueError("Tanh is emitted on scalars only (libm's tanhf)")
    fn = k.module.globals.get("tanhf") or ir.Function(k.module, ir.FunctionType(F32, [F32]), "tanhf")
    return k.b.call(fn, [x])


def _hard_swish(k: KernelBuilder, x, p):
    gate = _clip(k, k.b.fadd(k.b.fmul(x, k.const_like(x, 1.0 / 6.0)), k.const_like(x, 0.5)), [0.0, 1.0])
    return k.b.fmul(x, gate)


def _elu(k: KernelBuilder, x, p):
    """``x < 0 ? alpha * (exp(x) - 1) : x`` (the exponent is clamped at 0 so it never overflows)."""
    zero = k.const_like(x, 0.0)
    negative = k.b.fcmp_ordered("<", x, zero)
    e = k.intrinsic("llvm.exp", k.b.select(negative, x, zero))
    return k.b.select(negative, k.b.fmul(k.const_like(x, p[0]), k.b.fsub(e, k.const_like(x, 1.0))), x)


def _selu(k: KernelBuilder, x, p):
    return k.b.fmul(k.const_like(x, p[1]), _elu(k, x, p[:1]))


def _hard_sigmoid(k: KernelBuilder, x, p):
    return _clip(k, k.b.fadd(k.b.fmul(x, k.const_like(x, p[0])), k.const_like(x, p[1])), [0.0, 1.0])


def _libm(name: str) -> ScalarAct:
    """A one-argument float function of the C library (``erff``), on scalars only."""
    def emit(k: KernelBuilder, x, p):
        if isinstance(x.type, ir.VectorType):
            raise ValueError(f"{name} is emitted on scalars only (libm)")
        fn = k.module.globals.get(name) or ir.Function(k.module, ir.FunctionType(F32, [F32]), name)
        return k.b.call(fn, [x])
    return emit


def _intrinsic(name: str) -> ScalarAct:
    return lambda k, x, p: k.intrinsic(name, x)


SCALAR_ACTIVATIONS: dict[str, ScalarAct] = {
    "Relu": _relu, "LeakyRelu": _leaky_relu, "Clip": _clip, "Sigmoid": _sigmoid, "Tanh": _tanh,
    "HardSwish": _hard_swish, "Elu": _elu, "Selu": _selu, "HardSigmoid": _hard_sigmoid,
    "Exp": _intrinsic("llvm.exp"), "Log": _intrinsic("llvm.log"), "Sqrt": _intrinsic("llvm.sqrt"),
    "Abs": _intrinsic("llvm.fabs"), "Neg": lambda k, x, p: k.b.fneg(x), "Erf": _libm("erff"),
}


VECTOR_ACTIVATIONS = frozenset(SCALAR_ACTIVATIONS) - {"Tanh", "Erf"}
"""Activations that can be applied to whole vectors."""


def activate(k: KernelBuilder, name: str, x: ir.Value, params: Sequence[float]) -> ir.Value:
    """Apply the named activation (``""`` = none) to a scalar."""
    return SCALAR_ACTIVATIONS[name](k, x, params) if name else x
