"""The CNN operator set of issue 7, each op compiled and compared with ONNX Runtime.

Models have a dynamic batch "N" wherever the op allows one and run at batch 1 and 7
(one compile, several runs); shapes are odd on purpose; attribute and input forms and
pre-13 and 13+ forms of an op are compiled side by side. New activations are also
checked where the fusion passes put them: in a convolution's epilogue (the SIMD
kernel applies them to vectors), after a Gemm, and inside a FusedElementwise program.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import lepton_compiler as lc
from conftest import assert_matches_ort, make_model, ort_run, random_feeds

RTOL = ATOL = 1e-5
BATCHES = (1, 7)


def feeds_for(model: onnx.ModelProto, rng: np.random.Generator, batches=BATCHES, positive=(), scale=1.0):
    """One feed per batch size: standard-normal float32 inputs (``positive`` ones in [0.1, 3])."""
    def draw(rng, name, shape):
        return rng.uniform(0.1, 3.0, shape) if name in positive else rng.standard_normal(shape) * scale
    return random_feeds(model, rng, batches, draw)


def check(model, rng, batches=BATCHES, positive=(), rtol=RTOL, atol=ATOL, opt_level=3, scale=1.0):
    compiled = lc.compile(model, opt_level=opt_level)
    return assert_matches_ort(model, feeds_for(model, rng, batches, positive, scale), rtol, atol, compiled=compiled)


def one_node(op, x_shape, opset=17, inits=None, inputs=("X",), outputs=("Y",), extra_inputs=(), **attrs):
    node = helper.make_node(op, list(inputs), list(outputs), name=op.lower(), **attrs)
    return make_model([node], [("X", x_shape)] + list(extra_inputs), [(o, None) for o in outputs], inits or {},
                      opset=opset)


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def kernels(model, opt_level=3):
    return [k.split()[0] for k in lc.compile(model, opt_level=opt_level).summary["kernels"]]


# -- unary activations and math ---------------------------------------------------------------
UNARY = {
    # op: (attrs, positive inputs only)
    "Sigmoid": ({}, False), "Tanh": ({}, False), "Relu": ({}, False),
    "LeakyRelu": ({"alpha": 0.3}, False), "Elu": ({"alpha": 0.7}, False), "Elu_default": ({}, False),
    "Selu": ({"alpha": 1.5, "gamma": 2.5}, False), "Selu_default": ({}, False),
    "HardSigmoid": ({"alpha": 0.3, "beta": 0.4}, False), "HardSigmoid_default": ({}, False),
    "HardSwish": ({}, False), "Exp": ({}, False), "Log": ({}, True), "Sqrt": ({}, True), "Neg": ({}, False),
    "Abs": ({}, False), "Erf": ({}, False),
}


@pytest.mark.parametrize("case", list(UNARY))
def test_unary(case, rng):
    op = case.split("_")[0]
    attrs, positive = UNARY[case]
    model = one_node(op, ["N", 3, 5, 7], **attrs)
    check(model, rng, positive=("X",) if positive else (), scale=3.0)


@pytest.mark.parametrize("op", ["Elu", "Selu", "HardSigmoid", "HardSwish", "Exp", "Neg", "Abs", "Erf", "Sqrt"])
def test_activation_fused_into_conv_and_gemm(op, rng):
    """Conv -> act and Gemm -> act fuse at -O3 (the conv's SIMD epilogue applies the activation
    to vectors, except Erf which has no vector form)."""
    act_in = "c"
    nodes = [helper.make_node("Conv", ["X", "W", "B"], ["c"], pads=[1, 1, 1, 1])]
    if op == "Sqrt":  # a positive operand
        nodes.append(helper.make_node("Abs", ["c"], ["ca"]))
        act_in = "ca"
    nodes += [helper.make_node(op, [act_in], ["a"]),
              helper.make_node("Flatten", ["a"], ["f"]),
              helper.make_node("Gemm", ["f", "W2", "B2"], ["g"], transB=1),
              helper.make_node(op if op != "Sqrt" else "Abs", ["g"], ["Y"])]
    inits = {"W": f32(rng, 16, 3, 3, 3) * 0.3, "B": f32(rng, 16), "W2": f32(rng, 5, 16 * 5 * 6) * 0.05,
             "B2": f32(rng, 5)}
    model = make_model(nodes, [("X", ["N", 3, 5, 6])], [("Y", None)], inits, opset=17)
    assert "lepton.FusedConv" in kernels(model) or op == "Sqrt"
    check(model, rng, rtol=1e-4, atol=1e-5)


def test_new_ops_in_a_fused_elementwise_program(rng):
    """Add -> Elu -> Mul -> Max -> Pow -> PRelu -> Erf: one FusedElementwise kernel at -O3."""
    nodes = [helper.make_node("Add", ["X", "b"], ["a"]),
             helper.make_node("Elu", ["a"], ["e"], alpha=0.5),
             helper.make_node("Mul", ["e", "s"], ["m"]),
             helper.make_node("Max", ["m", "Z"], ["mx"]),
             helper.make_node("Abs", ["mx"], ["ab"]),
             helper.make_node("Pow", ["ab", "p"], ["pw"]),
             helper.make_node("Sub", ["pw", "Z"], ["d"]),
             helper.make_node("PRelu", ["d", "slope"], ["pr"]),
             helper.make_node("Selu", ["pr"], ["se"]),
             helper.make_node("Erf", ["se"], ["Y"])]
    inits = {"b": f32(rng, 4, 1), "s": f32(rng, 5), "p": np.array(1.5, np.float32),
             "slope": f32(rng, 4, 1) * 0.2}
    model = make_model(nodes, [("X", ["N", 4, 5]), ("Z", [1, 5])], [("Y", None)], inits, opset=17)
    assert kernels(model) == ["lepton.FusedElementwise"]
    check(model, rng, rtol=1e-4, atol=1e-5)
    check(model, rng, rtol=1e-4, atol=1e-5, opt_level=0)


# -- binary and variadic arithmetic ----------------------------------------------------------------
@pytest.mark.parametrize("op", ["Max", "Min", "Pow", "PRelu"])
@pytest.mark.parametrize("shapes", [(["N", 3, 4, 5], [3, 1, 1]), (["N", 3, 4, 5], [5]), (["N", 4], [])],
                         ids=["per_channel", "last_axis", "scalar"])
def test_binary(op, shapes, rng):
    x_shape, b_shape = shapes
    inits = {"B": (np.abs(f32(rng, *b_shape)) + 0.5 if op == "Pow" else f32(rng, *b_shape))}
    model = make_model([helper.make_node(op, ["X", "B"], ["Y"])], [("X", x_shape)], [("Y", None)], inits,
                       opset=13)
    check(model, rng, positive=("X",) if op == "Pow" else (), rtol=1e-4)


def test_max_min_broadcast_both_inputs(rng):
    nodes = [helper.make_node("Max", ["A", "B"], ["mx"]), helper.make_node("Min", ["B", "A"], ["mn"])]
    model = make_model(nodes, [("A", ["N", 1, 5]), ("B", [3, 1])], [("mx", None), ("mn", None)], opset=13)
    check(model, rng)


@pytest.mark.parametrize("op", ["Sum", "Max", "Min"])
@pytest.mark.parametrize("count", [1, 2, 4])
def test_variadic(op, count, rng):
    names = [f"X{i}" for i in range(count)]
    shapes = [["N", 3, 4], [4], [3, 1], ["N", 1, 1]][:count]
    model = make_model([helper.make_node(op, names, ["Y"])], list(zip(names, shapes)), [("Y", None)], opset=13)
    check(model, rng)


def test_sum_opset7_same_shapes(rng):
    model = make_model([helper.make_node("Sum", ["A", "B", "C"], ["Y"])],
                       [("A", ["N", 3]), ("B", ["N", 3]), ("C", ["N", 3])], [("Y", None)], opset=7)
    check(model, rng)


@pytest.mark.parametrize("exponent", [np.array(2, np.int64), np.array([2.0, 3.0, -1.0], np.float32),
                                      np.array(0.5, np.float32)], ids=["int64_const", "vector", "sqrt"])
def test_pow_constant_exponents(exponent, rng):
    """An int64 constant exponent (PyTorch's x ** 2) becomes a float32 one at import."""
    model = make_model([helper.make_node("Pow", ["X", "E"], ["Y"])], [("X", ["N", 3])], [("Y", None)],
                       {"E": exponent}, opset=13)
    check(model, rng, positive=("X",) if exponent.dtype != np.int64 else (), rtol=1e-4)


# -- Clip ----------------------------------------------------------------------------------------
CLIP_CASES = {
    # name: (opset, attrs, bounds as inputs (min, max) or None)
    "opset7_attrs": (7, {"min": -0.5, "max": 0.7}, None),
    "opset7_min_only": (7, {"min": 0.0}, None),
    "opset7_no_bounds": (7, {}, None),
    "opset11_inputs": (11, {}, (-1.0, 0.5)),
    "opset13_relu6": (13, {}, (0.0, 6.0)),
    "opset13_max_only": (13, {}, (None, 0.25)),
    "opset13_min_only": (13, {}, (-0.25, None)),
}


@pytest.mark.parametrize("case", list(CLIP_CASES))
def test_clip(case, rng):
    opset, attrs, bounds = CLIP_CASES[case]
    inputs, inits = ["X"], {}
    if bounds is not None:
        for name, b in zip(("lo", "hi"), bounds):
            inputs.append("" if b is None else name)
            if b is not None:
                inits[name] = np.array(b, np.float32)
    model = make_model([helper.make_node("Clip", inputs, ["Y"], **attrs)], [("X", ["N", 3, 5])], [("Y", None)],
                       inits, opset=opset)
    check(model, rng, scale=3.0)


# -- Softmax and LogSoftmax -------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset,axis", [(11, None), (11, 1), (11, 2), (11, -1), (13, None), (13, 0), (13, 1),
                                        (13, 2)])
