"""Intermediate values: ``lc.compile(model, keep=["conv2_out"])`` then ``model.run(["conv2_out"], feed)``.

The named values of the original ONNX graph become extra graph outputs *before* the passes
run, so no pass fuses them away (a fusion never absorbs a value that is a graph output):
the compiled model computes and returns them exactly as written, after the model's own
outputs. The cost is the fusion they prevent (``lepton compile --report`` shows which).
"""

from __future__ import annotations

from typing import Iterable, Union

from ..errors import LeptonError
from ..ir import Graph

SHOWN = 8
"""How many valid names an error message lists."""


def value_names(graph: Graph) -> list[str]:
    """The names ``keep=`` accepts for ``graph``: what its nodes compute, in graph order."""
    return [v.name for n in graph.nodes for v in n.outputs]


def keep_values(graph: Graph, names: Union[str, Iterable[str]]) -> Graph:
    """Make the values ``names`` outputs of ``graph`` (in place; returns it). Unknown names are a
    ``LeptonError`` that lists some valid ones."""
    wanted = [names] if isinstance(names, str) else list(names)
    if not all(isinstance(n, str) for n in wanted):
        raise LeptonError(f"keep= takes value names (strings), got {wanted!r}")
    by_name = {v.name: v for v in graph.values()}
    valid = value_names(graph)
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        shown = ", ".join(repr(n) for n in valid[:SHOWN]) + (f", ... ({len(valid)} in all)" if len(valid) > SHOWN else "")
        raise LeptonError(f"keep: the model has no value {unknown[0]!r}; its values include {shown}")
    for name in wanted:
        value = by_name[name]
        if value not in graph.outputs:
            graph.outputs.append(value)
    return graph
