"""Write the bundled MNIST test digits as raw files a C program can read without any library.

    python3 make_raw.py [-o DIR] [--count N]

writes DIR/mnist_images.f32 (float32 [N, 1, 28, 28], little-endian, scaled to [0, 1] exactly as
``lepton demo`` and the training script scale them: x / 255) and DIR/mnist_labels.u8 (N bytes).
The images are the 1000 MNIST test digits in lepton_compiler/demo/mnist_test1000.npz.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
IN_REPOSITORY = os.path.join(HERE, "..", "..", "lepton_compiler", "demo", "mnist_test1000.npz")


def data_path() -> str:
    """The .npz in this checkout, or else in the installed lepton_compiler package."""
    if os.path.exists(IN_REPOSITORY):
        return IN_REPOSITORY
    import lepton_compiler.demo
    return os.path.join(os.path.dirname(lepton_compiler.demo.__file__), "mnist_test1000.npz")


def load(count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The images (float32 [N, 1, 28, 28]) and labels (uint8 [N]) the raw files hold."""
    with np.load(data_path(), allow_pickle=False) as data:
        x, y = data["x"], data["y"]
    if count is not None:
        x, y = x[:count], y[:count]
    return x.astype(np.float32) / np.float32(255.0), y.astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output-dir", default=".", help="directory to write the files to")
    parser.add_argument("--count", type=int, help="only the first COUNT images")
    args = parser.parse_args()
    x, y = load(args.count)
    os.makedirs(args.output_dir, exist_ok=True)
    x.astype("<f4").tofile(os.path.join(args.output_dir, "mnist_images.f32"))
    y.tofile(os.path.join(args.output_dir, "mnist_labels.u8"))
    print(f"wrote {len(y)} images to {os.path.join(args.output_dir, 'mnist_images.f32')} "
          f"and their labels to {os.path.join(args.output_dir, 'mnist_labels.u8')}")


if __name__ == "__main__":
    main()
