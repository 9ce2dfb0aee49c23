#!/usr/bin/env python3
"""The MNIST CNN on Ray (not a test): batch-inference throughput and serving latency, each next to
the same work in one process.

    python3 benchmarks/ray_bench.py [--repeats 200] [--requests 400] [--clients 4]

* Batch inference: the 1000 bundled test images repeated ``--repeats`` times, in batches of 256.
  One process (the artifact loaded here, one thread), then ``lepton_compiler.ray.predict`` with 1
  and 2 workers of one thread each on a local cluster (``ray.init(num_cpus=2)``), the image column
  left out of the result (``keep_input_columns=False``). Ray's figures are wall time from
  submitting to the last row, actor start and artifact loading included.
* Serving: ``lepton_compiler.ray.serve`` (one replica, one thread, max_batch_size 8, 2 ms batch
  wait) on 127.0.0.1; a fixed number of single-image JSON requests, first from one client, then
  from ``--clients`` concurrent ones; latency percentiles per request, client side. Next to it,
  ``model.run`` on one image in this process.

Every request loop is bounded by count; all traffic stays on the loopback interface.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import lepton_compiler as lc
from lepton_compiler.demo import bundled_model_path


def images() -> np.ndarray:
    with np.load(os.path.join(os.path.dirname(bundled_model_path()), "mnist_test1000.npz")) as data:
        return data["x"].astype(np.float32) / np.float32(255)


def single_process(artifact: str, x: np.ndarray, batch: int) -> float:
    model = lc.load(artifact)
    model.run(None, {"input": x[:batch]})   # warm-up: links the code
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        model.run(None, {"input": x[i:i + batch]})
    return len(x) / (time.perf_counter() - start)


def ray_data(ray, artifact: str, x: np.ndarray, batch: int, workers: int) -> tuple[float, bool]:
    from lepton_compiler.ray import predict

    dataset = ray.data.from_numpy(x).materialize()
    start = time.perf_counter()
    rows = 0
    for part in predict(dataset, artifact, input_column="data", output_column="probs", batch_size=batch,
                        num_workers=workers, keep_input_columns=False).iter_batches(batch_size=None,
                                                                                    batch_format="numpy"):
        rows += len(part["probs"])
    seconds = time.perf_counter() - start
    return rows / seconds, rows == len(x)


def percentiles(latencies: list[float]) -> str:
    ms = np.array(latencies) * 1e3
    return f"p50 {np.percentile(ms, 50):7.2f} ms   p99 {np.percentile(ms, 99):7.2f} ms"


def serving(artifact: str, x: np.ndarray, requests_count: int, clients: int) -> list[str]:
    import requests
    from ray import serve

    from lepton_compiler.ray import serve as lepton_serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = lepton_serve(artifact, max_batch_size=8, batch_wait_ms=2, host="127.0.0.1", port=port)
    local = threading.local()   # one keep-alive connection per client thread

    def call(i: int) -> tuple[float, int]:
        session = getattr(local, "session", None) or setattr(local, "session", requests.Session()) \
            or local.session
        body = {"inputs": {"input": x[i % len(x)][None].tolist()}}
        start = time.perf_counter()
        r = session.post(url, json=body, timeout=30)
        elapsed = time.perf_counter() - start
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code}: {r.text}")
        return elapsed, int(r.headers["x-lepton-batch-size"])

    for i in range(20):   # warm-up: the replica links its code, the proxy its routes
        call(i)
    lines = []
    for n in (1, clients):
        start = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(call, range(requests_count)))
        wall = time.perf_counter() - start
        latencies = [r[0] for r in results]
        mean_batch = np.mean([r[1] for r in results])
        lines.append(f"  {n} client{'s' if n > 1 else ' '}: {percentiles(latencies)}   {requests_count / wall:7.1f} "
                     f"requests/s   mean requests per batch {mean_batch:.2f}")
    serve.shutdown()
    return lines


def in_process_latency(artifact: str, x: np.ndarray, count: int) -> str:
    model = lc.load(artifact)
    model.run(None, {"input": x[:1]})
    latencies = []
    for i in range(count):
        start = time.perf_counter()
        model.run(None, {"input": x[i % len(x)][None]})
        latencies.append(time.perf_counter() - start)
    return f"  model.run in process, 1 image: {percentiles(latencies)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=200, help="copies of the 1000 test images (default 200)")
    parser.add_argument("--batch", type=int, default=256, help="rows per batch (default 256)")
    parser.add_argument("--requests", type=int, default=400, help="requests per serving run (default 400)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    args = parser.parse_args()
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        print("needs Ray: pip install lepton_compiler[ray]", file=sys.stderr)
        return 1

    test = images()
    x = np.concatenate([test] * args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        artifact = os.path.join(tmp, "mnist.lepton")
        lc.compile(bundled_model_path(), threads=1).save(artifact)
        print(f"cpu: {lc.load(artifact).target.cpu}, {os.cpu_count()} cores; ray {ray.__version__}")
        print(f"\nbatch inference: {len(x):,} images, batches of {args.batch}, one thread per worker")
        print(f"  single process        : {single_process(artifact, x, args.batch):9,.0f} images/s")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        for workers in (1, 2):
            rate, complete = ray_data(ray, artifact, x, args.batch, workers)
            print(f"  ray data, {workers} worker{'s' if workers > 1 else ' '}    : {rate:9,.0f} images/s"
                  f"{'' if complete else '  (ROWS MISSING)'}  (wall time incl. actor start)")
        print(f"\nserving: {args.requests} single-image JSON requests per run, 1 replica, 1 thread, "
              "max_batch_size 8, batch wait 2 ms")
        for line in serving(artifact, test, args.requests, args.clients):
            print(line)
        print(in_process_latency(artifact, test, args.requests))
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
