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


def add_qconv(b: QBuilder, rng, x: Value, out_channels, kernel, attrs=None, bias=True, output_dtype="uint8",
              per_channel=True, x_zero_point=7, w_range=127) -> Value:
    """A QConv of ``x`` with random int8 weights and int32 bias (``attrs["group"]`` groups)."""
    channels = x.type.shape[1] // (attrs or {}).get("group", 1)
    tag = len(b.nodes)
    w = b.const(f"w{tag}", rng.integers(-w_range, w_range + 1, (out_channels, channels, *kernel)).astype(np.int8))
    inputs = [x, w]
    if bias:
        inputs.append(b.const(f"bias{tag}", rng.integers(-3000, 3000, out_channels).astype(np.int32)))
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
