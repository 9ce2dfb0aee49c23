"""Fused lepton ops written back as standard ONNX ops (for ``graph.to_onnx()``).

Each expansion returns ONNX nodes and any new initializers; the result computes
what the fused op computes, so ONNX Runtime can run an optimized graph.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

from ..ir import Node
from ..ops import qmath
from ..ops.activations import ACTIVATIONS
from ..ops.fused import BINARY, POOL_ATTRS, parse_step

Expansion = Callable[[Node, Callable[[str], str]], tuple[list[NodeProto], list[TensorProto]]]
BINARY_OPS = tuple(BINARY)


def _names(v) -> str:
    return "" if v is None else v.name


def pool_proto(node: Node, x: str, y: str, fresh) -> NodeProto:
    """The MaxPool that a fused conv's ``pool_*`` attributes describe, as ONNX."""
    nd = len(node.attr("pool_kernel"))   # absent attributes take pool_node's defaults
    return helper.make_node(
        "MaxPool", [x], [y], name=fresh(f"{node.name}_pool"),
        kernel_shape=list(node.attr("pool_kernel")), strides=list(node.attr("pool_strides", [1] * nd)),
        pads=list(node.attr("pool_pads", [0] * 2 * nd)), dilations=list(node.attr("pool_dilations", [1] * nd)),
        ceil_mode=int(node.attr("pool_ceil_mode", 0)))


def activation_nodes(name: str, params, x: str, y: str, fresh) -> tuple[list[NodeProto], list[TensorProto]]:
    """``y = name(x)`` as ONNX (Clip's bounds become initializers)."""
    if name == "Clip":
        lo, hi = fresh(f"{y}_min"), fresh(f"{y}_max")
        inits = [numpy_helper.from_array(np.array(params[0], np.float32), lo),
                 numpy_helper.from_array(np.array(params[1], np.float32), hi)]
        return [helper.make_node("Clip", [x, lo, hi], [y], name=fresh(f"{y}_clip"))], inits
    attrs = {key: float(p) for key, p in zip(ACTIVATIONS[name].params, params)}
    return [helper.make_node(name, [x], [y], name=fresh(f"{y}_{name.lower()}"), **attrs)], []


def expand_fused_conv(node: Node, fresh):
    conv_attrs = {k: v for k, v in node.attrs.items()
                  if k not in POOL_ATTRS and k not in ("activation", "activation_params")}
    out = node.outputs[0].name
    current = fresh(f"{node.name}_conv")
    nodes = [helper.make_node("Conv", [_names(v) for v in node.inputs[:3]], [current], name=node.name, **conv_attrs)]
    inits: list[TensorProto] = []
    stages = []
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        stages.append("residual")
    if node.attr("activation", ""):
        stages.append("activation")
    if node.attr("pool_kernel") is not None:
        stages.append("pool")
    for i, stage in enumerate(stages):
        target = out if i == len(stages) - 1 else fresh(f"{node.name}_{stage}")
        if stage == "residual":
            nodes.append(helper.make_node("Add", [current, node.inputs[3].name], [target], name=fresh(f"{node.name}_add")))
        elif stage == "activation":
            more, extra = activation_nodes(node.attr("activation"), node.attr("activation_params", []), current, target,
                                           fresh)
            nodes += more
            inits += extra
        else:
            nodes.append(pool_proto(node, current, target, fresh))
        current = target
    if not stages:
        nodes[0].output[0] = out
    return nodes, inits


