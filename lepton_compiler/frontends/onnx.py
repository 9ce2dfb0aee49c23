"""ONNX -> IR import and IR -> ONNX export.

Import goes through one table, ``CONVERTERS[(domain, op)] = {since_version: converter}``:
the converter with the highest ``since_version`` not above the model's opset is used.
IR ops have the semantics of the ONNX op of the same name at opset 17; converters
for older versions rewrite into that form (``Softmax`` before 13, ``Unsqueeze``'s
axes attribute, ...).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Union

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import defs, helper, numpy_helper

from ..errors import LeptonError, ModelFormatError, UnsupportedOpError
from ..ir import Graph, Node, TensorType, Value
from ..ops import infer_node
from ..ops.inference import MAX_ELEMENTS, elements_per_item
from .expand import EXPANSIONS

EXPORT_OPSET = 17
MIN_OPSET = 7
ModelSource = Union[str, "os.PathLike[str]", bytes, onnx.ModelProto]


# -- loading ---------------------------------------------------------------------------------
def load_onnx(source: ModelSource) -> onnx.ModelProto:
    """Read a model from a path, bytes or a ModelProto, with project errors for bad input."""
    if isinstance(source, onnx.ModelProto):
        _check_text(source, "the model")
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        where = "the given bytes"
    elif isinstance(source, (str, os.PathLike)):
        where = os.fspath(source)
        try:
            with open(where, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ModelFormatError(f"cannot read model '{where}': {exc.strerror or exc}") from None
    else:
        raise ModelFormatError(f"expected a path, bytes or onnx.ModelProto, got {type(source).__name__}")
    try:
        model = onnx.ModelProto()
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelFormatError(f"{where} is not an ONNX model: {exc}") from None
    if not model.HasField("graph") or model.ir_version <= 0:
        raise ModelFormatError(f"{where} is not an ONNX model (no graph or IR version)")
    _check_text(model, where)
    if isinstance(source, (str, os.PathLike)) and _uses_external_data(model):
        try:
            onnx.load_external_data_for_model(model, os.path.dirname(os.path.abspath(where)))
        except (OSError, ValueError) as exc:
            raise ModelFormatError(f"cannot load the external data of '{where}': {exc}") from None
    return model


def _check_text(message, where: str) -> None:
    """Refuse string fields (names, op types, domains, dim params) that are not valid UTF-8: protobuf
    then hands them over as bytes, which no part of lepton expects."""
    for field, value in message.ListFields():
        if field.type not in (field.TYPE_STRING, field.TYPE_MESSAGE):
            continue
        repeated = getattr(field, "is_repeated", None)
        if repeated is None:  # protobuf before 5
            repeated = field.label == field.LABEL_REPEATED
        for item in (value if repeated else [value]):
            if field.type == field.TYPE_MESSAGE:
                _check_text(item, where)
            elif isinstance(item, bytes):
                raise ModelFormatError(f"{where} is not a valid ONNX model: a {field.containing_type.name} "
                                       f"{field.name} is not UTF-8 text ({item[:40]!r})")


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise ModelFormatError("the model imports no version of the default ONNX domain")


# -- the converter table ----------------------------------------------------------------------
class ImportContext:
    """What a converter sees: the values by name and a way to add IR nodes and constants."""

    def __init__(self, opset: int):
        self.opset = opset
        self.values: dict[str, Value] = {}
        self.nodes: list[Node] = []
        self.constants: list[Value] = []
        self._names: set[str] = set()

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def value(self, name: str) -> Optional[Value]:
        if name == "":
            return None
        if name not in self.values:
            raise ModelFormatError(f"value '{name}' is used but never defined")
        return self.values[name]

    def define(self, name: str, value: Value) -> None:
        if name in self.values:
            raise ModelFormatError(f"value '{name}' is defined more than once")
        self._names.add(name)
        self.values[name] = value

    def constant(self, base: str, array: np.ndarray) -> Value:
        value = Value(self.fresh(base), TensorType.of(array), array)
        self.constants.append(value)
        return value

    def add(self, op: str, name: str, inputs: list[Optional[Value]], output_names: list[str],
            attrs: Optional[dict[str, Any]] = None) -> Node:
        """Add an IR node; outputs get placeholder types until inference runs."""
        outputs = []
        for out in output_names:
            out = out or self.fresh(f"{name}_unused_output")  # an optional output left out
            value = Value(out, TensorType("float32", ()))
            if out in self.values:
                raise ModelFormatError(f"value '{out}' is defined more than once")
            self.values[out] = value
            self._names.add(out)
            outputs.append(value)
        node = Node(op, name, inputs, outputs, attrs)
        self.nodes.append(node)
        return node


Converter = Callable[[ImportContext, onnx.NodeProto, str, dict[str, Any]], None]
CONVERTERS: dict[tuple[str, str], dict[int, Converter]] = {}


def converter(op: str, since: int = 1, domain: str = ""):
    def decorate(fn: Converter) -> Converter:
        CONVERTERS.setdefault((domain, op), {})[since] = fn
        return fn
    return decorate


def find_converter(domain: str, op: str, opset: int) -> Optional[Converter]:
    versions = CONVERTERS.get((domain, op), {})
    usable = [v for v in versions if v <= opset]
    return versions[max(usable)] if usable else None


def _inputs(ctx: ImportContext, proto: onnx.NodeProto) -> list[Optional[Value]]:
    return [ctx.value(name) for name in proto.input]


def same(op: str) -> Converter:
    """A converter for ops whose ONNX form is already the IR form."""
    def convert(ctx, proto, name, attrs):
        ctx.add(op, name, _inputs(ctx, proto), list(proto.output), attrs)
    return convert


for _op in ("Conv", "Relu", "MaxPool", "Flatten", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div",
            "Identity", "Shape", "Gather", "Concat", "Cast", "LeakyRelu", "Sigmoid", "Tanh", "Transpose"):
    converter(_op)(same(_op))
for _op in ("ConvTranspose", "InstanceNormalization", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LRN",
            "PRelu", "Elu", "Selu", "HardSigmoid", "Exp", "Log", "Sqrt", "Neg", "Abs", "Erf", "ReduceMean",
            "ReduceMax"):
    converter(_op)(same(_op))
for _op, _since in (("Expand", 8), ("ConstantOfShape", 9), ("Range", 11), ("Pad", 11), ("Split", 13),
                    ("ReduceSum", 13), ("LogSoftmax", 13)):
    converter(_op, since=_since)(same(_op))
converter("HardSwish", since=14)(same("HardSwish"))
converter("Clip", since=11)(same("Clip"))
converter("Reshape", since=5)(same("Reshape"))
converter("Softmax", since=13)(same("Softmax"))
converter("Unsqueeze", since=13)(same("Unsqueeze"))
converter("Squeeze", since=13)(same("Squeeze"))
converter("Slice", since=10)(same("Slice"))


@converter("Gemm", since=1)
def convert_gemm(ctx, proto, name, attrs):
    attrs.pop("broadcast", None)  # opsets before 7: C always broadcasts in the IR
    ctx.add("Gemm", name, _inputs(ctx, proto), list(proto.output), attrs)


def _coerced_2d(op: str) -> Converter:
    """Before opset 13 Softmax and LogSoftmax flatten to 2-D at ``axis`` and normalize each row."""
    def convert(ctx, proto, name, attrs):
        (x,) = _inputs(ctx, proto)
        axis = attrs.get("axis", 1)
        rank = x.type.rank
        axis = axis + rank if axis < 0 else axis
        if axis == rank - 1:
            ctx.add(op, name, [x], list(proto.output), {"axis": -1})
            return
        flat, soft, shape = ctx.fresh(f"{name}_2d"), ctx.fresh(f"{name}_rows"), ctx.fresh(f"{name}_shape")
        ctx.add("Flatten", ctx.fresh(f"{name}_flatten"), [x], [flat], {"axis": axis})
        ctx.add(op, name, [ctx.values[flat]], [soft], {"axis": -1})
        ctx.add("Shape", ctx.fresh(f"{name}_shape_of"), [x], [shape])
        ctx.add("Reshape", ctx.fresh(f"{name}_restore"), [ctx.values[soft], ctx.values[shape]], list(proto.output))
    return convert


convert_softmax_v1 = converter("Softmax", since=1)(_coerced_2d("Softmax"))
converter("LogSoftmax", since=1)(_coerced_2d("LogSoftmax"))


def _axes_attr_to_input(op: str) -> Converter:
    def convert(ctx, proto, name, attrs):
        inputs = _inputs(ctx, proto)
        if "axes" in attrs:
            inputs.append(ctx.constant(f"{name}_axes", np.array(attrs.pop("axes"), np.int64)))
        ctx.add(op, name, inputs, list(proto.output), attrs)
    return convert


converter("Unsqueeze", since=1)(_axes_attr_to_input("Unsqueeze"))
converter("Squeeze", since=1)(_axes_attr_to_input("Squeeze"))
converter("ReduceSum", since=1)(_axes_attr_to_input("ReduceSum"))


def _unsupported(ctx, proto, name, reason: str) -> UnsupportedOpError:
    return UnsupportedOpError([(proto.op_type, name, proto.domain, ctx.opset)], reason)


def _known_input(ctx, proto, name, index: int, what: str) -> Optional[np.ndarray]:
    """The compile-time value of an optional input (None when the input is absent)."""
    inputs = _inputs(ctx, proto)
    value = inputs[index] if len(inputs) > index else None
    if value is None:
        return None
    if value.known is None or value.known.dtype == object:
        raise _unsupported(ctx, proto, name, f"{what} must be known at compile time")
    return value.known


@converter("ReduceMean", since=18)
@converter("ReduceMax", since=18)
def convert_reduce_v18(ctx, proto, name, attrs):
    """Opset 18 moved ``axes`` to an input; the IR keeps opset 17's attribute."""
    inputs = _inputs(ctx, proto)
    axes = _known_input(ctx, proto, name, 1, "axes")
    if axes is not None and axes.size:
        attrs["axes"] = [int(a) for a in axes.ravel()]
    elif attrs.pop("noop_with_empty_axes", 0):
        ctx.add("Identity", name, inputs[:1], list(proto.output))
        return
    attrs.pop("noop_with_empty_axes", None)
    ctx.add(proto.op_type, name, inputs[:1], list(proto.output), attrs)


