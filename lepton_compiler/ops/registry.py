"""The op registry: for each op, its type rule, its numpy reference kernel and its kind.

Kernels for other concerns (LLVM lowering, ONNX conversion) have registries of
their own, keyed by the same op names.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..errors import ModelFormatError
from ..ir import Node, TensorType


class OpKind(enum.Enum):
    ELEMENTWISE = "elementwise"   # one output element from the same-index input elements
    VIEW = "view"                 # same bytes, new shape (Reshape, Flatten, Identity)
    SHAPE = "shape"               # shape arithmetic, usually known at compile time
    REDUCTION = "reduction"
    OPAQUE = "opaque"             # conv, pooling, matmul: their own loop nests


InferFn = Callable[[Node], list[TensorType]]
ReferenceFn = Callable[[Node, list[Optional[np.ndarray]]], list[np.ndarray]]


@dataclass(frozen=True)
class OpDef:
    name: str
    infer: InferFn
    reference: ReferenceFn
    kind: OpKind
    static_inputs: tuple[int, ...] = ()
    """Inputs read only at compile time (a Reshape's target shape, Unsqueeze's axes)."""
    known: Optional[Callable[[Node], Optional[list[np.ndarray]]]] = None
    """Compile-time contents of the outputs from types alone (``Shape``)."""


REGISTRY: dict[str, OpDef] = {}


def register(name: str, infer: InferFn, reference: ReferenceFn, kind: OpKind, **extra) -> OpDef:
    if name in REGISTRY:
        raise RuntimeError(f"op {name} registered twice")
    opdef = OpDef(name, infer, reference, kind, **extra)
    REGISTRY[name] = opdef
    return opdef


def lookup(op: str) -> OpDef:
    return REGISTRY[op]


class ShapeError(ModelFormatError):
    """A node's inputs have types its op does not accept."""

    def __init__(self, node: Node, reason: str):
        super().__init__(f"node '{node.name}' ({node.op}): {reason}")


def require(node: Node, condition: bool, reason: str) -> None:
    if not condition:
        raise ShapeError(node, reason)
