"""ONNX Runtime dispatch (``target="ort"``): the optimized IR as standard ONNX, run by an
``onnxruntime.InferenceSession`` with the execution providers the user asks for.

What is decided here, in one place:

* which providers a session gets (``resolve_providers``): the names in the order given, the ones this
  onnxruntime does not have dropped (one warning), the CPU provider appended as the fallback — unless
  ``strict``, where a missing provider is an error. ``"auto"`` picks the best installed one.
* the session settings in lepton's terms (``SessionSettings``): threads and ORT's own graph
  optimization level (``basic`` by default: lepton has already optimized the graph).
* the exported ONNX (``export_onnx``): ``graph.to_onnx()`` at the lowest IR version its opsets need
  (so older onnxruntimes read it), checked by ``onnx.checker``.

onnxruntime is imported lazily, so ``import lepton_compiler`` does not pay for it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..errors import LeptonError

logger = logging.getLogger("lepton_compiler")

CPU = "CPUExecutionProvider"

AUTO_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "ROCMExecutionProvider",
              "DmlExecutionProvider", "CoreMLExecutionProvider")
"""What ``providers="auto"`` prefers, best first; the CPU provider always comes last."""

GPU_INSTALL = "`pip install onnxruntime-gpu` or the extra `pip install lepton_compiler[gpu]`"
INSTALL_HINTS = {
    "TensorrtExecutionProvider": GPU_INSTALL + " and NVIDIA TensorRT",
    "CUDAExecutionProvider": GPU_INSTALL,
    "ROCMExecutionProvider": "`pip install onnxruntime-rocm`",
    "MIGraphXExecutionProvider": "`pip install onnxruntime-rocm`",
    "DmlExecutionProvider": "`pip install onnxruntime-directml` (Windows)",
    "CoreMLExecutionProvider": "the standard `onnxruntime` wheel on macOS",
    "OpenVINOExecutionProvider": "`pip install onnxruntime-openvino`",
    "QNNExecutionProvider": "`pip install onnxruntime-qnn`",
}

OPTIMIZATION_LEVELS = {
    "disabled": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
DEFAULT_OPTIMIZATION = "basic"

DEVICES = {"cpu": (CPU,), "cuda": ("CUDAExecutionProvider", "TensorrtExecutionProvider")}
"""Devices ``OrtModel.run_on_device`` can leave outputs on, and the providers that put tensors there."""


def _ort():
    import onnxruntime
    return onnxruntime


def _install_hint(name: str) -> str:
    return INSTALL_HINTS.get(name, f"an onnxruntime build that includes {name}")


# -- the provider request -------------------------------------------------------------------------

@dataclass(frozen=True)
class ProviderRequest:
    """What the user asked for, as stored in artifacts: resolved again each time a session is made
    (on load too, so an artifact asking for CUDA uses the GPU of the machine that loads it)."""

    providers: tuple[str, ...]                 # names, or ("auto",)
    options: tuple[dict, ...] = ()             # one {str: str} per name (empty dicts where none)
    strict: bool = False

    @property
    def auto(self) -> bool:
        return self.providers == ("auto",)

    def to_json(self) -> dict:
        return {"providers": list(self.providers), "options": [dict(o) for o in self.options],
                "strict": self.strict}

    @classmethod
    def from_json(cls, data: dict) -> "ProviderRequest":
        strict = data.get("strict", False)
        if data["providers"] == ["auto"]:
            return provider_request("auto", None, strict)
        return provider_request(list(data["providers"]), data.get("options") or None, strict)


def provider_request(providers=None, provider_options=None, strict: bool = False) -> ProviderRequest:
    """Check the shape of ``providers``/``provider_options`` (as onnxruntime takes them: names, or
    ``(name, options)`` pairs) without looking at what is installed. ``None`` means ``"auto"``."""
    if not isinstance(strict, bool):
        raise LeptonError(f"strict must be True or False, not {strict!r}")
    if providers is None or (isinstance(providers, str) and providers == "auto"):
        if provider_options is not None:
            raise LeptonError("provider_options= needs an explicit providers= list, not 'auto'")
        return ProviderRequest(("auto",), ({},), strict)
    if isinstance(providers, str):
        raise LeptonError(f"providers must be 'auto' or a list of execution provider names, not the string "
                          f"{providers!r} (did you mean [{providers!r}]?)")
    if not isinstance(providers, (list, tuple)) or not providers:
        raise LeptonError(f"providers must be 'auto' or a non-empty list of execution provider names, "
                          f"not {providers!r}")
    names, options = [], []
    for entry in providers:
        if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], dict):
            if provider_options is not None:
                raise LeptonError("give provider options either as (name, options) pairs in providers= "
                                  "or as provider_options=, not both")
            names.append(entry[0])
            options.append(entry[1])
        elif isinstance(entry, str):
            names.append(entry)
            options.append({})
        else:
            raise LeptonError(f"providers entries must be names or (name, options) pairs, not {entry!r}")
    if provider_options is not None:
        if not isinstance(provider_options, (list, tuple)) or len(provider_options) != len(names) \
                or not all(isinstance(o, dict) for o in provider_options):
            raise LeptonError(f"provider_options must be a list of {len(names)} dicts, one per provider")
        options = list(provider_options)
    seen = set()
    for name in names:
        if name == "auto":
            raise LeptonError("'auto' cannot be combined with other providers; give providers='auto'")
        if name in seen:
            raise LeptonError(f"execution provider '{name}' is named twice in providers")
        seen.add(name)
    return ProviderRequest(tuple(names), tuple({str(k): str(v) for k, v in o.items()} for o in options), strict)


@dataclass
class Resolution:
    """The providers a session is created with, their options, and what was left out and why."""

    providers: list[str]
    options: list[dict]
    missing: list[str] = field(default_factory=list)   # named but not installed (non-strict only)


def installed_providers() -> list[str]:
    return list(_ort().get_available_providers())


def resolve_providers(request: ProviderRequest, available: Optional[Sequence[str]] = None,
                      known: Optional[Sequence[str]] = None) -> Resolution:
    """The providers to create the session with, or a ``LeptonError`` that says what is missing
    and how to install it."""
    ort = _ort()
    available = list(ort.get_available_providers() if available is None else available)
    known = list(ort.get_all_providers() if known is None else known)
    known += [p for p in (*AUTO_ORDER, *INSTALL_HINTS) if p not in known]  # in other onnxruntime builds
    if request.auto:
        best = [p for p in AUTO_ORDER if p in available][:1]
        if best == ["TensorrtExecutionProvider"] and "CUDAExecutionProvider" in available:
            best.append("CUDAExecutionProvider")  # TensorRT hands what it cannot run to CUDA
        chosen = best + [CPU]
        return Resolution(chosen, [{} for _ in chosen])
    unknown = [p for p in request.providers if p not in known and p not in available]
    if unknown:
        raise LeptonError(f"unknown execution provider '{unknown[0]}': onnxruntime {ort.__version__} knows "
                          + ", ".join(known) + " (names are case-sensitive)")
    missing = [p for p in request.providers if p not in available]
    here = f"this onnxruntime {ort.__version__} has " + ", ".join(available)
    if missing and request.strict:
        raise LeptonError(f"execution provider '{missing[0]}' is not installed ({here}) and strict=True "
                          f"allows no fallback; install it with {_install_hint(missing[0])}")
    chosen = [(p, o) for p, o in zip(request.providers, request.options) if p in available]
    if not chosen:
        raise LeptonError(f"execution provider '{missing[0]}' is not installed ({here}); install it with "
                          f"{_install_hint(missing[0])}, or name '{CPU}' too to fall back to the CPU")
    if not request.strict and CPU not in [p for p, _ in chosen]:
        chosen.append((CPU, {}))
    return Resolution([p for p, _ in chosen], [o for _, o in chosen], missing)


# -- session settings -------------------------------------------------------------------------------

@dataclass(frozen=True)
class SessionSettings:
    """Session settings in lepton's terms: ``threads`` (None = ORT's default, every physical core)
    and ``optimization``, ORT's own graph optimization level."""

    threads: Optional[int] = None
    optimization: str = DEFAULT_OPTIMIZATION

    def __post_init__(self):
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise LeptonError(f"threads must be a positive int or None, not {self.threads!r}")
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise LeptonError(f"ort_optimization must be one of {', '.join(map(repr, OPTIMIZATION_LEVELS))}, "
                              f"not {self.optimization!r}")

    def session_options(self):
        ort = _ort()
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                                   OPTIMIZATION_LEVELS[self.optimization])
        options.intra_op_num_threads = self.threads or 0
        if self.threads is not None:
            options.inter_op_num_threads = 1
        return options

    def to_json(self) -> dict:
        return {"threads": self.threads, "optimization": self.optimization}

    @classmethod
    def from_json(cls, data: dict) -> "SessionSettings":
        threads = data.get("threads")
        return cls(None if threads is None else int(threads), str(data.get("optimization", DEFAULT_OPTIMIZATION)))