def expand_fused_gemm(node: Node, fresh):
    gemm_attrs = {k: v for k, v in node.attrs.items() if k in ("alpha", "beta", "transA", "transB")}
    out = node.outputs[0].name
    stages = (["activation"] if node.attr("activation", "") else []) + (["softmax"] if node.attr("softmax", 0) else [])
    current = out if not stages else fresh(f"{node.name}_gemm")
    nodes = [helper.make_node("Gemm", [_names(v) for v in node.inputs], [current], name=node.name, **gemm_attrs)]
    inits: list[TensorProto] = []
    for i, stage in enumerate(stages):
        target = out if i == len(stages) - 1 else fresh(f"{node.name}_{stage}")
        if stage == "activation":
            more, extra = activation_nodes(node.attr("activation"), node.attr("activation_params", []), current, target,
                                           fresh)
            nodes += more
            inits += extra
        else:
            nodes.append(helper.make_node("Softmax", [current], [target], name=fresh(f"{node.name}_softmax"), axis=-1))
        current = target
    return nodes, inits


def expand_fused_elementwise(node: Node, fresh):
    values = [v.name for v in node.inputs]
    steps = node.attr("program")
    nodes: list[NodeProto] = []
    inits: list[TensorProto] = []
    for i, step in enumerate(steps):
        op, params, operands = parse_step(step)
        target = node.outputs[0].name if i == len(steps) - 1 else fresh(f"{node.name}_s{i}")
        args = [values[o] for o in operands]
        if op in BINARY_OPS:
            nodes.append(helper.make_node(op, args, [target], name=fresh(f"{node.name}_{op.lower()}")))
        else:
            more, extra = activation_nodes(op, params, args[0], target, fresh)
            nodes += more
            inits += extra
        values.append(target)
    return nodes, inits


EXPANSIONS: dict[str, Expansion] = {
    "FusedConv": expand_fused_conv,
    "FusedGemm": expand_fused_gemm,
    "FusedElementwise": expand_fused_elementwise,
}


# -- int8 kernels ---------------------------------------------------------------------------------------
def _const(fresh, base: str, array) -> tuple[str, TensorProto]:
    name = fresh(base)
    return name, numpy_helper.from_array(np.asarray(array), name)


def _int8_tail(node: Node, current: str, fresh, nodes: list, inits: list, pool: bool) -> None:
    """The epilogue after the integer op: clamp (uint8), activation and softmax (float), pool."""
    out = node.outputs[0].name
    stages = []
    if node.attr("output_dtype", "uint8") == "uint8":
        if node.attr("y_min", 0) > 0 or node.attr("y_max", 255) < 255:
            stages.append("clamp")
    elif node.attr("activation", ""):
        stages.append("activation")
    if node.attr("softmax", 0):
        stages.append("softmax")
    if pool and node.attr("pool_kernel") is not None:
        stages.append("pool")
    for i, stage in enumerate(stages):
        target = out if i == len(stages) - 1 else fresh(f"{node.name}_{stage}")
        if stage == "clamp":
            lo, lo_init = _const(fresh, f"{node.name}_y_min", np.array(node.attr("y_min", 0), np.uint8))
            hi, hi_init = _const(fresh, f"{node.name}_y_max", np.array(node.attr("y_max", 255), np.uint8))
            inits += [lo_init, hi_init]
            nodes.append(helper.make_node("Clip", [current, lo, hi], [target], name=fresh(f"{node.name}_clamp")))
        elif stage == "activation":
            more, extra = activation_nodes(node.attr("activation"), node.attr("activation_params", []), current,
                                           target, fresh)
            nodes += more
            inits += extra
        elif stage == "softmax":
            nodes.append(helper.make_node("Softmax", [current], [target], name=fresh(f"{node.name}_softmax"), axis=-1))
        else:
            nodes.append(pool_proto(node, current, target, fresh))
        current = target
    if not stages:
        nodes[-1].output[0] = out


def _rescale(node: Node, acc: str, scales, channel_shape, fresh, nodes, inits) -> str:
    """``fp32(acc) * scales``: Cast, then Mul by the per-channel scales shaped to broadcast."""
    as_float = fresh(f"{node.name}_acc_float")
    nodes.append(helper.make_node("Cast", [acc], [as_float], name=fresh(f"{node.name}_cast"), to=TensorProto.FLOAT))
    s, init = _const(fresh, f"{node.name}_scale", np.asarray(scales, np.float32).reshape(channel_shape))
    inits.append(init)
    scaled = fresh(f"{node.name}_scaled")
    nodes.append(helper.make_node("Mul", [as_float, s], [scaled], name=fresh(f"{node.name}_rescale")))
    return scaled


