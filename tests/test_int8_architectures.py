"""int8 beyond MNIST: the small architectures of ``test_architectures.py`` (same Builder, same random
weights) quantized by lepton (``quantize="int8"``, minmax calibration on 64 standard-normal inputs)
and checked on 32 fresh inputs from the same distribution:

* the compiled int8 model equals the reference interpreter on the int8 graph: every uint8 value
  (the int8 regions' activations, the region-edge QuantizeLinears) bit for bit, the float output
  to float rounding;
* the int8 output stays close to fp32: SQNR (dB) of the output against the fp32 graph's, above a
  bound per architecture (measured, then set a few dB below; the measured figures are in
  ``MEASURED_SQNR``). A final Softmax is left out of the models here: on random weights it
  saturates, and its probabilities would hide the error of the logits (ResNet: 87 dB on the
  softmax, against 43 dB on its logits);
* exactly which layers went int8 (and with which output) and which stayed fp32, and why. Regions
  hold MaxPool, Concat and the average pools (``lepton.QAveragePool``) on uint8: SqueezeNet is one
  region up to its last conv (whose output is averaged into the model's output), ResNet's and
  MobileNet's heads run GlobalAveragePool and Flatten in uint8 into a float-output QGemm. MobileNet's
  HardSwish layers keep the region going (a uint8 pre-activation output and a ``lepton.QLookup``
  table), so it is one region. U-Net's first conv still ends a region: its output is concatenated
  with the fp32 ConvTranspose's.

Measured (this machine; before -> after regions held MaxPool/Concat/averages): SQNR dB and
QuantizeLinear nodes / float-output layers: mobilenet 43.2 -> 39.4 (3/3 -> 3/3), resnet 43.2 -> 41.5
(1/1 -> 1/1, the head now int8), squeezenet 36.7 -> 36.7 (3/5 -> 1/1), unet 36.7 (3/3), keras_nhwc
55.2 (1/1). After HardSwish became a QLookup inside the region: mobilenet 39.4 -> 38.2 (3/3 -> 1/1,
two QLookups); the others unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest

import lepton_compiler as lc
from lepton_compiler.api import compile_graph
from lepton_compiler.ops import interpret
from test_architectures import ARCHITECTURES

CALIBRATION_SAMPLES = 64
TEST_SAMPLES = 32
SMALL = "not worth it"

# name: {layer: "uint8" | "float32" (int8, with that output) | reason prefix (fp32)}
EXPECTED_LAYERS = {
    "mobilenet": {"conv2": "uint8", "conv12": "uint8", "conv20": "uint8", "conv28": "uint8",
                  "conv36": "uint8", "conv46": "uint8", "gemm59": "float32"},
    "resnet": {"conv2": "uint8", "conv11": "uint8", "conv19": "uint8", "conv43": "uint8", "conv28": "uint8",
               "conv36": "uint8", "gemm55": "float32"},
    "squeezenet": {"conv3": "uint8", "conv8": "uint8", "conv12": "uint8", "conv16": "uint8",
                   "conv21": "uint8", "conv25": "uint8", "conv29": "uint8", "conv35": "float32"},
    "unet": {"conv3": "float32", "conv8": "float32", "conv15": "uint8", "conv24": "float32"},
    "keras_nhwc": {"conv4": "uint8", "conv7": "float32", "matmul16": SMALL},
}
MEASURED_SQNR = {"mobilenet": 38.2, "resnet": 41.5, "squeezenet": 36.7, "unet": 36.7, "keras_nhwc": 55.2}
REGION_NODES = {   # (QuantizeLinear nodes, float-output layers) of the int8 graph
    "mobilenet": (1, 1), "resnet": (1, 1), "squeezenet": (1, 1), "unet": (3, 3), "keras_nhwc": (1, 1)}
CLASSIFIERS = ("mobilenet", "resnet", "keras_nhwc")   # squeezenet's 90 outputs are 10 maps x 9 positions
LOOKUPS = {"mobilenet": 2}   # QLookup nodes (activations that are not a clamp, inside a region)
SQNR_BOUND = {"mobilenet": 35.0, "resnet": 35.0, "squeezenet": 32.0, "unet": 32.0, "keras_nhwc": 50.0}


def logits_model(arch: str):
    """The architecture's ONNX model with a final Softmax left out (its input is the output)."""
    build, shape = ARCHITECTURES[arch]
    m, out = build()
    if m.nodes[-1].op_type == "Softmax":
        out = m.nodes.pop().input[0]
    return m.model(shape, out), shape


