"""The quantize rewrite: an optimized fp32 graph and its calibration -> an int8 graph.

Layers are the graph's Conv/FusedConv and Gemm/FusedGemm nodes (after -O3: with Relu, Clip
and max pooling, or a softmax, fused). Each becomes ``lepton.QConv`` / ``lepton.QGemm``
under the node's own name (the original ONNX Conv/Gemm name, which fused nodes keep):

* weights: symmetric int8 per output channel (``qmath.symmetric_int8``); a Gemm's ``alpha``
  and ``transB`` are folded into them, ``beta * C`` into the bias;
* bias: int32 in accumulator units (``qmath.quantize_bias``);
* the input: uint8 with the scale and zero point of its calibrated range
  (``qmath.choose_uint8``);
* the output: **uint8** when every reader takes it in int8 (int8 layers, possibly through
  views such as Flatten) and the fused activation is none, Relu or Clip: Relu and Clip
  become the clamp ``[y_min, y_max]`` in the quantized domain, pooling stays fused (it
  commutes with the monotonic requantization). Otherwise **float32**: the layer ends an int8
  region and applies its activation (and softmax) in fp32, so no DequantizeLinear is needed.

A layer whose fused activation is not a clamp (``LOOKUP_ACTIVATIONS``: HardSwish, Sigmoid, Tanh,
LeakyRelu, HardSigmoid, Elu, Selu; no fused pooling or softmax) keeps the region going when every
reader of its output takes uint8: the QConv/QGemm gets a uint8 *pre-activation* output (the range
calibration observed on ``preactivation_name(output)``, from the graph ``split_activations`` makes)
and a ``lepton.QLookup`` (``ops/qlookup.py``) maps it to the activation's output, with the table
``quantize(act(dequantize(q)))`` of the two scales. A standalone such activation reading a uint8
value becomes a QLookup the same way (a region op with its own calibrated output range). Without the
pre-activation range (a calibration table stored before it was observed) the layer keeps today's
float output.

A ``QuantizeLinear`` is inserted where an int8 layer reads a float value (the start of an
int8 region), once per value however many int8 layers read it. Views of a uint8 value are
uint8 and share its scale.

A conv with a fused residual Add (``act(conv + r)``) becomes a QConv with a uint8 residual
operand (``ops/quant.py``): ``r`` is the uint8 output of an int8 layer (an int8 layer's residual
reader counts as an int8 reader, so a ResNet block's shortcut stays in the region) or, when ``r``
is float, its QuantizeLinear at the region's edge with ``r``'s calibrated range (calibration
observes residuals too).

Layers that stay fp32 (each ``LayerDecision`` says why):

* unsupported: weights or bias not constant, a fused residual that broadcasts (int8 takes
  one of the conv output's shape), a Gemm with ``transA`` or a bias that is not one value
  per output column, a non-float input;
* ``keep_fp32`` names them;
* not worth it: fewer than ``MIN_MACS`` multiply-adds per batch item in a layer whose
  input does not already come from an int8 layer. Such a layer would open an int8 region
  for itself alone: quantizing its input costs about as much as its int8 arithmetic saves,
  and it adds error for nothing. (The same small layer after an int8 layer costs no
  conversion and is quantized: MNIST's fc2, 640 multiply-adds, with its softmax.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional

import numpy as np

from ..errors import LeptonError
from ..ir import Graph, Node, TensorType, Value
from ..ops import infer_graph, qlookup, qmath, qpool
from ..ops.activations import ACTIVATIONS, activation_params
from ..ops.fused import DOMAIN, POOL_ATTRS, conv_output_type
from ..ops.registry import REGISTRY, OpKind

MIN_MACS = 4096
"""Multiply-adds per batch item below which a layer does not open an int8 region of its own."""
CONV_OPS = ("Conv", "FusedConv")
GEMM_OPS = ("Gemm", "FusedGemm")
CLAMP_ACTIVATIONS = ("", "Relu", "Clip")
"""Fused activations a uint8 output expresses as ``[y_min, y_max]``."""
CONV_ATTRS = ("kernel_shape", "strides", "pads", "dilations", "group", "auto_pad")
LOOKUP_ACTIVATIONS = ("LeakyRelu", "Sigmoid", "Tanh", "HardSwish", "Elu", "Selu", "HardSigmoid")
"""Activations a uint8 region applies as a ``lepton.QLookup`` table (bounded, defined everywhere)."""


@dataclass(frozen=True)
class LayerDecision:
    """What the rewrite did with one layer."""

    name: str
    op: str                  # "Conv" or "Gemm"
    int8: bool
    output: str              # int8: "uint8" or "float32"; fp32: ""
    reason: str              # fp32: why; int8: ""
    macs: int                # multiply-adds per batch item


@dataclass
class QuantizedGraph:
    graph: Graph
    layers: list[LayerDecision]
    params: dict[str, tuple[float, int]] = field(default_factory=dict)
    """Scale and zero point of each uint8 value (by name)."""

    @property
    def int8_layers(self) -> list[str]:
        return [d.name for d in self.layers if d.int8]

    @property
    def fp32_layers(self) -> list[str]:
        return [d.name for d in self.layers if not d.int8]


# -- recognizing layers ------------------------------------------------------------------------
def is_layer(node: Node) -> bool:
    return node.domain in ("", DOMAIN) and node.op in CONV_OPS + GEMM_OPS


def layers(graph: Graph) -> list[Node]:
    return [n for n in graph.nodes if is_layer(n)]


def _input(node: Node, index: int) -> Optional[Value]:
    return node.inputs[index] if len(node.inputs) > index else None


def _gemm_bias(node: Node, n: int) -> Optional[np.ndarray]:
    """``beta * C`` as one value per output column, or None when there is no C."""
    c = _input(node, 2)
    if c is None:
        return None
    arr = np.asarray(c.const, np.float32)
    if arr.size not in (1, n) or (arr.ndim == 2 and arr.shape[0] != 1) or arr.ndim > 2:
        raise ValueError
    return (np.broadcast_to(arr.reshape(-1), (n,)) * np.float32(node.attr("beta", 1.0))).astype(np.float32)


def unsupported(node: Node) -> Optional[str]:
    """Why ``node`` (a layer) has no int8 form, or None."""
    x, w, bias = node.inputs[0], node.inputs[1], _input(node, 2)
    if x.type.dtype != "float32":
        return f"its input is {x.type.dtype}"
    if not w.is_const:
        return "its weights are not constant"
    if bias is not None and not bias.is_const:
        return "its bias is not constant"
    if node.op in CONV_OPS:
        residual = _input(node, 3)
        if residual is not None:
            if residual.type.dtype != "float32":
                return f"its residual is {residual.type.dtype}"
            if residual.type.shape != conv_output_type(node).shape:
                return f"its residual {residual.type} broadcasts (int8 takes one of the conv output's shape)"
        return None
    if node.attr("transA", 0):
        return "transA is not supported in int8"
    if x.type.rank != 2 or w.type.rank != 2:
        return "not a matrix product"
    n = w.type.shape[0] if node.attr("transB", 0) else w.type.shape[1]
    try:
        _gemm_bias(node, n)
    except ValueError:
        return f"its bias {bias.type} is not one value per output column"
    return None


def layer_macs(node: Node) -> int:
    """Multiply-adds per batch item."""
    w = node.inputs[1].type.shape
    if node.op in CONV_OPS:
        out = conv_output_type(node).shape if node.op == "FusedConv" else node.outputs[0].type.shape
        spatial = int(np.prod([d for d in out[2:]], dtype=np.int64))
        return spatial * int(np.prod(w, dtype=np.int64))
    return int(np.prod(w, dtype=np.int64))


def residual_input(node: Node) -> Optional[Value]:
    """A conv layer's fused residual, or None."""
    return _input(node, 3) if node.op in CONV_OPS else None