def _channels(values, count: int, rank: int, axis: int):
    shape = [1] * rank
    shape[axis] = count if len(values) > 1 else 1
    return shape


def expand_qconv(node: Node, fresh):
    """uint8 output: QLinearConv (+ Clip on uint8, + MaxPool on uint8); float output: ConvInteger
    (+ Add of the int32 bias), Cast, Mul by x_scale * w_scale, activation, MaxPool.

    With a residual ``r``: ConvInteger (+ bias), Cast, Mul by the factor (``M`` for a uint8 output,
    ``x_scale * w_scale`` for a float one), Add of ``DequantizeLinear(r, R, r_zp)`` (which is
    ``fp32(r - r_zp) * R`` exactly), then a uint8 output is ``QuantizeLinear`` with scale 1 and
    zero point ``y_zp`` (``rint(v) + y_zp``, saturated) and the Clip; a float output the
    activation; then MaxPool. Each op rounds once, as QConv's definition does."""
    conv_attrs = {k: v for k, v in node.attrs.items()
                  if k in ("kernel_shape", "strides", "pads", "dilations", "group", "auto_pad")}
    x, w = node.inputs[0].name, node.inputs[1].name
    bias = node.inputs[2].name if len(node.inputs) > 2 and node.inputs[2] is not None else None
    residual = node.inputs[3] if len(node.inputs) > 3 else None
    out_ch = node.inputs[1].type.shape[0]
    rank = node.inputs[0].type.rank
    scales = [float(s) for s in node.attr("w_scales")]
    uint8 = node.attr("output_dtype", "uint8") == "uint8"
    nodes: list[NodeProto] = []
    inits: list[TensorProto] = []
    xz, i2 = _const(fresh, f"{node.name}_x_zero_point", np.array(node.attr("x_zero_point"), np.uint8))
    inits.append(i2)
    current = fresh(f"{node.name}_conv")
    if uint8 and residual is None:
        xs, i1 = _const(fresh, f"{node.name}_x_scale", np.array(node.attr("x_scale"), np.float32))
        inits.append(i1)
        ws, i3 = _const(fresh, f"{node.name}_w_scale", np.array(scales, np.float32) if len(scales) > 1
                        else np.array(scales[0], np.float32))
        wz, i4 = _const(fresh, f"{node.name}_w_zero_point", np.zeros(len(scales), np.int8) if len(scales) > 1
                        else np.array(0, np.int8))
        ys, i5 = _const(fresh, f"{node.name}_y_scale", np.array(node.attr("y_scale"), np.float32))
        yz, i6 = _const(fresh, f"{node.name}_y_zero_point", np.array(node.attr("y_zero_point"), np.uint8))
        inits += [i3, i4, i5, i6]
        inputs = [x, xs, xz, w, ws, wz, ys, yz] + ([bias] if bias else [])
        nodes.append(helper.make_node("QLinearConv", inputs, [current], name=node.name, **conv_attrs))
    else:
        nodes.append(helper.make_node("ConvInteger", [x, w, xz], [current], name=node.name, **conv_attrs))
        if bias:
            shape, init = _const(fresh, f"{node.name}_bias_shape", np.array([out_ch] + [1] * (rank - 2), np.int64))
            inits.append(init)
            b = fresh(f"{node.name}_bias_column")
            nodes.append(helper.make_node("Reshape", [bias, shape], [b], name=fresh(f"{node.name}_bias_reshape")))
            biased = fresh(f"{node.name}_biased")
            nodes.append(helper.make_node("Add", [current, b], [biased], name=fresh(f"{node.name}_bias_add")))
            current = biased
        if uint8:
            units = qmath.multipliers(node.attr("x_scale"), scales, node.attr("y_scale")).tolist()
        else:
            units = (np.float32(node.attr("x_scale")) * np.asarray(scales, np.float32)).tolist()
        current = _rescale(node, current, units, _channels(units, out_ch, rank, 1), fresh, nodes, inits)
        if residual is not None:
            factor = qmath.residual_factor(node.attr("r_scale"), node.attr("y_scale") if uint8 else None)
            rs, i3 = _const(fresh, f"{node.name}_r_factor", np.array(factor, np.float32))
            rz, i4 = _const(fresh, f"{node.name}_r_zero_point", np.array(node.attr("r_zero_point"), np.uint8))
            inits += [i3, i4]
            term = fresh(f"{node.name}_residual_term")
            nodes.append(helper.make_node("DequantizeLinear", [residual.name, rs, rz], [term],
                                          name=fresh(f"{node.name}_residual_dequantize")))
            added = fresh(f"{node.name}_residual_added")
            nodes.append(helper.make_node("Add", [current, term], [added], name=fresh(f"{node.name}_residual_add")))
            current = added
            if uint8:
                one, i5 = _const(fresh, f"{node.name}_unit_scale", np.array(1.0, np.float32))
                yz, i6 = _const(fresh, f"{node.name}_y_zero_point", np.array(node.attr("y_zero_point"), np.uint8))
                inits += [i5, i6]
                quantized = fresh(f"{node.name}_requantized")
                nodes.append(helper.make_node("QuantizeLinear", [current, one, yz], [quantized],
                                              name=fresh(f"{node.name}_q")))
                current = quantized
    _int8_tail(node, current, fresh, nodes, inits, pool=True)
    return nodes, inits


