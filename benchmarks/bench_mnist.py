#!/usr/bin/env python3
"""The MNIST CNN side by side with ONNX Runtime: batch 1 and 64, one and two threads.

    python3 benchmarks/bench_mnist.py [--min-time 1.0]

Same as ``lepton bench --batch 1,64 --threads 1,2``; prints the table to paste into notes.
"""

import argparse
import sys

from lepton_compiler.cli import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-time", default="1.0", help="seconds of timing per row (default 1.0)")
    args = parser.parse_args()
    sys.exit(main(["bench", "--batch", "1,64", "--threads", "1,2", "--min-time", args.min_time]))
