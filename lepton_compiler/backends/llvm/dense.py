"""Gemm, MatMul and FusedGemm.

On targets with vector registers, and where K and N are compile-time constants,
the register-blocked kernel of ``gemm.py``: a constant ``B`` (the weights) packed
at compile time into column panels with ``alpha`` and ``transB`` folded in; a
run-time ``B`` (a MatMul of two activations) read in place. FusedGemm's
activation runs on the accumulators, its softmax over each finished row.

Otherwise (no SIMD target, a dynamic K or N, a run-time ``B`` read transposed
or scaled by ``alpha``) rows of the output are accumulated as
``y[m, :] += a[m, k] * b[k, :]``, the inner loop over contiguous output columns
for LLVM to vectorize.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
from llvmlite import ir

from ...ir import Node, shape_product
from . import gemm as blocked
from .activations import activate
from .codegen import KernelBuilder
from .elementwise import broadcast_strides
from .registry import lowering
from .softmax import emit_softmax_row

RowFn = Callable[[KernelBuilder, ir.Value, ir.Value], None]   # (k, row index, row pointer)


def emit_matmul_block(k: KernelBuilder, a: ir.Value, a_row: ir.Value, a_col: ir.Value,
                      b: ir.Value, b_row: ir.Value, b_col: ir.Value, y: ir.Value,
                      m: ir.Value, kk: ir.Value, n: ir.Value, alpha: float = 1.0,
                      init_row: Optional[RowFn] = None, finish_row: Optional[RowFn] = None,
                      rows=None) -> None:
    """``y[i, j] = init + alpha * sum_p a[i*a_row + p*a_col] * b[p*b_row + j*b_col]`` for a row-major y.

    ``rows`` replaces the loop over ``i`` (a ``parallel_loop`` over the rows)."""
    bld = k.b
    with (rows if rows is not None else k.loop(m, name="m")) as i:
        y_row = bld.gep(y, [bld.mul(i, n)])
        if init_row is not None:
            init_row(k, i, y_row)
        else:
            with k.loop(n, name="j0") as j:
                k.store(k.f32(0.0), y_row, j)
        a_base = bld.mul(i, a_row)
        with k.loop(kk, name="p") as p:
            coef = k.load(a, bld.add(a_base, bld.mul(p, a_col)))
            if alpha != 1.0:
                coef = bld.fmul(coef, k.f32(alpha))
            b_base = bld.mul(p, b_row)
            with k.loop(n, name="j") as j:
                bv = k.load(b, bld.add(b_base, bld.mul(j, b_col)))
                k.store(k.fma(coef, bv, k.load(y_row, j)), y_row, j)
        if finish_row is not None:
            finish_row(k, i, y_row)


def _static(*dims) -> bool:
    return all(isinstance(d, int) for d in dims)


def lower_gemm_blocked(k: KernelBuilder, node: Node) -> bool:
    """Gemm / FusedGemm by the register-blocked kernel; False where it does not apply."""
    a, b_val = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 else None
    y = node.outputs[0]
    trans_a, trans_b = node.attr("transA", 0), node.attr("transB", 0)
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    m_dim, n = y.type.shape
    kk = a.type.shape[0] if trans_a else a.type.shape[1]
    if k.lanes < 4 or not _static(n, kk) or n == 0 or kk == 0:
        return False
    if not b_val.is_const and (trans_b or alpha != 1.0):
        return False
    blk = blocked.choose_blocking(k.lanes, k.registers, kk)
    a_dims = k.dims(a)
    a_row, a_col = (k.i64(1), a_dims[1]) if trans_a else (a_dims[1], k.i64(1))
    if b_val.is_const:
        w = np.asarray(b_val.const, np.float32)
        w = w.T if trans_b else w
        if alpha != 1.0:
            w = w * np.float32(alpha)
        b_ptr, packed = k.constant(f"{b_val.name}.panels", blocked.pack_b(w, blk)), True
    else:
        b_ptr, packed = k.ptr(b_val), False
    init = blocked.Init()
    if c is not None and beta != 0.0:
        sm, sn = broadcast_strides(k, c.type.shape, y.type.shape)
        if not isinstance(sn, int):
            return False   # C's last dim chosen at run time: the row loop reads it element by element
        if c.is_const and isinstance(sm, int) and sm == 0:
            row = np.broadcast_to(np.asarray(c.const, np.float32).reshape(-1), (n,)) * np.float32(beta)
            init = blocked.Init("row", k.constant(f"{node.name}.bias", blocked.pack_row(row, blk)))
        else:
            init = blocked.Init("c", k.ptr(c), sm, sn, beta)
    gemm = blocked.Gemm(k, blk, n, kk, node.attr("activation", ""), node.attr("activation_params", []),
                        bool(node.attr("softmax", 0)))
    ops = blocked.Operands(k.ptr(a), a_row, a_col, b_ptr, packed, k.ptr(y), init)
    blocked.emit_split(k, gemm, ops, m_dim, kk)
    return True


@lowering("Gemm", "FusedGemm")
def lower_gemm(k: KernelBuilder, node: Node) -> None:
    if lower_gemm_blocked(k, node):
        return
    a, b_val = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 else None
    y = node.outputs[0]
    m, n = k.dims(y)
    trans_a, trans_b = node.attr("transA", 0), node.attr("transB", 0)
    a_dims, b_dims = k.dims(a), k.dims(b_val)
    kk = a_dims[0] if trans_a else a_dims[1]
    a_row, a_col = (k.i64(1), a_dims[1]) if trans_a else (a_dims[1], k.i64(1))
    if trans_b and b_val.is_const:   # (the original is then not read, and not kept)
        b_ptr = k.constant(f"{b_val.name}.T", np.ascontiguousarray(b_val.const.T))
        trans_b = 0
        b_dims = [b_dims[1], b_dims[0]]
    else:
        b_ptr = k.ptr(b_val)
    b_row, b_col = (k.i64(1), b_dims[1]) if trans_b else (b_dims[1], k.i64(1))
    beta = float(node.attr("beta", 1.0))

    init_row: Optional[RowFn] = None
    if c is not None and beta != 0.0:
        strides = broadcast_strides(k, c.type.shape, y.type.shape)

        def load_c(k: KernelBuilder, i: ir.Value, row: ir.Value) -> None:
            with k.loop(n, name="cn") as j:
                cv = k.load(k.ptr(c), k.b.add(k.b.mul(i, k.i64(strides[0])), k.b.mul(j, k.i64(strides[1]))))
                k.store(k.b.fmul(cv, k.f32(beta)) if beta != 1.0 else cv, row, j)

        init_row = load_c

    activation, params = node.attr("activation", ""), list(node.attr("activation_params", []))
    softmax = bool(node.attr("softmax", 0))

    def finish_row(k: KernelBuilder, i: ir.Value, row: ir.Value) -> None:
        if activation:
            with k.loop(n, name="act") as j:
                k.store(activate(k, activation, k.load(row, j), params), row, j)
        if softmax:
            emit_softmax_row(k, row, row, n, k.i64(1))

    m_dim, n_dim = y.type.shape
    k_dim = a.type.shape[0] if node.attr("transA", 0) else a.type.shape[1]
    work = n_dim * k_dim if isinstance(n_dim, int) and isinstance(k_dim, int) else 1
    emit_matmul_block(k, k.ptr(a), a_row, a_col, b_ptr, b_row, b_col, k.ptr(y), m, kk, n,
                      alpha=float(node.attr("alpha", 1.0)), init_row=init_row,
                      finish_row=finish_row if activation or softmax else None,
                      rows=k.parallel_loop(m_dim, work, name="m"))


@lowering("MatMul")
def lower_matmul(k: KernelBuilder, node: Node) -> None:
    a, b_val = node.inputs
    y = node.outputs[0]
    a_shape = (1,) + a.type.shape if a.type.rank == 1 else a.type.shape
    b_shape = b_val.type.shape + (1,) if b_val.type.rank == 1 else b_val.type.shape
    batch_shape = y.type.shape[: max(len(a_shape), len(b_shape)) - 2]
    if lower_matmul_blocked(k, node, a_shape, b_shape, batch_shape):
        return
    m, kk, n = k.dim(a_shape[-2]), k.dim(a_shape[-1]), k.dim(b_shape[-1])
    a_strides = broadcast_strides(k, a_shape[:-2], batch_shape)
    b_strides = broadcast_strides(k, b_shape[:-2], batch_shape)
    bld = k.b
    a_mat, b_mat, y_mat = bld.mul(m, kk), bld.mul(kk, n), bld.mul(m, n)
    batch_dims = [k.dim(d) for d in batch_shape]
    with k.loops(batch_dims, name="bt") as index:
        a_off, b_off = batch_offsets(k, index, a_strides, b_strides)
        y_off = bld.mul(k.linear(index, batch_dims), y_mat) if index else k.i64(0)
        emit_matmul_block(k, bld.gep(k.ptr(a), [bld.mul(a_off, a_mat)]), kk, k.i64(1),
                          bld.gep(k.ptr(b_val), [bld.mul(b_off, b_mat)]), n, k.i64(1),
                          bld.gep(k.ptr(y), [y_off]), m, kk, n)


def batch_offsets(k: KernelBuilder, index, a_strides, b_strides) -> tuple[ir.Value, ir.Value]:
    """The matrices of ``A`` and ``B`` (in matrices, after broadcasting) that batch ``index`` reads."""
    bld = k.b
    a_off, b_off = k.i64(0), k.i64(0)
    for i, sa, sb in zip(index, a_strides, b_strides):
        a_off = bld.add(a_off, bld.mul(i, k.i64(sa)))
        b_off = bld.add(b_off, bld.mul(i, k.i64(sb)))
    return a_off, b_off


def lower_matmul_blocked(k: KernelBuilder, node: Node, a_shape, b_shape, batch_shape) -> bool:
    """MatMul by the register-blocked kernel; False where it does not apply. A constant ``B``
    without batch dims (or with only 1s) multiplies every row of ``A`` at once, split across
    threads; a batch of constant matrices or a run-time ``B`` runs matrix by matrix."""
    a, b_val = node.inputs
    y = node.outputs[0]
    kk, n = a_shape[-1], b_shape[-1]
    if k.lanes < 4 or not _static(kk, n) or n == 0 or kk == 0:
        return False
    blk = blocked.choose_blocking(k.lanes, k.registers, kk)
    gemm = blocked.Gemm(k, blk, n, kk)
    bld = k.b
    if b_val.is_const:
        w = np.asarray(b_val.const, np.float32).reshape(tuple(b_shape))
        packed = blocked.pack_b(w, blk)
        b_ptr = k.constant(f"{b_val.name}.panels", packed)
        if all(d == 1 for d in b_shape[:-2]):
            ops = blocked.Operands(k.ptr(a), kk, 1, b_ptr, True, k.ptr(y), blocked.Init())
            blocked.emit_split(k, gemm, ops, shape_product(a_shape[:-1]), kk)
            return True
        b_matrix = packed.size // int(np.prod(b_shape[:-2]))
    else:
        b_ptr, b_matrix = k.ptr(b_val), kk * n
    m = k.dim(a_shape[-2])
    a_strides = broadcast_strides(k, a_shape[:-2], batch_shape)
    b_strides = broadcast_strides(k, b_shape[:-2], batch_shape)
    a_mat, y_mat = bld.mul(m, k.i64(kk)), bld.mul(m, k.i64(n))
    batch_dims = [k.dim(d) for d in batch_shape]
    with k.loops(batch_dims, name="bt") as index:
        a_off, b_off = batch_offsets(k, index, a_strides, b_strides)
        y_off = bld.mul(k.linear(index, batch_dims), y_mat) if index else k.i64(0)
        ops = blocked.Operands(bld.gep(k.ptr(a), [bld.mul(a_off, a_mat)]), kk, 1,
                               bld.gep(b_ptr, [bld.mul(b_off, k.i64(b_matrix))]), b_val.is_const,
                               bld.gep(k.ptr(y), [y_off]), blocked.Init())
        gemm.emit(ops, k.i64(0), m, 0, gemm.panels.count)
    return True