def expand_qgemm(node: Node, fresh):
    """MatMulInteger (+ Add of the int32 bias), Cast, Mul: float output = that times a_scale * b_scale
    (+ activation, softmax); uint8 output = QuantizeLinear with scale 1 of that times the requantization
    multiplier, which is QGemm's ``rint(fp32(acc) * M) + y_zp`` exactly (+ Clip)."""
    a, b = node.inputs[0].name, node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] is not None else None
    nodes: list[NodeProto] = []
    inits: list[TensorProto] = []
    az, i2 = _const(fresh, f"{node.name}_a_zero_point", np.array(node.attr("a_zero_point"), np.uint8))
    inits.append(i2)
    bt = fresh(f"{node.name}_b_kn")
    nodes.append(helper.make_node("Transpose", [b.name], [bt], name=fresh(f"{node.name}_b_transpose"), perm=[1, 0]))
    acc = fresh(f"{node.name}_acc")
    nodes.append(helper.make_node("MatMulInteger", [a, bt, az], [acc], name=node.name))
    if bias is not None:
        biased = fresh(f"{node.name}_biased")
        nodes.append(helper.make_node("Add", [acc, bias.name], [biased], name=fresh(f"{node.name}_bias_add")))
        acc = biased
    scales = [float(s) for s in node.attr("b_scales")]
    if node.attr("output_dtype", "uint8") == "uint8":
        factors = qmath.multipliers(node.attr("a_scale"), scales, node.attr("y_scale")).tolist()
    else:
        factors = (np.float32(node.attr("a_scale")) * np.asarray(scales, np.float32)).tolist()
    current = _rescale(node, acc, factors, [len(factors)], fresh, nodes, inits)
    if node.attr("output_dtype", "uint8") == "uint8":
        one, i3 = _const(fresh, f"{node.name}_unit_scale", np.array(1.0, np.float32))
        yz, i4 = _const(fresh, f"{node.name}_y_zero_point", np.array(node.attr("y_zero_point"), np.uint8))
        inits += [i3, i4]
        quantized = fresh(f"{node.name}_requantized")
        nodes.append(helper.make_node("QuantizeLinear", [current, one, yz], [quantized], name=fresh(f"{node.name}_q")))
        current = quantized
    _int8_tail(node, current, fresh, nodes, inits, pool=False)
    return nodes, inits