def test_softmax_and_log_softmax(op, opset, axis, rng):
    attrs = {} if axis is None else {"axis": axis}
    model = one_node(op, ["N", 3, 4, 5], opset=opset, **attrs)
    check(model, rng, scale=4.0)


# -- pooling --------------------------------------------------------------------------------------
AVGPOOL_CASES = {
    # name: (input shape, attrs, opset)
    "2x2_stride2_odd": (["N", 3, 7, 9], {"kernel_shape": [2, 2], "strides": [2, 2]}, 11),
    "3x3_pads": (["N", 2, 6, 5], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, 11),
    "3x3_pads_count_include_pad": (["N", 2, 6, 5], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                                    "count_include_pad": 1}, 11),
    "asym_pads_stride2": (["N", 2, 8, 7], {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [0, 1, 2, 1]}, 11),
    "asym_pads_count_include_pad": (["N", 2, 8, 7], {"kernel_shape": [3, 2], "strides": [2, 2],
                                                     "pads": [0, 1, 2, 1], "count_include_pad": 1}, 11),
    "ceil_mode": (["N", 3, 8, 8], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, 11),
    "ceil_mode_pads_count_include_pad": (["N", 2, 7, 10], {"kernel_shape": [2, 3], "strides": [2, 3],
                                                          "pads": [1, 1, 1, 1], "ceil_mode": 1,
                                                          "count_include_pad": 1}, 11),
    "ceil_mode_pads": (["N", 2, 7, 10], {"kernel_shape": [2, 3], "strides": [2, 3], "pads": [1, 1, 1, 1],
                                        "ceil_mode": 1}, 11),
    "same_upper": (["N", 3, 7, 6], {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, 11),
    "same_lower": (["N", 3, 7, 6], {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_LOWER"}, 11),
    "valid": (["N", 5, 7, 7], {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "VALID"}, 11),
    "dilations": (["N", 3, 9, 8], {"kernel_shape": [2, 2], "dilations": [2, 2]}, 19),
    "dilations_pads_count_include_pad": (["N", 2, 9, 8], {"kernel_shape": [3, 2], "dilations": [2, 3],
                                                          "pads": [2, 1, 1, 1], "count_include_pad": 1}, 19),
    "1d": (["N", 3, 12], {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}, 11),
    "1d_count_include_pad_ceil": (["N", 3, 12], {"kernel_shape": [3], "strides": [2], "pads": [1, 1],
                                                 "ceil_mode": 1, "count_include_pad": 1}, 11),
    "opset7_no_ceil": (["N", 3, 7, 7], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, 7),
    "global_sized_window": (["N", 4, 5, 6], {"kernel_shape": [5, 6]}, 11),
}


@pytest.mark.parametrize("case", list(AVGPOOL_CASES))
def test_average_pool(case, rng):
    x_shape, attrs, opset = AVGPOOL_CASES[case]
    check(one_node("AveragePool", x_shape, opset=opset, **attrs), rng)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [["N", 5, 7, 9], ["N", 3, 11], ["N", 2, 3, 4, 5], [2, 6, 1, 1]],
                         ids=["2d", "1d", "3d", "1x1_static"])
def test_global_pool(op, shape, rng):
    check(one_node(op, shape, opset=13), rng, batches=BATCHES if "N" in shape else (2,))


@pytest.mark.parametrize("size,attrs", [(3, {}), (5, {"alpha": 2e-3, "beta": 0.6, "bias": 2.0}),
                                        (1, {"alpha": 0.5})], ids=["3", "5_attrs", "1"])
def test_lrn(size, attrs, rng):
    check(one_node("LRN", ["N", 7, 4, 5], opset=13, size=size, **attrs), rng)


def test_lrn_even_size_matches_the_reference(rng):
    """ONNX allows an even size (ONNX Runtime does not): one more channel after than before."""
    from lepton_compiler.ops import interpret

    model = one_node("LRN", ["N", 6, 3], opset=13, size=4, alpha=0.1)
    x = f32(rng, 2, 6, 3)
    graph = lc.optimize(model, opt_level=0)
    np.testing.assert_allclose(lc.compile(model)(x), interpret(graph, {"X": x})[0], rtol=1e-5, atol=1e-6)


def test_average_pool_3d_is_unsupported():
    model = one_node("AveragePool", ["N", 2, 4, 4, 4], opset=13, kernel_shape=[2, 2, 2])
    with pytest.raises(lc.UnsupportedOpError, match="3-D windows"):
        lc.compile(model)


# -- normalization --------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", [7, 9, 15])
@pytest.mark.parametrize("statistics", ["constants", "inputs"])
def test_batch_normalization(opset, statistics, rng):
    """Inference BatchNormalization, with the statistics as weights or as run-time inputs."""
    c = 5
    params = {"scale": f32(rng, c), "B": f32(rng, c), "mean": f32(rng, c),
              "var": np.abs(f32(rng, c)).astype(np.float32) + 0.1}
    node = helper.make_node("BatchNormalization", ["X", "scale", "B", "mean", "var"], ["Y"], epsilon=1e-3)
    if statistics == "constants":
        model = make_model([node], [("X", ["N", c, 4, 3])], [("Y", None)], params, opset=opset)
        check(model, rng)
        return
    model = make_model([node], [("X", ["N", c, 4, 3])] + [(k, [c]) for k in params], [("Y", None)], opset=opset)
    for feed in feeds_for(model, rng):
        feed["var"] = np.abs(feed["var"]) + 0.1
        assert_matches_ort(model, [feed], RTOL, ATOL)


@pytest.mark.parametrize("shape", [["N", 4, 5, 7], ["N", 3, 10], [2, 3, 2, 3, 4]], ids=["2d", "1d", "3d_static"])
def test_instance_normalization(shape, rng):
    c = shape[1]
    node = helper.make_node("InstanceNormalization", ["X", "s", "b"], ["Y"], epsilon=1e-4)
    model = make_model([node], [("X", shape)], [("Y", None)], {"s": f32(rng, c), "b": f32(rng, c)}, opset=13)
    check(model, rng, batches=BATCHES if "N" in shape else (2,), rtol=1e-4, atol=1e-4)


# -- ConvTranspose --------------------------------------------------------------------------------
CONV_TRANSPOSE_CASES = {
    # name: (input shape, weight shape, attrs, bias)
    "3x3": (["N", 3, 5, 4], [3, 2, 3, 3], {}, True),
    "stride2_pads": (["N", 3, 5, 6], [3, 4, 3, 3], {"strides": [2, 2], "pads": [1, 1, 1, 1]}, True),
    "stride2_kernel2_unet": (["N", 4, 3, 5], [4, 2, 2, 2], {"strides": [2, 2]}, True),
    "stride2_output_padding": (["N", 2, 4, 5], [2, 3, 3, 3], {"strides": [2, 2], "pads": [1, 1, 1, 1],
                                                             "output_padding": [1, 1]}, False),
    "asym_stride_dilation": (["N", 2, 4, 3], [2, 3, 3, 2], {"strides": [3, 2], "dilations": [2, 1],
                                                           "pads": [1, 0, 2, 1]}, True),
    "groups2": (["N", 4, 4, 4], [4, 3, 3, 3], {"group": 2, "strides": [2, 2]}, True),
    "depthwise": (["N", 3, 5, 5], [3, 1, 3, 3], {"group": 3, "pads": [1, 1, 1, 1]}, True),
    "kernel_shape_attr": (["N", 2, 3, 3], [2, 2, 4, 4], {"kernel_shape": [4, 4], "strides": [2, 2],
                                                        "pads": [1, 1, 1, 1]}, True),
    "1d": (["N", 3, 7], [3, 4, 3], {"strides": [2]}, True),
    "1d_pads_dilation": (["N", 2, 6], [2, 3, 4], {"strides": [3], "pads": [2, 1], "dilations": [2]}, False),
    "output_shape_exact": (["N", 2, 4, 4], [2, 3, 3, 3], {"strides": [2, 2], "output_shape": [9, 9]}, True),
    "output_shape_padded_end": (["N", 2, 4, 4], [2, 3, 3, 3], {"strides": [2, 2], "output_shape": [10, 10]}, True),
    "same_upper_stride2_even_kernel": (["N", 2, 3, 5], [2, 3, 4, 4], {"strides": [2, 2], "auto_pad": "SAME_UPPER"},
                                       True),
}


@pytest.mark.parametrize("case", list(CONV_TRANSPOSE_CASES))
def test_conv_transpose(case, rng):
    x_shape, w_shape, attrs, with_bias = CONV_TRANSPOSE_CASES[case]
    inits = {"W": f32(rng, *w_shape)}
    names = ["X", "W"]
    if with_bias:
        inits["B"] = f32(rng, w_shape[1] * attrs.get("group", 1))
        names.append("B")
    model = make_model([helper.make_node("ConvTranspose", names, ["Y"], **attrs)], [("X", x_shape)],
                       [("Y", None)], inits, opset=13)
    check(model, rng, rtol=1e-4, atol=1e-5)


# -- data movement --------------------------------------------------------------------------------
@pytest.mark.parametrize("axis,shapes", [
    (1, [["N", 3, 4, 5], ["N", 2, 4, 5], ["N", 1, 4, 5]]),
    (-1, [["N", 3, 2], ["N", 3, 5]]),
    (0, [["N", 3], ["N", 3]]),
    (2, [[2, 3, 1], [2, 3, 4]])], ids=["channels", "last", "batch_axis", "static"])
def test_concat(axis, shapes, rng):
    names = [f"X{i}" for i in range(len(shapes))]
    nodes = [helper.make_node("Concat", names + names[:1], ["Y"], axis=axis)]  # the first input twice
    model = make_model(nodes, list(zip(names, shapes)), [("Y", None)], opset=13)
    check(model, rng, batches=BATCHES if "N" in shapes[0] else (1,))


SPLIT_CASES = {
    # name: (opset, input shape, attrs, split sizes (input or attribute) or None, outputs)
    "opset11_attr": (11, ["N", 6, 3], {"axis": 1, "split": [1, 2, 3]}, None, 3),
    "opset11_equal": (11, ["N", 6, 3], {"axis": 1}, None, 3),
    "opset13_input": (13, ["N", 7, 3], {"axis": -2}, [4, 0, 3], 3),
    "opset13_equal_last_axis": (13, ["N", 3, 8], {"axis": 2}, None, 4),
    "opset18_num_outputs_uneven": (18, ["N", 3, 7], {"axis": 2, "num_outputs": 3}, None, 3),
    "opset13_batch_axis_equal": (13, ["N", 4], {"axis": 0}, None, 1),
}


@pytest.mark.parametrize("case", list(SPLIT_CASES))
def test_split(case, rng):
    opset, shape, attrs, sizes, count = SPLIT_CASES[case]
    outs = [f"Y{i}" for i in range(count)]
    inputs, inits = ["X"], {}
    if sizes is not None:
        inputs.append("split")
        inits["split"] = np.array(sizes, np.int64)
    node = helper.make_node("Split", inputs, outs, **attrs)
    model = make_model([node], [("X", shape)], [(o, None) for o in outs], inits, opset=opset)
    check(model, rng)


SLICE_CASES = {
    # name: (starts, ends, axes, steps)
    "channels": ([1], [3], [1], None),
    "negative_steps": ([-1, 4], [-100, 0], [2, 3], [-1, -2]),
    "out_of_bounds": ([-10, 1], [100, 1000], [1, 2], [1, 2]),
    "default_axes": ([0, 1, 0, 2], [2147483647, 3, 4, -1], None, None),
    "negative_axes_step3": ([0], [5], [-1], [3]),
    "empty": ([2], [2], [1], None),
}


@pytest.mark.parametrize("case", list(SLICE_CASES))
def test_slice(case, rng):
    starts, ends, axes, steps = SLICE_CASES[case]
    inits = {"starts": np.array(starts, np.int64), "ends": np.array(ends, np.int64)}
    names = ["X", "starts", "ends"]
    if axes is not None:
        inits["axes"] = np.array(axes, np.int64)
        names.append("axes")
    if steps is not None:
        inits["steps"] = np.array(steps, np.int64)
        names.append("steps")
    shape = ["N", 4, 5, 6] if axes is not None and 0 not in axes else [3, 4, 5, 6]
    model = make_model([helper.make_node("Slice", names, ["Y"])], [("X", shape)], [("Y", None)], inits, opset=13)
    check(model, rng, batches=BATCHES if "N" in shape else (3,))


def test_slice_opset9_attributes(rng):
    model = one_node("Slice", ["N", 4, 6], opset=9, starts=[1, -4], ends=[3, 100], axes=[1, 2])
    check(model, rng)


PAD_CASES = {
    # name: (opset, mode, pads, constant value or None)
    "constant_opset11": (11, "constant", [0, 1, 2, 0, 0, 2, 1, 3], 0.5),
    "constant_default_value": (13, "constant", [0, 0, 1, 1, 0, 0, 1, 1], None),
    "reflect": (13, "reflect", [0, 0, 2, 1, 0, 0, 1, 2], None),
    "edge": (13, "edge", [0, 1, 3, 0, 0, 2, 0, 4], None),
    "negative_pads_crop": (13, "constant", [0, 0, -1, 2, 0, 0, 1, -2], 1.5),
    "edge_negative": (13, "edge", [0, 0, 2, -1, 0, 0, -2, 1], None),
    "wrap": (19, "wrap", [0, 0, 2, 1, 0, 0, 1, 3], None),
}


@pytest.mark.parametrize("case", list(PAD_CASES))
def test_pad(case, rng):
    opset, mode, pads, value = PAD_CASES[case]
    inits = {"pads": np.array(pads, np.int64)}
    names = ["X", "pads"]
    if value is not None:
        inits["value"] = np.array(value, np.float32)
        names.append("value")
    shape = ["N", 3, 4, 5] if pads[0] == pads[4] == 0 else [2, 3, 4, 5]
    model = make_model([helper.make_node("Pad", names, ["Y"], mode=mode)], [("X", shape)], [("Y", None)], inits,
                       opset=opset)
    check(model, rng, batches=BATCHES if "N" in shape else (2,))


def test_pad_opset7_attributes(rng):
    model = one_node("Pad", ["N", 3, 4], opset=7, mode="reflect", pads=[0, 1, 2, 0, 1, 1])
    check(model, rng)
    model = one_node("Pad", ["N", 3, 4], opset=7, pads=[0, 0, 1, 0, 2, 0], value=-2.0)
    check(model, rng)


def test_pad_opset18_axes(rng):
    nodes = [helper.make_node("Pad", ["X", "pads", "", "axes"], ["Y"], mode="edge")]
    inits = {"pads": np.array([1, 2, 0, 3], np.int64), "axes": np.array([-1, 1], np.int64)}
    model = make_model(nodes, [("X", ["N", 3, 4])], [("Y", None)], inits, opset=18)
    check(model, rng)


def test_pad_of_the_dynamic_batch_is_an_error():
    model = make_model([helper.make_node("Pad", ["X", "pads"], ["Y"])], [("X", ["N", 3])], [("Y", None)],
                       {"pads": np.array([1, 0, 0, 0], np.int64)}, opset=13)
    with pytest.raises(lc.LeptonError, match="padding the dynamic dim N"):
        lc.compile(model)


@pytest.mark.parametrize("x_shape,target", [(["N", 1, 5], [1, 4, 1]), ([3, 1], [2, 1, 6]), (["N", 3], [3]),
                                            ([1], [2, 3])], ids=["batch", "rank_up", "same", "scalar_like"])
def test_expand(x_shape, target, rng):
    model = make_model([helper.make_node("Expand", ["X", "shape"], ["Y"])], [("X", x_shape)], [("Y", None)],
                       {"shape": np.array(target, np.int64)}, opset=13)
    check(model, rng, batches=BATCHES if "N" in x_shape else (1,))


def test_expand_to_a_shape_computed_from_the_batch(rng):
    """Expand(b, Shape(x)): the target holds the batch symbol, resolved at compile time."""
    nodes = [helper.make_node("Shape", ["X"], ["s"]), helper.make_node("Expand", ["b", "s"], ["e"]),
             helper.make_node("Add", ["e", "X"], ["Y"])]
    model = make_model(nodes, [("X", ["N", 3, 4])], [("Y", None)], {"b": f32(rng, 3, 1)}, opset=13)
    check(model, rng)


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze_attribute_and_input_forms(opset, rng):
    if opset < 13:
        nodes = [helper.make_node("Unsqueeze", ["X"], ["u"], axes=[0, 3]),
                 helper.make_node("Relu", ["u"], ["r"]),
                 helper.make_node("Squeeze", ["r"], ["Y"], axes=[-2, 0])]
        inits = {}
    else:
        nodes = [helper.make_node("Unsqueeze", ["X", "ua"], ["u"]),
                 helper.make_node("Relu", ["u"], ["r"]),
                 helper.make_node("Squeeze", ["r", "sa"], ["Y"])]
        inits = {"ua": np.array([0, 3], np.int64), "sa": np.array([-2, 0], np.int64)}
    model = make_model(nodes, [("X", [4, "N", 3])], [("Y", None)], inits, opset=opset)
    check(model, rng)


@pytest.mark.parametrize("perm", [[0, 2, 3, 1], [0, 3, 1, 2], [3, 1, 0, 2], None])
def test_transpose(perm, rng):
    attrs = {} if perm is None else {"perm": perm}
    check(one_node("Transpose", ["N", 3, 4, 5], opset=13, **attrs), rng)


@pytest.mark.parametrize("indices,axis", [(np.array(1, np.int64), 1), (np.array([[0, 2], [-1, 1]], np.int64), 1),
                                          (np.array([3, 0, 3], np.int32), 2), (np.array([-2], np.int64), -1)],
                         ids=["scalar", "2d_negative", "repeated_int32", "last_axis"])
def test_gather_constant_indices(indices, axis, rng):
    model = make_model([helper.make_node("Gather", ["X", "idx"], ["Y"], axis=axis)], [("X", ["N", 3, 4])],
                       [("Y", None)], {"idx": indices}, opset=13)
    check(model, rng)


# -- reductions -----------------------------------------------------------------------------------
REDUCE_CASES = {
    # name: (axes, keepdims or None for the default)
    "spatial_keepdims": ([2, 3], 1),
    "channels_dropped": ([1], 0),
    "negative_last": ([-1], None),
    "all_axes": (None, 0),
    "batch_axis": ([0], 1),
    "batch_and_last": ([0, -1], 0),
}


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax"])
@pytest.mark.parametrize("form", ["attribute", "input"])
@pytest.mark.parametrize("case", list(REDUCE_CASES))
def test_reduce(op, form, case, rng):
    """Axes as an attribute (ReduceSum before 13, the others before 18) or as an input."""
    axes, keepdims = REDUCE_CASES[case]
    attrs = {} if keepdims is None else {"keepdims": keepdims}
    input_since = 13 if op == "ReduceSum" else 18
    opset = input_since if form == "input" else input_since - 2
    names, inits = ["X"], {}
    if axes is not None and form == "attribute":
        attrs["axes"] = axes
    elif axes is not None:
        names.append("axes")
        inits["axes"] = np.array(axes, np.int64)
    model = make_model([helper.make_node(op, names, ["Y"], **attrs)], [("X", ["N", 3, 4, 5])], [("Y", None)], inits,
                       opset=opset)
    check(model, rng, rtol=1e-4, atol=1e-5)


def test_reduce_sum_noop_with_empty_axes(rng):
    model = one_node("ReduceSum", ["N", 3], opset=13, noop_with_empty_axes=1)
    check(model, rng)


# -- shape ops: folded at compile time, or run when their results are large ---------------------------
def test_constant_of_shape_range_cast_shape_gather_fold(rng):
    """A PyTorch-style chain of shape arithmetic: everything but the final Add is compile-time work."""
    nodes = [helper.make_node("Shape", ["X"], ["s"], start=1),
             helper.make_node("ConstantOfShape", ["s"], ["ones"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.5])),
             helper.make_node("Gather", ["s", "i1"], ["n"], axis=0),
             helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
             helper.make_node("Range", ["zero", "nf", "one"], ["r"]),
             helper.make_node("Mul", ["ones", "r"], ["c"]),
             helper.make_node("Add", ["X", "c"], ["Y"])]
    inits = {"i1": np.array(1, np.int64), "zero": np.array(0.0, np.float32), "one": np.array(1.0, np.float32)}
    model = make_model(nodes, [("X", ["N", 3, 4])], [("Y", None)], inits, opset=15)
    assert kernels(model, opt_level=0) == ["Add"]
    check(model, rng, opt_level=0)


