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


def count_compiles(monkeypatch) -> list:
    calls = []
    real = api.compile_graph

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "compile_graph", counting)
    return calls


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
