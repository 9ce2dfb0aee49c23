"""The fusion report (``lepton compile --report``): for each fusion pattern of the -O level,
where it fired (the node it made and the ONNX nodes that node covers) and, for candidates
where it did not, why ("Conv output used twice (by /relu, /add)", "... is a graph output").

Where it fired comes from the lineage of the optimization (``lineage.py``); why it did not
comes from the passes themselves, which note each candidate they refuse when
``PassOptions(explain=list)`` asks them to (``passes/fusion.py``: ``FusionNote``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..frontends.onnx import ModelSource
from ..passes import PassOptions, passes_for_level
from ..passes.pipeline import ALGEBRA, FUSION
from .lineage import Lineage, Stage, trace

PATTERNS = [p.name for p in ALGEBRA + FUSION if p.name != "dead-code"]
"""The passes that combine nodes (the report's patterns), in pipeline order."""


@dataclass
class Fired:
    node: str
    op: str
    covers: list[str]   # the ONNX nodes the fused node computes after this pattern


@dataclass
class Refused:
    node: str           # where the pattern ends (e.g. the Relu)
    op: str
    partner: str        # the producer it would have absorbed (e.g. the Conv)
    partner_op: str
    reason: str


@dataclass
class PatternReport:
    pattern: str
    doc: str
    fired: list[Fired] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)


@dataclass
class FusionReport:
    opt_level: int
    patterns: list[PatternReport]

    def pattern(self, name: str) -> PatternReport:
        for p in self.patterns:
            if p.pattern == name:
                return p
        raise KeyError(name)

    def format(self) -> str:
        return format_report(self)

    def __str__(self) -> str:
        return self.format()


def fusion_report(model: ModelSource, opt_level: int = 3, *, keep: Optional[Sequence[str]] = None,
                  lineage: Optional[Lineage] = None, notes: Optional[list] = None) -> FusionReport:
    """Optimize ``model`` at ``opt_level`` (or take an existing ``lineage`` and the ``notes`` its
    passes collected) and report each fusion pattern."""
    if lineage is None:
        notes = []
        lineage = trace(model, opt_level, keep=keep, options=PassOptions(explain=notes))
    notes = notes or []
    passes = {p.name: p for p in passes_for_level(opt_level)}
    reports = []
    for name in PATTERNS:
        if name not in passes:
            continue
        report = PatternReport(name, passes[name].doc)
        for before, after in zip(lineage.stages, lineage.stages[1:]):
            if after.name == name:
                report.fired += _fired(before, after)
        fused_at = {n.node for n in notes if n.pattern == name and n.fused}
        seen = set()
        for note in notes:
            key = (note.node, note.partner, note.reason)
            if note.pattern != name or note.fused or note.node in fused_at or key in seen:
                continue
            seen.add(key)
            report.refused.append(Refused(note.node, note.op, note.partner, note.partner_op, note.reason))
        reports.append(report)
    return FusionReport(opt_level, reports)


def _fired(before: Stage, after: Stage) -> list[Fired]:
    """Nodes of ``after`` that cover more than any one node of ``before`` did."""
    previous = [set(c) for c in before.covers.values()]
    fired = []
    for node in after.graph.nodes:
        covers = set(after.covered(node))
        if len(covers) > 1 and not any(covers <= p for p in previous):
            op = f"{node.domain}.{node.op}" if node.domain else node.op
            fired.append(Fired(node.name, op, list(after.covered(node))))
    return fired


def format_report(r: FusionReport) -> str:
    if not r.patterns:
        return f"fusion report (-O{r.opt_level}): no fusion patterns run at this level (they start at -O2)"
    out = [f"fusion report (-O{r.opt_level}):"]
    for p in r.patterns:
        out.append(f"{p.pattern}: {p.doc}")
        if not p.fired and not p.refused:
            out.append("  no candidates")
        for f in p.fired:
            out.append(f"  fired    {f.node} -> {f.op} covering {' + '.join(f.covers)}")
        for x in p.refused:
            out.append(f"  refused  {x.op} {x.node} with {x.partner_op} {x.partner}: {x.reason}")
    return "\n".join(out)
