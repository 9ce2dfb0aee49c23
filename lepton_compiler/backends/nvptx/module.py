"""Builds the GPU program of a model: one PTX module with one kernel per fused node, and its launch plan.

Memory is planned by the cpu backend's planner (``backends/llvm/plan.py``): graph inputs and outputs
are the ``io`` slots, weights the constant slots (uploaded to the GPU once), and every intermediate has
an offset ``per_batch * batch + fixed`` bytes into one device workspace, reused between buffers whose
lifetimes do not overlap; views (Flatten, Reshape, ...) share their input's bytes and have no kernel.

A ``Launch`` says what the runtime passes to each kernel: ``(i32 batch, buffer pointers...)`` with
every buffer given as a ``Storage`` of that plan, and the grid and block to launch it on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from llvmlite import ir

from ...errors import UnsupportedOpError
from ...ir import Graph
from ..llvm.plan import Plan, Storage, _needed_nodes, make_plan, size_in_bytes
from . import conv, dense, elementwise
from .kernel import INT_LIMIT, GridDim, KernelSpec, emit_device, emit_host
from .registry import LOWERINGS, VIEWS, NotLowerable
from .target import DEFAULT_GPU, TRIPLE, data_layout, emit_ptx

MAX_GRID_YZ = 65535
KERNEL_FAMILIES = (conv, dense, elementwise)   # imported for their @lowering registrations


@dataclass
class Launch:
    kernel: str
    op: str
    node: str
    grid: tuple[GridDim, GridDim, GridDim]
    block: tuple[int, int, int]
    args: list[Storage]
    shared_bytes: int
    notes: str = ""

    def grid_for(self, batch: int) -> tuple[int, int, int]:
        return tuple(g.blocks(batch) for g in self.grid)

    def to_json(self) -> dict:
        return {"kernel": self.kernel, "op": self.op, "node": self.node, "grid": [g.to_json() for g in self.grid],
                "block": list(self.block), "shared_bytes": self.shared_bytes, "notes": self.notes,
                "args": [[s.kind, s.index, s.per_batch, s.fixed] for s in self.args]}


@dataclass
class GpuPlan:
    plan: Plan
    specs: list[KernelSpec]
    launches: list[Launch]
    max_batch: Optional[int] = None   # the largest batch whose tensors 32-bit indices still cover
    summary: dict = field(default_factory=dict)


def _ident(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)[:48] or "v"


def check_supported(graph: Graph) -> None:
    """Raise ``UnsupportedOpError`` listing every node the cuda backend has no kernel for."""
    nodes, _ = _needed_nodes(graph)
    missing = [(n.op, n.name, n.domain, graph.opset) for n in nodes if n.op not in LOWERINGS and n.op not in VIEWS]
    if missing:
        raise UnsupportedOpError(missing, "no cuda kernel")


def plan_gpu(graph: Graph) -> GpuPlan:
    """Kernels (``KernelSpec``) and launches for an optimized graph."""
    check_supported(graph)
    plan = make_plan(graph)
    specs, launches = [], []
    for index, node in enumerate(plan.kernels):
        name = f"k{index}_{_ident(node.op)}_{_ident(node.name)}"
        try:
            spec = LOWERINGS[node.op](node, name)
        except NotLowerable as exc:
            raise UnsupportedOpError([(node.op, node.name, node.domain, graph.opset)], str(exc)) from None
        for g in spec.grid[1:]:
            if g.per_batch or g.blocks(1) > MAX_GRID_YZ:
                raise UnsupportedOpError([(node.op, node.name, node.domain, graph.opset)],
                                         "the launch needs more than 65535 blocks along y or z")
        spec.batch_symbol = plan.batch_symbol
        specs.append(spec)
        launches.append(Launch(name, node.op, node.name, spec.grid, spec.block,
                               [plan.storage[v] for v in spec.buffers], spec.shared_bytes, spec.notes))
    max_batch = None
    if plan.batch_symbol is not None:
        for value in plan.storage:
            per, batched = size_in_bytes(value)
            elements = per // 4 if value.type.dtype == "float32" else per
            if batched and elements:
                limit = INT_LIMIT // elements
                max_batch = limit if max_batch is None else min(max_batch, limit)
    summary = {"kernels": [launch.to_json() for launch in launches], "workspace": list(plan.workspace),
               "workspace_unshared": list(plan.workspace_unshared), "max_batch": max_batch}
    return GpuPlan(plan, specs, launches, max_batch, summary)


def device_module(gplan: GpuPlan, gpu: str = DEFAULT_GPU) -> ir.Module:
    module = ir.Module(name=gplan.plan.graph.name or "model")
    module.triple = TRIPLE
    module.data_layout = data_layout(gpu)
    for spec in gplan.specs:
        emit_device(module, spec)
    return module


def host_module(gplan: GpuPlan) -> ir.Module:
    """The same kernels as host code, each a driver that runs its whole grid (see ``kernel.emit_host``)."""
    module = ir.Module(name=(gplan.plan.graph.name or "model") + ".host")
    for spec in gplan.specs:
        emit_host(module, spec)
    return module


def build_ptx(graph: Graph, gpu: str = DEFAULT_GPU) -> tuple[str, GpuPlan]:
    """PTX text for ``gpu`` and the launch plan of an optimized graph."""
    gplan = plan_gpu(graph)
    return emit_ptx(str(device_module(gplan, gpu)), gpu), gplan
