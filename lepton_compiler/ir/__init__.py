"""The IR: typed values, nodes and graphs, a printer and a verifier."""

from .graph import Graph, Node, Value
from .symbols import Sym
from .types import Dim, TensorType, dim_factors, eval_dim, make_dim, shape_product

__all__ = ["Graph", "Node", "Value", "TensorType", "Dim", "Sym", "dim_factors", "eval_dim", "make_dim",
           "shape_product"]
