"""The ``lepton`` command line. Errors are one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import numpy as np

from .errors import InputError, LeptonError

EMITS = ("llvm", "asm", "obj", "onnx", "so", "header", "ptx")


def _opt_level(text: str) -> int:
    if text not in ("0", "1", "2", "3"):
        raise argparse.ArgumentTypeError(f"-O takes 0, 1, 2 or 3, not {text!r}")
    return int(text)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit 2), like every other error of the command."""

    def error(self, message: str):
        self.exit(2, f"lepton: error: {message} (see '{self.prog} --help')\n")


def _providers(text: str):
    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected 'auto' or comma-separated execution providers, got {text!r}")
    return "auto" if names == ["auto"] else names


def _ort_arguments(parser) -> None:
    parser.add_argument("--providers", type=_providers, metavar="A,B|auto",
                        help="--target ort: execution providers in priority order (default: auto)")
    parser.add_argument("--strict", action="store_true",
                        help="--target ort: a missing provider is an error, no fallback to the CPU")
    parser.add_argument("--ort-optimization", choices=("disabled", "basic", "extended", "all"),
                        help="--target ort: ONNX Runtime's own graph optimizations (default: basic)")


def _ort_kwargs(args) -> dict:
    """--providers/--strict/--ort-optimization as compile() keywords (given only where set, so that
    target cpu refuses them)."""
    kwargs = {"providers": args.providers, "ort_optimization": args.ort_optimization}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return {**kwargs, "strict": True} if args.strict else kwargs


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="lepton", description="Compile and run ONNX models natively.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    c = sub.add_parser("compile", help="compile an ONNX model to an artifact (or emit IR/asm/object)")
    c.add_argument("model", help="ONNX file")
    c.add_argument("-o", "--output", help="artifact (or emitted file) to write")
    c.add_argument("-O", dest="opt_level", type=_opt_level, default=3, metavar="LEVEL", help="0-3 (default 3)")
    c.add_argument("--target", default="cpu", choices=("cpu", "ort", "cuda"),
                   help="cpu: native code (default); ort: optimized ONNX run by ONNX Runtime; "
                   "cuda: PTX for NVIDIA GPUs (with --emit ptx|llvm)")
    c.add_argument("--gpu", help="--target cuda: GPU architecture, e.g. sm_90 (default: sm_90)")
    _ort_arguments(c)
    c.add_argument("--mcpu", help="CPU to generate code for (default: this host's)")
    c.add_argument("--threads", type=int, help="threads at run time (default: all cores)")
    c.add_argument("--emit", choices=EMITS, help="write LLVM IR, assembly, an object file, the optimized ONNX, "
                   "a shared library with a C API (so) or its C header (header)")
    c.add_argument("--name", help="--emit so|header|obj: prefix of the C symbols (default: the model file's stem)")
    c.add_argument("--weights", choices=("embedded", "external"),
                   help="--emit so: weights inside the library (default) or in a .bin file beside it")
    c.add_argument("--print-ir-after-all", action="store_true", help="print the IR after each pass")
    c.add_argument("--verify", action="store_true", help="run the IR verifier after each pass")
    c.add_argument("--report", action="store_true", help="print the fusion report: where each fusion pattern "
                   "fired and why candidates did not fuse (alone, without -o or --emit: only the report); with "
                   "--quantize: the per-layer error of int8 against fp32 on the calibration data")
    from .quantize.cli import add_arguments as quantize_arguments
    quantize_arguments(c)

    r = sub.add_parser("run", help="run a compiled artifact on .npy inputs")
    r.add_argument("artifact")
    r.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy", help="one per model input")
    r.add_argument("--output", help=".npz file to write the outputs to (default: print a summary)")

    b = sub.add_parser("bench", help="time a model side by side with ONNX Runtime")
    b.add_argument("model", nargs="?", help="ONNX file (default: the bundled MNIST CNN)")
    b.add_argument("--batch", type=_int_list, default=[1, 64])
    b.add_argument("--threads", type=_int_list, default=[1])
    b.add_argument("--min-time", type=float, default=0.5, help="seconds of timing per measurement")
    b.add_argument("--target", default="cpu", choices=("cpu", "ort"), help="what lepton runs the model with")
    b.add_argument("--isolate", choices=("auto", "always", "never"), default="auto",
                   help="time each engine in its own process, blocks alternating while the other waits idle: "
                   "always, never (one process, rounds interleaved), or auto (rows with more than one thread; "
                   "the default)")
    b.add_argument("--ort-spinning", choices=("on", "off"), help="ONNX Runtime's session.intra_op.allow_spinning: "
                   "whether its intra-op threads spin after a run (default: ORT's own, on)")
    _ort_arguments(b)
    from .quantize.calibration import METHODS
    b.add_argument("--quantize", choices=("int8",), help="time lepton int8 next to lepton fp32, ONNX Runtime fp32 "
                   "and ONNX Runtime int8 (quantize_static, QDQ per-channel, on the same calibration data)")
    b.add_argument("--calibration", metavar="DATA.npz", help="--quantize: calibration samples, one array per model "
                   "input (default for the bundled model: its 200 bundled training images)")
    b.add_argument("--calibration-method", choices=METHODS, help="--quantize: lepton's range method (default: "
                   "minmax; ONNX Runtime's quantizer uses MinMax)")

    sub.add_parser("demo", help="compile the bundled MNIST CNN and compare it with ONNX Runtime")
    _tool_parsers(sub)
    _serve_parser(sub)
    return parser


