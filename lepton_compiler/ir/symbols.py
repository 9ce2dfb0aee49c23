"""Symbolic dims inside compile-time-known tensors (``Shape(x)`` of a dynamic-batch ``x``)."""

from __future__ import annotations


class Sym:
    """A named unknown integer. It supports equality but no arithmetic, so any
    computation that would need its value raises ``TypeError`` and the result
    simply stays unknown."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __eq__(self, other) -> bool:
        return isinstance(other, Sym) and other.name == self.name

    def __hash__(self) -> int:
        return hash(("Sym", self.name))

    def __repr__(self) -> str:
        return self.name
