"""Running an fp32 graph and its int8 form side by side on the calibration data, in the same
fixed batches, through the reference interpreter (whose int8 semantics every kernel matches)."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from ..ir import Graph
from ..ops.interpreter import interpret
from .calibration import batches


def run_batched(graph: Graph, feeds: Mapping[str, np.ndarray], names: Sequence[str], batch_size: int,
                each: Callable[[int, list[np.ndarray]], None]) -> None:
    """``each(start, values)`` for every batch, ``values`` the named values of ``graph``."""
    for k, batch in enumerate(batches(feeds, batch_size)):
        each(k * batch_size, interpret(graph, batch, list(names)))


def outputs(graph: Graph, feeds: Mapping[str, np.ndarray], batch_size: int) -> list[np.ndarray]:
    """The graph outputs on every sample, concatenated."""
    parts: list[list[np.ndarray]] = [[] for _ in graph.outputs]
    run_batched(graph, feeds, [v.name for v in graph.outputs], batch_size,
                lambda start, values: [p.append(v) for p, v in zip(parts, values)])
    return [np.concatenate(p) for p in parts]


def top1(output: np.ndarray) -> np.ndarray:
    """The predicted class of each sample: argmax over all but the batch axis."""
    return output.reshape(output.shape[0], -1).argmax(axis=1)


def max_abs_error(reference: Sequence[np.ndarray], values: Sequence[np.ndarray]) -> float:
    return max(float(np.max(np.abs(v.astype(np.float64) - r))) if r.size else 0.0
               for r, v in zip(reference, values))


def sqnr_db(signal: float, noise: float) -> float:
    """``10 log10(signal / noise)``; infinite without noise."""
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return float(10.0 * np.log10(signal / noise))
