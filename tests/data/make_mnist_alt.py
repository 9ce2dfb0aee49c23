#!/usr/bin/env python3
"""Regenerate ``tests/data/mnist_alt_opset11.onnx``.

A second, independently trained copy of the reference MNIST CNN (same layers as
``examples/mnist/train.py``) exported so that the graph looks like the output
of a different, older exporter.  It is a test fixture: a compiler that handles
``examples/mnist/mnist_cnn.onnx`` must handle this file too, and give the same
answers as ONNX Runtime.

Differences from the reference model:

* opset 11 (``Softmax`` with the pre-13 "coerce to 2-D" axis semantics);
* flattening is ``x.view(x.size(0), -1)``, which the exporter writes as the
  shape-computation chain ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``
  instead of a single ``Flatten``;
* softmax is ``torch.softmax(x, dim=1)`` in ``forward`` rather than a layer;
* input ``x``, output ``y``, dynamic batch dimension named ``batch``;
* different seed, optimiser (SGD with momentum) and number of epochs, so the
  weights differ from the reference model's.

Training data: ``examples/mnist/data/mnist_train4000.npz``; accuracy is
reported on ``lepton_compiler/demo/mnist_test1000.npz`` (see the README there
for provenance).  Deterministic (fixed seeds, one CPU thread); training takes
about 15 s on two cores.

Usage (from the repository root)::

    python3 tests/data/make_mnist_alt.py
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_DATA = os.path.join(REPO, "examples", "mnist", "data")
DEFAULT_OUT = os.path.join(HERE, "mnist_alt_opset11.onnx")

INPUT_NAME = "x"
OUTPUT_NAME = "y"
BATCH_DIM = "batch"
OPSET = 11

# The op types the shape-computation chain must leave in the graph.
FLATTEN_CHAIN = ("Shape", "Gather", "Unsqueeze", "Concat", "Reshape")


class AltNet(nn.Module):
    """Same architecture as the reference CNN, written in functional style."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 32, 3)
        self.c2 = nn.Conv2d(32, 64, 3)
        self.c3 = nn.Conv2d(64, 64, 3)
        self.d1 = nn.Linear(576, 64)
        self.d2 = nn.Linear(64, 10)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        x = F.relu(self.c3(x))
        x = x.view(x.size(0), -1)  # exported as Shape/Gather/Unsqueeze/Concat/Reshape
        x = F.relu(self.d1(x))
        return self.d2(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)


def load_split(data_dir: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(os.path.join(data_dir, name + ".npz")) as d:
        return d["x"].astype(np.float32) / 255.0, d["y"].astype(np.int64)


def train(model: AltNet, x: np.ndarray, y: np.ndarray, epochs: int, seed: int,
          batch_size: int = 32, lr: float = 0.02) -> None:
    """SGD with Nesterov momentum, cosine-annealed learning rate, cross-entropy on logits."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    steps = epochs * ((len(xt) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for start in range(0, len(xt), batch_size):
            idx = order[start:start + batch_size]
            opt.zero_grad()
            loss = F.cross_entropy(model.logits(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch}/{epochs}: loss {total / len(xt):.4f} ({time.perf_counter() - t0:.1f} s)")
    model.eval()


def export(model: AltNet, path: str) -> None:
    """TorchScript-based (legacy) exporter at opset 11."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(2, 1, 28, 28),),
            path,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
        )


def check_onnx(path: str, x: np.ndarray, y: np.ndarray, torch_probs: np.ndarray) -> None:
    import onnx
    import onnxruntime as ort

    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    ops = [n.op_type for n in m.graph.node]
    missing = [op for op in FLATTEN_CHAIN if op not in ops]
    assert not missing, f"shape chain was folded away, missing {missing}: {ops}"
    assert "Flatten" not in ops, ops
    assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]

    def describe(vi):
        dims = [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
        return f"{vi.name} {onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type)} {dims}"

    print(f"ONNX file: {path} ({os.path.getsize(path)} bytes), ir_version {m.ir_version}, "
          f"opset {[(o.domain or 'ai.onnx', o.version) for o in m.opset_import]}")
    print("inputs: ", [describe(v) for v in m.graph.input])
    print("outputs:", [describe(v) for v in m.graph.output])
    print("ops:", ops)

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    probs = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    assert probs.shape == (len(x), 10), probs.shape
    print(f"onnxruntime test accuracy: {(probs.argmax(1) == y).mean():.4f} "
          f"(max |ort - torch| = {np.abs(probs - torch_probs).max():.2e})")
    for batch in (1, 7):
        out = sess.run([OUTPUT_NAME], {INPUT_NAME: x[:batch]})[0]
        assert out.shape == (batch, 10), out.shape
        np.testing.assert_allclose(out, probs[:batch], rtol=1e-4, atol=1e-6)
        print(f"batch {batch}: ok")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=12, help="training epochs (default 12)")
    ap.add_argument("--seed", type=int, default=1234, help="random seed (default 1234)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="ONNX file to write (default %(default)s)")
    ap.add_argument("--data", default=DEFAULT_DATA, help="folder with the MNIST .npz files")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    x_train, y_train = load_split(args.data, "mnist_train4000")
    x_test, y_test = load_split(os.path.join(REPO, "lepton_compiler", "demo"), "mnist_test1000")

    model = AltNet()
    t0 = time.perf_counter()
    train(model, x_train, y_train, args.epochs, args.seed)
    print(f"training took {time.perf_counter() - t0:.1f} s")
    with torch.no_grad():
        torch_probs = model(torch.from_numpy(x_test)).numpy()
    print(f"torch test accuracy: {(torch_probs.argmax(1) == y_test).mean():.4f}")

    export(model, args.out)
    check_onnx(args.out, x_test, y_test, torch_probs)


if __name__ == "__main__":
    main()
