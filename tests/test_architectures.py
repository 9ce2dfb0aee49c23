"""Small "real architecture" graphs built here with onnx.helper and random weights, compiled
at -O0 and -O3 and compared with ONNX Runtime (max abs difference <= 1e-4, identical argmax):

* a MobileNet-style inverted residual: depthwise-separable convs, Clip as Relu6, HardSwish;
* a ResNet basic block with BatchNormalization, a strided downsample branch and residual Adds
  (also at 224x224);
* a SqueezeNet fire module: squeeze 1x1, expand 1x1 and 3x3, Concat, ceil-mode MaxPool;
* a small U-Net path: MaxPool down, ConvTranspose up, Concat with the skip connection;
* a Keras-style NHWC model: Transpose at the input, MatMul + Add as the dense layer.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import lepton_compiler as lc
from conftest import make_model, ort_run

ATOL = 1e-4


class Builder:
    """Nodes and random weights, one layer at a time (weights scaled so activations stay O(1))."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes = []
        self.inits: dict[str, np.ndarray] = {}
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def weight(self, base: str, *shape, fan_in: int) -> str:
        name = self.name(base)
        self.inits[name] = (self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        return name

    def node(self, op: str, inputs, **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1, bias: bool = False,
             pad: int | None = None) -> str:
        w = self.weight("w", cout, cin // group, k, k, fan_in=cin // group * k * k)
        inputs = [x, w]
        if bias:
            inputs.append(self.weight("b", cout, fan_in=cout))
        p = k // 2 if pad is None else pad
        return self.node("Conv", inputs, strides=[stride, stride], pads=[p] * 4, group=group)

    def bn(self, x: str, c: int) -> str:
        names = []
        for what, values in (("gamma", self.rng.uniform(0.5, 1.5, c)), ("beta", self.rng.normal(0, 0.1, c)),
                             ("mean", self.rng.normal(0, 0.1, c)), ("var", self.rng.uniform(0.5, 1.5, c))):
            names.append(self.name(what))
            self.inits[names[-1]] = values.astype(np.float32)
        return self.node("BatchNormalization", [x] + names, epsilon=1e-5)

    def const(self, base: str, array) -> str:
        name = self.name(base)
        self.inits[name] = np.asarray(array)
        return name

    def relu6(self, x: str) -> str:
        return self.node("Clip", [x, self.const("lo", np.float32(0.0)), self.const("hi", np.float32(6.0))])

    def head(self, x: str, c: int, classes: int = 10) -> str:
        flat = self.node("Flatten", [self.node("GlobalAveragePool", [x])])
        logits = self.node("Gemm", [flat, self.weight("fc", classes, c, fan_in=c), self.weight("fcb", classes, fan_in=c)],
                           transB=1)
        return self.node("Softmax", [logits], axis=1)

    def model(self, x_shape, out: str, opset: int = 17):
        self.nodes[-1].output[0] = "Y"
        for node in self.nodes:  # rename the last node's output everywhere it is read
            node.input[:] = ["Y" if i == out else i for i in node.input]
        return make_model(self.nodes, [("X", x_shape)], [("Y", None)], self.inits, opset=opset)


def mobilenet_block() -> tuple:
    m = Builder(1)
    x = m.relu6(m.bn(m.conv("X", 3, 16, 3, stride=2), 16))                           # stem, Relu6
    y = m.node("HardSwish", [m.bn(m.conv(x, 16, 48, 1), 48)])                         # expand 1x1
    y = m.node("HardSwish", [m.bn(m.conv(y, 48, 48, 3, group=48), 48)])               # depthwise 3x3
    y = m.bn(m.conv(y, 48, 16, 1), 16)                                                # project 1x1
    y = m.node("Add", [x, y])                                                          # inverted residual
    y = m.relu6(m.bn(m.conv(y, 16, 16, 3, stride=2, group=16), 16))                   # depthwise, strided
    y = m.relu6(m.bn(m.conv(y, 16, 24, 1), 24))
    return m, m.head(y, 24)


def resnet_block() -> tuple:
    m = Builder(2)
    x = m.node("Relu", [m.bn(m.conv("X", 3, 16, 7, stride=2), 16)])
    x = m.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    y = m.node("Relu", [m.bn(m.conv(x, 16, 16, 3), 16)])
    y = m.bn(m.conv(y, 16, 16, 3), 16)
    x = m.node("Relu", [m.node("Add", [y, x])])                                        # identity shortcut
    y = m.node("Relu", [m.bn(m.conv(x, 16, 32, 3, stride=2), 32)])
    y = m.bn(m.conv(y, 32, 32, 3), 32)
    shortcut = m.bn(m.conv(x, 16, 32, 1, stride=2), 32)                                # downsample branch
    x = m.node("Relu", [m.node("Add", [shortcut, y])])
    return m, m.head(x, 32)


def fire(m: Builder, x: str, cin: int, squeeze: int, expand: int) -> str:
    s = m.node("Relu", [m.conv(x, cin, squeeze, 1, bias=True)])
    e1 = m.node("Relu", [m.conv(s, squeeze, expand, 1, bias=True)])
    e3 = m.node("Relu", [m.conv(s, squeeze, expand, 3, bias=True)])
    return m.node("Concat", [e1, e3], axis=1)


def squeezenet_fire() -> tuple:
    m = Builder(3)
    x = m.node("Relu", [m.conv("X", 3, 16, 3, stride=2, bias=True, pad=0)])
    x = m.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    x = fire(m, x, 16, 8, 16)
    x = fire(m, x, 32, 8, 16)
    x = m.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    x = m.node("Relu", [m.conv(x, 32, 10, 1, bias=True)])
    x = m.node("Flatten", [m.node("AveragePool", [x], kernel_shape=[3, 3])])
    return m, m.node("Softmax", [x], axis=1)


def unet_path() -> tuple:
    m = Builder(4)
    e1 = m.node("Relu", [m.conv("X", 3, 8, 3, bias=True)])
    e2 = m.node("Relu", [m.conv(m.node("MaxPool", [e1], kernel_shape=[2, 2], strides=[2, 2]), 8, 16, 3, bias=True)])
    up = m.node("ConvTranspose", [e2, m.weight("up", 16, 8, 2, 2, fan_in=16 * 4), m.weight("upb", 8, fan_in=8)],
                strides=[2, 2])
    d = m.node("Concat", [up, e1], axis=1)
    d = m.node("Relu", [m.bn(m.conv(d, 16, 8, 3), 8)])
    return m, m.node("Sigmoid", [m.conv(d, 8, 1, 1, bias=True)])


def keras_nhwc() -> tuple:
    m = Builder(5)
    x = m.node("Transpose", ["X"], perm=[0, 3, 1, 2])
    x = m.node("Relu", [m.node("Conv", [x, m.weight("w", 16, 3, 3, 3, fan_in=27), m.weight("b", 16, fan_in=16)],
                               auto_pad="SAME_UPPER", strides=[2, 2])])
    x = m.node("Relu", [m.bn(m.node("Conv", [x, m.weight("dw", 16, 1, 3, 3, fan_in=9)], auto_pad="SAME_UPPER",
                                    group=16), 16)])
    x = m.node("ReduceMean", [x], axes=[2, 3], keepdims=0)
    x = m.node("Add", [m.node("MatMul", [x, m.weight("k", 16, 10, fan_in=16)]), m.weight("kb", 10, fan_in=10)])
    return m, m.node("Softmax", [x], axis=-1)


ARCHITECTURES = {
    # name: (builder, input shape with the dynamic batch)
    "mobilenet": (mobilenet_block, ["N", 3, 32, 32]),
    "resnet": (resnet_block, ["N", 3, 40, 40]),
    "squeezenet": (squeezenet_fire, ["N", 3, 47, 47]),
    "unet": (unet_path, ["N", 3, 16, 20]),
    "keras_nhwc": (keras_nhwc, ["N", 31, 29, 3]),
}


def compare(model, batches, opt_level, seed=0):
    compiled = lc.compile(model, opt_level=opt_level)
    rng = np.random.default_rng(seed)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    for batch in batches:
        x = rng.standard_normal([batch] + shape[1:]).astype(np.float32)
        (want,), (got,) = ort_run(model, {"X": x}), compiled.run(None, {"X": x})
        assert got.shape == want.shape
        diff = float(np.max(np.abs(got - want)))
        assert diff <= ATOL, f"-O{opt_level} batch {batch}: max abs difference {diff}"
        if got.ndim == 2:
            np.testing.assert_array_equal(got.argmax(axis=1), want.argmax(axis=1))
    return compiled


@pytest.mark.parametrize("opt_level", [0, 3])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_architecture_matches_onnxruntime(arch, opt_level):
    build, shape = ARCHITECTURES[arch]
    m, out = build()
    model = m.model(shape, out)
    compiled = compare(model, (1, 3), opt_level)
    if opt_level == 3:  # the passes did their work: fewer kernels than nodes
        assert len(compiled.summary["kernels"]) < len(model.graph.node)


@pytest.mark.parametrize("arch", ["resnet", "mobilenet"])
def test_architecture_at_224(arch):
    build, _ = ARCHITECTURES[arch]
    m, out = build()
    compare(m.model(["N", 3, 224, 224], out), (2,), opt_level=3)
