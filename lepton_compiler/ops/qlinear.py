"""ONNX's integer ops: ``QLinearConv``, ``QLinearMatMul``, ``ConvInteger``, ``MatMulInteger``.

These are the ops of the "QOperator" format (what ``onnxruntime.quantization`` writes with
``QuantFormat.QOperator``). The pass ``lower-qlinear`` turns the ones with constant weights
into lepton's ``QConv`` / ``QGemm``; the others stay and run here, in the interpreter.

Semantics, as in the ONNX spec and computed the way ONNX Runtime computes them:

* ``ConvInteger`` / ``MatMulInteger``: the exact int32 sum of
  ``(x - x_zero_point) * (w - w_zero_point)``; ConvInteger's padding reads ``x_zero_point``
  (contributes 0). The weight zero point is per tensor or per output channel
  (ConvInteger) / per column of B (MatMulInteger); MatMulInteger's ``a_zero_point`` per
  tensor or per row of A.
* ``QLinearConv`` / ``QLinearMatMul``: that sum (plus QLinearConv's int32 bias) requantized
  as in ``qmath``: ``saturate(rint(fp32(acc) * fp32(fp32(x_scale * w_scale) / y_scale)) + y_zp)``
  into the dtype of ``y_zero_point``, rounding half to even. The int32 accumulator wraps around
  as ONNX Runtime's does (reachable only with a bias given at run time).

Validation: with constant scales, a requantization multiplier that is inf or NaN is refused (a zero
accumulator would give NaN, which ONNX gives no integer value); finite ones, from scales that are
0, negative or subnormal or from a product that underflows, are computed exactly as ONNX Runtime
does. QLinearConv with constant weights, zero points and bias that could overflow the int32
accumulator is refused.
"""

from __future__ import annotations

import numpy as np

from ..ir import Node, TensorType
from . import qmath
from .nn import infer_conv
from .quant import QUANT_DTYPES, _conv_attrs, _float_view, integer_conv
from .registry import OpKind, register, require
from .shapes import broadcast_shapes

F32 = np.float32


# -- checks ----------------------------------------------------------------------------------------
def _quantized(node: Node, index: int, what: str) -> TensorType:
    t = node.inputs[index].type
    require(node, t.dtype in QUANT_DTYPES, f"{what} must be uint8 or int8, got {t}")
    return t


def _scalar_or_vector(node: Node, index: int, what: str, size=None, dtype=None) -> None:
    """Input ``index`` (a scale or zero point) is a scalar, or 1-D of ``size`` when size is given."""
    value = node.inputs[index] if len(node.inputs) > index else None
    if value is None:
        return
    t = value.type
    if dtype is not None:
        require(node, t.dtype == dtype, f"{what} must be {dtype}, got {t}")
    numel = 1
    for d in t.shape:
        numel = numel * d if isinstance(d, int) else -1
    if size is None or numel == 1:
        require(node, numel == 1, f"{what} must be a scalar, got {t}")
    else:
        require(node, t.rank == 1 and t.shape[0] in (1, size), f"{what} must be a scalar or [{size}], got {t}")


def _optional(inputs, index: int):
    return inputs[index] if len(inputs) > index and inputs[index] is not None else None


def _per_channel(values, rank: int, axis: int = 1) -> np.ndarray:
    """A scale or zero point shaped to broadcast along ``axis`` of a rank-``rank`` result."""
    values = np.asarray(values)
    if values.size <= 1:
        return values.reshape(())
    shape = [1] * rank
    shape[axis] = values.size
    return values.reshape(shape)


def _wrap_int32(acc: np.ndarray) -> np.ndarray:
    """The int32 accumulator ONNX Runtime keeps: the exact sum modulo 2**32 (only a runtime bias, or
    a matmul with K above 33025, can get there; constant weights and bias that could are refused)."""
    return ((np.asarray(acc, np.int64) + 2**31) % 2**32) - 2**31


def _const(node: Node, index: int):
    value = node.inputs[index] if len(node.inputs) > index else None
    return None if value is None or not value.is_const else np.asarray(value.const)


def _check_multipliers(node: Node, prefix: str) -> None:
    """With constant scales, every requantization multiplier ``fp32(fp32(x_scale * w_scale) / y_scale)``
    must be finite. ONNX Runtime accepts any scale, and for a finite multiplier (scales that are 0,
    negative or subnormal included; a product that underflows to 0 gives ``y = y_zero_point``)
    lepton computes exactly what it does. An infinite or NaN multiplier turns a zero accumulator
    into NaN, whose integer value ONNX leaves undefined (ONNX Runtime's depends on the CPU): refused."""
    x_s, w_s, y_s = _const(node, 1), _const(node, 4), _const(node, 6)
    if x_s is None or w_s is None or y_s is None or x_s.size != 1 or y_s.size != 1:
        return
    with np.errstate(all="ignore"):
        m = np.asarray(qmath.multipliers(x_s.reshape(()), w_s.ravel(), y_s.reshape(())), F32).ravel()
    bad = np.flatnonzero(~np.isfinite(m))
    if bad.size:
        require(node, False, f"the requantization multiplier {prefix}_scale * {'w' if prefix == 'x' else 'b'}_scale"
                f" / y_scale is {float(m[bad[0]])} (channel {bad[0]}; {float(x_s.reshape(()))} * "
                f"{float(w_s.ravel()[min(bad[0], w_s.size - 1)])} / {float(y_s.reshape(()))} in fp32): it must be finite")


