"""Structure-aware fuzzing of the compiler: seed models, mutations, and a crash-proof worker.

``tests/test_fuzz.py`` draws a seed model and a few mutations with hypothesis
(``mutate``), serializes the result and hands the bytes to a worker process
(``Worker``), which compiles and runs the model. A case passes when it

* is refused with a ``LeptonError`` (any subclass), or
* compiles, and each run either raises ``InputError`` (refused before native
  code) or returns outputs that agree with the reference interpreter
  (``lepton_compiler.ops.interpret`` on the graph as imported, opt level 0).

Anything else fails: another exception type anywhere, a wrong shape or value, a
worker that dies (a segfault or an abort in native code: its signal is
reported) or that takes longer than ``CASE_TIMEOUT`` seconds (a hang). The
worker is a separate process so that a crash is reported as a failing case, not
a dead pytest; it is reused across cases (importing lepton and LLVM once) and
restarted after a crash or a hang.
"""

from __future__ import annotations

import math
import multiprocessing
import traceback
from typing import Callable, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CASE_TIMEOUT = 60.0
"""Seconds one case (compile and runs) may take in the worker before it counts as a hang."""

MEMORY_CAP = 1 << 30
"""``max_memory`` the worker compiles with: huge weights or workspaces are refused, not allocated."""

MAX_FEED_ELEMENTS = 1 << 22
"""Inputs larger than this (per feed) are not fed; the case then only compiles."""


