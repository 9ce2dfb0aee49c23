#!/usr/bin/env python3
"""Dynamic int8 (``onnxruntime.quantization.quantize_dynamic``) on an MLP, one thread, batch 64:
lepton running the quantized model (``DynQGemm``), ONNX Runtime running the same quantized model,
lepton fp32 and ONNX Runtime fp32 on the original, in the same run. Rounds are interleaved and
the medians printed (µs per batch), with the largest difference of lepton's int8 output from
ONNX Runtime's (0 when they agree bit for bit).

    python3 benchmarks/bench_dynamic_int8.py [--dims 512,1024,1024,10] [--batch 64] [--rounds 30]
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import lepton_compiler as lc


def mlp(path: str, dims, seed: int = 0) -> None:
    """MatMul + Add (+ Relu between layers), input ``x[N, dims[0]]``."""
    rng = np.random.default_rng(seed)
    inits, nodes, x = [], [], "x"
    for i, (k, n) in enumerate(zip(dims[:-1], dims[1:])):
        inits += [numpy_helper.from_array((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), f"W{i}"),
                  numpy_helper.from_array((rng.standard_normal(n) * 0.1).astype(np.float32), f"B{i}")]
        nodes += [helper.make_node("MatMul", [x, f"W{i}"], [f"mm{i}"], name=f"mm{i}"),
                  helper.make_node("Add", [f"mm{i}", f"B{i}"], [f"add{i}"], name=f"add{i}")]
        x = f"add{i}"
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"relu{i}"], name=f"relu{i}"))
            x = f"relu{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", dims[0]])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", dims[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", default="512,1024,1024,10")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--per-channel", action="store_true")
    args = parser.parse_args()
    dims = [int(d) for d in args.dims.split(",")]

    from onnxruntime.quantization import QuantType, quantize_dynamic
    import logging
    logging.getLogger().setLevel(logging.ERROR)
    tmp = tempfile.mkdtemp()
    fp32, int8 = os.path.join(tmp, "mlp.onnx"), os.path.join(tmp, "mlp_int8.onnx")
    mlp(fp32, dims)
    quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, per_channel=args.per_channel)

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    runners = {}
    for name, path in (("ort int8", int8), ("ort fp32", fp32)):
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        runners[name] = lambda x, s=session: s.run(None, {"x": x})[0]
    for name, path in (("lepton int8", int8), ("lepton fp32", fp32)):
        model = lc.compile(path, threads=1)
        runners[name] = lambda x, m=model: m.run(None, {"x": x})[0]

    x = np.random.default_rng(1).standard_normal((args.batch, dims[0])).astype(np.float32)
    diff = float(np.abs(runners["lepton int8"](x) - runners["ort int8"](x)).max())
    times = {name: [] for name in runners}
    for _ in range(3):
        for fn in runners.values():
            fn(x)
    for _ in range(args.rounds):
        for name, fn in runners.items():
            start = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - start)
    macs = sum(k * n for k, n in zip(dims[:-1], dims[1:])) * args.batch
    median = {name: float(np.median(t)) * 1e6 for name, t in times.items()}
    print(f"MLP {'x'.join(map(str, dims))}, batch {args.batch}, 1 thread, "
          f"{'per-channel' if args.per_channel else 'per-tensor'} int8 weights ({macs / 1e6:.1f} M multiply-adds)")
    for name, us in median.items():
        print(f"  {name:12s} {us:9.1f} µs   {2 * macs / us / 1e3:6.1f} GOP/s")
    print(f"  lepton int8 / ort int8: {median['ort int8'] / median['lepton int8']:.2f}x faster;"
          f" / lepton fp32: {median['lepton fp32'] / median['lepton int8']:.2f}x;"
          f" max |lepton int8 - ort int8| = {diff:g}")


if __name__ == "__main__":
    sys.exit(main())
