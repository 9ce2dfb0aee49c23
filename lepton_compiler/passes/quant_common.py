"""What fuse-qdq and lower-qlinear share: reading constant quantization parameters, int8
weights from any integer weights, int32 bias, int8 activations moved to uint8, pool absorption.

The int8 IR (``ops/quant.py``) takes uint8 activations only. An int8 activation tensor is the same
tensor with its zero point moved by 128 (``q_u8 = q_s8 + 128`` exactly, saturation included), so
:func:`activations_to_uint8` retypes every int8 activation whose producer and readers are all
quantization ops (or data movement between them) and moves their zero points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..ir import Graph, Node, TensorType, Value
from ..ops import infer_graph, qmath
from ..ops.fused import DOMAIN
from .fuse_activation import known_params
from .fuse_pool import pool_attrs
from .fusion import Users, fuse, make_node
from .rewrite import add_constant, only_user

MOVE_OPS = ("MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity")
"""Ops that move or select values without arithmetic: they commute with (de)quantization."""

F32 = np.float32


# -- constant parameters ------------------------------------------------------------------------------
def const(value: Optional[Value]) -> Optional[np.ndarray]:
    return None if value is None or not value.is_const else value.const


@dataclass(frozen=True)
class QParams:
    """The constant scale and zero point of a (De)QuantizeLinear (or a QLinear op's operand)."""

    scale: np.ndarray      # float32, 1-D
    zero_point: np.ndarray  # int64, 1-D, the same size
    dtype: str             # of the quantized side
    axis: int              # the axis of per-axis parameters (normalized), -1 when per tensor

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1

    def same(self, other: "QParams") -> bool:
        return (self.dtype == other.dtype and self.axis == other.axis and self.scale.shape == other.scale.shape
                and np.array_equal(self.scale, other.scale) and np.array_equal(self.zero_point, other.zero_point))

    @property
    def normal(self) -> bool:
        """Scales for which dequantize-then-quantize returns the integer exactly (positive, finite,
        not tiny): also the scales under which quantization is increasing, so that Relu, Clip and
        max pooling commute with it."""
        return bool(np.all(np.isfinite(self.scale)) and np.all(self.scale > 1e-30) and np.all(self.scale < 1e30))


def params(scale: Optional[Value], zero_point: Optional[Value], dtype: str, rank: int = 0,
           axis: int = 1) -> Optional[QParams]:
    """QParams from constant inputs (an absent zero point is 0 of ``dtype``); None if not constant."""
    s = const(scale)
    if s is None or s.dtype != np.float32:
        return None
    z = np.zeros(s.shape, np.int64) if zero_point is None else const(zero_point)
    if z is None or z.size != s.size:
        return None
    per_axis = s.size > 1
    return QParams(s.astype(F32).ravel(), z.astype(np.int64).ravel(), dtype,
                   (axis % rank if rank else 0) if per_axis else -1)


def node_params(node: Node) -> Optional[QParams]:
    """The parameters of a QuantizeLinear or DequantizeLinear node."""
    zp = node.inputs[2] if len(node.inputs) > 2 else None
    if node.op == "QuantizeLinear":
        dtype = node.outputs[0].type.dtype
        rank = node.inputs[0].type.rank
    else:
        dtype = node.inputs[0].type.dtype
        rank = node.inputs[0].type.rank
    return params(node.inputs[1], zp, dtype, rank, node.attr("axis", 1))


def dequantize_of(value: Optional[Value]) -> Optional[Node]:
    p = None if value is None else value.producer
    return p if p is not None and p.op == "DequantizeLinear" and p.domain == "" else None


# -- when a layer may become QConv / QGemm --------------------------------------------------------------
TINY = float(np.finfo(np.float32).tiny)
INT32_MAX = 2**31 - 1


def fusable_scales(x_scale, w_scales, y_scale=None) -> bool:
    """Whether the fp32 arithmetic of a QConv / QGemm with these scales computes what the model's
    float layer (dequantize, Conv / Gemm, quantize) computes, up to the rounding of one step.

    Every scale must be positive and normal (``QParams.normal``): a negative scale reverses the
    order of the quantized values (Relu, Clip and max pooling then do not become ``y_min`` /
    ``y_max`` / a pool of the integers), a zero one loses a float bias (``bias / 0``), NaN and
    infinity have no integer image. The products ``x_scale * w_scale`` and the requantization
    multipliers ``x_scale * w_scale / y_scale`` must also be normal fp32 numbers: one that
    underflows to a subnormal or 0, or overflows to inf, is not the product the float layer
    applies step by step. A layer that fails this keeps its standard form (the model's own ops,
    which lepton computes as ONNX Runtime does without its QDQ fusion)."""
    scales = [np.asarray(x_scale, np.float32).ravel(), np.asarray(w_scales, np.float32).ravel()]
    if y_scale is not None:
        scales.append(np.asarray(y_scale, np.float32).ravel())
    if not all(np.all(np.isfinite(s)) and np.all(s > 1e-30) and np.all(s < 1e30) for s in scales):
        return False
    with np.errstate(all="ignore"):
        units = qmath.input_scales(float(scales[0][0]), scales[1])
        factors = [units] if y_scale is None else [units, qmath.multipliers(float(scales[0][0]), scales[1],
                                                                              float(scales[2][0]))]
    return all(np.all(np.isfinite(f)) and np.all(f >= TINY) for f in factors)


def accumulator_bound(weights: np.ndarray, bias: Optional[np.ndarray], x_zero_point: int) -> int:
    """The largest ``|bias[o] + sum((x - x_zp) * w[o])|`` over uint8 inputs ``x``: the int32
    accumulator of QConv / QGemm (ONNX Runtime's too) holds the exact sum only up to 2**31 - 1."""
    w = np.abs(np.asarray(weights, np.int64).reshape(weights.shape[0], -1)).sum(axis=1)
    reach = max(int(x_zero_point), 255 - int(x_zero_point))
    total = w * reach
    if bias is not None:
        total = total + np.abs(np.asarray(bias, np.int64).ravel())
    return int(total.max(initial=0))


# -- weights and bias ---------------------------------------------------------------------------------
def int8_weights(q: np.ndarray, zero_point: np.ndarray, axis: int) -> Optional[np.ndarray]:
    """``q - zero_point`` as int8 when every value fits (uint8 weights with a zero point near 128
    do); None otherwise, and the layer then stays in its standard form."""
    zp = zero_point.astype(np.int64)
    if zp.size > 1:
        shape = [1] * q.ndim
        shape[axis] = zp.size
        zp = zp.reshape(shape)
    else:
        zp = zp.reshape(())
    centered = q.astype(np.int64) - zp
    if centered.size and (centered.min() < -128 or centered.max() > 127):
        return None
    return centered.astype(np.int8)


def int32_bias(bias: Optional[Value], x_scale: float, w_scales: np.ndarray, channels: int):
    """The bias in accumulator units: ``(array or None, ok)``. An int32 bias dequantized with the
    scale ``x_scale * w_scale`` (what ORT's quantizer writes) is taken as it is; any other constant
    bias (float, or int32 at another scale) is requantized with ``qmath.quantize_bias``."""
    if bias is None:
        return None, True
    units = qmath.input_scales(x_scale, w_scales)
    dq = dequantize_of(bias)
    if dq is not None and const(dq.inputs[0]) is not None:
        p = node_params(dq)
        raw = const(dq.inputs[0])
        if p is None or raw.size != channels:
            return None, False
        if p.dtype == "int32" and not p.zero_point.any() and np.allclose(p.scale, units, rtol=1e-6, atol=0):
            return raw.astype(np.int32).ravel(), True
        scale = p.scale if p.per_tensor else p.scale.reshape(raw.shape)
        values = qmath.dequantize(raw, scale, p.zero_point.reshape(scale.shape))
    elif const(bias) is not None and const(bias).dtype == np.float32:
        values = const(bias)
    else:
        return None, False
    if values.size != channels:
        return None, False
    return qmath.quantize_bias(values.ravel(), x_scale, w_scales), True


# -- int8 activations as uint8 ------------------------------------------------------------------------
PRODUCER_ZP = {"QuantizeLinear": 2, "QLinearConv": 7, "QLinearMatMul": 7}
"""Ops that produce an int8 activation, and the input holding its zero point."""
READER_ZP = {"DequantizeLinear": (0, 2), "QLinearConv": (0, 2), "QLinearMatMul": (0, 2),
             "ConvInteger": (0, 2), "MatMulInteger": (0, 2)}
"""Ops that read a quantized activation: (its input index, the input holding its zero point)."""


def _region(g: Graph, start: Value, users: Users) -> Optional[tuple[list[Value], list[tuple[Node, int]]]]:
    """The int8 values reachable from ``start`` through MOVE_OPS, and the (reader, zp index) pairs
    at its end; None when some reader is not a quantization op or a value is a graph output."""
    values, readers, todo = [], [], [start]
    while todo:
        v = todo.pop()
        if v in g.outputs:
            return None
        values.append(v)
        for reader in users.get(v, []):
            positions = [i for i, x in enumerate(reader.inputs) if x is v]
            if reader.domain == "" and reader.op in MOVE_OPS and positions == [0]:
                todo.extend(reader.outputs[:1])
            elif reader.domain == "" and reader.op in READER_ZP and positions == [READER_ZP[reader.op][0]]:
                readers.append((reader, READER_ZP[reader.op][1]))
            else:
                return None
    return values, readers


def _shifted(g: Graph, node: Node, index: int, base: str) -> bool:
    """Replace the int8 zero point at ``node.inputs[index]`` (absent: 0) by a uint8 one 128 higher."""
    old = node.inputs[index] if len(node.inputs) > index else None
    if old is None:
        array = np.full((), 128, np.uint8)
    elif const(old) is None or const(old).dtype != np.int8:
        return False
    else:
        array = (const(old).astype(np.int16) + 128).astype(np.uint8)
    while len(node.inputs) <= index:
        node.inputs.append(None)
    node.inputs[index] = add_constant(g, base, array)
    return True


def activations_to_uint8(g: Graph) -> bool:
    """int8 activations -> uint8 with zero points + 128, where the whole tensor stays among
    quantization ops (in place; types re-inferred). True when anything changed."""
    users = g.users()
    changed = False
    for node in list(g.nodes):
        if node.op not in PRODUCER_ZP or node.domain != "" or node.outputs[0].type.dtype != "int8":
            continue
        zp_index = PRODUCER_ZP[node.op]
        if len(node.inputs) <= zp_index or const(node.inputs[zp_index]) is None:
            continue
        found = _region(g, node.outputs[0], users)
        if found is None:
            continue
        values, readers = found
        ok = all(len(r.inputs) <= i or r.inputs[i] is None or (const(r.inputs[i]) is not None
                                                              and const(r.inputs[i]).dtype == np.int8)
                 for r, i in readers)
        if not ok:
            continue
        _shifted(g, node, zp_index, f"{node.name}_zero_point_u8")
        for reader, index in readers:
            _shifted(g, reader, index, f"{reader.name}_zero_point_u8")
        for v in values:
            v.type = TensorType("uint8", v.type.shape)
        changed = True
    if changed:
        infer_graph(g)
    return changed


# -- a clamp before a QuantizeLinear ------------------------------------------------------------------
def clamp_range(act: Optional[tuple[str, list]], out: QParams, lo: int = 0, hi: int = 255) -> Optional[tuple[int, int]]:
    """``[y_min, y_max]`` narrowed by a Relu or Clip that runs in float just before a quantization
    with ``out`` (per tensor, uint8, ``out.normal``): ``Q(max(v, 0)) = max(Q(v), zp)`` and
    ``Q(clip(v, a, b)) = clip(Q(v), Q(a), Q(b))``, exact because Q is non-decreasing. None for other
    activations, a NaN bound or a Clip whose lower bound exceeds the upper one."""
    if act is None:
        return lo, hi
    name, bounds = act
    zp, scale = out.zero_point[0], out.scale[0]
    if name == "Relu":
        return max(lo, int(zp)), hi
    if name == "Clip":
        a, b = (float(v) for v in bounds)
        if np.isnan(a) or np.isnan(b) or a > b:
            return None
        q = qmath.quantize(np.array([a, b], np.float32), scale, zp, np.uint8).astype(int)
        narrowed = max(lo, int(q[0])), min(hi, int(q[1]))
        return narrowed if narrowed[0] <= narrowed[1] else None
    return None


# -- pooling after an int8 conv -----------------------------------------------------------------------
def absorb_pool(g: Graph, node: Node, users: Users) -> bool:
    """MaxPool(QConv(...)) -> QConv[pool_*] when the QConv has no pool and the MaxPool alone reads it.
    Exact: max pooling commutes with the monotonic requantization and with the float epilogue."""
    if node.op != "MaxPool" or node.domain != "" or len(node.outputs) != 1:
        return False
    if node.attr("storage_order", 0) != 0 or len(node.attr("kernel_shape", [])) not in (1, 2):
        return False
    conv = node.inputs[0].producer
    if conv is None or conv.op != "QConv" or conv.attr("pool_kernel") is not None:
        return False
    if only_user(g, conv.outputs[0], users) is not node:
        return False
    attrs = pool_attrs(node)
    if attrs is None:
        return False
    return fuse(g, make_node("QConv", conv.name, list(conv.inputs), {**conv.attrs, **attrs}, DOMAIN), node, [conv])


def glue_below(g: Graph, node: Node, users: Users):
    """Walk up from ``node`` (a QuantizeLinear) over at most one single-output MaxPool and one
    Relu/Clip with known bounds, each the only reader of what it reads; returns
    ``(consumer, value, activation node or None, pool node or None)`` where ``value`` is what the
    topmost op reads and ``consumer`` that op (``node`` itself when there is no glue)."""
    consumer, value, act, pool = node, node.inputs[0], None, None
    while value.producer is not None and only_user(g, value, users) is consumer:
        p = value.producer
        if p.op == "MaxPool" and p.domain == "" and pool is None and len(p.outputs) == 1:
            pool = p
        elif p.op in ("Relu", "Clip") and p.domain == "" and act is None and known_params(p):
            act = p
        else:
            break
        consumer, value = p, p.inputs[0]
    return consumer, value, act, pool
