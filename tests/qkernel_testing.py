"""Helpers for the int8 kernel tests and benchmark: random QConv/QGemm graphs, and the
bundled MNIST CNN quantized by hand (weights per channel with ``qmath.symmetric_int8``,
activation ranges from fp32 runs of a few images) as
``QuantizeLinear -> QConv x3 -> Flatten -> QGemm (uint8) -> QGemm (float32, softmax)``."""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from lepton_compiler.ir import Graph, Node, TensorType, Value
from lepton_compiler.ops import infer_graph, infer_node, qmath

DOMAIN = "lepton"


class QBuilder:
    """Graphs of int8 nodes, typed as they are added."""

    def __init__(self):
        self.inputs: list[Value] = []
        self.constants: list[Value] = []
        self.nodes: list[Node] = []

    def input(self, name: str, shape, dtype: str) -> Value:
        value = Value(name, TensorType(dtype, tuple(shape)))
        self.inputs.append(value)
        return value

    def const(self, name: str, array: np.ndarray) -> Value:
        array = np.ascontiguousarray(array)
        array.setflags(write=False)
        value = Value(name, TensorType.of(array), array)
        self.constants.append(value)
        return value

    def op(self, op: str, inputs, attrs: Optional[dict] = None, domain: str = "") -> Value:
        name = f"{op.lower()}{len(self.nodes)}"
        value = Value(name, TensorType("float32", ()))
        node = Node(op, name, inputs, [value], attrs or {}, domain)
        infer_node(node)
        self.nodes.append(node)
        return value

    def graph(self, *outputs: Value) -> Graph:
        return infer_graph(Graph("q", list(self.inputs), list(outputs), list(self.nodes), list(self.constants)))


def conv_output_shape(x: Value, out_channels: int, kernel, attrs=None) -> tuple:
    """The shape of a conv of ``x`` (before any pooling), for a residual input."""
    from lepton_compiler.ops.nn import infer_conv

    keep = ("kernel_shape", "strides", "pads", "dilations", "group", "auto_pad")
    conv_attrs = {k: v for k, v in dict(attrs or {}, kernel_shape=list(kernel)).items() if k in keep}
    channels = x.type.shape[1] // conv_attrs.get("group", 1)
    values = [Value("x", TensorType("float32", x.type.shape)),
              Value("w", TensorType("float32", (out_channels, channels, *kernel)))]
    return infer_conv(Node("Conv", "shape", values, [Value("y", TensorType("float32", ()))], conv_attrs))[0].shape


def add_qconv(b: QBuilder, rng, x: Value, out_channels, kernel, attrs=None, bias=True, output_dtype="uint8",
              per_channel=True, x_zero_point=7, w_range=127, residual=False, r_scale=0.05,
              r_zero_point=100) -> Value:
    """A QConv of ``x`` with random int8 weights and int32 bias (``attrs["group"]`` groups); with
    ``residual``, a uint8 residual input ``r<tag>`` of the conv output's shape."""
    channels = x.type.shape[1] // (attrs or {}).get("group", 1)
    tag = len(b.nodes)
    w = b.const(f"w{tag}", rng.integers(-w_range, w_range + 1, (out_channels, channels, *kernel)).astype(np.int8))
    inputs = [x, w]
    if bias:
        inputs.append(b.const(f"bias{tag}", rng.integers(-3000, 3000, out_channels).astype(np.int32)))
    if residual:
        inputs = inputs[:3] + [None] * (3 - len(inputs))
        inputs.append(b.input(f"r{tag}", conv_output_shape(x, out_channels, kernel, attrs), "uint8"))
        attrs = dict(attrs or {}, r_scale=r_scale, r_zero_point=r_zero_point)
    scales = rng.uniform(0.001, 0.01, out_channels if per_channel else 1).astype(np.float32)
    a = dict(kernel_shape=list(kernel), x_scale=0.02, x_zero_point=x_zero_point, w_scales=[float(s) for s in scales],
             output_dtype=output_dtype)
    if output_dtype == "uint8":
        a.update(y_scale=0.4, y_zero_point=90)
    a.update(attrs or {})
    return b.op("QConv", inputs, a, DOMAIN)


def add_qgemm(b: QBuilder, rng, a: Value, cols, attrs=None, bias=True, output_dtype="uint8", per_channel=True,
              a_zero_point=131) -> Value:
    depth = a.type.shape[1]
    tag = len(b.nodes)
    w = b.const(f"w{tag}", rng.integers(-127, 128, (cols, depth)).astype(np.int8))
    inputs = [a, w]
    if bias:
        inputs.append(b.const(f"bias{tag}", rng.integers(-3000, 3000, cols).astype(np.int32)))
    scales = rng.uniform(0.001, 0.01, cols if per_channel else 1).astype(np.float32)
    at = dict(a_scale=0.03, a_zero_point=a_zero_point, b_scales=[float(s) for s in scales], output_dtype=output_dtype)
    if output_dtype == "uint8":
        at.update(y_scale=0.6, y_zero_point=70)
    at.update(attrs or {})
    return b.op("QGemm", inputs, at, DOMAIN)


