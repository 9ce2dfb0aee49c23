"""Reliability: malformed models, bad inputs, memory limits, concurrency and artifacts.

Every malformed model raises one of lepton's own errors (naming the node and the reason), never
another exception type, a crash or a hang; inputs are checked before native code runs; memory
limits refuse a model or a batch before anything is allocated; threads share a model safely;
saving never loses the user's file. Cases marked "found by fuzzing" are regressions of crashes
that ``test_fuzz.py`` found; the others were found by reading the code or probing by hand.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import lepton_compiler as lc
from lepton_compiler.demo import bundled_model_path
from lepton_compiler.errors import ArtifactError, LeptonError, ResourceError
from lepton_compiler.frontends.onnx import import_model
from lepton_compiler.ops import ShapeError, interpret
from conftest import make_model

MODEL = bundled_model_path()
TOL = 1e-5
HUGE = "more than 4,294,967,296 elements per batch item"


def _images(n):
    with np.load(os.path.join(os.path.dirname(MODEL), "mnist_test1000.npz"), allow_pickle=False) as data:
        return data["x"][:n].astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def mnist():
    return lc.compile(MODEL)


@pytest.fixture(scope="module")
def session():
    return ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def worker():
    from fuzzing import Worker
    w = Worker()
    yield w
    w.close()


def _refused(model, error=LeptonError, match=None):
    """Compile ``model`` expecting ``error``; return the message."""
    with pytest.raises(error) as info:
        lc.compile(model)
    assert isinstance(info.value, LeptonError)
    if match is not None:
        assert match in str(info.value), str(info.value)
    return str(info.value)


def _f32(*shape):
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


# -- malformed files -----------------------------------------------------------------------------
def _mnist_bytes() -> bytes:
    with open(MODEL, "rb") as f:
        return f.read()


@pytest.mark.parametrize("fraction", [0.0001, 0.01, 0.1, 0.33, 0.5, 0.9, 0.9999])
def test_truncated_model(worker, fraction):
    """A truncated file is refused (or, cut at a field boundary, is a smaller model that compiles
    and agrees with the reference); it never crashes. Run in the worker process."""
    data = _mnist_bytes()
    result = worker.run(data[:max(1, int(len(data) * fraction))])
    assert result["outcome"] in ("refused", "compiled"), result
    if result["outcome"] == "refused":
        assert result["error"] == "ModelFormatError", result


def test_byte_flips_in_a_valid_model(worker):
    """Random byte flips (structure or weights): refused with a LeptonError, or compiled and
    agreeing with the reference interpreter; never a crash (each in the worker process)."""
    data = _mnist_bytes()
    rng = np.random.default_rng(8)
    outcomes = []
    for offset in rng.integers(0, len(data), 12):
        flipped = bytearray(data)
        flipped[offset] ^= 1 << int(rng.integers(8))
        result = worker.run(bytes(flipped))
        assert result["outcome"] in ("refused", "compiled"), (int(offset), result)
        outcomes.append(result["outcome"])
    # the head of the file is structure: flip its first bytes too
    for offset in range(0, 12, 3):
        flipped = bytearray(data)
        flipped[offset] ^= 0xFF
        result = worker.run(bytes(flipped))
        assert result["outcome"] in ("refused", "compiled"), (offset, result)


def test_empty_graph():
    _refused(make_model([], [("X", [1, 3])], [("Y", [1, 3])]), lc.ModelFormatError,
             "graph output 'Y' is never produced")
    _refused(make_model([], [], []), lc.ModelFormatError, "the graph has no outputs")


def test_node_name_not_utf8():
    """Found by fuzzing (a byte edit in a node's name): protobuf hands invalid UTF-8 over as bytes,
    which reached code generation as an AttributeError. Now refused when the file is read."""
    model = make_model([helper.make_node("Relu", ["X"], ["Y"], name="depthQise")], [("X", ["N", 3])], [("Y", None)])
    data = model.SerializeToString().replace(b"depthQise", b"depth\xffise")
    message = _refused(data, lc.ModelFormatError, "is not UTF-8 text")
    assert "NodeProto name" in message
    # the same model handed over as a ModelProto
    with pytest.raises(lc.ModelFormatError, match="is not UTF-8 text"):
        lc.compile(onnx.ModelProto.FromString(data))


def test_long_chain_imports_in_linear_time():
    """Sorting the nodes rescanned every pending node per round: a chain of 8,000 nodes took 26 s,
    20,000 would take minutes (a malformed model could stall import indefinitely). Now linear."""
    n = 20_000
    nodes = [helper.make_node("Relu", [f"v{i}" if i else "X"], [f"v{i + 1}" if i + 1 < n else "Y"], name=f"r{i}")
             for i in range(n)]
    model = make_model(nodes[::-1], [("X", ["N", 3])], [("Y", None)])
    start = time.perf_counter()
    graph = import_model(model)
    assert time.perf_counter() - start < 10
    assert [node.name for node in graph.nodes[:3]] == ["r0", "r1", "r2"]
    model.graph.node[-1].input[0] = "Y"  # r0 now reads the chain's end: a cycle of 20,000 nodes
    start = time.perf_counter()
    with pytest.raises(lc.ModelFormatError, match="^the graph has a cycle through node 'r19999'$"):
        import_model(model)
    assert time.perf_counter() - start < 10


def test_duplicate_graph_input():
    """Two graph inputs of one name were merged silently (the second skipped as if it were an
    initializer listed among the inputs); now it is an error."""
    model = make_model([helper.make_node("Add", ["X", "X"], ["Y"])], [("X", [2]), ("X", [3])], [("Y", None)])
    _refused(model, lc.ModelFormatError, "value 'X' is defined more than once")


@pytest.mark.parametrize("dims,message", [
    ([-1, 3], "negative dim -1"),
    ([1 << 40, 3], HUGE),
    (["N", 1 << 31, 1 << 31], HUGE),
    ([1 << 21, 1 << 21, 1 << 21], HUGE),
])
def test_negative_or_absurd_input_dims(dims, message):
    """Absurd dims used to compile (a run then failed in numpy with MemoryError or ValueError)."""
    model = make_model([helper.make_node("Relu", ["X"], ["Y"])], [("X", dims)], [("Y", None)])
    _refused(model, lc.ModelFormatError, message)


@pytest.mark.parametrize("node,inits", [
    (helper.make_node("Expand", ["X", "s"], ["Y"], name="n"), {"s": np.array([1 << 20] * 3, np.int64)}),
    (helper.make_node("Pad", ["X", "s"], ["Y"], name="n"), {"s": np.array([0, 1 << 40, 0, 0], np.int64)}),
    (helper.make_node("Reshape", ["X", "s"], ["Y"], name="n"), {"s": np.array([1 << 40, -1], np.int64)}),
], ids=["expand", "pad", "reshape"])
def test_absurd_computed_shapes(node, inits):
    model = make_model([node], [("X", ["N", 1])], [("Y", None)], inits)
    message = _refused(model, ShapeError)
    assert message.startswith(f"node 'n' ({node.op_type}): "), message


def test_absurd_constant_of_shape_and_range():
    nodes = [helper.make_node("ConstantOfShape", ["s"], ["c"], name="fill"), helper.make_node("Add", ["X", "c"], ["Y"])]
    _refused(make_model(nodes, [("X", [1])], [("Y", None)], {"s": np.array([1 << 20] * 3, np.int64)}), ShapeError,
             "node 'fill' (ConstantOfShape): output 'c' would be float32[1048576, 1048576, 1048576]")
    nodes = [helper.make_node("Range", ["a", "b", "d"], ["r"], name="range"),
             helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT), helper.make_node("Add", ["X", "rf"], ["Y"])]
    inits = {"a": np.array(0, np.int64), "b": np.array(1 << 40, np.int64), "d": np.array(1, np.int64)}
    _refused(make_model(nodes, [("X", [1])], [("Y", None)], inits), ShapeError, "node 'range' (Range): output 'r'")


def test_initializer_of_absurd_dims_is_refused_before_decoding():
    w = TensorProto()
    w.name, w.data_type = "W", TensorProto.FLOAT
    w.dims.extend([1 << 40])
    model = make_model([helper.make_node("Add", ["X", "W"], ["Y"])], [("X", [1])], [("Y", None)], [w])
    _refused(model, ResourceError, "the model's weights take 4.0 TiB")


def _conv(x_shape=("N", 3, 5, 5), w_shape=(4, 3, 3, 3), **attrs):
    node = helper.make_node("Conv", ["X", "W"], ["Y"], name="conv", **attrs)
    return make_model([node], [("X", list(x_shape))], [("Y", None)], {"W": np.ones(w_shape, np.float32)})


@pytest.mark.parametrize("attrs,message", [
    ({"strides": [0, 1]}, "invalid strides [0, 1]"),
    ({"dilations": [1, 0]}, "invalid dilations [1, 0]"),
    ({"strides": [1 << 62, 1]}, "exceed 4,294,967,296"),
    ({"dilations": [1 << 40, 1]}, "exceed 4,294,967,296"),
    ({"pads": [1 << 62, 1 << 62, 0, 0]}, "exceed 4,294,967,296"),
    ({"pads": [0, 3000, 0, 3000]}, "pads [0, 3000, 0, 3000] reach beyond the input (5) and the kernel extent (3)"),
    ({"auto_pad": "SAME_UPPER", "strides": [0, 0]}, "invalid strides [0, 0]"),
], ids=["zero_stride", "zero_dilation", "absurd_stride", "absurd_dilation", "absurd_pads", "pads_3000",
        "same_zero_stride"])
def test_conv_window_attributes(attrs, message):
    """Pads of 2**62 hung (code generation unrolls the padded border: pads of 3000 took 10 s, 2**62
    never finished); strides of 2**62 compiled. Each is now refused at once, naming the node."""
    start = time.perf_counter()
    text = _refused(_conv(**attrs), ShapeError)
    assert text.startswith("node 'conv' (Conv): ") and message in text, text
    assert time.perf_counter() - start < 5


def test_pads_up_to_the_kernel_extent_still_compile(rng):
    model = _conv(pads=[3, 3, 3, 3])
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    got = lc.compile(model).run(None, {"X": x})[0]
    np.testing.assert_allclose(got, interpret(lc.optimize(model, opt_level=0), {"X": x})[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_pool_kernel_larger_than_padded_input(op):
    model = make_model([helper.make_node(op, ["X"], ["Y"], name="pool", kernel_shape=[6, 6])],
                       [("X", ["N", 3, 5, 5])], [("Y", None)])
    _refused(model, ShapeError, f"node 'pool' ({op}): kernel extent 6 is larger than the padded input 5")


def test_conv_kernel_larger_than_padded_input():
    _refused(_conv(x_shape=("N", 3, 2, 2)), ShapeError, "node 'conv' (Conv): kernel extent 3 is larger than")


@pytest.mark.parametrize("data_type", [TensorProto.BFLOAT16, TensorProto.COMPLEX64, TensorProto.UINT64,
                                       TensorProto.STRING])
def test_unsupported_initializer_dtype(data_type):
    w = helper.make_tensor("W", data_type, [1], [b"x"] if data_type == TensorProto.STRING else [1])
    model = make_model([helper.make_node("Add", ["X", "W"], ["Y"])], [("X", [1])], [("Y", None)], [w])
    _refused(model, lc.ModelFormatError, "initializer 'W': ")


# -- nodes against their ONNX schema ----------------------------------------------------------------
def test_binary_op_with_three_inputs():
    """Found by fuzzing: a Sub given a third input reached the kernel generator (TypeError)."""
    model = make_model([helper.make_node("Sub", ["X", "X", "X"], ["Y"], name="sub")], [("X", ["N", 3])],
                       [("Y", None)])
    _refused(model, lc.ModelFormatError, "node 'sub' (Sub): has 3 inputs; Sub (opset 17) takes 2")


@pytest.mark.parametrize("node,message", [
    (helper.make_node("LeakyRelu", ["X"], ["Y"], name="n", alpha="x"), "attribute 'alpha' must be FLOAT, not STRING"),
    (helper.make_node("LeakyRelu", ["X"], ["Y"], name="n", alpha=[0.1, 0.2]),
     "attribute 'alpha' must be FLOAT, not FLOATS"),
    (helper.make_node("Gemm", ["X", "X"], ["Y"], name="n", alpha="x", transB=1),
     "attribute 'alpha' must be FLOAT, not STRING"),
    (helper.make_node("Softmax", ["X"], ["Y"], name="n", axis=1.5), "attribute 'axis' must be INT, not FLOAT"),
    (helper.make_node("Transpose", ["X"], ["Y"], name="n", perm="ab"), "attribute 'perm' must be INTS, not STRING"),
    (helper.make_node("Concat", ["X", "X"], ["Y"], name="n"), "axis attribute is required"),
    (helper.make_node("Cast", ["X"], ["Y"], name="n"), "to attribute is required"),
], ids=["leaky_string", "leaky_list", "gemm_alpha", "softmax_float_axis", "transpose_string_perm", "concat_no_axis",
        "cast_no_to"])
def test_attribute_types_and_required_attributes(node, message):
    """Found by fuzzing (LeakyRelu's alpha as a string, list or tensor: TypeError/ValueError in the
    type rule or the kernel); Gemm's alpha, Softmax's axis and Transpose's perm raised TypeError,
    ValueError or AttributeError; Concat without its axis compiled as if axis=0."""
    model = make_model([node], [("X", ["N", 3])], [("Y", None)])
    _refused(model, lc.ModelFormatError, f"node 'n' ({node.op_type}): {message}")


def test_input_of_a_type_the_op_does_not_take():
    """Found by fuzzing: an int32 bias of a float Gemm reached the kernel generator (llvmlite's
    TypeError: cannot store i32 to float*)."""
    nodes = [helper.make_node("Gemm", ["X", "W", "B"], ["Y"], name="dense", transB=1)]
    model = make_model(nodes, [("X", ["N", 3])], [("Y", None)],
                       {"W": np.ones((2, 3), np.float32), "B": np.ones(2, np.int32)})
    _refused(model, lc.ModelFormatError, "node 'dense' (Gemm): input 2 ('C') is int32, but another input of type T")
    model = _conv(w_shape=(1, 3, 3, 3))
    model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(np.ones((1, 3, 3, 3), np.int64), "W"))
    _refused(model, lc.ModelFormatError, "node 'conv' (Conv): input 1 ('W') is int64, which Conv does not take")


def test_required_input_left_empty():
    node = helper.make_node("Conv", ["X", ""], ["Y"], name="conv")
    model = make_model([node], [("X", ["N", 3, 5, 5])], [("Y", None)])
    _refused(model, lc.ModelFormatError, "node 'conv' (Conv): input 1 ('W') is required but has no name")


def test_optional_outputs_left_empty(rng):
    """Two Dropouts whose optional mask outputs are left out ("") were 'value defined twice'."""
    nodes = [helper.make_node("Dropout", ["X"], ["a", ""], name="d1"),
             helper.make_node("Dropout", ["a"], ["Y", ""], name="d2")]
    model = make_model(nodes, [("X", ["N", 3])], [("Y", None)])
    x = rng.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(lc.compile(model).run(None, {"X": x})[0], x)


def test_reshape_shape_must_be_1d():
    """Found by fuzzing: a 2-D shape tensor compiled (flattened), while ONNX (and ONNX Runtime) take
    only a 1-D one and the reference interpreter failed on it."""
    model = make_model([helper.make_node("Reshape", ["X", "s"], ["Y"], name="rs")], [("X", ["N", 6])],
                       [("Y", None)], {"s": np.array([[-1, 2, 3]], np.int64)})
    _refused(model, ShapeError, "node 'rs' (Reshape): the shape input must be 1-D, not int64[1, 3]")


@pytest.mark.parametrize("node,shape", [
    (helper.make_node("Softmax", ["X"], ["Y"], axis=1), ["N", 0]),
    (helper.make_node("LogSoftmax", ["X"], ["Y"], axis=1), ["N", 0]),
    (helper.make_node("GlobalMaxPool", ["X"], ["Y"]), ["N", 2, 0, 3]),
], ids=["softmax", "logsoftmax", "globalmaxpool"])
def test_reductions_over_an_empty_axis(node, shape):
    """The native code handled these; the reference interpreter raised numpy's ValueError."""
    model = make_model([node], [("X", shape)], [("Y", None)])
    x = np.zeros([2 if isinstance(d, str) else d for d in shape], np.float32)
    got = lc.compile(model).run(None, {"X": x})[0]
    want = interpret(lc.optimize(model, opt_level=0), {"X": x})[0]
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_flatten_of_a_zero_size_tensor(rng):
    """Found by fuzzing (an input's batch dim set to a static 0): the native code ran, the reference
    interpreter's Flatten failed (numpy cannot infer a -1 next to a 0)."""
    nodes = [helper.make_node("Flatten", ["X"], ["f"]), helper.make_node("Relu", ["f"], ["Y"])]
    model = make_model(nodes, [("X", [0, 2, 3])], [("Y", None)])
    x = np.zeros((0, 2, 3), np.float32)
    got = lc.compile(model).run(None, {"X": x})[0]
    assert got.shape == (0, 6)
    assert interpret(lc.optimize(model, opt_level=0), {"X": x})[0].shape == (0, 6)


def test_unexpected_internal_errors_are_lepton_errors(monkeypatch):
    """The safety net of ``lc.compile``: a bug (here a planted one) is a LeptonError that says so."""
    from lepton_compiler import api

    def broken(*args, **kwargs):
        raise KeyError("planted")
    monkeypatch.setattr(api, "build_module", broken)
    with pytest.raises(LeptonError, match=r"^internal error: KeyError: 'planted'") as info:
        lc.compile(make_model([helper.make_node("Relu", ["X"], ["Y"])], [("X", ["N", 3])], [("Y", None)]))
    assert isinstance(info.value.__cause__, KeyError)


# -- inputs -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist_reference():
    return lc.optimize(MODEL, opt_level=0)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_propagate(mnist, session, mnist_reference, value):
    """A NaN or an infinity in an image makes that image's output NaN, exactly where the reference
    interpreter's is; other images are untouched and agree with ONNX Runtime. ONNX Runtime's max pool
    drops a NaN unless it comes last in its window (vmaxps operand order), so where it still gives
    NaN lepton does too, but not the converse. Lepton's max pool used to drop every NaN, and a window
    of NaNs came out as -inf."""
    x = _images(8)
    x[1, 0, 14, 14] = value    # one pixel
    x[2] = value               # a whole image
    x[3, 0, 0, :] = value      # the top row
    got = mnist.run(None, {"input": x})[0]
    want = session.run(None, {"input": x})[0]
    with np.errstate(all="ignore"):
        reference = interpret(mnist_reference, {"input": x})[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(reference))
    assert np.isnan(got[[1, 2, 3]]).all()
    assert (np.isnan(want) <= np.isnan(got)).all()
    clean = [0, 4, 5, 6, 7]
    assert np.abs(got[clean] - want[clean]).max() <= TOL


def test_nan_in_a_max_pool_window():
    """Lepton's running maximum (max pool, global max pool, ReduceMax, softmax) propagates NaN."""
    x = np.array([[[[1, np.nan, np.nan, 1], [-1, np.nan, np.nan, np.nan]]]], np.float32)
    for node in (helper.make_node("MaxPool", ["X"], ["Y"], kernel_shape=[1, 2], strides=[1, 2]),
                 helper.make_node("GlobalMaxPool", ["X"], ["Y"]),
                 helper.make_node("ReduceMax", ["X"], ["Y"], axes=[3], keepdims=1)):
        model = make_model([node], [("X", ["N", 1, 2, 4])], [("Y", None)], opset=13)
        got = lc.compile(model).run(None, {"X": x})[0]
        want = interpret(lc.optimize(model, opt_level=0), {"X": x})[0]
        assert np.isnan(got).all() and got.shape == want.shape, (node.op_type, got)


def test_extreme_finite_inputs(mnist, session):
    x = np.full((4, 1, 28, 28), 3.4e38, np.float32)
    x[1] = -3.4e38
    x[2] = 1e-45  # denormal
    got = mnist.run(None, {"input": x})[0]
    want = session.run(None, {"input": x})[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = ~np.isnan(want)
    assert np.abs(got[finite] - want[finite]).max() <= TOL


def test_huge_batch_from_a_broadcast_view(mnist):
    """A stride-0 view stands for 2**40 images in 3 KB: it used to reach numpy's contiguous copy
    (MemoryError); now the batch is refused with the figures before anything is allocated."""
    x = _images(1)
    for batch in (1 << 40, 1 << 20):
        view = np.broadcast_to(x, (batch, 1, 28, 28))
        with pytest.raises(lc.InputError) as info:
            mnist.run(None, {"input": view})
        assert f"N={batch} would need" in str(info.value)
        assert "the memory limit is" in str(info.value)
    # a broadcast view of a reasonable batch runs, and agrees with the contiguous copy
    view = np.broadcast_to(x, (5, 1, 28, 28))
    np.testing.assert_array_equal(mnist.run(None, {"input": view})[0],
                                  mnist.run(None, {"input": np.ascontiguousarray(view)})[0])


def test_huge_batch_is_refused_before_onnx_runtime_sees_it():
    model = lc.compile(MODEL, target="ort", providers=["CPUExecutionProvider"], max_memory="256M")
    assert model.max_memory == 256 << 20
    with pytest.raises(lc.InputError, match=r"N=1099511627776 would need .* the memory limit is 256\.0 MiB"):
        model.run(None, {"input": np.broadcast_to(_images(1), (1 << 40, 1, 28, 28))})
    assert model.run(None, {"input": _images(2)})[0].shape == (2, 10)


def test_negative_strides_and_unaligned_inputs(mnist):
    x = _images(6)
    expected = mnist.run(None, {"input": np.ascontiguousarray(x[::-1])})[0]
    np.testing.assert_array_equal(mnist.run(None, {"input": x[::-1]})[0], expected)
    buf = bytearray(x.nbytes + 1)
    unaligned = np.ndarray(x.shape, np.float32, buffer=buf, offset=1)
    unaligned[...] = x
    assert not unaligned.flags.aligned
    np.testing.assert_array_equal(mnist.run(None, {"input": unaligned})[0], mnist.run(None, {"input": x})[0])


@pytest.mark.parametrize("names", [5, b"probabilities", [["probabilities"]], [b"probabilities"]],
                         ids=["int", "bytes", "nested_list", "list_of_bytes"])
def test_output_names_of_the_wrong_type(mnist, names):
    """``run(5, feed)`` raised TypeError ('int' object is not iterable), a nested list TypeError
    (unhashable type)."""
    with pytest.raises(lc.InputError, match="output_names must be a list of names or None"):
        mnist.run(names, {"input": _images(1)})
    # any iterable of names will do
    out = mnist.run(iter(["probabilities"]), {"input": _images(1)})
    assert len(out) == 1 and out[0].shape == (1, 10)


def test_other_dtype_spellings_are_refused(mnist):
    x = _images(2)
    for bad in (x.astype(">f4"), x.astype(np.float16), x.astype(object)):
        with pytest.raises(lc.InputError, match="has dtype"):
            mnist.run(None, {"input": bad})


# -- memory limits ------------------------------------------------------------------------------------
def test_memory_limit_refuses_a_model_at_compile_time():
    with pytest.raises(ResourceError) as info:
        lc.compile(MODEL, max_memory=400_000)  # above the ONNX weights (364.5 KiB), below them packed for the kernels
    message = str(info.value)
    assert message.startswith("the model needs ") and "at N=1: weights 422.1 KiB" in message
    assert "memory limit of 390.6 KiB (400,000 bytes) (max_memory=)" in message


def test_memory_limit_counts_declared_weights_before_decoding():
    model = make_model([helper.make_node("Add", ["X", "W"], ["Y"])], [("X", ["N", 1000])], [("Y", None)],
                       {"W": np.zeros(1_000_000, np.float32).reshape(1000, 1000)})
    with pytest.raises(ResourceError, match=r"the model's weights take 3\.8 MiB \(4,000,000 bytes\), more than the "
                                            r"memory limit of 1\.0 MiB"):
        lc.compile(model, max_memory="1M")


def test_memory_limit_refuses_a_workspace_at_compile_time():
    nodes = [helper.make_node("Expand", ["X", "s"], ["e"]), helper.make_node("Relu", ["e"], ["r"]),
             helper.make_node("Relu", ["r"], ["Y"])]
    model = make_model(nodes, [("X", ["N", 1, 1])], [("Y", None)], {"s": np.array([1, 2048, 2048], np.int64)})
    with pytest.raises(ResourceError, match=r"workspace 32\.0 MiB .*outputs 16\.0 MiB"):
        lc.compile(model, max_memory="40M", opt_level=0)
    assert lc.compile(model, max_memory="64M", opt_level=0).max_memory == 64 << 20


def test_memory_limit_refuses_a_batch_at_run_time(mnist):
    model = lc.compile(MODEL, max_memory="64M")
    assert model.max_memory == 64 << 20
    per_batch, fixed, _ = model._memory_rule()
    x = _images(16)
    model.run(None, {"input": x})
    model.max_memory = per_batch * 16 + fixed - 1
    with pytest.raises(lc.InputError) as info:
        model.run(None, {"input": x})
    assert str(info.value).startswith(f"N=16 would need {per_batch * 16 + fixed / 1024:.1f}"[:14])
    assert "run it in smaller batches" in str(info.value)
    np.testing.assert_array_equal(model.run(None, {"input": x[:15]})[0], mnist.run(None, {"input": x[:15]})[0])
    model.max_memory = None  # back to the default (the physical memory)
    model.run(None, {"input": x})


def test_memory_limit_from_the_environment(monkeypatch):
    monkeypatch.setenv("LEPTON_MAX_MEMORY", "200K")
    with pytest.raises(ResourceError, match=r"memory limit of 200\.0 KiB \(204,800 bytes\) \(LEPTON_MAX_MEMORY\)"):
        lc.compile(MODEL)
    monkeypatch.setenv("LEPTON_MAX_MEMORY", "many")
    with pytest.raises(LeptonError, match="LEPTON_MAX_MEMORY must be"):
        lc.compile(MODEL)


@pytest.mark.parametrize("value", [0, -1, "lots", 1.5, True, "12 parsecs"])
def test_memory_limit_values(value):
    with pytest.raises(LeptonError, match="max_memory must be"):
        lc.compile(MODEL, max_memory=value)


def test_memory_limit_is_kept_in_the_artifact(tmp_path):
    model = lc.compile(MODEL, max_memory="48M")
    model.save(tmp_path / "m.lepton")
    assert lc.load(tmp_path / "m.lepton").max_memory == 48 << 20


def test_running_out_of_memory_while_allocating_is_a_resource_error(monkeypatch):
    model = lc.compile(MODEL)

    def no_memory(batch):
        raise MemoryError()
    monkeypatch.setattr(model, "_workspace_for", no_memory)
    with pytest.raises(ResourceError, match="out of memory: N=4 needs"):
        model.run(None, {"input": _images(4)})


# -- concurrency ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("threads", [1, 2])
def test_eight_threads_share_one_model(threads):
    """8 Python threads run one CompiledModel at once, each cycling through different batch sizes
    (so each thread's workspace is reallocated on every call): the results are the sequential ones,
    bit for bit; with threads=2 the kernels also fan out to libgomp teams from every thread."""
    model = lc.compile(MODEL, threads=threads)
    images = _images(64)
    batches = [1, 2, 3, 5, 8, 13, 21, 34]
    expected = {b: model.run(None, {"input": images[:b]})[0] for b in batches}
    barrier = threading.Barrier(8)
    errors, checked = [], [0] * 8

    def work(tid):
        try:
            barrier.wait()
            for rep in range(4):
                for k in range(len(batches)):
                    b = batches[(k + tid) % len(batches)]
                    out = model.run(None, {"input": images[:b]})[0]
                    if out.tobytes() != expected[b].tobytes():
                        errors.append(f"thread {tid} rep {rep} batch {b} differs")
                    checked[tid] += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))

    workers = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors, errors[:5]
    assert checked == [4 * len(batches)] * 8


