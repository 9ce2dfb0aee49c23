"""fuse-qdq: QDQ-format quantized layers (what ``onnxruntime.quantization.quantize_static`` writes
with ``QuantFormat.QDQ``) become lepton's int8 kernels.

    Q(act?(MaxPool?(Conv(DQ(xq), DQ(wq), DQ(bq)?))))  -> QConv[output_dtype=uint8](xq, w, b)
    Q(act?(Gemm|MatMul(+Add bias)(DQ(aq), DQ(bq), c?))) -> QGemm[output_dtype=uint8](aq, b, bias)
    Conv / Gemm / MatMul on DQ inputs, not quantized after -> QConv / QGemm[output_dtype=float32]
                                                           (+ a following activation, + Softmax)

``act`` is Relu or a Clip with constant bounds: it becomes ``y_min`` / ``y_max``, the clamp in the
quantized domain (exact: quantization is monotonic). A MaxPool before or after the QuantizeLinear
becomes the QConv's ``pool_*``. FusedConv / FusedGemm without residual (should fusion have run
first) are read as Conv / Gemm with their activation. The layers' QuantizeLinear, kept in the
model, is honoured: a quantized output stays quantized, so results match ORT's QLinearConv /
QGemm bit for bit (a DequantizeLinear after it stays too; only an unquantized output is float).

Before matching, the pass rewrites the glue between layers:

* int8 activations become uint8 with zero point + 128 (``quant_common.activations_to_uint8``);
* ``X(DQ(q)) -> DQ(X(q))`` for data movement X (MaxPool, Flatten, Reshape, ...) with per-tensor
  parameters, so the pool and flatten between layers run on uint8;
* ``Q(DQ(q)) -> q`` when both have the same parameters (exact for normal scales).

Requirements, else the layer keeps its standard form: per-tensor activation parameters; scales
positive, finite and normal, with normal fp32 products ``x_scale * w_scale`` and multipliers
``x_scale * w_scale / y_scale`` (``quant_common.fusable_scales``: a negative scale reverses the
order that Relu / Clip / MaxPool fusion relies on; a zero, NaN, infinite, underflowing or
overflowing one is not what the float layer computes); an int32 accumulator that cannot overflow
(``quant_common.accumulator_bound``: the interpreter's sum is exact, ONNX Runtime's and the
kernels' wrap around); constant
weights with per-tensor or per-output-channel scales and zero points such that ``w - zp`` fits
int8 (int8 symmetric weights always do; uint8 weights with a zero point near 128 usually do);
a constant bias; Gemm with alpha = beta = 1 and transA = 0; 2-D MatMul. A refused layer's weight
DequantizeLinear is folded to fp32 at the end of the pass, so it runs as the float Conv/Gemm of
the dequantized weights, between the model's QuantizeLinear/DequantizeLinear of activations.

Bias: an int32 DequantizeLinear at scale ``x_scale * w_scale`` (what ORT's quantizer writes) is
used as is; any other constant bias is requantized to int32 at that scale.

Runs at -O2 and above, before the algebra and fusion passes (``pipeline.QUANT``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..ir import Graph, Node, Value
from ..ops import REGISTRY, infer_graph, infer_node
from ..ops.activations import ACTIVATIONS, activation_params
from ..ops.fused import DOMAIN
from .base import Pass, PassOptions, PassResult
from .dead_code import eliminate_dead_code
from .fold_constants import _make_constant
from .fuse_activation import known_params
from .fuse_pool import pool_attrs
from .fusion import Users, apply_rule, fuse, make_node
from .quant_common import (glue_below, INT32_MAX, MOVE_OPS, QParams, absorb_pool, accumulator_bound, activations_to_uint8,
                           clamp_range, const, dequantize_of, fusable_scales, int8_weights, int32_bias, node_params)
from .rewrite import add_constant, fresh_name, only_user, replace_uses

CONV_ATTRS = ("kernel_shape", "strides", "pads", "dilations", "group", "auto_pad")


# -- the glue between layers ---------------------------------------------------------------------------
def sink_dequantize(g: Graph, node: Node, users: Users) -> bool:
    """X(DQ(q)) -> DQ(X(q)) for a data-movement op X and per-tensor parameters."""
    if node.op not in MOVE_OPS or node.domain != "" or len(node.outputs) != 1:
        return False
    dq = dequantize_of(node.inputs[0])
    if dq is None or only_user(g, dq.outputs[0], users) is not node:
        return False
    p = node_params(dq)
    if p is None or not p.per_tensor or p.dtype not in ("uint8", "int8"):
        return False
    if node.op == "MaxPool" and (node.attr("storage_order", 0) != 0 or not p.normal):
        return False  # max pooling commutes with dequantization only for a positive finite scale
    moved_out = Value(fresh_name(g, f"{node.outputs[0].name}_quantized"), dq.inputs[0].type)
    moved = Node(node.op, node.name, [dq.inputs[0], *node.inputs[1:]], [moved_out], node.attrs, node.domain)
    infer_node(moved)
    after = Node("DequantizeLinear", dq.name, [moved_out, *dq.inputs[1:]], list(node.outputs), dq.attrs)
    infer_node(after)
    at = g.nodes.index(node)
    g.nodes[at:at + 1] = [moved, after]
    g.nodes.remove(dq)
    return True


def cancel_requantize(g: Graph, node: Node, users: Users) -> bool:
    """Q(DQ(q)) -> q when both have the same parameters."""
    if node.op != "QuantizeLinear" or node.domain != "" or node.outputs[0] in g.outputs:
        return False
    dq = dequantize_of(node.inputs[0])
    if dq is None:
        return False
    p, q = node_params(dq), node_params(node)
    if p is None or q is None or not p.same(q) or not p.normal:
        return False
    replace_uses(g, node.outputs[0], dq.inputs[0])
    g.nodes.remove(node)
    return True


# -- matching a layer ---------------------------------------------------------------------------------
class Layer:
    """A Conv/Gemm/MatMul on dequantized operands, ready to become QConv/QGemm."""

    def __init__(self, op: str, nodes: list[Node], x: Value, x_params: QParams, weights: np.ndarray,
                 w_scales: np.ndarray, bias: Optional[np.ndarray], attrs: dict):
        self.op, self.nodes, self.x, self.x_params = op, nodes, x, x_params
        self.weights, self.w_scales, self.bias, self.attrs = weights, w_scales, bias, attrs

    def node(self, g: Graph, attrs: dict) -> Node:
        name = self.nodes[0].name
        w = _constant(g, f"{name}_weight_int8", self.weights)
        inputs = [self.x, w] + ([_constant(g, f"{name}_bias_int32", self.bias)] if self.bias is not None else [])
        prefix, scales = ("x", "w_scales") if self.op == "QConv" else ("a", "b_scales")
        base = {f"{prefix}_scale": float(self.x_params.scale[0]), f"{prefix}_zero_point": int(self.x_params.zero_point[0]),
                scales: [float(s) for s in self.w_scales]}
        return make_node(self.op, name, inputs, {**self.attrs, **base, **attrs}, DOMAIN)


def _constant(g: Graph, base: str, array: np.ndarray) -> Value:
    return add_constant(g, base, array)


def _activation_input(dq: Optional[Node]) -> Optional[QParams]:
    """The per-tensor uint8 parameters of a dequantized activation."""
    if dq is None or dq.inputs[0].is_const:
        return None
    p = node_params(dq)
    return p if p is not None and p.per_tensor and p.dtype == "uint8" else None


def _weights(value: Value, axis_of_channels: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(int8 weights, scales per channel or one) of a DequantizeLinear of constant weights."""
    dq = dequantize_of(value)
    if dq is None or const(dq.inputs[0]) is None:
        return None
    p = node_params(dq)
    if p is None or p.dtype not in ("int8", "uint8"):
        return None
    if not p.per_tensor and p.axis != axis_of_channels:
        return None
    w = int8_weights(const(dq.inputs[0]), p.zero_point, max(p.axis, 0))
    return None if w is None else (w, p.scale)