def test_large_range_and_constant_of_shape_run_as_kernels(rng):
    """Results too large to fold (> 4096 elements), and a fill of the batch-sized shape."""
    nodes = [helper.make_node("Range", ["start", "limit", "delta"], ["r"]),
             helper.make_node("Add", ["X", "r"], ["a"]),
             helper.make_node("Shape", ["X"], ["s"]),
             helper.make_node("ConstantOfShape", ["s"], ["fill"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.25])),
             helper.make_node("Mul", ["a", "fill"], ["Y"])]
    inits = {"start": np.array(-3.0, np.float32), "limit": np.array(2497.0, np.float32),
             "delta": np.array(0.5, np.float32)}
    model = make_model(nodes, [("X", ["N", 5000])], [("Y", None)], inits, opset=13)
    assert {"Range", "ConstantOfShape"} <= set(kernels(model, opt_level=0))
    check(model, rng, opt_level=0)


def test_shape_start_end_opset15(rng):
    nodes = [helper.make_node("Shape", ["X"], ["s"], start=-2, end=-1),
             helper.make_node("Concat", ["m1", "s"], ["target"], axis=0),
             helper.make_node("Reshape", ["X", "target"], ["Y"])]
    model = make_model(nodes, [("X", ["N", 3, 4])], [("Y", None)], {"m1": np.array([-1], np.int64)}, opset=15)
    check(model, rng)


