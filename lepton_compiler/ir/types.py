"""Tensor types: an element type and a shape whose dims are ints or symbols."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

Dim = Union[int, str]
"""A dimension: a non-negative int, or a symbol such as ``"N"`` for the batch."""

def dim_factors(d: Dim) -> tuple[tuple[str, ...], int]:
    """A dim as (symbols, factor): ``"N"`` -> (("N",), 1), ``"N*60"`` -> (("N",), 60), ``7`` -> ((), 7)."""
    if isinstance(d, int):
        return (), d
    symbols, factor = [], 1
    for token in d.split("*"):
        if token.isdigit():
            factor *= int(token)
        else:
            symbols.append(token)
    return tuple(sorted(symbols)), factor


def make_dim(symbols, factor: int) -> Dim:
    """The inverse of ``dim_factors``."""
    if not symbols or factor == 0:
        return factor
    return "*".join(sorted(symbols)) + (f"*{factor}" if factor != 1 else "")


def shape_product(dims) -> Dim:
    """Product of dims, symbolic where any is: ``["N", 3, 4]`` -> ``"N*12"``."""
    symbols: list[str] = []
    factor = 1
    for d in dims:
        s, f = dim_factors(d)
        symbols += s
        factor *= f
    return make_dim(symbols, factor)


def eval_dim(d: Dim, values: dict) -> int:
    """A dim's value once its symbols are known."""
    symbols, factor = dim_factors(d)
    for s in symbols:
        factor *= values[s]
    return factor


DTYPES = ("float32", "float64", "float16", "int8", "uint8", "int16", "int32", "int64", "bool")


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}")
        object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def numel(self) -> int:
        """Number of elements; only for static shapes."""
        if not self.is_static:
            raise ValueError(f"{self} has symbolic dims")
        return int(np.prod(self.shape, dtype=np.int64))

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"

    @classmethod
    def of(cls, array: np.ndarray) -> "TensorType":
        return cls(str(array.dtype), array.shape)