def match_layer(g: Graph, end: Value, users: Users) -> Optional[Layer]:
    """The layer computing ``end``: Conv, FusedConv (no residual), Gemm, FusedGemm, MatMul, or
    Add(MatMul, constant bias)."""
    node = end.producer
    if node is None:
        return None
    if node.op == "Add" and node.domain == "":
        for i in (0, 1):
            mm, other = node.inputs[i].producer, node.inputs[1 - i]
            if (mm is not None and mm.op == "MatMul" and mm.domain == "" and other.is_const
                    and only_user(g, mm.outputs[0], users) is node):
                return _gemm(g, [mm, node], mm.inputs[0], mm.inputs[1], other, trans_b=False, attrs={})
        return None
    if node.op in ("Conv", "FusedConv") and (node.domain == "") == (node.op == "Conv"):
        if len(node.inputs) > 3 and node.inputs[3] is not None:
            return None
        return _conv(g, node)
    if node.op in ("Gemm", "FusedGemm") and (node.domain == "") == (node.op == "Gemm"):
        if node.attr("alpha", 1.0) != 1.0 or node.attr("transA", 0) or (
                len(node.inputs) > 2 and node.inputs[2] is not None and node.attr("beta", 1.0) != 1.0):
            return None
        extra = {k: node.attrs[k] for k in ("activation", "activation_params", "softmax") if k in node.attrs}
        c = node.inputs[2] if len(node.inputs) > 2 else None
        return _gemm(g, [node], node.inputs[0], node.inputs[1], c, bool(node.attr("transB", 0)), extra)
    if node.op == "MatMul" and node.domain == "":
        return _gemm(g, [node], node.inputs[0], node.inputs[1], None, trans_b=False, attrs={})
    return None


