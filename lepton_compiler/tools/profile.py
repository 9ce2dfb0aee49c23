"""``lepton profile MODEL [--batch N] [--threads T]``: time per compiled kernel, next to ONNX
Runtime's own per-op profile of the same model.

lepton's times come from an instrumented run (``CompiledModel.run_profiled``: the native entry
point reads ``clock_gettime`` around each kernel), keyed by the ONNX nodes each kernel covers
(``lineage.py``). ONNX Runtime's come from its profiler (``SessionOptions.enable_profiling``):
the JSON it writes is parsed and each node's ``kernel_time`` summed per node over the timed
runs (warm-up runs are left out by their ``model_run`` intervals). ORT's nodes are matched to
ONNX nodes by name (ORT keeps the ONNX names, or names a fused node ``fused NAME`` or after the
value it computes, ``VALUE_nchwc``); a lepton kernel's ORT time is the sum over the ONNX nodes
it covers, so a kernel that computes Conv+Relu+MaxPool is compared with ORT's three (or the one
node ORT fused them into). ORT nodes that match no kernel (a view lepton does not run, a layout
reorder ORT inserts) get rows of their own.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

from ..errors import LeptonError
from ..frontends.onnx import ModelSource, load_onnx
from ..ir import dim_factors
from .lineage import Lineage, trace

ORT_LEVELS = ("disabled", "basic", "extended", "all")
TARGET_SECONDS = 0.3
"""How long each side is timed for, when no repeat count is given."""


@dataclass
class KernelTime:
    kernel: str                 # as in ``summary["kernels"]``: "lepton.FusedConv /conv1/Conv"
    covers: list[str]           # ONNX nodes
    seconds: float              # per run
    ort_seconds: float          # ORT's time for the same ONNX nodes, per run
    ort_nodes: list[str] = field(default_factory=list)


@dataclass
class OrtNodeTime:
    name: str                   # ORT's node name
    op: str
    seconds: float
    onnx_node: Optional[str]    # the ONNX node it was matched to (None: ORT's own, e.g. a reorder)


@dataclass
class Profile:
    model: str
    batch: int
    threads: int
    repeats: int
    ort_repeats: int
    ort_version: str
    ort_optimization: str
    kernels: list[KernelTime]
    unmatched: list[OrtNodeTime]      # ORT nodes no lepton kernel covers
    wall: float                       # lepton: seconds per profiled run, end to end
    ort_wall: float                   # ORT: mean model_run duration

    @property
    def kernel_total(self) -> float:
        return sum(k.seconds for k in self.kernels)

    @property
    def ort_total(self) -> float:
        return sum(k.ort_seconds for k in self.kernels) + sum(u.seconds for u in self.unmatched)

    def format(self) -> str:
        return format_profile(self)

    def __str__(self) -> str:
        return self.format()


def make_feed(model_inputs, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs: uniform [0, 1) floats, zeros for integers; the batch symbol is ``batch``,
    any other symbolic dim 1."""
    rng = np.random.default_rng(seed)
    specs = [(info.name, info.type.dtype, info.type.shape) if hasattr(info, "type") else
             (info.name, info.dtype, info.shape) for info in model_inputs]   # IR values or TensorInfo
    symbols = [d for _, _, shape in specs for d in shape if isinstance(d, str)]
    first = dim_factors(symbols[0])[0][0] if symbols and dim_factors(symbols[0])[0] else None
    feed = {}
    for name, dtype, dims in specs:
        shape = []
        for d in dims:
            names, factor = dim_factors(d)
            shape.append(factor * int(np.prod([batch if s == first else 1 for s in names])))
        dtype = np.dtype(dtype)
        feed[name] = rng.random(shape).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype)
    return feed


def _repeats(run, given: Optional[int]) -> int:
    if given is not None:
        return max(1, given)
    start = time.perf_counter()
    run()
    once = max(time.perf_counter() - start, 1e-7)
    return int(min(5000, max(10, TARGET_SECONDS / once)))


def profile_model(model: ModelSource, *, batch: int = 1, threads: Optional[int] = 1, opt_level: int = 3,
                  feed: Optional[Mapping[str, np.ndarray]] = None, repeats: Optional[int] = None,
                  ort_optimization: str = "all", lineage: Optional[Lineage] = None) -> Profile:
    """Profile ``model`` with lepton (at ``opt_level``) and with ONNX Runtime on the same inputs."""
    from ..api import compile_graph

    if ort_optimization not in ORT_LEVELS:
        raise LeptonError(f"ort_optimization must be one of {', '.join(ORT_LEVELS)}, not {ort_optimization!r}")
    if batch < 1:
        raise LeptonError(f"batch must be a positive int, not {batch!r}")
    proto = load_onnx(model)
    model_bytes = proto.SerializeToString()
    lineage = lineage or trace(proto, opt_level)
    compiled = compile_graph(lineage.final.graph, model_bytes, options={"opt_level": opt_level, "threads": threads})
    feed = dict(feed) if feed is not None else make_feed(compiled.inputs, batch)
    compiled.run_profiled(feed, 3)  # load the code, warm the caches
    n = _repeats(lambda: compiled.run_profiled(feed, 1), repeats)
    start = time.perf_counter()
    _, seconds = compiled.run_profiled(feed, n)
    wall = (time.perf_counter() - start) / n

    from ..backends.llvm.plan import make_plan
    kernels = make_plan(lineage.final.graph).kernels
    names = compiled.summary.get("kernels", [])
    if len(kernels) != len(names):
        raise LeptonError("internal: the kernel plan does not match the compiled model's kernels")
    onnx_names = [name for name, _ in lineage.onnx_nodes]
    ort_nodes, ort_wall, ort_n, version = ort_profile(model_bytes, feed, threads, ort_optimization, repeats)
    matched = [(node, _match_ort_name(node.name, onnx_names, proto)) for node in ort_nodes]
    owner = {}
    for node in kernels:
        for name in lineage.final.covered(node):
            owner.setdefault(name, node)
    rows = []
    for node, name, secs in zip(kernels, names, seconds):
        covers = list(lineage.final.covered(node))
        mine = [o for o, m in matched if m is not None and owner.get(m) is node]
        rows.append(KernelTime(name, covers, secs, sum(o.seconds for o in mine), [o.name for o in mine]))
    unmatched = [OrtNodeTime(o.name, o.op, o.seconds, m) for o, m in matched if m is None or m not in owner]
    where = model if isinstance(model, str) else lineage.imported.graph.name
    return Profile(str(where), batch, compiled.threads, n, ort_n, version, ort_optimization, rows, unmatched,
                   wall, ort_wall)


