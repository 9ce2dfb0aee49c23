"""Tensor types: an element type and a shape whose dims are ints or symbols."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

Dim = Union[int, str]
"""A dimension: a non-negative int, or a symbol such as ``"N"`` for the batch."""

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
