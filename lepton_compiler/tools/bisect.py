"""``lepton bisect MODEL --input NAME=FILE.npy``: the first pass after which lepton's outputs
leave ONNX Runtime's beyond a tolerance, and the first layer where they do.

ONNX Runtime runs the original model (its graph optimizations off) with every node output
made a graph output, so each named value has a reference. Then, stage by stage (the graph as
imported, then after each pass of the -O level), the IR goes through the reference
interpreter and through compiled native code, and the model's outputs, and every value the
stage's graph still shares with the original model (a softmax can hide a broken layer), are
compared with ORT's (native code computes those values as extra outputs): a value agrees when ``|lepton - ort| <= tolerance * (1 + |ort|)`` everywhere. The first
stage that disagrees (interpreter first: a pass that changes the math shows there; a stage
only the native code gets wrong points at the backend) is the culprit. In that stage's graph
every value that the original model also has is compared, in graph order: the first that
disagrees names the first bad layer, and the IR around it is printed, with what the pass
changed. Stages whose graph is the same as the previous one's are not compiled again.

For models quantized by ``lc.compile(quantize="int8")``, the per-layer quantization report
(``quantize/report.py``) is the tool that says which layer loses accuracy.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np
import onnx
from onnx import helper

from ..errors import LeptonError
from ..frontends.onnx import ModelSource, load_onnx
from ..ir import Graph
from ..ir.printer import format_node
from ..ops import interpret
from .lineage import Lineage, Stage, trace

MODES = ("interpreter", "native")


@dataclass
class StageCheck:
    stage: str
    interpreter: Optional[float]      # max relative error of the outputs against ORT (None: not run)
    native: Optional[float]
    interpreter_ok: bool = True
    native_ok: bool = True
    note: str = ""                    # e.g. why native code was not built for this stage


@dataclass
class Layer:
    node: str                         # the IR node computing the first value that disagrees
    op: str
    value: str
    covers: list[str]
    error: float


@dataclass
class BisectResult:
    tolerance: float
    opt_level: int
    checks: list[StageCheck]
    stage: Optional[str] = None       # the first stage that disagrees (None: all agree)
    previous: Optional[str] = None    # the stage before it
    mode: Optional[str] = None        # "interpreter" or "native"
    layer: Optional[Layer] = None
    excerpt: str = ""                 # the IR around the layer
    diff: str = ""                    # what the pass changed (IR diff against the previous stage)
    values_compared: list[tuple[str, float]] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.stage is not None

    def format(self) -> str:
        return format_bisect(self)

    def __str__(self) -> str:
        return self.format()


def error_of(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / (1 + |ref|); inf for a shape mismatch or a NaN where ORT has none."""
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        return float("inf")
    if got.size == 0:
        return 0.0
    g, r = got.astype(np.float64), ref.astype(np.float64)
    err = np.abs(g - r) / (1.0 + np.abs(r))
    both_nan = np.isnan(g) & np.isnan(r)
    err = np.where(both_nan, 0.0, err)
    err = np.where(np.isnan(err), np.inf, err)
    return float(err.max())


