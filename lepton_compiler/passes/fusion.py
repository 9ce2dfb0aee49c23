"""What the fusion passes share: recognizing fusable producers, building fused nodes,
splicing them into the graph, and a driver that applies a rule to each node once.

A rule sees one node (usually the *consumer* end of a pattern, e.g. the ``Relu``
of ``Relu(Conv(...))``) and returns True when it rewrote the graph. A fused node
always takes the consumer's place in the node order and its output values, so
graph output names survive and every input the fused node reads is already
defined there.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from ..errors import LeptonError
from ..ir import Graph, Node, Value
from ..ops import REGISTRY, infer_graph
from ..ops.fused import DOMAIN
from .base import PassResult
from .rewrite import only_user

Users = dict[Value, list[Node]]
Rule = Callable[[Graph, Node, Users], bool]
FLOAT_DTYPES = ("float32", "float64", "float16")


# -- the driver ---------------------------------------------------------------------------------
def apply_rule(g: Graph, rule: Rule, reverse: bool = False) -> bool:
    """Try ``rule`` on each node of ``g`` (in order, or last first; in place); True when any
    rewrite happened.

    Nodes a rewrite removes are skipped; nodes it creates are not visited in this sweep.
    """
    modified = False
    users = g.users()
    alive = set(g.nodes)
    for node in (list(reversed(g.nodes)) if reverse else list(g.nodes)):
        if node not in alive:
            continue
        if rule(g, node, users):
            modified = True
            users = g.users()
            alive = set(g.nodes)
    return modified


def run_rules(graph: Graph, *rules: Rule, reverse: bool = False, explain: Optional[list] = None,
              pattern: str = "") -> PassResult:
    """The body of a pure pass: copy the graph, sweep each rule once in turn, re-infer types.

    ``explain`` (``PassOptions.explain``): a list that gets a :class:`FusionNote` for each
    candidate of ``pattern`` fused or refused in this run."""
    g = graph.copy()
    modified = False
    token = _notes.set((pattern, explain)) if explain is not None else None
    try:
        for rule in rules:
            modified = apply_rule(g, rule, reverse) or modified
    finally:
        if token is not None:
            _notes.reset(token)
    infer_graph(g)
    return PassResult(g, modified)


# -- explaining (``PassOptions.explain``; output only, never read by a rule) ---------------------
@dataclass(frozen=True)
class FusionNote:
    """A fusion candidate: ``node`` (where the pattern ends, e.g. the Relu) with ``partner`` (the
    producer it would absorb, e.g. the Conv); ``fused``, or refused for ``reason``."""

    pattern: str
    node: str
    op: str
    partner: str
    partner_op: str
    fused: bool
    reason: str = ""


_notes: ContextVar[Optional[tuple[str, list]]] = ContextVar("lepton_fusion_notes", default=None)
LINEAR_OPS = {"Conv": "Conv", "FusedConv": "Conv", "Gemm": "Gemm", "FusedGemm": "Gemm"}


def _note(node: Node, partner: Optional[Node], fused: bool, reason: str = "") -> None:
    current = _notes.get()
    if current is not None:
        current[1].append(FusionNote(current[0], node.name, node.op, partner.name if partner else "",
                                     partner.op if partner else "", fused, reason))


def refuse(consumer: Node, value: Optional[Value], reason: str) -> bool:
    """Record (when explaining) that ``consumer`` is not fused with the Conv or Gemm producing
    ``value``, for ``reason``; returns False. Other producers are not candidates: nothing is noted."""
    producer = value.producer if value is not None else None
    if producer is not None and producer.op in LINEAR_OPS:
        _note(consumer, producer, False, reason)
    return False


def _already_fused(node: Node) -> list[str]:
    parts = [("an activation", bool(node.attr("activation", ""))), ("a pool", node.attr("pool_kernel") is not None),
             ("a residual", input_at(node, 3) is not None), ("a softmax", bool(node.attr("softmax", 0)))]
    return [what for what, present in parts if present]


def _why_not_single_use(g: Graph, consumer: Node, value: Value, users: Users) -> str:
    base = LINEAR_OPS.get(value.producer.op, value.producer.op)
    if value in g.outputs:
        return f"{base} output '{value.name}' is a graph output"
    readers = users.get(value, [])
    reads = sum(1 for n in readers for v in n.inputs if v is value)
    times = "twice" if reads == 2 else f"{reads} times"
    return f"{base} output used {times} (by {', '.join(n.name for n in readers)})"


# -- recognizing producers ------------------------------------------------------------------------
def input_at(node: Node, index: int) -> Optional[Value]:
    return node.inputs[index] if len(node.inputs) > index else None


def is_conv(node: Optional[Node], *, activation: bool = False, pool: bool = False,
            residual: bool = False) -> bool:
    """A Conv, or a FusedConv that has fused nothing beyond what the keywords allow."""
    if node is None:
        return False
    if node.op == "Conv" and node.domain == "":
        return True
    if node.op != "FusedConv" or node.domain != DOMAIN:
        return False
    return ((activation or not node.attr("activation", ""))
            and (pool or node.attr("pool_kernel") is None)
            and (residual or input_at(node, 3) is None))


def is_gemm(node: Optional[Node], *, activation: bool = False, softmax: bool = False) -> bool:
    """A Gemm, or a FusedGemm that has fused nothing beyond what the keywords allow."""
    if node is None:
        return False
    if node.op == "Gemm" and node.domain == "":
        return True
    if node.op != "FusedGemm" or node.domain != DOMAIN:
        return False
    return (activation or not node.attr("activation", "")) and (softmax or not node.attr("softmax", 0))


def fused_producer(g: Graph, consumer: Node, value: Optional[Value], users: Users,
                   accept: Callable[[Optional[Node]], bool]) -> Optional[Node]:
    """The producer of ``value`` when ``accept`` takes it and ``consumer`` is the only reader of
    ``value`` (read once, and ``value`` is not a graph output)."""
    if value is None or value.producer is None or not accept(value.producer):
        if _notes.get() is not None and value is not None and value.producer is not None:
            p = value.producer
            plain = Node(LINEAR_OPS.get(p.op, p.op), p.name, p.inputs, [], {}, "")
            if p.op in LINEAR_OPS and _already_fused(p) and accept(plain):
                refuse(consumer, value, f"{p.name} already has {' and '.join(_already_fused(p))} fused")
        return None
    if len(value.producer.outputs) != 1:
        return None
    if only_user(g, value, users) is not consumer:
        refuse(consumer, value, _why_not_single_use(g, consumer, value, users))
        return None
    return value.producer


# -- building fused nodes -------------------------------------------------------------------------
def fused_conv_attrs(conv: Node) -> dict:
    """The attributes of the FusedConv that ``conv`` (a Conv or FusedConv) becomes."""
    return {"activation": "", "activation_params": [], **conv.attrs}


def fused_gemm_attrs(gemm: Node) -> dict:
    """The attributes of the FusedGemm that ``gemm`` (a Gemm or FusedGemm) becomes."""
    return {"activation": "", "activation_params": [], "softmax": 0, **gemm.attrs}


def padded_inputs(node: Node, count: int) -> list[Optional[Value]]:
    """``node``'s inputs with missing optional ones as None, at least ``count`` of them."""
    return list(node.inputs) + [None] * (count - len(node.inputs))


