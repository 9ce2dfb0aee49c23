"""Calibration: observers and methods on known distributions, batch-size independence, and the
checks on calibration data."""

import math

import numpy as np
import pytest

import lepton_compiler as lc
from lepton_compiler.errors import InputError
from lepton_compiler.quantize.calibration import (Calibration, Histogram, calibrate, entropy_threshold, input_specs,
                                                  load_calibration)
from lepton_compiler.quantize.rewrite import observed_values
from quantize_testing import small_cnn, small_data


def observed(chunks) -> Histogram:
    h = Histogram()
    for c in chunks:
        h.update(c)
    return h


# -- methods on known distributions -------------------------------------------------------------
def test_minmax_is_exact():
    x = np.random.default_rng(0).normal(3, 2, 10_000).astype(np.float32)
    assert observed([x]).range("minmax") == (float(x.min()), float(x.max()))


def test_histogram_counts_equal_direct_binning():
    x = np.random.default_rng(1).normal(0, 5, 50_000).astype(np.float32)
    h = observed(np.array_split(x, 13))
    w = h.width
    assert float(np.abs(x).max()) < h.bins * w <= 2 * float(np.abs(x).max())   # as narrow as fits
    idx = np.floor(np.abs(x.astype(np.float64)) / w).astype(np.int64)
    assert np.array_equal(h.pos, np.bincount(idx[x > 0], minlength=h.bins))
    assert np.array_equal(h.neg, np.bincount(idx[x < 0], minlength=h.bins))
    assert h.zeros == int((x == 0).sum()) and h.count == x.size


def test_percentile_of_a_known_sample():
    x = np.arange(1, 10_001, dtype=np.float32)         # 1 .. 10000, uniform
    h = observed([x])
    lo, hi = h.range("percentile", 99.0)                # 0.5 % off each end
    lo_ref, hi_ref = np.percentile(x, [0.5, 99.5])
    assert abs(lo - lo_ref) <= h.width and abs(hi - hi_ref) <= h.width
    assert h.range("percentile", 100.0) == (1.0, 10_000.0)


def test_percentile_cuts_rare_outliers():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.uniform(-1, 1, 1_000_000), [400.0, -300.0]]).astype(np.float32)
    lo, hi = observed([x]).range("percentile", 99.99)
    assert -1.25 < lo < -0.99 and 0.99 < hi < 1.25


def test_entropy_threshold_of_a_gaussian_with_outliers():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(200_000).astype(np.float32)
    x[:20], x[20:40] = 50.0, -50.0                      # outliers
    h = observed([x])
    lo, hi = h.range("entropy")
    assert h.range("minmax") == (-50.0, 50.0)
    assert lo == -hi                                    # signed: a symmetric threshold
    assert 2.5 < hi < 10.0                              # keeps the bulk, clips far inside the outliers
    relu = observed([np.maximum(x, 0)])
    lo, hi = relu.range("entropy")
    assert lo == 0.0 and 2.5 < hi < 10.0                # non-negative: [0, t]


def test_entropy_keeps_everything_when_the_histogram_is_narrow():
    hist = np.zeros(2048, np.int64)
    hist[:100] = 5
    assert entropy_threshold(hist, 128) == 100


def test_unknown_method_and_only_zeros():
    h = observed([np.zeros(10, np.float32)])
    assert h.range("entropy") == (0.0, 0.0) and h.range("percentile") == (0.0, 0.0)
    with pytest.raises(lc.LeptonError, match="unknown calibration method 'kl'; use one of minmax, percentile, entropy"):
        h.range("kl")


# -- batch-size independence -------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_observer_is_independent_of_batching(method):
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(0, 1, 30_000), rng.normal(0, 40, 50)]).astype(np.float32)
    whole = observed([x])
    for pieces in (1000, 7, 1):
        chunks = np.array_split(x, pieces) if pieces > 1 else [x]
        assert observed(chunks).state() == whole.state()
        assert observed(chunks[::-1]).state() == whole.state()      # order does not matter either
    assert observed([x[:10]] + np.array_split(x[10:], 3)).range(method) == whole.range(method)


