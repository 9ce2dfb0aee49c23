"""Dead-code elimination."""

from __future__ import annotations

from ..ir import Graph
from .base import Pass, PassOptions, PassResult


def eliminate_dead_code(graph: Graph, options: PassOptions) -> PassResult:
    """f(x) -> (nothing) when no graph output depends on f(x); unused constants are dropped too."""
    g = graph.copy()
    live = set(g.outputs)
    kept = []
    for node in reversed(g.nodes):
        if any(v in live for v in node.outputs):
            kept.append(node)
            live.update(v for v in node.inputs if v is not None)
    kept.reverse()
    constants = [c for c in g.constants if c in live]
    modified = len(kept) != len(g.nodes) or len(constants) != len(g.constants)
    g.nodes, g.constants = kept, constants
    return PassResult(g, modified)


DEAD_CODE = Pass("dead-code", eliminate_dead_code)
