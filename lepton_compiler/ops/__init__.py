"""The op registry. Importing this package registers every op."""

from . import activations, dynamic_quant, elementwise, fused, nn, pool, qlinear, quant, reduce, tensor  # noqa: F401  (registration side effects)
from .inference import infer_graph, infer_node
from .interpreter import interpret
from .registry import REGISTRY, OpDef, OpKind, ShapeError, lookup

__all__ = ["REGISTRY", "OpDef", "OpKind", "ShapeError", "lookup", "infer_graph", "infer_node", "interpret"]