@converter("Split", since=1)
def convert_split_v2(ctx, proto, name, attrs):
    """Before opset 13 the sizes are the ``split`` attribute; the IR takes them as an input."""
    inputs = _inputs(ctx, proto)[:1]
    if attrs.get("split"):
        inputs.append(ctx.constant(f"{name}_split", np.array(attrs.pop("split"), np.int64)))
    attrs.pop("split", None)
    ctx.add("Split", name, inputs, list(proto.output), attrs)


@converter("Split", since=18)
def convert_split_v18(ctx, proto, name, attrs):
    """``num_outputs`` (opset 18): equal parts of ceil(dim / n), the last one smaller."""
    inputs = _inputs(ctx, proto)
    count = attrs.pop("num_outputs", None)
    if count is not None and (len(inputs) < 2 or inputs[1] is None):
        x = inputs[0]
        axis = attrs.get("axis", 0)
        dim = x.type.shape[axis] if -x.type.rank <= axis < x.type.rank else None
        if not isinstance(dim, int):
            raise _unsupported(ctx, proto, name, f"splitting dim {dim} into num_outputs parts needs a static dim")
        part = -(-dim // count)
        sizes = [min(part, max(dim - i * part, 0)) for i in range(len(proto.output))]
        inputs = [x, ctx.constant(f"{name}_split", np.array(sizes, np.int64))]
    ctx.add("Split", name, inputs, list(proto.output), attrs)


@converter("Pad", since=1)
def convert_pad_v2(ctx, proto, name, attrs):
    """Before opset 11 ``pads`` and ``value`` are attributes; the IR takes them as inputs."""
    (x,) = _inputs(ctx, proto)
    pads = ctx.constant(f"{name}_pads", np.array(attrs.pop("pads", attrs.pop("paddings", [])), np.int64))
    value = ctx.constant(f"{name}_value", np.array(attrs.pop("value", 0.0), x.type.np_dtype))
    ctx.add("Pad", name, [x, pads, value], list(proto.output), attrs)


@converter("Pad", since=18)
def convert_pad_v18(ctx, proto, name, attrs):
    """Opset 18's ``axes`` input: pads for the listed axes only, widened to every axis for the IR."""
    inputs = _inputs(ctx, proto)
    axes = _known_input(ctx, proto, name, 3, "axes")
    if axes is None:
        ctx.add("Pad", name, inputs[:3], list(proto.output), attrs)
        return
    pads = _known_input(ctx, proto, name, 1, "pads")
    rank = inputs[0].type.rank
    axes = [int(a) + rank if a < 0 else int(a) for a in axes.ravel()]
    if pads is None or pads.size != 2 * len(axes) or not all(0 <= a < rank for a in axes):
        raise ModelFormatError(f"node '{name}' (Pad): pads and axes do not fit rank {rank}")
    full = [0] * (2 * rank)
    for i, a in enumerate(axes):
        full[a], full[a + rank] = int(pads.ravel()[i]), int(pads.ravel()[i + len(axes)])
    inputs = [inputs[0], ctx.constant(f"{name}_pads", np.array(full, np.int64))] + inputs[2:3]
    ctx.add("Pad", name, inputs, list(proto.output), attrs)


def _chain(op: str) -> Converter:
    """A variadic ONNX op (Sum, Max, Min) as a chain of binary IR ops; one input is the identity."""
    def convert(ctx, proto, name, attrs):
        inputs = [v for v in _inputs(ctx, proto) if v is not None]
        if not inputs:
            raise ModelFormatError(f"node '{name}' ({proto.op_type}) has no inputs")
        if len(inputs) == 1:
            ctx.add("Identity", name, inputs, list(proto.output))
            return
        current = inputs[0]
        for i, operand in enumerate(inputs[1:], start=1):
            last = i == len(inputs) - 1
            outputs = list(proto.output) if last else [ctx.fresh(f"{name}_{i}")]
            node_name = name if last else ctx.fresh(f"{name}_step{i}")
            current = ctx.add(op, node_name, [current, operand], outputs).outputs[0]
    return convert


converter("Sum")(_chain("Add"))
converter("Max")(_chain("Max"))
converter("Min")(_chain("Min"))


@converter("Pow", since=1)
def convert_pow(ctx, proto, name, attrs):
    """A constant exponent of another dtype (``x ** 2`` with an int64 2) becomes one of the base's."""
    base, exponent = _inputs(ctx, proto)
    if exponent.is_const and exponent.type.dtype != base.type.dtype and base.type.dtype.startswith("float"):
        exponent = ctx.constant(f"{name}_exponent", exponent.const.astype(base.type.np_dtype))
    ctx.add("Pow", name, [base, exponent], list(proto.output))


@converter("Slice", since=1)
def convert_slice_v1(ctx, proto, name, attrs):
    (x,) = _inputs(ctx, proto)
    inputs = [x] + [ctx.constant(f"{name}_{key}", np.array(attrs[key], np.int64)) for key in ("starts", "ends")]
    if "axes" in attrs:
        inputs.append(ctx.constant(f"{name}_axes", np.array(attrs["axes"], np.int64)))
    ctx.add("Slice", name, inputs, list(proto.output))


@converter("Clip", since=1)
def convert_clip_v1(ctx, proto, name, attrs):
    """Before opset 11 Clip's bounds are attributes; the IR takes them as inputs."""
    inputs = _inputs(ctx, proto)
    for key, default in (("min", -3.4028234663852886e38), ("max", 3.4028234663852886e38)):
        inputs.append(ctx.constant(f"{name}_{key}", np.array(attrs.get(key, default), np.float32)))
    ctx.add("Clip", name, inputs, list(proto.output))


@converter("BatchNormalization", since=1)
def convert_batchnorm(ctx, proto, name, attrs):
    """Inference BatchNormalization; the optional training outputs are not supported."""
    if attrs.get("training_mode", 0) or (ctx.opset < 7 and not attrs.get("is_test", 0)) or len(proto.output) > 1:
        raise UnsupportedOpError([("BatchNormalization", name, "", ctx.opset)], "training mode is not supported")
    if attrs.get("spatial", 1) != 1:
        raise UnsupportedOpError([("BatchNormalization", name, "", ctx.opset)], "spatial=0 is not supported")
    kept = {k: v for k, v in attrs.items() if k == "epsilon"}
    ctx.add("BatchNormalization", name, _inputs(ctx, proto), list(proto.output), kept)


@converter("Dropout", since=1)
def convert_dropout(ctx, proto, name, attrs):
    """Inference-mode Dropout is the identity; a training_mode input must be a false constant."""
    inputs = _inputs(ctx, proto)
    training = inputs[2] if len(inputs) > 2 else None
    if training is not None and (training.known is None or bool(training.known)):
        raise UnsupportedOpError([("Dropout", name, "", ctx.opset)], "training mode is not supported")
    if attrs.get("is_test", 1) == 0 and ctx.opset < 7:
        raise UnsupportedOpError([("Dropout", name, "", ctx.opset)], "training mode is not supported")
    ctx.add("Dropout", name, inputs[:1], list(proto.output))


# -- quantization (opset 10+) ---------------------------------------------------------------------
for _op in ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"):
    converter(_op, since=10)(same(_op))
converter("DynamicQuantizeLinear", since=11)(same("DynamicQuantizeLinear"))


def _quantize_linear(op: str) -> Converter:
    """QuantizeLinear / DequantizeLinear of any opset as the IR's opset-13 form. Opset 10 has no
    ``axis`` (per tensor only); 19's ``saturate`` concerns float8 only; 21's ``block_size`` (blocked
    quantization) and any ``output_dtype`` / ``precision`` other than int8/uint8/float32 are refused."""
    def convert(ctx, proto, name, attrs):
        inputs = _inputs(ctx, proto)
        if ctx.opset < 13 and inputs[1] is not None and inputs[1].type.rank > 0 and inputs[1].type.shape != (1,):
            raise ModelFormatError(f"node '{name}' ({op}): opset {ctx.opset} takes a scalar scale, "
                                   f"got {inputs[1].type}")
        if attrs.get("block_size", 0):
            raise _unsupported(ctx, proto, name, "blocked quantization (block_size) is not supported")
        if attrs.get("precision", 0) not in (0, onnx.TensorProto.FLOAT):
            raise _unsupported(ctx, proto, name, "only float32 precision is supported")
        wanted = attrs.get("output_dtype", 0)
        if op == "QuantizeLinear" and wanted:
            dtypes = {onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT8: np.int8}
            if wanted not in dtypes:
                raise _unsupported(ctx, proto, name, f"output_dtype {onnx.TensorProto.DataType.Name(wanted)} is "
                                   "not supported (int8 and uint8 are)")
            if len(inputs) < 3 or inputs[2] is None:
                inputs = inputs[:2] + [ctx.constant(f"{name}_zero_point", np.zeros((), dtypes[wanted]))]
        elif op == "DequantizeLinear" and wanted not in (0, onnx.TensorProto.FLOAT):
            raise _unsupported(ctx, proto, name, "only a float32 output is supported")
        # Opset 19+ also quantizes to (u)int16, (u)int4 and float8: valid models, not supported here.
        quantized = inputs[0] if op == "DequantizeLinear" else (inputs[2] if len(inputs) > 2 else None)
        allowed = ("uint8", "int8", "int32") if op == "DequantizeLinear" else ("uint8", "int8")
        if quantized is not None and quantized.type.dtype not in allowed:
            raise _unsupported(ctx, proto, name, f"{quantized.type.dtype} quantization is not supported (only "
                               f"{', '.join(allowed)})")
        kept = {"axis": attrs["axis"]} if "axis" in attrs else {}
        ctx.add(op, name, inputs, list(proto.output), kept)
    return convert


for _op in ("QuantizeLinear", "DequantizeLinear"):
    converter(_op, since=10)(_quantize_linear(_op))


@converter("Constant", since=1)
def convert_constant(ctx, proto, name, attrs):
    if len(attrs) != 1:
        raise ModelFormatError(f"Constant node '{name}' needs exactly one value attribute")
    (key, value), = attrs.items()
    if key == "value":
        array = value
    elif key in ("value_float", "value_int"):
        array = np.array(value, np.float32 if key == "value_float" else np.int64)
    elif key in ("value_floats", "value_ints"):
        array = np.array(value, np.float32 if key == "value_floats" else np.int64)
    else:
        raise UnsupportedOpError([("Constant", name, "", ctx.opset)], f"attribute {key} is not supported")
    value_obj = Value(proto.output[0], TensorType.of(array), array)
    ctx.define(proto.output[0], value_obj)
    ctx.constants.append(value_obj)


# -- inputs the import needs the values of -----------------------------------------------------
CONVERTER_STATIC_INPUTS: dict[str, tuple[int, ...]] = {
    "ReduceMean": (1,), "ReduceMax": (1,),   # opset 18's axes, made attributes
    "Pad": (3,),                             # opset 18's axes, folded into the pads
    "Dropout": (1, 2),                       # ratio and training_mode
}
"""ONNX inputs that converters read at import time, beyond the IR ops' ``static_inputs``."""


def compile_time_inputs(model: onnx.ModelProto) -> list[str]:
    """The graph inputs that the compiler needs the values of (a Reshape's target shape, Slice's
    starts...): every node that reads one reads it only at such a position. A model with such
    inputs compiles only once their values are bound (``onnx.backend`` does so on each run)."""
    from ..ops import REGISTRY

    g = model.graph
    inits = {i.name for i in g.initializer}
    names = [i.name for i in g.input if i.name not in inits]
    static: dict[str, bool] = {}
    for proto in g.node:
        positions = set(CONVERTER_STATIC_INPUTS.get(proto.op_type, ()))
        if proto.domain in ("", "ai.onnx") and proto.op_type in REGISTRY:
            positions |= set(REGISTRY[proto.op_type].static_inputs)
        for i, name in enumerate(proto.input):
            if name in names:
                static[name] = static.get(name, True) and i in positions
    return [n for n in names if static.get(n, False)]


# -- import ------------------------------------------------------------------------------------
def _attribute(attr: onnx.AttributeProto, node_name: str) -> Any:
    try:
        value = helper.get_attribute_value(attr)
    except Exception as exc:
        raise ModelFormatError(f"node '{node_name}': attribute '{attr.name}' is malformed: {exc}") from None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, onnx.TensorProto):
        return _tensor(value, f"attribute '{attr.name}' of node '{node_name}'")
    if isinstance(value, list):
        return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v for v in value]
    return value


