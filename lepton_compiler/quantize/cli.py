"""``lepton compile --quantize int8 --calibration DATA.npz ...``: the options and the command."""

from __future__ import annotations

import os
import sys

import numpy as np

from ..errors import InputError, LeptonError
from .calibration import METHODS


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_arguments(parser) -> None:
    parser.add_argument("--quantize", choices=("int8",), help="post-training static quantization (needs --calibration)")
    parser.add_argument("--calibration", metavar="DATA.npz", help="--quantize: calibration samples, one array "
                        "per model input (all samples along axis 0)")
    parser.add_argument("--calibration-method", choices=METHODS, help="--quantize: how activation ranges are chosen "
                        "(default: minmax)")
    parser.add_argument("--keep-fp32", type=_names, metavar="A,B", help="--quantize: layers (ONNX Conv/Gemm node "
                        "names) to leave in fp32")
    parser.add_argument("--max-accuracy-drop", type=float, metavar="POINTS", help="--quantize: return layers to fp32 "
                        "until top-1 accuracy on the calibration data falls by at most POINTS (needs --labels)")
    parser.add_argument("--labels", metavar="LABELS.npy", help="--quantize: the class of each calibration sample")
    parser.add_argument("--max-error", type=float, help="--quantize: return layers to fp32 until the largest "
                        "absolute output error on the calibration data is at most this")


def requested(args) -> bool:
    return any(getattr(args, name, None) is not None for name in
               ("quantize", "calibration", "calibration_method", "keep_fp32", "max_accuracy_drop", "labels",
                "max_error"))


def _labels(path):
    if path is None:
        return None
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"cannot read labels from '{path}': {exc}") from None
    if not isinstance(data, np.ndarray):
        files = list(data.files)
        if len(files) != 1:
            raise InputError(f"'{path}' holds {len(files)} arrays; give one .npy file (or .npz with one array) "
                             "of labels")
        data = data[files[0]]
    return data


def compile_command(args, after_pass, write, print_summary) -> int:
    """``lepton compile`` with --quantize: the artifact (or --emit llvm|asm|obj) and, with --report,
    the per-layer error table (alone, without -o or --emit: only the table, no native code)."""
    from .. import api
    from .driver import check_request, quantize_graph_with

    if args.target != "cpu":
        raise LeptonError(f"--quantize applies to --target cpu, not {args.target}")
    if args.emit not in (None, "llvm", "asm", "obj") or args.name is not None or args.weights is not None:
        raise LeptonError("--quantize writes an artifact (-o) or --emit llvm|asm|obj")
    kwargs = dict(quantize=args.quantize, calibration=args.calibration, calibration_method=args.calibration_method,
                  keep_fp32=args.keep_fp32, max_accuracy_drop=args.max_accuracy_drop, labels=_labels(args.labels),
                  max_error=args.max_error)
    check_request(**kwargs)
    if args.report and not args.output and not args.emit:
        graph = api.optimize(args.model, args.opt_level, verify=args.verify, after_pass=after_pass)
        q = quantize_graph_with(graph, args.calibration, args.calibration_method or "minmax", args.keep_fp32,
                                max_accuracy_drop=args.max_accuracy_drop, labels=kwargs["labels"],
                                max_error=args.max_error)
        print(q.report().format())
        return 0
    model = api.compile(args.model, opt_level=args.opt_level, threads=args.threads, mcpu=args.mcpu,
                        verify=args.verify, after_pass=after_pass, **kwargs)
    out = sys.stdout if not args.emit else sys.stderr
    if args.emit == "llvm":
        write(args.output, model.llvm_ir, binary=False, what="--emit llvm")
    elif args.emit == "asm":
        write(args.output, model.assembly(), binary=False, what="--emit asm")
    elif args.emit == "obj":
        write(args.output, model.native.obj, binary=True, what="--emit obj")
    else:
        if not args.output:
            raise LeptonError("compile needs -o OUT.lepton (or --emit)")
        model.save(args.output)
        print(f"wrote {args.output} ({os.path.getsize(args.output):,} bytes) for {model.target.cpu}", file=out)
    print_summary(model.summary, out)
    info = model.summary["quantization"]
    fp32 = ", ".join("{} ({})".format(d["name"], d["reason"]) for d in info["layers"] if not d["int8"])
    print(f"int8: {len(info['int8_layers'])} layers ({', '.join(info['int8_layers']) or 'none'}); "
          f"fp32: {fp32 or 'none'}; calibration: {info['method']} on {info['samples']} samples", file=out)
    if args.report:   # the table, and the accuracy search's account under it
        print(model.quantization.report().format(), file=out)
    elif model.quantization.search is not None:
        print(model.quantization.search.format(), file=out)
    return 0
