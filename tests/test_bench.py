"""The benchmark's arithmetic (not its timings: speed is never asserted in tests)."""

import lepton_compiler as lc
from lepton_compiler.bench import BenchRow, format_table, macs_per_image
from lepton_compiler.demo import bundled_model_path


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
