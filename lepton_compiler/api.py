"""The public entry points: ``compile``, ``optimize``."""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence


from .backends.llvm.compiler import compile_ir
from .backends.llvm.module import ENTRY, build_module
from .backends.llvm.target import Target, host_target, named_target
from .errors import LeptonError, ResourceError
from .frontends.onnx import ModelSource, import_model, load_onnx
from .ir import Graph
from .passes import PassOptions, optimize_graph, passes_for_level
from .progress import progress
from .runtime.artifact import load as load_artifact
from .runtime.cache import cache_enabled, cache_key, cached
from .runtime.limits import check_initializers, check_plan, parse_size
from .runtime.model import CompiledModel, TensorInfo


def optimize(model: ModelSource, opt_level: int = 3, *, verify: bool = False,
             after_pass: Optional[Callable] = None, keep: Optional[Sequence[str]] = None) -> Graph:
    """Import an ONNX model and run the passes of ``opt_level``; returns the IR graph.

    ``keep``: names of values of the original graph to make extra outputs before the passes run
    (so fusion keeps them; see ``tools/intermediates.py``)."""
    graph = import_model(model)
    if keep:
        from .tools.intermediates import keep_values
        keep_values(graph, keep)
    return optimize_graph(graph, opt_level, PassOptions(verify=verify), after_pass)


def resolve_target(mcpu: Optional[str]) -> Target:
    return host_target() if mcpu is None else named_target(mcpu)