def _tool_parsers(sub) -> None:
    """The tools (lepton_compiler/tools): inspect, profile, bisect, graph."""
    i = sub.add_parser("inspect", help="layers, multiply-adds, fusion plan, memory plan and kernels of a model")
    i.add_argument("model", help="ONNX file")
    i.add_argument("-O", dest="opt_level", type=_opt_level, default=3, metavar="LEVEL", help="0-3 (default 3)")
    i.add_argument("--mcpu", help="CPU to plan the kernels for (default: this host's)")
    i.add_argument("--json", action="store_true", help="print the inspection as JSON")

    p = sub.add_parser("profile", help="time per compiled kernel next to ONNX Runtime's per-op profile")
    p.add_argument("model", help="ONNX file")
    p.add_argument("--batch", type=int, default=1, help="batch size of the random inputs (default 1)")
    p.add_argument("--threads", type=int, default=1, help="threads for lepton and ONNX Runtime (default 1)")
    p.add_argument("-O", dest="opt_level", type=_opt_level, default=3, metavar="LEVEL", help="0-3 (default 3)")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="inputs to profile with (default: random, --batch images)")
    p.add_argument("--repeats", type=int, help="timed runs (default: about 0.3 s worth on each side)")
    p.add_argument("--ort-optimization", choices=("disabled", "basic", "extended", "all"), default="all",
                   help="ONNX Runtime's graph optimizations for its profile (default: all)")

    b = sub.add_parser("bisect", help="the first pass and layer where lepton's outputs leave ONNX Runtime's",
                       description="Find the first stage (import, then each pass of the -O level) after which "
                       "lepton's values leave ONNX Runtime's beyond --tolerance, in the reference interpreter or "
                       "in the native code, then the first layer, and print the IR around it. Exit status 0: "
                       "lepton agrees; 1: a difference was found. For a model quantized by lepton, "
                       "'lepton compile --quantize int8 --report' gives the per-layer error instead.")
    b.add_argument("model", help="ONNX file")
    b.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="one per model input (default: random inputs, --batch images)")
    b.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest allowed |lepton - ort| / (1 + |ort|) (default 1e-4)")
    b.add_argument("-O", dest="opt_level", type=_opt_level, default=3, metavar="LEVEL", help="0-3 (default 3)")
    b.add_argument("--batch", type=int, default=1, help="batch size of random inputs (default 1)")
    b.add_argument("--mcpu", help="CPU to generate code for (default: this host's)")

    g = sub.add_parser("graph", help="draw the graph before and after optimization (Graphviz)")
    g.add_argument("model", help="ONNX file")
    g.add_argument("-o", "--output", required=True, help="graph.svg, graph.png, graph.html (need Graphviz 'dot') "
                   "or graph.dot (the Graphviz source)")
    g.add_argument("-O", dest="opt_level", type=_opt_level, default=3, metavar="LEVEL", help="0-3 (default 3)")