def ort_values(proto: onnx.ModelProto, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every node output of the original model, as ONNX Runtime computes it (no graph optimizations)."""
    import onnxruntime as ort

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    present = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in present:
                model.graph.output.append(helper.ValueInfoProto(name=name))
                present.add(name)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        outputs = session.run(None, dict(feed))
    except Exception as exc:  # onnxruntime's own exception types
        raise LeptonError(f"ONNX Runtime cannot run the model for reference: {str(exc).splitlines()[0]}") from None
    return {o.name: v for o, v in zip(session.get_outputs(), outputs)}


def _key(graph: Graph) -> str:
    """The graph's text and the bytes of its constants (a pass may change a weight's contents only)."""
    h = hashlib.sha256(str(graph).encode())
    for c in graph.constants:
        h.update(np.ascontiguousarray(c.const).tobytes())
    return h.hexdigest()


class _Runner:
    """Runs stage graphs through the interpreter or native code, caching by graph contents."""

    def __init__(self, feed: Mapping[str, np.ndarray], mcpu: Optional[str]):
        self.feed = dict(feed)
        self.mcpu = mcpu
        self.cache: dict[tuple[str, str, tuple], object] = {}

    def values(self, graph: Graph, mode: str, names: list[str]) -> list[np.ndarray]:
        key = (_key(graph), mode, tuple(names))
        if key not in self.cache:
            try:
                self.cache[key] = self._run(graph, mode, names)
            except LeptonError as exc:
                self.cache[key] = exc
        result = self.cache[key]
        if isinstance(result, LeptonError):
            raise result
        return result

    def _run(self, graph: Graph, mode: str, names: list[str]) -> list[np.ndarray]:
        if mode == "interpreter":
            try:
                return interpret(graph, self.feed, names)
            except LeptonError:
                raise
            except Exception as exc:  # a reference kernel failing on what a pass made
                raise LeptonError(f"the interpreter failed: {type(exc).__name__}: {exc}") from None
        from ..api import compile_graph
        g = graph.copy()
        by_name = {v.name: v for v in g.values()}
        g.outputs = [by_name[n] for n in names]
        model = compile_graph(g, mcpu=self.mcpu, options={"threads": 1})
        return model.run(None, self.feed)


def bisect_model(model: ModelSource, feed: Mapping[str, np.ndarray], *, opt_level: int = 3,
                 tolerance: float = 1e-4, mcpu: Optional[str] = None, context: int = 3,
                 lineage: Optional[Lineage] = None) -> BisectResult:
    """Find the first stage (import or pass) and the first layer where lepton leaves ONNX Runtime."""
    if not tolerance > 0:
        raise LeptonError(f"tolerance must be positive, not {tolerance!r}")
    proto = load_onnx(model)
    reference = ort_values(proto, feed)
    lineage = lineage or trace(proto, opt_level)
    runner = _Runner(feed, mcpu)
    result = BisectResult(tolerance, opt_level, [])
    previous: Optional[Stage] = None
    for stage in lineage.stages:
        graph = stage.graph
        check = StageCheck(stage.name, None, None)
        result.checks.append(check)
        for mode in MODES:
            names = _compared(graph, reference, mode)
            try:
                got = runner.values(graph, mode, names)
            except LeptonError as exc:
                if mode == "interpreter":
                    setattr(check, "interpreter_ok", False)
                    check.note = str(exc)
                    check.interpreter = float("inf")
                else:
                    check.note = f"no native code for this stage: {exc}"
                    continue
            else:
                err = max((error_of(g, reference[n]) for g, n in zip(got, names) if n in reference), default=0.0)
                setattr(check, mode, err)
                setattr(check, f"{mode}_ok", err <= tolerance)
            if not getattr(check, f"{mode}_ok"):
                result.stage, result.mode = stage.name, mode
                result.previous = previous.name if previous else None
                _locate(result, stage, previous, reference, runner, mode, context)
                return result
        previous = stage
    return result


def _compared(graph: Graph, reference, mode: str) -> list[str]:
    """The graph's outputs, then every value it shares with the original model, in graph order
    (native code: float32 ones, the values it computes)."""
    names = [v.name for v in graph.outputs]
    names += [v.name for n in graph.nodes for v in n.outputs
              if v.name in reference and v.name not in names and (mode == "interpreter" or v.type.dtype == "float32")]
    return names


def _locate(result: BisectResult, stage: Stage, previous: Optional[Stage], reference, runner: _Runner,
            mode: str, context: int) -> None:
    graph = stage.graph
    names = _compared(graph, reference, mode)
    try:
        got = dict(zip(names, runner.values(graph, mode, names)))
    except LeptonError:
        got = {}
    by_name = {v.name: v for v in graph.values()}
    for name in [v.name for n in graph.nodes for v in n.outputs if v.name in got and v.name in reference]:
        err = error_of(got[name], reference[name])
        result.values_compared.append((name, err))
        if err > result.tolerance:
            node = by_name[name].producer
            result.layer = Layer(node.name, f"{node.domain}.{node.op}" if node.domain else node.op, name,
                                 list(stage.covered(node)), err)
            break
    if result.layer is None and graph.outputs:  # only the outputs disagree: blame their producer
        out = graph.outputs[0]
        if out.producer is not None:
            node = out.producer
            result.layer = Layer(node.name, node.op, out.name, list(stage.covered(node)), float("nan"))
    result.excerpt = _excerpt(graph, result.layer.node if result.layer else None, context)
    if previous is not None:
        diff = difflib.unified_diff(str(previous.graph).splitlines(), str(graph).splitlines(),
                                    f"IR before {stage.name}", f"IR after {stage.name}", n=1, lineterm="")
        result.diff = "\n".join(list(diff)[:80])
        before = {c.name: c.const for c in previous.graph.constants}
        changed = [c.name for c in graph.constants if c.name in before and (
            np.shape(before[c.name]) != np.shape(c.const) or not np.array_equal(before[c.name], c.const))]
        if changed:
            result.diff = (result.diff + "\n" if result.diff else "") + \
                "constants whose contents changed (same names): " + ", ".join(changed)


def _excerpt(graph: Graph, node_name: Optional[str], context: int) -> str:
    index = next((i for i, n in enumerate(graph.nodes) if n.name == node_name), None)
    if index is None:
        return str(graph)
    lo, hi = max(0, index - context), min(len(graph.nodes), index + context + 1)
    lines = [f"graph {graph.name} (opset {graph.opset}), nodes {lo}..{hi - 1} of {len(graph.nodes)}:"]
    for i in range(lo, hi):
        lines.append(("  >> " if i == index else "     ") + format_node(graph.nodes[i]))
    return "\n".join(lines)


def _fmt(err: Optional[float], ok: bool) -> str:
    if err is None:
        return "-"
    return f"{err:.2e}" + ("" if ok else "  <-- differs")


def format_bisect(r: BisectResult) -> str:
    out = [f"bisect at -O{r.opt_level}, tolerance {r.tolerance:g} (|lepton - ort| <= tol * (1 + |ort|))"]
    rows = [["stage", "interpreter", "native"]]
    rows += [[c.stage, _fmt(c.interpreter, c.interpreter_ok), _fmt(c.native, c.native_ok)] for c in r.checks]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    out += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    notes = [f"  {c.stage}: {c.note}" for c in r.checks if c.note]
    out += notes
    if not r.found:
        out.append(f"lepton agrees with ONNX Runtime after every stage ({len(r.checks)} checked)")
        return "\n".join(out)
    after = "the import (before any pass)" if r.stage == "import" else f"pass '{r.stage}'"
    where = "in the reference interpreter" if r.mode == "interpreter" else \
        "in the native code only (the interpreter agrees: a backend problem)"
    out.append(f"first difference: after {after}, {where}")
    if r.layer is not None:
        covers = f" (covers {' + '.join(r.layer.covers)})" if r.layer.covers else ""
        out.append(f"first layer: {r.layer.op} {r.layer.node}{covers}: value '{r.layer.value}' "
                   f"off by {r.layer.error:.2e}")
    if r.excerpt:
        out += ["", r.excerpt]
    if r.diff:
        out += ["", f"what {r.stage} changed:", r.diff]
    return "\n".join(out)
