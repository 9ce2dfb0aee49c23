#!/usr/bin/env python3
"""Dense layers side by side with ONNX Runtime (fp32): MLPs and the bundled MNIST CNN.

    python3 benchmarks/bench_gemm.py [--min-time 1.0] [--batch 1,64] [--threads 1] [--models mlp1,mlp2,mnist]

Models: ``mlp1`` = Gemm 512->1024 (Relu), 1024->1024 (Relu), 1024->10 (transB weights, as PyTorch
exports them); ``mlp2`` = MatMul+Add 768->3072 (Relu), 3072->768 (as a transformer's feed-forward
block); ``mnist`` = the bundled CNN. Each row: lepton and ONNX Runtime (default graph optimizations,
``threads`` intra-op threads) timed in this process, their rounds interleaved
(``lepton_compiler.bench.interleaved_medians``); median µs per call, GFLOP/s of the model's
multiply-adds, and ORT / lepton (above 1: lepton faster). The load average is printed with the
table: on a shared machine, compare rows of one run only.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import lepton_compiler as lc
from lepton_compiler.bench import interleaved_medians, ort_session


def _mlp(name: str, sizes, matmul: bool, seed: int = 0) -> tuple[onnx.ModelProto, int]:
    rng = np.random.default_rng(seed)
    nodes, inits, x, macs = [], [], "x", 0
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (0.1 * rng.standard_normal(fan_out)).astype(np.float32)
        last = i == len(sizes) - 2
        out = "y" if last else f"h{i}"
        pre = f"g{i}" if not last else out
        if matmul:
            inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
            nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"mm{i}"]),
                      helper.make_node("Add", [f"mm{i}", f"b{i}"], [pre])]
        else:   # PyTorch's Linear: Gemm with transB
            inits += [numpy_helper.from_array(np.ascontiguousarray(w.T), f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
            nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [pre], transB=1))
        if not last:
            nodes.append(helper.make_node("Relu", [pre], [out]))
        x = out
        macs += fan_in * fan_out
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", sizes[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model, macs


def models(names):
    out = {}
    if "mlp1" in names:
        out["MLP 512x1024x1024x10"] = _mlp("mlp1", [512, 1024, 1024, 10], matmul=False)
    if "mlp2" in names:
        out["MLP 768x3072x768"] = _mlp("mlp2", [768, 3072, 768], matmul=True)
    if "mnist" in names:
        from lepton_compiler.demo import bundled_model_path
        out["MNIST CNN"] = (onnx.load(bundled_model_path()), 2_794_240)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per row (default 1.0)")
    parser.add_argument("--batch", default="1,64")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default="mlp1,mlp2,mnist")
    args = parser.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}, threads {args.threads}")
    print(f"{'model':24s} {'batch':>5s} {'lepton µs':>10s} {'ORT µs':>10s} {'lepton GF/s':>11s} "
          f"{'ORT GF/s':>9s} {'ORT/lepton':>10s} {'max |diff|':>10s}")
    for name, (model, macs) in models(args.models.split(",")).items():
        compiled = lc.compile(model, threads=args.threads)
        session = ort_session(model.SerializeToString(), args.threads)
        in_name = model.graph.input[0].name
        shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
        for batch in batches:
            x = np.random.default_rng(1).standard_normal([batch] + shape).astype(np.float32)
            if name == "MNIST CNN":
                from lepton_compiler.demo import mnist_test_images
                x = mnist_test_images()[0][:batch]
            feed = {in_name: x}
            diff = float(np.max(np.abs(compiled.run(None, feed)[0] - session.run(None, feed)[0])))
            lep, ort_s = interleaved_medians([lambda: compiled.run(None, feed), lambda: session.run(None, feed)],
                                             args.min_time)
            gf = 2 * macs * batch / 1e9
            print(f"{name:24s} {batch:5d} {lep * 1e6:10.1f} {ort_s * 1e6:10.1f} {gf / lep:11.1f} {gf / ort_s:9.1f} "
                  f"{ort_s / lep:10.2f} {diff:10.2e}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")


if __name__ == "__main__":
    main()
