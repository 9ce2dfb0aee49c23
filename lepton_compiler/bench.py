"""Side-by-side timing of lepton and ONNX Runtime on the same model, inputs and machine."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


def median_seconds(fn: Callable[[], object], min_time: float = 0.3, repeats: int = 7) -> float:
    """Median over ``repeats`` rounds of the mean time of ``fn``; each round lasts ~min_time/repeats."""
    fn()  # warm up (first-run page faults, lazy loading)
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    per_round = max(1, int(min_time / repeats / once))
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(per_round):
            fn()
        rounds.append((time.perf_counter() - start) / per_round)
    return float(np.median(rounds))


@dataclass(frozen=True)
class BenchRow:
    batch: int
    threads: int
    lepton_us: float   # per image
    ort_us: float      # per image

    @property
    def ratio(self) -> float:
        """ONNX Runtime time / lepton time: above 1 means lepton is faster."""
        return self.ort_us / self.lepton_us


def ort_session(model_bytes: bytes, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def random_feed(model, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feed = {}
    for info in model.inputs:
        shape = tuple(batch if isinstance(d, str) else d for d in info.shape)
        feed[info.name] = rng.random(shape).astype(info.dtype)
    return feed


def compare(model_bytes: bytes, compiled_for_threads: Callable[[int], object], batches: Sequence[int],
            threads: Sequence[int], min_time: float = 0.3) -> list[BenchRow]:
    rng = np.random.default_rng(0)
    rows = []
    for t in threads:
        model = compiled_for_threads(t)
        session = ort_session(model_bytes, t)
        for batch in batches:
            feed = random_feed(model, batch, rng)
            lepton = median_seconds(lambda: model.run(None, feed), min_time)
            ort = median_seconds(lambda: session.run(None, feed), min_time)
            rows.append(BenchRow(batch, t, lepton / batch * 1e6, ort / batch * 1e6))
    return rows


def format_table(rows: Sequence[BenchRow]) -> str:
    lines = ["| batch | threads | lepton µs/image | ONNX Runtime µs/image | ORT/lepton |",
             "|------:|--------:|----------------:|----------------------:|-----------:|"]
    for r in rows:
        lines.append(f"| {r.batch} | {r.threads} | {r.lepton_us:.1f} | {r.ort_us:.1f} | {r.ratio:.2f}x |")
    return "\n".join(lines)
