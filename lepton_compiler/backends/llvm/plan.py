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
from ...ir import Graph, Node, Value, dim_factors
from ...ops import REGISTRY
from .registry import VIEWS, can_lower

ALIGN = 64
INT8_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QConv", "QGemm", "QAveragePool", "QLookup"})
"""Ops with integer kernels: their tensors (and views of them) may be uint8, int8 or int32."""
INTEGER_DTYPES = ("uint8", "int8", "int32")
BYTE_OPS = frozenset({"MaxPool", "Concat"})
"""Ops whose kernels also take 8-bit tensors (int8 regions): MaxPool (unsigned or signed max,
padding the dtype's minimum) and Concat (a copy of any element type)."""


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
    workspace_unshared: tuple[int, int] = (0, 0)   # what it would be without buffer reuse
    batch_rules: list[tuple[tuple[int, ...], str]] = field(default_factory=list)  # (allowed sizes, reason)

    def add_constant(self, name: str, array: np.ndarray) -> Storage:
        self.constants.append(np.ascontiguousarray(array))
        self.constant_names.append(name)
        return Storage("const", len(self.constants) - 1)


    def drop_constant(self, index: int) -> None:
        """Keep the slot (kernels index constants by position) but not the bytes."""
        self.constants[index] = np.empty(0, self.constants[index].dtype)


