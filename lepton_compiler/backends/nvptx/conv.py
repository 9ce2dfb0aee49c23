"""``FusedConv`` (and plain ``Conv``) as one GPU kernel: conv + bias + residual + activation + max pool.

Work split (an implicit GEMM over ``M = N * pooled positions`` rows and ``OC`` columns):

* a block is ``BX x BY`` threads; thread ``(tx, ty)`` computes one output position ``m = bx * BX + tx``
  (image ``n`` and pooled position ``p`` of it; positions of several images share a block, so small
  late layers still fill it) for ``OCPT`` consecutive output channels starting at
  ``by * OCT + ty * OCPT`` (``OCT = BY * OCPT`` channels per block);
* with a fused pool the thread keeps one accumulator per channel and per conv position of its pooling
  window, and reduces them with the max in the epilogue: the conv output never goes to memory;
* the weights of the block's ``OCT`` channels are staged through shared memory in chunks of ``ICC``
  input channels (``OCT x ICC x KH x KW`` floats, at most 32 KB): the threads load a chunk together
  (coalesced), barrier, accumulate from it, barrier, next chunk. Every weight read in the inner loop is
  a shared-memory read broadcast to the warp; inputs come from global memory (through L1/L2), each
  loaded once per thread and used for all ``OCPT`` channels.

Grouped convolution (depthwise included) uses the same kernel: the tile holds weights by local input
channel, and each channel of a thread reads the input channels of its own group.
"""

from __future__ import annotations

from ...ir import Node, dim_factors
from ...ops.fused import POOL_ATTRS, conv_output_type
from .kernel import GridDim, KernelSpec, Loop, Phase, Thread, cooperative, static_tail
from .math import ACTIVATIONS, activate
from .registry import NotLowerable, lowering

BX, BY = 64, 4
SMEM_FLOATS = 8192          # 32 KB of weights per chunk (static shared memory is limited to 48 KB)
MAX_ACCUMULATORS = 64


def _attrs(node: Node, conv_shape) -> dict:
    x, w = node.inputs[0], node.inputs[1]
    if len(x.type.shape) != 4:
        raise NotLowerable(f"the cuda backend has 2-D convolutions only (input {x.type})")
    kh, kw = w.type.shape[2], w.type.shape[3]
    a = {
        "IC": x.type.shape[1], "H": x.type.shape[2], "W": x.type.shape[3], "OC": w.type.shape[0],
        "ICg": w.type.shape[1], "KH": kh, "KW": kw, "group": node.attr("group", 1),
        "strides": list(node.attr("strides", [1, 1])), "pads": list(node.attr("pads", [0, 0, 0, 0])),
        "dil": list(node.attr("dilations", [1, 1])), "OH": conv_shape[2], "OW": conv_shape[3],
    }
    if node.attr("pool_kernel") is not None:
        a["pk"] = list(node.attr("pool_kernel"))
        a["ps"] = list(node.attr("pool_strides", [1, 1]))
        a["pp"] = list(node.attr("pool_pads", [0, 0, 0, 0]))
        a["pd"] = list(node.attr("pool_dilations", [1, 1]))
    else:
        a.update(pk=[1, 1], ps=[1, 1], pp=[0, 0, 0, 0], pd=[1, 1])
    return a


def _broadcast_strides(shape, target) -> list:
    """Element strides of a tensor of ``shape`` read as if broadcast to ``target`` (0 along broadcast dims)."""
    shape = [1] * (len(target) - len(shape)) + list(shape)
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(0 if d == 1 else step)
        if d != 1:
            symbols, factor = dim_factors(d)
            step = step * factor if not symbols else None
    strides.reverse()
    if any(s is None for s in strides):
        raise NotLowerable(f"a broadcast operand of shape {list(shape)} has a dynamic dim after the first")
    return strides


