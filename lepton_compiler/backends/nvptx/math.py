"""Float functions for GPU kernels, written with arithmetic only.

LLVM's NVPTX target has no library to call for ``llvm.exp.f32`` ("no libcall available for fexp"), so
``exp`` is range reduction plus a polynomial here: the same IR then runs on the GPU and in the host
emulation, with the same results. Relative error below 2e-7 over the float range (tests check it).
"""

from __future__ import annotations

from typing import Callable, Sequence

from llvmlite import ir

from .kernel import F32, I32, Thread

LOG2E = 1.4426950408889634
LN2_HI = 0.693145751953125          # ln 2 split so that n * LN2_HI is exact for |n| < 2**11
LN2_LO = 1.428606765330187e-06
EXP_MAX = 88.72283905206835          # ln(FLT_MAX): above, exp is +inf
EXP_MIN = -103.97                    # below, exp rounds to 0 (denormals are kept down to here)
TAYLOR = [1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0]   # e**r on |r| <= ln2 / 2


def exp(t: Thread, x: ir.Value) -> ir.Value:
    """``e**x`` for a float32: ``2**n * p(r)``, ``x = n ln2 + r``; NaN and the infinities pass through."""
    b = t.b
    clamped = b.select(b.fcmp_ordered(">", x, t.f32(EXP_MAX)), t.f32(EXP_MAX), x)
    clamped = b.select(b.fcmp_ordered("<", clamped, t.f32(EXP_MIN)), t.f32(EXP_MIN), clamped)
    n = t.intrinsic("llvm.floor", t.fma(clamped, t.f32(LOG2E), t.f32(0.5)))
    r = t.fma(n, t.f32(-LN2_HI), clamped)
    r = t.fma(n, t.f32(-LN2_LO), r)
    p = t.f32(TAYLOR[0])
    for c in TAYLOR[1:]:
        p = t.fma(p, r, t.f32(c))
    # 2**n in two factors so that n in [-150, 128] never leaves the exponent range of one factor
    ni = b.fptosi(n, I32)
    half = b.ashr(ni, ir.Constant(I32, 1))
    scale1 = b.bitcast(b.shl(b.add(half, ir.Constant(I32, 127)), ir.Constant(I32, 23)), F32)
    scale2 = b.bitcast(b.shl(b.add(b.sub(ni, half), ir.Constant(I32, 127)), ir.Constant(I32, 23)), F32)
    y = b.fmul(b.fmul(p, scale1), scale2)
    y = b.select(b.fcmp_ordered(">", x, t.f32(EXP_MAX)), t.f32(float("inf")), y)
    y = b.select(b.fcmp_ordered("<", x, t.f32(EXP_MIN)), t.f32(0.0), y)
    return b.select(b.fcmp_unordered("uno", x, x), x, y)


# -- activations, keyed like ops.activations.ACTIVATIONS ------------------------------------------------
Act = Callable[[Thread, ir.Value, Sequence[float]], ir.Value]


def _relu(t, x, p):
    return t.b.select(t.b.fcmp_ordered("<", x, t.f32(0.0)), t.f32(0.0), x)


def _leaky_relu(t, x, p):
    return t.b.select(t.b.fcmp_ordered("<", x, t.f32(0.0)), t.b.fmul(x, t.f32(p[0])), x)


def _clip(t, x, p):
    low = t.b.select(t.b.fcmp_ordered("<", x, t.f32(p[0])), t.f32(p[0]), x)
    return t.b.select(t.b.fcmp_ordered(">", low, t.f32(p[1])), t.f32(p[1]), low)


def _sigmoid(t, x, p):
    return t.b.fdiv(t.f32(1.0), t.b.fadd(t.f32(1.0), exp(t, t.b.fneg(x))))


def _tanh(t, x, p):
    """``sign(x) * (1 - e) / (1 + e)`` with ``e = exp(-2|x|)`` (no overflow; small |x| by its series)."""
    b = t.b
    a = t.intrinsic("llvm.fabs", x)
    e = exp(t, b.fmul(a, t.f32(-2.0)))
    big = b.fdiv(b.fsub(t.f32(1.0), e), b.fadd(t.f32(1.0), e))
    a2 = b.fmul(a, a)
    small = t.fma(b.fmul(a, a2), t.fma(a2, t.f32(2.0 / 15), t.f32(-1.0 / 3)), a)   # a - a^3/3 + 2a^5/15
    y = b.select(b.fcmp_ordered("<", a, t.f32(0.004)), small, big)
    return t.intrinsic("llvm.copysign", y, x)


def _hard_swish(t, x, p):
    return t.b.fmul(x, _clip(t, t.fma(x, t.f32(1.0 / 6.0), t.f32(0.5)), [0.0, 1.0]))


def _elu(t, x, p):
    negative = t.b.fcmp_ordered("<", x, t.f32(0.0))
    e = exp(t, t.b.select(negative, x, t.f32(0.0)))
    return t.b.select(negative, t.b.fmul(t.f32(p[0]), t.b.fsub(e, t.f32(1.0))), x)


def _selu(t, x, p):
    return t.b.fmul(t.f32(p[1]), _elu(t, x, p[:1]))


def _hard_sigmoid(t, x, p):
    return _clip(t, t.fma(x, t.f32(p[0]), t.f32(p[1])), [0.0, 1.0])


ACTIVATIONS: dict[str, Act] = {
    "Relu": _relu, "LeakyRelu": _leaky_relu, "Clip": _clip, "Sigmoid": _sigmoid, "Tanh": _tanh,
    "HardSwish": _hard_swish, "Elu": _elu, "Selu": _selu, "HardSigmoid": _hard_sigmoid,
    "Exp": lambda t, x, p: exp(t, x), "Sqrt": lambda t, x, p: t.intrinsic("llvm.sqrt", x),
    "Abs": lambda t, x, p: t.intrinsic("llvm.fabs", x), "Neg": lambda t, x, p: t.b.fneg(x),
}


def activate(t: Thread, name: str, x: ir.Value, params: Sequence[float]) -> ir.Value:
    return ACTIVATIONS[name](t, x, params) if name else x
