"""``lepton graph MODEL -o graph.svg|png|html|dot``: the graph before and after optimization,
side by side.

Left, the model as imported (one box per ONNX node), with the nodes each fused node of the
optimized graph covers grouped in a labelled frame; right, the optimized graph, each fused
node labelled with the ONNX ops it computes. Pictures are drawn by Graphviz ``dot`` when it
is installed; ``.dot`` writes the Graphviz source, which needs nothing. ``.html`` is a page
with the SVG embedded and the optimized IR below it.
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
from typing import Optional

from ..errors import LeptonError
from ..frontends.onnx import ModelSource
from ..ir import Graph, Node
from .lineage import Lineage, Stage, trace

FORMATS = ("svg", "png", "html", "dot")
FUSED_COLOR = "#dbe9ff"
GROUP_COLOR = "#f3f7ff"
DOT_TIMEOUT = 120


def _q(text: str) -> str:
    """A DOT double-quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _shape(value) -> str:
    return "[" + ", ".join(map(str, value.type.shape)) + "]"


def _op(node: Node) -> str:
    return f"{node.domain}.{node.op}" if node.domain else node.op


def _edges(graph: Graph, prefix: str, ids: dict[Node, str]) -> list[str]:
    lines = []
    for v in graph.inputs:
        lines.append(f"    {_q(prefix + 'in:' + v.name)} [shape=ellipse, label={_q(v.name + chr(10) + _shape(v))}];")
    for v in graph.outputs:
        lines.append(f"    {_q(prefix + 'out:' + v.name)} [shape=ellipse, label={_q(v.name + chr(10) + _shape(v))}];")
    inputs = {v: prefix + "in:" + v.name for v in graph.inputs}
    for node in graph.nodes:
        for v in node.inputs:
            if v is None:
                continue
            source = ids.get(v.producer) if v.producer is not None else inputs.get(v)
            if source is not None:
                lines.append(f"    {_q(source)} -> {_q(ids[node])};")
    for v in graph.outputs:
        source = ids.get(v.producer) if v.producer is not None else inputs.get(v)
        if source is not None:
            lines.append(f"    {_q(source)} -> {_q(prefix + 'out:' + v.name)};")
    return lines


def to_dot(lineage: Lineage, opt_level: int) -> str:
    """The Graphviz source of the two graphs side by side."""
    before, after = lineage.imported, lineage.final
    lines = ["digraph lepton {", "  rankdir=TB; newrank=true; compound=true;",
             '  node [shape=box, style="rounded,filled", fillcolor=white, fontname="Helvetica", fontsize=10];',
             '  edge [color="#555555", arrowsize=0.6];', '  graph [fontname="Helvetica", fontsize=12];']
    lines += _before(before, after)
    lines += _after(after, opt_level)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _before(before: Stage, after: Stage) -> list[str]:
    ids = {n: f"b{i}" for i, n in enumerate(before.graph.nodes)}
    # which fused node of the optimized graph covers each imported node
    owner: dict[str, Node] = {}
    for node in after.graph.nodes:
        if len(after.covered(node)) > 1:
            for name in after.covered(node):
                owner.setdefault(name, node)
    groups: dict[Node, list[Node]] = {}
    loose: list[Node] = []
    for node in before.graph.nodes:
        covers = before.covered(node)
        fused = owner.get(covers[0]) if covers else None
        (groups.setdefault(fused, []) if fused is not None else loose).append(node)
    lines = ["  subgraph cluster_before {", f"    label={_q('as imported: ' + str(len(before.graph.nodes)) + ' nodes')};",
             '    style=dashed; color="#999999";']
    for node in loose:
        lines.append(f"    {_q(ids[node])} [label={_q(_before_label(node, before))}];")
    for k, (fused, members) in enumerate(groups.items()):
        lines += [f"    subgraph cluster_group{k} {{",
                  f"      label={_q(_op(fused) + ' ' + fused.name)}; style=\"rounded,filled\"; "
                  f"fillcolor={_q(GROUP_COLOR)}; color=\"#7fa7e0\";"]
        lines += [f"      {_q(ids[n])} [label={_q(_before_label(n, before))}];" for n in members]
        lines.append("    }")
    lines += _edges(before.graph, "b:", ids)
    lines.append("  }")
    return lines


