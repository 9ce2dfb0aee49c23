"""Deploy without Python: a model as a self-contained shared library with a C header.

``build_library`` compiles a model with its entry point renamed ``{name}_main``,
generates the C API around it (``templates.WRAPPER``; the header is
``templates.HEADER``), and links the three parts with the system C compiler:

* the model's object code (LLVM, as for the Python runtime);
* the weights: embedded as a hidden LLVM global ``{name}_lepton_weights`` in an
  object of its own, or, with ``weights="external"``, written to one ``.bin``
  file beside the library (64-byte header: magic ``LEPTONWT``, format version,
  CRC-32 and size of the payload, all little-endian; then the payload) that
  ``{name}_create`` reads and checks;
* the wrapper, compiled with ``-fvisibility=hidden`` so that only the API is
  exported (every other symbol is hidden or internal), and linked with
  ``-Wl,--no-undefined`` so that the library provably needs nothing but libc,
  libm and, when threads are used, libgomp (``-fopenmp``).

The Python runtime (``lc.compile``) needs no C toolchain; only this module does.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from typing import Callable, Optional

import llvmlite.binding as llvm
import numpy as np

from .. import __version__
from ..backends.llvm.compiler import _lock
from ..backends.llvm.target import Target, initialize, target_machine
from ..errors import LeptonError
from ..frontends.onnx import load_onnx
from ..ir import dim_factors
from ..runtime.artifact import _pack_weights
from ..runtime.model import CompiledModel, TensorInfo
from .templates import DTYPE_CODES, HEADER, WRAPPER, common_api

WEIGHT_MODES = ("embedded", "external")
WEIGHTS_MAGIC = b"LEPTONWT"
WEIGHTS_VERSION = 1
WEIGHTS_HEADER = 64
API_FUNCTIONS = ("create", "create_with_weights", "free", "set_max_batch", "max_batch", "set_threads", "threads",
                 "run", "check_batch", "num_inputs", "num_outputs", "input_info", "output_info", "input_size",
                 "output_size")
"""The functions a library exports, each as ``{name}_{function}``; nothing else is exported."""

# Features LLVM names the same way as GCC's and Clang's __builtin_cpu_supports.
_CPU_CHECKS = ("sse", "sse2", "sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "avx", "avx2", "fma", "bmi", "bmi2",
               "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


# -- names ---------------------------------------------------------------------------------------

def check_name(name: str) -> str:
    """``name`` if it can prefix C identifiers (``{name}_create``), else a ``LeptonError``."""
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > 64:
        raise LeptonError(f"--name {name!r} cannot prefix C identifiers: use letters, digits and '_' "
                          "(not starting with a digit), at most 64 characters")
    if name.startswith("__") or name.lower().startswith("lepton"):
        raise LeptonError(f"--name {name!r} is reserved (names starting with '__' or 'lepton' "
                          "would clash with the C library or the shared lepton API)")
    return name


def default_name(model) -> str:
    """The symbol prefix when none is given: the model file's stem as a C identifier ('model' otherwise)."""
    if isinstance(model, (str, os.PathLike)):
        stem = os.path.splitext(os.path.basename(os.fspath(model)))[0]
        stem = re.sub(r"[^A-Za-z0-9_]", "_", stem).strip("_")
        if stem and stem[0].isdigit():
            stem = "m_" + stem
        if stem and not stem.lower().startswith("lepton"):
            return stem[:64]
    return "model"


# -- C text helpers ------------------------------------------------------------------------------

