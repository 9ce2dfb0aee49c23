"""Post-training static quantization of an optimized fp32 graph, start to finish: read the
calibration data, observe the fp32 graph, rewrite to int8, optionally return layers to fp32
until an accuracy bound holds; the result can report its per-layer error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np

from ..errors import LeptonError
from ..ir import Graph
from .accuracy import AccuracySearch, search
from .calibration import (DEFAULT_BATCH, Calibration, batch_size_for, calibrate, check_method, input_specs,
                          load_calibration)
from .report import QuantizationReport, quantization_report
from .rewrite import QuantizedGraph, check_keep_fp32, observed_values

QUANTIZE_MODES = ("int8",)


@dataclass
class Quantization:
    """An fp32 graph's int8 form and how it was reached."""

    fp32: Graph
    quantized: QuantizedGraph
    calibration: Calibration
    keep_fp32: list[str]                       # the user's, then those the accuracy search returned
    search: Optional[AccuracySearch]
    feeds: Optional[Mapping[str, np.ndarray]]  # the calibration data (None when ranges were given)
    batch_size: int = DEFAULT_BATCH

    @property
    def graph(self) -> Graph:
        return self.quantized.graph

    def summary(self) -> dict:
        """JSON: what was quantized (``CompiledModel.summary["quantization"]``)."""
        return {"mode": "int8", "method": self.calibration.method, "samples": self.calibration.samples,
                "int8_layers": self.quantized.int8_layers, "fp32_layers": self.quantized.fp32_layers,
                "layers": [{"name": d.name, "op": d.op, "int8": d.int8, "output": d.output, "reason": d.reason,
                            "macs": d.macs} for d in self.quantized.layers],
                "search": self.search.to_json() if self.search else None}

    def report(self) -> QuantizationReport:
        """Per-layer error of int8 vs fp32 on the calibration data (see ``report.py``)."""
        if self.feeds is None:
            raise LeptonError("no calibration data to report on: this model was quantized from stored ranges")
        return quantization_report(self.fp32, self.quantized, self.feeds, self.batch_size, self.calibration.method,
                                   self.search.format() if self.search else None)


def check_request(quantize, calibration, calibration_method, keep_fp32, max_accuracy_drop, labels,
                  max_error) -> None:
    """Refuse quantization keywords that do not go together, before any work."""
    if quantize is None:
        given = [name for name, value in (("calibration", calibration), ("keep_fp32", keep_fp32),
                                          ("max_accuracy_drop", max_accuracy_drop), ("labels", labels),
                                          ("max_error", max_error)) if value is not None]
        if calibration_method not in (None, "minmax"):
            given.append("calibration_method")
        if given:
            raise LeptonError(f"{given[0]}= applies to quantize='int8'")
        return
    if quantize not in QUANTIZE_MODES:
        raise LeptonError(f"quantize={quantize!r} is not available; use quantize='int8' or None")
    if calibration is None:
        raise LeptonError("quantize='int8' needs calibration= (an .npz with one array per input, a dict of "
                          "arrays or an iterable of feed dicts)")
    check_method(calibration_method or "minmax")


def quantize_graph_with(graph: Graph, calibration, method: str = "minmax", keep_fp32=None, *,
                        max_accuracy_drop=None, labels=None, max_error=None,
                        batch_size: int = DEFAULT_BATCH) -> Quantization:
    """Quantize the optimized fp32 ``graph``. ``calibration``: data (see ``calibration.py``) or a
    stored table (``Calibration.to_json()``, as a compiled model's options keep it)."""
    method = check_method(method or "minmax")
    check_keep_fp32(graph, keep_fp32)
    keep = [keep_fp32] if isinstance(keep_fp32, str) else list(keep_fp32 or [])
    if Calibration.is_json(calibration):
        if max_accuracy_drop is not None or max_error is not None:
            raise LeptonError("the accuracy-aware mode needs calibration data, not a stored calibration table")
        table = Calibration.from_json(calibration)
        from .rewrite import quantize_graph
        return Quantization(graph, quantize_graph(graph, table.ranges, keep), table, keep, None, None)
    specs = input_specs(graph)
    feeds = load_calibration(calibration, specs)
    size = batch_size_for(specs, batch_size)
    table = calibrate(graph, feeds, observed_values(graph), method, batch_size=size)
    quantized, log = search(graph, table.ranges, feeds, size, keep, max_accuracy_drop=max_accuracy_drop,
                            labels=labels, max_error=max_error)
    final_keep = keep + [n for n in (log.returned if log else []) if n not in keep]
    return Quantization(graph, quantized, table, final_keep, log, feeds, size)
