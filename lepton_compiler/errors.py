"""The project's exception types. Every error a user can provoke is one of these."""

from __future__ import annotations


class LeptonError(Exception):
    """Root of every error lepton raises on purpose."""


class ModelFormatError(LeptonError):
    """The input is not a valid ONNX model (or not one lepton can read)."""


class UnsupportedOpError(LeptonError):
    """One or more operators are not supported.

    ``ops`` lists ``(op_type, node_name, domain, opset)`` tuples, one per
    offending node, so a model with several unknown ops reports them all.
    """

    def __init__(self, ops: list[tuple[str, str, str, int]], reason: str = "not supported"):
        self.ops = list(ops)
        parts = [
            f"{op} (node '{node}', domain '{domain or 'ai.onnx'}', opset {opset})"
            for op, node, domain, opset in self.ops
        ]
        noun = "operator" if len(parts) == 1 else "operators"
        super().__init__(f"unsupported {noun}: " + "; ".join(parts) + f": {reason}" if parts else reason)


class InputError(LeptonError, ValueError):
    """A run was given the wrong inputs (name, dtype, rank or size)."""


class ArtifactError(LeptonError):
    """A saved artifact is damaged, of another version, or built for another CPU."""


class ResourceError(LeptonError):
    """A model would need more memory than the limit allows (``max_memory=``, ``LEPTON_MAX_MEMORY``)."""
