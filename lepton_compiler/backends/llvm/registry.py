"""The lowering registry: op name -> function that emits the op's kernel body."""

from __future__ import annotations

from typing import Callable

from ...ir import Node
from .codegen import KernelBuilder

class NotLowerable(Exception):
    """Raised by a lowering for a node it cannot emit; becomes an ``UnsupportedOpError``
    naming the node and the model's opset."""


LowerFn = Callable[[KernelBuilder, Node], None]
LOWERINGS: dict[str, LowerFn] = {}
VIEWS = {"Identity", "Dropout", "Flatten", "Reshape", "Squeeze", "Unsqueeze"}
"""Ops whose output is the input's bytes under a new shape: no kernel, the buffer is shared."""


def registrar(table: dict):
    """``@registrar(table)("Op", ...)``: a decorator that files a function under each op name."""
    def lowering(*ops: str):
        def decorate(fn):
            for op in ops:
                table[op] = fn
            return fn
        return decorate
    return lowering


lowering = registrar(LOWERINGS)


def can_lower(op: str) -> bool:
    return op in LOWERINGS or op in VIEWS
