"""Dynamic quantization: ONNX's ``DynamicQuantizeLinear`` and lepton's ``DynQGemm``.

This is what ``onnxruntime.quantization.quantize_dynamic`` writes: weights int8 at export,
activations quantized at run time from their own range. The arithmetic, in ONNX Runtime's order
(its ``DynamicQuantizeLinear`` kernel, its ``DynamicQuantizeMatMul`` fusion and the unfused
``MatMulInteger -> Cast -> Mul -> Add`` chain all give these bits; ``tests/test_dynamic_quant.py``):

``DynamicQuantizeLinear(x) -> (y: uint8, y_scale: float32 scalar, y_zero_point: uint8 scalar)``
    ``lo = min(0, min(x))``, ``hi = max(0, max(x))`` over the **whole** tensor (in fp32; the range
    holds 0, so 0.0 is exact), ``y_scale = 1 if hi == lo else fp32(fp32(hi - lo) / 255)``,
    ``y_zero_point = rint(clamp(fp32(0 - fp32(lo / y_scale)), 0, 255))``,
    ``y = saturate(rint(x / y_scale) + y_zero_point)`` (a division, not a reciprocal multiply;
    ``rint`` rounds half to even). The ONNX spec's formula divides by zero when ``x`` is all
    zeros (or empty); ONNX Runtime and the ONNX reference implementation take scale 1 there, and
    so does lepton. NaN and infinite inputs: ONNX leaves the result undefined (ONNX Runtime's
    depends on its vector min/max); lepton's range ignores NaN.

``DynQGemm(a: float32[..., K], b: int8[N, K], bias: float32[N]?) -> float32[..., N]``
    ``DynamicQuantizeLinear(a) -> MatMulInteger(q, bᵀ, a_zp) -> Cast(float) -> Mul(a_scale * b_scale)
    -> Add(bias)? -> activation?`` as one op (the ``fuse-dynamic-quant`` pass builds it): with
    ``(q, a_scale, a_zp)`` as above over all of ``a`` (one scale for the whole tensor, whatever
    its rank), ``acc = sum_k (q - a_zp) * b[n, k]`` in int32 (exact; it wraps around only past
    2**31, as ONNX Runtime's does), ``s[n] = fp32(a_scale * b_scales[n])`` (the model's own Mul
    of the two scales), ``y = fp32(fp32(acc) * s[n])``, then ``fp32(y + bias[n])`` (a separate
    rounding, no FMA: ONNX Runtime's output processor multiplies, then adds) and the activation
    (``activation`` / ``activation_params`` as in ``FusedGemm``). Attributes: ``b_scales`` (1 or N
    floats), ``activation``, ``activation_params``.
"""

from __future__ import annotations

import numpy as np

from ..ir import Node, TensorType
from .activations import apply_activation
from .registry import OpKind, register, require

F32 = np.float32


def dynamic_range(x: np.ndarray) -> tuple[np.float32, np.uint8]:
    """(scale, zero point) of ``DynamicQuantizeLinear`` for ``x``, in ONNX Runtime's fp32 order."""
    x = np.asarray(x, F32)
    finite = x[~np.isnan(x)] if x.size else x
    lo = min(F32(finite.min()), F32(0)) if finite.size else F32(0)
    hi = max(F32(finite.max()), F32(0)) if finite.size else F32(0)
    scale = F32(1) if hi == lo else F32(F32(hi - lo) / F32(255))
    with np.errstate(all="ignore"):
        initial = F32(F32(0) - F32(lo / scale))
    zero_point = np.rint(np.clip(initial, F32(0), F32(255)))
    return F32(scale), np.uint8(zero_point)


def quantize_with(x: np.ndarray, scale, zero_point) -> np.ndarray:
    """``saturate(rint(x / scale) + zero_point)`` as uint8 (NaN -> 0, as ``qmath.quantize``)."""
    with np.errstate(all="ignore"):
        q = np.rint(np.asarray(x, F32) / F32(scale)) + F32(zero_point)
        q = np.clip(q, 0, 255)
    return np.nan_to_num(q, nan=0.0).astype(np.uint8)


def dynamic_quantize(x: np.ndarray) -> tuple[np.ndarray, np.float32, np.uint8]:
    """``DynamicQuantizeLinear``: (y, y_scale, y_zero_point)."""
    scale, zero_point = dynamic_range(x)
    return quantize_with(x, scale, zero_point), scale, zero_point


# -- DynamicQuantizeLinear --------------------------------------------------------------------------
def infer_dynamic_quantize(node: Node) -> list[TensorType]:
    x = node.inputs[0].type
    require(node, x.dtype == "float32", f"expects a float32 tensor, got {x}")
    return [TensorType("uint8", x.shape), TensorType("float32", ()), TensorType("uint8", ())]


def reference_dynamic_quantize(node: Node, inputs):
    q, scale, zero_point = dynamic_quantize(inputs[0])
    return [q, np.asarray(scale, F32), np.asarray(zero_point, np.uint8)]


register("DynamicQuantizeLinear", infer_dynamic_quantize, reference_dynamic_quantize, OpKind.OPAQUE)


# -- DynQGemm ---------------------------------------------------------------------------------------
def wrap_int32(acc: np.ndarray) -> np.ndarray:
    return ((np.asarray(acc, np.int64) + 2**31) % 2**32) - 2**31


def infer_dyn_qgemm(node: Node) -> list[TensorType]:
    a, b = node.inputs[0].type, node.inputs[1].type
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    require(node, a.dtype == "float32", f"a must be float32, got {a}")
    require(node, b.dtype == "int8" and b.rank == 2, f"b must be an int8 matrix [N, K], got {b}")
    require(node, a.rank >= 2, f"a {a} must have rank 2 or more")
    require(node, isinstance(b.shape[0], int) and isinstance(b.shape[1], int), f"b {b} must have a static shape")
    require(node, a.shape[-1] == b.shape[1], f"a {a} and b {b} (read as [N, K]) differ in K")
    n = b.shape[0]
    scales = node.attr("b_scales")
    require(node, scales is not None and len(scales) in (1, n), f"b_scales must hold 1 or {n} floats")
    if bias is not None:
        require(node, bias.type.dtype == "float32" and bias.type.shape == (n,),
                f"bias {bias.type} should be float32[{n}]")
    return [TensorType("float32", tuple(a.shape[:-1]) + (n,))]


def reference_dyn_qgemm(node: Node, inputs):
    a, b = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    q, scale, zero_point = dynamic_quantize(a)
    rows = q.reshape(-1, q.shape[-1]).astype(np.int64) - int(zero_point)
    acc = wrap_int32(rows @ b.astype(np.int64).T)
    s = (scale * np.asarray(node.attr("b_scales"), F32)).astype(F32)
    y = (acc.astype(F32) * s).astype(F32)
    if bias is not None:
        y = (y + bias.astype(F32)).astype(F32)
    y = apply_activation(node.attr("activation", ""), y, node.attr("activation_params", []))
    return [y.reshape(tuple(a.shape[:-1]) + (b.shape[0],))]


register("DynQGemm", infer_dyn_qgemm, reference_dyn_qgemm, OpKind.OPAQUE)

__all__ = ["dynamic_quantize", "dynamic_range", "quantize_with"]