def test_cast_float_to_float_runs(rng):
    model = one_node("Cast", ["N", 3], opset=13, to=TensorProto.FLOAT)
    check(model, rng, opt_level=0)


def test_run_time_int64_is_refused_with_a_clear_error():
    """Gather with indices given at run time would compute int64 tensors: refused at compile time."""
    model = make_model([helper.make_node("Gather", ["X", "I"], ["Y"], axis=1)],
                       [("X", ["N", 3]), ("I", [2], TensorProto.INT64)], [("Y", None)], opset=13)
    with pytest.raises(lc.UnsupportedOpError, match="float32 only"):
        lc.compile(model)


# -- onnx.backend ---------------------------------------------------------------------------------
def test_backend_binds_compile_time_inputs(rng):
    """lc.backend compiles a model whose Reshape target is a graph input once its value is known."""
    model = make_model([helper.make_node("Reshape", ["X", "shape"], ["Y"])],
                       [("X", [2, 3, 4]), ("shape", [2], TensorProto.INT64)], [("Y", None)], opset=13)
    with pytest.raises(lc.LeptonError, match="known at compile time"):
        lc.compile(model)
    rep = lc.backend.prepare(model)
    x = f32(rng, 2, 3, 4)
    (y,) = rep.run([x, np.array([4, -1], np.int64)])
    np.testing.assert_array_equal(y, x.reshape(4, 6))
    (y,) = rep.run({"X": x, "shape": np.array([-1, 2], np.int64)})
    np.testing.assert_array_equal(y, x.reshape(12, 2))