def _conv(g: Graph, node: Node) -> Optional[Layer]:
    xp = _activation_input(dequantize_of(node.inputs[0]))
    w = _weights(node.inputs[1], 0)
    if xp is None or w is None:
        return None
    weights, scales = w
    if not fusable_scales(xp.scale, scales):
        return None
    bias, ok = int32_bias(node.inputs[2] if len(node.inputs) > 2 else None, float(xp.scale[0]), scales,
                          weights.shape[0])
    if not ok or accumulator_bound(weights, bias, int(xp.zero_point[0])) > INT32_MAX:
        return None
    attrs = {k: v for k, v in node.attrs.items() if k in CONV_ATTRS or k in ("activation", "activation_params")
             or k.startswith("pool_")}
    return Layer("QConv", [node], dequantize_of(node.inputs[0]).inputs[0], xp, weights, scales, bias, attrs)


def _gemm(g: Graph, nodes: list[Node], a: Value, b: Value, c: Optional[Value], trans_b: bool,
          attrs: dict) -> Optional[Layer]:
    xp = _activation_input(dequantize_of(a))
    if xp is None or a.type.rank != 2 or b.type.rank != 2:
        return None
    w = _weights(b, 0 if trans_b else 1)
    if w is None:
        return None
    weights, scales = w
    weights = weights if trans_b else np.ascontiguousarray(weights.T)
    if not fusable_scales(xp.scale, scales):
        return None
    bias, ok = int32_bias(c, float(xp.scale[0]), scales, weights.shape[0])
    if not ok or accumulator_bound(weights, bias, int(xp.zero_point[0])) > INT32_MAX:
        return None
    return Layer("QGemm", nodes, dequantize_of(a).inputs[0], xp, weights, scales, bias, attrs)


