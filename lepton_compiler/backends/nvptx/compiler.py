"""``compile(model, target="cuda")``: ONNX -> optimized IR -> PTX -> a ``CudaModel`` on the GPU; and PTX alone."""

from __future__ import annotations

from typing import Optional

from ...errors import LeptonError
from ...runtime.limits import check_initializers, parse_size
from ...runtime.model import TensorInfo
from .module import build_ptx
from .target import DEFAULT_GPU, normalize_gpu


def compile_ptx(model, gpu: Optional[str] = None, opt_level: int = 3, *, verify: bool = False, after_pass=None,
                keep=None):
    """PTX for ``gpu`` (default ``sm_90``) and the launch plan; needs no GPU, no CuPy."""
    from ...api import optimize
    from ...frontends.onnx import load_onnx
    proto = load_onnx(model)
    graph = optimize(proto, opt_level, verify=verify, after_pass=after_pass, keep=keep)
    ptx, gplan = build_ptx(graph, normalize_gpu(gpu or DEFAULT_GPU))
    return ptx, gplan, graph, proto


def compile_cuda(model, *, gpu=None, opt_level: int = 3, verify: bool = False, after_pass=None, keep=None,
                 max_memory=None, **unused):
    """The ``target="cuda"`` path of ``api.compile``: a ``CudaModel`` for CuPy's current GPU.

    ``gpu``: the architecture to emit PTX for (``"sm_90"``); default: the current device's. Options that
    belong to other targets (``providers``, ``mcpu``, ``threads``, ...) are errors."""
    for name, value in unused.items():
        if value not in (None, False):
            raise LeptonError(f"{name}= does not apply to target='cuda'")
    parse_size(max_memory)
    from ...runtime.cuda_model import CudaModel, detect_gpu, require_cupy
    require_cupy()   # say what is missing before compiling anything
    arch = normalize_gpu(gpu) if gpu is not None else detect_gpu()
    ptx, gplan, graph, proto = compile_ptx(model, arch, opt_level, verify=verify, after_pass=after_pass, keep=keep)
    check_initializers(proto, max_memory)
    return CudaModel(inputs=[TensorInfo(v.name, v.type.dtype, v.type.shape) for v in graph.inputs],
                     outputs=[TensorInfo(v.name, v.type.dtype, v.type.shape) for v in graph.outputs],
                     ptx=ptx, gpu=arch, gplan=gplan, model_bytes=proto.SerializeToString(),
                     options={"target": "cuda", "gpu": arch, "opt_level": opt_level, "max_memory": max_memory})


def cli_compile(args, after_pass, write) -> int:
    """``lepton compile --target cuda --emit ptx|llvm [--gpu sm_90]``: needs no GPU."""
    import sys

    if args.target != "cuda":
        raise LeptonError(f"--emit ptx and --gpu apply to --target cuda (not --target {args.target})")
    for flag, value in (("--mcpu", args.mcpu), ("--threads", args.threads), ("--providers", args.providers),
                        ("--ort-optimization", args.ort_optimization), ("--name", args.name),
                        ("--weights", args.weights)):
        if value is not None:
            raise LeptonError(f"{flag} does not apply to --target cuda")
    if args.strict:
        raise LeptonError("--strict does not apply to --target cuda")
    if args.emit not in ("ptx", "llvm"):
        raise LeptonError("--target cuda writes --emit ptx (or --emit llvm, the NVPTX LLVM IR); a cuda model is "
                          "compiled for the GPU when it is loaded (lc.compile(model, target='cuda'))"
                          if args.emit is None else f"--emit {args.emit} does not apply to --target cuda; "
                          "use --emit ptx or --emit llvm")
    gpu = normalize_gpu(args.gpu or DEFAULT_GPU)
    if args.emit == "ptx":
        ptx, gplan, _, _ = compile_ptx(args.model, gpu, args.opt_level, verify=args.verify, after_pass=after_pass)
        write(args.output, ptx, binary=False, what="--emit ptx")
    else:
        from ...api import optimize
        from .module import device_module, plan_gpu
        graph = optimize(args.model, args.opt_level, verify=args.verify, after_pass=after_pass)
        gplan = plan_gpu(graph)
        write(args.output, str(device_module(gplan, gpu)), binary=False, what="--emit llvm")
    out = sys.stderr if args.output in (None, "-") else sys.stdout
    for launch in gplan.launches:
        grid = " x ".join(("N*%d/%d" % (g.per_batch, g.tile)) if g.per_batch else str(g.blocks(1))
                          for g in launch.grid)
        print(f"{launch.kernel}: grid {grid}, block {'x'.join(map(str, launch.block))}, "
              f"{launch.shared_bytes:,} bytes shared; {launch.notes}", file=out)
    return 0
