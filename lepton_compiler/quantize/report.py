"""Per-layer error of the int8 graph against the fp32 graph, on the calibration data.

For each layer (and each model output), over every calibration sample: the output of the
layer in the int8 graph (a uint8 output dequantized with its scale and zero point) against
the same value of the fp32 graph, as the signal-to-quantization-noise ratio
``10 log10(sum(fp32^2) / sum((int8 - fp32)^2))`` in dB (higher is better; about 6 dB per
bit) and the largest absolute error. Errors accumulate: a layer's figure includes what the
layers before it lost, so the layer where SQNR drops sharply is the one that loses accuracy.
An fp32 layer after int8 ones shows the error it inherits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np

from ..ir import Graph
from ..ops import qmath
from .evaluate import run_batched, sqnr_db
from .rewrite import QuantizedGraph


@dataclass(frozen=True)
class ErrorRow:
    name: str              # layer name, or the output's name
    kind: str              # "Conv", "Gemm" or "output"
    precision: str         # "int8 -> uint8", "int8 -> float32", "fp32", "" for outputs
    sqnr_db: float
    max_abs_error: float
    note: str = ""         # why a layer stayed fp32

    def to_json(self) -> dict:
        finite = math.isfinite(self.sqnr_db)
        return {"name": self.name, "kind": self.kind, "precision": self.precision,
                "sqnr_db": self.sqnr_db if finite else ("inf" if self.sqnr_db > 0 else "-inf"),
                "max_abs_error": self.max_abs_error, "note": self.note}


@dataclass
class QuantizationReport:
    method: str
    samples: int
    rows: list[ErrorRow]
    search: Optional[str] = None     # the accuracy-aware mode's account, when it ran

    def row(self, name: str) -> ErrorRow:
        return next(r for r in self.rows if r.name == name)

    def to_json(self) -> dict:
        return {"method": self.method, "samples": self.samples, "rows": [r.to_json() for r in self.rows],
                "search": self.search}

    def format(self) -> str:
        head = [f"int8 vs fp32 on {self.samples} calibration samples (calibration method: {self.method})",
                "| layer | op | precision | SQNR dB | max abs error | note |",
                "|---|---|---|---:|---:|---|"]
        body = [f"| {r.name} | {r.kind} | {r.precision} | {_db(r.sqnr_db)} | {r.max_abs_error:.4g} | {r.note} |"
                for r in self.rows]
        tail = [self.search] if self.search else []
        return "\n".join(head + body + tail)


def _db(value: float) -> str:
    return "exact" if value == math.inf else f"{value:.1f}"


def quantization_report(graph: Graph, quantized: QuantizedGraph, feeds: Mapping[str, np.ndarray],
                        batch_size: int, method: str = "", search: Optional[str] = None) -> QuantizationReport:
    """The per-layer error table of ``quantized`` (the int8 form of ``graph``) on ``feeds``."""
    outputs = [v.name for v in graph.outputs]
    layer_names = {d.name: d for d in quantized.layers}
    values = {n.name: n.outputs[0].name for n in graph.nodes if n.name in layer_names}
    names = list(dict.fromkeys([values[d.name] for d in quantized.layers] + outputs))
    dtypes = {v.name: v.type.dtype for v in quantized.graph.values()}
    sums = {n: [0.0, 0.0, 0.0] for n in names}   # signal, noise, max abs error

    fp32_parts: dict[int, list[np.ndarray]] = {}
    run_batched(graph, feeds, names, batch_size, lambda start, vals: fp32_parts.__setitem__(start, vals))

    def accumulate(start: int, vals) -> None:
        for name, ref, got in zip(names, fp32_parts.pop(start), vals):
            if dtypes[name] == "uint8":
                scale, zp = quantized.params[name]
                got = qmath.dequantize(got, np.float32(scale), zp)
            diff = got.astype(np.float64) - ref
            acc = sums[name]
            acc[0] += float(np.sum(np.square(ref, dtype=np.float64)))
            acc[1] += float(np.sum(np.square(diff)))
            acc[2] = max(acc[2], float(np.max(np.abs(diff))) if diff.size else 0.0)

    run_batched(quantized.graph, feeds, names, batch_size, accumulate)
    rows = []
    for d in quantized.layers:
        signal, noise, peak = sums[values[d.name]]
        precision = f"int8 -> {d.output}" if d.int8 else "fp32"
        rows.append(ErrorRow(d.name, d.op, precision, sqnr_db(signal, noise), peak, d.reason))
    for name in outputs:
        signal, noise, peak = sums[name]
        rows.append(ErrorRow(name, "output", "", sqnr_db(signal, noise), peak))
    samples = next(iter(feeds.values())).shape[0]
    return QuantizationReport(method, samples, rows, search)
