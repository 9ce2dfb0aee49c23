#!/usr/bin/env python3
"""SqueezeNet fire and MobileNet blocks of tests/test_architectures.py: lepton int8 vs lepton fp32
vs ONNX Runtime fp32, plus the int8 graph's shape (QuantizeLinear nodes, float-output layers,
``lepton.QLookup`` tables for activations that are not a clamp) and its SQNR against fp32.

    python3 benchmarks/bench_int8_architectures.py [--min-time 0.6] [--only squeezenet,mobilenet]

The models are the ones tests/test_int8_architectures.py quantizes (final Softmax left out), with
the same calibration (64 standard-normal samples, minmax) and the same 32 test samples for the
SQNR. One thread each, rounds interleaved (``lepton_compiler.bench.interleaved_medians``), median
µs per call at batch 1 and 8. Not a test.

Measured (one thread; MobileNet, before -> after HardSwish ran as a QLookup inside the region):
batch 1: int8 16.3 -> 11.6 µs (fp32 10.5-11.1, ORT 18.3-19.4), QuantizeLinear / float-output layers
3/3 -> 1/1, SQNR 39.4 -> 38.2 dB; batch 8: int8 102.0 -> 60.6 µs (fp32 59.2-62.8, ORT 106-111).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # conftest and the builders

import lepton_compiler as lc  # noqa: E402
from lepton_compiler.bench import interleaved_medians, ort_session  # noqa: E402
from lepton_compiler.ops import interpret  # noqa: E402
from test_int8_architectures import CALIBRATION_SAMPLES, TEST_SAMPLES, logits_model, sqnr_db  # noqa: E402


def region_counts(compiled) -> tuple[int, int]:
    """(QuantizeLinear nodes, float-output int8 layers) of the int8 graph."""
    g = compiled.quantization.graph
    quantize = sum(1 for n in g.nodes if n.op == "QuantizeLinear")
    float_out = sum(1 for n in g.nodes if n.op in ("QConv", "QGemm") and n.attr("output_dtype", "uint8") == "float32")
    return quantize, float_out


def lookups(compiled) -> int:
    """``lepton.QLookup`` nodes of the int8 graph."""
    return sum(1 for n in compiled.quantization.graph.nodes if n.op == "QLookup")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-time", type=float, default=0.6, help="seconds of timing per row (default 0.6)")
    parser.add_argument("--only", default="squeezenet,mobilenet", help="comma-separated architectures")
    args = parser.parse_args(argv)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; one thread each")
    print("| architecture | batch | QuantizeLinear | float-output layers | QLookup | SQNR dB | int8 µs | fp32 µs | "
          "ORT fp32 µs | fp32/int8 | ORT/int8 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for arch in [a for a in args.only.split(",") if a]:
        model, shape = logits_model(arch)
        rng = np.random.default_rng(100)
        calibration = rng.standard_normal([CALIBRATION_SAMPLES] + shape[1:]).astype(np.float32)
        int8 = lc.compile(model, quantize="int8", calibration={"X": calibration}, threads=1)
        test = rng.standard_normal([TEST_SAMPLES] + shape[1:]).astype(np.float32)
        db = sqnr_db(interpret(int8.quantization.fp32, {"X": test})[0], int8.run(None, {"X": test})[0])
        fp32 = lc.compile(model, threads=1)
        ort = ort_session(model.SerializeToString(), 1)
        quantize, float_out = region_counts(int8)
        for batch in (1, 8):
            x = test[:batch]
            times = interleaved_medians([lambda: int8.run(None, {"X": x}), lambda: fp32.run(None, {"X": x}),
                                         lambda: ort.run(None, {"X": x})], args.min_time)
            a, b, c = (t * 1e6 for t in times)
            print(f"| {arch} | {batch} | {quantize} | {float_out} | {lookups(int8)} | {db:.2f} | {a:.1f} | {b:.1f} | {c:.1f} | "
                  f"{b / a:.2f} | {c / a:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
