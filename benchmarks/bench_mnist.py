#!/usr/bin/env python3
"""The MNIST CNN side by side with ONNX Runtime: batch 1 and 64, one and two threads.

    python3 benchmarks/bench_mnist.py [--min-time 1.0] [--no-fp32] [--no-int8]

First the fp32 table (``lepton bench --batch 1,64 --threads 1,2``), then int8: lepton int8
(``lc.compile(quantize="int8")``, minmax calibration) next to lepton fp32, ONNX Runtime fp32
and ONNX Runtime int8 (the same model quantized by ``onnxruntime.quantization.quantize_static``:
QDQ, per-channel int8 weights, uint8 activations, MinMax), both calibrated on the same 200
training images, with the top-1 accuracy of each on the 1000 test images.

Data: the first 200 images of ``examples/mnist/data/mnist_train4000.npz`` (this repository; see
its README for provenance and license) and ``lepton_compiler/demo/mnist_test1000.npz`` (installed
with the package).
"""

import argparse
import sys
from pathlib import Path

import numpy as np

import lepton_compiler as lc
from lepton_compiler.bench import compare_int8, format_int8_table, ort_quantize_static, ort_session
from lepton_compiler.cli import main
from lepton_compiler.demo import bundled_model_path

TRAIN = Path(__file__).resolve().parents[1] / "examples" / "mnist" / "data" / "mnist_train4000.npz"
TEST = Path(lc.__file__).resolve().parent / "demo" / "mnist_test1000.npz"
CALIBRATION_IMAGES = 200


def int8_benchmark(batches, threads, min_time: float) -> str:
    model_bytes = Path(bundled_model_path()).read_bytes()
    calibration = {"input": np.load(TRAIN)["x"][:CALIBRATION_IMAGES].astype(np.float32) / 255}
    test = np.load(TEST)
    x, y = test["x"].astype(np.float32) / 255, test["y"]
    ort_int8 = ort_quantize_static(model_bytes, calibration)
    compiled = {}

    def contenders(t):
        fp32 = lc.compile(model_bytes, threads=t)
        int8 = lc.compile(model_bytes, quantize="int8", calibration=calibration, threads=t)
        s32, s8 = ort_session(model_bytes, t), ort_session(ort_int8, t)
        compiled.update(fp32=fp32, int8=int8, s32=s32, s8=s8)
        return [lambda f: fp32.run(None, f), lambda f: int8.run(None, f),
                lambda f: s32.run(None, f), lambda f: s8.run(None, f)]

    rows = compare_int8(contenders, lc.compile(model_bytes).inputs, batches, threads, min_time)
    preds = {"lepton fp32": compiled["fp32"](x), "lepton int8": compiled["int8"](x),
             "ORT fp32": compiled["s32"].run(None, {"input": x})[0], "ORT int8": compiled["s8"].run(None, {"input": x})[0]}
    acc = {k: 100 * float(np.mean(v.argmax(1) == y)) for k, v in preds.items()}
    agree = 100 * float(np.mean(preds["lepton int8"].argmax(1) == preds["ORT int8"].argmax(1)))
    lines = [f"int8 (calibration: {CALIBRATION_IMAGES} training images; lepton: minmax; ORT: quantize_static QDQ "
             "per-channel MinMax)", format_int8_table(rows),
             "top-1 on the 1000 test images: " + ", ".join(f"{k} {v:.1f}%" for k, v in acc.items()) +
             f"; lepton int8 agrees with ORT int8 on {agree:.1f}% of the images",
             "ratios above 1 mean lepton int8 is faster; medians of 9 interleaved rounds, same process, same inputs."]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-time", default="1.0", help="seconds of timing per row (default 1.0)")
    parser.add_argument("--no-fp32", action="store_true", help="skip the fp32 table")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 table")
    args = parser.parse_args()
    status = 0
    if not args.no_fp32:
        status = main(["bench", "--batch", "1,64", "--threads", "1,2", "--min-time", args.min_time])
    if not args.no_int8:
        print(int8_benchmark([1, 64], [1, 2], float(args.min_time)))
    sys.exit(status)