def _c_string(text: str) -> str:
    """A C string literal body: UTF-8, every byte outside [A-Za-z0-9 _./-] as an octal escape."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        out.append(ch if (ch.isascii() and (ch.isalnum() or ch in " _./-:")) else f"\\{byte:03o}")
    return "".join(out)


def _comment(text: str) -> str:
    """Text safe inside a /* */ comment, on one line."""
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text.replace("*/", "* /").replace("/*", "/ *")


def _describe(info: TensorInfo) -> str:
    return _comment(f"{info.name}: {info.dtype}[{', '.join(map(str, info.shape))}]")


def _bytes_per_item(info: TensorInfo) -> tuple[int, bool]:
    size, batched = np.dtype(info.dtype).itemsize, False
    for d in info.shape:
        symbols, factor = dim_factors(d)
        size *= factor
        batched = batched or bool(symbols)
    return size, batched


# -- the sources ---------------------------------------------------------------------------------

@dataclass
class LibrarySpec:
    """Everything the header and the wrapper are generated from."""

    name: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    batch_symbol: Optional[str]
    model_desc: str = ""
    workspace: tuple[int, int] = (0, 0)
    const_offsets: list[int] = field(default_factory=list)
    weights_size: int = 0
    weights_crc32: int = 0
    batch_rules: list = field(default_factory=list)
    threads: Optional[int] = None     # the compile option: None = every core
    with_omp: bool = False
    external: bool = False
    weights_file: str = ""
    target: Optional[Target] = None


def header_source(spec: LibrarySpec) -> str:
    name = spec.name
    if spec.batch_symbol:
        batch = f"'{spec.batch_symbol}' is the dynamic dim: a run's batch sets it"
    else:
        batch = "the model has no dynamic dim: every run has batch 1"
    if spec.batch_rules:
        rules = "; ".join(f"{_comment(reason)}: one of {', '.join(map(str, allowed))}"
                          for allowed, reason in spec.batch_rules)
        rules = f"This model: {rules}."
    elif spec.batch_symbol:
        rules = "This model allows every batch size >= 1."
    else:
        rules = "This model allows batch 1 only (it has no dynamic dim)."
    threads = f"{spec.threads}" if spec.threads else "every core the process may run on"
    return HEADER.substitute(
        name=name, NAME=name.upper(), version=__version__, model=_comment(spec.model_desc or name),
        inputs="; ".join(_describe(i) for i in spec.inputs) or "none",
        outputs="; ".join(_describe(o) for o in spec.outputs) or "none",
        batch=_comment(batch), common=common_api(), num_inputs=len(spec.inputs), num_outputs=len(spec.outputs),
        default_threads=threads, batch_rules=rules)


def wrapper_source(spec: LibrarySpec, header_file: str) -> str:
    tables, infos, sizes, batched = [], [], [], []
    for index, info in enumerate(spec.inputs + spec.outputs):
        shape = [-1 if isinstance(d, str) else int(d) for d in info.shape]
        dims = [f'"{_c_string(d)}"' if isinstance(d, str) else "NULL" for d in info.shape]
        tables.append(f"static const int64_t shape{index}[{len(shape) + 1}] = {{{', '.join(map(str, shape + [0]))}}};")
        tables.append(f"static const char *const dims{index}[{len(dims) + 1}] = {{{', '.join(dims + ['NULL'])}}};")
        infos.append(f'    {{"{_c_string(info.name)}", {DTYPE_CODES[info.dtype]}, {np.dtype(info.dtype).itemsize}, '
                     f"{len(shape)}, shape{index}, dims{index}}},")
        size, is_batched = _bytes_per_item(info)
        sizes.append(f"INT64_C({size})")
        batched.append("1" if is_batched else "0")
    infos.append("    {NULL, 0, 0, 0, NULL, NULL}")
    rule_tables, rules = [], []
    for index, (allowed, reason) in enumerate(spec.batch_rules):
        rule_tables.append(f"/* {_comment(reason)} */")
        rule_tables.append(f"static const int64_t rule{index}[] = {{{', '.join(str(int(a)) for a in allowed)}}};")
        rules.append(f"{{rule{index}, {len(allowed)}}}")
    rules.append("{NULL, 0}")
    checks = []
    if spec.target is not None and spec.target.triple.split("-")[0] in ("x86_64", "i386", "i686"):
        checks = [f'    if (!__builtin_cpu_supports("{f}")) return 0;' for f in _CPU_CHECKS
                  if f in spec.target.features]
    return WRAPPER.substitute(
        name=spec.name, version=__version__, header=_c_string(header_file), external=int(spec.external),
        num_inputs=len(spec.inputs), num_outputs=len(spec.outputs), num_consts=len(spec.const_offsets),
        ws_per_batch=int(spec.workspace[0]), ws_fixed=int(spec.workspace[1]),
        batched=int(spec.batch_symbol is not None), default_threads=int(spec.threads or 0),
        weights_size=spec.weights_size, weights_crc32=f"0x{spec.weights_crc32:08X}",
        const_offsets=", ".join(f"UINT64_C({o})" for o in spec.const_offsets + [0]),
        tensor_tables="\n".join(tables), tensor_infos="\n".join(infos),
        tensor_bytes=", ".join(sizes + ["0"]), tensor_batched=", ".join(batched + ["0"]),
        rule_tables="\n".join(rule_tables), num_rules=len(spec.batch_rules), rules=", ".join(rules),
        with_omp=int(spec.with_omp), cpu_checks="\n".join(checks), weights_file_c=_c_string(spec.weights_file))


def _llvm_bytes(data: bytes) -> str:
    table = [chr(b) if 32 <= b < 127 and chr(b) not in '"\\' else f"\\{b:02X}" for b in range(256)]
    return "".join(map(table.__getitem__, data))


def weights_object(blob: bytes, symbol: str, target: Target) -> bytes:
    """An object file defining ``const uint8_t symbol[]`` (hidden, 64-byte aligned) holding ``blob``."""
    data = blob or b"\0"
    text = (f'target triple = "{target.triple}"\n'
            f'@{symbol} = hidden constant [{len(data)} x i8] c"{_llvm_bytes(data)}", align 64\n')
    initialize()
    with _lock:
        module = llvm.parse_assembly(text)
        module.verify()
        return target_machine(target).emit_object(module)


def weights_file_bytes(blob: bytes) -> bytes:
    """The external weights file: the 64-byte header, then ``blob``."""
    header = WEIGHTS_MAGIC + WEIGHTS_VERSION.to_bytes(4, "little") + zlib.crc32(blob).to_bytes(4, "little") \
        + len(blob).to_bytes(8, "little")
    return header + b"\0" * (WEIGHTS_HEADER - len(header)) + blob


# -- compiling -----------------------------------------------------------------------------------

def compile_model(model, *, name: str, opt_level: int = 3, threads: Optional[int] = None,
                  mcpu: Optional[str] = None, verify: bool = False,
                  after_pass: Optional[Callable] = None) -> CompiledModel:
    """``lc.compile(model)`` for the cpu target, with the entry point named ``{name}_main``."""
    from ..api import compile_graph, optimize

    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise LeptonError(f"threads must be a positive int or None, not {threads!r}")
    proto = load_onnx(model)
    graph = optimize(proto, opt_level, verify=verify, after_pass=after_pass)
    return compile_graph(graph, proto.SerializeToString(), mcpu=mcpu, entry=f"{check_name(name)}_main",
                         options={"opt_level": opt_level, "threads": threads, "mcpu": mcpu})


def _model_desc(model, graph_name: str) -> str:
    if isinstance(model, (str, os.PathLike)):
        return f"{os.path.basename(os.fspath(model))} (graph '{graph_name}')"
    return f"graph '{graph_name}'"


def _spec(compiled: CompiledModel, name: str, model_desc: str, threads: Optional[int], **more) -> LibrarySpec:
    return LibrarySpec(
        name=name, inputs=list(compiled.inputs), outputs=list(compiled.outputs), batch_symbol=compiled.batch_symbol,
        model_desc=model_desc, workspace=tuple(compiled.workspace),
        batch_rules=[(tuple(a), r) for a, r in compiled.summary.get("batch_rules", [])], threads=threads,
        target=compiled.target, **more)


def header_for(model, name: Optional[str] = None, opt_level: int = 3, threads: Optional[int] = None,
               mcpu: Optional[str] = None) -> str:
    """The text of the C header of ``model``'s library (``lepton compile --emit header``): the same
    text ``build_library`` compiles the library with. Needs no C compiler."""
    name = check_name(name or default_name(model))
    proto = load_onnx(model)
    compiled = compile_model(proto, name=name, opt_level=opt_level, threads=threads, mcpu=mcpu)
    return header_source(_spec(compiled, name, _model_desc(model, proto.graph.name), threads))


@dataclass
class Library:
    """What ``build_library`` wrote."""

    path: str
    name: str
    weights_path: Optional[str]     # the .bin with external weights
    threads: bool                   # linked with a parallel runtime
    model: CompiledModel
    header: str
    compiler_output: str            # the C compiler's warnings (empty when there were none)


def build_library(model, output, *, name: Optional[str] = None, weights: str = "embedded", opt_level: int = 3,
                  threads: Optional[int] = None, mcpu: Optional[str] = None, verify: bool = False,
                  after_pass: Optional[Callable] = None) -> Library:
    """Compile ``model`` into the shared library ``output`` (and ``output``'s stem + ``.bin`` beside it
    with ``weights="external"``)."""
    if weights not in WEIGHT_MODES:
        raise LeptonError(f"weights must be one of {', '.join(WEIGHT_MODES)}, not {weights!r}")
    if sys.platform.startswith("win"):
        raise LeptonError("--emit so builds ELF (Linux) or Mach-O (macOS) shared libraries; not on Windows")
    name = check_name(name or default_name(model))
    output = os.fspath(output)
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        raise LeptonError(f"cannot write '{output}': no such directory '{directory}'")
    cc = find_c_compiler()           # before the (slower) compile: a missing toolchain is reported at once
    proto = load_onnx(model)
    compiled = compile_model(proto, name=name, opt_level=opt_level, threads=threads, mcpu=mcpu, verify=verify,
                             after_pass=after_pass)
    blob, table = _pack_weights(compiled.constants)
    external = weights == "external"
    weights_path = os.path.splitext(output)[0] + ".bin" if external else None
    with_omp = threads != 1 and openmp_flags(cc) is not None
    spec = _spec(compiled, name, _model_desc(model, proto.graph.name), threads,
                 const_offsets=[e["offset"] for e in table], weights_size=len(blob), weights_crc32=zlib.crc32(blob),
                 with_omp=with_omp, external=external,
                 weights_file=os.path.basename(weights_path) if external else "")
    header = header_source(spec)
    with tempfile.TemporaryDirectory(prefix="lepton-clib-") as tmp:
        header_file = f"{name}.h"
        files = {header_file: header.encode(), f"{name}_api.c": wrapper_source(spec, header_file).encode(),
                 f"{name}_model.o": compiled.native.obj}
        if not external:
            files[f"{name}_weights.o"] = weights_object(blob, f"{name}_lepton_weights", compiled.target)
        for file, data in files.items():
            with open(os.path.join(tmp, file), "wb") as f:
                f.write(data)
        built = os.path.join(tmp, "lib.so")
        sources = [os.path.join(tmp, f) for f in files if not f.endswith(".h")]
        log = _link(cc, sources, built, os.path.basename(output), with_omp, external, tmp)
        _install(built, output)
    if external:
        _install_bytes(weights_file_bytes(blob), weights_path)
    return Library(output, name, weights_path, with_omp, compiled, header, log)


def _install(built: str, output: str) -> None:
    try:
        shutil.copyfile(built, output + ".tmp")
        os.chmod(output + ".tmp", 0o755)
        os.replace(output + ".tmp", output)
    except OSError as exc:
        raise LeptonError(f"cannot write '{output}': {exc.strerror or exc}") from None


def _install_bytes(data: bytes, path: str) -> None:
    try:
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)
    except OSError as exc:
        raise LeptonError(f"cannot write '{path}': {exc.strerror or exc}") from None


# -- the toolchain -------------------------------------------------------------------------------

def find_c_compiler() -> list[str]:
    """The C compiler: ``$CC`` when set, else the first of cc, gcc, clang on ``PATH``."""
    env = os.environ.get("CC", "").strip()
    if env:
        argv = shlex.split(env)
        found = shutil.which(argv[0])
        if not found:
            raise LeptonError(f"the C compiler named by $CC ({env!r}) was not found; --emit so needs one "
                              "to link the shared library")
        return [found] + argv[1:]
    for candidate in ("cc", "gcc", "clang"):
        found = shutil.which(candidate)
        if found:
            return [found]
    raise LeptonError("--emit so links with the system C compiler and none was found: no cc, gcc or clang on "
                      "PATH (install one, e.g. 'apt-get install gcc', or set CC). --emit obj and --emit header "
                      "need no C compiler, nor does the Python runtime (lc.compile, lepton compile -o M.lepton)")


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LeptonError(f"cannot run the C compiler '{argv[0]}': {exc}") from None


_probes: dict[tuple, Optional[list[str]]] = {}

_OMP_PROBE = """\
extern void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags);
extern int omp_get_thread_num(void);
extern int omp_get_num_threads(void);
void *lepton_probe[3] = {(void *)GOMP_parallel, (void *)omp_get_thread_num, (void *)omp_get_num_threads};
int main(void) { return lepton_probe[0] == 0; }
"""
_DLADDR_PROBE = """\
#define _GNU_SOURCE 1
#include <dlfcn.h>
static const char anchor = 0;
int main(void) { Dl_info info; return dladdr((const void *)&anchor, &info) ? 0 : 1; }
"""


def _probe(cc: list[str], source: str, candidates: list[list[str]]) -> Optional[list[str]]:
    """The first flag list with which ``source`` links into a program, or None."""
    key = (tuple(cc), source)
    if key not in _probes:
        _probes[key] = None
        with tempfile.TemporaryDirectory(prefix="lepton-probe-") as tmp:
            path = os.path.join(tmp, "probe.c")
            with open(path, "w") as f:
                f.write(source)
            for flags in candidates:
                if _run(cc + [path, "-o", os.path.join(tmp, "probe")] + flags).returncode == 0:
                    _probes[key] = flags
                    break
    return _probes[key]


def openmp_flags(cc: list[str]) -> Optional[list[str]]:
    """How to link libgomp's entry points (GOMP_parallel...) with ``cc``, or None when it cannot."""
    return _probe(cc, _OMP_PROBE, [["-fopenmp"], ["-lgomp"]])