def expand_qavgpool(node: Node, fresh):
    """``DequantizeLinear(x, 1, x_zp)`` (``fp32(x - x_zp)``, exact), a depthwise Conv with all-ones
    weights (the window sums, exact in fp32 since ``|S| <= 2**24``; ceil_mode's room as extra end
    padding, which adds 0), ``Mul`` by the table ``M`` and ``QuantizeLinear(v, 1, y_zp)``
    (``saturate(rint(v) + y_zp)``): ``ops/qpool.py``'s definition, one rounding per op."""
    from ..ops import qpool
    from ..ops.nn import pool_window

    x = node.inputs[0]
    spatial = list(x.type.shape[2:])
    channels = x.type.shape[1]
    nodes: list[NodeProto] = []
    inits: list[TensorProto] = []
    one, i1 = _const(fresh, f"{node.name}_unit_scale", np.array(1.0, np.float32))
    xz, i2 = _const(fresh, f"{node.name}_x_zero_point", np.array(node.attr("x_zero_point"), np.uint8))
    yz, i3 = _const(fresh, f"{node.name}_y_zero_point", np.array(node.attr("y_zero_point"), np.uint8))
    inits += [i1, i2, i3]
    centered = fresh(f"{node.name}_centered")
    nodes.append(helper.make_node("DequantizeLinear", [x.name, one, xz], [centered], name=fresh(f"{node.name}_dq")))
    if node.attr("global_pool", 0):
        kernel, strides, dilations = spatial, [1] * len(spatial), [1] * len(spatial)
        begin, end = [0] * len(spatial), [0] * len(spatial)
    else:
        win = pool_window(qpool.avg_node(node))
        kernel, strides, dilations = list(win.kernel), list(win.strides), list(win.dilations)
        begin = list(win.pads_begin)
        end = [max(e, (o - 1) * s + d * (k - 1) + 1 - (i + b))
               for e, o, s, d, k, i, b in zip(win.pads_end, win.out, win.strides, win.dilations, win.kernel,
                                               spatial, win.pads_begin)]
    w, i4 = _const(fresh, f"{node.name}_ones", np.ones([channels, 1] + kernel, np.float32))
    inits.append(i4)
    sums = fresh(f"{node.name}_sums")
    nodes.append(helper.make_node("Conv", [centered, w], [sums], name=node.name, kernel_shape=kernel,
                                  strides=strides, dilations=dilations, pads=begin + end, group=channels))
    m = qpool.multipliers(node.attr("x_scale"), node.attr("y_scale"), qpool.counts(node))
    table, i5 = _const(fresh, f"{node.name}_multipliers", m.reshape((1, 1) + m.shape).astype(np.float32))
    inits.append(i5)
    scaled = fresh(f"{node.name}_scaled")
    nodes.append(helper.make_node("Mul", [sums, table], [scaled], name=fresh(f"{node.name}_mul")))
    nodes.append(helper.make_node("QuantizeLinear", [scaled, one, yz], [node.outputs[0].name],
                                  name=fresh(f"{node.name}_q")))
    return nodes, inits


def expand_qlookup(node: Node, fresh):
    """``Gather(table, Cast(x, int32))``: ``y[i] = table[x[i]]`` exactly (``ops/qlookup.py``)."""
    index = fresh(f"{node.name}_index")
    nodes = [helper.make_node("Cast", [node.inputs[0].name], [index], name=fresh(f"{node.name}_cast"),
                              to=TensorProto.INT32),
             helper.make_node("Gather", [node.inputs[1].name, index], [node.outputs[0].name], name=node.name, axis=0)]
    return nodes, []


EXPANSIONS.update({"QConv": expand_qconv, "QGemm": expand_qgemm, "QAveragePool": expand_qavgpool,
                   "QLookup": expand_qlookup})
