"""Structure-aware fuzzing (hypothesis): mutated models compile and run correctly, or raise a
``LeptonError``; nothing crashes, hangs or raises another exception type. See ``fuzzing.py``.

CI runs ``FUZZ_EXAMPLES`` deterministic cases (``derandomize=True``: the same cases on every run),
and ``QUANT_FUZZ_EXAMPLES`` (100) on each quantized seed (a QDQ conv + gemm model and a QOperator
QLinearConv + QLinearMatMul one, built by hand in ``fuzzing.py``), whose mutations mostly hit the
scales, zero points, int8 weights and int32 biases (``LEPTON_QUANT_FUZZ_EXAMPLES`` for more).
For a longer run::

    LEPTON_FUZZ_EXAMPLES=5000 python3 -m pytest -q tests/test_fuzz.py -s    # prints the outcome counts
    LEPTON_FUZZ_SEED=7 LEPTON_FUZZ_EXAMPLES=5000 ...                        # other (random) cases

Every case runs in a worker process, so a segfault in native code fails the case (with the signal)
instead of killing pytest; a failing case prints the seed model, the mutations and where its bytes
were saved, to be turned into a regression test (see ``test_robustness.py``).
"""

from __future__ import annotations

import collections
import os
import tempfile

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from fuzzing import CRASH_PROBE, HANG_PROBE, QUANTIZED_SEEDS, Chooser, Worker, mutate  # noqa: E402

FUZZ_EXAMPLES = int(os.environ.get("LEPTON_FUZZ_EXAMPLES", "300"))
QUANT_FUZZ_EXAMPLES = int(os.environ.get("LEPTON_QUANT_FUZZ_EXAMPLES", "100"))
"""Cases per quantized seed model (QDQ, QOperator)."""
FUZZ_SEED = os.environ.get("LEPTON_FUZZ_SEED")
OUTCOMES: collections.Counter = collections.Counter()


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


def _settings():
    base = dict(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))
    return settings(derandomize=FUZZ_SEED is None, **base)


def _with_seed(test):
    return hypothesis.seed(int(FUZZ_SEED))(test) if FUZZ_SEED is not None else test


@_with_seed
@_settings()
@given(data=st.data())
def test_mutated_models_compile_and_agree_or_raise_lepton_errors(worker, data):
    _check_case(worker, data, None, OUTCOMES)


def _check_case(worker, data, seeds, outcomes, levels=(0, 3)):
    chooser = Chooser.from_hypothesis(data)
    seed, model_bytes, done = mutate(chooser, seeds)
    opt_level = data.draw(st.sampled_from(list(levels)), label="opt level")
    result = worker.run(model_bytes, opt_level, seed=len(model_bytes))
    outcomes["cases"] += 1
    outcomes[result["outcome"]] += 1
    if result["outcome"] == "refused":
        outcomes["refused: " + result["error"]] += 1
    for run in result.get("runs", []):
        outcomes["run: " + run.split(":")[0]] += 1
    if result["outcome"] == "fail":
        fd, path = tempfile.mkstemp(prefix="lepton-fuzz-", suffix=".onnx")
        with os.fdopen(fd, "wb") as f:
            f.write(model_bytes)
        pytest.fail(f"seed model '{seed}', opt level {opt_level}, mutations {done}; bytes saved to {path}\n"
                    f"{result['why']}")


QUANT_OUTCOMES: dict[str, collections.Counter] = {name: collections.Counter() for name in QUANTIZED_SEEDS}


@pytest.mark.parametrize("seed_name", sorted(QUANTIZED_SEEDS))
def test_mutated_quantized_models_compile_and_agree_or_raise_lepton_errors(worker, seed_name):
    """The same on the quantized seeds (QDQ and QOperator), QUANT_FUZZ_EXAMPLES each, so that the
    mutations reach the int8 import, the quantization passes and the int8 kernels."""
    @_with_seed
    @settings(max_examples=QUANT_FUZZ_EXAMPLES, deadline=None, database=None, print_blob=True,
              suppress_health_check=list(HealthCheck), derandomize=FUZZ_SEED is None)
    @given(data=st.data())
    def run(data):
        # QLinearConv / QLinearMatMul have CPU kernels only as QConv / QGemm (-O2 and up)
        _check_case(worker, data, [seed_name], QUANT_OUTCOMES[seed_name], (2, 3) if seed_name == "qoperator" else (0, 3))
    run()
    outcomes = QUANT_OUTCOMES[seed_name]
    print(f"\nfuzz outcomes ({seed_name}):", dict(sorted(outcomes.items())))
    assert outcomes["fail"] == 0
    assert outcomes["run: agrees"] >= outcomes["cases"] // 5, dict(outcomes)


def test_fuzzing_reached_native_code():
    """The run above is not all early refusals: a good share compiled and ran against the reference."""
    if not OUTCOMES["cases"]:
        pytest.skip("the fuzz test did not run in this session")
    print("\nfuzz outcomes:", dict(sorted(OUTCOMES.items())))
    assert OUTCOMES["fail"] == 0
    assert OUTCOMES["compiled"] >= OUTCOMES["cases"] // 10, dict(OUTCOMES)
    assert OUTCOMES["run: agrees"] >= OUTCOMES["cases"] // 10, dict(OUTCOMES)


# -- the harness itself ---------------------------------------------------------------------------
@pytest.fixture
def fresh_worker():
    """A worker of its own (killing one that has compiled leaks its semaphores, with a warning)."""
    w = Worker()
    yield w
    w.close()


def test_worker_reports_a_crash_and_recovers(fresh_worker):
    result = fresh_worker.run(CRASH_PROBE)
    assert result["outcome"] == "fail"
    assert "exit code -11" in result["why"]
    assert fresh_worker.run(b"not onnx")["outcome"] == "refused"


def test_worker_reports_a_hang_and_recovers(fresh_worker):
    result = fresh_worker.run(HANG_PROBE, timeout=2)
    assert result["outcome"] == "fail" and "hang" in result["why"]
    assert fresh_worker.run(b"not onnx")["outcome"] == "refused"