# -- export and sessions ----------------------------------------------------------------------------

def export_onnx(graph):
    """The optimized IR graph as a standard ``onnx.ModelProto``, checked by ``onnx.checker``."""
    import onnx
    from onnx import helper

    proto = graph.to_onnx()
    try:
        proto.ir_version = min(proto.ir_version, helper.find_min_ir_version_for(list(proto.opset_import)))
    except (ValueError, KeyError, TypeError):
        pass  # an opset onnx has no table entry for: keep the exporter's IR version
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LeptonError(f"the optimized graph does not export to valid ONNX (a lepton bug; "
                          f"try a lower opt_level): {first}") from None
    return proto


def create_session(onnx_bytes: bytes, request: ProviderRequest, settings: SessionSettings):
    """An ``InferenceSession`` for ``onnx_bytes``. A provider that is missing, or that fails to start,
    is dropped with one warning on the ``lepton_compiler`` logger (an error under ``strict``)."""
    ort = _ort()
    resolution = resolve_providers(request)
    providers, options = list(resolution.providers), list(resolution.options)
    failed: list[tuple[str, str]] = []
    while True:
        try:
            # enable_fallback=0: no silent retry on another provider by onnxruntime itself (it
            # would print to stdout); the fallback is decided and reported here.
            session = ort.InferenceSession(onnx_bytes, settings.session_options(), providers=providers,
                                           provider_options=options, enable_fallback=0)
            break
        except Exception as exc:  # onnxruntime raises its own RuntimeError/Fail subclasses
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            first = providers[0]
            if request.strict or first == CPU or len(providers) == 1:
                raise LeptonError(f"onnxruntime could not create a session with {', '.join(providers)}: "
                                  f"{message}") from None
            failed.append((first, message))
            providers, options = providers[1:], options[1:]
    used = list(session.get_providers())
    # a provider onnxruntime accepted but did not start (e.g. CUDA libraries missing) is left out quietly
    failed += [(p, "onnxruntime did not start it (see its log)") for p in providers if p not in used]
    if failed and request.strict:
        name, why = failed[0]
        raise LeptonError(f"execution provider '{name}' failed to start and strict=True allows no "
                          f"fallback: {why}")
    if resolution.missing or failed:
        parts = [f"'{p}' is not installed (install it with {_install_hint(p)})" for p in resolution.missing]
        parts += [f"'{p}' failed to start ({why})" for p, why in failed]
        logger.warning("onnxruntime: %s; running on %s instead", "; ".join(parts), ", ".join(used))
    return session


