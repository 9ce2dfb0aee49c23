"""Compiled models: running them, saving them, loading them."""

from .artifact import load
from .model import CompiledModel, TensorInfo

__all__ = ["CompiledModel", "TensorInfo", "load"]
