#!/usr/bin/env python3
"""The MNIST CNN side by side with ONNX Runtime: batch 1 and 64, one and two threads.

    python3 benchmarks/bench_mnist.py [--min-time 1.0] [--no-fp32] [--no-int8]
                                      [--isolate auto|always|never] [--ort-spinning on|off]

First the fp32 table (``lepton bench --batch 1,64 --threads 1,2``), then int8 (``lepton bench
--quantize int8 ...``, see ``lepton_compiler.bench.int8_benchmark``). Rows with one thread are
timed in one process, rounds interleaved; rows with two, each engine in its own process, blocks
alternating (``--isolate``, see ``lepton_compiler.bench.WorkerPool``); the line above each table
says which. ``--ort-spinning`` sets ONNX Runtime's ``session.intra_op.allow_spinning``. lepton int8
(``lc.compile(quantize="int8")``, minmax calibration) next to lepton fp32, ONNX Runtime fp32
and ONNX Runtime int8 (the same model quantized by ``onnxruntime.quantization.quantize_static``:
QDQ, per-channel int8 weights, uint8 activations, MinMax), both calibrated on the same 200
training images, with the top-1 accuracy of each on the 1000 test images.

Data (installed with the package): ``lepton_compiler/demo/mnist_calib200.npz``, the first 200
images of ``examples/mnist/data/mnist_train4000.npz`` (see its README for provenance and
license), and ``lepton_compiler/demo/mnist_test1000.npz``.
"""

import argparse
import sys

from lepton_compiler.cli import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-time", default="1.0", help="seconds of timing per row (default 1.0)")
    parser.add_argument("--no-fp32", action="store_true", help="skip the fp32 table")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 table")
    parser.add_argument("--isolate", choices=("auto", "always", "never"), default="auto",
                        help="time each engine in its own process (default auto: rows with two threads)")
    parser.add_argument("--ort-spinning", choices=("on", "off"), help="ONNX Runtime's intra-op spinning "
                        "(default: its own, on)")
    args = parser.parse_args()
    common = ["bench", "--batch", "1,64", "--threads", "1,2", "--min-time", args.min_time, "--isolate", args.isolate]
    if args.ort_spinning:
        common += ["--ort-spinning", args.ort_spinning]
    status = 0
    if not args.no_fp32:
        status = main(common)
    if not args.no_int8:
        status = main(common + ["--quantize", "int8"]) or status
    sys.exit(status)
