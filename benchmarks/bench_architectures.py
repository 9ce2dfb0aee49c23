#!/usr/bin/env python3
"""The small architectures of tests/test_architectures.py side by side with ONNX Runtime.

    python3 benchmarks/bench_architectures.py [--min-time 0.6] [--only mobilenet,resnet]

Each architecture (MobileNet inverted residual, ResNet basic block, SqueezeNet fire module,
U-Net path, Keras-style NHWC model; random weights, built by the test module's builders) at
its test shape with batch 1 and 8, and resnet/mobilenet at 224x224 with batch 1. lepton
(-O3, one thread) and ONNX Runtime (one intra-op thread) run in this process, their rounds
interleaved (``lepton_compiler.bench.interleaved_medians``); the table gives the median µs
per call and ORT/lepton (above 1: lepton is faster). The load average is printed with it,
since both cores of a shared machine may be busy.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # conftest (make_model) and the builders

import lepton_compiler as lc  # noqa: E402
from lepton_compiler.bench import interleaved_medians, ort_session  # noqa: E402
from test_architectures import ARCHITECTURES  # noqa: E402


def cases():
    """(architecture, input shape with the batch symbol, batch) in table order."""
    for name, (_, shape) in ARCHITECTURES.items():
        for batch in (1, 8):
            yield name, shape, batch
    for name in ("resnet", "mobilenet"):
        if name in ARCHITECTURES:
            yield name, ["N", 3, 224, 224], 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-time", type=float, default=0.6, help="seconds of timing per row (default 0.6)")
    parser.add_argument("--only", default="", help="comma-separated architectures (default: all)")
    args = parser.parse_args(argv)
    only = {s for s in args.only.split(",") if s}
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; one thread each, "
          f"rounds interleaved, medians")
    print("| architecture | input | batch | lepton µs/call | ORT µs/call | ORT/lepton |")
    print("|---|---|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    compiled_cache = {}
    for name, shape, batch in cases():
        if only and name not in only:
            continue
        key = (name, tuple(shape))
        if key not in compiled_cache:
            build = ARCHITECTURES[name][0]
            m, out = build()
            model = m.model(shape, out)
            compiled_cache[key] = (lc.compile(model, opt_level=3, threads=1),
                                   ort_session(model.SerializeToString(), 1))
        ours, theirs = compiled_cache[key]
        x = rng.standard_normal([batch] + list(shape[1:])).astype(np.float32)
        feed = {"X": x}
        (want,), (got,) = theirs.run(None, feed), ours.run(None, feed)
        diff = float(np.max(np.abs(got - want)))
        lepton_s, ort_s = interleaved_medians([lambda: ours.run(None, feed), lambda: theirs.run(None, feed)],
                                              args.min_time)
        note = "" if diff <= 1e-4 else f" (max abs diff {diff:.2g}!)"
        print(f"| {name} | {list(shape[1:])} | {batch} | {lepton_s * 1e6:.1f} | {ort_s * 1e6:.1f} "
              f"| {ort_s / lepton_s:.2f}x{note} |", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
