"""lepton_compiler: an ahead-of-time compiler and runtime for ONNX models."""

__version__ = "0.1.0"

from . import backend  # noqa: E402  (the onnx.backend interface)
from .api import compile, optimize, quantization_report  # noqa: E402
from .errors import InputError, LeptonError, ModelFormatError, UnsupportedOpError  # noqa: E402
from .runtime import CompiledModel, load  # noqa: E402

__all__ = ["compile", "optimize", "quantization_report", "load", "backend", "CompiledModel",
           "LeptonError", "ModelFormatError", "UnsupportedOpError", "InputError", "__version__"]