def _serve_parser(sub) -> None:
    """lepton serve: the model over HTTP on Ray Serve (lepton_compiler/ray/serve.py)."""
    s = sub.add_parser("serve", help="serve an artifact over HTTP with Ray Serve (dynamic batching)",
                       description="Serve a compiled artifact over HTTP with Ray Serve until interrupted: POST / "
                       "with JSON {\"inputs\": {NAME: nested list}} or a .npy body, GET /health, GET /stats. "
                       "Connects to --address, else $RAY_ADDRESS, else starts a local Ray cluster.")
    s.add_argument("artifact", help=".lepton artifact")
    s.add_argument("--replicas", type=int, default=1, help="replicas of the model (default 1)")
    s.add_argument("--max-batch-size", type=int, default=16, help="most requests run as one batch (default 16)")
    s.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="longest wait for a batch to fill after its first request (default 5)")
    s.add_argument("--threads", type=int, default=1, help="threads (and CPUs) per replica (default 1)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a new local one)")
    s.add_argument("--name", default="lepton", help="Serve application name (default lepton)")


def _print_ir_after_pass(p, graph, seconds) -> None:
    print(f"// -----// IR after {p.name} ({seconds * 1e3:.2f} ms) //----- //")
    print(graph)


def cmd_compile(args) -> int:
    from . import api

    after_pass = _print_ir_after_pass if args.print_ir_after_all else None
    from .quantize import cli as quantize_cli
    if quantize_cli.requested(args):
        return quantize_cli.compile_command(args, after_pass, _write, _print_summary)
    if args.report:
        from .tools.report import fusion_report
        print(fusion_report(args.model, args.opt_level), file=sys.stderr if args.emit and not args.output else sys.stdout)
        if not args.output and not args.emit:
            return 0
    if args.target == "cuda" or args.emit == "ptx" or args.gpu is not None:
        from .backends.nvptx.compiler import cli_compile as cuda_compile
        return cuda_compile(args, after_pass, _write)
    if args.emit in ("so", "header") or args.name is not None or args.weights is not None:
        from .export.clib import cli_compile
        return cli_compile(args, after_pass)
    if args.emit == "onnx":
        graph = api.optimize(args.model, args.opt_level, verify=args.verify, after_pass=after_pass)
        _write(args.output, graph.to_onnx().SerializeToString(), binary=True, what="--emit onnx")
        return 0
    if args.target == "ort" and args.emit:
        raise LeptonError(f"--emit {args.emit} applies to --target cpu (--emit onnx writes the optimized ONNX)")
    model = api.compile(args.model, target=args.target, opt_level=args.opt_level, threads=args.threads,
                        mcpu=args.mcpu, verify=args.verify, after_pass=after_pass, **_ort_kwargs(args))
    if args.target == "ort":
        if not args.output:
            raise LeptonError("compile needs -o OUT.lepton (or --emit)")
        model.save(args.output)
        print(f"wrote {args.output} ({os.path.getsize(args.output):,} bytes) for onnxruntime on "
              f"{', '.join(model.providers)}")
        print(f"{len(model.summary['nodes'])} lepton nodes, {model.summary['onnx_nodes']} in the exported ONNX; "
              f"ONNX Runtime graph optimization: {model.settings.optimization}")
        return 0
    if args.emit == "llvm":
        _write(args.output, model.llvm_ir, binary=False, what="--emit llvm")
    elif args.emit == "asm":
        _write(args.output, model.assembly(), binary=False, what="--emit asm")
    elif args.emit == "obj":
        _write(args.output, model.native.obj, binary=True, what="--emit obj")
    else:
        if not args.output:
            raise LeptonError("compile needs -o OUT.lepton (or --emit)")
        model.save(args.output)
        print(f"wrote {args.output} ({os.path.getsize(args.output):,} bytes) for {model.target.cpu}")
    _print_summary(model.summary, sys.stdout if not args.emit else sys.stderr)
    return 0