def _safety_net(fn):
    """Every error a user can provoke is raised on purpose as a ``LeptonError`` where it is found;
    anything else escaping ``compile`` is a bug in lepton, reported as such (a ``LeptonError`` that
    says "internal error", with the original chained), and running out of memory is a ``ResourceError``."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LeptonError:
            raise
        except MemoryError as exc:
            raise ResourceError(f"out of memory while compiling the model ({exc or 'MemoryError'}); "
                                "see max_memory=") from exc
        except Exception as exc:
            raise LeptonError(f"internal error: {type(exc).__name__}: {exc} (a bug in lepton; please report it "
                              "with the model)") from exc
    return wrapper


@_safety_net
def compile(model: ModelSource, target: str = "cpu", opt_level: int = 3, quantize: Optional[str] = None,
            calibration=None, providers=None, threads: Optional[int] = None, *, mcpu: Optional[str] = None,
            verify: bool = False, after_pass: Optional[Callable] = None, provider_options=None,
            strict: bool = False, ort_optimization: Optional[str] = None, keep: Optional[Sequence[str]] = None,
            max_memory=None, gpu: Optional[str] = None, calibration_method: Optional[str] = None,
            keep_fp32: Optional[Sequence[str]] = None, max_accuracy_drop: Optional[float] = None, labels=None,
            max_error: Optional[float] = None):
    """Compile an ONNX model (path, bytes or ModelProto).

    ``target="cpu"``: native code for this CPU (or ``mcpu``); returns a ``CompiledModel``.
    ``target="ort"``: the optimized graph as standard ONNX, run by ONNX Runtime with ``providers``
    (a list as onnxruntime takes it, or ``"auto"``/None for the best installed one), ``provider_options``,
    ``strict`` (no fallback) and ``ort_optimization`` (ORT's own graph optimizations, default
    ``"basic"``); returns an ``OrtModel`` (see ``backends/ort.py``).
    ``target="cuda"``: PTX from LLVM's NVPTX target for ``gpu`` (``"sm_90"``; default: the current GPU's),
    run through CuPy; returns a ``CudaModel`` (see ``runtime/cuda_model.py``, ``docs/cuda.md``).
    ``keep``: names of intermediate values of the ONNX graph to return as extra outputs, after the
    model's own (``model.run(["conv2_out"], feed)``); an unknown name is a ``LeptonError``.
    ``max_memory``: the most bytes the model may hold, weights plus one run's workspace and outputs
    (an int, or a string such as ``"512M"``, ``"4G"``); default ``$LEPTON_MAX_MEMORY``, else the
    physical memory. A model over it is a ``ResourceError``; a run whose batch would go over it is an
    ``InputError`` (see ``runtime/limits.py``).
    ``quantize="int8"`` (target cpu): post-training static quantization with ``calibration`` (an .npz
    with one array per input, a dict of arrays or an iterable of feed dicts), ``calibration_method``
    ("minmax", the default, "percentile" or "entropy"), ``keep_fp32`` (layer names to leave fp32), and
    optionally an accuracy bound: ``max_accuracy_drop`` (top-1 points, with ``labels`` for the
    calibration samples) or ``max_error`` (max abs output error); see ``lepton_compiler/quantize``.
    The model's ``summary["quantization"]`` says what was quantized; ``model.quantization.report()``
    gives the per-layer error (``quantization_report``).
    """
    quantize_request = dict(quantize=quantize, calibration=calibration, calibration_method=calibration_method,
                            keep_fp32=keep_fp32, max_accuracy_drop=max_accuracy_drop, labels=labels,
                            max_error=max_error)
    if target != "cpu" and any(v is not None for k, v in quantize_request.items()
                               if k not in ("quantize", "calibration")):
        raise LeptonError("calibration_method=, keep_fp32=, max_accuracy_drop=, labels= and max_error= apply to "
                          "quantize='int8' with target='cpu'")
    if target == "cuda":   # NVIDIA GPUs through LLVM's NVPTX target; see backends/nvptx, docs/cuda.md
        from .backends.nvptx.compiler import compile_cuda
        return compile_cuda(model, gpu=gpu, opt_level=opt_level, verify=verify, after_pass=after_pass, keep=keep,
                            max_memory=max_memory, quantize=quantize, calibration=calibration, providers=providers,
                            threads=threads, mcpu=mcpu, provider_options=provider_options, strict=strict,
                            ort_optimization=ort_optimization)
    if gpu is not None:
        raise LeptonError("gpu= applies to target='cuda'")
    if target not in ("cpu", "ort"):
        raise LeptonError(f"unknown target {target!r}; use target='cpu', 'ort' or 'cuda'")
    from .quantize import check_request
    check_request(**quantize_request)
    if quantize is not None and target != "cpu":
        raise LeptonError(f"quantize={quantize!r} applies to target='cpu'")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise LeptonError(f"threads must be a positive int or None, not {threads!r}")
    parse_size(max_memory)
    if target == "ort":
        if mcpu is not None:
            raise LeptonError("mcpu= applies to target='cpu'; target='ort' runs on ONNX Runtime's kernels")
        return _compile_ort(model, opt_level, threads, verify=verify, after_pass=after_pass, keep=keep,
                            max_memory=max_memory, providers=providers, provider_options=provider_options,
                            strict=strict, ort_optimization=ort_optimization)
    for name, value in (("providers", providers), ("provider_options", provider_options),
                        ("ort_optimization", ort_optimization)):
        if value is not None:
            raise LeptonError(f"{name}= applies to target='ort'")
    if strict:
        raise LeptonError("strict= applies to target='ort'")
    return _compile_cpu(model, opt_level, threads, mcpu=mcpu, verify=verify, after_pass=after_pass, keep=keep,
                        max_memory=max_memory, quantize_request=quantize_request)


def _compile_ort(model: ModelSource, opt_level: int, threads: Optional[int], *, verify, after_pass, keep,
                 max_memory, providers, provider_options, strict, ort_optimization):
    """target="ort": lepton's front end and passes, then an ONNX Runtime session (``backends/ort.py``)."""
    from .backends.ort import DEFAULT_OPTIMIZATION, SessionSettings, compile_ort, provider_request
    request = provider_request(providers, provider_options, strict)
    settings = SessionSettings(threads, ort_optimization or DEFAULT_OPTIMIZATION)
    proto = load_onnx(model)
    check_initializers(proto, max_memory)
    graph = optimize(proto, opt_level, verify=verify, after_pass=after_pass, keep=keep)
    return compile_ort(graph, proto.SerializeToString(), request, settings,
                       options={"target": "ort", "opt_level": opt_level, "threads": threads,
                                "providers": list(request.providers), "provider_options": list(request.options),
                                "strict": request.strict, "ort_optimization": settings.optimization,
                                "max_memory": max_memory})


