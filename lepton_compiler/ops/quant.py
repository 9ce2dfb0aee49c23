"""Quantized ops: ONNX's QuantizeLinear family, and lepton's int8 kernels ``QConv`` and ``QGemm``.

The int8 semantics, shared by the reference interpreter and every kernel path
(``qmath.py`` holds the arithmetic):

* Activations inside an int8 region are **uint8** with a per-tensor scale and
  zero point. An int8 activation of an imported model is the same tensor with
  the zero point moved by 128 (``q_u8 = q_s8 + 128``), so kernels see one format.
* Weights are int8, symmetric (zero point 0), per output channel or per tensor.
* Bias is int32 in units of ``x_scale * w_scale[o]``.
* The accumulator is exact: ``acc = bias[o] + sum((x - x_zp) * w)`` in int32.
* Requantization is in fp32, as ONNX Runtime does it: with
  ``M[o] = fp32(fp32(x_scale * w_scale[o]) / y_scale)``,
  ``y = clamp(rint(fp32(acc) * M[o]) + y_zp, y_min, y_max)`` where ``rint``
  rounds half to even. A fused Relu is ``y_min = y_zp``; a fused Clip narrows
  ``[y_min, y_max]``; max pooling then commutes with this monotonic map.
* A float output (``output_dtype="float32"``, the end of an int8 region) is
  ``act(fp32(acc) * fp32(x_scale * w_scale[o]))``, then the softmax if fused.
* A QConv **residual** (a uint8 tensor ``r`` of the conv output's shape, before pooling, with
  its own ``r_scale`` and ``r_zero_point``) is added in fp32 before rounding, clamp, activation
  and pooling (as ``FusedConv``'s ``act(conv + residual)``):
  ``y = clamp(rint(fp32(acc) * M[o] + fp32(r - r_zp) * R) + y_zp, y_min, y_max)`` with
  ``R = fp32(r_scale / y_scale)``; a float output is
  ``act(fp32(acc) * fp32(x_scale * w_scale[o]) + fp32(r - r_zp) * r_scale)``. Each product and
  the sum are rounded to fp32 separately (no fused multiply-add). Why this form: it is the
  conv's own requantization plus one term whose factor, like ``M``, is divided out at compile
  time, so a kernel pays one multiply and one add per output and no division; it is exact to
  specify in standard ONNX (``fp32(r - r_zp) * R`` is ``DequantizeLinear(r, R, r_zp)`` and
  ``rint(v) + y_zp`` is ``QuantizeLinear(v, 1, y_zp)``), which ``QLinearAdd`` is not (ONNX
  Runtime's kernels order and fuse its float operations as the vector width suits them). With
  a residual, max pooling pools the requantized values (the term differs per position).

Validation (the type rules; the arithmetic above is unchanged): a constant QuantizeLinear scale
of 0 or NaN is refused (every other scale, and every DequantizeLinear scale, is computed as ONNX
Runtime does); QConv / QGemm need finite fp32 factors (requantization multipliers, or
``x_scale * w_scale`` for a float output), zero points in [0, 255] and, with constant weights
and bias, an accumulator that cannot overflow int32 (the interpreter's sum is exact, the
kernels' int32 one would wrap around).

``QConv(x: uint8[N, C, ...], w: int8[O, C/group, ...], bias: int32[O]?, residual: uint8[N, O, ...]?)``
    Conv attributes as in ONNX, pooling attributes as ``FusedConv``; ``x_scale``,
    ``x_zero_point``, ``w_scales`` (1 or O floats), ``y_scale``,
    ``y_zero_point``, ``y_min``, ``y_max``, ``output_dtype`` and, for float
    output, ``activation`` / ``activation_params``; with a residual, ``r_scale``
    and ``r_zero_point``.
``QGemm(a: uint8[M, K], b: int8[N, K], bias: int32[N]?)``
    ``y = a @ b.T`` under the same attributes (``a_*`` for ``x_*``), plus
    ``softmax`` = 1 (float output only).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..ir import Node, TensorType, Value
from . import qmath
from .activations import apply_activation
from .fused import POOL_ATTRS, pool_node
from .nn import conv_sums, conv_window, infer_conv, infer_maxpool, reference_maxpool, reference_softmax
from .registry import OpKind, register, require

QUANT_DTYPES = ("uint8", "int8")


# -- shared helpers --------------------------------------------------------------------------
def _scale_and_zero_point(node: Node, inputs):
    """(scale array, zero point array) broadcastable to the data; ``axis`` matters only per axis."""
    scale = inputs[1]
    zp = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    data = inputs[0]
    if scale.size > 1:
        shape = [1] * data.ndim
        shape[_axis(node, data.ndim)] = scale.size
        scale = scale.reshape(shape)
        zp = zp.reshape(shape) if zp is not None else None
    return scale, zp


def _axis(node: Node, rank: int) -> int:
    axis = node.attr("axis", 1)
    require(node, -rank <= axis < rank or rank == 0, f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def _check_scale(node: Node, data: TensorType, scale: Value, zp) -> None:
    require(node, scale.type.dtype == "float32", f"scale must be float32, got {scale.type}")
    require(node, scale.type.rank <= 1, f"scale must be a scalar or 1-D, got {scale.type}")
    if scale.type.rank == 1 and scale.type.shape[0] != 1:
        axis = _axis(node, data.rank)
        require(node, scale.type.shape[0] == data.shape[axis],
                f"per-axis scale {scale.type} does not match axis {axis} of {data}")
    if zp is not None:  # a scalar and a [1] are the same per-tensor parameter (ORT writes such pairs)
        per_tensor = scale.type.shape in ((), (1,)) and zp.type.shape in ((), (1,))
        require(node, per_tensor or zp.type.shape == scale.type.shape,
                f"zero point {zp.type} does not have the scale's shape {scale.type}")


# -- QuantizeLinear / DequantizeLinear ------------------------------------------------------
def _check_quantize_scale(node: Node, scale: Value) -> None:
    """A constant QuantizeLinear scale must not be 0 or NaN: ``x / 0`` is NaN for ``x = 0`` and
    ``x / NaN`` always is, and the ONNX spec gives NaN no integer value (ONNX Runtime's own result
    depends on the output type: 0 for uint8, -128 for int8; lepton's is 0). Negative, infinite and
    subnormal scales are accepted: their quotients are IEEE-defined, and lepton computes them as
    ONNX Runtime does (DequantizeLinear accepts every scale for the same reason: ``(q - zp) * s``).
    A scale computed at run time is used as given."""
    if not scale.is_const:
        return
    values = np.asarray(scale.const, np.float32).ravel()
    bad = np.flatnonzero((values == 0) | np.isnan(values))
    if bad.size:
        where = "" if values.size == 1 else f" (element {bad[0]})"
        require(node, False, f"scale {float(values[bad[0]])}{where} is not allowed: x / scale has no quantized "
                "value for x = 0 (ONNX leaves NaN unquantizable)")


def infer_quantize(node: Node) -> list[TensorType]:
    x, scale = node.inputs[0].type, node.inputs[1]
    zp = node.inputs[2] if len(node.inputs) > 2 else None
    require(node, x.dtype == "float32", f"expects a float32 tensor, got {x}")
    _check_scale(node, x, scale, zp)
    _check_quantize_scale(node, scale)
    dtype = zp.type.dtype if zp is not None else "uint8"
    require(node, dtype in QUANT_DTYPES, f"zero point must be uint8 or int8, got {dtype}")
    return [TensorType(dtype, x.shape)]


def reference_quantize(node: Node, inputs):
    x = inputs[0]
    scale, zp = _scale_and_zero_point(node, inputs)
    dtype = node.outputs[0].type.dtype if node.outputs else (zp.dtype if zp is not None else np.uint8)
    return [qmath.quantize(x, scale, 0 if zp is None else zp, np.dtype(dtype))]


def infer_dequantize(node: Node) -> list[TensorType]:
    x, scale = node.inputs[0].type, node.inputs[1]
    zp = node.inputs[2] if len(node.inputs) > 2 else None
    require(node, x.dtype in QUANT_DTYPES + ("int32",), f"expects a uint8, int8 or int32 tensor, got {x}")
    _check_scale(node, x, scale, zp)
    if zp is not None:
        require(node, zp.type.dtype == x.dtype, f"zero point {zp.type} does not have the input's dtype {x.dtype}")
    return [TensorType("float32", x.shape)]


def reference_dequantize(node: Node, inputs):
    x = inputs[0]
    scale, zp = _scale_and_zero_point(node, inputs)
    return [qmath.dequantize(x, scale, 0 if zp is None else zp)]


register("QuantizeLinear", infer_quantize, reference_quantize, OpKind.ELEMENTWISE)
register("DequantizeLinear", infer_dequantize, reference_dequantize, OpKind.ELEMENTWISE)


# -- integer convolution and matmul ----------------------------------------------------------
def _float_view(node: Node, inputs: list[Value], attrs) -> Node:
    """A detached float Conv with the same shapes, to reuse Conv's type rule and window."""
    values = [Value(f"{node.name}.{i}", TensorType("float32", v.type.shape)) for i, v in enumerate(inputs)]
    return Node("Conv", node.name, values, [Value(f"{node.name}.conv", TensorType("float32", ()))], attrs)


def _conv_attrs(node: Node) -> dict:
    keep = ("kernel_shape", "strides", "pads", "dilations", "group", "auto_pad")
    return {k: v for k, v in node.attrs.items() if k in keep}


def integer_conv(node: Node, x: np.ndarray, w: np.ndarray, x_zp, w_zp=0) -> np.ndarray:
    """``sum((x - x_zp) * (w - w_zp))`` over each window, exactly, as int64 (padding reads ``x_zp``)."""
    shapes = [Value("x", TensorType("float32", x.shape)), Value("w", TensorType("float32", w.shape))]
    win = conv_window(_float_view(node, shapes, _conv_attrs(node)))
    xc = x.astype(np.int64) - np.asarray(x_zp, np.int64)
    wc = w.astype(np.int64) - np.asarray(w_zp, np.int64).reshape((-1,) + (1,) * (w.ndim - 1))
    return conv_sums(xc, wc, win, node.attr("group", 1))


def _channel_shape(values: np.ndarray, rank: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast over axis 1 of a rank-``rank`` tensor."""
    return np.asarray(values).reshape((1, -1) + (1,) * (rank - 2)) if np.size(values) > 1 else np.asarray(values)


# -- QConv -----------------------------------------------------------------------------------
def _check_int8_attrs(node: Node, out_channels, prefix: str) -> None:
    for name in (f"{prefix}_scale", f"{prefix}_zero_point", "w_scales" if prefix == "x" else "b_scales"):
        require(node, node.attr(name) is not None, f"missing attribute {name}")
    scales = node.attr("w_scales" if prefix == "x" else "b_scales")
    require(node, len(scales) in (1, out_channels), f"{len(scales)} weight scales for {out_channels} channels")
    require(node, 0 <= node.attr(f"{prefix}_zero_point") <= 255, "the input zero point must be in [0, 255]")
    dtype = node.attr("output_dtype", "uint8")
    require(node, dtype in ("uint8", "float32"), f"output_dtype must be uint8 or float32, not {dtype!r}")
    if dtype == "uint8":
        for name in ("y_scale", "y_zero_point"):
            require(node, node.attr(name) is not None, f"missing attribute {name}")
        require(node, 0 <= node.attr("y_zero_point") <= 255, "the output zero point must be in [0, 255]")
        lo, hi = node.attr("y_min", 0), node.attr("y_max", 255)
        require(node, 0 <= lo <= hi <= 255, f"y_min {lo} and y_max {hi} must satisfy 0 <= y_min <= y_max <= 255")
        require(node, not node.attr("activation", ""), "a uint8 output takes its activation as y_min/y_max")
    _check_factors(node, prefix, dtype)


def _check_factors(node: Node, prefix: str, dtype: str) -> None:
    """The fp32 factor each accumulator is multiplied by (the requantization multiplier for a uint8
    output, ``x_scale * w_scale`` for a float one) must be finite: ``acc * inf`` is NaN for a zero
    accumulator, and a NaN has no uint8 value (validation only; the arithmetic is ``qmath``'s)."""
    x_scale, w_scales = node.attr(f"{prefix}_scale"), node.attr("w_scales" if prefix == "x" else "b_scales")
    with np.errstate(all="ignore"):
        if dtype == "uint8":
            factors = qmath.multipliers(x_scale, w_scales, node.attr("y_scale"))
            what = f"{prefix}_scale * w_scale / y_scale"
        else:
            factors = qmath.input_scales(x_scale, w_scales)
            what = f"{prefix}_scale * w_scale"
    bad = np.flatnonzero(~np.isfinite(np.asarray(factors, np.float32)))
    if bad.size:
        require(node, False, f"the fp32 factor {what} is {float(np.ravel(factors)[bad[0]])} for output channel "
                f"{bad[0]}: it must be finite")


def _check_accumulator(node: Node, w: Value, bias, x_zero_point: int) -> None:
    """With constant weights and bias, the int32 accumulator must hold the exact sum for every input."""
    if not w.is_const or (bias is not None and not bias.is_const):
        return
    weights = np.abs(np.asarray(w.const, np.int64).reshape(w.type.shape[0], -1)).sum(axis=1)
    bound = weights * max(int(x_zero_point), 255 - int(x_zero_point))
    if bias is not None:
        bound = bound + np.abs(np.asarray(bias.const, np.int64).ravel())
    worst = int(bound.max(initial=0))
    require(node, worst <= 2**31 - 1, f"the int32 accumulator can overflow (|bias| + |x - x_zero_point| * "
            f"sum|w| reaches {worst} > 2**31 - 1)")


def _check_int8_operands(node: Node, x: TensorType, w: TensorType, bias, what: str) -> None:
    require(node, x.dtype == "uint8", f"{what} must be uint8, got {x}")
    require(node, w.dtype == "int8", f"weights must be int8, got {w}")
    if bias is not None:
        require(node, bias.type.dtype == "int32", f"bias must be int32, got {bias.type}")


def infer_qconv(node: Node) -> list[TensorType]:
    x, w = node.inputs[0].type, node.inputs[1].type
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    _check_int8_operands(node, x, w, bias, "input")
    require(node, w.rank >= 3 and isinstance(w.shape[0], int), f"weight {w} must have static output channels")
    _check_int8_attrs(node, w.shape[0], "x")
    _check_accumulator(node, node.inputs[1], bias, node.attr("x_zero_point"))
    conv = infer_conv(_float_view(node, list(node.inputs[:2]), _conv_attrs(node)))[0]
    _check_residual(node, conv)
    out = TensorType(node.attr("output_dtype", "uint8"), conv.shape)
    if node.attr("pool_kernel") is None:
        return [out]
    pooled = infer_maxpool(pool_node(node, TensorType("float32", conv.shape)))[0]
    return [TensorType(out.dtype, pooled.shape)]


def residual_of(node: Node) -> Optional[Value]:
    """A QConv's residual operand, or None."""
    return node.inputs[3] if node.op == "QConv" and len(node.inputs) > 3 else None


def _check_residual(node: Node, conv: TensorType) -> None:
    residual = residual_of(node)
    if residual is None:
        return
    require(node, residual.type.dtype == "uint8", f"the residual must be uint8, got {residual.type}")
    require(node, residual.type.shape == conv.shape,
            f"the residual {residual.type} must have the conv output's shape {list(conv.shape)}")
    for name in ("r_scale", "r_zero_point"):
        require(node, node.attr(name) is not None, f"missing attribute {name}")
    require(node, 0 <= node.attr("r_zero_point") <= 255, "the residual zero point must be in [0, 255]")
    uint8 = node.attr("output_dtype", "uint8") == "uint8"
    with np.errstate(all="ignore"):
        factor = qmath.residual_factor(node.attr("r_scale"), node.attr("y_scale") if uint8 else None)
    require(node, bool(np.isfinite(factor)), f"the residual factor {'r_scale / y_scale' if uint8 else 'r_scale'} "
            f"is {float(factor)}: it must be finite")


def _residual_term(node: Node, r: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """``fp32(r - r_zp) * R`` (see the module), or None without a residual."""
    if r is None:
        return None
    uint8 = node.attr("output_dtype", "uint8") == "uint8"
    factor = qmath.residual_factor(node.attr("r_scale"), node.attr("y_scale") if uint8 else None)
    return qmath.residual_term(r, node.attr("r_zero_point"), factor)


def _finish(node: Node, acc: np.ndarray, in_scale: float, w_scales, rank: int,
            residual: Optional[np.ndarray] = None) -> np.ndarray:
    """Requantize (uint8 output) or rescale and activate (float output) an int64 accumulator,
    adding a QConv's uint8 ``residual`` first."""
    term = _residual_term(node, residual)
    if node.attr("output_dtype", "uint8") == "uint8":
        m = _channel_shape(qmath.multipliers(in_scale, w_scales, node.attr("y_scale")), rank)
        return qmath.requantize(acc, m, node.attr("y_zero_point"), node.attr("y_min", 0), node.attr("y_max", 255),
                                term)
    s = _channel_shape(qmath.input_scales(in_scale, w_scales), rank)
    y = qmath.rescale(acc, s)
    if term is not None:
        y = (y + term).astype(np.float32)
    return apply_activation(node.attr("activation", ""), y, node.attr("activation_params", []))


def reference_qconv(node: Node, inputs):
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    residual = inputs[3] if len(inputs) > 3 else None
    acc = integer_conv(node, x, w, node.attr("x_zero_point"))
    if bias is not None:
        acc = acc + bias.astype(np.int64).reshape((1, -1) + (1,) * (x.ndim - 2))
    y = _finish(node, acc, node.attr("x_scale"), node.attr("w_scales"), x.ndim, residual)
    if node.attr("pool_kernel") is not None:   # pooled in fp32, which holds every uint8 exactly
        pooled = reference_maxpool(pool_node(node, TensorType("float32", y.shape)), [y.astype(np.float32)])[0]
        y = pooled.astype(y.dtype)
    return [y]


register("QConv", infer_qconv, reference_qconv, OpKind.OPAQUE)


# -- QGemm -----------------------------------------------------------------------------------
def infer_qgemm(node: Node) -> list[TensorType]:
    a, b = node.inputs[0].type, node.inputs[1].type
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    _check_int8_operands(node, a, b, bias, "a")
    require(node, a.rank == 2 and b.rank == 2, f"a {a} and b {b} must be matrices")
    require(node, a.shape[1] == b.shape[1], f"a {a} and b {b} (read as [N, K]) differ in K")
    require(node, isinstance(b.shape[0], int), f"b {b} must have a static N")
    _check_int8_attrs(node, b.shape[0], "a")
    if bias is not None:
        require(node, bias.type.shape == (b.shape[0],), f"bias {bias.type} should be [{b.shape[0]}]")
    _check_accumulator(node, node.inputs[1], bias, node.attr("a_zero_point"))
    if node.attr("softmax", 0):
        require(node, node.attr("output_dtype", "uint8") == "float32", "softmax needs a float32 output")
    return [TensorType(node.attr("output_dtype", "uint8"), (a.shape[0], b.shape[0]))]


def reference_qgemm(node: Node, inputs):
    a, b = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    acc = (a.astype(np.int64) - node.attr("a_zero_point")) @ b.astype(np.int64).T
    if bias is not None:
        acc = acc + bias.astype(np.int64)
    y = _finish(node, acc, node.attr("a_scale"), node.attr("b_scales"), 2)
    if node.attr("softmax", 0):
        y = reference_softmax(Node("Softmax", node.name, [], [], {"axis": -1}), [y])[0]
    return [y]


register("QGemm", infer_qgemm, reference_qgemm, OpKind.OPAQUE)


def is_quantized(op: str) -> bool:
    return op in ("QConv", "QGemm")


__all__ = ["POOL_ATTRS", "integer_conv", "is_quantized"]

from . import qpool  # noqa: E402,F401  (registers lepton.QAveragePool, the int8 average pool)
from . import qlookup  # noqa: E402,F401  (registers lepton.QLookup, an int8 elementwise table)
