"""A stable textual form of the IR, for humans, golden tests and ``--print-ir-after-all``."""

from __future__ import annotations

import numpy as np

from .graph import Graph, Node


def format_attr(value) -> str:
    if isinstance(value, np.ndarray):
        if value.size <= 8:
            return f"{value.dtype}{list(value.shape)}{{{', '.join(str(x) for x in value.ravel().tolist())}}}"
        return f"{value.dtype}{list(value.shape)}{{...}}"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_attr(v) for v in value) + "]"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def format_node(node: Node) -> str:
    outs = ", ".join(f"%{v.name}: {v.type}" for v in node.outputs)
    ins = ", ".join("_" if v is None else f"%{v.name}" for v in node.inputs)
    attrs = ""
    if node.attrs:
        attrs = "[" + ", ".join(f"{k}={format_attr(node.attrs[k])}" for k in sorted(node.attrs)) + "]"
    op = f"{node.domain}.{node.op}" if node.domain else node.op
    return f"{outs} = {op}{attrs}({ins})  # {node.name}"


def format_graph(graph: Graph) -> str:
    lines = [f"graph {graph.name} (opset {graph.opset}) {{"]
    lines += [f"  input  %{v.name}: {v.type}" for v in graph.inputs]
    lines += [f"  const  %{v.name}: {v.type}" for v in graph.constants]
    lines += [f"  {format_node(n)}" for n in graph.nodes]
    lines += [f"  output %{v.name}: {v.type}" for v in graph.outputs]
    lines.append("}")
    return "\n".join(lines)