def _tensor(proto: onnx.TensorProto, what: str) -> np.ndarray:
    try:
        array = numpy_helper.to_array(proto)
    except Exception as exc:
        raise ModelFormatError(f"{what}: tensor data is malformed: {exc}") from None
    expected = tuple(proto.dims)
    if array.shape != expected:
        raise ModelFormatError(f"{what}: data does not match dims {list(expected)}")
    array = np.require(array, requirements="C")  # ascontiguousarray would make scalars 1-D
    array.setflags(write=False)
    try:
        TensorType.of(array)
    except ValueError:
        raise ModelFormatError(f"{what}: dtype {array.dtype} is not supported") from None
    return array


def _value_type(info: onnx.ValueInfoProto) -> TensorType:
    if info.type.WhichOneof("value") != "tensor_type":
        raise ModelFormatError(f"input '{info.name}' is not a tensor")
    tensor = info.type.tensor_type
    if not tensor.HasField("shape"):
        raise ModelFormatError(f"input '{info.name}' has no shape (unknown rank); lepton needs every input's rank")
    try:
        dtype = str(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        shape = []
        for i, dim in enumerate(tensor.shape.dim):
            if dim.HasField("dim_value"):
                if dim.dim_value < 0:
                    raise ModelFormatError(f"input '{info.name}' has negative dim {dim.dim_value}")
                shape.append(dim.dim_value)
            else:
                shape.append(dim.dim_param or f"{info.name}_dim{i}")
        t = TensorType(dtype, tuple(shape))
    except (KeyError, ValueError, TypeError):
        raise ModelFormatError(f"input '{info.name}' has unsupported element type {tensor.elem_type}") from None
    if elements_per_item(t) > MAX_ELEMENTS:
        raise ModelFormatError(f"input '{info.name}' is {t}: more than {MAX_ELEMENTS:,} elements per batch item")
    return t


def _count(low: int, high: int) -> str:
    if high >= 2**31 - 1:
        return f"at least {low}"
    return str(low) if low == high else f"{low} to {high}"


def _check_schema(ctx: "ImportContext", proto: onnx.NodeProto, name: str, opset: int) -> None:
    """Check a node of the default domain against its ONNX schema at the model's opset: the number of
    inputs and outputs, that required ones are not empty, the element types of the inputs (allowed, and
    the same where the spec says so), required attributes and attribute types; so that no converter,
    type rule or kernel meets an int32 bias or a string where the spec says int."""
    if proto.domain not in ("", "ai.onnx"):
        return
    try:
        schema = defs.get_schema(proto.op_type, opset, "")
    except defs.SchemaError:
        return  # not a standard op at this opset: _check_supported has said so, or a converter knows it
    where = f"node '{name}' ({proto.op_type})"
    optional = defs.OpSchema.FormalParameterOption.Optional
    for kind, given, formal, low, high in (("inputs", proto.input, schema.inputs, schema.min_input, schema.max_input),
                                           ("outputs", proto.output, schema.outputs, schema.min_output,
                                            schema.max_output)):
        if not low <= len(given) <= high:
            raise ModelFormatError(f"{where}: has {len(given)} {kind}; {proto.op_type} (opset {opset}) takes "
                                   f"{_count(low, high)}")
        for i, value in enumerate(given):
            param = formal[min(i, len(formal) - 1)] if formal else None
            if value == "" and param is not None and param.option != optional:
                raise ModelFormatError(f"{where}: {kind[:-1]} {i} ('{param.name}') is required but has no name")
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    bound: dict[str, str] = {}
    for i, value_name in enumerate(proto.input):
        value = ctx.values.get(value_name) if value_name else None
        if value is None or not schema.inputs:
            continue
        param = schema.inputs[min(i, len(schema.inputs) - 1)]
        code = helper.np_dtype_to_tensor_dtype(np.dtype(value.type.dtype))
        onnx_type = f"tensor({onnx.TensorProto.DataType.Name(code).lower()})"
        if onnx_type not in allowed.get(param.type_str, {param.type_str}):
            raise ModelFormatError(f"{where}: input {i} ('{param.name}') is {value.type.dtype}, which "
                                   f"{proto.op_type} does not take")
        if bound.setdefault(param.type_str, onnx_type) != onnx_type:
            raise ModelFormatError(f"{where}: input {i} ('{param.name}') is {value.type.dtype}, but another "
                                   f"input of type {param.type_str} is {bound[param.type_str][7:-1]}")
    names = onnx.AttributeProto.AttributeType
    for attr in proto.attribute:
        spec = schema.attributes.get(attr.name)
        if spec is not None and attr.type != int(spec.type.value):
            raise ModelFormatError(f"{where}: attribute '{attr.name}' must be {names.Name(int(spec.type.value))}"
                                   f", not {names.Name(attr.type) if attr.type in names.values() else attr.type}")
    given = {attr.name for attr in proto.attribute}
    missing = [key for key, spec in schema.attributes.items() if spec.required and key not in given]
    if missing:
        raise ModelFormatError(f"{where}: {missing[0]} attribute is required")


def _check_supported(model: onnx.ModelProto, opset: int) -> None:
    versions = {entry.domain: entry.version for entry in model.opset_import}
    missing = []
    for i, proto in enumerate(model.graph.node):
        domain = proto.domain if proto.domain != "ai.onnx" else ""
        if find_converter(domain, proto.op_type, opset) is None:
            version = opset if domain == "" else versions.get(proto.domain, 0)
            missing.append((proto.op_type, proto.name or f"{proto.op_type}_{i}", proto.domain, version))
    if missing:
        raise UnsupportedOpError(missing)


def import_model(source: ModelSource) -> Graph:
    """Convert an ONNX model (path, bytes or ModelProto) into a type-checked IR graph."""
    model = load_onnx(source)
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise ModelFormatError(f"opset {opset} is older than {MIN_OPSET}, the oldest lepton reads")
    _check_supported(model, opset)
    g = model.graph
    ctx = ImportContext(opset)
    for init in g.initializer:
        array = _tensor(init, f"initializer '{init.name}'")
        value = Value(init.name, TensorType.of(array), array)
        ctx.define(init.name, value)
        ctx.constants.append(value)
    inputs = []
    initializers = {init.name for init in g.initializer}
    for info in g.input:
        if info.name in initializers:
            continue  # opsets before 9 list initializers as inputs too
        value = Value(info.name, _value_type(info))
        ctx.define(info.name, value)
        inputs.append(value)
    for i, proto in enumerate(_topological(g)):
        name = ctx.fresh(proto.name or f"{proto.op_type}_{i}")
        try:
            _check_schema(ctx, proto, name, opset)
            attrs = {a.name: _attribute(a, name) for a in proto.attribute}
            domain = proto.domain if proto.domain != "ai.onnx" else ""
            first_new = len(ctx.nodes)
            find_converter(domain, proto.op_type, opset)(ctx, proto, name, attrs)
            for node in ctx.nodes[first_new:]:
                infer_node(node)
        except LeptonError:
            raise
        except (IndexError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelFormatError(f"node '{name}' ({proto.op_type}) is malformed: {exc}") from None
    outputs = []
    for info in g.output:
        if info.name not in ctx.values:
            raise ModelFormatError(f"graph output '{info.name}' is never produced")
        outputs.append(ctx.values[info.name])
    if not outputs:
        raise ModelFormatError("the graph has no outputs")
    # The IR has opset-17 semantics whatever the source; ``opset`` records the source for messages.
    return Graph(g.name or "model", inputs, outputs, ctx.nodes, ctx.constants, opset=opset)


def _topological(g: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes in an order where each reads only what is already defined (Kahn's algorithm, in
    rounds: a node comes in the round after the last of its inputs is defined, in file order within
    a round). Linear in the graph: counts of missing inputs, not a rescan of the pending nodes per
    round, which took minutes for a chain of some ten thousand nodes."""
    available = {i.name for i in g.initializer} | {i.name for i in g.input} | {""}
    nodes = list(g.node)
    missing: list[int] = []
    waiting: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        needed = {x for x in node.input if x not in available}
        missing.append(len(needed))
        for name in needed:
            waiting.setdefault(name, []).append(index)
    ordered: list[onnx.NodeProto] = []
    placed = [False] * len(nodes)
    current = [i for i, count in enumerate(missing) if count == 0]
    while current:
        following: list[int] = []
        for index in current:
            ordered.append(nodes[index])
            placed[index] = True
            for name in nodes[index].output:
                if name in available:
                    continue
                available.add(name)
                for reader in waiting.pop(name, ()):
                    missing[reader] -= 1
                    if missing[reader] == 0:
                        following.append(reader)
        current = sorted(following)
    if len(ordered) < len(nodes):
        pending = [n for n, done in zip(nodes, placed) if not done]
        stuck = pending[0]
        absent = [x for x in stuck.input if x not in available]
        produced = {o for n in pending for o in n.output}
        if all(m in produced for m in absent):
            raise ModelFormatError(f"the graph has a cycle through node '{stuck.name or stuck.op_type}'")
        raise ModelFormatError(f"node '{stuck.name or stuck.op_type}' reads '{absent[0]}', which nothing defines")
    return ordered


# -- export ------------------------------------------------------------------------------------
def _value_info(value: Value) -> onnx.ValueInfoProto:
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(value.type.dtype))
    return helper.make_tensor_value_info(value.name, elem, list(value.type.shape))


def export_model(graph: Graph) -> onnx.ModelProto:
    """The IR graph as a standard ONNX model (opset 17); fused ops are expanded into standard ones."""
    used = {v for n in graph.nodes for v in n.inputs if v is not None} | set(graph.outputs)
    initializers = [numpy_helper.from_array(np.asarray(v.const), v.name) for v in graph.constants if v in used]
    taken = {v.name for v in graph.values()} | {n.name for n in graph.nodes}

    def fresh(base: str) -> str:
        name, i = base, 0
        while name in taken:
            i += 1
            name = f"{base}_{i}"
        taken.add(name)
        return name

    nodes = []
    for node in graph.nodes:
        if node.op in EXPANSIONS:
            expanded, extra = EXPANSIONS[node.op](node, fresh)
            nodes += expanded
            initializers += extra
            continue
        attrs = {k: numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v for k, v in node.attrs.items()}
        nodes.append(helper.make_node(node.op, ["" if v is None else v.name for v in node.inputs],
                                      [v.name for v in node.outputs], name=node.name, domain=node.domain or None,
                                      **attrs))
    outputs = set(graph.outputs)
    value_info = [_value_info(v) for n in graph.nodes for v in n.outputs if v not in outputs]
    onnx_graph = helper.make_graph(nodes, graph.name, [_value_info(v) for v in graph.inputs],
                                   [_value_info(v) for v in graph.outputs], initializers, value_info=value_info)
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", EXPORT_OPSET)],
                              producer_name="lepton_compiler")
    return model