def _link(cc: list[str], sources: list[str], output: str, soname: str, with_omp: bool, external: bool,
          include: str) -> str:
    argv = cc + ["-O2", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra", "-I", include]
    if sys.platform == "darwin":
        argv += ["-dynamiclib", "-install_name", f"@rpath/{soname}"]
    else:
        argv += ["-shared", f"-Wl,-soname,{soname}", "-Wl,-z,noexecstack", "-Wl,--no-undefined"]
    argv += ["-o", output] + sources
    if with_omp:
        argv += openmp_flags(cc) or []
    if external:
        argv += _probe(cc, _DLADDR_PROBE, [[], ["-ldl"]]) or []
    argv += ["-lm"]
    proc = _run(argv)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise LeptonError(f"linking the shared library with {cc[0]} failed (exit {proc.returncode}): "
                          + " | ".join(detail[-8:]))
    return (proc.stderr + proc.stdout).strip()


# -- the command line ----------------------------------------------------------------------------

def cli_compile(args, after_pass) -> int:
    """``lepton compile`` with ``--emit so|header`` or ``--name``/``--weights`` (see cli.py)."""
    from ..cli import _print_summary, _write

    if args.target != "cpu":
        raise LeptonError("--emit so, --emit header and --name apply to --target cpu")
    if args.weights and args.emit != "so":
        raise LeptonError("--weights applies to --emit so")
    if args.emit not in ("so", "header", "obj", "llvm", "asm"):
        raise LeptonError("--name applies to --emit so, header, obj, llvm and asm")
    name = check_name(args.name or default_name(args.model))
    if args.emit == "header":
        _write(args.output, header_for(args.model, name, args.opt_level, args.threads, args.mcpu), binary=False,
               what="--emit header")
        return 0
    if args.emit in ("obj", "llvm", "asm"):
        model = compile_model(args.model, name=name, opt_level=args.opt_level, threads=args.threads,
                              mcpu=args.mcpu, verify=args.verify, after_pass=after_pass)
        if args.emit == "obj":
            _write(args.output, model.native.obj, binary=True, what="--emit obj")
        else:
            _write(args.output, model.llvm_ir if args.emit == "llvm" else model.assembly(), binary=False,
                   what=f"--emit {args.emit}")
        _print_summary(model.summary, sys.stderr)
        return 0
    if not args.output:
        raise LeptonError("--emit so needs -o LIBNAME.so")
    lib = build_library(args.model, args.output, name=name, weights=args.weights or "embedded",
                        opt_level=args.opt_level, threads=args.threads, mcpu=args.mcpu, verify=args.verify,
                        after_pass=after_pass)
    weights = (f"weights in {lib.weights_path} ({os.path.getsize(lib.weights_path):,} bytes)" if lib.weights_path
               else "weights embedded")
    print(f"wrote {lib.path} ({os.path.getsize(lib.path):,} bytes) for {lib.model.target.cpu}: "
          f"API {name}_*, {weights}, {'threads through libgomp' if lib.threads else 'single-threaded'}")
    if lib.compiler_output:
        print(lib.compiler_output, file=sys.stderr)
    _print_summary(lib.model.summary, sys.stdout)
    return 0
