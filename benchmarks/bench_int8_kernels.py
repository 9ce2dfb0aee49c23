#!/usr/bin/env python3
"""The int8 kernels on the MNIST CNN, one thread: lepton int8 (the CNN quantized by hand,
see tests/qkernel_testing.py), lepton fp32, ONNX Runtime fp32 and ONNX Runtime int8
(``quantize_static``, QDQ, per channel), all in the same run, in µs per image.

    python3 benchmarks/bench_int8_kernels.py [--min-time 1.0] [--profile]
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import lepton_compiler as lc  # noqa: E402
from lepton_compiler.api import compile_graph  # noqa: E402
from lepton_compiler.demo import bundled_model_path, mnist_test_images  # noqa: E402
from qkernel_testing import mnist_int8_graph  # noqa: E402


def per_image(fn, x, min_time):
    fn(x)
    reps, start = 0, time.perf_counter()
    best = float("inf")
    while time.perf_counter() - start < min_time or reps < 5:
        t = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - t)
        reps += 1
    return best / len(x) * 1e6


def ort_int8_model(path, calibration):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": calibration[i:i + 1]} for i in range(len(calibration))])

        def get_next(self):
            return next(self.items, None)

    tmp = tempfile.mkdtemp()
    pre, out = os.path.join(tmp, "pre.onnx"), os.path.join(tmp, "int8.onnx")
    quant_pre_process(path, pre)
    quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-time", type=float, default=1.0)
    parser.add_argument("--profile", action="store_true", help="also print per-kernel times of lepton int8")
    args = parser.parse_args()
    images, labels = mnist_test_images()
    path = bundled_model_path()
    int8 = compile_graph(mnist_int8_graph(path, images[:200]), options={"threads": 1})
    fp32 = lc.compile(path, threads=1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    ort32 = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    ort8 = ort.InferenceSession(ort_int8_model(path, images[:200]), options, providers=["CPUExecutionProvider"])
    runs = {
        "lepton int8": lambda x: int8(x),
        "lepton fp32": lambda x: fp32(x),
        "ORT fp32": lambda x: ort32.run(None, {"input": x}),
        "ORT int8 (QDQ)": lambda x: ort8.run(None, {"input": x}),
    }
    accuracy = {name: float((np.asarray(fn(images)[0] if "ORT" in name else fn(images)).argmax(1) == labels).mean())
                for name, fn in runs.items()}
    print(f"{'':16s} {'batch 1':>10s} {'batch 64':>10s} {'top-1':>7s}   (µs/image, one thread)")
    for name, fn in runs.items():
        t1 = per_image(fn, images[:1], args.min_time)
        t64 = per_image(fn, images[:64], args.min_time)
        print(f"{name:16s} {t1:10.2f} {t64:10.2f} {accuracy[name]:7.3f}")
    if args.profile:
        print(f"  {'lepton int8 kernel':40s} {'batch 1':>8s} {'batch 64':>8s}   (µs/image)")
        per_batch = {}
        for batch, repeats in ((1, 2000), (64, 200)):
            _, times = int8.run_profiled({"input": images[:batch]}, repeats=repeats)
            per_batch[batch] = [t / batch * 1e6 for t in times]
        for i, kernel in enumerate(int8.summary["kernels"]):
            print(f"  {kernel:40s} {per_batch[1][i]:8.2f} {per_batch[64][i]:8.2f}")


if __name__ == "__main__":
    main()