def is_view(node: Node) -> bool:
    return REGISTRY[node.op].kind is OpKind.VIEW and node.domain == "" and \
        all(v is None or v.is_const for v in node.inputs[1:])


def lookup_layer(node: Node) -> bool:
    """Whether ``node`` (a layer) applies an activation a QLookup can take over: one of
    ``LOOKUP_ACTIVATIONS`` with no fused pooling or softmax after it."""
    return node.attr("activation", "") in LOOKUP_ACTIVATIONS and node.attr("pool_kernel") is None and \
        not node.attr("softmax", 0)


def preactivation_name(value_name: str) -> str:
    """The name calibration gives a lookup layer's output before its activation."""
    return f"{value_name}/preactivation"


def split_activations(graph: Graph) -> Graph:
    """A copy of ``graph`` (the same values) where each supported lookup layer is split into the
    layer without its activation, writing ``preactivation_name(output)``, and the standalone
    activation writing the layer's output: calibration observes both (the fused kernels compute
    the same activation as the standalone op, so every other value is unchanged)."""
    g = graph.copy()
    nodes = []
    for node in g.nodes:
        if not (is_layer(node) and unsupported(node) is None and lookup_layer(node)):
            nodes.append(node)
            continue
        out = node.outputs[0]
        act = node.attr("activation")
        pre = Value(preactivation_name(out.name), out.type)
        attrs = {k: v for k, v in node.attrs.items() if k not in ("activation", "activation_params")}
        params = node.attr("activation_params", []) or ACTIVATIONS[act].defaults
        nodes.append(Node(node.op, node.name, list(node.inputs), [pre], attrs, node.domain))
        nodes.append(Node(act, f"{node.name}/{act}", [pre], [out],
                          dict(zip(ACTIVATIONS[act].params, [float(p) for p in params]))))
    g.nodes = nodes
    infer_graph(g)
    return g


