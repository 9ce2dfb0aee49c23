"""Threads inside generated code: the same bits on one thread, on two, and without libgomp."""

import numpy as np
import pytest

import lepton_compiler as lc
from lepton_compiler.demo import bundled_model_path, mnist_test_images
from lepton_compiler.runtime import model as runtime_model


@pytest.fixture(scope="module")
def images():
    return mnist_test_images()[0][:64]


@pytest.fixture(scope="module")
def sequential(images):
    return lc.compile(bundled_model_path(), threads=1).run(None, {"input": images})[0]


def test_libgomp_is_found_here():
    assert runtime_model.parallel_runtime() is not None


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_two_threads_give_the_same_bits(images, sequential, batch):
    model = lc.compile(bundled_model_path(), threads=2)
    assert model.threads == 2
    np.testing.assert_array_equal(model.run(None, {"input": images[:batch]})[0], sequential[:batch])


def test_without_libgomp_the_kernels_run_on_the_calling_thread(images, sequential, monkeypatch):
    monkeypatch.setattr(runtime_model, "parallel_runtime", lambda: None)
    model = lc.compile(bundled_model_path(), threads=2)
    np.testing.assert_array_equal(model.run(None, {"input": images})[0], sequential)


def test_threads_must_be_positive():
    with pytest.raises(lc.LeptonError, match="threads must be a positive int or None, not 0"):
        lc.compile(bundled_model_path(), threads=0)


def test_default_is_every_core_this_process_may_use():
    assert lc.compile(bundled_model_path()).threads == runtime_model.resolve_threads(None) >= 1