def trim_inputs(inputs: list[Optional[Value]]) -> list[Optional[Value]]:
    """Drop trailing missing optional inputs."""
    inputs = list(inputs)
    while inputs and inputs[-1] is None:
        inputs.pop()
    return inputs


def types_agree(node: Node, expected: Iterable[Value]) -> bool:
    """Whether ``node``'s type rule gives exactly the types of ``expected`` (a fused node must
    compute what the nodes it replaces computed)."""
    try:
        types = REGISTRY[node.op].infer(node)
    except LeptonError:
        return False
    return list(types) == [v.type for v in expected]


def make_node(op: str, name: str, inputs: list[Optional[Value]], attrs: dict, domain: str = DOMAIN) -> Node:
    """A candidate node, outside any graph and without outputs until :func:`splice` gives it
    the outputs of the node it replaces."""
    return Node(op, name, trim_inputs(inputs), [], attrs, domain)


def splice(g: Graph, new: Node, consumer: Node, removed: Iterable[Node] = ()) -> None:
    """Put ``new`` in ``consumer``'s place computing its outputs, drop ``removed``, and drop the
    constants that only the replaced nodes read."""
    gone = {consumer, *removed}
    new.outputs = list(consumer.outputs)
    for out in new.outputs:
        out.producer = new
    g.nodes = [new if n is consumer else n for n in g.nodes if n is consumer or n not in gone]
    read = {v for n in g.nodes for v in n.inputs if v is not None}
    candidates = {v for n in gone for v in n.inputs if v is not None and v.is_const}
    g.constants = [c for c in g.constants if c in read or c not in candidates or c in g.outputs]


def fuse(g: Graph, new: Node, consumer: Node, removed: Iterable[Node] = ()) -> bool:
    """:func:`splice` ``new`` in when its types agree with ``consumer``'s outputs; True if done."""
    removed = list(removed)
    if not types_agree(new, consumer.outputs):
        return refuse(consumer, removed[0].outputs[0] if removed else None,
                      f"the fused {new.op} would not compute {consumer.outputs[0].type}")
    splice(g, new, consumer, removed)
    _note(consumer, removed[0] if removed else None, True)
    return True