def test_backend_run_node(rng):
    x = f32(rng, 2, 3, 5, 5)
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    (y,) = lc.backend.run_node(node, [x])
    model = one_node("AveragePool", [2, 3, 5, 5], opset=17, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    np.testing.assert_allclose(y, ort_run(model, {"X": x})[0], rtol=RTOL, atol=ATOL)


def test_split_with_an_output_nothing_reads(rng):
    nodes = [helper.make_node("Split", ["X", "sizes"], ["a", "unused", "b"], axis=1),
             helper.make_node("Add", ["a", "b"], ["Y"])]
    model = make_model(nodes, [("X", ["N", 6, 2])], [("Y", None)], {"sizes": np.array([2, 2, 2], np.int64)},
                       opset=13)
    check(model, rng)


# -- back to ONNX ---------------------------------------------------------------------------------
def test_optimized_graph_with_new_ops_exports_to_onnx(rng):
    """graph.to_onnx() after -O3 (fused activations with parameters, new binary steps in a
    FusedElementwise, ops kept as they are) runs in ONNX Runtime with the same results."""
    nodes = [helper.make_node("Conv", ["X", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Selu", ["c"], ["s"], alpha=1.2, gamma=0.9),
             helper.make_node("AveragePool", ["s"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Max", ["p", "M"], ["mx"]),
             helper.make_node("PRelu", ["mx", "slope"], ["pr"]),
             helper.make_node("HardSigmoid", ["pr"], ["hs"], alpha=0.3, beta=0.6),
             helper.make_node("Shape", ["hs"], ["shape"]),
             helper.make_node("ConstantOfShape", ["shape"], ["fill"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5])),
             helper.make_node("Sum", ["hs", "fill", "M"], ["sum"]),
             helper.make_node("Pad", ["sum", "pads"], ["Y"], mode="reflect")]
    inits = {"W": f32(rng, 4, 3, 3, 3), "B": f32(rng, 4), "M": f32(rng, 4, 1, 1), "slope": f32(rng, 4, 1, 1),
             "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}
    model = make_model(nodes, [("X", ["N", 3, 6, 6])], [("Y", None)], inits, opset=17)
    exported = lc.optimize(model, opt_level=3).to_onnx()
    exported.ir_version = model.ir_version
    onnx.checker.check_model(exported)
    for feed in feeds_for(model, rng):
        np.testing.assert_allclose(ort_run(exported, feed)[0], ort_run(model, feed)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("level", ["x86-64-v4", "x86-64-v3", "x86-64-v2"])
def test_new_activations_on_each_vector_width(level, rng):
    """Conv epilogues with the new activations, emitted for 512-, 256- and 128-bit vectors."""
    from lepton_compiler.backends.llvm.target import X86_LEVELS, host_target

    host = host_target()
    if not (host.triple.startswith("x86_64") and X86_LEVELS[level] <= set(host.features)):
        pytest.skip(f"this host cannot run {level} code")
    nodes, x, inits = [], "X", {}
    for i, (op, attrs) in enumerate([("Elu", {"alpha": 0.8}), ("HardSigmoid", {}), ("Selu", {}), ("Abs", {}),
                                     ("Sqrt", {}), ("Neg", {}), ("Exp", {})]):
        inits[f"W{i}"] = f32(rng, 16, 16 if i else 3, 3, 3) * 0.2
        nodes += [helper.make_node("Conv", [x, f"W{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node(op, [f"c{i}"], [f"a{i}"], **attrs)]
        x = f"a{i}"
    nodes[-1].output[0] = "Y"
    model = make_model(nodes, [("X", ["N", 3, 6, 7])], [("Y", None)], inits, opset=17)
    compiled = lc.compile(model, mcpu=level)
    assert sum(k.startswith("lepton.FusedConv") for k in compiled.summary["kernels"]) == 7
    assert_matches_ort(model, feeds_for(model, rng), 1e-4, 1e-5, compiled=compiled)


def test_parallel_kernels_with_two_threads(rng):
    """The kernels with a parallel outer loop, large enough that two threads split them."""
    nodes = [helper.make_node("AveragePool", ["X"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("LRN", ["a"], ["l"], size=3),
             helper.make_node("InstanceNormalization", ["l", "s", "b"], ["i"]),
             helper.make_node("BatchNormalization", ["i", "s", "b", "m", "v"], ["bn"]),
             helper.make_node("ConvTranspose", ["bn", "W"], ["ct"], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["ct"], ["g"]),
             helper.make_node("GlobalMaxPool", ["ct"], ["gm"]),
             helper.make_node("Add", ["g", "gm"], ["Y"])]
    inits = {"s": f32(rng, 8), "b": f32(rng, 8), "W": f32(rng, 8, 4, 2, 2)}
    model = make_model(nodes, [("X", ["N", 8, 64, 64]), ("m", [8]), ("v", [8])], [("Y", None), ("ct", None)],
                       inits, opset=17)
    compiled = lc.compile(model, threads=2, opt_level=0)
    for feed in feeds_for(model, rng, batches=(3,)):
        feed["v"] = np.abs(feed["v"]) + 0.5
        assert_matches_ort(model, [feed], 1e-4, 1e-4, compiled=compiled)