def test_compiling_from_several_threads():
    """Compiles from 8 threads at once (import, passes, LLVM, a named CPU) give the models that
    sequential compiles give; the probe for named CPUs, which borrows file descriptor 2, used to
    race and leave stderr pointing at a deleted temporary file."""
    from fuzzing import SEEDS, seed_model

    sources = [seed_model(name) for name in sorted(SEEDS)][:3] + [MODEL]
    jobs = [(src, mcpu) for src in sources for mcpu in (None, "x86-64-v2")]

    def outputs(model):
        rng = np.random.default_rng(1)
        feed = {i.name: rng.standard_normal([3 if isinstance(d, str) else d for d in i.shape]).astype(np.float32)
                for i in model.inputs}
        return [o.tobytes() for o in model.run(None, feed)]

    expected = [outputs(lc.compile(src, mcpu=mcpu)) for src, mcpu in jobs]
    stderr_before = os.fstat(2)
    results, errors = [None] * len(jobs), []
    barrier = threading.Barrier(len(jobs))

    def work(i):
        try:
            barrier.wait()
            src, mcpu = jobs[i]
            results[i] = outputs(lc.compile(src, mcpu=mcpu))
        except BaseException as exc:  # pragma: no cover
            errors.append(repr(exc))

    workers = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors, errors
    assert results == expected
    stderr_after = os.fstat(2)
    assert (stderr_after.st_dev, stderr_after.st_ino) == (stderr_before.st_dev, stderr_before.st_ino)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_repeated_runs_do_not_grow_memory(mnist):
    """Thousands of runs at changing batch sizes (each thread's workspace reallocated), including
    refused ones, leave the resident memory flat (benchmarks/memory_rss.py does 100,000)."""
    images = _images(16)
    feeds = [{"input": images[:b]} for b in (1, 5, 16)]
    bad = {"input": images.astype(np.float64)}

    refused = []

    def burst(n):
        for i in range(n):
            mnist.run(None, feeds[i % 3])
            if i % 50 == 0:
                try:
                    mnist.run(None, bad)
                except lc.InputError:
                    refused.append(i)
    burst(500)
    before = _rss_mib()
    workers = [threading.Thread(target=burst, args=(1500,)) for _ in range(2)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert len(refused) == 10 + 2 * 30
    assert _rss_mib() - before < 8, (before, _rss_mib())


# -- artifacts ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def artifact(mnist, tmp_path_factory):
    path = tmp_path_factory.mktemp("robust") / "mnist.lepton"
    mnist.save(path)
    return path


_SAVE_AND_HANG = """
import sys, time, zipfile
import lepton_compiler as lc
model = lc.load(sys.argv[1])
real = zipfile.ZipFile.writestr
def slow(self, name, data, *args, **kwargs):
    real(self, name, data, *args, **kwargs)
    if name == "native.o":
        print("HALFWAY", flush=True)
        time.sleep(120)
zipfile.ZipFile.writestr = slow
model.save(sys.argv[2])
"""


def test_a_crash_in_the_middle_of_a_save_leaves_the_old_file(artifact, tmp_path):
    """The saving process is killed (SIGKILL) halfway through writing: the artifact it was replacing
    is untouched and still loads; what is left is a stray temporary file, never a broken artifact."""
    target = tmp_path / "model.lepton"
    old = artifact.read_bytes()
    target.write_bytes(old)
    proc = subprocess.Popen([sys.executable, "-c", _SAVE_AND_HANG, str(artifact), str(target)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "HALFWAY"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert target.read_bytes() == old
    assert lc.load(target).inputs == lc.load(artifact).inputs
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "model.lepton")
    assert all(name.startswith(".lepton-") and name.endswith(".tmp") for name in leftovers), leftovers


def test_save_keeps_the_mode_of_the_file_it_replaces(mnist, tmp_path):
    """The temporary file is created 0600; the artifact used to keep that mode."""
    target = tmp_path / "m.lepton"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    mnist.save(target)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    fresh = tmp_path / "fresh.lepton"
    mask = os.umask(0o022)
    os.umask(mask)
    mnist.save(fresh)
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o666 & ~mask


def test_save_through_a_symlink_replaces_its_target(mnist, tmp_path):
    real = tmp_path / "store" / "m.lepton"
    real.parent.mkdir()
    real.write_bytes(b"old")
    link = tmp_path / "link.lepton"
    link.symlink_to(real)
    mnist.save(link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert lc.load(real).inputs == mnist.inputs


def _patch_central_size(data: bytes, member: str, size: int) -> bytes:
    """The zip with ``member``'s uncompressed size in the central directory set to ``size``."""
    out = bytearray(data)
    at = out.find(b"PK\x01\x02")
    while at >= 0:
        name_len = int.from_bytes(out[at + 28:at + 30], "little")
        if out[at + 46:at + 46 + name_len] == member.encode():
            out[at + 24:at + 28] = size.to_bytes(4, "little")
            return bytes(out)
        at = out.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"{member} not found")


def test_artifact_claiming_huge_sizes_is_refused_before_decompressing(artifact, tmp_path, monkeypatch):
    bad = tmp_path / "bomb.lepton"
    bad.write_bytes(_patch_central_size(artifact.read_bytes(), "weights.bin", 0xFFFFFF00))
    monkeypatch.setenv("LEPTON_MAX_MEMORY", "1G")
    with pytest.raises(ArtifactError,
                       match=r"would take 4\.0 GiB \(4,29.* bytes\) to load, more than the memory limit of 1\.0 GiB"):
        lc.load(bad)
    bad.write_bytes(_patch_central_size(artifact.read_bytes(), "manifest.json", 0xFFFFFF00))
    with pytest.raises(ArtifactError, match="its manifest claims"):
        lc.load(bad)


def test_artifact_members_not_in_the_manifest_are_not_read(artifact, tmp_path):
    extra = tmp_path / "extra.lepton"
    with zipfile.ZipFile(artifact) as zin, zipfile.ZipFile(extra, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
        zout.writestr("junk.bin", b"\0" * 1_000_000)
    assert lc.load(extra).inputs == lc.load(artifact).inputs


def _deflate_start(data: bytes, member: str) -> int:
    """Offset of ``member``'s compressed bytes in the zip ``data``."""
    import io
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo(member)
    at = info.header_offset
    name_len = int.from_bytes(data[at + 26:at + 28], "little")
    extra_len = int.from_bytes(data[at + 28:at + 30], "little")
    return at + 30 + name_len + extra_len


def test_artifact_with_a_broken_deflate_stream(artifact, tmp_path):
    """zlib's own error (an invalid deflate block) escaped ``load``: found by flipping bytes of an
    artifact (a fuzz run of 3000 damaged artifacts, see test_damaged_artifacts_are_refused)."""
    data = bytearray(artifact.read_bytes())
    data[_deflate_start(bytes(data), "weights.bin")] = 0x07  # final block of the reserved type 3
    bad = tmp_path / "deflate.lepton"
    bad.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="is not a lepton artifact or is damaged"):
        lc.load(bad)


def test_damaged_artifacts_are_refused(artifact, tmp_path):
    """Byte flips anywhere in an artifact: ArtifactError, or (a flip in a byte nothing reads, such
    as a zip timestamp) a model that loads; never another exception."""
    import random

    data = artifact.read_bytes()
    rng = random.Random(3)
    bad = tmp_path / "flipped.lepton"
    for _ in range(60):
        flipped = bytearray(data)
        flipped[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        bad.write_bytes(bytes(flipped))
        try:
            lc.load(bad)
        except ArtifactError:
            pass


@pytest.mark.parametrize("path,value", [
    (("workspace", 0), float("inf")), (("constants", 0, "offset"), float("inf")),
    (("constants", 0, "shape", 0), 1 << 70),
    (("inputs", 0, "shape", 1), float("inf")), (("backend",), ["cpu"]), (("constants",), {"a": 1}), (("target",), None),
    (("options", "threads"), float("inf")),
], ids=lambda v: str(v))
def test_resealed_manifest_of_the_wrong_types(artifact, tmp_path, path, value):
    """A manifest whose checksum was recomputed (a foreign or future writer) but whose fields have
    the wrong types raised OverflowError or TypeError; now ArtifactError."""
    import json
    from lepton_compiler.runtime.artifact import manifest_digest

    with zipfile.ZipFile(artifact) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    manifest = json.loads(members["manifest.json"])
    node = manifest
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    manifest["manifest_sha256"] = manifest_digest(manifest)
    members["manifest.json"] = json.dumps(manifest).encode()
    bad = tmp_path / "resealed.lepton"
    with zipfile.ZipFile(bad, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(ArtifactError):
        lc.load(bad).run(None, {"input": _images(1)})
