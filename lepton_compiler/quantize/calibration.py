"""Calibration: read the user's sample inputs, run the fp32 graph on them, and choose each
activation's range by one of three methods.

Data (``calibration=``): a path to an ``.npz`` with one array per model input, a dict
``{input name: array}`` (all samples along axis 0), or an iterable of feed dicts (batches).
It is read once, checked (names, dtype, shape, at least one sample, no NaN or infinity) and
held in memory: the accuracy-aware mode and the report run it again.

Observers (:class:`Histogram`) see every value of a tensor and keep its exact minimum and
maximum and a histogram whose bins are powers of two wide (``2**exp``), aligned at zero and
as narrow as lets the largest magnitude seen fit in ``BINS`` bins. When a batch holds a
larger value the bins widen by merging neighbours, which is exact (``floor(a / 2w) ==
floor(floor(a / w) / 2)``), so the final histogram depends only on the values seen, not on
how they were batched or in what order: every method's result is independent of the batch
size the data came in. The fp32 graph itself always runs on the same fixed-size batches
(``batch_size``), whatever the chunks the data came in.

Methods, each giving a range ``(lo, hi)`` that ``qmath.choose_uint8`` maps onto uint8:

* ``minmax``: the smallest and largest value seen.
* ``percentile``: cuts ``(100 - percentile) / 2`` percent of the values off each end
  (default 99.99, i.e. 0.005 % per end); bin edges, so to within one bin width.
* ``entropy``: TensorRT's KL-divergence method on the histogram of ``|x|``: of the thresholds
  ``t`` (bin edges from ``levels`` bins up), the one minimizing ``KL(P || Q)`` where ``P`` is
  the histogram clipped at ``t`` (outliers added to the last bin) and ``Q`` the same bins
  quantized to ``LEVELS`` = 128 levels and expanded back over their non-empty bins, as
  TensorRT and ONNX Runtime search it (for a non-negative tensor too, whose [0, t] then gets
  255 uint8 steps: with 255 levels the search hardly ever clips, since expanding a level over
  non-empty bins only costs little). The range is ``(max(min, -t), min(max, t))``. Exact zeros are left out of
  the histogram: zero is exact in uint8 (the zero point), and a ReLU's spike of zeros would
  otherwise dominate ``P`` and drive the threshold down (pytorch-quantization's entropy
  calibrator flattens the same spike).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from ..errors import InputError, LeptonError
from ..ir import Graph
from ..progress import progress

METHODS = ("minmax", "percentile", "entropy")
BINS = 2048
"""Histogram bins per sign; between BINS/2 and BINS of them hold the range of the data."""
LEVELS = 128
"""Quantization levels the entropy method's search assumes (TensorRT's and ONNX Runtime's)."""
DEFAULT_PERCENTILE = 99.99
DEFAULT_BATCH = 32
JSON_FORMAT = "lepton-calibration/1"