def compile_ort(graph, model_bytes: bytes, request: ProviderRequest, settings: SessionSettings,
                options: Optional[dict] = None):
    """An ``OrtModel`` for an (optimized) IR graph; ``model_bytes`` is the ONNX it came from."""
    from ..runtime.model import TensorInfo
    from ..runtime.ort_model import OrtModel

    proto = export_onnx(graph)
    onnx_bytes = proto.SerializeToString()
    summary = {"nodes": [f"{n.domain + '.' if n.domain else ''}{n.op} {n.name}" for n in graph.nodes],
               "onnx_nodes": len(proto.graph.node), "onnx_bytes": len(onnx_bytes)}
    return OrtModel(inputs=[TensorInfo(v.name, v.type.dtype, v.type.shape) for v in graph.inputs],
                    outputs=[TensorInfo(v.name, v.type.dtype, v.type.shape) for v in graph.outputs],
                    batch_symbol=batch_symbol_of(graph), onnx_bytes=onnx_bytes, model_bytes=model_bytes,
                    request=request, settings=settings, options=dict(options or {}), summary=summary)


def batch_symbol_of(graph) -> Optional[str]:
    """The one symbolic dimension of the graph's inputs (lepton allows one), or None."""
    for value in graph.inputs:
        for dim in value.type.shape:
            if isinstance(dim, str):
                return dim
    return None
