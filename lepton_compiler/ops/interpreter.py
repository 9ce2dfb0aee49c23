"""The reference interpreter: runs any IR graph with the registry's numpy kernels."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from ..ir import Graph, Value
from .registry import REGISTRY


def interpret(graph: Graph, feeds: Mapping[str, np.ndarray],
              outputs: Optional[Sequence[str]] = None) -> list[np.ndarray]:
    """Run ``graph`` on ``feeds`` (name -> array) and return the named outputs (default: all)."""
    env: dict[Value, np.ndarray] = {v: v.const for v in graph.constants}
    for v in graph.inputs:
        env[v] = np.asarray(feeds[v.name])
    for node in graph.nodes:
        args = [None if v is None else env[v] for v in node.inputs]
        results = REGISTRY[node.op].reference(node, args)
        for value, result in zip(node.outputs, results):
            env[value] = np.asarray(result)
    by_name = {v.name: v for v in env}
    names = list(outputs) if outputs is not None else [v.name for v in graph.outputs]
    return [env[by_name[name]] for name in names]
