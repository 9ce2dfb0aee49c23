"""The pass contract: a named, documented rewrite from a graph to a new graph."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from ..ir import Graph


@dataclass(frozen=True)
class PassOptions:
    """Settings every pass may read; passes never read globals or the command line."""

    verify: bool = False
    """Run the IR verifier after each pass (debug mode)."""

    explain: Optional[list] = field(default=None, compare=False)
    """A list to collect why fusion patterns fired or not: the fusion passes append a
    ``passes.fusion.FusionNote`` per candidate (``lepton compile --report``). Output only."""


@dataclass(frozen=True)
class PassResult:
    graph: Graph
    modified: bool


@dataclass(frozen=True)
class Pass:
    """A pass is a pure function: it returns a new graph and never mutates its argument."""

    name: str
    run: Callable[[Graph, PassOptions], PassResult]

    @property
    def doc(self) -> str:
        return (self.run.__doc__ or "").strip().splitlines()[0]
