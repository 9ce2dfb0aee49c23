"""Side-by-side timing of lepton and ONNX Runtime on the same model, inputs and machine.

Both run in this process on the same arrays; their timing rounds alternate, so a
change in machine load affects both; each figure is the median of the rounds.
GFLOP/s count two operations per multiply-add of the model's convolutions and
dense layers; the peak is measured here by a generated kernel of independent
vector FMAs on one core.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import numpy as np


def median_seconds(fn: Callable[[], object], min_time: float = 0.3, repeats: int = 7) -> float:
    """Median over ``repeats`` rounds of the mean time of ``fn``; each round lasts ~min_time/repeats."""
    fn()  # warm up (first-run page faults, lazy loading)
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    per_round = max(1, int(min_time / repeats / once))
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(per_round):
            fn()
        rounds.append((time.perf_counter() - start) / per_round)
    return float(np.median(rounds))


@dataclass(frozen=True)
class BenchRow:
    batch: int
    threads: int
    lepton_call_us: float
    ort_call_us: float
    macs_per_image: int
    peak_gflops: float   # one core

    @property
    def lepton_us(self) -> float:
        return self.lepton_call_us / self.batch

    @property
    def ort_us(self) -> float:
        return self.ort_call_us / self.batch

    @property
    def ratio(self) -> float:
        """ONNX Runtime time / lepton time: above 1 means lepton is faster."""
        return self.ort_call_us / self.lepton_call_us

    def gflops(self, call_us: float) -> float:
        return 2 * self.macs_per_image * self.batch / (call_us * 1e3)

    def peak_share(self, call_us: float) -> float:
        """Share of the measured FMA peak of the cores in use."""
        return self.gflops(call_us) / (self.peak_gflops * self.threads) if self.peak_gflops else 0.0


def interleaved_medians(fns: Sequence[Callable[[], object]], min_time: float, repeats: int = 9) -> list[float]:
    """Median seconds per call of each function, their rounds alternating."""
    per_round = []
    for fn in fns:
        fn()  # warm up: first-touch page faults, lazy loading
        start = time.perf_counter()
        fn()
        per_round.append(max(1, int(min_time / repeats / len(fns) / max(time.perf_counter() - start, 1e-7))))
    rounds: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, count, out in zip(fns, per_round, rounds):
            start = time.perf_counter()
            for _ in range(count):
                fn()
            out.append((time.perf_counter() - start) / count)
    return [float(np.median(r)) for r in rounds]


def ort_session(model_bytes: bytes, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def random_feed(model, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feed = {}
    for info in model.inputs:
        shape = tuple(batch if isinstance(d, str) else d for d in info.shape)
        feed[info.name] = rng.random(shape).astype(info.dtype)
    return feed


def macs_per_image(graph) -> int:
    """Multiply-adds of the convolutions and dense layers for one batch item."""
    from .ir import eval_dim
    from .ops.fused import conv_output_type

    def size(shape) -> list[int]:
        symbols = {d for d in shape if isinstance(d, str)}
        return [eval_dim(d, {s: 1 for part in symbols for s in part.split("*") if not s.isdigit()})
                for d in shape]

    total = 0
    for node in graph.nodes:
        if node.op in ("Conv", "FusedConv"):
            out = size(conv_output_type(node).shape if node.op == "FusedConv" else node.outputs[0].type.shape)
            w = node.inputs[1].type.shape
            total += int(np.prod(out, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
        elif node.op in ("Gemm", "FusedGemm", "MatMul"):
            out = size(node.outputs[0].type.shape)
            a = node.inputs[0].type.shape
            inner = a[0] if node.attr("transA", 0) else a[-1]
            total += int(np.prod(out, dtype=np.int64)) * int(inner)
    return total


def fma_peak_gflops(seconds: float = 0.2) -> float:
    """This core's float32 FMA throughput, measured with a generated kernel of independent
    vector FMAs as wide as the host's registers."""
    import ctypes

    from llvmlite import ir

    from .backends.llvm.compiler import LoadedCode, compile_ir
    from .backends.llvm.target import host_target

    target = host_target()
    lanes = max(1, target.vector_bits() // 32)
    chains = 16 if target.vector_registers() >= 32 else 10
    vec = ir.VectorType(ir.FloatType(), lanes)
    module = ir.Module("peak")
    module.triple = target.triple
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [ir.IntType(64), vec.as_pointer()]), "lepton_main")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    fma = ir.Function(module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fma.v{lanes}f32")
    seed = b.load(fn.args[1], align=4)
    loop, done = fn.append_basic_block("loop"), fn.append_basic_block("done")
    entry = b.block
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(ir.IntType(64))
    i.add_incoming(ir.Constant(ir.IntType(64), 0), entry)
    accs = []
    for _ in range(chains):
        phi = b.phi(vec)
        phi.add_incoming(seed, entry)
        accs.append(phi)
    new = [b.call(fma, [acc, seed, seed]) for acc in accs]
    for phi, value in zip(accs, new):
        phi.add_incoming(value, loop)
    following = b.add(i, ir.Constant(ir.IntType(64), 1))
    i.add_incoming(following, loop)
    b.cbranch(b.icmp_signed("<", following, fn.args[0]), loop, done)
    b.position_at_end(done)
    total = new[0]
    for value in new[1:]:
        total = b.fadd(total, value)
    b.store(total, fn.args[1], align=4)
    b.ret_void()
    code = LoadedCode(compile_ir(str(module), target).obj, target)
    run = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p)(code.address)
    buffer = np.full(lanes, 0.5, np.float32)
    iterations = 1_000_000
    run(1000, buffer.ctypes.data)
    start = time.perf_counter()
    run(iterations, buffer.ctypes.data)
    elapsed = time.perf_counter() - start
    iterations = max(iterations, int(iterations * seconds / max(elapsed, 1e-9)))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        run(iterations, buffer.ctypes.data)
        best = min(best, time.perf_counter() - start)
    return 2 * lanes * chains * iterations / best / 1e9