@dataclass
class _OrtNode:
    name: str
    op: str
    seconds: float


def ort_profile(model_bytes: bytes, feed: Mapping[str, np.ndarray], threads: Optional[int],
                optimization: str = "all", repeats: Optional[int] = None, warmup: int = 3):
    """ONNX Runtime's profile: ([per-node mean seconds per run], mean run seconds, runs, version)."""
    import onnxruntime as ort

    levels = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    with tempfile.TemporaryDirectory(prefix="lepton-profile-") as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "ort")
        options.graph_optimization_level = levels[optimization]
        options.inter_op_num_threads = 1
        if threads is not None:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        for _ in range(warmup):
            session.run(None, dict(feed))
        n = _repeats(lambda: session.run(None, dict(feed)), repeats)
        for _ in range(n):
            session.run(None, dict(feed))
        path = session.end_profiling()
        with open(path) as f:
            events = json.load(f)
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[-n:]
    if not runs:
        raise LeptonError("ONNX Runtime's profile has no model_run events")
    starts = np.array([e["ts"] for e in runs])
    stops = starts + np.array([e["dur"] for e in runs])
    totals: dict[str, list] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        i = np.searchsorted(starts, e["ts"], side="right") - 1
        if i < 0 or e["ts"] > stops[i]:
            continue  # a warm-up run
        name = e["name"][: -len("_kernel_time")]
        entry = totals.setdefault(name, [e.get("args", {}).get("op_name", "?"), 0])
        entry[1] += e["dur"]
    nodes = [_OrtNode(name, op, micros * 1e-6 / len(runs)) for name, (op, micros) in totals.items()]
    return nodes, float(np.mean(stops - starts)) * 1e-6, len(runs), ort.__version__


def _match_ort_name(name: str, onnx_names: list[str], proto) -> Optional[str]:
    """The ONNX node an ORT profile node stands for, or None (a node ORT made up)."""
    known = set(onnx_names)
    candidates = [name]
    for prefix in ("fused ",):
        if name.startswith(prefix):
            candidates.append(name[len(prefix):])
    for suffix in ("_nchwc",):
        candidates += [c[: -len(suffix)] for c in list(candidates) if c.endswith(suffix)]
    for c in candidates:
        if c in known:
            return c
    producers = {out: n for n, node in zip(onnx_names, proto.graph.node) for out in node.output}
    for c in candidates:
        if c in producers:
            return producers[c]
    best = max((n for n in onnx_names if n and any(c.startswith(n) for c in candidates)), key=len, default=None)
    return best


def format_profile(p: Profile) -> str:
    us = 1e6
    threads = f"{p.threads} thread{'s' if p.threads != 1 else ''}"
    out = [f"profile: {p.model}, batch {p.batch}, {threads}; lepton {p.repeats} runs, "
           f"ONNX Runtime {p.ort_version} (optimization '{p.ort_optimization}') {p.ort_repeats} runs",
           "times in µs per run (per batch); ORT's are its profiler's per-node kernel times of the same ONNX nodes"]
    total = p.kernel_total or 1.0
    rows = [["kernel", "covers (ONNX nodes)", "lepton µs", "%", "ORT µs", "ORT/lepton"]]
    for k in p.kernels:
        ratio = f"{k.ort_seconds / k.seconds:.2f}" if k.seconds > 0 and k.ort_seconds > 0 else "-"
        rows.append([k.kernel, " + ".join(k.covers), f"{k.seconds * us:.2f}", f"{100 * k.seconds / total:.1f}",
                     f"{k.ort_seconds * us:.2f}" if k.ort_nodes else "-", ratio])
    for u in p.unmatched:
        what = f"(no lepton kernel) {u.onnx_node}" if u.onnx_node else f"(ORT only) {u.name}"
        rows.append([what, u.op, "-", "-", f"{u.seconds * us:.2f}", "-"])
    rows.append(["sum of kernels", "", f"{p.kernel_total * us:.2f}", "100.0", f"{p.ort_total * us:.2f}",
                 f"{p.ort_total / p.kernel_total:.2f}" if p.kernel_total > 0 else "-"])
    rows.append(["end to end (profiled run)", "", f"{p.wall * us:.2f}", "", f"{p.ort_wall * us:.2f}",
                 f"{p.ort_wall / p.wall:.2f}" if p.wall > 0 else "-"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.append("  " + "  ".join(c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    coverage = p.kernel_total / p.wall if p.wall > 0 else 0.0
    out.append(f"kernels cover {100 * coverage:.0f}% of lepton's end-to-end time (the rest: input checks, "
               "the call into native code, timers); ORT/lepton > 1 means lepton is faster")
    out.append("ORT's profiler adds its own cost to every node it times (and rounds to whole µs): its numbers "
               "locate time, `lepton bench` compares speed")
    return "\n".join(out)