@lowering("FusedConv", "Conv")
def lower_conv(node: Node, name: str) -> KernelSpec:
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    residual = node.inputs[3] if len(node.inputs) > 3 else None
    y = node.outputs[0]
    act = node.attr("activation", "") if node.op == "FusedConv" else ""
    params = list(node.attr("activation_params", []))
    if act and act not in ACTIVATIONS:
        raise NotLowerable(f"activation {act} has no cuda kernel")
    if node.op == "Conv" and any(node.attr(k) is not None for k in POOL_ATTRS):
        raise NotLowerable("pool attributes on a plain Conv")
    conv_shape = conv_output_type(node).shape if node.op == "FusedConv" else y.type.shape
    a = _attrs(node, conv_shape)
    for v in (x, y):
        if not static_tail(v.type.shape):
            raise NotLowerable(f"'{v.name}' has a dynamic dim after the batch: {v.type}")
    if any(dim_factors(d)[0] for d in w.type.shape):
        raise NotLowerable("dynamic weight shape")
    if dim_factors(x.type.shape[0])[0] and dim_factors(x.type.shape[0])[1] != 1:
        raise NotLowerable(f"batch dim {x.type.shape[0]} is not the batch itself")
    res_strides = _broadcast_strides(residual.type.shape, conv_shape) if residual is not None else None

    OC, ICg, KH, KW, group = a["OC"], a["ICg"], a["KH"], a["KW"], a["group"]
    OCg = OC // group
    KK = KH * KW
    window = a["pk"][0] * a["pk"][1]
    FH, FW = y.type.shape[2], y.type.shape[3]
    P = FH * FW
    ocpt = max(1, min(8, -(-OC // BY), MAX_ACCUMULATORS // window))
    oct_ = BY * ocpt
    if oct_ * KK > SMEM_FLOATS:
        ocpt = 1
        oct_ = BY
    if oct_ * KK > SMEM_FLOATS:
        raise NotLowerable(f"a {KH}x{KW} kernel window does not fit the shared-memory weight tile")
    icc = max(1, min(ICg, SMEM_FLOATS // (oct_ * KK)))
    chunks = -(-ICg // icc)
    tile = oct_ * icc * KK
    nacc = ocpt * window
    batch_factor = dim_factors(x.type.shape[0])
    m_total = GridDim(P if batch_factor[0] else 0, 0 if batch_factor[0] else P * batch_factor[1], BX)
    sh, sw = a["strides"]
    dh, dw = a["dil"]
    pt, pl = a["pads"][0], a["pads"][1]
    psh, psw = a["ps"]
    pdh, pdw = a["pd"]
    ppt, ppl = a["pp"][0], a["pp"][1]
    IC, H, W, OH, OW = a["IC"], a["H"], a["W"], a["OH"], a["OW"]

    def position(t: Thread):
        """(valid, n, fy, fx) of this thread's output row."""
        m = t.add(t.mul(t.bid[0], BX), t.tid[0])
        valid = t.lt(m, t.mul(t.dim(x.type.shape[0]), P))
        n, p = t.div(m, P), t.rem(m, P)
        return valid, n, t.div(p, FW), t.rem(p, FW)

    def conv_pos(t: Thread, fy, fx, wy: int, wx: int):
        cy = t.add(t.mul(fy, psh), -ppt + wy * pdh) if (psh, ppt, wy) != (1, 0, 0) else fy
        cx = t.add(t.mul(fx, psw), -ppl + wx * pdw) if (psw, ppl, wx) != (1, 0, 0) else fx
        return cy, cx

    def channel(t: Thread, j: int):
        return t.add(t.mul(t.bid[1], oct_), t.add(t.mul(t.tid[1], ocpt), j))

    def init(t: Thread):
        for i in range(nacc):
            t.b.store(t.f32(0.0), t.state(i))

    def load_tile(t: Thread):
        c = t.loop("chunk")
        wptr, smem = t.ptr(w), t.shared("w")
        remaining = t.b.sub(t.i32(ICg), t.mul(c, icc))

        def body(e):
            ocl, r = t.div(e, icc * KK), t.rem(e, icc * KK)
            oc = t.add(t.mul(t.bid[1], oct_), ocl)
            ok = t.and_(t.lt(oc, OC), t.lt(t.div(r, KK), remaining))
            with t.b.if_else(ok) as (then, otherwise):
                with then:
                    t.store(t.load(wptr, t.add(t.mul(oc, ICg * KK), t.add(t.mul(c, icc * KK), r))), smem, e)
                with otherwise:
                    t.store(t.f32(0.0), smem, e)
        cooperative(t, tile, body)

    def compute(t: Thread):
        c = t.loop("chunk")
        valid, n, fy, fx = position(t)
        smem, xptr = t.shared("w"), t.ptr(x)
        count = t.b.select(t.lt(t.b.sub(t.i32(ICg), t.mul(c, icc)), icc), t.b.sub(t.i32(ICg), t.mul(c, icc)),
                           t.i32(icc))
        with t.if_(valid):
            slots = [t.state(i) for i in range(nacc)]
            groups = [t.div(channel(t, j), OCg) for j in range(ocpt)] if group > 1 else None
            with t.for_range(count, name="icc") as ic_local:
                ic0 = t.add(t.mul(c, icc), ic_local)
                with t.for_range(KH, name="kh") as kh:
                    for kw in range(KW):
                        wts = [t.load(smem, t.add(t.mul(t.add(t.mul(t.tid[1], ocpt), j), icc * KK),
                                                   t.add(t.mul(ic_local, KK), t.add(t.mul(kh, KW), kw))))
                               for j in range(ocpt)]
                        for wy in range(a["pk"][0]):
                            for wx in range(a["pk"][1]):
                                cy, cx = conv_pos(t, fy, fx, wy, wx)
                                iy = t.add(t.mul(cy, sh), t.add(t.mul(kh, dh), -pt))
                                ix = t.add(t.mul(cx, sw), kw * dw - pl)
                                inside = t.and_(t.in_range(iy, H), t.in_range(ix, W))
                                # clamp the address so that a padded position never reads out of bounds
                                iy_c = t.b.select(inside, iy, t.i32(0))
                                ix_c = t.b.select(inside, ix, t.i32(0))
                                spatial = t.add(t.mul(iy_c, W), ix_c)

                                def x_at(ic):
                                    v = t.load(xptr, t.add(t.mul(t.add(t.mul(n, IC), ic), H * W), spatial))
                                    return t.b.select(inside, v, t.f32(0.0))
                                shared_x = x_at(ic0) if group == 1 else None
                                for j in range(ocpt):
                                    xv = shared_x if group == 1 else x_at(t.add(t.mul(groups[j], ICg), ic0))
                                    slot = slots[j * window + wy * a["pk"][1] + wx]
                                    t.b.store(t.fma(xv, wts[j], t.b.load(slot)), slot)

    def epilogue(t: Thread):
        valid, n, fy, fx = position(t)
        yptr = t.ptr(y)
        with t.if_(valid):
            for j in range(ocpt):
                oc = channel(t, j)
                with t.if_(t.lt(oc, OC)):
                    b0 = t.load(t.ptr(bias), oc) if bias is not None else t.f32(0.0)
                    best = None
                    for wy in range(a["pk"][0]):
                        for wx in range(a["pk"][1]):
                            cy, cx = conv_pos(t, fy, fx, wy, wx)
                            v = t.b.fadd(t.b.load(t.state(j * window + wy * a["pk"][1] + wx)), b0)
                            inside = t.and_(t.in_range(cy, OH), t.in_range(cx, OW)) if window > 1 or \
                                a["pp"] != [0, 0, 0, 0] else None
                            if residual is not None:
                                cy_c = t.b.select(inside, cy, t.i32(0)) if inside is not None else cy
                                cx_c = t.b.select(inside, cx, t.i32(0)) if inside is not None else cx
                                off = t.add(t.add(t.mul(n, res_strides[0]), t.mul(oc, res_strides[1])),
                                            t.add(t.mul(cy_c, res_strides[2]), t.mul(cx_c, res_strides[3])))
                                v = t.b.fadd(v, t.load(t.ptr(residual), off))
                            v = activate(t, act, v, params)
                            if best is None and inside is None:
                                best = v
                            elif best is None:
                                best = t.b.select(inside, v, t.f32(float("-inf")))
                            else:
                                best = t.b.select(inside, t.max(best, v), best) if inside is not None \
                                    else t.max(best, v)
                    off = t.add(t.mul(t.add(t.mul(n, OC), oc), P), t.add(t.mul(fy, FW), fx))
                    t.store(best, yptr, off)

    steps = [Phase(init, "init", barrier=False),
             Loop("chunk", chunks, [Phase(load_tile, "load_weights"), Phase(compute, "accumulate")]),
             Phase(epilogue, "epilogue")]
    buffers = [x, w] + ([bias] if bias is not None else []) + ([residual] if residual is not None else []) + [y]
    buffers = list(dict.fromkeys(buffers))
    notes = (f"implicit GEMM, {BX} positions x {oct_} channels per block ({ocpt} per thread"
             + (f", {window} pool positions each" if window > 1 else "") + f"), weights through shared memory "
             f"in {chunks} chunk(s) of {icc} input channel(s) ({4 * tile} bytes)")
    return KernelSpec(name, node.op, node.name, buffers, [y], (BX, BY, 1),
                      (m_total, GridDim(0, OC, oct_), GridDim()), steps, state=nacc, shared={"w": tile},
                      batch_symbol=None, notes=notes)

