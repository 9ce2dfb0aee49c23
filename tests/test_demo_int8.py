"""``lepton demo``'s int8 part: the bundled calibration images and the figures the demo prints."""

import io
import os
import re

import numpy as np

import lepton_compiler as lc
from lepton_compiler.demo import (CALIBRATION_METHOD, HERE, bundled_model_path, calibration_images,
                                  mnist_test_images, run_demo)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bundled_calibration_images_are_the_first_200_training_images():
    with np.load(os.path.join(HERE, "mnist_calib200.npz"), allow_pickle=False) as bundled, \
            np.load(os.path.join(ROOT, "examples", "mnist", "data", "mnist_train4000.npz")) as train:
        assert sorted(bundled.files) == ["x", "y"]
        assert bundled["x"].dtype == np.uint8 and bundled["x"].shape == (200, 1, 28, 28)
        np.testing.assert_array_equal(bundled["x"], train["x"][:200])
        np.testing.assert_array_equal(bundled["y"], train["y"][:200])
        assert bundled["y"].dtype == train["y"].dtype
    x, y = calibration_images()
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0 and len(y) == 200


def test_demo_prints_the_int8_figures_it_computed():
    out = io.StringIO()
    result = run_demo(out)
    text = out.getvalue()
    # the same int8 model, compiled here: the printed figures are the model's, not constants
    x, labels = mnist_test_images()
    fp32 = lc.compile(bundled_model_path(), threads=1)(x).argmax(1)
    int8 = lc.compile(bundled_model_path(), threads=1, quantize="int8", calibration={"input": calibration_images()[0]},
                      calibration_method=CALIBRATION_METHOD)(x).argmax(1)
    accuracy, agreement = float(np.mean(int8 == labels)), int(np.sum(int8 == fp32))
    assert result["int8_accuracy"] == accuracy and result["int8_agreement"] == agreement
    assert accuracy >= 0.96   # the goal: within 0.5 points of fp32 (96.9 %)
    assert abs(result["lepton_accuracy"] - accuracy) <= 0.005
    m = re.search(r"^accuracy .*lepton int8 ([\d.]+)%$", text, re.M)
    assert m and m.group(1) == f"{100 * accuracy:.1f}", text
    assert f"int8 vs lepton fp32: argmax {agreement}/1000" in text
    for batch in (1, 64):
        fp32_s, ort_s = result[f"batch{batch}"]
        int8_s = result[f"batch{batch}_int8"]
        row = re.search(rf"^  batch {batch:>2} +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+)x +([\d.]+)x$", text, re.M)
        assert row, text
        assert [float(v) for v in row.groups()[:3]] == [round(s * 1e6, 1) for s in (fp32_s, int8_s, ort_s)]
        assert float(row.group(5)) == round(ort_s / int8_s, 2)
