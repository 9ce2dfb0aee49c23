"""The arithmetic of int8 quantization, in numpy: one definition for the interpreter, the
quantize pass and the tests (kernels emit the same operations in the same order).

Every float step is fp32, in the order ONNX Runtime uses, so that integer results
agree bit for bit: ``QuantizeLinear`` divides by the scale (no reciprocal), rounds
half to even and then adds the zero point; requantization multiplies the fp32
accumulator by ``fp32(fp32(x_scale * w_scale) / y_scale)``.
"""

from __future__ import annotations

import numpy as np

LIMITS = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}
F32 = np.float32


def quantize(x: np.ndarray, scale, zero_point, dtype=np.uint8) -> np.ndarray:
    """``saturate(rint(x / scale) + zero_point)`` (ONNX QuantizeLinear)."""
    lo, hi = LIMITS[np.dtype(dtype)]
    q = np.rint(np.asarray(x, F32) / np.asarray(scale, F32))
    with np.errstate(invalid="ignore"):
        q = np.clip(q + np.asarray(zero_point, F32), lo, hi)
    return np.nan_to_num(q, nan=0.0).astype(dtype)


def dequantize(q: np.ndarray, scale, zero_point) -> np.ndarray:
    """``fp32(q - zero_point) * scale`` (ONNX DequantizeLinear)."""
    diff = np.asarray(q, np.int64) - np.asarray(zero_point, np.int64)
    return diff.astype(F32) * np.asarray(scale, F32)


def multipliers(x_scale: float, w_scales, y_scale: float) -> np.ndarray:
    """The fp32 requantization multiplier of each output channel."""
    return (F32(x_scale) * np.asarray(w_scales, F32)) / F32(y_scale)


def input_scales(x_scale: float, w_scales) -> np.ndarray:
    """The fp32 value of one accumulator unit of each output channel."""
    return F32(x_scale) * np.asarray(w_scales, F32)


def requantize(acc: np.ndarray, multiplier, zero_point: int, lo: int = 0, hi: int = 255,
               residual: np.ndarray | None = None) -> np.ndarray:
    """``clamp(rint(fp32(acc) * multiplier [+ residual]) + zero_point, lo, hi)`` as uint8; ``residual``
    is an fp32 term (``residual_term``) added to the rounded product, before ``rint``."""
    scaled = np.asarray(acc).astype(F32) * np.asarray(multiplier, F32)
    if residual is not None:
        scaled = scaled + np.asarray(residual, F32)
    return np.clip(np.rint(scaled) + F32(zero_point), lo, hi).astype(np.uint8)


def residual_factor(r_scale: float, y_scale: float | None = None) -> np.float32:
    """``R``: one residual unit in output units, ``fp32(r_scale / y_scale)`` (a uint8 output), or
    ``fp32(r_scale)`` (a float output, ``y_scale`` None)."""
    return F32(r_scale) if y_scale is None else F32(F32(r_scale) / F32(y_scale))


def residual_term(r: np.ndarray, r_zero_point: int, factor) -> np.ndarray:
    """``fp32(r - r_zero_point) * factor``: a uint8 residual in output units (as ``dequantize``)."""
    return dequantize(r, F32(factor), r_zero_point)


def rescale(acc: np.ndarray, scale) -> np.ndarray:
    """``fp32(acc) * scale``: an accumulator back in float."""
    return np.asarray(acc).astype(F32) * np.asarray(scale, F32)


def choose_uint8(lo: float, hi: float) -> tuple[float, int]:
    """Scale and zero point mapping [lo, hi] (widened to hold 0) onto [0, 255]; 0.0 is exact."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-12:
        return 1.0, 0
    scale = float(F32((hi - lo) / 255.0))
    zero_point = int(np.clip(round(-lo / scale), 0, 255))
    return scale, zero_point


def symmetric_int8(w: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric int8 weights (range [-127, 127]) and their fp32 scales."""
    moved = np.moveaxis(np.asarray(w, F32), axis, 0).reshape(w.shape[axis], -1)
    peak = np.abs(moved).max(axis=1)
    scales = np.where(peak > 0, peak / F32(127.0), F32(1.0)).astype(F32)
    q = np.clip(np.rint(moved / scales[:, None]), -127, 127).astype(np.int8)
    shape = (w.shape[axis],) + tuple(np.delete(np.array(w.shape), axis))
    return np.moveaxis(q.reshape(shape), 0, axis), scales


def quantize_bias(bias: np.ndarray, x_scale: float, w_scales) -> np.ndarray:
    """An fp32 bias in accumulator units (int32, saturated)."""
    units = input_scales(x_scale, w_scales).astype(np.float64)
    q = np.rint(np.asarray(bias, np.float64) / units)
    return np.clip(q, -(2**31), 2**31 - 1).astype(np.int32)
