#!/usr/bin/env python3
"""Resident memory over many runs (and compiles) of the MNIST CNN: is it flat?

    python3 benchmarks/memory_rss.py [--runs 100000] [--batches 1,7,64] [--compiles 0]

Runs the bundled model ``--runs`` times, cycling through ``--batches`` from two threads (so the
per-thread workspaces are reallocated), and prints the resident set size (Linux ``/proc``) every
tenth of the way; then compiles a model ``--compiles`` times. The first rows include warm-up.
"""

import argparse
import gc
import os
import sys
import threading
import time

import numpy as np

import lepton_compiler as lc
from lepton_compiler.demo import bundled_model_path, mnist_test_images


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--batches", default="1,7,64")
    parser.add_argument("--compiles", type=int, default=0)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    x, _ = mnist_test_images()
    x = np.ascontiguousarray(x[:max(batches)])
    model = lc.compile(bundled_model_path())
    feeds = [{"input": x[:b]} for b in batches]
    step = max(1, args.runs // 10)
    start = time.perf_counter()
    print(f"{'runs':>9}  {'RSS MiB':>8}  {'s':>6}")
    print(f"{0:>9}  {rss_mib():>8.1f}  {0:>6.1f}")
    done = 0
    while done < args.runs:
        count = min(step, args.runs - done)

        def work(offset, n=count):
            for i in range(offset, n, 2):
                model.run(None, feeds[i % len(feeds)])
        workers = [threading.Thread(target=work, args=(k,)) for k in range(2)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        done += count
        gc.collect()
        print(f"{done:>9}  {rss_mib():>8.1f}  {time.perf_counter() - start:>6.1f}", flush=True)
    if args.compiles:
        print(f"\n{'compiles':>9}  {'RSS MiB':>8}")
        for i in range(1, args.compiles + 1):
            lc.compile(bundled_model_path())
            if i % max(1, args.compiles // 10) == 0:
                gc.collect()
                print(f"{i:>9}  {rss_mib():>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
