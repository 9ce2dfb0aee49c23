"""``lepton inspect MODEL``: what is in a model and what lepton makes of it, without running it.

Inputs and outputs, op counts, parameters and multiply-adds per layer (per image: the batch
dim counts as 1), the fusion plan at the chosen -O level (which ONNX nodes each node of the
optimized graph covers, see ``lineage.py``), the memory plan (peak workspace with and
without buffer reuse, as ``lepton compile`` plans it), the target CPU and vector width, and
the kernel variant each layer gets (winograd / simd / direct for convolutions).

Multiply-adds: Conv ``OH*OW*OC*(IC/group)*KH*KW``, Gemm/MatMul ``M*K*N`` (leading dims
included), ConvTranspose ``IH*IW*IC*(OC/group)*KH*KW``; everything else (pooling,
activations, softmax) counts 0.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import numpy as np

from ..backends.llvm.target import Target, host_target, named_target
from ..errors import LeptonError
from ..frontends.onnx import ModelSource, load_onnx
from ..ir import Dim, Node, Value, dim_factors
from .lineage import Lineage, trace


# -- counting ------------------------------------------------------------------------------------
def per_image(d: Dim) -> int:
    """A dim with the batch (any symbol) counted as 1: ``"N"`` -> 1, ``"N*60"`` -> 60."""
    return dim_factors(d)[1]


def _prod(dims) -> int:
    return int(np.prod([per_image(d) for d in dims], dtype=np.int64)) if len(dims) else 1


def conv_macs(node: Node) -> int:
    y, w = node.outputs[0], node.inputs[1]
    return _prod(y.type.shape[1:]) * _prod(w.type.shape[1:])


def conv_transpose_macs(node: Node) -> int:
    x, w = node.inputs[0], node.inputs[1]
    return _prod(x.type.shape[1:]) * _prod(w.type.shape[1:])


def matmul_macs(node: Node) -> int:
    a, y = node.inputs[0], node.outputs[0]
    k = per_image(a.type.shape[-1]) if a.type.rank else 1
    return _prod(y.type.shape) * k


def gemm_macs(node: Node) -> int:
    a, y = node.inputs[0], node.outputs[0]
    k = per_image(a.type.shape[0] if node.attr("transA", 0) else a.type.shape[1])
    return _prod(y.type.shape) * k


MACS: dict[str, Callable[[Node], int]] = {
    "Conv": conv_macs, "ConvTranspose": conv_transpose_macs, "Gemm": gemm_macs, "MatMul": matmul_macs,
}
"""op -> multiply-adds per image, for the ops that have them (of the imported, unfused graph)."""


def node_macs(node: Node) -> int:
    fn = MACS.get(node.op) if node.domain == "" else None
    try:
        return fn(node) if fn else 0
    except (IndexError, TypeError, ValueError):
        return 0


def node_params(node: Node) -> int:
    """Elements of the float constants a node reads (weights and biases)."""
    return sum(_prod(v.type.shape) for v in node.inputs
               if v is not None and v.is_const and v.type.dtype.startswith("float"))


# -- kernel variants -------------------------------------------------------------------------------
def conv_variant(node: Node, lanes: int) -> str:
    """The convolution kernel the backend picks (``backends/llvm/conv.py:choose_conv_kernel``)."""
    from ..backends.llvm.conv import choose_conv_kernel

    return choose_conv_kernel(node, lanes)


VARIANTS: dict[str, Callable[[Node, int], str]] = {"Conv": conv_variant, "FusedConv": conv_variant}
FAMILIES = {"Gemm": "dense", "FusedGemm": "dense", "MatMul": "dense", "FusedElementwise": "elementwise",
            "MaxPool": "pool", "Softmax": "softmax"}


def kernel_variant(node: Node, lanes: int) -> str:
    fn = VARIANTS.get(node.op)
    return fn(node, lanes) if fn else FAMILIES.get(node.op, node.op.lower())


# -- the report ------------------------------------------------------------------------------------
@dataclass
class TensorSummary:
    name: str
    dtype: str
    shape: list

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype}[{', '.join(map(str, self.shape))}]"


@dataclass
class Layer:
    """One node of the original ONNX graph."""

    name: str
    op: str
    output_shape: list
    params: int
    macs: int


@dataclass
class PlannedNode:
    """One node of the optimized graph."""

    name: str
    op: str                 # with its domain: "lepton.FusedConv"
    covers: list[str]       # the ONNX nodes it computes
    output: str
    output_shape: list
    kernel: Optional[str]   # its kernel variant; None when it is no kernel (a view, or computed at compile time)
    macs: int
    params: int


@dataclass
class Inspection:
    model: str
    opset: int
    opt_level: int
    inputs: list[TensorSummary]
    outputs: list[TensorSummary]
    op_counts: dict[str, int]
    layers: list[Layer]
    total_params: int
    total_macs: int
    plan: list[PlannedNode]
    removed: dict[str, str]                   # ONNX node -> the stage that folded or removed it
    workspace: Optional[tuple[int, int]]      # (bytes per image, fixed bytes), with buffer reuse
    workspace_unshared: Optional[tuple[int, int]]
    target_triple: str
    target_cpu: str
    vector_bits: int
    vector_registers: int
    not_compilable: str = ""                  # why the cpu backend cannot compile it, if it cannot
    buffers: list[dict] = field(default_factory=list)   # workspace intermediates: value, bytes, offset

    @property
    def kernels(self) -> list[PlannedNode]:
        return [n for n in self.plan if n.kernel is not None]

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def format(self) -> str:
        return format_inspection(self)

    def __str__(self) -> str:
        return self.format()


def inspect_model(model: ModelSource, opt_level: int = 3, *, mcpu: Optional[str] = None,
                  lineage: Optional[Lineage] = None) -> Inspection:
    """Inspect ``model`` (path, bytes or ModelProto) at ``opt_level`` for the host CPU (or ``mcpu``)."""
    proto = load_onnx(model)
    lineage = lineage or trace(proto, opt_level)
    target = host_target() if mcpu is None else named_target(mcpu)
    imported = lineage.imported
    layers = _layers(lineage)
    by_layer = {layer.name: layer for layer in layers}
    plan_nodes, workspace, unshared, why, buffers = _plan(lineage, target, by_layer)
    graph = imported.graph
    where = model if isinstance(model, str) else graph.name
    return Inspection(
        model=str(where), opset=graph.opset, opt_level=opt_level,
        inputs=[_tensor(v) for v in graph.inputs], outputs=[_tensor(v) for v in graph.outputs],
        op_counts=dict(Counter(op for _, op in lineage.onnx_nodes)),
        layers=layers, total_params=sum(layer.params for layer in layers),
        total_macs=sum(layer.macs for layer in layers), plan=plan_nodes,
        removed=dict(lineage.removed), workspace=workspace, workspace_unshared=unshared,
        target_triple=target.triple, target_cpu=target.cpu, vector_bits=target.vector_bits(),
        vector_registers=target.vector_registers(), not_compilable=why, buffers=buffers)


def _tensor(v: Value) -> TensorSummary:
    return TensorSummary(v.name, v.type.dtype, list(v.type.shape))


def _layers(lineage: Lineage) -> list[Layer]:
    """Per ONNX node: the IR nodes the import made of it, summed."""
    stage = lineage.imported
    groups: dict[str, list[Node]] = {}
    for node in stage.graph.nodes:
        for name in stage.covered(node)[:1]:
            groups.setdefault(name, []).append(node)
    layers = []
    for name, op in lineage.onnx_nodes:
        nodes = groups.get(name, [])
        shape = list(nodes[-1].outputs[0].type.shape) if nodes and nodes[-1].outputs else []
        layers.append(Layer(name, op, shape, sum(node_params(n) for n in nodes), sum(node_macs(n) for n in nodes)))
    return layers


def _plan(lineage: Lineage, target: Target, layers: dict[str, Layer]):
    from ..backends.llvm.plan import make_plan, size_in_bytes

    final = lineage.final
    lanes = target.vector_bits() // 32
    kernels: set[Node] = set()
    workspace = unshared = None
    why = ""
    buffers: list[dict] = []
    try:
        plan = make_plan(final.graph)
        kernels = set(plan.kernels)
        workspace, unshared = tuple(plan.workspace), tuple(plan.workspace_unshared)
        for value, st in plan.storage.items():
            if st.kind == "workspace" and value.producer in kernels:
                size, batched = size_in_bytes(value)
                buffers.append({"value": value.name, "bytes": size, "per_image": batched,
                                "offset": st.per_batch if batched else st.fixed})
        buffers.sort(key=lambda b: (not b["per_image"], b["offset"]))
    except LeptonError as exc:
        why = str(exc)
    nodes = []
    for node in final.graph.nodes:
        covers = list(final.covered(node))
        nodes.append(PlannedNode(
            node.name, f"{node.domain}.{node.op}" if node.domain else node.op, covers,
            node.outputs[0].name if node.outputs else "", list(node.outputs[0].type.shape) if node.outputs else [],
            kernel_variant(node, lanes) if node in kernels else None,
            sum(layers[c].macs for c in covers if c in layers), node_params(node)))
    return nodes, workspace, unshared, why, buffers


# -- text ------------------------------------------------------------------------------------------
def _shape(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]


def format_inspection(s: Inspection) -> str:
    out = [f"model: {s.model} (opset {s.opset}, {len(s.layers)} nodes)"]
    out += [f"input:  {t}" for t in s.inputs] + [f"output: {t}" for t in s.outputs]
    out.append("ops: " + ", ".join(f"{op} {n}" for op, n in sorted(s.op_counts.items(), key=lambda kv: (-kv[1], kv[0]))))
    out.append("")
    out.append("layers (per image):")
    rows = [["node", "op", "output", "params", "multiply-adds"]]
    rows += [[l.name, l.op, _shape(l.output_shape), f"{l.params:,}", f"{l.macs:,}"] for l in s.layers]
    rows.append(["total", "", "", f"{s.total_params:,}", f"{s.total_macs:,}"])
    out += _table(rows, {3, 4})
    out.append("")
    kernels = len(s.kernels)
    out.append(f"fusion plan at -O{s.opt_level} ({len(s.plan)} nodes, {kernels} kernels):")
    rows = [["node", "op", "covers", "kernel", "multiply-adds"]]
    for n in s.plan:
        kernel = n.kernel if n.kernel is not None else ("-" if s.not_compilable else "none (view)")
        rows.append([n.name, n.op, " + ".join(n.covers) or "-", kernel, f"{n.macs:,}"])
    out += _table(rows, {4})
    if s.removed:
        out.append("folded or removed: " + ", ".join(f"{name} ({stage})" for name, stage in s.removed.items()))
    out.append("")
    if s.workspace is not None:
        (per, fixed), (per0, fixed0) = s.workspace, s.workspace_unshared
        out.append(f"memory plan: peak workspace {per:,} bytes per image + {fixed:,} "
                   f"(without buffer reuse: {per0:,} + {fixed0:,}), {len(s.buffers)} intermediate buffers")
    else:
        out.append(f"memory plan: not available: {s.not_compilable}")
    lanes = s.vector_bits // 32
    out.append(f"target: {s.target_cpu} ({s.target_triple}), {s.vector_bits}-bit vectors "
               f"({lanes} floats), {s.vector_registers} vector registers")
    return "\n".join(out)
