"""Compiling an int8 model: quantize the optimized fp32 graph, then lower it like any other
(``lc.compile(model, quantize="int8", ...)`` comes here), with or without the compile cache."""

from __future__ import annotations

from typing import Optional

import numpy as np

from .. import api  # through the module, so that api.compile_graph stays the one hook for all compiles
from ..ir import Graph
from ..runtime.artifact import load as load_artifact
from ..runtime.cache import arrays_digest, cache_key, cached
from ..runtime.model import CompiledModel
from .accuracy import AccuracySearch
from .calibration import Calibration, batch_size_for, input_specs, load_calibration
from .driver import quantize_graph_with


def compile_quantized(graph: Graph, model_bytes: bytes, options: dict, *, mcpu: Optional[str], quantize: str,
                      calibration, calibration_method: Optional[str], keep_fp32, max_accuracy_drop, labels,
                      max_error) -> CompiledModel:
    """Quantize the optimized fp32 ``graph`` (``lepton_compiler/quantize``) and lower the int8 graph
    (calibration runs each time: ``cached_quantized`` is the cached form). The options keep the
    calibration table and the layers left fp32 on request, so that an artifact recompiled for another
    CPU gets the same graph."""
    q = quantize_graph_with(graph, calibration, calibration_method or "minmax", keep_fp32,
                            max_accuracy_drop=max_accuracy_drop, labels=labels, max_error=max_error)
    options = {**options, "quantize": quantize, "calibration": q.calibration.to_json(),
               "calibration_method": q.calibration.method, "keep_fp32": list(q.keep_fp32)}
    model = api.compile_graph(q.graph, model_bytes, mcpu=mcpu, options=options)
    model.summary["quantization"] = q.summary()
    model.quantization = q
    return model


def cached_quantized(graph: Graph, model_bytes: bytes, options: dict, *, mcpu: Optional[str], keep, verify: bool,
                     quantize: str, calibration, calibration_method: Optional[str], keep_fp32, max_accuracy_drop,
                     labels, max_error) -> CompiledModel:
    """``compile_quantized`` through the compile cache. The calibration data is read (and checked) once,
    here; the key adds to the fp32 one the digest of that data (each input's name, dtype, shape and
    bytes, in input order: the batches it came in do not matter, as they do not to calibration), the
    method, ``keep_fp32``, the accuracy bound and the digest of ``labels``. A model loaded from the
    cache folder gets its ``quantization`` back from the stored calibration table (no calibration
    run), with the data, so that ``quantization_report`` works on it too."""
    specs = input_specs(graph)
    if Calibration.is_json(calibration):   # a stored table: its JSON is the data
        feeds, data_key = calibration, {"table": calibration}
    else:
        feeds = load_calibration(calibration, specs)
        data_key = {"data": arrays_digest(feeds.items())}
    keep_list = [keep_fp32] if isinstance(keep_fp32, str) else list(keep_fp32 or [])
    settings = {**options, "keep": list(keep or []), "verify": verify, "quantize": quantize, "calibration": data_key,
                "calibration_method": calibration_method or "minmax", "keep_fp32": keep_list,
                "max_accuracy_drop": max_accuracy_drop, "max_error": max_error,
                "labels": None if labels is None else arrays_digest([("labels", np.asarray(labels))])}
    request = dict(quantize=quantize, calibration=feeds, calibration_method=calibration_method, keep_fp32=keep_fp32,
                   max_accuracy_drop=max_accuracy_drop, labels=labels, max_error=max_error)

    def load(path: str) -> CompiledModel:
        model = load_artifact(path)
        stored = model.options
        q = quantize_graph_with(graph, stored["calibration"], stored["calibration_method"], stored["keep_fp32"])
        search = model.summary.get("quantization", {}).get("search")
        q.search = AccuracySearch.from_json(search) if search else None
        if not Calibration.is_json(feeds):
            q.feeds, q.batch_size = feeds, batch_size_for(specs)
        model.quantization = q
        return model

    key = cache_key(model_bytes, api.resolve_target(mcpu).to_json(), settings)
    return cached(key, lambda: compile_quantized(graph, model_bytes, options, mcpu=mcpu, **request),
                  load=load, save=lambda m, path: m.save(path))