def _check_accumulator(node: Node, x: TensorType) -> None:
    """QLinearConv with constant weights, zero points and bias: the exact sum ``bias + sum((x - x_zp) *
    (w - w_zp))`` must fit the int32 accumulator for every input, else ONNX Runtime's wraps around
    while the sum the spec defines does not: refused rather than computed differently."""
    w, x_zp, w_zp = _const(node, 3), _const(node, 2), _const(node, 5)
    bias = _const(node, 8) if len(node.inputs) > 8 and node.inputs[8] is not None else np.zeros(1, np.int64)
    if w is None or x_zp is None or (len(node.inputs) > 5 and node.inputs[5] is not None and w_zp is None) \
            or (len(node.inputs) > 8 and node.inputs[8] is not None and bias is None):
        return
    lo, hi = qmath.LIMITS[np.dtype(x.dtype)]
    zx = int(x_zp.ravel()[0])
    reach = max(zx - lo, hi - zx)
    wz = np.zeros(1, np.int64) if w_zp is None else w_zp.astype(np.int64).ravel()
    centered = w.astype(np.int64).reshape(w.shape[0], -1) - (wz.reshape(-1, 1) if wz.size > 1 else wz.reshape(()))
    bound = np.abs(centered).sum(axis=1) * reach + np.abs(bias.astype(np.int64).ravel())
    worst = int(bound.max(initial=0))
    require(node, worst <= 2**31 - 1, f"the int32 accumulator can overflow (|bias| + |x - x_zero_point| * "
            f"sum|w - w_zero_point| reaches {worst} > 2**31 - 1)")


def _requantize(acc: np.ndarray, multiplier, zero_point, dtype) -> np.ndarray:
    lo, hi = qmath.LIMITS[np.dtype(dtype)]
    scaled = np.rint(np.asarray(acc).astype(F32) * np.asarray(multiplier, F32))
    return np.clip(scaled + np.asarray(zero_point, F32), lo, hi).astype(dtype)


# -- ConvInteger -----------------------------------------------------------------------------------
def infer_conv_integer(node: Node) -> list[TensorType]:
    x, w = _quantized(node, 0, "x"), _quantized(node, 1, "w")
    require(node, w.rank >= 3 and isinstance(w.shape[0], int), f"weight {w} must have static output channels")
    for index, what, like, size in ((2, "x_zero_point", x, None), (3, "w_zero_point", w, w.shape[0])):
        _scalar_or_vector(node, index, what, size, like.dtype)
    conv = infer_conv(_float_view(node, list(node.inputs[:2]), _conv_attrs(node)))[0]
    return [TensorType("int32", conv.shape)]


def reference_conv_integer(node: Node, inputs):
    x, w = inputs[0], inputs[1]
    x_zp = _optional(inputs, 2)
    w_zp = _optional(inputs, 3)
    acc = integer_conv(node, x, w, 0 if x_zp is None else x_zp.reshape(()), 0 if w_zp is None else w_zp.ravel())
    return [acc.astype(np.int32)]


# -- QLinearConv -----------------------------------------------------------------------------------
def infer_qlinear_conv(node: Node) -> list[TensorType]:
    x, w = _quantized(node, 0, "x"), _quantized(node, 3, "w")
    require(node, w.rank >= 3 and isinstance(w.shape[0], int), f"weight {w} must have static output channels")
    out_ch = w.shape[0]
    _scalar_or_vector(node, 1, "x_scale", None, "float32")
    _scalar_or_vector(node, 2, "x_zero_point", None, x.dtype)
    _scalar_or_vector(node, 4, "w_scale", out_ch, "float32")
    _scalar_or_vector(node, 5, "w_zero_point", out_ch, w.dtype)
    _scalar_or_vector(node, 6, "y_scale", None, "float32")
    y_dtype = node.inputs[7].type.dtype
    require(node, y_dtype in QUANT_DTYPES, f"y_zero_point must be uint8 or int8, got {node.inputs[7].type}")
    _scalar_or_vector(node, 7, "y_zero_point", None)
    bias = _optional(node.inputs, 8)
    if bias is not None:
        require(node, bias.type.dtype == "int32", f"bias must be int32, got {bias.type}")
    # infer_conv checks shapes on float views of (x, w, bias)
    views = [node.inputs[0], node.inputs[3]] + ([bias] if bias is not None else [])
    conv = infer_conv(_float_view(node, views, _conv_attrs(node)))[0]
    _check_multipliers(node, "x")
    _check_accumulator(node, x)
    return [TensorType(y_dtype, conv.shape)]