# -- the rules ----------------------------------------------------------------------------------------
def fuse_quantized_output(g: Graph, node: Node, users: Users) -> bool:
    """Q(act?(MaxPool?(layer))) -> QConv/QGemm with a uint8 output."""
    if node.op != "QuantizeLinear" or node.domain != "" or node.outputs[0].type.dtype != "uint8":
        return False
    out = node_params(node)
    if out is None or not out.per_tensor or not out.normal:
        return False
    consumer, value, act, pool = glue_below(g, node, users)
    if only_user(g, value, users) is not consumer:
        return False
    layer = match_layer(g, value, users)
    if layer is None or not fusable_scales(layer.x_params.scale, layer.w_scales, out.scale):
        return False
    fused_act = layer.attrs.pop("activation", "")
    fused_params = layer.attrs.pop("activation_params", [])
    if layer.attrs.pop("softmax", 0) or (fused_act and act is not None):
        return False
    activation = (act.op, activation_params(act)) if act is not None else (
        (fused_act, fused_params) if fused_act else None)
    clamp = clamp_range(activation, out)
    if clamp is None:
        return False
    attrs = {"y_scale": float(out.scale[0]), "y_zero_point": int(out.zero_point[0]), "y_min": clamp[0],
             "y_max": clamp[1], "output_dtype": "uint8"}
    if pool is not None:
        extra = pool_attrs(pool)
        if layer.op != "QConv" or extra is None or "pool_kernel" in layer.attrs or \
                len(pool.attr("kernel_shape", [])) not in (1, 2) or pool.attr("storage_order", 0):
            return False
        attrs.update(extra)
    removed = [n for n in (pool, act) if n is not None] + layer.nodes
    return fuse(g, layer.node(g, attrs), node, removed)


def fuse_float_output(g: Graph, node: Node, users: Users) -> bool:
    """A layer on dequantized operands whose output is not quantized -> a float-output QConv/QGemm,
    with the activation (and, for QGemm, a Softmax over the last axis) that follows it."""
    if node.op not in ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "Add"):
        return False
    layer = match_layer(g, node.outputs[0], users)
    if layer is None:
        return False
    reader = only_user(g, node.outputs[0], users)
    if node.op == "MatMul" and reader is not None and reader.op == "Add" and match_layer(g, reader.outputs[0], users):
        return False  # the Add's rule takes the bias too
    attrs = {"output_dtype": "float32"}
    chain, end = list(layer.nodes), node
    if (reader is not None and reader.domain == "" and reader.op in ACTIVATIONS and known_params(reader)
            and not layer.attrs.get("activation") and "pool_kernel" not in layer.attrs
            and not layer.attrs.get("softmax")):
        layer.attrs.update(activation=reader.op, activation_params=activation_params(reader))
        chain.append(reader)
        end, reader = reader, only_user(g, reader.outputs[0], users)
    if (layer.op == "QGemm" and reader is not None and reader.op == "Softmax" and reader.domain == ""
            and reader.attr("axis", -1) in (-1, 1) and not layer.attrs.get("softmax")):
        attrs["softmax"] = 1
        chain.append(reader)
        end = reader
    return fuse(g, layer.node(g, attrs), end, [n for n in chain if n is not end])


def fold_dequantized_constants(g: Graph) -> bool:
    """DequantizeLinear of constants that no rule used (refused layers) -> fp32 constants."""
    folded = []
    for node in g.nodes:
        if node.op == "DequantizeLinear" and all(v is None or v.is_const for v in node.inputs):
            array = REGISTRY[node.op].reference(node, [None if v is None else v.const for v in node.inputs])[0]
            _make_constant(g, node.outputs[0], np.asarray(array))
            folded.append(node)
    g.nodes = [n for n in g.nodes if n not in folded]
    return bool(folded)


def _sweep(g: Graph, *rules) -> bool:
    modified = False
    for rule in rules:
        while apply_rule(g, rule):
            modified = True
    return modified


def fuse_qdq(graph: Graph, options: PassOptions) -> PassResult:
    """Q(act?(Conv(DQ(x), DQ(w), DQ(b)))) -> QConv(x, w, b); likewise Gemm/MatMul -> QGemm; float output when not quantized."""
    g = graph.copy()
    if not any(n.op == "DequantizeLinear" for n in g.nodes):
        return PassResult(g, False)
    modified = activations_to_uint8(g)
    while _sweep(g, sink_dequantize, cancel_requantize):
        modified = True
    modified = _sweep(g, fuse_quantized_output) or modified
    modified = _sweep(g, fuse_float_output) or modified
    modified = _sweep(g, absorb_pool) or modified
    g = eliminate_dead_code(g, options).graph
    modified = fold_dequantized_constants(g) or modified
    infer_graph(g)
    return PassResult(g, modified)


FUSE_QDQ = Pass("fuse-qdq", fuse_qdq)
