"""The graph IR: values flow between nodes; constants are values holding numpy arrays."""

from __future__ import annotations

from typing import Any, Iterable, Optional

import numpy as np

from .types import TensorType


class Value:
    """A tensor in the graph: a graph input, a constant, or a node's output.

    ``known`` is filled by type inference for small tensors whose contents are
    known at compile time (shape arithmetic); it may hold symbolic dims.
    """

    __slots__ = ("name", "type", "producer", "const", "known")

    def __init__(self, name: str, type: TensorType, const: Optional[np.ndarray] = None):
        self.name = name
        self.type = type
        self.producer: Optional[Node] = None
        self.const = const
        self.known: Optional[np.ndarray] = const

    @property
    def is_const(self) -> bool:
        return self.const is not None

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Node:
    """One operation: ``outputs = op[attrs](inputs)``. Missing optional inputs are ``None``."""

    __slots__ = ("op", "name", "inputs", "outputs", "attrs", "domain")

    def __init__(self, op: str, name: str, inputs: Iterable[Optional[Value]],
                 outputs: Iterable[Value], attrs: Optional[dict[str, Any]] = None, domain: str = ""):
        self.op = op
        self.name = name
        self.inputs: list[Optional[Value]] = list(inputs)
        self.outputs: list[Value] = list(outputs)
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.domain = domain
        for out in self.outputs:
            out.producer = self

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def __repr__(self) -> str:
        return f"<Node {self.op} '{self.name}'>"


class Graph:
    """A model: inputs, constants, nodes in topological order, outputs."""

    def __init__(self, name: str, inputs: list[Value], outputs: list[Value],
                 nodes: list[Node], constants: list[Value], opset: int = 17):
        self.name = name
        self.inputs = inputs
        self.outputs = outputs
        self.nodes = nodes
        self.constants = constants
        self.opset = opset

    # -- queries -----------------------------------------------------------------------
    def values(self) -> list[Value]:
        """Every value once: inputs, constants, then node outputs in order."""
        seen: list[Value] = [*self.inputs, *self.constants]
        for node in self.nodes:
            seen.extend(node.outputs)
        return seen

    def users(self) -> dict[Value, list[Node]]:
        """Map each value to the nodes that read it (computed fresh on each call)."""
        table: dict[Value, list[Node]] = {v: [] for v in self.values()}
        for node in self.nodes:
            for value in node.inputs:
                if value is not None and node not in table.setdefault(value, []):
                    table[value].append(node)
        return table

    def value(self, name: str) -> Value:
        for v in self.values():
            if v.name == name:
                return v
        raise KeyError(name)

    # -- conversions -------------------------------------------------------------------
    def copy(self) -> "Graph":
        """A structural copy; constant arrays are shared (they are never mutated in place)."""
        mapping: dict[Value, Value] = {}

        def clone(v: Optional[Value]) -> Optional[Value]:
            if v is None:
                return None
            if v not in mapping:
                new = Value(v.name, v.type, v.const)
                new.known = v.known
                mapping[v] = new
            return mapping[v]

        inputs = [clone(v) for v in self.inputs]
        constants = [clone(v) for v in self.constants]
        nodes = [Node(n.op, n.name, [clone(v) for v in n.inputs], [clone(v) for v in n.outputs],
                      dict(n.attrs), n.domain) for n in self.nodes]
        outputs = [clone(v) for v in self.outputs]
        return Graph(self.name, inputs, outputs, nodes, constants, self.opset)

    def to_onnx(self):
        """This graph as an ``onnx.ModelProto``."""
        from ..frontends.onnx import export_model
        return export_model(self)

    def __str__(self) -> str:
        from .printer import format_graph
        return format_graph(self)
