"""fuse-elementwise: chains and small DAGs of elementwise ops as one FusedElementwise.

    Sigmoid(Add(Mul(x, s), b)) -> FusedElementwise[program=["Mul 0 1", "Add 3 2", "Sigmoid 4"]](x, s, b)

The ops are Add, Sub, Mul, Div and the activations of ``ops.activations.ACTIVATIONS``
(Clip with bounds known at compile time) on float tensors of one dtype; an existing
FusedElementwise joins with its program inlined. A group grows backwards from its last
op (the *root*, whose output may be read anywhere) through producers whose outputs are
read only inside the group and are not graph outputs, so every intermediate stays
inside the fused kernel; a value read twice inside the group (``Mul(t, Sigmoid(t))``)
is computed once. Groups of two or more ops are fused; the FusedElementwise takes the
root's place and must compute the root's exact type.
"""

from __future__ import annotations

from typing import Optional

from ..ir import Graph, Node, Value
from ..ops.activations import ACTIVATIONS, activation_params
from ..ops.fused import BINARY, DOMAIN, format_step, parse_step
from .base import Pass, PassOptions, PassResult
from .fuse_activation import known_params
from .fusion import FLOAT_DTYPES, Users, fuse, make_node, run_rules


def fusable(node: Optional[Node], dtype: str) -> bool:
    """An elementwise op the program language expresses, on float tensors of ``dtype``."""
    if node is None or len(node.outputs) != 1 or node.outputs[0].type.dtype != dtype:
        return False
    if node.op == "FusedElementwise" and node.domain == DOMAIN:
        operands = node.inputs
    elif node.domain == "" and node.op in BINARY:
        operands = node.inputs
    elif node.domain == "" and node.op in ACTIVATIONS and known_params(node):
        operands = node.inputs[:1]
    else:
        return False
    return all(v is not None and v.type.dtype == dtype for v in operands)


def grow_group(g: Graph, root: Node, users: Users) -> list[Node]:
    """The nodes fused with ``root``, in graph order (root last)."""
    dtype = root.outputs[0].type.dtype
    group = {root}
    changed = True
    while changed:
        changed = False
        for node in list(group):
            for value in operands_of(node):
                p = value.producer
                if p is None or p in group or not fusable(p, dtype) or value in g.outputs:
                    continue
                if all(u in group for u in users.get(value, [])):
                    group.add(p)
                    changed = True
    return [n for n in g.nodes if n in group]


def operands_of(node: Node) -> list[Value]:
    return list(node.inputs) if node.op in BINARY or node.op == "FusedElementwise" else node.inputs[:1]


def build_program(group: list[Node]) -> tuple[list[Value], list[str]]:
    """The FusedElementwise inputs and program computing ``group``'s last node."""
    inputs: list[Value] = []
    produced = {v for n in group for v in n.outputs}
    for node in group:
        for v in operands_of(node):
            if v not in produced and v not in inputs:
                inputs.append(v)
    index = {v: i for i, v in enumerate(inputs)}  # value -> its operand index in the program
    program: list[str] = []

    def emit(op: str, params, operands: list[int]) -> int:
        program.append(format_step(op, params, operands))
        return len(inputs) + len(program) - 1

    for node in group:
        if node.op == "FusedElementwise":
            local = [index[v] for v in node.inputs]
            for step in node.attr("program"):
                op, params, operands = parse_step(step)
                local.append(emit(op, params, [local[o] for o in operands]))
            index[node.outputs[0]] = local[-1]
        elif node.op in BINARY:
            index[node.outputs[0]] = emit(node.op, [], [index[v] for v in node.inputs])
        else:
            index[node.outputs[0]] = emit(node.op, activation_params(node), [index[node.inputs[0]]])
    return inputs, program


def fuse_group(g: Graph, root: Node, users: Users) -> bool:
    """Fuse ``root`` with the elementwise ops feeding it (run over the nodes last first, so a
    group starts from its last op)."""
    dtype = root.outputs[0].type.dtype if root.outputs else ""
    if dtype not in FLOAT_DTYPES or not fusable(root, dtype):
        return False
    group = grow_group(g, root, users)
    if len(group) < 2:
        return False
    inputs, program = build_program(group)
    new = make_node("FusedElementwise", root.name, inputs, {"program": program})
    return fuse(g, new, root, group[:-1])


def fuse_elementwise(graph: Graph, options: PassOptions) -> PassResult:
    """Act(Add(Mul(x, s), b)) and other single-use elementwise chains -> FusedElementwise[program](x, s, b)."""
    return run_rules(graph, fuse_group, reverse=True, explain=options.explain, pattern="fuse-elementwise")


FUSE_ELEMENTWISE = Pass("fuse-elementwise", fuse_elementwise)