RESIDUAL_CASES = [  # as CONV_CASES, every one with a residual of the conv output's shape
    (16, (9, 11), 24, (3, 3), dict(pads=[1, 1, 1, 1], y_min=90), {}),
    (3, (9, 11), 20, (3, 3), {}, dict(r_zero_point=0, r_scale=0.02)),
    (9, (7, 8), 19, (3, 3), dict(pads=[1, 1, 1, 1], pool_kernel=[3, 3], pool_strides=[2, 2], pool_pads=[1, 1, 1, 1]),
     {}),
    (32, (13, 13), 64, (3, 3), dict(pads=[1, 1, 1, 1], pool_kernel=[2, 2], pool_strides=[2, 2], y_min=90), {}),
    (19, (7, 8), 19, (3, 3), dict(group=19, strides=[2, 2], pads=[1, 0, 1, 1]), dict(x_zero_point=255)),
    (33, (10, 10), 33, (3, 3), dict(group=33, pads=[1, 1, 1, 1], y_min=92, y_max=200), dict(r_zero_point=255)),
    (8, (9, 9), 12, (3, 3), dict(group=4, pads=[1, 1, 1, 1], y_min=100), {}),       # units > 1: padded slots
    (4, (7, 7), 10, (3, 3), dict(activation="Relu"), dict(output_dtype="float32")),
    (5, (6, 5), 9, (2, 2), dict(activation="Tanh", pool_kernel=[2, 2]), dict(output_dtype="float32", bias=False)),
    (2, (15,), 11, (4,), dict(pads=[2, 1], strides=[2]), dict(bias=False)),
    (64, (5, 5), 64, (1, 1), {}, dict(per_channel=False, r_scale=0.4)),
]


def residual_graph(cases=None, seed=11) -> Graph:
    """One QConv with a residual per case of ``cases`` (default ``RESIDUAL_CASES``), inputs ``x<i>`` and ``r<k>``."""
    cases = RESIDUAL_CASES if cases is None else cases
    rng = np.random.default_rng(seed)
    b = QBuilder()
    outs = []
    for i, (channels, spatial, oc, kernel, attrs, options) in enumerate(cases):
        x = b.input(f"x{i}", ("N", channels, *spatial), "uint8")
        outs.append(add_qconv(b, rng, x, oc, kernel, dict(attrs, kernel_shape=list(kernel)), residual=True,
                              **options))
    return b.graph(*outs)


# -- the MNIST CNN in int8 -------------------------------------------------------------------------
_TAPS = ["input", "/pool1/MaxPool_output_0", "/pool2/MaxPool_output_0", "/relu3/Relu_output_0",
         "/relu4/Relu_output_0"]


def _ranges(model_path: str, images: np.ndarray) -> list[tuple[float, float]]:
    """(min, max) of the input and of each int8 layer's output, from an fp32 run."""
    model = onnx.load(model_path)
    known = {o.name for o in model.graph.output}
    for name in _TAPS[1:]:
        if name not in known:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": images})))
    values = [images] + [outs[name] for name in _TAPS[1:]]
    return [(float(v.min()), float(v.max())) for v in values]


def mnist_int8_graph(model_path: str, calibration: np.ndarray, batch="N") -> Graph:
    """The bundled MNIST CNN as an int8 graph (uint8 activations, per-channel int8 weights)."""
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(model_path).graph.initializer}
    qparams = [qmath.choose_uint8(lo, hi) for lo, hi in _ranges(model_path, calibration)]
    b = QBuilder()
    x = b.input("input", (batch, 1, 28, 28), "float32")
    scale, zp = qparams[0]
    h = b.op("QuantizeLinear", [x, b.const("x_scale", np.float32(scale)), b.const("x_zp", np.uint8(zp))])
    pool = dict(pool_kernel=[2, 2], pool_strides=[2, 2])
    for i, (layer, extra) in enumerate((("conv1", pool), ("conv2", pool), ("conv3", {}))):
        wq, ws = qmath.symmetric_int8(weights[f"{layer}.weight"])
        (x_scale, x_zp), (y_scale, y_zp) = qparams[i], qparams[i + 1]
        bias = qmath.quantize_bias(weights[f"{layer}.bias"], x_scale, ws)
        attrs = dict(kernel_shape=[3, 3], x_scale=x_scale, x_zero_point=x_zp, w_scales=[float(s) for s in ws],
                     y_scale=y_scale, y_zero_point=y_zp, y_min=y_zp, y_max=255, **extra)
        h = b.op("QConv", [h, b.const(f"{layer}.wq", wq), b.const(f"{layer}.bq", bias)], attrs, DOMAIN)
    h = b.op("Flatten", [h], {"axis": 1})
    for i, layer in ((3, "fc1"), (4, "fc2")):
        wq, ws = qmath.symmetric_int8(weights[f"{layer}.weight"])
        a_scale, a_zp = qparams[i]
        bias = qmath.quantize_bias(weights[f"{layer}.bias"], a_scale, ws)
        attrs = dict(a_scale=a_scale, a_zero_point=a_zp, b_scales=[float(s) for s in ws])
        if layer == "fc1":
            y_scale, y_zp = qparams[4]
            attrs.update(y_scale=y_scale, y_zero_point=y_zp, y_min=y_zp, y_max=255)
        else:
            attrs.update(output_dtype="float32", softmax=1)
        h = b.op("QGemm", [h, b.const(f"{layer}.wq", wq), b.const(f"{layer}.bq", bias)], attrs, DOMAIN)
    return b.graph(h)