def reference_qlinear_conv(node: Node, inputs):
    x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp = inputs[:8]
    bias = _optional(inputs, 8)
    acc = integer_conv(node, x, w, x_zp.reshape(()), w_zp.ravel())
    if bias is not None:
        acc = acc + _per_channel(bias.astype(np.int64), acc.ndim)
    acc = _wrap_int32(acc)
    m = qmath.multipliers(x_scale.reshape(()), w_scale.ravel(), y_scale.reshape(()))
    return [_requantize(acc, _per_channel(m, acc.ndim), y_zp.reshape(()), y_zp.dtype)]


# -- MatMulInteger / QLinearMatMul -------------------------------------------------------------------
def _matmul_shape(node: Node, a: TensorType, b: TensorType) -> tuple:
    require(node, a.rank >= 2 and b.rank >= 2, f"a {a} and b {b} must have rank 2 or more")
    k_a, k_b = a.shape[-1], b.shape[-2]
    require(node, not (isinstance(k_a, int) and isinstance(k_b, int)) or k_a == k_b,
            f"a {a} and b {b} differ in the inner dimension")
    batch = broadcast_shapes(node, a.shape[:-2], b.shape[:-2])
    require(node, batch is not None, f"the batch dims of a {a} and b {b} do not broadcast")
    return (*batch, a.shape[-2], b.shape[-1])


def _row_column(a_values, b_values, rank: int):
    """a's per-row values shaped for axis -2 and b's per-column values for axis -1 of the result."""
    return _per_channel(a_values, rank, rank - 2), _per_channel(b_values, rank, rank - 1)


def _integer_matmul(a, b, a_zp, b_zp) -> np.ndarray:
    a_zp = 0 if a_zp is None else (a_zp.reshape(-1, 1) if a_zp.size > 1 else a_zp.reshape(()))
    b_zp = 0 if b_zp is None else b_zp.reshape(()) if b_zp.size <= 1 else b_zp.reshape(1, -1)
    return np.matmul(a.astype(np.int64) - np.asarray(a_zp, np.int64), b.astype(np.int64) - np.asarray(b_zp, np.int64))


def infer_matmul_integer(node: Node) -> list[TensorType]:
    a, b = _quantized(node, 0, "a"), _quantized(node, 1, "b")
    shape = _matmul_shape(node, a, b)
    _scalar_or_vector(node, 2, "a_zero_point", a.shape[-2], a.dtype)
    _scalar_or_vector(node, 3, "b_zero_point", b.shape[-1], b.dtype)
    return [TensorType("int32", shape)]


def reference_matmul_integer(node: Node, inputs):
    return [_integer_matmul(inputs[0], inputs[1], _optional(inputs, 2), _optional(inputs, 3)).astype(np.int32)]


def infer_qlinear_matmul(node: Node) -> list[TensorType]:
    a, b = _quantized(node, 0, "a"), _quantized(node, 3, "b")
    shape = _matmul_shape(node, a, b)
    _scalar_or_vector(node, 1, "a_scale", a.shape[-2], "float32")
    _scalar_or_vector(node, 2, "a_zero_point", a.shape[-2], a.dtype)
    _scalar_or_vector(node, 4, "b_scale", b.shape[-1], "float32")
    _scalar_or_vector(node, 5, "b_zero_point", b.shape[-1], b.dtype)
    _scalar_or_vector(node, 6, "y_scale", None, "float32")
    y_dtype = node.inputs[7].type.dtype
    require(node, y_dtype in QUANT_DTYPES, f"y_zero_point must be uint8 or int8, got {node.inputs[7].type}")
    _scalar_or_vector(node, 7, "y_zero_point", None)
    _check_multipliers(node, "a")
    return [TensorType(y_dtype, shape)]


def reference_qlinear_matmul(node: Node, inputs):
    a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp = inputs[:8]
    acc = _wrap_int32(_integer_matmul(a, b, a_zp, b_zp))
    a_s, b_s = _row_column(a_scale, b_scale, acc.ndim)
    m = (np.asarray(a_s, F32) * np.asarray(b_s, F32)) / F32(y_scale.reshape(()))
    return [_requantize(acc, m, y_zp.reshape(()), y_zp.dtype)]


register("ConvInteger", infer_conv_integer, reference_conv_integer, OpKind.OPAQUE)
register("QLinearConv", infer_qlinear_conv, reference_qlinear_conv, OpKind.OPAQUE)
register("MatMulInteger", infer_matmul_integer, reference_matmul_integer, OpKind.OPAQUE)
register("QLinearMatMul", infer_qlinear_matmul, reference_qlinear_matmul, OpKind.OPAQUE)