def observed_values(graph: Graph) -> list[str]:
    """The values calibration must observe: the input, residual and output of every supported layer
    (and a lookup layer's pre-activation output, a value of ``split_activations(graph)``), and the
    output of every average pool and lookup activation an int8 region may hold (its own range)."""
    names: list[str] = []
    for node in layers(graph):
        if unsupported(node) is None:
            for v in (node.inputs[0], residual_input(node), node.outputs[0]):
                if v is not None and v.name not in names:
                    names.append(v.name)
            if lookup_layer(node):
                names.append(preactivation_name(node.outputs[0].name))
    for node in graph.nodes:
        if node.op in OWN_RANGE_OPS and region_op(node, None) and node.outputs[0].name not in names:
            names.append(node.outputs[0].name)
    return names


# -- region ops: uint8 in, uint8 out, no layer of their own ------------------------------------
AVG_OPS = ("AveragePool", "GlobalAveragePool")
REGION_OPS = ("MaxPool", "Concat") + AVG_OPS + LOOKUP_ACTIVATIONS
OWN_RANGE_OPS = AVG_OPS + LOOKUP_ACTIVATIONS
"""Ops an int8 region holds on uint8 values: MaxPool and Concat exactly (the output keeps the
input's scale and zero point; a Concat's inputs all get the same ones), the averages as
``lepton.QAveragePool`` and the lookup activations as ``lepton.QLookup`` (their own calibrated
output range)."""


def region_op(node: Node, ranges: Optional[Mapping[str, tuple[float, float]]]) -> bool:
    """Whether ``node`` can run on uint8 inside an int8 region (``ranges`` None: don't check that an
    average's output range was calibrated)."""
    if node.domain != "" or node.op not in REGION_OPS or len(node.outputs) != 1:
        return False
    x = node.inputs[0]
    if node.op == "Concat":
        return all(v is not None and not v.is_const and v.type.dtype == "float32" for v in node.inputs)
    if x is None or x.type.dtype != "float32":
        return False
    if node.op in LOOKUP_ACTIVATIONS:
        return ranges is None or node.outputs[0].name in ranges
    if x.type.rank not in (3, 4):
        return False
    if node.op == "MaxPool":
        return node.attr("storage_order", 0) == 0
    if ranges is not None and node.outputs[0].name not in ranges:
        return False
    try:
        return qpool.window_taps(node) <= qpool.MAX_COUNT and bool(np.all(qpool.counts(node) > 0))
    except LeptonError:
        return False


def data_inputs(node: Node) -> list[Value]:
    """The inputs of a view or region op that carry its data (every input of a Concat)."""
    return list(node.inputs) if node.op == "Concat" else [node.inputs[0]]


def check_keep_fp32(graph: Graph, keep_fp32) -> set[str]:
    if keep_fp32 is None:
        return set()
    names = [keep_fp32] if isinstance(keep_fp32, str) else list(keep_fp32)
    valid = [n.name for n in layers(graph)]
    for name in names:
        if not isinstance(name, str):
            raise LeptonError(f"keep_fp32= takes layer names (strings), got {name!r}")
        if name not in valid:
            raise LeptonError(f"keep_fp32: the model has no conv or dense layer {name!r}; "
                              f"its layers: {', '.join(valid) or '(none)'}")
    return set(names)


