"""Graph passes; ``pipeline`` maps opt levels to ordered pass lists."""

from .base import Pass, PassOptions, PassResult
from .pipeline import optimize_graph, passes_for_level

__all__ = ["Pass", "PassOptions", "PassResult", "optimize_graph", "passes_for_level"]
