"""The u8 x s8 -> s32 dot-product primitive of the int8 kernels, one class per instruction set,
and the requantization epilogue they share.

Every path computes, per output lane ``l`` (an output channel) and per *group* of four
reduction values, ``acc[l] += sum_j x[j] * w[l, j]`` exactly in int32:

``vnni``     ``vpdpbusd`` (AVX512-VNNI at 512 bits, AVX-VNNI / AVX512-VNNI+VL at 256): the
             four u8 activations of a group are one broadcast i32, the weights of the
             group's lanes one vector of ``4 * lanes`` int8.
``pmaddwd``  AVX2 / AVX512BW without VNNI. ``vpmaddubsw`` would saturate (255 * 127 * 2
             overflows int16), so activations are widened to int16 when the kernel stages
             them and weights are int16 at compile time; ``vpmaddwd`` (i16 x i16, pairs
             summed into i32) is exact. A group is two pairs: two ``vpmaddwd``.
``portable`` plain LLVM IR (zext, sext, mul, add on i32 vectors) for any other target.

Weights of ``lanes`` output channels for one group take ``4 * lanes`` elements in all
three layouts (``pack``), so the kernels address them alike.

Tests force a path with ``forced_path`` (a module-level switch, for tests only); a forced
path must be one the target can run.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional

import numpy as np
from llvmlite import ir

from ...ir import Node
from ...ops import qmath
from .activations import VECTOR_ACTIVATIONS, activate
from .codegen import F32, I8, CodePaths, KernelBuilder

I16 = ir.IntType(16)
I32 = ir.IntType(32)

PATHS = ("vnni512", "vnni256", "pmaddwd512", "pmaddwd256", "portable")
_RUNS = {  # what a target of each kind can also run
    "vnni512": set(PATHS), "vnni256": {"vnni256", "pmaddwd256", "portable"},
    "pmaddwd512": {"pmaddwd512", "pmaddwd256", "portable"}, "pmaddwd256": {"pmaddwd256", "portable"},
    "portable": {"portable"},
}
PATH_SWITCH = CodePaths("int8", PATHS, _RUNS.__getitem__)
forced_path = PATH_SWITCH.forced
"""``with forced_path("pmaddwd256"):`` emits every int8 kernel on that path (tests only)."""


def path_name(target) -> str:
    """The path the int8 kernels take on ``target`` (or the forced one)."""
    kind, bits = target.int8_path()
    natural = f"{kind}{bits}" if kind != "portable" else "portable"
    return PATH_SWITCH.choose(natural, f"CPU '{target.cpu}'")


def choose_path(k: KernelBuilder) -> "DotPath":
    target = k.target
    name = path_name(target)
    if name.startswith("vnni"):
        return VnniPath(int(name[4:]) // 32)
    if name.startswith("pmaddwd"):
        return PmaddwdPath(int(name[7:]) // 32)
    return PortablePath(max(4, target.int8_path()[1] // 32))


# -- vector memory helpers ---------------------------------------------------------------------
def vec_load(k: KernelBuilder, ptr: ir.Value, offset, vtype: ir.VectorType) -> ir.Value:
    vptr = k.b.bitcast(k.b.gep(ptr, [k.i64(offset)], inbounds=True), vtype.as_pointer())
    return k.b.load(vptr, align=1)


def vec_store(k: KernelBuilder, value: ir.Value, ptr: ir.Value, offset) -> None:
    vptr = k.b.bitcast(k.b.gep(ptr, [k.i64(offset)], inbounds=True), value.type.as_pointer())
    k.b.store(value, vptr, align=1)


def word_load(k: KernelBuilder, ptr: ir.Value, offset) -> ir.Value:
    """An unaligned i32 from ``ptr + offset`` elements."""
    p = k.b.bitcast(k.b.gep(ptr, [k.i64(offset)], inbounds=True), I32.as_pointer())
    return k.b.load(p, align=1)


def splat_i32(k: KernelBuilder, word: ir.Value, lanes: int) -> ir.Value:
    return k.splat(word, lanes)


def declare(k: KernelBuilder, name: str, ret: ir.Type, args: list) -> ir.Function:
    fn = k.module.globals.get(name)
    return fn if fn is not None else ir.Function(k.module, ir.FunctionType(ret, args), name)


@lru_cache(maxsize=None)
def vpdpbusd_operand(lanes: int) -> ir.Type:
    """LLVM 22 declares ``vpdpbusd`` on ``<4n x i8>`` (older LLVMs on ``<n x i32>``, which 22
    still upgrades): the type the parser keeps as it is."""
    import llvmlite.binding as llvm
    from .target import initialize

    initialize()
    name = f"llvm.x86.avx512.vpdpbusd.{lanes * 32}"
    text = f"declare <{lanes} x i32> @{name}(<{lanes} x i32>, <{4 * lanes} x i8>, <{4 * lanes} x i8>)"
    try:
        kept = f"<{4 * lanes} x i8>" in str(llvm.parse_assembly(text))
    except RuntimeError:
        kept = False
    return ir.VectorType(I8, 4 * lanes) if kept else ir.VectorType(I32, lanes)


# -- the paths ---------------------------------------------------------------------------------
class DotPath:
    """One instruction set's dot product of a group of four u8 activations with int8 weights."""

    name = ""
    x_type: ir.Type = I8            # element type of staged activations
    x_dtype = np.uint8
    w_dtype = np.int8
    weight_registers = 1            # vector registers one block's weights of a group take

    def __init__(self, lanes: int):
        self.lanes = lanes
        self.acc_type = ir.VectorType(I32, lanes)

    def pack(self, wg: np.ndarray) -> np.ndarray:
        """``[OC, G, 4]`` int8 -> ``[G, OC/lanes, 4 * lanes]`` (output channels zero-padded)."""
        oc, groups, _ = wg.shape
        blocks = -(-oc // self.lanes)
        padded = np.zeros((blocks * self.lanes, groups, 4), np.int8)
        padded[:oc] = wg
        w = padded.reshape(blocks, self.lanes, groups, 4).transpose(2, 0, 1, 3)   # [G, B, L, 4]
        return np.ascontiguousarray(self.arrange(w)).reshape(groups, blocks, 4 * self.lanes)

    def arrange(self, w: np.ndarray) -> np.ndarray:
        """``[G, B, L, 4]`` int8 -> this path's order of one block's ``4 * L`` weights."""
        return w

    def stage_value(self, k: KernelBuilder, byte: ir.Value) -> ir.Value:
        """A u8 activation (i8) as the staged element."""
        return byte

    def load_x(self, k: KernelBuilder, ptr: ir.Value, offset: ir.Value):
        raise NotImplementedError

    def load_w(self, k: KernelBuilder, ptr: ir.Value, offset: ir.Value):
        raise NotImplementedError

    def dot(self, k: KernelBuilder, acc: ir.Value, x, w) -> ir.Value:
        raise NotImplementedError


class VnniPath(DotPath):
    def __init__(self, lanes: int):
        super().__init__(lanes)
        self.name = f"vnni{lanes * 32}"
        self.operand = vpdpbusd_operand(lanes)

    def load_x(self, k, ptr, offset):
        return k.b.bitcast(splat_i32(k, word_load(k, ptr, offset), self.lanes), self.operand)

    def load_w(self, k, ptr, offset):
        return vec_load(k, ptr, offset, self.operand)

    def dot(self, k, acc, x, w):
        fn = declare(k, f"llvm.x86.avx512.vpdpbusd.{self.lanes * 32}", self.acc_type,
                     [self.acc_type, self.operand, self.operand])
        return k.b.call(fn, [acc, x, w])


class PmaddwdPath(DotPath):
    x_type = I16
    x_dtype = np.int16
    w_dtype = np.int16
    weight_registers = 2

    def __init__(self, lanes: int):
        super().__init__(lanes)
        self.name = f"pmaddwd{lanes * 32}"
        self.pair = ir.VectorType(I16, 2 * lanes)
        self.intrinsic = "llvm.x86.avx512.pmaddw.d.512" if lanes == 16 else "llvm.x86.avx2.pmadd.wd"

    def arrange(self, w):
        """Per block ``[pair][L][2]`` int16: pair 0 holds values 0 and 1 of each lane."""
        g, b, lanes, _ = w.shape
        return w.reshape(g, b, lanes, 2, 2).transpose(0, 1, 3, 2, 4).astype(np.int16)

    def stage_value(self, k, byte):
        return k.b.zext(byte, I16)

    def load_x(self, k, ptr, offset):
        b = k.b
        return tuple(b.bitcast(splat_i32(k, word_load(k, ptr, b.add(offset, k.i64(2 * p))), self.lanes), self.pair)
                     for p in range(2))

    def load_w(self, k, ptr, offset):
        b = k.b
        return tuple(vec_load(k, ptr, b.add(offset, k.i64(2 * self.lanes * p)), self.pair) for p in range(2))

    def dot(self, k, acc, x, w):
        fn = declare(k, self.intrinsic, self.acc_type, [self.pair, self.pair])
        b = k.b
        return b.add(acc, b.add(b.call(fn, [x[0], w[0]]), b.call(fn, [x[1], w[1]])))


class PortablePath(DotPath):
    weight_registers = 4

    def __init__(self, lanes: int):
        super().__init__(lanes)
        self.name = "portable"
        self.bytes = ir.VectorType(I8, lanes)

    def arrange(self, w):
        """Per block ``[j][L]``: value ``j`` of every lane, contiguous."""
        return w.transpose(0, 1, 3, 2)

    def load_x(self, k, ptr, offset):
        b = k.b
        return tuple(k.splat(b.zext(k.load(ptr, b.add(offset, k.i64(j))), I32), self.lanes) for j in range(4))

    def load_w(self, k, ptr, offset):
        b = k.b
        return tuple(b.sext(vec_load(k, ptr, b.add(offset, k.i64(self.lanes * j)), self.bytes), self.acc_type)
                     for j in range(4))

    def dot(self, k, acc, x, w):
        b = k.b
        for j in range(4):
            acc = b.add(acc, b.mul(x[j], w[j]))
        return acc


# -- requantization ----------------------------------------------------------------------------
class Epilogue:
    """From int32 accumulators to the output: requantized uint8, or float (with activation).

    ``init`` holds, per output channel, ``bias[o] - x_zp * sum_k w[o, k]`` (the activation
    zero point folded in at compile time), zero-padded to whole vectors. Channel ``o`` sits
    at ``slots[o]`` of the padded arrangement (``o`` itself unless a kernel, such as a
    grouped convolution, pads inside it).

    A QConv's residual (``residual`` not None) is one more term in ``finish``: the kernel
    passes the uint8 residual of the output vector's lanes, and ``finish`` adds
    ``fp32(r - r_zp) * R`` to ``fp32(acc) * factor`` before rounding (``ops/quant.py``).
    """

    def __init__(self, k: KernelBuilder, node: Node, prefix: str, w_int: np.ndarray, bias: Optional[np.ndarray],
                 lanes: int, slots: Optional[np.ndarray] = None, padded: Optional[int] = None):
        self.k, self.lanes = k, lanes
        out_channels = w_int.shape[0]
        if slots is None:
            slots, padded = np.arange(out_channels), -(-out_channels // lanes) * lanes
        x_scale, x_zp = node.attr(f"{prefix}_scale"), int(node.attr(f"{prefix}_zero_point"))
        w_scales = np.asarray(node.attr("w_scales" if prefix == "x" else "b_scales"), np.float32)
        w_scales = np.broadcast_to(w_scales, (out_channels,))
        init = np.zeros(padded, np.int64)
        init[slots] = -x_zp * w_int.reshape(out_channels, -1).astype(np.int64).sum(axis=1)
        if bias is not None:
            init[slots] += bias.astype(np.int64)
        self.init = k.constant(f"{node.name}.acc_init", init.astype(np.int32))
        self.uint8 = node.attr("output_dtype", "uint8") == "uint8"
        factor = np.ones(padded, np.float32)
        if self.uint8:
            factor[slots] = qmath.multipliers(x_scale, w_scales, node.attr("y_scale"))
            self.zero_point = float(node.attr("y_zero_point"))
            self.lo, self.hi = float(node.attr("y_min", 0)), float(node.attr("y_max", 255))
        else:
            factor[slots] = qmath.input_scales(x_scale, w_scales)
        self.factor = k.constant(f"{node.name}.requant", factor)
        self.residual = node.inputs[3] if node.op == "QConv" and len(node.inputs) > 3 else None
        if self.residual is not None:
            self.r_zero_point = int(node.attr("r_zero_point"))
            self.r_factor = float(qmath.residual_factor(node.attr("r_scale"),
                                                        node.attr("y_scale") if self.uint8 else None))
        self.factor_values = factor[slots]
        self.activation = node.attr("activation", "")
        self.activation_params = list(node.attr("activation_params", []))
        self.element = I8 if self.uint8 else F32
        self.out_type = ir.VectorType(self.element, lanes)
        self.acc_type = ir.VectorType(I32, lanes)

    def initial(self, block: ir.Value) -> ir.Value:
        """The accumulator's starting vector for channel block ``block``."""
        k = self.k
        return vec_load(k, self.init, k.b.mul(block, k.i64(self.lanes)), ir.VectorType(I32, self.lanes))

    def finish(self, acc: ir.Value, block: ir.Value, residual: Optional[ir.Value] = None) -> ir.Value:
        """The output vector of accumulators ``acc`` (channel block ``block``); ``residual``: the
        residual's ``<lanes x i8>`` at the same outputs (a QConv with a residual)."""
        k, b = self.k, self.k.b
        vf = ir.VectorType(F32, self.lanes)
        factor = vec_load(k, self.factor, b.mul(block, k.i64(self.lanes)), vf)
        y = b.fmul(b.sitofp(acc, vf), factor)
        if residual is not None:   # + fp32(r - r_zp) * R, each step rounded (no fused multiply-add)
            r = b.sub(b.zext(residual, self.acc_type), ir.Constant(self.acc_type, [self.r_zero_point] * self.lanes))
            y = b.fadd(y, b.fmul(b.sitofp(r, vf), k.const_like(y, self.r_factor)))
        if not self.uint8:
            return self.activate(y)
        y = b.fadd(k.intrinsic("llvm.rint", y), k.const_like(y, self.zero_point))
        y = b.select(b.fcmp_ordered("<", y, k.const_like(y, self.lo)), k.const_like(y, self.lo), y)
        y = b.select(b.fcmp_ordered(">", y, k.const_like(y, self.hi)), k.const_like(y, self.hi), y)
        return b.trunc(b.fptosi(y, ir.VectorType(I32, self.lanes)), self.out_type)

    def activate(self, y: ir.Value) -> ir.Value:
        k = self.k
        if not self.activation:
            return y
        if self.activation in VECTOR_ACTIVATIONS:
            return activate(k, self.activation, y, self.activation_params)
        for lane in range(self.lanes):   # a libm function: one lane at a time
            index = ir.Constant(I32, lane)
            value = activate(k, self.activation, k.b.extract_element(y, index), self.activation_params)
            y = k.b.insert_element(y, value, index)
        return y

    def vmax(self, a: ir.Value, b: ir.Value) -> ir.Value:
        """The max-pooling reduction on output vectors (unsigned bytes, or floats with NaN kept)."""
        if self.uint8:
            return self.k.intrinsic("llvm.umax", a, b)
        return self.k.max(a, b)

    def lowest(self) -> ir.Constant:
        if self.uint8:
            return ir.Constant(self.out_type, [0] * self.lanes)
        return ir.Constant(self.out_type, [float("-inf")] * self.lanes)
