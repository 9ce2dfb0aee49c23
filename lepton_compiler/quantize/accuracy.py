"""The accuracy-aware mode: return layers to fp32, worst first, until a bound holds.

Bounds, measured on the calibration data against the fp32 graph:

* ``max_accuracy_drop`` (with ``labels``, one class per calibration sample): top-1 accuracy
  of the first output may fall by at most this many **percentage points** (0.5: 96.9 % may
  become 96.4 %);
* ``max_error``: the largest absolute difference over every element of every output.

Ranking: each int8 layer's *own* error is the output noise it causes alone, when it is the
only int8 layer (every other layer fp32; the "not worth it" rule off so that it does get
quantized): the signal-to-quantization-noise ratio of the outputs, in dB. The lowest SQNR
goes back to fp32 first. A step's new fp32 layer can take a neighbour along (a small layer
whose input is no longer int8, see ``rewrite.py``); each step lists the fp32 layers after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

from ..errors import InputError, LeptonError
from ..ir import Graph
from .evaluate import max_abs_error, outputs, sqnr_db, top1
from .rewrite import QuantizedGraph, quantize_graph


@dataclass(frozen=True)
class Step:
    returned: Optional[str]      # the layer returned to fp32 at this step (None: all of them int8)
    metric: float                # accuracy drop in points, or max abs error
    fp32_layers: tuple[str, ...]


@dataclass
class AccuracySearch:
    """What the accuracy-aware mode did."""

    bound: str                               # "max_accuracy_drop" or "max_error"
    limit: float
    fp32_accuracy: Optional[float]           # percent, with labels
    ranking: list[tuple[str, float]] = field(default_factory=list)   # (layer, output SQNR dB alone), worst first
    steps: list[Step] = field(default_factory=list)
    met: bool = False

    @property
    def returned(self) -> list[str]:
        return [s.returned for s in self.steps if s.returned is not None]

    def to_json(self) -> dict:
        return {"bound": self.bound, "limit": self.limit, "fp32_accuracy": self.fp32_accuracy, "met": self.met,
                "ranking": [[n, v] for n, v in self.ranking],
                "steps": [{"returned": s.returned, "metric": s.metric, "fp32_layers": list(s.fp32_layers)}
                          for s in self.steps]}

    @classmethod
    def from_json(cls, data: Mapping) -> "AccuracySearch":
        """The inverse of ``to_json`` (a cached compile restores its search from the model's summary)."""
        return cls(data["bound"], data["limit"], data["fp32_accuracy"], [(n, v) for n, v in data["ranking"]],
                   [Step(s["returned"], s["metric"], tuple(s["fp32_layers"])) for s in data["steps"]], data["met"])

    def format(self) -> str:
        what = "top-1 accuracy drop (points)" if self.bound == "max_accuracy_drop" else "max abs output error"
        lines = [f"accuracy-aware quantization: {self.bound} = {self.limit:g} ({what})"]
        if self.fp32_accuracy is not None:
            lines.append(f"fp32 top-1 on the calibration data: {self.fp32_accuracy:.2f}%")
        lines.append("layers by their own int8 error (output SQNR when int8 alone, dB): " +
                     ", ".join(f"{n} {v:.1f}" for n, v in self.ranking))
        for s in self.steps:
            head = "all eligible layers int8" if s.returned is None else f"{s.returned} back to fp32"
            lines.append(f"  {head}: {s.metric:.4g}" + (f" (fp32: {', '.join(s.fp32_layers)})" if s.fp32_layers else ""))
        lines.append("bound met" if self.met else "bound NOT met even with every layer fp32")
        return "\n".join(lines)


def _check_bounds(max_accuracy_drop, max_error, labels, samples: int) -> Optional[np.ndarray]:
    if max_accuracy_drop is not None and max_error is not None:
        raise LeptonError("give max_accuracy_drop= or max_error=, not both")
    for name, value in (("max_accuracy_drop", max_accuracy_drop), ("max_error", max_error)):
        if value is not None and (not isinstance(value, (int, float)) or not value >= 0 or value == float("inf")):
            raise LeptonError(f"{name}= must be a finite number >= 0, not {value!r}")
    if max_accuracy_drop is not None and labels is None:
        raise LeptonError("max_accuracy_drop= needs labels= (one class per calibration sample); "
                          "without labels use max_error=")
    if labels is None:
        return None
    if max_accuracy_drop is None:
        raise LeptonError("labels= applies to max_accuracy_drop=")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise InputError(f"labels= must be a 1-D array of integer classes, got {labels.dtype}{list(labels.shape)}")
    if labels.shape[0] != samples:
        raise InputError(f"labels= has {labels.shape[0]} entries for {samples} calibration samples")
    return labels


def search(graph: Graph, ranges: Mapping[str, tuple[float, float]], feeds: Mapping[str, np.ndarray],
           batch_size: int, keep_fp32=None, *, max_accuracy_drop=None, labels=None,
           max_error=None) -> tuple[QuantizedGraph, Optional[AccuracySearch]]:
    """Quantize ``graph``; with a bound, return layers to fp32 until it holds (see the module)."""
    samples = next(iter(feeds.values())).shape[0]
    labels = _check_bounds(max_accuracy_drop, max_error, labels, samples)
    keep = set([keep_fp32] if isinstance(keep_fp32, str) else keep_fp32 or [])
    result = quantize_graph(graph, ranges, keep)
    if max_accuracy_drop is None and max_error is None:
        return result, None
    reference = outputs(graph, feeds, batch_size)
    if labels is not None:
        fp32_accuracy = 100.0 * float(np.mean(top1(reference[0]) == labels))
        log = AccuracySearch("max_accuracy_drop", float(max_accuracy_drop), fp32_accuracy)

        def metric(q: QuantizedGraph) -> float:
            return fp32_accuracy - 100.0 * float(np.mean(top1(outputs(q.graph, feeds, batch_size)[0]) == labels))
    else:
        log = AccuracySearch("max_error", float(max_error), None)

        def metric(q: QuantizedGraph) -> float:
            return max_abs_error(reference, outputs(q.graph, feeds, batch_size))

    signal = sum(float(np.sum(np.square(r, dtype=np.float64))) for r in reference)
    ranking = []
    for name in result.int8_layers:
        alone = quantize_graph(graph, ranges, [n for n in result.int8_layers if n != name] + sorted(keep), min_macs=0)
        noise = sum(float(np.sum(np.square(v.astype(np.float64) - r)))
                    for r, v in zip(reference, outputs(alone.graph, feeds, batch_size)))
        ranking.append((name, sqnr_db(signal, noise)))
    ranking.sort(key=lambda item: item[1])
    log.ranking = ranking
    value = metric(result)
    log.steps.append(Step(None, value, tuple(result.fp32_layers)))
    queue = [name for name, _ in ranking]
    while value > log.limit and queue:
        name = queue.pop(0)
        if name not in result.int8_layers:   # already fp32, taken along by an earlier step
            continue
        keep.add(name)
        result = quantize_graph(graph, ranges, keep)
        value = metric(result)
        log.steps.append(Step(name, value, tuple(result.fp32_layers)))
    log.met = value <= log.limit
    return result, log