# -- seed models -------------------------------------------------------------------------------
def _model(nodes, inputs, outputs, inits, opset=17):
    graph = helper.make_graph(nodes, "seed", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                                              for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
                              [numpy_helper.from_array(np.asarray(a), n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="fuzz-seed")
    model.ir_version = 8
    return model


def _w(rng, *shape):
    return (rng.standard_normal(shape) * 0.5).astype(np.float32)


def seed_cnn(rng):
    """Conv + Relu + MaxPool + Flatten + Gemm + Softmax: the MNIST CNN in miniature."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2", strides=[1, 1], dilations=[1, 1], group=1),
        helper.make_node("Flatten", ["c2"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["g"], name="dense", transB=1, alpha=1.0, beta=1.0),
        helper.make_node("Softmax", ["g"], ["y"], name="softmax", axis=-1),
    ]
    inits = {"w1": _w(rng, 4, 2, 3, 3), "b1": _w(rng, 4), "w2": _w(rng, 4, 4, 2, 2), "w3": _w(rng, 5, 36),
             "b3": _w(rng, 5)}
    return _model(nodes, [("x", ["N", 2, 8, 8])], [("y", ["N", 5])], inits)


def seed_elementwise(rng):
    """Broadcasting binary ops, activations, Clip, two outputs."""
    nodes = [
        helper.make_node("Add", ["x", "c"], ["a"], name="add"),
        helper.make_node("Mul", ["a", "z"], ["m"], name="mul"),
        helper.make_node("Sigmoid", ["m"], ["s"], name="sigmoid"),
        helper.make_node("Sub", ["s", "x"], ["d"], name="sub"),
        helper.make_node("Div", ["d", "k"], ["q"], name="div"),
        helper.make_node("Clip", ["q", "lo", "hi"], ["y"], name="clip"),
        helper.make_node("LeakyRelu", ["a"], ["y2"], name="leaky", alpha=0.1),
    ]
    inits = {"c": _w(rng, 3, 1), "k": np.array([2.0, -4.0, 8.0, 0.5], np.float32),
             "lo": np.array(-1.0, np.float32), "hi": np.array(1.5, np.float32)}
    return _model(nodes, [("x", ["N", 3, 4]), ("z", [1, 4])], [("y", ["N", 3, 4]), ("y2", ["N", 3, 4])], inits)


def seed_shapes(rng):
    """Reshape, Transpose, Concat, Slice, the Shape -> Gather -> Unsqueeze -> Concat chain, MatMul."""
    nodes = [
        helper.make_node("Reshape", ["x", "shape1"], ["r"], name="reshape"),
        helper.make_node("Transpose", ["r"], ["t"], name="transpose", perm=[0, 2, 1]),
        helper.make_node("Concat", ["t", "t"], ["cat"], name="concat", axis=2),
        helper.make_node("Slice", ["cat", "starts", "ends", "axes", "steps"], ["sl"], name="slice"),
        helper.make_node("Shape", ["x"], ["shp"], name="shape"),
        helper.make_node("Gather", ["shp", "zero"], ["n"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["n", "zero_axes"], ["n1"], name="unsqueeze"),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], name="target", axis=0),
        helper.make_node("Reshape", ["sl", "target"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "w"], ["y"], name="matmul"),
    ]
    inits = {"shape1": np.array([-1, 2, 3], np.int64), "starts": np.array([0, 1], np.int64),
             "ends": np.array([3, 4], np.int64), "axes": np.array([1, 2], np.int64),
             "steps": np.array([1, 2], np.int64), "zero": np.array(0, np.int64),
             "zero_axes": np.array([0], np.int64), "minus1": np.array([-1], np.int64), "w": _w(rng, 6, 4)}
    return _model(nodes, [("x", ["N", 6])], [("y", ["N", 4])], inits)


def seed_pooling(rng):
    """BatchNormalization, AveragePool with pads, a depthwise dilated Conv, global pools."""
    nodes = [
        helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["bn"], name="bn",
                         epsilon=1e-5),
        helper.make_node("AveragePool", ["bn"], ["ap"], name="avgpool", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         strides=[2, 2], count_include_pad=0),
        helper.make_node("Conv", ["ap", "dw"], ["dc"], name="depthwise", group=3, dilations=[2, 2],
                         pads=[2, 2, 2, 2]),
        helper.make_node("GlobalAveragePool", ["dc"], ["gap"], name="gap"),
        helper.make_node("GlobalMaxPool", ["bn"], ["gmp"], name="gmp"),
        helper.make_node("Add", ["gap", "gmp"], ["sum"], name="add"),
        helper.make_node("Flatten", ["sum"], ["y"], name="flatten"),
    ]
    inits = {"scale": _w(rng, 3), "bias": _w(rng, 3), "mean": _w(rng, 3),
             "var": np.abs(_w(rng, 3)) + 0.5, "dw": _w(rng, 3, 1, 3, 3)}
    return _model(nodes, [("x", ["N", 3, 7, 7])], [("y", ["N", 3])], inits)


def seed_reductions(rng):
    """ReduceMean, LogSoftmax, Pad, Split, Tanh, Gather on constant indices, opset 13."""
    nodes = [
        helper.make_node("Pad", ["x", "pads", "value"], ["p"], name="pad", mode="constant"),
        helper.make_node("Split", ["p", "split"], ["s1", "s2"], name="split", axis=2),
        helper.make_node("ReduceMean", ["s1"], ["rm"], name="reducemean", axes=[2], keepdims=1),
        helper.make_node("Tanh", ["s2"], ["th"], name="tanh"),
        helper.make_node("Mul", ["rm", "th"], ["m"], name="mul"),
        helper.make_node("LogSoftmax", ["m"], ["ls"], name="logsoftmax", axis=-1),
        helper.make_node("Gather", ["ls", "idx"], ["y"], name="gather", axis=1),
    ]
    inits = {"pads": np.array([0, 0, 1, 0, 0, 1], np.int64), "value": np.array(0.5, np.float32),
             "split": np.array([2, 4], np.int64), "idx": np.array([1, 0], np.int64)}
    return _model(nodes, [("x", ["N", 2, 4])], [("y", ["N", 2, 4])], inits, opset=13)


def _q(name, inputs, outputs, **attrs):
    return helper.make_node(name, inputs, outputs, name=outputs[0], **attrs)


def _int8(rng, *shape):
    return rng.integers(-100, 101, shape).astype(np.int8)


def seed_qdq(rng):
    """QDQ (what ``quantize_static`` writes): Q/DQ of the input, Conv on DQ'd int8 per-channel weights
    and an int32 bias, Relu, MaxPool, Q/DQ, Flatten, Gemm on DQ'd per-tensor weights, Q/DQ out.
    Power-of-two scales: the float layers and lepton's QConv / QGemm then round identically."""
    nodes = [
        _q("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        _q("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        _q("DequantizeLinear", ["w1", "w1s"], ["w1d"], axis=0),
        _q("DequantizeLinear", ["b1", "b1s"], ["b1d"], axis=0),
        helper.make_node("Conv", ["xd", "w1d", "b1d"], ["c1"], name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        _q("QuantizeLinear", ["p1", "s1", "z1"], ["p1q"]),
        _q("DequantizeLinear", ["p1q", "s1", "z1"], ["p1d"]),
        helper.make_node("Flatten", ["p1d"], ["f"], name="flatten", axis=1),
        _q("DequantizeLinear", ["w2", "w2s"], ["w2d"]),
        _q("DequantizeLinear", ["b2", "b2s"], ["b2d"]),
        helper.make_node("Gemm", ["f", "w2d", "b2d"], ["g"], name="dense", transB=1),
        _q("QuantizeLinear", ["g", "s2", "z2"], ["gq"]),
        _q("DequantizeLinear", ["gq", "s2", "z2"], ["y"]),
    ]
    w1s = np.float32(2.0) ** -rng.integers(5, 8, 4).astype(np.float32)
    inits = {"xs": np.float32(2 ** -5), "xz": np.uint8(128), "w1": _int8(rng, 4, 2, 3, 3), "w1s": w1s,
             "b1": rng.integers(-500, 500, 4).astype(np.int32), "b1s": (w1s * np.float32(2 ** -5)).astype(np.float32),
             "s1": np.float32(2 ** -3), "z1": np.uint8(0), "w2": _int8(rng, 5, 36), "w2s": np.float32(2 ** -8),
             "b2": rng.integers(-500, 500, 5).astype(np.int32), "b2s": np.float32(2 ** -11), "s2": np.float32(2 ** -2),
             "z2": np.uint8(128)}
    return _model(nodes, [("x", ["N", 2, 6, 6])], [("y", ["N", 5])], inits, opset=13)


def seed_qoperator(rng):
    """QOperator (``QuantFormat.QOperator``): QuantizeLinear, QLinearConv with per-channel int8
    weights and an int32 bias, the float DequantizeLinear -> Relu -> MaxPool -> QuantizeLinear
    glue ONNX Runtime writes between layers, Flatten on uint8, QLinearMatMul, DequantizeLinear."""
    nodes = [
        _q("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("QLinearConv", ["xq", "xs", "xz", "w1", "w1s", "w1z", "s1", "z1", "b1"], ["c1"], name="qconv1",
                         pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        _q("DequantizeLinear", ["c1", "s1", "z1"], ["c1d"]),
        helper.make_node("Relu", ["c1d"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        _q("QuantizeLinear", ["p1", "s1", "z1"], ["p1q"]),
        helper.make_node("Flatten", ["p1q"], ["f"], name="flatten", axis=1),
        helper.make_node("QLinearMatMul", ["f", "s1", "z1", "w2", "w2s", "w2z", "s2", "z2"], ["m"], name="qmatmul"),
        _q("DequantizeLinear", ["m", "s2", "z2"], ["y"]),
    ]
    inits = {"xs": np.float32(0.03), "xz": np.uint8(128), "w1": _int8(rng, 4, 2, 3, 3),
             "w1s": rng.uniform(0.005, 0.02, 4).astype(np.float32), "w1z": np.zeros(4, np.int8),
             "s1": np.float32(0.05), "z1": np.uint8(100), "b1": rng.integers(-500, 500, 4).astype(np.int32),
             "w2": _int8(rng, 36, 5), "w2s": np.float32(0.01), "w2z": np.int8(0), "s2": np.float32(0.2),
             "z2": np.uint8(128)}
    return _model(nodes, [("x", ["N", 2, 6, 6])], [("y", ["N", 5])], inits, opset=13)


SEEDS: dict[str, Callable] = {f.__name__[5:]: f for f in (seed_cnn, seed_elementwise, seed_shapes, seed_pooling,
                                                          seed_reductions)}
QUANTIZED_SEEDS: dict[str, Callable] = {f.__name__[5:]: f for f in (seed_qdq, seed_qoperator)}


def seed_model(name: str) -> onnx.ModelProto:
    return {**SEEDS, **QUANTIZED_SEEDS}[name](np.random.default_rng(sum(map(ord, name))))


# -- mutations ---------------------------------------------------------------------------------
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
INTERESTING_INTS = [0, 1, -1, 2, 3, 4, 7, -2, 255, 1 << 16, (1 << 31) - 1, 1 << 31, 1 << 32, 1 << 40, 1 << 62,
                    INT64_MIN, INT64_MAX]
INTERESTING_FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-45, 1e-38, 1e30, -1e30, 3.4e38, math.inf, -math.inf,
                      math.nan]
STRINGS = ["", "NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER", "constant", "reflect", "edge", "garbage", "\xff"]
ATTRIBUTE_NAMES = ["axis", "axes", "kernel_shape", "strides", "pads", "dilations", "group", "perm", "to",
                   "auto_pad", "ceil_mode", "count_include_pad", "alpha", "beta", "transA", "transB", "keepdims",
                   "epsilon", "split", "mode", "value", "min", "max", "output_padding", "output_shape", "size",
                   "starts", "ends", "training_mode", "allowzero", "num_outputs", "noop_with_empty_axes"]
OPS = ["Conv", "Relu", "MaxPool", "AveragePool", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Softmax",
       "LogSoftmax", "Flatten", "Reshape", "Transpose", "Concat", "Slice", "Gather", "Shape", "Unsqueeze",
       "Squeeze", "Sigmoid", "Tanh", "Clip", "BatchNormalization", "GlobalAveragePool", "GlobalMaxPool", "Pad",
       "Split", "ReduceMean", "ReduceSum", "ReduceMax", "Identity", "Dropout", "Cast", "Expand", "ConvTranspose",
       "LeakyRelu", "Sum", "Max", "Min", "Pow", "Sqrt", "Exp", "Log", "Constant", "ConstantOfShape", "Range",
       "LRN", "InstanceNormalization", "PRelu", "Frobnicate", "Loop", "If", "Resize", "QuantizeLinear",
       "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"]
DTYPES = [TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32, TensorProto.DOUBLE, TensorProto.FLOAT16,
          TensorProto.BOOL, TensorProto.UINT8, TensorProto.STRING, TensorProto.BFLOAT16, TensorProto.COMPLEX64,
          TensorProto.UNDEFINED, 99]


class Chooser:
    """What a mutation draws its choices from (a hypothesis ``data`` object, or a numpy generator)."""

    def __init__(self, draw_index: Callable[[int, str], int]):
        self._index = draw_index

    @classmethod
    def from_hypothesis(cls, data):
        from hypothesis import strategies as st
        return cls(lambda n, label: data.draw(st.integers(0, n - 1), label=label))

    @classmethod
    def from_rng(cls, rng: np.random.Generator):
        return cls(lambda n, label: int(rng.integers(n)))

    def index(self, n: int, label: str = "index") -> int:
        return self._index(n, label) if n > 1 else 0

    def choice(self, items, label: str = "choice"):
        items = list(items)
        return items[self.index(len(items), label)]

    def boolean(self, label: str = "flag") -> bool:
        return self.index(2, label) == 1

    def small_int(self, label: str = "int") -> int:
        """Mostly small ints, sometimes an interesting extreme."""
        if self.index(4, label + " kind") == 0:
            return self.choice(INTERESTING_INTS, label)
        return self.index(12, label) - 3

    def float_value(self, finite: bool, label: str = "float") -> float:
        values = [v for v in INTERESTING_FLOATS if math.isfinite(v) or not finite]
        return self.choice(values, label)


def _value_names(model: onnx.ModelProto) -> list[str]:
    g = model.graph
    names = [i.name for i in g.input] + [i.name for i in g.initializer]
    for node in g.node:
        names += list(node.output)
    return names


def _attribute_value(c: Chooser, kind: int):
    A = onnx.AttributeProto
    if kind == A.INT:
        return c.small_int()
    if kind == A.INTS:
        return [c.small_int() for _ in range(c.index(6, "list length"))]
    if kind == A.FLOAT:
        return c.float_value(finite=False)
    if kind == A.FLOATS:
        return [c.float_value(finite=False) for _ in range(c.index(4, "list length"))]
    if kind == A.STRING:
        return c.choice(STRINGS)
    return numpy_helper.from_array(np.array([c.small_int()] * c.index(3, "tensor length"), np.int64))


def _set_attribute(node: onnx.NodeProto, name: str, value) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def m_attribute_value(model, c: Chooser) -> str:
    nodes = [n for n in model.graph.node if n.attribute]
    if not nodes:
        return m_attribute_add(model, c)
    node = c.choice(nodes, "node")
    attr = c.choice(node.attribute, "attribute")
    A = onnx.AttributeProto
    if attr.type == A.INTS and attr.ints and c.boolean("edit one element"):
        attr.ints[c.index(len(attr.ints), "element")] = c.small_int()
    elif attr.type == A.TENSOR:
        _mutate_tensor(attr.t, c)
    else:
        _set_attribute(node, attr.name, _attribute_value(c, attr.type))
    return f"attribute {node.name}.{attr.name}"


def m_attribute_type(model, c: Chooser) -> str:
    nodes = [n for n in model.graph.node if n.attribute]
    if not nodes:
        return m_attribute_add(model, c)
    node = c.choice(nodes, "node")
    attr = c.choice(node.attribute, "attribute")
    A = onnx.AttributeProto
    kind = c.choice([A.INT, A.INTS, A.FLOAT, A.FLOATS, A.STRING, A.TENSOR], "attribute type")
    _set_attribute(node, attr.name, _attribute_value(c, kind))
    return f"attribute type {node.name}.{attr.name}"


def m_attribute_add(model, c: Chooser) -> str:
    node = c.choice(model.graph.node, "node")
    name = c.choice(ATTRIBUTE_NAMES, "attribute name")
    A = onnx.AttributeProto
    _set_attribute(node, name, _attribute_value(c, c.choice([A.INT, A.INTS, A.FLOAT, A.STRING], "type")))
    return f"add attribute {node.name}.{name}"


def m_attribute_remove(model, c: Chooser) -> str:
    nodes = [n for n in model.graph.node if n.attribute]
    if not nodes:
        return "no attribute to remove"
    node = c.choice(nodes, "node")
    del node.attribute[c.index(len(node.attribute), "attribute")]
    return f"remove attribute of {node.name}"


def m_node_op(model, c: Chooser) -> str:
    node = c.choice(model.graph.node, "node")
    if c.index(6, "op or domain") == 0:
        node.domain = c.choice(["com.microsoft", "ai.onnx", "ai.onnx.ml", "x"], "domain")
    else:
        node.op_type = c.choice(OPS, "op")
    return f"op of {node.name}: {node.domain}:{node.op_type}"


def m_node_io(model, c: Chooser) -> str:
    node = c.choice(model.graph.node, "node")
    names = _value_names(model) + ["", "ghost"]
    action = c.index(4, "io action")
    if action == 0 and node.input:
        node.input[c.index(len(node.input), "input")] = c.choice(names, "value")
    elif action == 1:
        node.input.append(c.choice(names, "value"))
    elif action == 2 and node.input:
        del node.input[c.index(len(node.input), "input")]
    elif node.output:
        node.output[c.index(len(node.output), "output")] = c.choice(names, "value")
    return f"io of {node.name}"


def m_nodes(model, c: Chooser) -> str:
    g = model.graph
    action = c.index(3, "node action")
    i = c.index(len(g.node), "node")
    if action == 0:
        del g.node[i]
    elif action == 1:
        g.node.append(onnx.NodeProto.FromString(g.node[i].SerializeToString()))
    else:
        j = c.index(len(g.node), "other node")
        a, b = (onnx.NodeProto.FromString(g.node[k].SerializeToString()) for k in (i, j))
        g.node[i].CopyFrom(b)
        g.node[j].CopyFrom(a)
    return f"nodes: {['delete', 'duplicate', 'swap'][action]}"


def m_graph_io(model, c: Chooser) -> str:
    g = model.graph
    infos = list(g.input) + list(g.output)
    info = c.choice(infos, "value info")
    tensor = info.type.tensor_type
    action = c.index(6, "dims action")
    if action == 0 and tensor.shape.dim:
        dim = tensor.shape.dim[c.index(len(tensor.shape.dim), "dim")]
        if c.boolean("symbolic"):
            dim.dim_param = c.choice(["N", "M", ""], "symbol")
        elif c.boolean("small"):
            dim.dim_value = c.index(17, "dim")
        else:
            dim.dim_value = c.choice(INTERESTING_INTS[:-2], "dim")
    elif action == 1:
        tensor.elem_type = c.choice(DTYPES, "dtype")
    elif action == 2:
        tensor.ClearField("shape")
    elif action == 3:
        tensor.shape.dim.add().dim_value = c.choice([1, 2, 0], "new dim")
    elif action == 4 and tensor.shape.dim:
        del tensor.shape.dim[c.index(len(tensor.shape.dim), "dim")]
    else:
        collection = g.input if c.boolean("input or output") else g.output
        if collection and c.boolean("delete or rename"):
            del collection[c.index(len(collection), "which")]
        elif collection:
            collection[c.index(len(collection), "which")].name = c.choice(_value_names(model) + ["ghost"], "name")
    return f"graph io {info.name}"


def _mutate_tensor(t: TensorProto, c: Chooser) -> None:
    action = c.index(6, "tensor action")
    try:
        array = numpy_helper.to_array(t).copy()
    except Exception:
        array = None
    if action == 0 and array is not None and array.size:
        flat = array.reshape(-1)
        for _ in range(1 + c.index(3, "values")):
            k = c.index(flat.size, "element")
            if array.dtype.kind == "f":
                flat[k] = c.float_value(finite=c.index(4, "finite") != 0)
            elif array.dtype.kind in "iu":
                flat[k] = np.array(c.small_int()).astype(array.dtype)
        t.CopyFrom(numpy_helper.from_array(array, t.name))
    elif action == 1 and t.dims:
        t.dims[c.index(len(t.dims), "dim")] = c.choice(INTERESTING_INTS[:-2] + [5], "dim")
    elif action == 2 and array is not None and array.size:
        # consistent new dims (same elements), data and dims still agree
        t.CopyFrom(numpy_helper.from_array(array.reshape(-1) if array.ndim != 1 else array.reshape(1, -1), t.name))
    elif action == 3:
        t.data_type = c.choice(DTYPES, "dtype")
    elif action == 4 and t.raw_data:
        raw = bytearray(t.raw_data)
        cut = c.index(len(raw) + 1, "cut")
        t.raw_data = bytes(raw[:cut])
    elif array is not None:
        # the same values in the typed field instead of raw_data
        t.CopyFrom(helper.make_tensor(t.name, t.data_type, list(array.shape), array.reshape(-1).tolist())
                   if array.dtype.kind in "fiub" and t.data_type not in (TensorProto.FLOAT16, TensorProto.BFLOAT16)
                   else t)


def m_initializer(model, c: Chooser) -> str:
    g = model.graph
    if not g.initializer:
        return "no initializer"
    t = g.initializer[c.index(len(g.initializer), "initializer")]
    if c.index(8, "delete") == 0:
        name = t.name
        g.initializer.remove(t)
        return f"delete initializer {name}"
    _mutate_tensor(t, c)
    return f"initializer {t.name}"


def m_opset(model, c: Chooser) -> str:
    action = c.index(4, "opset action")
    if action == 0:
        model.opset_import[0].version = c.choice([1, 6, 7, 9, 11, 12, 13, 17, 18, 21, 99], "opset")
    elif action == 1:
        model.ir_version = c.choice([0, 1, 3, 7, 8, 10, 99], "ir version")
    elif action == 2:
        model.opset_import[0].domain = c.choice(["ai.onnx", "com.microsoft", "x"], "domain")
    else:
        model.opset_import.add().CopyFrom(helper.make_opsetid(c.choice(["x", "ai.onnx.ml"], "extra"), 1))
    return "opset"


MUTATIONS = [m_attribute_value, m_attribute_value, m_attribute_type, m_attribute_add, m_attribute_remove,
             m_node_op, m_node_io, m_nodes, m_graph_io, m_graph_io, m_initializer, m_initializer, m_opset]


QUANT_PARAMS = {"QuantizeLinear": (1, 2), "DequantizeLinear": (0, 1, 2), "QLinearConv": (1, 2, 3, 4, 5, 6, 7, 8),
                "QLinearMatMul": (1, 2, 3, 4, 5, 6, 7)}
"""The inputs of quantization ops that hold scales, zero points, int8 weights and int32 biases."""
QUANT_FLOATS = [0.0, -0.0, -0.05, 2.0 ** -3, 1.0, 1e-45, 1e-39, 1.2e-38, 1e-30, 1e-20, 1e20, 1e30, 3.4e38, math.inf,
                -math.inf, math.nan]


def m_quant_param(model, c: Chooser) -> str:
    """One element of a scale, zero point, int8 weight or int32 bias set to an awkward value (zero,
    negative, subnormal, huge, inf, NaN; an integer extreme), or the parameter made per-axis or
    given another dtype."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    names = sorted({n.input[i] for n in g.node if n.op_type in QUANT_PARAMS for i in QUANT_PARAMS[n.op_type]
                    if i < len(n.input) and n.input[i] in inits})
    if not names:
        return m_initializer(model, c)
    t = inits[c.choice(names, "quant parameter")]
    try:
        array = numpy_helper.to_array(t).copy()
    except Exception:  # an earlier mutation made it unreadable: a general mutation instead
        _mutate_tensor(t, c)
        return f"initializer {t.name}"
    action = c.index(4, "quant action")
    if action <= 1 and array.size:
        flat = array.reshape(-1)
        k = c.index(flat.size, "element")
        if array.dtype.kind == "f":
            flat[k] = c.choice(QUANT_FLOATS, "scale")
        else:
            info = np.iinfo(array.dtype)
            flat[k] = c.choice([info.min, info.max, 0, 1, -1 if info.min < 0 else 2, info.min + 1], "integer")
    elif action == 2:
        size = c.choice([1, 2, 3, 4, 5, 36], "length")
        array = np.resize(array.reshape(-1), size).reshape(size if c.boolean("1-D") or size != 1 else ())
    else:
        dtype = c.choice([np.float32, np.int8, np.uint8, np.int32, np.int16, np.float64], "dtype")
        array = array.astype(dtype)
    t.CopyFrom(numpy_helper.from_array(array, t.name))
    return f"quant parameter {t.name}"


def m_quant_axis(model, c: Chooser) -> str:
    nodes = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not nodes:
        return m_attribute_add(model, c)
    node = c.choice(nodes, "node")
    _set_attribute(node, "axis", c.choice([-5, -1, 0, 1, 2, 3, 4], "axis"))
    return f"axis of {node.name}"


QUANT_MUTATIONS = MUTATIONS + [m_quant_param] * 4 + [m_quant_axis]
"""The quantized seeds' mutations: the general ones, and mostly their quantization parameters."""


def mutate_bytes(data: bytes, c: Chooser) -> bytes:
    buf = bytearray(data)
    for _ in range(1 + c.index(4, "byte edits")):
        if not buf:
            break
        action = c.index(4, "byte action")
        k = c.index(len(buf), "offset")
        if action == 0:
            buf[k] ^= 1 << c.index(8, "bit")
        elif action == 1:
            buf[k] = c.choice([0x00, 0xFF, 0x7F, 0x80, 0x08, 0x12], "byte")
        elif action == 2:
            del buf[k:k + 1 + c.index(16, "length")]
        else:
            buf = buf[:k]
    return bytes(buf)


def mutate(c: Chooser, seeds=None) -> tuple[str, bytes, list[str]]:
    """A seed model (one of ``seeds``, default ``SEEDS``) with 1-4 mutations: (seed name,
    serialized model, what was done)."""
    name = c.choice(sorted(SEEDS if seeds is None else seeds), "seed")
    model = seed_model(name)
    mutations = QUANT_MUTATIONS if name in QUANTIZED_SEEDS else MUTATIONS
    done = []
    for _ in range(1 + c.index(4, "mutations")):
        try:
            done.append(c.choice(mutations, "mutation")(model, c))
        except (ValueError, TypeError, IndexError) as exc:
            # protobuf refused the value (out of the field's range): that edit is not made
            done.append(f"refused by protobuf: {exc}")
    data = model.SerializeToString()
    if c.index(5, "bytes") == 0:
        data = mutate_bytes(data, c)
        done.append("bytes")
    return name, data, done


# -- the worker --------------------------------------------------------------------------------
def _feed(inputs, batch: int, rng) -> Optional[dict]:
    feed = {}
    for info in inputs:
        shape = tuple(batch if isinstance(d, str) else d for d in info.shape)
        if math.prod(shape) > MAX_FEED_ELEMENTS:
            return None
        dtype = np.dtype(info.dtype)
        if dtype.kind == "f":
            feed[info.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[info.name] = rng.integers(0, 2, shape).astype(dtype)
    return feed


QUANT_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger")
ROUNDING_SHARE = 0.05
"""Of a quantized model's outputs, the share of elements that may differ between the graph as
imported and the graph after the quantization passes (see ``run_case``)."""


def _agree_rounding(got: np.ndarray, want: np.ndarray) -> Optional[str]:
    """``_agree``, but up to ROUNDING_SHARE of the elements may differ (by any amount)."""
    if got.shape != want.shape or got.dtype != want.dtype or not got.size:
        return _agree(got, want)
    if got.dtype.kind == "f":
        scale = 1.0 + float(np.max(np.abs(want[np.isfinite(want)]), initial=0.0))
        with np.errstate(all="ignore"):
            off = ~((np.abs(got.astype(np.float64) - want) <= 1e-3 * scale) | (np.isnan(got) & np.isnan(want))
                    | (got == want))
    else:
        off = got != want
    share = float(off.mean())
    return None if share <= ROUNDING_SHARE else f"{share:.0%} of the elements differ after the quantization passes"


def _agree(got: np.ndarray, want: np.ndarray) -> Optional[str]:
    if got.shape != want.shape:
        return f"shape {got.shape} != reference {want.shape}"
    if got.dtype != want.dtype:
        return f"dtype {got.dtype} != reference {want.dtype}"
    if got.dtype.kind != "f":
        return None if np.array_equal(got, want) else "values differ"
    if _extreme_values:
        return None  # float32 code and the float64 reference overflow differently: shapes only
    finite = np.isfinite(want) & np.isfinite(got)
    if not np.array_equal(np.isnan(got), np.isnan(want)):
        return "NaN positions differ"
    scale = 1.0 + float(np.max(np.abs(want[finite]), initial=0.0))
    err = float(np.max(np.abs(got[finite].astype(np.float64) - want[finite]), initial=0.0))
    if err > 1e-3 * scale:
        return f"max error {err:.3g} (scale {scale:.3g})"
    return None


_extreme_values = False


def _has_extreme_values(graph) -> bool:
    """Whether a constant or a float attribute is non-finite or so large that float32 arithmetic
    overflows where the reference's float64 does not."""
    def extreme(a) -> bool:
        a = np.asarray(a)
        return a.dtype.kind == "f" and a.size > 0 and not np.all(np.abs(a.astype(np.float64)) < 1e18)
    if any(extreme(c.const) for c in graph.constants):
        return True
    for node in graph.nodes:
        for value in node.attrs.values():
            if isinstance(value, float) and not abs(value) < 1e18:
                return True
            if isinstance(value, (list, np.ndarray)) and np.asarray(value).dtype.kind == "f" and extreme(value):
                return True
    return False


def run_case(data: bytes, opt_level: int = 3, seed: int = 0) -> dict:
    """Compile and run one model; the outcome as a dict (see the module docstring)."""
    global _extreme_values
    import lepton_compiler as lc
    from lepton_compiler.ops import interpret

    try:
        model = lc.compile(data, opt_level=opt_level, max_memory=MEMORY_CAP)
    except lc.LeptonError as exc:
        if str(exc).startswith("internal error"):
            cause = "".join(traceback.format_exception(exc.__cause__)) if exc.__cause__ else ""
            return {"outcome": "fail", "why": f"compile: {type(exc).__name__}: {exc}\n{cause}"}
        return {"outcome": "refused", "error": type(exc).__name__, "message": str(exc)}
    except BaseException:
        return {"outcome": "fail", "why": "compile raised a non-lepton exception:\n" + traceback.format_exc()}
    try:
        reference = lc.optimize(data, opt_level=0)
    except BaseException:
        return {"outcome": "fail", "why": "compiled, but importing again failed:\n" + traceback.format_exc()}
    _extreme_values = _has_extreme_values(reference)
    # A quantized model: a fused QConv / QGemm rounds its accumulator once, where the imported
    # float layer on dequantized values rounds each product, so a value next to a rounding
    # boundary may come out one quantization step apart (the passes keep the standard form
    # wherever that is more than rounding: fuse_qdq's conditions). The compiled code must equal
    # the interpreter on the graph it compiled; that graph may differ from the imported one in
    # a few elements only (ROUNDING_SHARE: a miscompiled pass changes far more).
    optimized = None
    if any(n.op in QUANT_OPS for n in reference.nodes):
        try:
            optimized = lc.optimize(data, opt_level=opt_level)
        except BaseException:
            return {"outcome": "fail", "why": "compiled, but optimizing again failed:\n" + traceback.format_exc()}
    rng = np.random.default_rng(seed)
    runs = []
    for batch in (1, 3):
        feed = _feed(model.inputs, batch, rng)
        if feed is None:
            runs.append("too big to feed")
            continue
        try:
            got = model.run(None, feed)
        except lc.InputError as exc:
            runs.append(f"InputError: {exc}")
            continue
        except BaseException:
            return {"outcome": "fail", "why": f"run at batch {batch} raised:\n" + traceback.format_exc()}
        try:
            with np.errstate(all="ignore"):
                want = interpret(reference, feed)
        except Exception as exc:
            return {"outcome": "fail", "why": f"compiled code ran at batch {batch}, the reference failed: {exc!r}"}
        exact = want
        if optimized is not None:
            try:
                with np.errstate(all="ignore"):
                    exact = interpret(optimized, feed)
            except Exception as exc:
                return {"outcome": "fail", "why": f"batch {batch}: the optimized graph's reference failed: {exc!r}"}
        for i, (g, w, e) in enumerate(zip(got, want, exact)):
            problem = _agree(g, np.asarray(e))
            if problem is None and optimized is not None:
                problem = _agree_rounding(np.asarray(e), np.asarray(w))
            if problem:
                return {"outcome": "fail", "why": f"batch {batch}, output {i} ({model.outputs[i].name}): {problem}"}
        runs.append("agrees")
    return {"outcome": "compiled", "runs": runs}


CRASH_PROBE, HANG_PROBE = b"fuzzing: crash the worker", b"fuzzing: hang the worker"
"""Requests that make the worker die of SIGSEGV or never answer: the harness's own tests."""


def _serve(conn) -> None:
    import os
    import signal
    import time

    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request[0] == CRASH_PROBE:
            os.kill(os.getpid(), signal.SIGSEGV)
        if request[0] == HANG_PROBE:
            time.sleep(3600)
        conn.send(run_case(*request))


class Worker:
    """One worker process, reused across cases; ``run`` returns the case's outcome dict, with
    ``outcome="fail"`` for a worker that died (signal) or hung."""

    def __init__(self):
        self._ctx = multiprocessing.get_context("spawn")
        self._proc = None
        self._conn = None

    def _start(self):
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_serve, args=(child,), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent

    def run(self, data: bytes, opt_level: int = 3, seed: int = 0, timeout: float = CASE_TIMEOUT) -> dict:
        if self._proc is None or not self._proc.is_alive():
            self._start()
        self._conn.send((data, opt_level, seed))
        if not self._conn.poll(timeout):
            self.close(graceful=False)
            return {"outcome": "fail", "why": f"hang: no answer in {timeout:.0f} s"}
        try:
            return self._conn.recv()
        except EOFError:
            self._proc.join(5)
            code = self._proc.exitcode
            self._proc = None
            return {"outcome": "fail", "why": f"the worker died (exit code {code}; a negative code is a signal)"}

    def close(self, graceful: bool = True) -> None:
        """Stop the worker: it exits by itself when its pipe closes; one that hangs is killed."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            self._proc.join(10 if graceful else 0)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
            self._proc = None
