"""Side-by-side timing of lepton and ONNX Runtime on the same model, inputs and machine.

Two ways to time, chosen per row (``isolate``): in this process, the engines' timing rounds
alternating (``interleaved_medians``); or each engine in its own worker process
(``WorkerPool``), blocks of runs alternating between the processes
while the others wait on a pipe. Either way a change in machine load affects every engine,
and each figure is the median of the rounds (blocks). With several threads the processes
matter: after each run ONNX Runtime's intra-op workers spin (unless
``session.intra_op.allow_spinning`` is 0) and, in one process, keep a core from lepton's
sleeping libgomp workers; in its own process, each engine has the machine to itself while it
is timed (a worker reports a block only once its threads have stopped using the CPU).
GFLOP/s count two operations per multiply-add of the model's convolutions and
dense layers; the peak is measured here by a generated kernel of independent
vector FMAs on one core.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from .errors import LeptonError

ISOLATE_MODES = ("auto", "always", "never")
ROUNDS = 9


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
    isolated: bool = False   # timed with each engine in its own process

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


def interleaved_medians(fns: Sequence[Callable[[], object]], min_time: float, repeats: int = ROUNDS) -> list[float]:
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


def ort_session(model_bytes: bytes, threads: int, spinning: Optional[bool] = None):
    """A CPU session with ``threads`` intra-op threads; ``spinning``: ONNX Runtime's
    ``session.intra_op.allow_spinning`` (None: ORT's default, which spins)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def isolated(mode: str, threads: int) -> bool:
    """Whether rows with ``threads`` are timed in worker processes: ``always``, ``never``, or
    ``auto`` (with more than one thread, where one engine's spinning threads would take cores
    from the other's in a shared process)."""
    if mode not in ISOLATE_MODES:
        raise LeptonError(f"isolate must be one of {', '.join(ISOLATE_MODES)}, not {mode!r}")
    return mode == "always" or (mode == "auto" and threads > 1)


# -- timing each engine in its own process --------------------------------------------------------
START_TIMEOUT = 300.0   # seconds for a worker to start: spawn, imports, loading the model
REPLY_TIMEOUT = 120.0   # seconds for a warm-up, plus 20 times the expected length of a block


def lepton_runner(artifact: str):
    """Worker factory: a saved lepton artifact's ``run``."""
    from .runtime import load

    model = load(artifact)
    return lambda feed: model.run(None, feed)


def ort_runner(onnx_path: str, threads: int, spinning: Optional[bool] = None):
    """Worker factory: ``run`` of an ONNX Runtime session (``ort_session``) on an ONNX file."""
    with open(onnx_path, "rb") as f:
        session = ort_session(f.read(), threads, spinning)
    return lambda feed: session.run(None, feed)


def _process_cpu_seconds() -> float:
    """CPU time of all this process's threads (per-thread schedstat: ns; else os.times: ticks)."""
    total = 0
    try:
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass   # a thread that just ended
        return total / 1e9
    except OSError:
        times = os.times()
        return times.user + times.system


def _wait_until_idle(window: float = 0.005, longest: float = 1.0) -> bool:
    """Wait until this process's threads use under a tenth of a core over ``window`` seconds
    (ONNX Runtime's workers spin for some tens of milliseconds after a run); False if they
    still do after ``longest`` seconds."""
    deadline = time.monotonic() + longest
    before = _process_cpu_seconds()
    while True:
        time.sleep(window)
        now = _process_cpu_seconds()
        if now - before < 0.1 * window:
            return True
        if time.monotonic() > deadline:
            return False
        before = now


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _worker(conn, factory: Callable, args: tuple) -> None:
    """A worker process: build the run function, then answer the parent's messages. Between
    them it blocks in ``recv``: idle, using no CPU. It ends on "stop", on an error (reported
    as one line) or when the parent has gone."""
    try:
        try:
            run = factory(*args)
            if not callable(run):
                raise TypeError(f"{getattr(factory, '__name__', factory)} returned {type(run).__name__}, "
                                f"not a run function")
        except BaseException as exc:   # reported to the parent, which raises it
            conn.send(("error", _one_line(exc)))
            return
        conn.send(("ok", None))
        feed = None
        while True:
            message, value = conn.recv()
            try:
                if message == "feed":
                    feed = value
                    run(feed)   # warm up: first-touch page faults, lazy loading
                    start = time.perf_counter()
                    run(feed)
                    reply = time.perf_counter() - start
                    _wait_until_idle()
                elif message == "time":
                    run(feed)   # untimed: wakes the threads, refills the caches after the other engines
                    start = time.perf_counter()
                    for _ in range(value):
                        run(feed)
                    reply = ((time.perf_counter() - start) / value, _wait_until_idle())
                else:
                    return
            except Exception as exc:
                conn.send(("error", _one_line(exc)))
                return
            conn.send(("ok", reply))
    except (EOFError, OSError):
        return   # the parent has gone


# The worker's first lines: no ``__main__`` of the parent is imported (unlike multiprocessing's
# 'spawn'), so any script may time in worker processes; sys.path comes from the parent.
_BOOT = """import signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C: the parent stops its workers
from multiprocessing.connection import Connection
conn = Connection(int(sys.argv[1]))
sys.path[:] = conn.recv()
try:
    worker, factory, args = conn.recv()
except Exception as exc:
    conn.send(("error", f"{type(exc).__name__}: {exc}"))
    sys.exit(1)
worker(conn, factory, args)
"""


class WorkerPool:
    """Each engine in its own process (a fresh Python, ``subprocess``), timed one at a time.

    ``engines``: (label, factory, args); ``factory(*args)`` runs in the worker and returns a
    function of a feed dict (``lepton_runner``, ``ort_runner``); factory and args must pickle
    (a function of an importable module). Messages go over a socket pair
    (``multiprocessing.connection``). A worker that fails, exits or does not answer in time
    raises LeptonError (one line) and ends every worker."""

    def __init__(self, engines: Sequence[tuple[str, Callable, tuple]], start_timeout: float = START_TIMEOUT,
                 reply_timeout: float = REPLY_TIMEOUT):
        import socket
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        self.labels = [label for label, _, _ in engines]
        self.reply_timeout = reply_timeout
        self.busy = []   # labels of engines whose threads still used the CPU after a block
        self._workers = []
        try:
            for label, factory, args in engines:
                ours, theirs = socket.socketpair()
                try:
                    process = subprocess.Popen([sys.executable, "-c", _BOOT, str(theirs.fileno())],
                                               pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
                finally:
                    theirs.close()   # the worker's end stays open only in the worker: EOF when it ends
                conn = Connection(ours.detach())
                self._workers.append((conn, process))
                conn.send(list(sys.path))
                conn.send((_worker, factory, tuple(args)))
            for i in range(len(self._workers)):   # start them all, then wait: imports overlap
                self._receive(i, start_timeout, "start")
        except BaseException:
            self.close()
            raise

    def _receive(self, i: int, timeout: float, what: str):
        conn, process = self._workers[i]
        label = self.labels[i]
        ready = conn.poll(timeout)   # data, or end of file when the worker has ended
        try:
            if ready:
                status, value = conn.recv()
                if status == "ok":
                    return value
                raise LeptonError(f"bench: the {label} worker process failed: {value}")
        except (EOFError, OSError):
            pass
        if ready:
            code = self._exit_code(process)
            how = f"signal {-code}" if code is not None and code < 0 else f"code {code}"
            raise LeptonError(f"bench: the {label} worker process exited ({how}) during {what}")
        process.kill()   # stuck: close() would wait for it
        raise LeptonError(f"bench: the {label} worker process did not answer within {timeout:.0f} s ({what})")

    @staticmethod
    def _exit_code(process) -> Optional[int]:
        import subprocess

        try:
            return process.wait(5.0)
        except subprocess.TimeoutExpired:
            return None

    def _ask(self, i: int, message: str, value, timeout: float, what: str):
        try:
            self._workers[i][0].send((message, value))
            return self._receive(i, timeout, what)
        except (OSError, ValueError) as exc:   # BrokenPipeError: the worker has gone
            raise LeptonError(f"bench: the {self.labels[i]} worker process exited (code "
                              f"{self._exit_code(self._workers[i][1])}) during {what}: {_one_line(exc)}") from None
        except BaseException:
            self.close()
            raise

    def medians(self, feed: Mapping[str, np.ndarray], min_time: float, repeats: int = ROUNDS) -> list[float]:
        """Median seconds per call of each engine on ``feed``, over ``repeats`` blocks each of about
        ``min_time / repeats / engines`` seconds, the engines' blocks alternating."""
        counts = []
        for i in range(len(self._workers)):
            once = max(self._ask(i, "feed", dict(feed), self.reply_timeout, "warm-up"), 1e-7)
            counts.append((max(1, int(min_time / repeats / len(self._workers) / once)), once))
        rounds: list[list[float]] = [[] for _ in self._workers]
        for _ in range(repeats):
            for i, (count, once) in enumerate(counts):
                per_call, idle = self._ask(i, "time", count, self.reply_timeout + 20 * (count + 1) * once,
                                           "timing")
                rounds[i].append(per_call)
                if not idle and self.labels[i] not in self.busy:
                    self.busy.append(self.labels[i])
        return [float(np.median(r)) for r in rounds]

    def close(self) -> None:
        import subprocess

        for conn, _ in self._workers:
            try:
                conn.send(("stop", None))
            except (OSError, ValueError):
                pass
            conn.close()
        for _, process in self._workers:
            try:
                process.wait(5.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._workers = []

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _InProcess:
    """The engines' run functions in this process, rounds interleaved (``interleaved_medians``)."""

    busy: Sequence[str] = ()

    def __init__(self, runs: Sequence[Callable[[dict], object]]):
        self.runs = list(runs)

    def medians(self, feed, min_time: float) -> list[float]:
        return interleaved_medians([lambda r=r: r(feed) for r in self.runs], min_time)

    def __enter__(self) -> "_InProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.runs = []


def _timer(engines: Sequence[tuple[str, object]], threads: int, isolate: bool, ort_spinning: Optional[bool],
           folder: str):
    """A timer (``medians(feed, min_time)``) of ``engines``: (label, a compiled lepton model or the
    bytes of an ONNX model, run by ONNX Runtime with ``threads`` threads), in this process or, with
    ``isolate``, each in its own (the models saved to ``folder`` for the workers to load)."""
    if not isolate:
        return _InProcess([(lambda f, s=ort_session(e, threads, ort_spinning): s.run(None, f))
                           if isinstance(e, bytes) else (lambda f, m=e: m.run(None, f)) for _, e in engines])
    specs = []
    for n, (label, engine) in enumerate(engines):
        if isinstance(engine, bytes):
            path = os.path.join(folder, f"{n}-t{threads}.onnx")
            with open(path, "wb") as f:
                f.write(engine)
            specs.append((label, ort_runner, (path, threads, ort_spinning)))
        else:
            path = os.path.join(folder, f"{n}-t{threads}.lepton")
            engine.save(path)
            specs.append((label, lepton_runner, (path,)))
    return WorkerPool(specs)


def timing_note(rows: Sequence, ort_spinning: Optional[bool] = None, busy: Sequence[str] = ()) -> str:
    """The line above a table that says how its rows were timed."""
    groups: dict[bool, list[int]] = {}
    for r in rows:
        if r.threads not in groups.setdefault(r.isolated, []):
            groups[r.isolated].append(r.threads)
    how = {False: f"one process, the engines' rounds interleaved (medians of {ROUNDS} rounds)",
           True: f"each engine in its own process, blocks alternating while the others wait idle "
                 f"(medians of {ROUNDS} blocks)"}
    parts = []
    for iso in (False, True):
        if iso in groups:
            label = "all rows" if len(groups) == 1 else "threads " + ",".join(map(str, groups[iso]))
            parts.append(f"{label}: {how[iso]}")
    spin = {None: "on (its default)", True: "on", False: "off"}[ort_spinning]
    text = f"timing: {'; '.join(parts)}; ONNX Runtime intra-op spinning {spin}"
    if busy:
        text += f"; still using the CPU between blocks: {', '.join(busy)}"
    return text


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
            threads: Sequence[int], min_time: float = 0.5, peak: float = 0.0, isolate: str = "auto",
            ort_spinning: Optional[bool] = None, busy: Optional[list] = None) -> list[BenchRow]:
    """lepton (``compiled_for_threads(t)``) and ONNX Runtime timed at each thread count and batch;
    rows with ``isolated(isolate, t)`` in worker processes. ``busy``, if given, collects the labels
    of engines whose threads kept using the CPU between their blocks."""
    from .frontends.onnx import import_model
    from .passes import optimize_graph

    macs = macs_per_image(optimize_graph(import_model(model_bytes), 0))
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lepton-bench-") as folder:
        for t in threads:
            model = compiled_for_threads(t)
            iso = isolated(isolate, t)
            with _timer([("lepton", model), ("ONNX Runtime", model_bytes)], t, iso, ort_spinning, folder) as timer:
                for batch in batches:
                    feed = random_feed(model, batch, rng)
                    ours, theirs = timer.medians(feed, min_time)
                    rows.append(BenchRow(batch, t, ours * 1e6, theirs * 1e6, macs, peak, iso))
                if busy is not None:
                    busy.extend(b for b in timer.busy if b not in busy)
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
    isolated: bool = False   # timed with each engine in its own process

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


def compare_int8(contenders: Callable[[int], Sequence[tuple[str, object]]], inputs: Sequence,
                 batches: Sequence[int], threads: Sequence[int], min_time: float = 0.5, isolate: str = "auto",
                 ort_spinning: Optional[bool] = None, busy: Optional[list] = None) -> list[Int8Row]:
    """``contenders(threads)`` -> (label, engine) of lepton fp32, lepton int8, ORT fp32, ORT int8: a
    compiled lepton model, or the bytes of an ONNX model for ONNX Runtime; timed on random inputs of
    the model's signature (``inputs``, TensorInfo) as ``compare`` does."""
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    shapes = SimpleNamespace(inputs=inputs)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lepton-bench-") as folder:
        for t in threads:
            iso = isolated(isolate, t)
            with _timer(contenders(t), t, iso, ort_spinning, folder) as timer:
                for batch in batches:
                    feed = random_feed(shapes, batch, rng)
                    times = timer.medians(feed, min_time)
                    rows.append(Int8Row(batch, t, *[s * 1e6 for s in times], isolated=iso))
                if busy is not None:
                    busy.extend(b for b in timer.busy if b not in busy)
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
                   source: str = "", isolate: str = "auto", ort_spinning: Optional[bool] = None) -> str:
    """lepton int8 (``quantize="int8"``, ``method``) timed next to lepton fp32, ONNX Runtime fp32 and
    ONNX Runtime int8 (``ort_quantize_static``), both quantized on the same ``calibration`` data (a
    dict of arrays, one per input; ``source`` says where it came from); with labelled ``test`` data
    (feed, labels), the top-1 accuracy of each on it. Rows timed as ``compare`` times them
    (``isolate``, ``ort_spinning``). Returns the text: a heading, the timing line, the table, notes."""
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
        latest.update({"lepton fp32": fp32.run, "int8": int8, "lepton int8": int8.run})
        return [("lepton fp32", fp32), ("lepton int8", int8), ("ORT fp32", model_bytes), ("ORT int8", ort_int8)]

    busy: list = []
    rows = compare_int8(contenders, inputs, batches, threads, min_time, isolate, ort_spinning, busy)
    samples = next(iter(calibration.values())).shape[0]
    lines = [f"int8 (calibration: {samples} samples{' of ' + source if source else ''}; lepton: "
             f"{latest['int8'].options['calibration_method']}; ORT: quantize_static QDQ per-channel MinMax)",
             timing_note(rows, ort_spinning, busy), format_int8_table(rows)]
    if test is not None:
        feed, labels = test
        latest.update({"ORT fp32": ort_session(model_bytes, 1).run, "ORT int8": ort_session(ort_int8, 1).run})
        preds = {k: latest[k](None, dict(feed))[0].argmax(1) for k in ("lepton fp32", "lepton int8", "ORT fp32",
                                                                      "ORT int8")}
        agree = 100 * float(np.mean(preds["lepton int8"] == preds["ORT int8"]))
        lines.append(f"top-1 on the {len(labels)} test images: " +
                     ", ".join(f"{k} {100 * float(np.mean(v == labels)):.1f}%" for k, v in preds.items()) +
                     f"; lepton int8 agrees with ORT int8 on {agree:.1f}% of the images")
    lines.append("ratios above 1 mean lepton int8 is faster; the same inputs for all four.")
    return "\n".join(lines)
