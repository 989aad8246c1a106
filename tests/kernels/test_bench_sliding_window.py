"""The sliding-window benchmark's CPU smoke run (``python -m kernels.bench sliding-window --cpu-smoke``): the script
runs end to end on tiny shapes, its outputs are checked, and its model of the bytes our kernels move equals the bytes
the interpreter saw them load."""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from kernels.attention.common import interpreting  # noqa: E402
from kernels.bench import __main__ as bench_main  # noqa: E402
from kernels.bench.run import BLOCK, RUN  # noqa: E402
from kernels.bench.sliding_window import sw_decode_bytes, sw_prefill_bytes  # noqa: E402


@pytest.mark.skipif(not interpreting(), reason="the smoke run is for the CPU interpreter")
def test_sliding_window_bench_cpu_smoke(tmp_path, monkeypatch):
    for field in ("dev", "dtype", "smoke"):  # --cpu-smoke switches the shared run settings; put them back after
        monkeypatch.setattr(RUN, field, getattr(RUN, field))
    bench_main.main(["sliding-window", "--cpu-smoke", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "sliding_window.json").read_text())
    assert (tmp_path / "sliding_window.md").read_text().startswith("# Sliding-window attention benchmark")
    cases = result["decode"] + result["prefill"]
    assert len(result["decode"]) == 2 and len(result["prefill"]) == 2
    for r in cases:
        assert "ms" in r, r
        assert not r["ours_nan"], r["case"]
        assert r["ours_max_abs_err_vs_ref"] < 1e-2, r["case"]
        assert r["bytes_counted_interpreter"]["kv_rows"] == r["bytes_model"]["window_kv"], r["case"]
        assert r["kv_bytes_moved_vs_window"] < 1.05, r["case"]
        assert "flex" in r["ms"] and r["max_abs_diff"]["flex"] < 1e-2, r["case"]
    for t in result["targets"]:
        if "speed" not in t["target"]:  # the smoke run's times mean nothing
            assert t["met"], t


def test_byte_models_by_hand():
    # decode: 2 sequences of 40 and 5 tokens, window 12: 12 + 5 keys; blocks 1..2 (positions 28..39) and block 0
    m = sw_decode_bytes([40, 5], 12, hq=4, hkv=2, esize=2, splits=1)
    assert m["window_kv"] == (12 + 5) * 2 * 128 * 2 * 2
    assert m["block_table"] == 4 * (_blocks(28, 40) + 1) and m["partials"] == 0
    assert sw_decode_bytes([40, 5], 12, 4, 2, 2, splits=3)["partials"] == 2 * 4 * 3 * 129 * 4 * 2
    # prefill: ctx 45, 20 new, window 16: keys from 30 on (35 of them); 32-row tiles: one tile sees 30..64
    p = sw_prefill_bytes(2, 45, 20, 16, hq=4, hkv=2, esize=2, block_m=32)
    assert p["window_kv"] == 2 * 35 * 2 * 128 * 2 * 2
    assert p["kv_issued"] == 2 * 4 * 35 * 128 * 2 * 2


def _blocks(start, end):
    return (end - 1) // BLOCK - start // BLOCK + 1
