"""``lepton graph``: the graph before and after optimization, through Graphviz ``dot`` when installed."""

from __future__ import annotations

import os
import shutil
import struct
import xml.etree.ElementTree as ET

import pytest

import lepton_compiler as lc
from lepton_compiler.demo import bundled_model_path
from lepton_compiler.tools import graph as graph_tool
from lepton_compiler.tools.graph import draw_graph, to_dot
from lepton_compiler.tools.lineage import trace

from test_cli import assert_ok, assert_one_line_error, lepton

MODEL = bundled_model_path()
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' is not installed")


def test_dot_source_groups_and_labels_fused_nodes(tmp_path):
    source = to_dot(trace(MODEL, 3), 3)
    assert source.startswith("digraph lepton {") and "cluster_before" in source and "cluster_after" in source
    assert source.count("subgraph cluster_group") == 5  # the five nodes that fused more than one ONNX node
    assert '"lepton.FusedConv /conv2/Conv"' in source
    assert "covers: /conv2/Conv + /relu2/Relu + /pool2/MaxPool" in source
    out = tmp_path / "g.dot"
    assert draw_graph(MODEL, str(out)) == "dot"  # needs no Graphviz
    assert out.read_text() == source


@needs_dot
def test_svg_parses_and_shows_both_graphs(tmp_path):
    out = tmp_path / "g.svg"
    assert draw_graph(MODEL, str(out)) == "svg"
    root = ET.parse(out).getroot()
    assert root.tag.endswith("svg")
    texts = " ".join(t.text or "" for t in root.iter() if t.tag.endswith("text"))
    assert "as imported: 13 nodes" in texts and "-O3: 6 nodes" in texts
    assert "lepton.FusedConv /conv1/Conv" in texts


@needs_dot
def test_png_and_html(tmp_path):
    png = tmp_path / "g.png"
    draw_graph(MODEL, str(png), opt_level=2)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100
    page = tmp_path / "g.html"
    draw_graph(MODEL, str(page))
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<svg" in text and "</svg>" in text
    assert "Optimized IR" in text and "lepton.FusedGemm" in text


@needs_dot
def test_cli_graph(tmp_path):
    out = tmp_path / "cli.svg"
    proc = lepton("graph", MODEL, "-o", out)
    assert_ok(proc)
    assert out.is_file() and "wrote" in proc.stdout


def test_missing_dot_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(graph_tool.shutil, "which", lambda name: None)
    for name in ("g.svg", "g.png", "g.html"):
        with pytest.raises(lc.LeptonError) as info:
            draw_graph(MODEL, str(tmp_path / name))
        message = str(info.value)
        assert "Graphviz 'dot' was not found" in message and "-o graph.dot" in message
        assert not (tmp_path / name).exists()
    assert draw_graph(MODEL, str(tmp_path / "ok.dot")) == "dot"  # the source needs no Graphviz


def test_cli_missing_dot_is_one_line(tmp_path):
    env_path = tmp_path / "empty-bin"
    env_path.mkdir()
    env = dict(os.environ, PATH=str(env_path))
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "lepton_compiler.cli", "graph", MODEL, "-o", str(tmp_path / "g.svg")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert_one_line_error(proc, "Graphviz 'dot' was not found")
    assert_one_line_error(lepton("graph", MODEL, "-o", tmp_path / "g.txt"), "use a .svg, .png, .html or .dot file")
