"""``lepton.QLookup``: ``y[i] = table[x[i]]`` on uint8 (``ops/qlookup.py``), on one of three paths:

``vbmi``    AVX-512 VBMI: 64 bytes at a time; ``vpermt2b`` (``llvm.x86.avx512.vpermi2var.qi.512``)
            looks the low 7 bits up in each 128-entry half of the table (two 64-byte quarters
            each) and a byte blend on bit 7 picks the half;
``avx2``    AVX2: 32 bytes at a time; ``vpshufb`` looks the low 4 bits up in each of the 16
            sixteen-byte sub-tables (broadcast to both 128-bit lanes), and a blend keeps the one
            whose number is the high nibble;
``scalar``  a byte loop (also every path's tail).

Each row (the outermost dim) is split across threads. Tests force a path with ``forced_path``.
"""

from __future__ import annotations


from llvmlite import ir

from ...ir import Node, shape_product
from .codegen import I8, CodePaths, KernelBuilder
from .int8dot import vec_load, vec_store
from .registry import lowering

PATHS = ("vbmi", "avx2", "scalar")
PATH_SWITCH = CodePaths("lookup", PATHS, lambda natural: set(PATHS[PATHS.index(natural):]))
forced_path = PATH_SWITCH.forced
"""``with forced_path("scalar"):`` emits every QLookup kernel on that path (tests only)."""


def natural_path(target) -> str:
    f = set(target.features) if target is not None else set()
    if {"avx512vbmi", "avx512bw", "avx512f"} <= f:
        return "vbmi"
    if "avx2" in f:
        return "avx2"
    return "scalar"


def path_name(target) -> str:
    return PATH_SWITCH.choose(natural_path(target), "this target")


def _call(k: KernelBuilder, name: str, vtype: ir.VectorType, *args: ir.Value) -> ir.Value:
    fn = k.module.globals.get(name)
    if fn is None:
        fn = ir.Function(k.module, ir.FunctionType(vtype, [a.type for a in args]), name)
    return k.b.call(fn, list(args))


def _lookup_vbmi(k: KernelBuilder, quarters: list, idx: ir.Value) -> ir.Value:
    v64 = ir.VectorType(I8, 64)
    name = "llvm.x86.avx512.vpermi2var.qi.512"
    low = _call(k, name, v64, quarters[0], idx, quarters[1])    # table[idx & 127]
    high = _call(k, name, v64, quarters[2], idx, quarters[3])   # table[128 + (idx & 127)]
    upper = k.b.icmp_signed("<", idx, ir.Constant(v64, [0] * 64))
    return k.b.select(upper, high, low)


def _lookup_avx2(k: KernelBuilder, subtables: list, idx: ir.Value) -> ir.Value:
    v32 = ir.VectorType(I8, 32)
    b = k.b
    low = b.and_(idx, ir.Constant(v32, [15] * 32))       # bit 7 clear: vpshufb never zeroes
    nibble = b.lshr(idx, ir.Constant(v32, [4] * 32))
    result = None
    for j, sub in enumerate(subtables):
        got = _call(k, "llvm.x86.avx2.pshuf.b", v32, sub, low)
        if result is None:
            result = got
        else:
            result = b.select(b.icmp_unsigned("==", nibble, ir.Constant(v32, [j] * 32)), got, result)
    return result


@lowering("QLookup")
def lower_qlookup(k: KernelBuilder, node: Node) -> None:
    x, t, y = node.inputs[0], node.inputs[1], node.outputs[0]
    b = k.b
    shape = x.type.shape
    outer = shape[0] if shape else 1
    inner = shape_product(shape[1:]) if shape else 1
    path = path_name(k.target)
    table = k.ptr(t)
    lanes = {"vbmi": 64, "avx2": 32, "scalar": 0}[path]
    parts = []
    if path == "vbmi":
        parts = [vec_load(k, table, 64 * q, ir.VectorType(I8, 64)) for q in range(4)]
    elif path == "avx2":
        for j in range(16):
            sub = vec_load(k, table, 16 * j, ir.VectorType(I8, 16))
            parts.append(b.shuffle_vector(sub, sub, ir.Constant(ir.VectorType(ir.IntType(32), 32),
                                                                 list(range(16)) * 2)))
    with k.parallel_loop(outer, inner if isinstance(inner, int) else 1024, name="row") as row:
        n = k.dim(inner)
        base = b.mul(row, n)
        src = b.gep(k.ptr(x), [base])
        dst = b.gep(k.ptr(y), [base])
        done = ir.Constant(n.type, 0)
        if lanes:
            blocks = b.udiv(n, ir.Constant(n.type, lanes))
            with k.loop(blocks, name="blk") as blk:
                off = b.mul(blk, ir.Constant(n.type, lanes))
                idx = vec_load(k, src, off, ir.VectorType(I8, lanes))
                got = _lookup_vbmi(k, parts, idx) if path == "vbmi" else _lookup_avx2(k, parts, idx)
                vec_store(k, got, dst, off)
            done = b.mul(blocks, ir.Constant(n.type, lanes))
        with k.loop(n, start=done, name="tail") as i:
            q = b.zext(k.load(src, i), n.type)
            k.store(k.load(table, q), dst, i)
