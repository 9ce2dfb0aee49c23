"""Every vector width the kernels are emitted for, compiled explicitly with --mcpu and run here
(where the host has the features): 512-bit (x86-64-v4), 256-bit (x86-64-v3), 128-bit (x86-64-v2)."""

import re

import numpy as np
import onnxruntime as ort
import pytest

import lepton_compiler as lc
from lepton_compiler.backends.llvm.target import X86_LEVELS, host_target, named_target
from lepton_compiler.demo import bundled_model_path, mnist_test_images

HOST = set(host_target().features)
LEVELS = {"x86-64-v4": ("zmm", 512), "x86-64-v3": ("ymm", 256), "x86-64-v2": ("xmm", 128)}


def runnable(level: str) -> bool:
    return host_target().triple.startswith("x86_64") and X86_LEVELS[level] <= HOST


@pytest.fixture(scope="module")
def reference():
    x = mnist_test_images()[0][:64]
    session = ort.InferenceSession(bundled_model_path(), providers=["CPUExecutionProvider"])
    return x, session.run(None, {"input": x})[0]


@pytest.mark.parametrize("level", list(LEVELS))
def test_mnist_on_each_vector_width(level, reference):
    if not runnable(level):
        pytest.skip(f"this host cannot run {level} code")  # the code is still generated below
    x, expected = reference
    model = lc.compile(bundled_model_path(), mcpu=level)
    assert model.target.vector_bits() == LEVELS[level][1]
    np.testing.assert_allclose(model.run(None, {"input": x})[0], expected, rtol=1e-5, atol=1e-5)
    for batch in (1, 7):
        np.testing.assert_allclose(model(x[:batch]), expected[:batch], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("level", list(LEVELS))
def test_hot_loop_uses_the_widest_registers(level):
    register, _ = LEVELS[level]
    asm = lc.compile(bundled_model_path(), mcpu=level).assembly()
    fmas = re.findall(r"vfmadd\d+ps\s+%(\w+)", asm) if level != "x86-64-v2" else re.findall(r"mulps\s+%(\w+)", asm)
    assert fmas, f"no vector multiply-adds for {level}"
    assert any(reg.startswith(register) for reg in fmas)
    if level != "x86-64-v4":
        assert "zmm" not in asm  # nothing wider than the level allows


def test_named_cpu_levels_have_the_right_widths():
    assert [named_target(level).vector_bits() for level in LEVELS] == [512, 256, 128]
