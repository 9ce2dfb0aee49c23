"""``FusedGemm`` / ``Gemm`` / 2-D ``MatMul`` as one GPU kernel: ``softmax(act(alpha * A B + beta * C))``.

Classic shared-memory tiling: a block of ``TX x TY = 16 x 16`` threads computes a ``BM x BN = 64 x 64`` tile
of the output, each thread ``RM x RN = 4 x 4`` outputs (rows ``ty + i * TY``, columns ``tx + j * TX``) in
registers. For each ``BK = 16`` slice of K the block loads the A and B slices into shared memory (coalesced,
whatever ``transA``/``transB``), barrier, accumulates, barrier.

With a fused softmax a block owns whole rows: it walks the column tiles itself (a uniform loop) writing
``act(...)`` to the output, then three barrier-separated phases reduce each row through shared memory
(partial maxima of the thread's columns, then partial sums of ``exp(y - max)`` written back, then the
division). ``exp`` is ``math.exp``.
"""

from __future__ import annotations

from ...ir import Node, dim_factors
from .conv import _broadcast_strides
from .kernel import GridDim, KernelSpec, Loop, Phase, Thread, cooperative
from .math import ACTIVATIONS, activate, exp
from .registry import NotLowerable, lowering

TX, TY, RM, RN, BK = 16, 16, 4, 4, 16
BM, BN = TY * RM, TX * RN
SA, SB = BM + 1, BN + 1       # padded rows: the tile stores hit distinct banks


def _static(d, what: str) -> int:
    if dim_factors(d)[0]:
        raise NotLowerable(f"{what} is dynamic ({d}); the cuda gemm allows a dynamic M only")
    return int(d)


