"""fuse-dynamic-quant: the dynamically quantized MatMul of ``onnxruntime.quantization.quantize_dynamic``
becomes one ``DynQGemm`` (``ops/dynamic_quant.py``).

The pattern, as quantize_dynamic writes it for each MatMul (and Gemm, whose weight it transposes)::

    (q, s, z) = DynamicQuantizeLinear(a)                 # "<a>_QuantizeLinear"
    scales    = Mul(s, w_scale)                          # "<mm>_quant_scales_mul": before the MatMulInteger
    acc       = MatMulInteger(q, w, z, w_zero_point)     # "<mm>_quant"
    y         = Mul(Cast[to=float](acc), scales)         # "<mm>_quant_output_scale_mul"
    y         = Add(y, bias)?                            # the model's own bias Add, when there is one
    y         = Act(y)?                                  # Relu / LeakyRelu / Clip with constant bounds

    -> y = DynQGemm[b_scales=w_scale, activation=Act](a, (w - w_zero_point)ᵀ as int8, bias?)

Requirements, else the nodes stay as they are (the interpreter runs them; the CPU backend refuses
them with UnsupportedOpError): ``w`` a constant uint8/int8 matrix ``[K, N]`` with a per-tensor or
per-column zero point such that ``w - w_zero_point`` fits int8 (quantize_dynamic's default QInt8
weights are symmetric, zero point 0; QUInt8 weights usually do not fit); ``w_scale`` a constant
float32 of 1 or N values along the output's last axis; ``a`` float32 of rank 2 or more (a 3-D
``[B, S, K]`` activation is quantized with one scale over all of it, as the ONNX op says); each
intermediate read only by the next node of the chain; ``bias`` a constant float32 ``[N]`` (or
``[1, N]``...). The DynamicQuantizeLinear and the scale Mul may feed other layers (a transformer's
Q, K and V projections share one): each DynQGemm quantizes ``a`` itself, to the same bits, and
dead-code drops the originals once nothing reads them.

Exact: DynQGemm computes the same fp32 operations in the same order as these nodes do in ONNX
Runtime (``fp32(acc) * fp32(a_scale * w_scale)``, then ``+ bias`` rounded separately, then the
activation), fused or not (ORT fuses them into ``DynamicQuantizeMatMul``, with the same bits).

Runs first in ``pipeline.QUANT`` (at -O2 and above), before lower-qlinear, whose ConvInteger /
MatMulInteger rules need constant scales and leave this pattern alone. ConvInteger fed by
DynamicQuantizeLinear (what quantize_dynamic writes for Conv) is not fused: the CPU backend refuses it.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..ir import Graph, Node, Value
from ..ops.activations import activation_params
from .base import Pass, PassOptions, PassResult
from .fuse_activation import known_params
from .fusion import Users, fuse, make_node, run_rules
from .quant_common import const, int8_weights
from .rewrite import add_constant, only_user

ACTIVATIONS = ("Relu", "LeakyRelu", "Clip")
"""Activations absorbed: elementwise comparisons (and LeakyRelu's one multiply), the same bits fused or not."""


def _input(node: Node, index: int) -> Optional[Value]:
    return node.inputs[index] if len(node.inputs) > index else None


def _plain(node: Optional[Node], op: str) -> bool:
    return node is not None and node.op == op and node.domain == ""


def _dynamic_quantize(mm: Node) -> Optional[Node]:
    """The DynamicQuantizeLinear whose y and zero point the MatMulInteger reads (a_zp is input 2)."""
    dq = mm.inputs[0].producer
    if not _plain(dq, "DynamicQuantizeLinear") or mm.inputs[0] is not dq.outputs[0]:
        return None
    zp = _input(mm, 2)
    return dq if zp is not None and zp is dq.outputs[2] else None


def _weight_scales(scales: Value, dq: Node, channels: int, rank: int) -> Optional[np.ndarray]:
    """``w_scale`` of ``scales = Mul(s, w_scale)`` (either order) when it is constant float32 with 1 or
    ``channels`` values, laid along the last axis of a rank-``rank`` result."""
    mul = scales.producer
    if not _plain(mul, "Mul") or len(mul.inputs) != 2:
        return None
    a, b = mul.inputs
    other = b if a is dq.outputs[1] else a if b is dq.outputs[1] else None
    w_scale = const(other)
    if w_scale is None or w_scale.dtype != np.float32 or w_scale.size not in (1, channels):
        return None
    if w_scale.size > 1 and (w_scale.ndim > rank or w_scale.shape[-1] != channels):
        return None
    return w_scale.astype(np.float32).ravel()


def _bias(add: Node, y: Value, channels: int) -> Optional[np.ndarray]:
    """The constant float32 bias of ``Add(y, bias)`` (either order) as ``[channels]``, when it adds one
    value per output column and leaves the type as it is."""
    if len(add.inputs) != 2 or add.outputs[0].type != y.type:
        return None
    other = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
    if other is y:
        return None
    bias = const(other)
    if bias is None or bias.dtype != np.float32 or bias.ndim > y.type.rank:
        return None
    if bias.size == channels and bias.shape[-1] == channels:
        return bias.ravel()
    if bias.size == 1:
        return np.full(channels, bias.reshape(()), np.float32)
    return None


def fuse_dynamic_matmul(g: Graph, node: Node, users: Users) -> bool:
    if not _plain(node, "MatMulInteger") or len(node.inputs) < 3:
        return False
    dq = _dynamic_quantize(node)
    w = const(node.inputs[1])
    a = dq.inputs[0] if dq is not None else None
    if a is None or w is None or w.ndim != 2 or a.type.dtype != "float32" or a.type.rank < 2:
        return False
    channels = w.shape[1]
    wz_value = _input(node, 3)
    wz = np.zeros(1, np.int64) if wz_value is None else const(wz_value)
    if wz is None or wz.size not in (1, channels):
        return False
    centered = int8_weights(w, wz.astype(np.int64).ravel(), 1)
    if centered is None:
        return False
    cast = only_user(g, node.outputs[0], users)
    if not _plain(cast, "Cast") or cast.attr("to") != 1:
        return False
    mul = only_user(g, cast.outputs[0], users)
    if not _plain(mul, "Mul") or len(mul.inputs) != 2 or mul.outputs[0].type != cast.outputs[0].type:
        return False
    scales = mul.inputs[1] if mul.inputs[0] is cast.outputs[0] else mul.inputs[0]
    b_scales = _weight_scales(scales, dq, channels, node.outputs[0].type.rank)
    if b_scales is None:
        return False
    chain, last, bias = [node, cast], mul, None
    follower = only_user(g, mul.outputs[0], users)
    if _plain(follower, "Add"):
        bias = _bias(follower, mul.outputs[0], channels)
        if bias is not None:
            chain, last = chain + [last], follower
            follower = only_user(g, last.outputs[0], users)
    activation, params = "", []
    if follower is not None and follower.op in ACTIVATIONS and follower.domain == "" and known_params(follower):
        activation, params = follower.op, activation_params(follower)
        chain, last = chain + [last], follower
    b = add_constant(g, f"{node.name}_weight_int8", np.ascontiguousarray(centered.T))
    inputs = [a, b] + ([add_constant(g, f"{node.name}_bias", bias.astype(np.float32))] if bias is not None else [])
    attrs = {"b_scales": [float(s) for s in b_scales], "activation": activation, "activation_params": params}
    new = make_node("DynQGemm", node.name, inputs, attrs, "lepton")
    if fuse(g, new, last, chain):
        return True
    g.constants = [c for c in g.constants if c not in inputs[1:]]
    return False


def fuse_dynamic_quant(graph: Graph, options: PassOptions) -> PassResult:
    """DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(scale) (-> Add bias) (-> Relu) => DynQGemm."""
    return run_rules(graph, fuse_dynamic_matmul, explain=options.explain, pattern="fuse-dynamic-quant")


FUSE_DYNAMIC_QUANT = Pass("fuse-dynamic-quant", fuse_dynamic_quant)