def compare(model_bytes: bytes, compiled_for_threads: Callable[[int], object], batches: Sequence[int],
            threads: Sequence[int], min_time: float = 0.5, peak: float = 0.0) -> list[BenchRow]:
    from .frontends.onnx import import_model
    from .passes import optimize_graph

    macs = macs_per_image(optimize_graph(import_model(model_bytes), 0))
    rng = np.random.default_rng(0)
    rows = []
    for t in threads:
        model = compiled_for_threads(t)
        session = ort_session(model_bytes, t)
        for batch in batches:
            feed = random_feed(model, batch, rng)
            ours, theirs = interleaved_medians([lambda: model.run(None, feed), lambda: session.run(None, feed)],
                                               min_time)
            rows.append(BenchRow(batch, t, ours * 1e6, theirs * 1e6, macs, peak))
    return rows


def format_table(rows: Sequence[BenchRow]) -> str:
    lines = ["| batch | threads | lepton µs/call | lepton µs/image | lepton GFLOP/s | lepton % peak "
             "| ONNX Runtime µs/call | ONNX Runtime µs/image | ONNX Runtime GFLOP/s | ORT/lepton |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.batch} | {r.threads} | {r.lepton_call_us:.1f} | {r.lepton_us:.1f} "
                     f"| {r.gflops(r.lepton_call_us):.0f} | {100 * r.peak_share(r.lepton_call_us):.0f}% "
                     f"| {r.ort_call_us:.1f} | {r.ort_us:.1f} | {r.gflops(r.ort_call_us):.0f} | {r.ratio:.2f}x |")
    return "\n".join(lines)