def _compile_cpu(model: ModelSource, opt_level: int, threads: Optional[int], *, mcpu, verify, after_pass, keep,
                 max_memory, quantize_request: dict) -> CompiledModel:
    """target="cpu": native code through LLVM, fp32 or int8 (``quantize/compile.py``), through the
    compile cache when ``LEPTON_CACHE_DIR`` is set and no ``after_pass`` hook watches the passes."""
    proto = load_onnx(model)
    check_initializers(proto, max_memory)
    model_bytes = proto.SerializeToString()
    options = {"opt_level": opt_level, "threads": threads, "mcpu": mcpu, "max_memory": max_memory}
    if quantize_request["quantize"] is not None:
        from .quantize.compile import cached_quantized, compile_quantized
        graph = optimize(proto, opt_level, verify=verify, after_pass=after_pass, keep=keep)
        if after_pass is not None or not cache_enabled():
            return compile_quantized(graph, model_bytes, options, mcpu=mcpu, **quantize_request)
        return cached_quantized(graph, model_bytes, options, mcpu=mcpu, keep=keep, verify=verify,
                                **quantize_request)

    def build() -> CompiledModel:
        stages = len(passes_for_level(opt_level)) + 1
        with progress(stages, f"compiling {proto.graph.name or 'model'}") as step:
            def report(p, graph, seconds):
                step(p.name)
                if after_pass is not None:
                    after_pass(p, graph, seconds)

            graph = optimize(proto, opt_level, verify=verify, after_pass=report, keep=keep)
            model = compile_graph(graph, model_bytes, mcpu=mcpu, options=options)
            step("native code")
        return model

    if after_pass is not None or not cache_enabled():
        return build()
    settings = {**options, "keep": list(keep or []), "verify": verify}
    key = cache_key(model_bytes, resolve_target(mcpu).to_json(), settings)
    return cached(key, build, load=load_artifact, save=lambda m, path: m.save(path))


def quantization_report(model):
    """The per-layer error of an int8 ``CompiledModel`` against its fp32 graph on the calibration
    data (a ``QuantizationReport``: ``.format()`` is the table, ``.to_json()``), as
    ``lepton compile --quantize int8 --report`` prints it."""
    q = getattr(model, "quantization", None)
    if q is None:
        raise LeptonError("quantization_report needs a model compiled here with quantize='int8' "
                          "(a loaded artifact keeps only summary['quantization'])")
    return q.report()


def compile_graph(graph: Graph, model_bytes: bytes = b"", *, mcpu: Optional[str] = None,
                  options: Optional[dict] = None, entry: str = ENTRY) -> CompiledModel:
    """Lower an (optimized) IR graph to native code; ``model_bytes`` is the ONNX it came from;
    ``entry`` names the entry point (see ``backends/llvm/module.py``)."""
    spec = resolve_target(mcpu)
    module, plan = build_module(graph, spec, entry)
    check_plan(plan, (options or {}).get("max_memory"))
    native = compile_ir(str(module), spec, entry)
    return CompiledModel(
        inputs=[TensorInfo(v.name, v.type.dtype, v.type.shape) for v in graph.inputs],
        outputs=[TensorInfo(v.name, v.type.dtype, v.type.shape) for v in graph.outputs],
        native=native, constants=plan.constants, constant_names=plan.constant_names,
        workspace=plan.workspace, batch_symbol=plan.batch_symbol, model_bytes=model_bytes,
        options=dict(options or {}), summary=compile_summary(plan))


def compile_summary(plan) -> dict:
    """What the backend made of the graph: kernels, and workspace bytes with and without reuse."""
    return {
        "kernels": [f"{n.domain + '.' if n.domain else ''}{n.op} {n.name}" for n in plan.kernels],
        "workspace": list(plan.workspace),
        "workspace_unshared": list(plan.workspace_unshared),
        "batch_rules": [[list(allowed), reason] for allowed, reason in plan.batch_rules],
    }
