"""``lepton demo``: the bundled MNIST CNN compiled, run on 1000 test images, compared with ONNX Runtime,
then quantized to int8 (calibrated on 200 bundled training images) and compared again.

The model was trained by ``examples/mnist/train.py``; the images are MNIST digits (see
``examples/mnist/data/README.md`` for provenance and license): ``mnist_test1000.npz`` the test
images, ``mnist_calib200.npz`` the first 200 images of ``examples/mnist/data/mnist_train4000.npz``.
"""

from __future__ import annotations

import os
import time
from typing import TextIO

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CALIBRATION_METHOD = "minmax"


def bundled_model_path() -> str:
    return os.path.join(HERE, "mnist_cnn.onnx")


def _images(name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(os.path.join(HERE, name), allow_pickle=False) as data:
        return data["x"].astype(np.float32) / 255.0, data["y"]


def mnist_test_images() -> tuple[np.ndarray, np.ndarray]:
    """The 1000 test images as float32 [1000, 1, 28, 28] in [0, 1], and their labels."""
    return _images("mnist_test1000.npz")


def calibration_images() -> tuple[np.ndarray, np.ndarray]:
    """The 200 bundled training images (int8 calibration) as float32 [200, 1, 28, 28] in [0, 1], and
    their labels; the bundled model's calibration data is ``{"input": calibration_images()[0]}``."""
    return _images("mnist_calib200.npz")


def run_demo(out: TextIO) -> dict:
    from ..api import compile
    from ..bench import interleaved_medians, ort_session

    path = bundled_model_path()
    x, labels = mnist_test_images()
    start = time.perf_counter()
    model = compile(path, threads=1)  # "one thread each", as the table says
    compile_s = time.perf_counter() - start
    name = model.inputs[0].name
    calibration = {name: calibration_images()[0]}
    start = time.perf_counter()
    int8 = compile(path, threads=1, quantize="int8", calibration=calibration, calibration_method=CALIBRATION_METHOD)
    int8_compile_s = time.perf_counter() - start
    with open(path, "rb") as f:
        session = ort_session(f.read(), threads=1)
    ours = model.run(None, {name: x})[0]
    theirs = session.run(None, {name: x})[0]
    quantized = int8.run(None, {name: x})[0]
    result = {
        "lepton_accuracy": float((ours.argmax(1) == labels).mean()),
        "ort_accuracy": float((theirs.argmax(1) == labels).mean()),
        "argmax_agreement": int((ours.argmax(1) == theirs.argmax(1)).sum()),
        "max_abs_diff": float(np.abs(ours - theirs).max()),
        "int8_accuracy": float((quantized.argmax(1) == labels).mean()),
        "int8_agreement": int((quantized.argmax(1) == ours.argmax(1)).sum()),
    }
    print(f"model      bundled MNIST CNN, {os.path.basename(path)}  ({model.inputs[0]} -> {model.outputs[0]})", file=out)
    print(f"compiled   in {compile_s:.2f} s for {model.target.cpu} ({model.target.vector_bits()}-bit vectors); "
          f"int8 in {int8_compile_s:.2f} s ({CALIBRATION_METHOD} calibration on {len(calibration[name])} "
          "training images)", file=out)
    print(f"images     {len(x)} MNIST test digits", file=out)
    print(f"accuracy   lepton {result['lepton_accuracy']:.1%}   ONNX Runtime {result['ort_accuracy']:.1%}   "
          f"lepton int8 {result['int8_accuracy']:.1%}", file=out)
    print(f"agreement  argmax {result['argmax_agreement']}/{len(x)}, max abs difference "
          f"{result['max_abs_diff']:.2e}; int8 vs lepton fp32: argmax {result['int8_agreement']}/{len(x)}", file=out)
    print("time per image, µs (medians of 9 interleaved rounds, one thread each):", file=out)
    print("              lepton  lepton int8  ONNX Runtime  ORT/lepton  ORT/int8", file=out)
    for batch in (1, 64):
        feed = {name: x[:batch]}
        fp32_s, int8_s, ort_s = (s / batch for s in interleaved_medians(
            [lambda: model.run(None, feed), lambda: int8.run(None, feed), lambda: session.run(None, feed)], 0.9))
        result[f"batch{batch}"] = (fp32_s, ort_s)
        result[f"batch{batch}_int8"] = int8_s
        print(f"  batch {batch:>2}  {fp32_s * 1e6:8.1f}  {int8_s * 1e6:11.1f}  {ort_s * 1e6:12.1f}  "
              f"{ort_s / fp32_s:9.2f}x  {ort_s / int8_s:7.2f}x", file=out)
    return result