@lowering("FusedGemm", "Gemm", "MatMul")
def lower_gemm(node: Node, name: str) -> KernelSpec:
    a, bmat = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 and node.op != "MatMul" else None
    y = node.outputs[0]
    if node.op == "MatMul" and (len(a.type.shape) != 2 or len(bmat.type.shape) != 2):
        raise NotLowerable("the cuda backend has 2-D MatMul only")
    trans_a, trans_b = node.attr("transA", 0), node.attr("transB", 0)
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    act = node.attr("activation", "") if node.op == "FusedGemm" else ""
    params = list(node.attr("activation_params", []))
    softmax = bool(node.attr("softmax", 0)) if node.op == "FusedGemm" else False
    if act and act not in ACTIVATIONS:
        raise NotLowerable(f"activation {act} has no cuda kernel")
    M = y.type.shape[0]
    symbols, m_factor = dim_factors(M)
    K = _static(a.type.shape[0] if trans_a else a.type.shape[1], "K")
    N = _static(y.type.shape[1], "N")
    if trans_a and symbols:
        raise NotLowerable("transA with a dynamic M")
    if any(dim_factors(d)[0] for d in bmat.type.shape):
        raise NotLowerable("B has a dynamic dim")
    c_strides = _broadcast_strides(c.type.shape, [M, N]) if c is not None else None
    k_tiles = -(-K // BK)
    n_tiles = -(-N // BN)
    state = RM * RN

    def m_dim(t: Thread):
        return t.dim(M)

    def rows(t: Thread):
        base = t.mul(t.bid[0], BM)
        return [t.add(base, t.add(t.tid[1], i * TY)) for i in range(RM)]

    def col_tile(t: Thread):
        return t.add(t.bid[1], t.loop("ntile")) if softmax else t.bid[1]

    def cols(t: Thread):
        base = t.mul(col_tile(t), BN)
        return [t.add(base, t.add(t.tid[0], j * TX)) for j in range(RN)]

    def init(t: Thread):
        for i in range(state):
            t.b.store(t.f32(0.0), t.state(i))

    def load(t: Thread):
        kt = t.mul(t.loop("ktile"), BK)
        aptr, bptr, sa, sb = t.ptr(a), t.ptr(bmat), t.shared("a"), t.shared("b")
        mlim, row0, col0 = m_dim(t), t.mul(t.bid[0], BM), t.mul(col_tile(t), BN)

        def a_elem(e):
            if trans_a:   # A is [K, M]: consecutive threads read consecutive m
                mm, kk = t.rem(e, BM), t.div(e, BM)
            else:         # A is [M, K]
                mm, kk = t.div(e, BK), t.rem(e, BK)
            row, k = t.add(row0, mm), t.add(kt, kk)
            ok = t.and_(t.lt(row, mlim), t.lt(k, K))
            with t.b.if_else(ok) as (then, otherwise):
                with then:
                    off = t.add(t.mul(k, mlim), row) if trans_a else t.add(t.mul(row, K), k)
                    t.store(t.load(aptr, off), sa, t.add(t.mul(kk, SA), mm))
                with otherwise:
                    t.store(t.f32(0.0), sa, t.add(t.mul(kk, SA), mm))

        def b_elem(e):
            if trans_b:   # B is [N, K]
                nn, kk = t.div(e, BK), t.rem(e, BK)
            else:         # B is [K, N]
                nn, kk = t.rem(e, BN), t.div(e, BN)
            col, k = t.add(col0, nn), t.add(kt, kk)
            ok = t.and_(t.lt(col, N), t.lt(k, K))
            with t.b.if_else(ok) as (then, otherwise):
                with then:
                    off = t.add(t.mul(col, K), k) if trans_b else t.add(t.mul(k, N), col)
                    t.store(t.load(bptr, off), sb, t.add(t.mul(kk, SB), nn))
                with otherwise:
                    t.store(t.f32(0.0), sb, t.add(t.mul(kk, SB), nn))
        cooperative(t, BM * BK, a_elem)
        cooperative(t, BN * BK, b_elem)

    def accumulate(t: Thread):
        sa, sb = t.shared("a"), t.shared("b")
        slots = [t.state(i) for i in range(state)]
        acc = [t.b.load(s) for s in slots]
        for k in range(BK):
            av = [t.load(sa, t.add(t.tid[1], k * SA + i * TY)) for i in range(RM)]
            bv = [t.load(sb, t.add(t.tid[0], k * SB + j * TX)) for j in range(RN)]
            acc = [t.fma(av[i], bv[j], acc[i * RN + j]) for i in range(RM) for j in range(RN)]
        for s, v in zip(slots, acc):
            t.b.store(v, s)

    def epilogue(t: Thread):
        yptr, mlim = t.ptr(y), m_dim(t)
        for i, row in enumerate(rows(t)):
            for j, col in enumerate(cols(t)):
                with t.if_(t.and_(t.lt(row, mlim), t.lt(col, N))):
                    v = t.b.load(t.state(i * RN + j))
                    if alpha != 1.0:
                        v = t.b.fmul(v, t.f32(alpha))
                    if c is not None:
                        cv = t.load(t.ptr(c), t.add(t.mul(row, c_strides[0]), t.mul(col, c_strides[1])))
                        v = t.fma(cv, t.f32(beta), v) if beta != 1.0 else t.b.fadd(v, cv)
                    t.store(activate(t, act, v, params), yptr, t.add(t.mul(row, N), col))

    # -- the fused softmax over each row --------------------------------------------------------------
    def row_slot(t: Thread, i: int):
        return t.add(t.mul(t.add(t.tid[1], i * TY), TX), t.tid[0])

    def partial_max(t: Thread):
        yptr, mlim, red = t.ptr(y), m_dim(t), t.shared("max")
        for i, row in enumerate(rows(t)):
            best = t.local(t.f32(float("-inf")))
            with t.if_(t.lt(row, mlim)):
                with t.for_range(N, start=t.tid[0], step=TX, name="col") as col:
                    t.b.store(t.max(t.b.load(best), t.load(yptr, t.add(t.mul(row, N), col))), best)
            t.store(t.b.load(best), red, row_slot(t, i))

    def row_max(t: Thread, i: int):
        red = t.shared("max")
        base = t.mul(t.add(t.tid[1], i * TY), TX)
        m = t.load(red, base)
        for q in range(1, TX):
            m = t.max(m, t.load(red, t.add(base, q)))
        return m

    def partial_sum(t: Thread):
        yptr, mlim, red = t.ptr(y), m_dim(t), t.shared("sum")
        for i, row in enumerate(rows(t)):
            total = t.local(t.f32(0.0))
            with t.if_(t.lt(row, mlim)):
                m = row_max(t, i)
                with t.for_range(N, start=t.tid[0], step=TX, name="col") as col:
                    off = t.add(t.mul(row, N), col)
                    e = exp(t, t.b.fsub(t.load(yptr, off), m))
                    t.store(e, yptr, off)
                    t.b.store(t.b.fadd(t.b.load(total), e), total)
            t.store(t.b.load(total), red, row_slot(t, i))

    def normalize(t: Thread):
        yptr, mlim, red = t.ptr(y), m_dim(t), t.shared("sum")
        for i, row in enumerate(rows(t)):
            with t.if_(t.lt(row, mlim)):
                base = t.mul(t.add(t.tid[1], i * TY), TX)
                s = t.load(red, base)
                for q in range(1, TX):
                    s = t.b.fadd(s, t.load(red, t.add(base, q)))
                inv = t.b.fdiv(t.f32(1.0), s)
                with t.for_range(N, start=t.tid[0], step=TX, name="col") as col:
                    off = t.add(t.mul(row, N), col)
                    t.store(t.b.fmul(t.load(yptr, off), inv), yptr, off)

    body = [Phase(init, "init", barrier=False),
            Loop("ktile", k_tiles, [Phase(load, "load_tiles"), Phase(accumulate, "accumulate")]),
            Phase(epilogue, "epilogue", barrier=softmax)]
    shared = {"a": BK * SA, "b": BK * SB}
    if softmax:
        steps = [Loop("ntile", n_tiles, body), Phase(partial_max, "row_max"), Phase(partial_sum, "row_exp_sum"),
                 Phase(normalize, "row_normalize")]
        shared.update({"max": BM * TX, "sum": BM * TX})
        grid_y = GridDim()
    else:
        steps = body
        grid_y = GridDim(0, N, BN)
    m_grid = GridDim(m_factor, 0, BM) if symbols else GridDim(0, int(M), BM)
    buffers = list(dict.fromkeys([a, bmat] + ([c] if c is not None else []) + [y]))
    notes = (f"{BM}x{BN} output tile per block, {RM}x{RN} per thread, A and B through shared memory in "
             f"{k_tiles} slice(s) of {BK}" + (f"; softmax over rows of {N} in the same kernel" if softmax else ""))
    return KernelSpec(name, node.op, node.name, buffers, [y], (TX, TY, 1), (m_grid, grid_y, GridDim()), steps,
                      state=state, shared=shared, notes=notes)
