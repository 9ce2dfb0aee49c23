"""ONNX's own backend test suite (``onnx.backend.test``) through ``lc.backend``.

Every node test of the operators lepton supports is collected here, so pytest runs
each of them: the model is compiled for the CPU and its outputs are compared with
the reference outputs that ship with ONNX. Tests that cannot pass for a documented
reason are excluded below, each with that reason (they are not collected, so the
run reports what lepton does; ``python3 tests/conformance.py`` prints the per-op
counts and every exclusion with its reason); the CUDA variants are not collected.
"""

from __future__ import annotations

import re
import warnings

import onnx.backend.test

import lepton_compiler as lc

INCLUDE = [
    # convolution, pooling, normalization
    r"^test_basic_conv_", r"^test_conv_with_", r"^test_convtranspose",
    r"^test_batchnorm_", r"^test_instancenorm_", r"^test_lrn",
    r"^test_maxpool_", r"^test_averagepool_", r"^test_globalaveragepool", r"^test_globalmaxpool",
    # data movement and shapes
    r"^test_concat_", r"^test_split_(?!to_sequence)", r"^test_slice", r"^test_transpose_",
    r"^test_squeeze", r"^test_unsqueeze_", r"^test_(constant|edge|reflect|wrap)_pad",
    r"^test_flatten_", r"^test_reshape_", r"^test_expand_", r"^test_shape",
    r"^test_gather_(\d|2d|negative)", r"^test_constantofshape_", r"^test_cast_", r"^test_range_(?!.*expanded)",
    r"^test_dropout_", r"^test_training_dropout", r"^test_identity", r"^test_constant_cpu",
    # arithmetic with broadcasting
    r"^test_add_", r"^test_sub_", r"^test_mul_", r"^test_div_", r"^test_sum_", r"^test_max_", r"^test_min_",
    r"^test_pow_", r"^test_matmul_", r"^test_gemm_",
    # activations and math
    # (their "_expanded" forms are function bodies of CastLike, Less and Where, outside this op set;
    # those of HardSwish, Softmax and LogSoftmax use only ops of the set and are included)
    r"^test_relu_(?!.*expanded)", r"^test_sigmoid", r"^test_tanh", r"^test_leakyrelu(?!.*expanded)",
    r"^test_prelu(?!.*expanded)", r"^test_elu(?!.*expanded)", r"^test_selu(?!.*expanded)",
    r"^test_hardsigmoid(?!.*expanded)", r"^test_hardswish", r"^test_clip(?!.*expanded)",
    r"^test_exp(_example)?_", r"^test_log(_example)?_", r"^test_sqrt", r"^test_neg", r"^test_abs_", r"^test_erf_",
    # softmax and reductions
    r"^test_softmax_", r"^test_logsoftmax_",
    r"^test_reduce_mean_", r"^test_reduce_max_", r"^test_reduce_sum_(?!square)",
]

DTYPE = "dtype: a run-time {} tensor (the cpu backend computes float32; int64 only at compile time, for shapes)"
EXCLUDE: dict[str, str] = {
    # the data, not the operator, is out of scope
    r"^test_(add|sub|mul|div)_(u?int\d+|int32_trunc)_": DTYPE.format("integer"),
    r"^test_(max|min)_(float16|float64|u?int\d+)_": DTYPE.format("float16, float64 or integer"),
    r"^test_pow_types_": DTYPE.format("integer base or exponent"),
    r"^test_clip_default_int8_": DTYPE.format("int8"),
    r"^test_maxpool_2d_uint8_": DTYPE.format("uint8"),
    r"^test_(edge|reflect|wrap)_pad_": DTYPE.format("int32") + "; test_ops_coverage.py covers these modes on float32",
    r"^test_range_bfloat16_": DTYPE.format("bfloat16"),
    r"^test_reduce_max_(bool_inputs|empty_set_bool)_": DTYPE.format("bool"),
    r"^test_cast_": DTYPE.format("non-float32") + "; every Cast test converts one at run time (float32 -> float32 "
                    "runs, and Cast of values known at compile time is folded)",
    r"^test_gather_": DTYPE.format("int64 indices") + "; Gather with indices known at compile time runs",
    r"^test_maxpool_with_argmax_": DTYPE.format("int64 Indices output"),
    r"^test_dropout_default_mask": DTYPE.format("bool mask output"),
    r"^test_identity_(opt|sequence)_": "optional and sequence types: lepton compiles tensors only",
    # scope
    r"^test_(averagepool|maxpool|convtranspose)_3d": "3-D windows: the cpu backend has 1-D and 2-D window kernels",
    r"^test_batchnorm_.*_training_mode_": "training mode: lepton compiles inference graphs",
    r"^test_training_dropout": "training mode: lepton compiles inference graphs",
}

backend_test = onnx.backend.test.BackendTest(lc.backend.LeptonBackend, __name__)
for _pattern in INCLUDE:
    backend_test.include(_pattern)
for _pattern, _reason in EXCLUDE.items():
    backend_test.exclude(_pattern)


def _collected(cases: dict) -> dict:
    """The node tests only, without the ones no pattern includes and without the CUDA variants
    and without the excluded ones."""
    node = cases["OnnxBackendNodeModelTest"]
    for name in list(vars(node)):
        if not name.startswith("test_"):
            continue
        if name.endswith("_cuda") or not any(re.search(p, name) for p in INCLUDE):
            delattr(node, name)
            continue
        if any(re.search(p, name) for p in EXCLUDE):
            delattr(node, name)  # out of scope, with the reason above; tests/conformance.py lists them
    return {"OnnxBackendNodeModelTest": node}


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    globals().update(_collected(backend_test.test_cases))