# -- int8: lepton int8 next to lepton fp32, ONNX Runtime fp32 and ONNX Runtime int8 ---------------
def ort_quantize_static(model_bytes: bytes, calibration: dict[str, np.ndarray]) -> bytes:
    """The model quantized by ONNX Runtime's own tool: ``quantize_static``, QDQ format, per-channel
    int8 weights, uint8 activations, MinMax calibration on ``calibration`` (all samples at once).
    A model below opset 13 is first converted to opset 13 (``onnx.version_converter``): per-channel
    DequantizeLinear (its ``axis``) needs it, and ``quantize_static`` does not upgrade it."""
    import os
    import tempfile

    import onnx

    proto = onnx.load_from_string(model_bytes)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 13:
        from onnx import version_converter
        model_bytes = version_converter.convert_version(proto, 13).SerializeToString()

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            n = next(iter(calibration.values())).shape[0]
            self.feeds = iter([{k: v[i:i + 1] for k, v in calibration.items()} for i in range(n)])

        def get_next(self):
            return next(self.feeds, None)

    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)   # quantize_static's advice to pre-process the model, on every call
    with tempfile.TemporaryDirectory() as folder:
        source, target = os.path.join(folder, "fp32.onnx"), os.path.join(folder, "int8.onnx")
        with open(source, "wb") as f:
            f.write(model_bytes)
        try:
            quantize_static(source, target, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        with open(target, "rb") as f:
            return f.read()


@dataclass(frozen=True)
class Int8Row:
    """µs per call of the four contenders at one batch size and thread count."""

    batch: int
    threads: int
    lepton_fp32_us: float
    lepton_int8_us: float
    ort_fp32_us: float
    ort_int8_us: float

    @property
    def vs_ort_fp32(self) -> float:
        """ONNX Runtime fp32 time / lepton int8 time (above 1: lepton int8 is faster)."""
        return self.ort_fp32_us / self.lepton_int8_us

    @property
    def vs_ort_int8(self) -> float:
        return self.ort_int8_us / self.lepton_int8_us

    @property
    def vs_lepton_fp32(self) -> float:
        return self.lepton_fp32_us / self.lepton_int8_us


def compare_int8(contenders: Callable[[int], Sequence[Callable[[dict], object]]], inputs: Sequence,
                 batches: Sequence[int], threads: Sequence[int], min_time: float = 0.5) -> list[Int8Row]:
    """``contenders(threads)`` -> run functions (lepton fp32, lepton int8, ORT fp32, ORT int8), each
    taking a feed dict; timed on random inputs of the model's signature (``inputs``, TensorInfo),
    their rounds interleaved."""
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    shapes = SimpleNamespace(inputs=inputs)
    rows = []
    for t in threads:
        runs = contenders(t)
        for batch in batches:
            feed = random_feed(shapes, batch, rng)
            times = interleaved_medians([lambda r=r: r(feed) for r in runs], min_time)
            rows.append(Int8Row(batch, t, *[s * 1e6 for s in times]))
    return rows


def format_int8_table(rows: Sequence[Int8Row]) -> str:
    lines = ["| batch | threads | lepton fp32 µs/image | lepton int8 µs/image | ORT fp32 µs/image "
             "| ORT int8 µs/image | ORT fp32 / lepton int8 | ORT int8 / lepton int8 | lepton fp32 / int8 |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        per = [v / r.batch for v in (r.lepton_fp32_us, r.lepton_int8_us, r.ort_fp32_us, r.ort_int8_us)]
        lines.append(f"| {r.batch} | {r.threads} | " + " | ".join(f"{v:.1f}" for v in per) +
                     f" | {r.vs_ort_fp32:.2f}x | {r.vs_ort_int8:.2f}x | {r.vs_lepton_fp32:.2f}x |")
    return "\n".join(lines)


def int8_benchmark(model_bytes: bytes, calibration: Mapping[str, np.ndarray], batches: Sequence[int],
                   threads: Sequence[int], min_time: float = 0.5, method: Optional[str] = None,
                   test: Optional[tuple[Mapping[str, np.ndarray], np.ndarray]] = None,
                   source: str = "") -> str:
    """lepton int8 (``quantize="int8"``, ``method``) timed next to lepton fp32, ONNX Runtime fp32 and
    ONNX Runtime int8 (``ort_quantize_static``), both quantized on the same ``calibration`` data (a
    dict of arrays, one per input; ``source`` says where it came from); with labelled ``test`` data
    (feed, labels), the top-1 accuracy of each on it. Returns the text: a heading, the table, notes."""
    from .api import compile
    from .frontends.onnx import import_model
    from .runtime.model import TensorInfo

    inputs = [TensorInfo(v.name, v.type.dtype, v.type.shape) for v in import_model(model_bytes).inputs]
    ort_int8 = ort_quantize_static(model_bytes, dict(calibration))
    latest: dict = {}

    def contenders(t: int):
        fp32 = compile(model_bytes, threads=t)
        # calibrate once: further thread counts reuse the first model's calibration table
        table = latest["int8"].options["calibration"] if "int8" in latest else calibration
        int8 = compile(model_bytes, quantize="int8", calibration=table, calibration_method=method, threads=t)
        s32, s8 = ort_session(model_bytes, t), ort_session(ort_int8, t)
        latest.update({"lepton fp32": fp32.run, "int8": int8, "lepton int8": int8.run, "ORT fp32": s32.run,
                       "ORT int8": s8.run})
        return [lambda f: fp32.run(None, f), lambda f: int8.run(None, f),
                lambda f: s32.run(None, f), lambda f: s8.run(None, f)]

    rows = compare_int8(contenders, inputs, batches, threads, min_time)
    samples = next(iter(calibration.values())).shape[0]
    lines = [f"int8 (calibration: {samples} samples{' of ' + source if source else ''}; lepton: "
             f"{latest['int8'].options['calibration_method']}; ORT: quantize_static QDQ per-channel MinMax)",
             format_int8_table(rows)]
    if test is not None:
        feed, labels = test
        preds = {k: latest[k](None, dict(feed))[0].argmax(1) for k in ("lepton fp32", "lepton int8", "ORT fp32",
                                                                      "ORT int8")}
        agree = 100 * float(np.mean(preds["lepton int8"] == preds["ORT int8"]))
        lines.append(f"top-1 on the {len(labels)} test images: " +
                     ", ".join(f"{k} {100 * float(np.mean(v == labels)):.1f}%" for k, v in preds.items()) +
                     f"; lepton int8 agrees with ORT int8 on {agree:.1f}% of the images")
    lines.append("ratios above 1 mean lepton int8 is faster; medians of 9 interleaved rounds, same process, "
                 "same inputs.")
    return "\n".join(lines)
