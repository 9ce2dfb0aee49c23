"""lower-qlinear: QOperator-format layers (ONNX's QLinearConv, QLinearMatMul, ConvInteger,
MatMulInteger with constant weights) become lepton's int8 kernels.

    QLinearConv(x, xs, xz, w, ws, wz, ys, yz, B?)       -> QConv[output_dtype=uint8](x, w', B)
    QLinearMatMul(a, as, az, b, bs, bz, ys, yz)         -> QGemm[output_dtype=uint8](a, b'ᵀ)
    Mul(Cast[to=float](ConvInteger(x, w, xz?, wz?)), s)  -> QConv[output_dtype=float32, x_scale=1, w_scales=s]
    Mul(Cast[to=float](MatMulInteger(a, b, az?, bz?)), s) -> QGemm[output_dtype=float32, a_scale=1, b_scales=s]

followed by ``MaxPool(QConv) -> QConv[pool_*]`` and the float glue that ONNX Runtime's QOperator
format leaves between layers whose Relu / MaxPool it did not quantize:

    Q(act?(MaxPool?(DQ(QConv(...)))))  -> QConv[y_min/y_max, pool_*](...)  (Q and DQ: same parameters)
    Relu(DQ(QConv(...)))                -> DQ(QConv[y_min = max(y_min, zp)](...))
    MaxPool(DQ(QConv(...)))             -> DQ(QConv[pool_*](...))

``act`` is Relu or a Clip with constant bounds, in either order with the MaxPool. All three are
exact when the DequantizeLinear's scale is positive, finite and normal (``QParams.normal``):
dequantization is then increasing, so ``Relu(DQ(q)) = DQ(max(q, zp))``, max pooling commutes
with it, and ``Q(DQ(q)) = q`` when the QuantizeLinear has the same scale and zero point (ORT
writes the QLinearConv's output parameters on both). A Clip needs that QuantizeLinear (its bounds
are not on the integer grid otherwise); a QuantizeLinear with other parameters is left in place
(a requantization, computed as the model says) and only what is exact is folded. The same arithmetic as the ONNX ops (see
``ops/qlinear.py``), so results are equal bit for bit: QConv's requantization multiplier is
``fp32(fp32(x_scale * w_scale) / y_scale)`` like QLinearConv's; ``Cast`` then ``Mul`` by ``s`` is
QConv's float output with ``fp32(1 * s) = s``. int8 activations become uint8 first
(``quant_common.activations_to_uint8``).

Requirements, else the op stays as it is (the interpreter runs it; the CPU backend refuses it with
UnsupportedOpError): scales and zero points constant and per tensor for the activations; weights
constant with per-tensor or per-output-channel parameters such that ``w - zp`` fits int8; a uint8
output (after the int8 -> uint8 rewrite); 2-D MatMul inputs. A Cast/Mul pattern whose scale is
not constant (dynamic quantization's DynamicQuantizeLinear computes it at run time) keeps the
ConvInteger / MatMulInteger.

Runs at -O2 and above with fuse-qdq (``pipeline.QUANT``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import LeptonError
from ..ir import Graph, Node, Value
from ..ops import REGISTRY, infer_graph
from ..ops.fused import DOMAIN
from .base import Pass, PassOptions, PassResult
from .fusion import Users, apply_rule, fuse, make_node
from ..ops.activations import activation_params
from .fuse_pool import pool_attrs
from .quant_common import (glue_below, QParams, absorb_pool, activations_to_uint8, clamp_range, const, dequantize_of, int8_weights,
                           node_params, params)
from .rewrite import add_constant, fresh_name, only_user

CONV_ATTRS = ("kernel_shape", "strides", "pads", "dilations", "group", "auto_pad")


def _input(node: Node, index: int) -> Optional[Value]:
    return node.inputs[index] if len(node.inputs) > index else None


def _activation(node: Node, x: int, scale: Optional[int], zp: int) -> Optional[QParams]:
    """Per-tensor uint8 parameters of the activation input ``x`` (scale 1 when ``scale`` is None)."""
    if node.inputs[x].type.dtype != "uint8":
        return None
    if scale is None:
        z = _input(node, zp)
        zero = np.zeros((), np.uint8) if z is None else const(z)
        if zero is None or zero.size != 1:
            return None
        return QParams(np.ones(1, np.float32), zero.astype(np.int64).ravel(), "uint8", -1)
    p = params(node.inputs[scale], _input(node, zp), "uint8")
    return p if p is not None and p.per_tensor else None


def _weights(node: Node, w: int, zp: int, channels_axis: int) -> Optional[np.ndarray]:
    array = const(node.inputs[w])
    if array is None:
        return None
    z = _input(node, zp)
    zero = np.zeros(1, np.int64) if z is None else const(z)
    if zero is None or zero.size not in (1, array.shape[channels_axis]):
        return None
    return int8_weights(array, zero.astype(np.int64).ravel(), channels_axis)


def _scales(value: Value, channels: int) -> Optional[np.ndarray]:
    s = const(value)
    if s is None or s.dtype != np.float32 or s.size not in (1, channels):
        return None
    return s.ravel()


def _int8_node(g: Graph, op: str, name: str, x: Value, w: np.ndarray, bias: Optional[np.ndarray], attrs: dict):
    inputs = [x, add_constant(g, f"{name}_weight_int8", w)]
    if bias is not None:
        inputs.append(add_constant(g, f"{name}_bias_int32", bias))
    return make_node(op, name, inputs, attrs, DOMAIN)


def _x_attrs(prefix: str, p: QParams, scales_key: str, scales: np.ndarray) -> dict:
    return {f"{prefix}_scale": float(p.scale[0]), f"{prefix}_zero_point": int(p.zero_point[0]),
            scales_key: [float(s) for s in scales]}


def lower_qlinear_conv(g: Graph, node: Node, users: Users) -> bool:
    if node.op != "QLinearConv" or node.domain != "" or node.outputs[0].type.dtype != "uint8":
        return False
    x = _activation(node, 0, 1, 2)
    out = params(node.inputs[6], node.inputs[7], "uint8")
    w = _weights(node, 3, 5, 0)
    if x is None or out is None or not out.per_tensor or w is None:
        return False
    scales = _scales(node.inputs[4], w.shape[0])
    bias = _input(node, 8)
    if scales is None or (bias is not None and const(bias) is None):
        return False
    attrs = {k: v for k, v in node.attrs.items() if k in CONV_ATTRS}
    attrs.update(_x_attrs("x", x, "w_scales", scales), y_scale=float(out.scale[0]),
                 y_zero_point=int(out.zero_point[0]), y_min=0, y_max=255, output_dtype="uint8")
    new = _int8_node(g, "QConv", node.name, node.inputs[0], w, None if bias is None else const(bias).ravel(), attrs)
    return fuse(g, new, node)


def lower_qlinear_matmul(g: Graph, node: Node, users: Users) -> bool:
    if node.op != "QLinearMatMul" or node.domain != "" or node.outputs[0].type.dtype != "uint8":
        return False
    if node.inputs[0].type.rank != 2 or node.inputs[3].type.rank != 2:
        return False
    a = _activation(node, 0, 1, 2)
    out = params(node.inputs[6], node.inputs[7], "uint8")
    b = _weights(node, 3, 5, 1)
    if a is None or out is None or not out.per_tensor or b is None:
        return False
    scales = _scales(node.inputs[4], b.shape[1])
    if scales is None:
        return False
    attrs = _x_attrs("a", a, "b_scales", scales)
    attrs.update(y_scale=float(out.scale[0]), y_zero_point=int(out.zero_point[0]), y_min=0, y_max=255,
                 output_dtype="uint8")
    return fuse(g, _int8_node(g, "QGemm", node.name, node.inputs[0], np.ascontiguousarray(b.T), None, attrs), node)


def _rescaled(g: Graph, node: Node, users: Users, channels: int, axis: int) -> Optional[tuple[Node, Node, np.ndarray]]:
    """The Cast (to float) and Mul by a constant that follow an integer op: (cast, mul, scales)."""
    cast = only_user(g, node.outputs[0], users)
    if cast is None or cast.op != "Cast" or cast.attr("to") != 1:
        return None
    mul = only_user(g, cast.outputs[0], users)
    if mul is None or mul.op != "Mul" or mul.domain != "":
        return None
    other = mul.inputs[1] if mul.inputs[0] is cast.outputs[0] else mul.inputs[0]
    s = const(other)
    if s is None or s.dtype != np.float32 or mul.outputs[0].type != cast.outputs[0].type:
        return None
    if s.size == 1:
        return cast, mul, s.ravel()
    rank = node.outputs[0].type.rank
    shape = [1] * rank
    shape[axis] = channels
    padded = (1,) * (rank - s.ndim) + s.shape
    if s.size != channels or list(padded) != shape:
        return None
    return cast, mul, s.ravel()


def lower_conv_integer(g: Graph, node: Node, users: Users) -> bool:
    if node.op != "ConvInteger" or node.domain != "":
        return False
    x = _activation(node, 0, None, 2)
    w = _weights(node, 1, 3, 0)
    if x is None or w is None:
        return False
    found = _rescaled(g, node, users, w.shape[0], 1)
    if found is None:
        return False
    cast, mul, scales = found
    attrs = {k: v for k, v in node.attrs.items() if k in CONV_ATTRS}
    attrs.update(_x_attrs("x", x, "w_scales", scales), output_dtype="float32")
    return fuse(g, _int8_node(g, "QConv", node.name, node.inputs[0], w, None, attrs), mul, [node, cast])


def lower_matmul_integer(g: Graph, node: Node, users: Users) -> bool:
    if node.op != "MatMulInteger" or node.domain != "":
        return False
    if node.inputs[0].type.rank != 2 or node.inputs[1].type.rank != 2:
        return False
    a = _activation(node, 0, None, 2)
    b = _weights(node, 1, 3, 1)
    if a is None or b is None:
        return False
    found = _rescaled(g, node, users, b.shape[1], 1)
    if found is None:
        return False
    cast, mul, scales = found
    attrs = {**_x_attrs("a", a, "b_scales", scales), "output_dtype": "float32"}
    new = _int8_node(g, "QGemm", node.name, node.inputs[0], np.ascontiguousarray(b.T), None, attrs)
    return fuse(g, new, mul, [node, cast])


# -- float glue between QOperator layers ------------------------------------------------------------
def _qconv_behind(g: Graph, dq: Optional[Node], users: Users) -> Optional[tuple[Node, QParams]]:
    """(QConv, the DequantizeLinear's parameters) when ``dq`` dequantizes, with per-tensor uint8
    parameters of a normal scale, the uint8 output of a QConv that nothing else reads."""
    if dq is None:
        return None
    conv = dq.inputs[0].producer
    if conv is None or conv.op != "QConv" or conv.domain != DOMAIN or conv.attr("output_dtype", "uint8") != "uint8":
        return None
    if only_user(g, conv.outputs[0], users) is not dq:
        return None
    p = node_params(dq)
    if p is None or not p.per_tensor or p.dtype != "uint8" or not p.normal:
        return None
    return conv, p


def _pool_attrs(pool: Node, conv: Node) -> Optional[dict]:
    if conv.attr("pool_kernel") is not None or pool.attr("storage_order", 0) != 0:
        return None
    if len(pool.outputs) != 1 or len(pool.attr("kernel_shape", [])) not in (1, 2):
        return None
    return pool_attrs(pool)


def fold_quantized_glue(g: Graph, node: Node, users: Users) -> bool:
    """Q(act?(MaxPool?(DQ(QConv)))) -> QConv[y_min/y_max, pool_*] when Q and DQ have the same parameters."""
    if node.op != "QuantizeLinear" or node.domain != "" or node.outputs[0].type.dtype != "uint8":
        return False
    consumer, value, act, pool = glue_below(g, node, users)
    dq = dequantize_of(value)
    if dq is None or only_user(g, value, users) is not consumer or value in g.outputs:
        return False
    found = _qconv_behind(g, dq, users)
    out = node_params(node)
    if found is None or out is None or not found[1].same(out):
        return False
    conv, _ = found
    clamp = clamp_range((act.op, activation_params(act)) if act is not None else None, out,
                        conv.attr("y_min", 0), conv.attr("y_max", 255))
    if clamp is None:
        return False
    attrs = {**conv.attrs, "y_min": clamp[0], "y_max": clamp[1]}
    if pool is not None:
        extra = _pool_attrs(pool, conv)
        if extra is None:
            return False
        attrs.update(extra)
    removed = [n for n in (pool, act) if n is not None] + [dq, conv]
    return fuse(g, make_node("QConv", conv.name, list(conv.inputs), attrs, DOMAIN), node, removed)


def _fold_before_dequantize(g: Graph, node: Node, users: Users, attrs_of) -> bool:
    """X(DQ(QConv)) -> DQ(QConv') where ``attrs_of(conv, dq params)`` gives QConv' attributes (None: no)."""
    dq = dequantize_of(node.inputs[0])
    if dq is None or only_user(g, dq.outputs[0], users) is not node or dq.outputs[0] in g.outputs:
        return False
    found = _qconv_behind(g, dq, users)
    if found is None:
        return False
    conv, p = found
    attrs = attrs_of(conv, p)
    if attrs is None:
        return False
    out = Value(fresh_name(g, f"{node.outputs[0].name}_quantized"), conv.outputs[0].type)
    new = Node("QConv", conv.name, list(conv.inputs), [out], {**conv.attrs, **attrs}, DOMAIN)
    after = Node("DequantizeLinear", dq.name, [out, *dq.inputs[1:]], list(node.outputs), dq.attrs)
    try:
        out.type = REGISTRY["QConv"].infer(new)[0]
        if REGISTRY["DequantizeLinear"].infer(after) != [v.type for v in node.outputs]:
            return False
    except LeptonError:
        return False
    for v in after.outputs:
        v.producer = after
    at = g.nodes.index(node)
    g.nodes[at:at + 1] = [new, after]
    g.nodes.remove(dq)
    g.nodes.remove(conv)
    return True


def fold_relu_before_dequantize(g: Graph, node: Node, users: Users) -> bool:
    """Relu(DQ(QConv)) -> DQ(QConv[y_min = max(y_min, zp)]): ``max((q - zp) * s, 0) = (max(q, zp) - zp) * s``."""
    if node.op != "Relu" or node.domain != "" or node.outputs[0] in g.outputs:
        return False
    return _fold_before_dequantize(g, node, users, lambda conv, p: {
        "y_min": max(conv.attr("y_min", 0), int(p.zero_point[0]))}
        if max(conv.attr("y_min", 0), int(p.zero_point[0])) <= conv.attr("y_max", 255) else None)


def fold_pool_before_dequantize(g: Graph, node: Node, users: Users) -> bool:
    """MaxPool(DQ(QConv)) -> DQ(QConv[pool_*]): max pooling commutes with increasing dequantization."""
    if node.op != "MaxPool" or node.domain != "" or node.outputs[0] in g.outputs:
        return False
    return _fold_before_dequantize(g, node, users, lambda conv, p: _pool_attrs(node, conv))


RULES = (lower_qlinear_conv, lower_qlinear_matmul, lower_conv_integer, lower_matmul_integer, absorb_pool)
GLUE = (fold_quantized_glue, fold_relu_before_dequantize, fold_pool_before_dequantize)


def lower_qlinear(graph: Graph, options: PassOptions) -> PassResult:
    """QLinearConv/QLinearMatMul -> QConv/QGemm (uint8 out); ConvInteger/MatMulInteger + Cast + Mul -> float out."""
    g = graph.copy()
    if not any(n.op in ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger") for n in g.nodes):
        return PassResult(g, False)
    modified = activations_to_uint8(g)
    for rule in RULES:
        while apply_rule(g, rule):
            modified = True
    again = True
    while again:
        again = False
        for rule in GLUE:
            while apply_rule(g, rule):
                modified = again = True
    infer_graph(g)
    return PassResult(g, modified)


LOWER_QLINEAR = Pass("lower-qlinear", lower_qlinear)
