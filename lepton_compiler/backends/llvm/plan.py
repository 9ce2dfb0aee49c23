"""Which nodes become kernels, and where every tensor lives at run time.

Storage kinds:
  io[i]        graph inputs, then graph outputs (caller-owned arrays)
  consts[j]    constants, compile-time-known values and packed weights
  workspace    intermediates, at ``offset = per_batch * batch + fixed`` bytes
  views share the storage of their input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ...errors import UnsupportedOpError
from ...ir import Graph, Node, Value
from ...ops import REGISTRY
from .registry import VIEWS, can_lower

ALIGN = 64


@dataclass(frozen=True)
class Storage:
    kind: str            # "io" | "const" | "workspace"
    index: int = 0       # io / const slot
    per_batch: int = 0   # workspace offset = per_batch * batch + fixed (bytes)
    fixed: int = 0


@dataclass
class Plan:
    graph: Graph
    batch_symbol: Optional[str]
    kernels: list[Node]
    storage: dict[Value, Storage]
    constants: list[np.ndarray]
    constant_names: list[str]
    copies: list[tuple[Value, int]]          # (value, output io slot) copied at the end
    workspace: tuple[int, int] = (0, 0)      # bytes = per_batch * batch + fixed
    known: dict[Value, np.ndarray] = field(default_factory=dict)

    def add_constant(self, name: str, array: np.ndarray) -> Storage:
        self.constants.append(np.ascontiguousarray(array))
        self.constant_names.append(name)
        return Storage("const", len(self.constants) - 1)


def _round(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def batch_symbol_of(graph: Graph, values) -> Optional[str]:
    symbols = sorted({d for v in values for d in v.type.shape if isinstance(d, str)})
    if len(symbols) > 1:
        raise UnsupportedOpError(
            [("", "", "", graph.opset)],
            f"dynamic dims {symbols}: the cpu backend supports one dynamic dim (the batch)")
    for v in values:
        if sum(isinstance(d, str) for d in v.type.shape) > 1:
            raise UnsupportedOpError([("", "", "", graph.opset)],
                                     f"value '{v.name}' has the dynamic dim twice: {v.type}")
    return symbols[0] if symbols else None


def _concrete(value: Value) -> Optional[np.ndarray]:
    known = value.known
    if known is None or known.dtype == object:
        return None
    return np.asarray(known, dtype=value.type.dtype)


def make_plan(graph: Graph) -> Plan:
    """Choose the kernels (only what the outputs need) and lay out every buffer."""
    needed_nodes: list[Node] = []
    needed: set[Value] = set(graph.outputs)
    for node in reversed(graph.nodes):
        if not any(v in needed for v in node.outputs):
            continue
        if all(_concrete(v) is not None for v in node.outputs):
            continue  # computed at compile time
        needed_nodes.append(node)
        static = REGISTRY[node.op].static_inputs
        for i, v in enumerate(node.inputs):
            if v is not None and i not in static:
                needed.add(v)
    needed_nodes.reverse()

    missing = [(n.op, n.name, n.domain, graph.opset) for n in needed_nodes if not can_lower(n.op)]
    if missing:
        raise UnsupportedOpError(missing, "no cpu kernel")
    for node in needed_nodes:
        for v in node.outputs + [i for i in node.inputs if i is not None]:
            if v in needed and v.type.dtype != "float32" and _concrete(v) is None:
                raise UnsupportedOpError([(node.op, node.name, node.domain, graph.opset)],
                                         f"the cpu backend computes float32 only; '{v.name}' is {v.type}")
        if node.op == "Dropout" and len(node.outputs) > 1 and node.outputs[1] in needed:
            raise UnsupportedOpError([(node.op, node.name, node.domain, graph.opset)], "the mask output is not supported")

    batch_symbol = batch_symbol_of(graph, list(needed) + graph.inputs)
    plan = Plan(graph, batch_symbol, [], {}, [], [], [])
    storage = plan.storage
    for i, v in enumerate(graph.inputs):
        storage[v] = Storage("io", i)
    out_slot = {}
    for j, v in enumerate(graph.outputs):
        out_slot.setdefault(v, len(graph.inputs) + j)
    for v in graph.values():
        if v in needed and v not in storage and (array := v.const if v.is_const else _concrete(v)) is not None:
            storage[v] = plan.add_constant(v.name, array)
            plan.known[v] = array

    per_batch = fixed = 0
    for node in needed_nodes:
        if node.op in VIEWS:
            storage[node.outputs[0]] = storage[node.inputs[0]]
            continue
        plan.kernels.append(node)
        for v in node.outputs:
            if v in out_slot and v not in storage:
                storage[v] = Storage("io", out_slot[v])
            elif v not in storage:
                storage[v] = Storage("workspace", per_batch=per_batch, fixed=fixed)
                row = _round(_row_bytes(v))
                if batch_symbol in v.type.shape:
                    per_batch += row
                else:
                    fixed += row
    plan.workspace = (per_batch, fixed)
    for j, v in enumerate(graph.outputs):
        slot = len(graph.inputs) + j
        if storage[v] != Storage("io", slot):
            plan.copies.append((v, slot))
    return plan


def _row_bytes(v: Value) -> int:
    static = [d for d in v.type.shape if isinstance(d, int)]
    return int(np.prod(static, dtype=np.int64)) * np.dtype(v.type.dtype).itemsize
