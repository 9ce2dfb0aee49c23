"""The benchmark's arithmetic, tables and worker processes (not its timings: speed is never
asserted in tests)."""

import operator
import os
import re
import time

import numpy as np
import pytest

import lepton_compiler as lc
from lepton_compiler.bench import BenchRow, WorkerPool, format_table, macs_per_image, ort_runner
from lepton_compiler.cli import main
from lepton_compiler.demo import bundled_model_path
from lepton_compiler.errors import LeptonError


def test_mnist_multiply_adds_per_image():
    # 26*26*32*9 + 11*11*64*32*9 + 3*3*64*64*9 + 576*64 + 64*10
    expected = 194_688 + 2_230_272 + 331_776 + 36_864 + 640
    assert expected == 2_794_240
    for level in (0, 3):  # fusion must not change the count
        assert macs_per_image(lc.optimize(bundled_model_path(), opt_level=level)) == expected


def test_row_figures():
    row = BenchRow(batch=64, threads=2, lepton_call_us=640.0, ort_call_us=960.0, macs_per_image=1_000_000,
                   peak_gflops=100.0)
    assert row.lepton_us == 10.0 and row.ort_us == 15.0 and row.ratio == 1.5
    assert row.gflops(640.0) == 200.0          # 2 * 1e6 * 64 flops in 640 µs
    assert row.peak_share(640.0) == 1.0        # 200 GFLOP/s of 2 cores x 100
    table = format_table([row])
    assert "| 64 | 2 | 640.0 | 10.0 | 200 | 100% | 960.0 | 15.0 | 133 | 1.50x |" in table


# -- timing in worker processes (the figures are not checked, only the table and the errors) ------------


def _rows(stdout):
    lines = stdout.splitlines()
    header = next(line for line in lines if line.startswith("|") and "batch" in line)
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if re.match(r"^\|\s*\d", line)]
    timing = [line for line in lines if line.startswith("timing: ")]
    return columns, rows, timing


def test_bench_isolated_rows_and_timing_line(capsys):
    assert main(["bench", "--batch", "1,2", "--threads", "1,2", "--min-time", "0.02", "--ort-spinning", "off"]) == 0
    columns, rows, timing = _rows(capsys.readouterr().out)
    assert columns[:2] == ["batch", "threads"] and "ORT/lepton" in columns
    assert [r[:2] for r in rows] == [["1", "1"], ["2", "1"], ["1", "2"], ["2", "2"]]
    for row in rows:
        assert len(row) == len(columns) and all(float(c.rstrip("%x")) > 0 for c in row)
    assert timing == ["timing: threads 1: one process, the engines' rounds interleaved (medians of 9 rounds); "
                      "threads 2: each engine in its own process, blocks alternating while the others wait idle "
                      "(medians of 9 blocks); ONNX Runtime intra-op spinning off"]


@pytest.mark.parametrize("mode, expected", [("always", "all rows: each engine in its own process"),
                                            ("never", "all rows: one process, the engines' rounds interleaved")])
def test_bench_isolate_modes(capsys, mode, expected):
    assert main(["bench", "--batch", "1", "--threads", "1", "--min-time", "0.02", "--isolate", mode]) == 0
    columns, rows, timing = _rows(capsys.readouterr().out)
    assert [r[:2] for r in rows] == [["1", "1"]] and len(rows[0]) == len(columns)
    assert len(timing) == 1 and timing[0].startswith(f"timing: {expected}")
    assert timing[0].endswith("ONNX Runtime intra-op spinning on (its default)")


def test_bench_int8_isolated(capsys):
    assert main(["bench", "--quantize", "int8", "--batch", "2", "--threads", "1,2", "--min-time", "0.02",
                 "--isolate", "always"]) == 0
    columns, rows, timing = _rows(capsys.readouterr().out)
    assert "lepton int8 µs/image" in columns and "ORT int8 µs/image" in columns
    assert [r[:2] for r in rows] == [["2", "1"], ["2", "2"]]
    assert all(len(r) == len(columns) and all(float(c.rstrip("x")) > 0 for c in r) for r in rows)
    assert len(timing) == 1 and timing[0].startswith("timing: all rows: each engine in its own process")


def _one_line_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_worker_refusing_the_model(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(LeptonError) as excinfo:
        WorkerPool([("ORT fp32", ort_runner, (str(bad), 2))], start_timeout=120)
    _one_line_error(excinfo, "the ORT fp32 worker process failed:", "ONNXRuntimeError")


def test_worker_that_exits_or_hangs():
    with pytest.raises(LeptonError) as excinfo:
        WorkerPool([("quitter", os._exit, (3,))], start_timeout=120)
    _one_line_error(excinfo, "the quitter worker process exited (code 3) during start")
    # a worker that never answers is ended after the timeout
    with pytest.raises(LeptonError) as excinfo:
        WorkerPool([("sleeper", time.sleep, (600,))], start_timeout=5)
    _one_line_error(excinfo, "the sleeper worker process did not answer within 5 s (start)")


def test_worker_failing_to_run():
    # a run function that fails on the feed, and a factory that returns no run function
    with WorkerPool([("picky", operator.itemgetter, ("y",))]) as pool:
        with pytest.raises(LeptonError) as excinfo:
            pool.medians({"x": np.zeros(2, np.float32)}, 0.01)
    _one_line_error(excinfo, "the picky worker process failed: KeyError: 'y'")
    with pytest.raises(LeptonError) as excinfo:
        WorkerPool([("number", int, (3,))], start_timeout=120)
    _one_line_error(excinfo, "the number worker process failed: TypeError: int returned int, not a run function")
