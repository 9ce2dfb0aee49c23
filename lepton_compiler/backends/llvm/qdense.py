"""``QGemm``: ``y = requant(a @ b.T)`` for uint8 ``a[M, K]`` and constant int8 ``b[N, K]``.

A tile of ``T`` rows of ``a`` x ``B`` blocks of output columns stays in registers
over the reduction in groups of four (``int8dot.py``), so each weight vector loaded
feeds ``T`` dot products. Rows are read in place when each group of four is one
aligned-enough 32-bit load of u8 (``K % 4 == 0`` on the u8 paths); otherwise the
tile's rows are first staged in a stack buffer (widened to int16 on the pmaddwd
path, ``K`` padded to a multiple of four). Finished rows are activated and, with
``softmax=1``, normalized while in cache.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from ...ir import Node
from .codegen import KernelBuilder
from .int8dot import Epilogue, choose_path, vec_store
from .qconv import choose_tile
from .registry import NotLowerable, lowering
from .softmax import emit_softmax_row


class QGemmKernel:
    def __init__(self, k: KernelBuilder, node: Node):
        self.k, self.node = k, node
        a, w = node.inputs[0], node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if not w.is_const or (bias is not None and not bias.is_const):
            raise NotLowerable("QGemm needs a constant b and bias")
        self.a, self.y = a, node.outputs[0]
        self.n, self.kk = w.type.shape
        self.groups = -(-self.kk // 4)
        wpad = np.zeros((self.n, self.groups * 4), np.int8)
        wpad[:, :self.kk] = w.const
        self.path = path = choose_path(k)
        self.lanes = path.lanes
        self.blocks_total = -(-self.n // self.lanes)
        self.npad = self.blocks_total * self.lanes
        self.epilogue = Epilogue(k, node, "a", wpad, None if bias is None else bias.const, self.lanes)
        self.weights = k.constant(f"{node.name}.packed", path.pack(wpad.reshape(self.n, self.groups, 4)))
        self.direct = self.kk % 4 == 0 and path.x_type.width == 8
        self.tile, self.tile_blocks = choose_tile(path, self.blocks_total, 1 << 30, 32 if self.lanes == 16 else 16)

    def emit_tile(self, m0: ir.Value, rows: int, stage, out) -> None:
        """Rows ``m0 .. m0+rows`` of y."""
        k, b, path, ep = self.k, self.k.b, self.path, self.epilogue
        a = k.ptr(self.a)
        if self.direct:
            src, bases = a, [b.mul(b.add(m0, k.i64(t)), k.i64(self.kk)) for t in range(rows)]
        else:
            kp = self.groups * 4
            fill = path.stage_value(k, ir.Constant(ir.IntType(8), int(self.node.attr("a_zero_point"))))
            for t in range(rows):
                row = b.gep(a, [b.mul(b.add(m0, k.i64(t)), k.i64(self.kk))])
                with k.loop(self.kk, name="st") as i:
                    k.store(path.stage_value(k, k.load(row, i)), stage, b.add(k.i64(t * kp), i))
                for i in range(self.kk, kp):
                    k.store(fill, stage, t * kp + i)
            src, bases = stage, [k.i64(t * kp) for t in range(rows)]
        four_l = 4 * self.lanes
        with k.loop(self.blocks_total // self.tile_blocks, name="ng") as ng:
            blocks = [b.add(b.mul(ng, k.i64(self.tile_blocks)), k.i64(j)) for j in range(self.tile_blocks)]
            acc = [[k.scalar_slot(ep.initial(blk)) for blk in blocks] for _ in range(rows)]
            with k.loop(self.groups, name="grp") as grp:
                wrow = b.mul(grp, k.i64(self.blocks_total))
                ws = [path.load_w(k, self.weights, b.mul(b.add(wrow, blk), k.i64(four_l))) for blk in blocks]
                off = b.mul(grp, k.i64(4))
                for t in range(rows):
                    xv = path.load_x(k, src, b.add(bases[t], off))
                    for j in range(len(blocks)):
                        b.store(path.dot(k, b.load(acc[t][j]), xv, ws[j]), acc[t][j])
            for t in range(rows):
                for j, blk in enumerate(blocks):
                    vec_store(k, ep.finish(b.load(acc[t][j]), blk), out,
                              b.add(k.i64(t * self.npad), b.mul(blk, k.i64(self.lanes))))
        y = k.ptr(self.y)
        softmax = bool(self.node.attr("softmax", 0))
        for t in range(rows):
            dst = b.gep(y, [b.mul(b.add(m0, k.i64(t)), k.i64(self.n))])
            with k.loop(self.n, name="out") as j:
                k.store(k.load(out, b.add(k.i64(t * self.npad), j)), dst, j)
            if softmax:
                emit_softmax_row(k, dst, dst, k.i64(self.n), k.i64(1))

    def emit(self) -> None:
        k, b = self.k, self.k.b
        tile = self.tile
        stage = None if self.direct else k.stack_array(self.path.x_type, tile * self.groups * 4)
        out = k.stack_array(self.epilogue.element, tile * self.npad)
        # The parallel loop of KernelBuilder, by hand: this part's rows, then tiles of them.
        rows_dim = self.a.type.shape[0]
        stop = k.dim(rows_dim)
        chunk = b.udiv(b.add(stop, b.sub(k.parts, k.i64(1))), k.parts)
        lo = b.mul(k.part, chunk)
        hi = b.add(lo, chunk)
        hi = b.select(b.icmp_signed("<", hi, stop), hi, stop)
        k.parallel, k.work_per_iteration, k.parallel_extent = True, self.n * self.kk, rows_dim
        count = b.select(b.icmp_signed("<", lo, hi), b.sub(hi, lo), k.i64(0))
        with k.loop(b.udiv(count, k.i64(tile)), name="rt") as t:
            self.emit_tile(b.add(lo, b.mul(t, k.i64(tile))), tile, stage, out)
        if tile > 1:
            with k.loop(hi, start=b.add(lo, b.mul(b.udiv(count, k.i64(tile)), k.i64(tile))), name="rr") as m:
                self.emit_tile(m, 1, stage, out)


@lowering("QGemm")
def lower_qgemm(k: KernelBuilder, node: Node) -> None:
    QGemmKernel(k, node).emit()
