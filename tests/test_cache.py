"""The compiled-code cache (LEPTON_CACHE_DIR): keyed by model, target, settings and lepton's source."""

import numpy as np
import pytest

import lepton_compiler as lc
from lepton_compiler import api
from lepton_compiler.demo import bundled_model_path, mnist_test_images
from lepton_compiler.runtime import cache


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LEPTON_CACHE_DIR", str(tmp_path))
    cache.clear_memory()
    yield tmp_path
    cache.clear_memory()


def count_calls(monkeypatch, module, name: str) -> list:
    """Patch ``module.name`` to note each call in the returned list."""
    calls = []
    real = getattr(module, name)

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


def count_compiles(monkeypatch) -> list:
    return count_calls(monkeypatch, api, "compile_graph")


def test_off_by_default(monkeypatch):
    monkeypatch.delenv("LEPTON_CACHE_DIR", raising=False)
    calls = count_compiles(monkeypatch)
    lc.compile(bundled_model_path())
    lc.compile(bundled_model_path())
    assert len(calls) == 2


def test_second_compile_is_a_hit_in_memory_and_on_disk(cache_dir, monkeypatch):
    calls = count_compiles(monkeypatch)
    first = lc.compile(bundled_model_path(), threads=1)
    assert lc.compile(bundled_model_path(), threads=1) is first
    assert len(calls) == 1 and len(list(cache_dir.glob("*.lepton"))) == 1
    cache.clear_memory()  # as a new process would start
    again = lc.compile(bundled_model_path(), threads=1)
    assert len(calls) == 1  # loaded from the folder, not compiled
    x = mnist_test_images()[0][:8]
    np.testing.assert_array_equal(again(x), first(x))


def test_settings_are_part_of_the_key(cache_dir, monkeypatch):
    calls = count_compiles(monkeypatch)
    lc.compile(bundled_model_path(), opt_level=3)
    lc.compile(bundled_model_path(), opt_level=1)
    lc.compile(bundled_model_path(), mcpu="x86-64-v3")
    assert len(calls) == 3


def test_a_damaged_entry_is_rebuilt(cache_dir, monkeypatch):
    lc.compile(bundled_model_path())
    (entry,) = cache_dir.glob("*.lepton")
    entry.write_bytes(b"not a zip")
    cache.clear_memory()
    calls = count_compiles(monkeypatch)
    model = lc.compile(bundled_model_path())
    assert len(calls) == 1 and model.outputs[0].name == "probabilities"


def test_the_key_covers_lepton_itself():
    a = cache.cache_key(b"model", {"cpu": "x"}, {"opt_level": 3})
    assert a == cache.cache_key(b"model", {"cpu": "x"}, {"opt_level": 3})
    assert a != cache.cache_key(b"model", {"cpu": "y"}, {"opt_level": 3})
    assert a != cache.cache_key(b"model", {"cpu": "x"}, {"opt_level": 2})
    assert len(cache.source_fingerprint()) == 64


# -- int8: the key adds the calibration data, the method and every quantization option ------------
def count_calibrations(monkeypatch) -> list:
    from lepton_compiler.quantize import driver
    return count_calls(monkeypatch, driver, "calibrate")


def calibration_data(n=32):
    from lepton_compiler.demo import calibration_images
    return {"input": calibration_images()[0][:n]}


def test_int8_hit_returns_the_same_code_without_calibrating(cache_dir, monkeypatch, tmp_path_factory):
    from lepton_compiler.quantize import driver
    calls, calibrations = count_compiles(monkeypatch), count_calibrations(monkeypatch)
    data = calibration_data()
    first = lc.compile(bundled_model_path(), quantize="int8", calibration=data, threads=1)
    assert len(calls) == 1 and len(calibrations) == 1 and len(list(cache_dir.glob("*.lepton"))) == 1
    assert lc.compile(bundled_model_path(), quantize="int8", calibration=data, threads=1) is first

    def no_calibration(*args, **kwargs):
        raise AssertionError("a cache hit must not calibrate")

    monkeypatch.setattr(driver, "calibrate", no_calibration)
    cache.clear_memory()  # as a new process would start
    # the same samples as an .npz path and as two batches: the same data, the same entry
    path = tmp_path_factory.mktemp("calibration") / "data.npz"
    np.savez(path, **data)
    again = lc.compile(bundled_model_path(), quantize="int8", calibration=str(path), threads=1)
    batched = lc.compile(bundled_model_path(), quantize="int8", threads=1,
                         calibration=[{"input": data["input"][:20]}, {"input": data["input"][20:]}])
    assert len(calls) == 1 and batched is again  # loaded from the folder once, then from memory
    x = mnist_test_images()[0][:64]
    np.testing.assert_array_equal(again(x), first(x))
    assert again.summary["quantization"] == first.summary["quantization"]
    # the loaded model gets its quantization back (from the stored table, with the data): report works
    assert [n.op for n in again.quantization.graph.nodes] == [n.op for n in first.quantization.graph.nodes]
    assert api.quantization_report(again).format() == api.quantization_report(first).format()


def test_int8_key_covers_data_method_and_options(cache_dir, monkeypatch):
    calibrations = count_calibrations(monkeypatch)
    data = calibration_data()
    changed = {"input": data["input"].copy()}
    changed["input"][5, 0, 14, 14] += 0.5
    fp32 = lc.compile(bundled_model_path())
    variants = [dict(calibration=data), dict(calibration=changed),
                dict(calibration={"input": data["input"][::-1].copy()}),   # same samples, other order
                dict(calibration=calibration_data(31)), dict(calibration=data, calibration_method="percentile"),
                dict(calibration=data, keep_fp32=["/fc2/Gemm"]), dict(calibration=data, max_error=10.0)]
    models = [lc.compile(bundled_model_path(), quantize="int8", **v) for v in variants]
    assert len(calibrations) == len(variants)  # every one a miss
    assert len({id(m) for m in models + [fp32]}) == len(variants) + 1
    assert len(list(cache_dir.glob("*.lepton"))) == len(variants) + 1
    for v, m in zip(variants, models):  # and every one a hit the second time
        assert lc.compile(bundled_model_path(), quantize="int8", **v) is m
    assert len(calibrations) == len(variants)


def test_arrays_digest():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    d = cache.arrays_digest([("x", a)])
    assert d == cache.arrays_digest([("x", a.copy())])
    assert d == cache.arrays_digest([("x", np.asfortranarray(a))])          # values, not memory layout
    assert d != cache.arrays_digest([("y", a)])                               # name
    assert d != cache.arrays_digest([("x", a.reshape(4, 3))])                 # shape
    assert d != cache.arrays_digest([("x", a.view(np.int32))])                # dtype, same bytes
    assert d != cache.arrays_digest([("x", a.astype(np.float64))])
    b = np.ones(2, np.float32)
    assert cache.arrays_digest([("x", a), ("b", b)]) != cache.arrays_digest([("b", b), ("x", a)])  # order
    assert len(cache.arrays_digest([("e", np.zeros((0, 3), np.float32))])) == 64