def sqnr_db(reference: np.ndarray, got: np.ndarray) -> float:
    ref = reference.astype(np.float64)
    noise = np.sum(np.square(got.astype(np.float64) - ref))
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(np.square(ref)) / noise))


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def quantized(request):
    arch = request.param
    model, shape = logits_model(arch)
    rng = np.random.default_rng(100)
    calibration = rng.standard_normal([CALIBRATION_SAMPLES] + shape[1:]).astype(np.float32)
    compiled = lc.compile(model, quantize="int8", calibration={"X": calibration}, threads=1)
    x = rng.standard_normal([TEST_SAMPLES] + shape[1:]).astype(np.float32)
    return arch, compiled, x


def test_layers_int8_and_fp32(quantized):
    arch, compiled, _ = quantized
    layers = compiled.quantization.quantized.layers
    got = {d.name: (d.output if d.int8 else d.reason) for d in layers}
    expected = EXPECTED_LAYERS[arch]
    assert set(got) == set(expected)
    for name, want in expected.items():
        assert got[name] == want or (want == SMALL and got[name].startswith(SMALL)), (name, got[name])


def test_region_edges(quantized):
    arch, compiled, _ = quantized
    g = compiled.quantization.graph
    quantize = sum(1 for n in g.nodes if n.op == "QuantizeLinear")
    float_out = sum(1 for n in g.nodes if n.op in ("QConv", "QGemm") and n.attr("output_dtype") == "float32")
    assert (quantize, float_out) == REGION_NODES[arch]
    assert sum(1 for n in g.nodes if n.op == "QLookup") == LOOKUPS.get(arch, 0)


def test_compiled_int8_equals_the_interpreter(quantized):
    """Every uint8 value of the int8 graph and its float output, compiled against interpreted."""
    arch, compiled, x = quantized
    g = compiled.quantization.graph.copy()
    uint8 = [v for v in g.values() if v.type.dtype == "uint8" and not v.is_const]
    assert uint8, "no int8 region"
    g.outputs = list(g.outputs) + uint8
    model = compile_graph(g, options={"threads": 1})
    for batch in (x[:1], x):
        got, want = model.run(None, {"X": batch}), interpret(g, {"X": batch})
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5 * float(np.max(np.abs(want[0]))))
        for value, a, b in zip(uint8, got[1:], want[1:]):
            assert a.dtype == np.uint8
            np.testing.assert_array_equal(a, b, err_msg=value.name)
    np.testing.assert_allclose(compiled.run(None, {"X": x})[0], model.run(None, {"X": x})[0], rtol=1e-6, atol=1e-6)


def test_int8_output_is_close_to_fp32(quantized):
    arch, compiled, x = quantized
    fp32 = interpret(compiled.quantization.fp32, {"X": x})[0]
    int8 = compiled.run(None, {"X": x})[0]
    db = sqnr_db(fp32, int8)
    print(f"{arch}: int8 vs fp32 SQNR {db:.1f} dB (bound {SQNR_BOUND[arch]} dB)")
    assert db >= SQNR_BOUND[arch]
    if arch in CLASSIFIERS:   # the same top-1 on nearly every input
        assert np.mean(fp32.argmax(1) == int8.argmax(1)) >= 0.9
