"""``lepton demo``: the bundled MNIST CNN compiled, run on 1000 test images, compared with ONNX Runtime.

The model was trained by ``examples/mnist/train.py``; the images are MNIST test
digits (see ``examples/mnist/data/README.md`` for provenance and license).
"""

from __future__ import annotations

import os
import time
from typing import TextIO

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def bundled_model_path() -> str:
    return os.path.join(HERE, "mnist_cnn.onnx")


def mnist_test_images() -> tuple[np.ndarray, np.ndarray]:
    """The 1000 test images as float32 [1000, 1, 28, 28] in [0, 1], and their labels."""
    with np.load(os.path.join(HERE, "mnist_test1000.npz"), allow_pickle=False) as data:
        return data["x"].astype(np.float32) / 255.0, data["y"]


def run_demo(out: TextIO) -> dict:
    from ..api import compile
    from ..bench import median_seconds, ort_session

    path = bundled_model_path()
    x, labels = mnist_test_images()
    start = time.perf_counter()
    model = compile(path, threads=1)  # "one thread each", as the table says
    compile_s = time.perf_counter() - start
    with open(path, "rb") as f:
        session = ort_session(f.read(), threads=1)
    name = model.inputs[0].name
    ours = model.run(None, {name: x})[0]
    theirs = session.run(None, {name: x})[0]
    result = {
        "lepton_accuracy": float((ours.argmax(1) == labels).mean()),
        "ort_accuracy": float((theirs.argmax(1) == labels).mean()),
        "argmax_agreement": int((ours.argmax(1) == theirs.argmax(1)).sum()),
        "max_abs_diff": float(np.abs(ours - theirs).max()),
    }
    print(f"model      bundled MNIST CNN, {os.path.basename(path)}  ({model.inputs[0]} -> {model.outputs[0]})", file=out)
    print(f"compiled   in {compile_s:.2f} s for {model.target.cpu} ({model.target.vector_bits()}-bit vectors)",
          file=out)
    print(f"images     {len(x)} MNIST test digits", file=out)
    print(f"accuracy   lepton {result['lepton_accuracy']:.1%}   ONNX Runtime {result['ort_accuracy']:.1%}", file=out)
    print(f"agreement  argmax {result['argmax_agreement']}/{len(x)}, max abs difference "
          f"{result['max_abs_diff']:.2e}", file=out)
    print("time per image (median, one thread each):", file=out)
    for batch in (1, 64):
        feed = {name: x[:batch]}
        ours_s = median_seconds(lambda: model.run(None, feed)) / batch
        theirs_s = median_seconds(lambda: session.run(None, feed)) / batch
        result[f"batch{batch}"] = (ours_s, theirs_s)
        print(f"  batch {batch:>2}   lepton {ours_s * 1e6:8.1f} µs   ONNX Runtime {theirs_s * 1e6:8.1f} µs   "
              f"(ORT/lepton {theirs_s / ours_s:.2f}x)", file=out)
    return result
