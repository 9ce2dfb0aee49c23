"""Opt levels -> ordered pass lists, and the driver that runs them."""

from __future__ import annotations

import time
from typing import Callable, Optional

from ..errors import LeptonError
from ..ir import Graph
from ..ir.verifier import verify
from .base import Pass, PassOptions
from .dead_code import DEAD_CODE
from .identity import REMOVE_IDENTITY

LEVELS: dict[int, list[Pass]] = {
    0: [],
    1: [REMOVE_IDENTITY, DEAD_CODE],
    2: [REMOVE_IDENTITY, DEAD_CODE],
    3: [REMOVE_IDENTITY, DEAD_CODE],
}

AfterPass = Callable[[Pass, Graph, float], None]


def passes_for_level(opt_level: int) -> list[Pass]:
    if opt_level not in LEVELS:
        raise LeptonError(f"opt_level must be 0, 1, 2 or 3, not {opt_level!r}")
    return list(LEVELS[opt_level])


def optimize_graph(graph: Graph, opt_level: int = 3, options: Optional[PassOptions] = None,
                   after_pass: Optional[AfterPass] = None) -> Graph:
    """Run the passes of ``opt_level``; ``after_pass(pass, graph, seconds)`` sees each result."""
    options = options or PassOptions()
    for p in passes_for_level(opt_level):
        start = time.perf_counter()
        graph = p.run(graph, options).graph
        elapsed = time.perf_counter() - start
        if options.verify:
            verify(graph)
        if after_pass is not None:
            after_pass(p, graph, elapsed)
    return graph