def _before_label(node: Node, stage: Stage) -> str:
    covers = stage.covered(node)
    name = covers[0] if covers else node.name
    return f"{_op(node)}\n{name}\n{_shape(node.outputs[0]) if node.outputs else ''}"


def _after(after: Stage, opt_level: int) -> list[str]:
    ids = {n: f"a{i}" for i, n in enumerate(after.graph.nodes)}
    lines = ["  subgraph cluster_after {",
             f"    label={_q(f'-O{opt_level}: ' + str(len(after.graph.nodes)) + ' nodes')};",
             '    style=dashed; color="#999999";']
    for node in after.graph.nodes:
        covers = after.covered(node)
        out = _shape(node.outputs[0]) if node.outputs else ""
        if len(covers) > 1:
            label = f"{_op(node)}\n{node.name}\ncovers: " + " + ".join(covers) + f"\n{out}"
            lines.append(f"    {_q(ids[node])} [label={_q(label)}, fillcolor={_q(FUSED_COLOR)}, penwidth=1.6];")
        else:
            lines.append(f"    {_q(ids[node])} [label={_q(_op(node) + chr(10) + node.name + chr(10) + out)}];")
    lines += _edges(after.graph, "a:", ids)
    lines.append("  }")
    return lines


def find_dot() -> Optional[str]:
    return shutil.which("dot")


def render(dot_source: str, fmt: str) -> bytes:
    """``dot -T{fmt}`` of ``dot_source``; a ``LeptonError`` when Graphviz is not installed or fails."""
    dot = find_dot()
    if dot is None:
        raise LeptonError("Graphviz 'dot' was not found on PATH; it draws the .svg, .png and .html pictures. "
                          "Install Graphviz (e.g. 'apt-get install graphviz' or 'brew install graphviz'), "
                          "or write the Graphviz source with -o graph.dot")
    try:
        proc = subprocess.run([dot, f"-T{fmt}"], input=dot_source.encode(), capture_output=True, timeout=DOT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LeptonError(f"Graphviz 'dot' failed: {exc}") from None
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace").strip().splitlines()
        raise LeptonError(f"Graphviz 'dot' failed (exit {proc.returncode}): {message[0] if message else 'no message'}")
    return proc.stdout


def html_page(svg: bytes, lineage: Lineage, opt_level: int, title: str) -> str:
    body = svg.decode()
    start = body.find("<svg")
    body = body[start:] if start >= 0 else body  # drop the XML prolog and doctype
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title>"
            "<style>body{font-family:Helvetica,Arial,sans-serif;margin:1em}pre{background:#f6f6f6;padding:1em;"
            "overflow:auto;font-size:12px}</style></head><body>\n"
            f"<h1>{html.escape(title)}</h1>\n<p>Left: the model as imported, with the nodes each fused node covers "
            f"framed. Right: the graph after -O{opt_level}.</p>\n{body}\n"
            f"<h2>Optimized IR</h2>\n<pre>{html.escape(str(lineage.final.graph))}</pre>\n</body></html>\n")


def draw_graph(model: ModelSource, output: str, opt_level: int = 3, *, fmt: Optional[str] = None,
               lineage: Optional[Lineage] = None) -> str:
    """Write the picture of ``model`` before and after ``opt_level`` to ``output``; the format comes
    from ``fmt`` or the file's extension (svg, png, html, dot). Returns the format written."""
    fmt = (fmt or os.path.splitext(output)[1].lstrip(".")).lower()
    if fmt == "gv":
        fmt = "dot"
    if fmt not in FORMATS:
        raise LeptonError(f"cannot tell the picture format of '{output}': use a .svg, .png, .html or .dot file")
    lineage = lineage or trace(model, opt_level)
    source = to_dot(lineage, opt_level)
    if fmt == "dot":
        data = source.encode()
    elif fmt == "html":
        title = model if isinstance(model, str) else lineage.imported.graph.name
        data = html_page(render(source, "svg"), lineage, opt_level, f"lepton graph: {os.path.basename(str(title))}").encode()
    else:
        data = render(source, fmt)
    try:
        with open(output, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise LeptonError(f"cannot write '{output}': {exc.strerror or exc}") from None
    return fmt