def _round(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def batch_symbol_of(graph: Graph, nodes: list[Node], values) -> Optional[str]:
    """The one dynamic dim the backend allows; every tensor's size must be linear in it."""
    symbols: list[str] = []
    for v in values:
        for d in v.type.shape:
            symbols += [s for s in dim_factors(d)[0] if s not in symbols]
    if len(symbols) > 1:
        first = next((n for n in nodes if _symbols_of(n) - {symbols[0]}), None)
        where = [(first.op, first.name, first.domain, graph.opset)] if first else []
        raise UnsupportedOpError(where, f"dynamic dims {sorted(symbols)}: the cpu backend supports one "
                                        "dynamic dim (the batch)")
    for v in values:
        count = sum(len(dim_factors(d)[0]) for d in v.type.shape)
        if count > 1:
            producer = v.producer
            where = [(producer.op, producer.name, producer.domain, graph.opset)] if producer else []
            raise UnsupportedOpError(where, f"value '{v.name}' has the dynamic dim twice: {v.type}")
    return symbols[0] if symbols else None


def _symbols_of(node: Node) -> set[str]:
    return {s for v in node.inputs + node.outputs if v is not None for d in v.type.shape for s in dim_factors(d)[0]}


def size_in_bytes(v: Value) -> tuple[int, bool]:
    """Bytes of ``v`` per unit of the batch (and whether it scales with the batch), or total bytes."""
    per, batched = np.dtype(v.type.dtype).itemsize, False
    for d in v.type.shape:
        symbols, factor = dim_factors(d)
        per *= factor
        batched = batched or bool(symbols)
    return per, batched


def _concrete(value: Value) -> Optional[np.ndarray]:
    known = value.known
    if known is None or known.dtype == object:
        return None
    return np.asarray(known, dtype=value.type.dtype)


def _needed_nodes(graph: Graph) -> tuple[list[Node], set[Value]]:
    """The nodes the outputs depend on at run time (shape arithmetic is done at compile time)."""
    nodes: list[Node] = []
    needed: set[Value] = set(graph.outputs)
    for node in reversed(graph.nodes):
        if not any(v in needed for v in node.outputs):
            continue
        if all(_concrete(v) is not None for v in node.outputs):
            continue  # computed at compile time
        nodes.append(node)
        static = REGISTRY[node.op].static_inputs
        needed.update(v for i, v in enumerate(node.inputs) if v is not None and i not in static)
    nodes.reverse()
    return nodes, needed


def _check_lowerable(graph: Graph, nodes: list[Node], needed: set[Value]) -> None:
    missing = [(n.op, n.name, n.domain, graph.opset) for n in nodes if not can_lower(n.op)]
    if missing:
        raise UnsupportedOpError(missing, "no cpu kernel")
    for node in nodes:
        where = [(node.op, node.name, node.domain, graph.opset)]
        for v in node.outputs + [i for i in node.inputs if i is not None]:
            if v in needed and v.type.dtype != "float32" and _concrete(v) is None:
                if v.type.dtype in INTEGER_DTYPES and (node.op in INT8_OPS or node.op in VIEWS):
                    continue
                if v.type.dtype in ("uint8", "int8") and node.op in BYTE_OPS:
                    continue
                raise UnsupportedOpError(where, f"the cpu backend computes float32 only; '{v.name}' is {v.type}")
        if node.op == "Dropout" and len(node.outputs) > 1 and node.outputs[1] in needed:
            raise UnsupportedOpError(where, "the mask output is not supported")


def make_plan(graph: Graph) -> Plan:
    """Choose the kernels (only what the outputs need) and lay out every buffer."""
    nodes, needed = _needed_nodes(graph)
    _check_lowerable(graph, nodes, needed)
    values = [v for v in graph.values() if v in needed or v in graph.inputs]
    plan = Plan(graph, batch_symbol_of(graph, nodes, values), [], {}, [], [], [])
    storage = plan.storage
    for i, v in enumerate(graph.inputs):
        storage[v] = Storage("io", i)
    for v in graph.values():
        if v in needed and v not in storage and (array := v.const if v.is_const else _concrete(v)) is not None:
            storage[v] = plan.add_constant(v.name, array)

    root = {}  # view output -> the value whose bytes it shares
    for node in nodes:
        if node.op in VIEWS:
            source = node.inputs[0]
            root[node.outputs[0]] = root.get(source, source)
        else:
            plan.kernels.append(node)
    # A graph output (or a view of one) is written by its kernel straight into the caller's array.
    for j, v in enumerate(graph.outputs):
        r = root.get(v, v)
        if r not in storage and r.producer in plan.kernels:
            storage[r] = Storage("io", len(graph.inputs) + j)
    _allocate_workspace(plan, root)
    for out, r in root.items():
        storage[out] = storage[r]
    for j, v in enumerate(graph.outputs):
        slot = len(graph.inputs) + j
        if storage[v] != Storage("io", slot):
            plan.copies.append((v, slot))
    return plan


def _allocate_workspace(plan: Plan, root: dict[Value, Value]) -> None:
    """Give every intermediate an offset, reusing the bytes of buffers no longer live.

    Sizes are linear in the batch, so batched buffers are placed in units of
    bytes-per-image (one region) and static ones in bytes (another): one plan
    holds for every batch size. Greedy first fit in definition order; a kernel's
    output never shares bytes with its inputs (lifetimes include both ends).
    """
    end = len(plan.kernels)
    last_use: dict[Value, int] = {}
    for index, node in enumerate(plan.kernels):
        for v in node.inputs:
            if v is not None:
                last_use[root.get(v, v)] = index
    for out in plan.graph.outputs:
        last_use[root.get(out, out)] = end  # copied out after the last kernel
    regions: dict[bool, list[tuple[int, int, int, int]]] = {True: [], False: []}  # (start, stop, offset, size)
    unshared = {True: 0, False: 0}
    for index, node in enumerate(plan.kernels):
        for v in node.outputs:
            if v in plan.storage:
                continue
            row, batched = size_in_bytes(v)
            size = _round(row)
            unshared[batched] += size
            stop = last_use.get(v, index)
            live = [r for r in regions[batched] if r[0] <= stop and index <= r[1]]
            offset = _first_fit(live, size)
            regions[batched].append((index, stop, offset, size))
            plan.storage[v] = Storage("workspace", per_batch=offset if batched else 0, fixed=0 if batched else offset)
    peak = {b: max((r[2] + r[3] for r in regions[b]), default=0) for b in regions}
    # The static region follows the batched one: shift its offsets by per_batch * batch.
    for v, st in list(plan.storage.items()):
        if st.kind == "workspace" and st.per_batch == 0 and not size_in_bytes(v)[1]:
            plan.storage[v] = Storage("workspace", per_batch=peak[True], fixed=st.fixed)
    plan.workspace = (peak[True], peak[False])
    plan.workspace_unshared = (unshared[True], unshared[False])


def _first_fit(live: list[tuple[int, int, int, int]], size: int) -> int:
    offset = 0
    for _, _, start, length in sorted(live, key=lambda r: r[2]):
        if offset + size <= start:
            break
        offset = max(offset, start + length)
    return offset