def _print_summary(summary: dict, out) -> None:
    kernels = summary.get("kernels", [])
    (per_image, fixed), (per_image0, fixed0) = summary["workspace"], summary["workspace_unshared"]
    print(f"{len(kernels)} kernels; workspace {per_image:,} bytes per image + {fixed:,} "
          f"(without buffer reuse: {per_image0:,} + {fixed0:,})", file=out)


def _write(path: Optional[str], data, binary: bool, what: str) -> None:
    if path is None or path == "-":
        if binary:
            raise LeptonError(f"{what} writes binary data: give -o FILE")
        sys.stdout.write(data)
        return
    try:
        with open(path, "wb" if binary else "w") as f:
            f.write(data)
    except OSError as exc:
        raise LeptonError(f"cannot write '{path}': {exc.strerror or exc}") from None


def _load_inputs(specs: Sequence[str]) -> dict[str, np.ndarray]:
    feed = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--input takes NAME=FILE.npy, got {spec!r}")
        try:
            feed[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise InputError(f"cannot read input '{name}' from '{path}': {exc}") from None
        if not isinstance(feed[name], np.ndarray):
            raise InputError(f"'{path}' holds several arrays; give one .npy file per input")
    return feed


def cmd_run(args) -> int:
    from .runtime import load

    model = load(args.artifact)
    outputs = model.run(None, _load_inputs(args.input))
    names = [o.name for o in model.outputs]
    if args.output:
        try:
            with open(args.output, "wb") as f:  # np.savez would append ".npz" to a bare path
                np.savez(f, **dict(zip(names, outputs)))
        except OSError as exc:
            raise LeptonError(f"cannot write '{args.output}': {exc.strerror or exc}") from None
        print(f"wrote {args.output}: {', '.join(names)}")
    else:
        for name, value in zip(names, outputs):
            print(f"{name}: {value.dtype}{list(value.shape)}")
            print(np.array2string(value, threshold=20, edgeitems=3, precision=6))
    return 0


def cmd_bench(args) -> int:
    from . import api
    from .backends.llvm.target import host_target
    from .bench import compare, fma_peak_gflops, format_table, timing_note
    from .demo import bundled_model_path
    from .frontends.onnx import load_onnx

    path = args.model or bundled_model_path()
    model_bytes = load_onnx(path).SerializeToString()
    if args.quantize or args.calibration or args.calibration_method:
        return _bench_int8(args, path, model_bytes)
    peak = fma_peak_gflops()
    busy: list = []
    rows = compare(model_bytes, lambda t: api.compile(model_bytes, target=args.target, threads=t,
                                                      **_ort_kwargs(args)),
                   args.batch, args.threads, args.min_time, peak, args.isolate, _ort_spinning(args), busy)
    print(f"model: {path} ({rows[0].macs_per_image:,} multiply-adds per image)")
    print(f"cpu: {host_target().cpu}, measured FMA peak {peak:.0f} GFLOP/s per core")
    print(timing_note(rows, _ort_spinning(args), busy))
    print(format_table(rows))
    print("ORT/lepton > 1 means lepton is faster; same inputs; % peak is of the cores in use.")
    return 0


def _ort_spinning(args) -> Optional[bool]:
    """bench --ort-spinning: True, False, or None for ONNX Runtime's default."""
    return None if args.ort_spinning is None else args.ort_spinning == "on"


def _bench_int8(args, path: str, model_bytes: bytes) -> int:
    """``lepton bench --quantize int8``: the four-way table of ``bench.int8_benchmark``."""
    from .backends.llvm.target import host_target
    from .bench import int8_benchmark, macs_per_image
    from .demo import bundled_model_path, calibration_images, mnist_test_images
    from .frontends.onnx import import_model
    from .passes import optimize_graph
    from .quantize.calibration import input_specs, load_calibration

    if not args.quantize:
        raise LeptonError("--calibration and --calibration-method apply to bench --quantize int8")
    if args.target != "cpu" or _ort_kwargs(args):
        raise LeptonError("bench --quantize applies to --target cpu (lepton's int8 kernels)")
    graph = import_model(model_bytes)
    bundled = os.path.realpath(path) == os.path.realpath(bundled_model_path())
    if args.calibration:
        calibration, source = load_calibration(args.calibration, input_specs(graph)), args.calibration
    elif bundled:
        calibration, source = {graph.inputs[0].name: calibration_images()[0]}, "the bundled training images"
    else:
        raise LeptonError(f"bench --quantize int8 needs --calibration DATA.npz (one array per input of "
                          f"{os.path.basename(path)}); only the bundled MNIST CNN has default calibration data")
    x, labels = mnist_test_images()
    test = ({graph.inputs[0].name: x}, labels) if bundled else None
    text = int8_benchmark(model_bytes, calibration, args.batch, args.threads, args.min_time,
                          args.calibration_method, test, source, args.isolate, _ort_spinning(args))
    print(f"model: {path} ({macs_per_image(optimize_graph(graph.copy(), 0)):,} multiply-adds per image)")
    print(f"cpu: {host_target().cpu}")
    print(text)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    run_demo(sys.stdout)
    return 0


def cmd_inspect(args) -> int:
    from .tools.inspect import inspect_model
    report = inspect_model(args.model, args.opt_level, mcpu=args.mcpu)
    print(report.to_json() if args.json else report.format())
    return 0


def _positive(value: int, what: str) -> None:
    if value < 1:
        raise LeptonError(f"{what} must be a positive integer, not {value}")


def cmd_profile(args) -> int:
    from .tools.profile import profile_model
    _positive(args.batch, "--batch")
    _positive(args.threads, "--threads")
    if args.repeats is not None:
        _positive(args.repeats, "--repeats")
    feed = _load_inputs(args.input) if args.input else None
    print(profile_model(args.model, batch=args.batch, threads=args.threads, opt_level=args.opt_level, feed=feed,
                        repeats=args.repeats, ort_optimization=args.ort_optimization).format())
    return 0


def cmd_bisect(args) -> int:
    from .tools.bisect import bisect_model
    from .tools.profile import make_feed
    from .frontends.onnx import import_model
    _positive(args.batch, "--batch")
    if args.input:
        feed = _load_inputs(args.input)
    else:
        feed = make_feed(import_model(args.model).inputs, args.batch)
        print(f"inputs: random, batch {args.batch} (give --input NAME=FILE.npy to bisect on your own)")
    result = bisect_model(args.model, feed, opt_level=args.opt_level, tolerance=args.tolerance, mcpu=args.mcpu)
    print(result.format())
    return 1 if result.found else 0


def cmd_graph(args) -> int:
    from .tools.graph import draw_graph
    fmt = draw_graph(args.model, args.output, args.opt_level)
    print(f"wrote {args.output} ({fmt}, {os.path.getsize(args.output):,} bytes)")
    return 0


COMMANDS = {"compile": cmd_compile, "run": cmd_run, "bench": cmd_bench, "demo": cmd_demo,
            "inspect": cmd_inspect, "profile": cmd_profile, "bisect": cmd_bisect, "graph": cmd_graph}


def cmd_serve(args) -> int:
    import time

    from .ray import serve
    from .ray._common import ArtifactBytes, require

    artifact = ArtifactBytes.of(args.artifact)   # a missing file is refused before Ray starts
    ray_serve = require("ray.serve")
    url = serve(artifact, replicas=args.replicas, max_batch_size=args.max_batch_size,
                batch_wait_ms=args.batch_wait_ms, threads=args.threads, host=args.host, port=args.port,
                name=args.name, address=args.address)
    _stop_on_signals()
    print(f"serving {args.artifact} at {url} (POST {url}, GET {url}health, GET {url}stats); Ctrl-C stops",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        ray_serve.delete(args.name)   # on a shared cluster the application would outlive this command
        print("stopped", flush=True)
    return 0


COMMANDS["serve"] = cmd_serve


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (what service managers send) both stop ``lepton serve`` cleanly, also
    where the shell started it with SIGINT ignored (a background job of a script)."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except LeptonError as exc:
        print(f"lepton: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lepton: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("lepton: error: out of memory", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `lepton inspect m.onnx | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
