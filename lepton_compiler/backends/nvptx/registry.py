"""The cuda lowering registry: op name -> function that makes the op's ``KernelSpec``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ...ir import Node
from ..llvm.registry import VIEWS, NotLowerable, registrar  # the same ops are views (no kernel, shared bytes) on the GPU

if TYPE_CHECKING:
    from .kernel import KernelSpec


Lower = Callable[[Node, str], "KernelSpec"]
LOWERINGS: dict[str, Lower] = {}
lowering = registrar(LOWERINGS)


def can_lower(op: str) -> bool:
    return op in LOWERINGS or op in VIEWS


__all__ = ["LOWERINGS", "NotLowerable", "VIEWS", "can_lower", "lowering"]
