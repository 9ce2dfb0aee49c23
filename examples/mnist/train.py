#!/usr/bin/env python3
"""Train the reference MNIST CNN and export it to ONNX.

This script produces ``lepton_compiler/demo/mnist_cnn.onnx``, the reference workload of
lepton_compiler (shipped inside the package so that ``lepton demo`` works after a plain install) (see ``DESIGN.md``, section "Reference workload").

Architecture (input float32 [N, 1, 28, 28], pixel values scaled to [0, 1])::

    Conv2d(1, 32, 3)  + ReLU      -> [N, 32, 26, 26]
    MaxPool2d(2)                  -> [N, 32, 13, 13]
    Conv2d(32, 64, 3) + ReLU      -> [N, 64, 11, 11]
    MaxPool2d(2)                  -> [N, 64, 5, 5]
    Conv2d(64, 64, 3) + ReLU      -> [N, 64, 3, 3]
    Flatten                       -> [N, 576]
    Linear(576, 64)   + ReLU      -> [N, 64]
    Linear(64, 10)                -> [N, 10]
    Softmax(dim=1)                -> [N, 10]   (part of the exported model)

Training data is ``data/mnist_train4000.npz`` (4,000 images); the accuracy is
measured on ``lepton_compiler/demo/mnist_test1000.npz`` (1,000 images), once with PyTorch and
once with ONNX Runtime on the exported file.  See ``data/README.md`` for where
the data comes from.

The run is deterministic: fixed seeds, a seeded shuffling generator and a
single CPU thread.  Training takes about 15 s on a laptop-class
CPU; test accuracy is about 97 %.

Requirements: torch, numpy, onnx, onnxruntime.  Usage::

    python3 examples/mnist/train.py                     # defaults below
    python3 examples/mnist/train.py --epochs 15 --seed 0 --out lepton_compiler/demo/mnist_cnn.onnx
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "data")
DEMO = os.path.normpath(os.path.join(HERE, "..", "..", "lepton_compiler", "demo"))
DEFAULT_OUT = os.path.join(DEMO, "mnist_cnn.onnx")

INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
BATCH_DIM = "N"
OPSET = 17


def build_model() -> nn.Sequential:
    """The reference CNN, softmax included.

    Layers are named so that the exported graph gets readable node and
    initializer names (``/conv1/Conv``, ``conv1.weight``, ...).
    """
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 32, 3)),
        ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(32, 64, 3)),
        ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)),
        ("conv3", nn.Conv2d(64, 64, 3)),
        ("relu3", nn.ReLU()),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(576, 64)),
        ("relu4", nn.ReLU()),
        ("fc2", nn.Linear(64, 10)),
        ("softmax", nn.Softmax(dim=1)),
    ]))


def load_split(data_dir: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (x float32 [N,1,28,28] in [0,1], y int64 [N]) from ``<data_dir>/<name>.npz``."""
    with np.load(os.path.join(data_dir, name + ".npz")) as d:
        x = d["x"].astype(np.float32) / 255.0
        y = d["y"].astype(np.int64)
    return x, y


def train(model: nn.Sequential, x: np.ndarray, y: np.ndarray, epochs: int, seed: int,
          batch_size: int = 64, max_lr: float = 3e-3) -> None:
    """Train with Adam on cross-entropy, one-cycle learning-rate schedule.

    The model ends in Softmax, so the loss is the negative log-likelihood of the
    log of its output (clamped away from zero).  Training on the logits (the
    model without its last layer) is numerically nicer, so that is what we do.
    """
    logits_model = model[:-1]  # shares parameters with ``model``
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=max_lr)
    steps_per_epoch = (len(x) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr,
                                                total_steps=epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    n = len(xt)
    model.train()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            opt.zero_grad()
            loss = loss_fn(logits_model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch}/{epochs}: loss {total / n:.4f} ({time.perf_counter() - t0:.1f} s)")
    model.eval()


@torch.no_grad()
def torch_accuracy(model: nn.Sequential, x: np.ndarray, y: np.ndarray) -> float:
    probs = model(torch.from_numpy(x)).numpy()
    return float((probs.argmax(1) == y).mean())


def export(model: nn.Sequential, path: str) -> None:
    """Export with the TorchScript-based exporter, which gives a plain graph
    (Conv, Relu, MaxPool, Flatten, Gemm, Softmax; weights as initializers)."""
    dummy = torch.zeros(1, 1, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            path,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
            do_constant_folding=True,
        )


def check_onnx(path: str, x: np.ndarray, y: np.ndarray, torch_probs: np.ndarray) -> None:
    """Validate the exported file and evaluate it with ONNX Runtime."""
    import onnx
    import onnxruntime as ort

    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)

    def describe(vi):
        dims = [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
        return f"{vi.name} {onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type)} {dims}"

    print(f"ONNX file: {path} ({os.path.getsize(path)} bytes), opset "
          f"{[(o.domain or 'ai.onnx', o.version) for o in m.opset_import]}")
    print("inputs: ", [describe(v) for v in m.graph.input])
    print("outputs:", [describe(v) for v in m.graph.output])
    print("ops:", [n.op_type for n in m.graph.node])

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    probs = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    assert probs.shape == (len(x), 10), probs.shape
    max_diff = float(np.abs(probs - torch_probs).max())
    print(f"onnxruntime test accuracy: {(probs.argmax(1) == y).mean():.4f} "
          f"(max |ort - torch| = {max_diff:.2e})")
    for batch in (1, 7):
        out = sess.run([OUTPUT_NAME], {INPUT_NAME: x[:batch]})[0]
        assert out.shape == (batch, 10), out.shape
        np.testing.assert_allclose(out, probs[:batch], rtol=1e-4, atol=1e-6)
        print(f"batch {batch}: ok, output shape {list(out.shape)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=15, help="training epochs (default 15)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="ONNX file to write (default %(default)s)")
    ap.add_argument("--data", default=DEFAULT_DATA,
                    help="folder with mnist_train4000.npz (default %(default)s)")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    x_train, y_train = load_split(args.data, "mnist_train4000")
    x_test, y_test = load_split(DEMO, "mnist_test1000")

    model = build_model()
    t0 = time.perf_counter()
    train(model, x_train, y_train, args.epochs, args.seed)
    print(f"training took {time.perf_counter() - t0:.1f} s")
    print(f"torch test accuracy: {torch_accuracy(model, x_test, y_test):.4f}")

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    export(model, args.out)
    with torch.no_grad():
        torch_probs = model(torch.from_numpy(x_test)).numpy()
    check_onnx(args.out, x_test, y_test, torch_probs)


if __name__ == "__main__":
    main()