# -- observers ---------------------------------------------------------------------------------
class Histogram:
    """Exact min/max and a batching-independent histogram of one tensor's values (see the module)."""

    def __init__(self, bins: int = BINS):
        if bins < 2 or bins & (bins - 1):
            raise LeptonError(f"histogram bins must be a power of two, not {bins}")
        self.bins = bins
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.zeros = 0
        self.exp: Optional[int] = None     # bin width 2**exp; None while only zeros were seen
        self.pos = np.zeros(bins, np.int64)  # x > 0: floor(x / 2**exp)
        self.neg = np.zeros(bins, np.int64)  # x < 0: floor(-x / 2**exp)

    @property
    def width(self) -> float:
        return math.ldexp(1.0, self.exp) if self.exp is not None else 0.0

    def update(self, values: np.ndarray) -> None:
        x = np.asarray(values, np.float32).ravel()
        if x.size == 0:
            return
        if not np.isfinite(x).all():
            raise LeptonError("an observed tensor holds NaN or infinity")
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        self.count += x.size
        a = np.abs(x)
        peak = float(a.max())
        zero = x == 0
        self.zeros += int(zero.sum())
        if peak == 0.0:
            return
        # peak / bins = m * 2**e with 0.5 <= m < 1 (exact: bins is a power of two), so e is the
        # smallest exponent with peak < bins * 2**e.
        e = math.frexp(peak / self.bins)[1]
        if self.exp is None:
            self.exp = e
        elif e > self.exp:
            self._coarsen(e - self.exp)
            self.exp = e
        index = np.floor(np.ldexp(a, -self.exp)).astype(np.int64)
        self.pos += np.bincount(index[x > 0], minlength=self.bins)
        self.neg += np.bincount(index[x < 0], minlength=self.bins)

    def _coarsen(self, steps: int) -> None:
        factor = 1 << steps
        for name in ("pos", "neg"):
            counts = getattr(self, name)
            merged = np.zeros(self.bins, np.int64)
            if factor >= self.bins:
                merged[0] = counts.sum()
            else:
                merged[:self.bins // factor] = counts.reshape(-1, factor).sum(axis=1)
            setattr(self, name, merged)

    def state(self) -> tuple:
        """Everything the methods read (for comparing observers)."""
        return (self.min, self.max, self.count, self.zeros, self.exp, self.pos.tobytes(), self.neg.tobytes())

    # -- methods ---------------------------------------------------------------------------
    def range(self, method: str, percentile: float = DEFAULT_PERCENTILE) -> tuple[float, float]:
        check_method(method)
        if self.count == 0:
            raise LeptonError("no values were observed")
        if method == "minmax" or self.exp is None:
            return self.min, self.max
        if method == "percentile":
            return self._percentile(percentile)
        return self._entropy()

    def _percentile(self, percentile: float) -> tuple[float, float]:
        if not 50.0 < percentile <= 100.0:
            raise LeptonError(f"percentile must be in (50, 100], not {percentile}")
        if percentile == 100.0:
            return self.min, self.max
        # bins in value order: negatives (most negative first), then zeros and positives.
        pos = self.pos.copy()
        pos[0] += self.zeros
        counts = np.concatenate([self.neg[::-1], pos])
        lower_edges = np.concatenate([-(np.arange(self.bins, 0, -1)), np.arange(self.bins)]) * self.width
        cdf = np.cumsum(counts) / self.count
        cut = (100.0 - percentile) / 200.0
        left = int(np.searchsorted(cdf, cut, side="right"))
        right = int(np.searchsorted(cdf, 1.0 - cut, side="left"))
        lo = float(lower_edges[min(left, counts.size - 1)])
        hi = float(lower_edges[min(right, counts.size - 1)]) + self.width
        return max(self.min, lo), min(self.max, hi)

    def _entropy(self) -> tuple[float, float]:
        counts = self.pos + self.neg   # exact zeros (ReLU's) quantize without error: left out
        t = entropy_threshold(counts, LEVELS) * self.width
        return max(self.min, -t), min(self.max, t)


def entropy_threshold(hist: np.ndarray, levels: int) -> int:
    """The number of leading bins of ``hist`` (a histogram of magnitudes) whose clipping to
    ``levels`` quantization levels loses the least information (KL divergence, TensorRT)."""
    nonzero = np.nonzero(hist)[0]
    used = int(nonzero[-1]) + 1 if nonzero.size else 0
    if used <= levels:
        return max(used, 1)
    hist = hist[:used].astype(np.float64)
    total = hist.sum()
    csum = np.concatenate([[0.0], np.cumsum(hist)])
    cnz = np.concatenate([[0], np.cumsum(hist > 0)])
    best, best_kl = used, math.inf
    for i in range(levels, used + 1):
        p = hist[:i].copy()
        p[-1] += total - csum[i]
        edges = (np.arange(levels + 1) * i) // levels
        sums = csum[edges[1:]] - csum[edges[:-1]]
        nz = cnz[edges[1:]] - cnz[edges[:-1]]
        per_bin = np.repeat(sums / np.maximum(nz, 1), np.diff(edges))
        q = np.where(hist[:i] > 0, per_bin, 0.0)
        p /= p.sum()
        q_total = q.sum()
        if q_total == 0:
            continue
        q /= q_total
        mask = p > 0
        qm = np.maximum(q[mask], 1e-12)   # a clipped last bin may be empty in q: smoothed
        kl = float(np.sum(p[mask] * np.log(p[mask] / qm)))
        if kl < best_kl:
            best, best_kl = i, kl
    return best


# -- calibration data --------------------------------------------------------------------------
@dataclass(frozen=True)
class InputSpec:
    """What calibration data must match: an input's name, dtype and shape (str dims are symbolic)."""

    name: str
    dtype: str
    shape: tuple


def input_specs(graph: Graph) -> list[InputSpec]:
    return [InputSpec(v.name, v.type.dtype, tuple(v.type.shape)) for v in graph.inputs]


def _shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _feeds(data) -> list[Mapping]:
    """The data as a list of feed dicts (batches)."""
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        try:
            with np.load(path, allow_pickle=False) as npz:
                if not hasattr(npz, "files"):
                    raise InputError(f"calibration data '{path}' is a single .npy array; give an .npz with "
                                     "one array per model input")
                return [{k: npz[k] for k in npz.files}]
        except (OSError, ValueError, EOFError) as exc:
            raise InputError(f"cannot read calibration data from '{path}': {exc}") from None
    if isinstance(data, Mapping):
        return [data]
    if isinstance(data, np.ndarray) or not isinstance(data, Iterable):
        raise InputError("calibration= takes an .npz path, a dict {input name: array} or an iterable of "
                         f"feed dicts, not {type(data).__name__}")
    feeds = []
    for k, feed in enumerate(data):
        if not isinstance(feed, Mapping):
            raise InputError(f"calibration batch {k} is a {type(feed).__name__}, not a dict {{input name: array}}")
        feeds.append(feed)
    return feeds


def _check_array(spec: InputSpec, value, where: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise InputError(f"calibration input {spec.name!r}{where} is a {type(value).__name__}, not a numpy array")
    if str(value.dtype) != spec.dtype:
        raise InputError(f"calibration input {spec.name!r}{where} is {value.dtype}; the model takes {spec.dtype}")
    bad = value.ndim != len(spec.shape) or len(spec.shape) == 0 or any(
        isinstance(d, int) and d != n for d, n in zip(spec.shape[1:], value.shape[1:]))
    if not bad and isinstance(spec.shape[0], int) and value.shape[0] % spec.shape[0]:
        bad = True
    if bad:
        raise InputError(f"calibration input {spec.name!r}{where} has shape {_shape_text(value.shape)}; "
                         f"the model takes {_shape_text(spec.shape)}")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        sample = int(np.argwhere(~np.isfinite(value.reshape(value.shape[0], -1)))[0][0])
        raise InputError(f"calibration input {spec.name!r}{where} holds NaN or infinity (sample {sample})")
    return value


def load_calibration(data, specs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    """Read and check calibration data; returns every sample of each input, concatenated."""
    feeds = _feeds(data)
    names = [s.name for s in specs]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for k, feed in enumerate(feeds):
        where = f" (batch {k})" if len(feeds) > 1 else ""
        for name in feed:
            if name not in parts:
                raise InputError(f"calibration data has an array {name!r}, which is not an input of the model "
                                 f"(its inputs: {', '.join(names)})")
        for spec in specs:
            if spec.name not in feed:
                raise InputError(f"calibration data{where} has no array for the model input {spec.name!r}")
            parts[spec.name].append(_check_array(spec, feed[spec.name], where))
        counts = {n: parts[n][-1].shape[0] for n in names}
        if len(set(counts.values())) > 1:
            raise InputError(f"calibration data{where}: the inputs have different numbers of samples ({counts})")
    if not feeds or sum(p.shape[0] for p in parts[names[0]]) == 0:
        raise InputError("calibration data is empty: it holds no samples")
    arrays = {}
    for name in names:
        shapes = {p.shape[1:] for p in parts[name] if p.shape[0]}
        if len(shapes) > 1:
            raise InputError(f"calibration input {name!r} changes shape between batches "
                             f"({', '.join(_shape_text(s) for s in sorted(shapes))})")
        arrays[name] = np.concatenate(parts[name]) if len(parts[name]) > 1 else parts[name][0]
    return arrays


def sample_count(feeds: Mapping[str, np.ndarray]) -> int:
    return next(iter(feeds.values())).shape[0]


def batch_size_for(specs: Sequence[InputSpec], requested: int = DEFAULT_BATCH) -> int:
    """The batch the fp32 graph runs on: the model's own when its batch dim is static."""
    static = [s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)]
    return static[0] if static else requested


def batches(feeds: Mapping[str, np.ndarray], size: int):
    """Fixed-size slices of the calibration samples (the last may be shorter)."""
    total = sample_count(feeds)
    for start in range(0, total, size):
        yield {n: a[start:start + size] for n, a in feeds.items()}


# -- running the observers ---------------------------------------------------------------------
Runner = Callable[[Mapping[str, np.ndarray], Sequence[str]], Sequence[np.ndarray]]


def interpreter_runner(graph: Graph) -> Runner:
    """Runs ``graph`` with the reference interpreter, returning the named values. The graph run is
    ``rewrite.split_activations(graph)``: the same values, plus the pre-activation output of each
    layer whose fused activation an int8 region would apply as a table (``preactivation_name``)."""
    from ..ops.interpreter import interpret
    from .rewrite import split_activations
    observed = split_activations(graph)
    return lambda feed, names: interpret(observed, feed, names)


@dataclass
class Calibration:
    """The range chosen for each observed value (by name), and how it was chosen."""

    method: str
    ranges: dict[str, tuple[float, float]]
    samples: int = 0
    percentile: float = DEFAULT_PERCENTILE
    observers: dict[str, Histogram] = field(default_factory=dict, repr=False, compare=False)

    def to_json(self) -> dict:
        return {"format": JSON_FORMAT, "method": self.method, "samples": self.samples,
                "percentile": self.percentile, "ranges": {k: [lo, hi] for k, (lo, hi) in self.ranges.items()}}

    @classmethod
    def from_json(cls, data: Mapping) -> "Calibration":
        if data.get("format") != JSON_FORMAT:
            raise LeptonError(f"not a lepton calibration table (format {data.get('format')!r})")
        ranges = {str(k): (float(v[0]), float(v[1])) for k, v in data["ranges"].items()}
        return cls(str(data["method"]), ranges, int(data.get("samples", 0)),
                   float(data.get("percentile", DEFAULT_PERCENTILE)))

    @staticmethod
    def is_json(data) -> bool:
        return isinstance(data, Mapping) and data.get("format") == JSON_FORMAT


def check_method(method: str) -> str:
    if method not in METHODS:
        raise LeptonError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    return method


def observe(feeds: Mapping[str, np.ndarray], names: Sequence[str], runner: Runner,
            batch_size: int = DEFAULT_BATCH, bins: int = BINS) -> dict[str, Histogram]:
    """Run the fp32 graph on every calibration batch and observe the values ``names``."""
    observers = {n: Histogram(bins) for n in names}
    total = sample_count(feeds)
    with progress(-(-total // batch_size), "calibrating") as step:
        for k, batch in enumerate(batches(feeds, batch_size)):
            for name, value in zip(names, runner(batch, list(names))):
                try:
                    observers[name].update(value)
                except LeptonError:
                    raise LeptonError(f"calibration: value {name!r} holds NaN or infinity on calibration batch "
                                      f"{k} (the fp32 model overflows on this data)") from None
            step(f"{min((k + 1) * batch_size, total)}/{total} samples")
    return observers


def calibrate(graph: Graph, feeds: Mapping[str, np.ndarray], names: Sequence[str], method: str = "minmax",
              *, batch_size: int = DEFAULT_BATCH, percentile: float = DEFAULT_PERCENTILE,
              runner: Optional[Runner] = None) -> Calibration:
    """Observe ``names`` (values of the fp32 ``graph``) on ``feeds`` and choose their ranges."""
    check_method(method)
    observers = observe(feeds, names, runner or interpreter_runner(graph), batch_size)
    ranges = {n: obs.range(method, percentile) for n, obs in observers.items()}
    return Calibration(method, ranges, sample_count(feeds), percentile, observers)
