"""Which nodes of the original ONNX graph each IR node stands for, through import and every pass.

The passes know nothing of this: after each pass (``optimize_graph``'s ``after_pass`` hook)
each new node is matched against the previous graph. A node covers what it computes from
its inputs: walking back from its outputs through the previous graph, the nodes passed on
the way (stopping at its own inputs, constants, graph inputs and values that another node of
the new graph still computes) are the ones it absorbed, and it inherits what they covered.
So ``FusedConv /conv1/Conv`` after fuse-activation and fuse-pool covers
``/conv1/Conv, /relu1/Relu, /pool1/MaxPool``. Original nodes that no node covers any more
were folded into constants or removed (recorded with the stage that did it).

Import is the first stage: the ONNX nodes are the "previous graph", so nodes a converter
expands into several IR nodes all cover their ONNX node.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import onnx

from ..frontends.onnx import ModelSource, import_model, load_onnx
from ..ir import Graph, Node
from ..passes import PassOptions, optimize_graph


@dataclass(frozen=True)
class _Step:
    """A node reduced to what matching needs: names only."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass
class Stage:
    """The graph after import (``name == "import"``) or after one pass."""

    name: str
    graph: Graph
    covers: dict[Node, tuple[str, ...]]   # IR node -> original ONNX node names, in ONNX order
    seconds: float = 0.0

    def covered(self, node: Node) -> tuple[str, ...]:
        return self.covers.get(node, ())


@dataclass
class Lineage:
    """The stages of one optimization, and what became of each original ONNX node."""

    onnx_nodes: list[tuple[str, str]]        # (name, op_type) in ONNX order
    stages: list[Stage]
    removed: dict[str, str] = field(default_factory=dict)   # ONNX node name -> stage that removed it

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    @property
    def imported(self) -> Stage:
        return self.stages[0]

    def op_of(self, onnx_name: str) -> str:
        return dict(self.onnx_nodes).get(onnx_name, "?")


def onnx_node_names(proto: onnx.ModelProto) -> list[tuple[str, str]]:
    """(name, op_type) of each ONNX node, named as the frontend names them when unnamed."""
    return [(n.name or f"{n.op_type}_{i}", n.op_type) for i, n in enumerate(proto.graph.node)]


def _steps_of_onnx(proto: onnx.ModelProto) -> list[_Step]:
    return [_Step(name, tuple(n.input), tuple(n.output))
            for (name, _), n in zip(onnx_node_names(proto), proto.graph.node)]


def _steps_of_graph(graph: Graph) -> list[_Step]:
    return [_Step(n.name, tuple(v.name for v in n.inputs if v is not None), tuple(v.name for v in n.outputs))
            for n in graph.nodes]


def match(old: Sequence[_Step], old_covers: Sequence[tuple[str, ...]], new: Sequence[_Step],
          order: dict[str, int]) -> list[tuple[str, ...]]:
    """The covers of each ``new`` step, from the ``old`` steps it absorbed (see the module doc)."""
    producer_old = {out: i for i, s in enumerate(old) for out in s.outputs}
    producer_new = {out: j for j, s in enumerate(new) for out in s.outputs}
    by_name: dict[str, list[int]] = {}
    for i, s in enumerate(old):
        by_name.setdefault(s.name, []).append(i)
    result = []
    for j, step in enumerate(new):
        stop = set(step.inputs)
        todo = [producer_old[o] for o in step.outputs if o in producer_old]
        seen: set[int] = set()
        while todo:
            i = todo.pop()
            if i in seen:
                continue
            seen.add(i)
            for v in old[i].inputs:
                if v in stop or v not in producer_old or producer_new.get(v, j) != j:
                    continue
                todo.append(producer_old[v])
        if not seen:  # a node a rewrite created from nothing it computes: match it by name
            seen = set(by_name.get(step.name, ())) or set(_by_prefix(old, step.name))
        names = {name for i in seen for name in old_covers[i]}
        result.append(tuple(sorted(names, key=lambda n: order.get(n, len(order)))))
    return result


def _by_prefix(old: Sequence[_Step], name: str) -> list[int]:
    """Old steps whose name starts ``name`` (the frontend names helper nodes ``{onnx name}_...``)."""
    best = max((len(s.name) for s in old if s.name and name.startswith(s.name + "_")), default=0)
    return [i for i, s in enumerate(old) if best and s.name and len(s.name) == best and name.startswith(s.name + "_")]


def trace(model: ModelSource, opt_level: int = 3, *, keep: Optional[Sequence[str]] = None,
          options: Optional[PassOptions] = None) -> Lineage:
    """Import ``model`` and run the passes of ``opt_level``, keeping every stage and its covers."""
    proto = load_onnx(model)
    start = time.perf_counter()
    graph = import_model(proto)
    if keep:
        from .intermediates import keep_values
        keep_values(graph, keep)
    onnx_nodes = onnx_node_names(proto)
    order = {name: i for i, (name, _) in enumerate(onnx_nodes)}
    steps = _steps_of_onnx(proto)
    covers = match(steps, [(name,) for name, _ in onnx_nodes], _steps_of_graph(graph), order)
    lineage = Lineage(onnx_nodes, [Stage("import", graph, dict(zip(graph.nodes, covers)),
                                         time.perf_counter() - start)])
    _note_removed(lineage)

    def after_pass(p, new_graph: Graph, seconds: float) -> None:
        previous = lineage.final
        old_steps = _steps_of_graph(previous.graph)
        new_covers = match(old_steps, [previous.covered(n) for n in previous.graph.nodes],
                           _steps_of_graph(new_graph), order)
        lineage.stages.append(Stage(p.name, new_graph, dict(zip(new_graph.nodes, new_covers)), seconds))
        _note_removed(lineage)

    optimize_graph(graph, opt_level, options, after_pass)
    return lineage


def _note_removed(lineage: Lineage) -> None:
    stage = lineage.final
    alive = {name for names in stage.covers.values() for name in names}
    for name, _ in lineage.onnx_nodes:
        if name not in alive and name not in lineage.removed:
            lineage.removed[name] = stage.name