def test_calibration_is_independent_of_the_batches_the_data_came_in():
    graph = lc.optimize(small_cnn())
    x = small_data(40)
    names = observed_values(graph)
    results = []
    for data in ({"x": x}, [{"x": x[i:i + 1]} for i in range(40)], [{"x": c} for c in np.array_split(x, 6)]):
        feeds = load_calibration(data, input_specs(graph))
        results.append([calibrate(graph, feeds, names, m, batch_size=16).ranges for m in
                        ("minmax", "percentile", "entropy")])
    assert results[0] == results[1] == results[2]


def test_calibration_table_round_trips_through_json():
    graph = lc.optimize(small_cnn())
    feeds = load_calibration({"x": small_data(8)}, input_specs(graph))
    table = calibrate(graph, feeds, observed_values(graph), "percentile")
    again = Calibration.from_json(table.to_json())
    assert again.ranges == table.ranges and again.method == "percentile" and again.samples == 8
    assert all(math.isfinite(lo) and lo <= hi for lo, hi in table.ranges.values())


# -- bad data ------------------------------------------------------------------------------------
def _specs():
    return input_specs(lc.optimize(small_cnn()))


@pytest.mark.parametrize("data, message", [
    ({"image": small_data(2)}, "calibration data has an array 'image', which is not an input of the model "
                               "(its inputs: x)"),
    ({}, "calibration data has no array for the model input 'x'"),
    ({"x": small_data(2).astype(np.float64)}, "calibration input 'x' is float64; the model takes float32"),
    ({"x": small_data(2)[:, :, :4]}, "calibration input 'x' has shape [2, 3, 4, 8]; the model takes [N, 3, 8, 8]"),
    ({"x": small_data(2)[0]}, "calibration input 'x' has shape [3, 8, 8]; the model takes [N, 3, 8, 8]"),
    ({"x": small_data(0)}, "calibration data is empty: it holds no samples"),
    ([], "calibration data is empty: it holds no samples"),
    ({"x": [1.0, 2.0]}, "calibration input 'x' is a list, not a numpy array"),
    ([{"x": small_data(2)}, {"y": small_data(2)}], "calibration data has an array 'y', which is not an input of the "
                                                   "model (its inputs: x)"),
    ([small_data(2)], "calibration batch 0 is a ndarray, not a dict {input name: array}"),
    (small_data(2), "calibration= takes an .npz path, a dict {input name: array} or an iterable of feed dicts, "
                    "not ndarray"),
    (42, "calibration= takes an .npz path, a dict {input name: array} or an iterable of feed dicts, not int"),
])
def test_bad_calibration_data_is_refused(data, message):
    with pytest.raises(InputError) as info:
        load_calibration(data, _specs())
    assert str(info.value) == message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_infinity_are_refused(bad):
    x = small_data(5)
    x[3, 1, 2, 2] = bad
    with pytest.raises(InputError) as info:
        load_calibration([{"x": small_data(2)}, {"x": x}], _specs())
    assert str(info.value) == "calibration input 'x' (batch 1) holds NaN or infinity (sample 3)"


def test_npz_files(tmp_path):
    good, bad = tmp_path / "cal.npz", tmp_path / "missing.npz"
    x = small_data(6)
    np.savez(good, x=x)
    assert np.array_equal(load_calibration(str(good), _specs())["x"], x)
    with pytest.raises(InputError, match=r"^cannot read calibration data from '.*missing.npz': "):
        load_calibration(bad, _specs())


def test_inputs_with_different_sample_counts():
    from onnx import helper
    from conftest import make_model
    model = make_model([helper.make_node("Add", ["a", "b"], ["c"])], [("a", ["N", 4]), ("b", ["N", 4])],
                       [("c", ["N", 4])])
    specs = input_specs(lc.optimize(model))
    a, b = np.ones((3, 4), np.float32), np.ones((2, 4), np.float32)
    with pytest.raises(InputError) as info:
        load_calibration({"a": a, "b": b}, specs)
    assert str(info.value) == "calibration data: the inputs have different numbers of samples ({'a': 3, 'b': 2})"