# -- the rewrite -------------------------------------------------------------------------------
class _Builder:
    """Collects new constants and nodes with names unique in the graph."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.names = {v.name for v in graph.values()} | {n.name for n in graph.nodes}

    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def const(self, base: str, array: np.ndarray) -> Value:
        v = Value(self.unique(base), TensorType(str(array.dtype), tuple(array.shape)), array)
        self.graph.constants.append(v)
        return v


def quantize_graph(graph: Graph, ranges: Mapping[str, tuple[float, float]],
                   keep_fp32: Optional[Iterable[str]] = None, min_macs: int = MIN_MACS) -> QuantizedGraph:
    """The int8 form of ``graph`` (not modified) given calibrated ``ranges`` (value name -> (lo, hi));
    ``min_macs``: the "not worth it" threshold (0 turns the rule off)."""
    g = graph.copy()
    keep = check_keep_fp32(g, keep_fp32)
    users = g.users()
    outputs = set(g.outputs)

    def from_int8_layer(value: Value) -> bool:
        """Whether ``value`` comes from int8 layers through views and region ops (an estimate: the
        region ops' own conditions are decided below)."""
        p = value.producer
        if p is not None and (is_view(p) or region_op(p, ranges)):
            return all(from_int8_layer(v) for v in data_inputs(p))
        return p is not None and p in int8

    int8: set[Node] = set()
    reasons: dict[Node, str] = {}
    macs = {node: layer_macs(node) for node in layers(g)}
    for node in layers(g):
        reason = unsupported(node)
        if reason is None and node.name in keep:
            reason = "keep_fp32"
        if reason is None and macs[node] < min_macs and not from_int8_layer(node.inputs[0]):
            reason = (f"not worth it: {macs[node]:,} multiply-adds per item would open an int8 region "
                      f"of their own (fewer than {min_macs:,})")
        if reason is None:
            missing = [v.name for v in (node.inputs[0], residual_input(node), node.outputs[0])
                       if v is not None and v.name not in ranges]
            if missing:
                raise LeptonError(f"quantize: no calibrated range for {missing[0]!r} (layer {node.name!r})")
            int8.add(node)
        else:
            reasons[node] = reason

    uint8_values = _uint8_values(g, int8, users, outputs, ranges)
    value_params = _shared_params(g, int8, uint8_values, ranges)

    b = _Builder(g)
    params: dict[Value, tuple[float, int]] = {}     # uint8 values: (scale, zero point)
    quantized: dict[Value, Value] = {}              # float value -> its QuantizeLinear output
    nodes: list[Node] = []
    decisions = []

    def choose(value: Value) -> tuple[float, int]:
        return qmath.choose_uint8(*ranges[value.name])

    def uint8_value(x: Value) -> Value:
        """``x`` itself when it is uint8 already, else its QuantizeLinear (added once per value)."""
        if x in params:
            return x
        if x not in quantized:
            scale, zp = choose(x)
            q = Value(b.unique(f"{x.name}_quantized"), TensorType("uint8", x.type.shape))
            nodes.append(Node("QuantizeLinear", b.unique(f"{x.name}/QuantizeLinear"),
                              [x, b.const(f"{x.name}_scale", np.array(scale, np.float32)),
                               b.const(f"{x.name}_zero_point", np.array(zp, np.uint8))], [q]))
            quantized[x] = q
            params[q] = (scale, zp)
        return quantized[x]

    for node in g.nodes:
        if node not in int8 and node.outputs and node.outputs[0] in uint8_values:   # a view or region op
            out = node.outputs[0]
            if node.op in AVG_OPS:
                node = _quantized_avgpool(node, params[node.inputs[0]], value_params[out])
            elif node.op in LOOKUP_ACTIVATIONS:
                node = _lookup(b, node.name, node.op, activation_params(node), node.inputs[0],
                               params[node.inputs[0]], out, value_params[out])
            params[out] = value_params[out]
            nodes.append(node)
            continue
        if node not in int8:
            if is_layer(node):
                decisions.append(LayerDecision(node.name, _kind(node), False, "", reasons[node], macs[node]))
            nodes.append(node)
            continue
        x, r = uint8_value(node.inputs[0]), residual_input(node)
        if r is not None:   # from an int8 region, or quantized here at the region's edge
            r = uint8_value(r)
        out = node.outputs[0]
        uint8_out = out in uint8_values
        lookup = uint8_out and node.attr("activation", "") not in CLAMP_ACTIVATIONS
        if lookup:   # uint8 before the activation, then the table into the output's parameters
            pre = Value(b.unique(f"{out.name}_preactivation"), TensorType("uint8", out.type.shape))
            pre_params = qmath.choose_uint8(*ranges[preactivation_name(out.name)])
            new = _quantized_layer(b, node, x, params[x], pre_params, r, None if r is None else params[r], out=pre)
            params[pre] = pre_params
            act = node.attr("activation")
            nodes.append(new)
            new = _lookup(b, b.unique(f"{node.name}/{act}"), act, node.attr("activation_params", []), pre,
                          pre_params, out, value_params[out])
        else:
            new = _quantized_layer(b, node, x, params[x], value_params[out] if uint8_out else None,
                                   r, None if r is None else params[r])
        if uint8_out:
            params[out] = value_params[out]
        nodes.append(new)
        decisions.append(LayerDecision(node.name, _kind(node), True, "uint8" if uint8_out else "float32", "",
                                       macs[node]))
    g.nodes = nodes
    used = {v for n in g.nodes for v in n.inputs if v is not None}
    g.constants = [c for c in g.constants if c in used or c in outputs]
    infer_graph(g)
    return QuantizedGraph(g, decisions, {v.name: p for v, p in params.items()})


def _uint8_values(g: Graph, int8: set, users, outputs: set, ranges) -> set:
    """The values an int8 region holds in uint8: outputs of int8 layers whose activation is a clamp,
    of views and of region ops, read only by int8 layers (input or residual) and by views and
    region ops whose every data input and output are uint8 too. The largest such set: start from
    every candidate and drop values that break a condition until none does."""
    candidates = {n for n in g.nodes if (n in int8 and (n.attr("activation", "") in CLAMP_ACTIVATIONS or
                                                         uses_lookup(n, ranges)))
                  or (n not in int8 and n.outputs and (is_view(n) or region_op(n, ranges)))}
    held = {n.outputs[0] for n in candidates if n.outputs[0] not in outputs and users.get(n.outputs[0])}

    def passes(r: Node, v: Value) -> bool:
        if r in int8:   # an int8 layer's input or residual (never its weights or bias)
            return (r.inputs[0] is v or residual_input(r) is v) and v not in r.inputs[1:3]
        return r in candidates and any(i is v for i in data_inputs(r)) and r.outputs[0] in held and \
            all(i in held for i in data_inputs(r))

    changed = True
    while changed:
        changed = False
        for v in list(held):
            p = v.producer
            ok = p in int8 or all(i in held for i in data_inputs(p))
            ok = ok and all(passes(r, v) for r in users.get(v, []))
            if not ok:
                held.discard(v)
                changed = True
    return held


def _shared_params(g: Graph, int8: set, held: set, ranges) -> dict:
    """(scale, zero point) of every uint8 value. Int8 layers and averages choose theirs from their
    calibrated range; views and MaxPool keep their input's; a Concat's inputs and output share one
    pair, chosen from the union of the ranges of the layers (and averages) behind them."""
    parent: dict[Value, Value] = {}

    def find(v: Value) -> Value:
        while parent[v] is not v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    roots = []
    for node in g.nodes:
        out = node.outputs[0] if node.outputs else None
        if out not in held:
            continue
        if node in int8 or node.op in OWN_RANGE_OPS:
            parent[out] = out
            roots.append(out)
        elif node.op == "Concat":
            first = find(node.inputs[0])
            for v in node.inputs[1:]:
                parent[find(v)] = first
            parent[out] = first
        else:   # a view, MaxPool
            parent[out] = find(node.inputs[0])
    span: dict[Value, tuple[float, float]] = {}
    for v in roots:
        lo, hi = ranges[v.name]
        top = find(v)
        old = span.get(top, (lo, hi))
        span[top] = (min(old[0], lo), max(old[1], hi))
    return {v: qmath.choose_uint8(*span[find(v)]) for v in held}


def uses_lookup(node: Node, ranges) -> bool:
    """Whether an int8 layer can have a uint8 output through a QLookup (its pre-activation range is
    calibrated)."""
    return lookup_layer(node) and preactivation_name(node.outputs[0].name) in ranges


def _lookup(b: "_Builder", name: str, act: str, params, x: Value, x_params, out: Value, y_params) -> Node:
    """The ``lepton.QLookup`` mapping the uint8 ``x`` through ``act`` to the uint8 ``out``."""
    t = qlookup.table(act, params, x_params, y_params)
    out.type = TensorType("uint8", out.type.shape)
    return Node("QLookup", name, [x, b.const(f"{name}_table", t)], [out], {}, DOMAIN)


def _quantized_avgpool(node: Node, x_params: tuple[float, int], y_params: tuple[float, int]) -> Node:
    """``lepton.QAveragePool`` for an AveragePool / GlobalAveragePool reading a uint8 value."""
    keep = ("kernel_shape", "strides", "pads", "dilations", "ceil_mode", "count_include_pad", "auto_pad")
    attrs = {k: v for k, v in node.attrs.items() if k in keep} if node.op == "AveragePool" else {"global_pool": 1}
    attrs.update({"x_scale": float(x_params[0]), "x_zero_point": int(x_params[1]),
                  "y_scale": float(y_params[0]), "y_zero_point": int(y_params[1])})
    return Node("QAveragePool", node.name, [node.inputs[0]], [node.outputs[0]], attrs, DOMAIN)


def _kind(node: Node) -> str:
    return "Conv" if node.op in CONV_OPS else "Gemm"


def _clamp(node: Node, scale: float, zp: int) -> tuple[int, int]:
    """The fused activation as ``[y_min, y_max]`` of a uint8 output."""
    act = node.attr("activation", "")
    if act == "Relu":
        return zp, 255
    if act == "Clip":
        lo, hi = node.attr("activation_params", [-np.inf, np.inf])
        q = [int(np.clip(zp + np.rint(np.float32(v) / np.float32(scale)), 0, 255)) if np.isfinite(v)
             else (0 if v < 0 else 255) for v in (lo, hi)]
        return q[0], q[1]
    return 0, 255


def _quantized_layer(b: _Builder, node: Node, x: Value, x_params: tuple[float, int],
                     y_params: Optional[tuple[float, int]], r: Optional[Value] = None,
                     r_params: Optional[tuple[float, int]] = None, out: Optional[Value] = None) -> Node:
    """The QConv/QGemm of ``node`` reading the uint8 ``x`` (and the uint8 residual ``r``); uint8
    output with ``y_params``, float output when None. It keeps the node's name and output value
    (``out``: a uint8 pre-activation value instead, the activation left to a QLookup)."""
    x_scale, x_zp = x_params
    w = np.asarray(node.inputs[1].const, np.float32)
    if node.op in CONV_OPS:
        bias = _input(node, 2)
        bias = None if bias is None else np.asarray(bias.const, np.float32)
        op, prefix, wname = "QConv", "x", "w_scales"
        attrs = {k: v for k, v in node.attrs.items() if k in CONV_ATTRS or k in POOL_ATTRS}
    else:
        w = (w if node.attr("transB", 0) else w.T) * np.float32(node.attr("alpha", 1.0))
        bias = _gemm_bias(node, w.shape[0])
        op, prefix, wname = "QGemm", "a", "b_scales"
        attrs = {}
    wq, w_scales = qmath.symmetric_int8(w, axis=0)
    inputs = [x, b.const(f"{node.inputs[1].name}_int8", np.ascontiguousarray(wq))]
    if bias is not None:
        bias_name = node.inputs[2].name if _input(node, 2) is not None else node.inputs[1].name
        inputs.append(b.const(f"{bias_name}_int32", qmath.quantize_bias(bias, x_scale, w_scales)))
    attrs.update({f"{prefix}_scale": float(x_scale), f"{prefix}_zero_point": int(x_zp),
                  wname: [float(s) for s in w_scales]})
    if r is not None:
        inputs = inputs + [None] * (3 - len(inputs)) + [r]
        attrs.update({"r_scale": float(r_params[0]), "r_zero_point": int(r_params[1])})
    if y_params is not None:
        y_min, y_max = _clamp(node, *y_params) if out is None else (0, 255)
        attrs.update({"y_scale": float(y_params[0]), "y_zero_point": int(y_params[1]), "y_min": y_min,
                      "y_max": y_max, "output_dtype": "uint8"})
    else:
        attrs["output_dtype"] = "float32"
        if node.attr("activation", ""):
            attrs["activation"] = node.attr("activation")
            attrs["activation_params"] = list(node.attr("activation_params", []))
        if op == "QGemm" and node.attr("softmax", 0):
            attrs["softmax"] = 1
    out = node.outputs[0] if out is None else out
    out.type = TensorType("uint8" if y_params is not None else "float32", out.type.shape)
    return Node(op, node.name, inputs, [out], attrs, DOMAIN)
