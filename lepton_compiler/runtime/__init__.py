"""Compiled models: running them, saving them, loading them."""

from .artifact import load
from .model import CompiledModel, TensorInfo
from .ort_model import OrtModel

__all__ = ["CompiledModel", "OrtModel", "TensorInfo", "load"]
