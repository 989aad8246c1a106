"""The sliding-window benchmark's CPU smoke run (``python -m kernels.bench sliding-window --cpu-smoke``): the script
runs end to end on tiny shapes, fp8-KV cases included, its outputs are checked, and its model of the bytes our kernels
move equals the bytes the interpreter saw them load."""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from kernels.attention.common import interpreting  # noqa: E402
from kernels.bench import __main__ as bench_main  # noqa: E402
from kernels.bench.cases import sliding_window_fp8_decode_cases, sliding_window_fp8_prefill_cases  # noqa: E402
from kernels.bench.run import BLOCK, RUN  # noqa: E402
from kernels.bench.sliding_window import FP8_SCALES  # noqa: E402
from kernels.bench.sliding_window_bytes import sw_decode_bytes, sw_prefill_bytes  # noqa: E402
from kernels.bench.sliding_window_report import TARGET_MIN_BYTES, evaluate_targets, write_markdown  # noqa: E402


@pytest.mark.skipif(not interpreting(), reason="the smoke run is for the CPU interpreter")
def test_sliding_window_bench_cpu_smoke(tmp_path, monkeypatch):
    for field in ("dev", "dtype", "smoke"):  # --cpu-smoke switches the shared run settings; put them back after
        monkeypatch.setattr(RUN, field, getattr(RUN, field))
    bench_main.main(["sliding-window", "--cpu-smoke", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "sliding_window.json").read_text())
    assert (tmp_path / "sliding_window.md").read_text().startswith("# Sliding-window attention benchmark")
    cases = result["decode"] + result["prefill"]
    assert len(result["decode"]) == 3 and len(result["prefill"]) == 3
    fp8 = [r for r in cases if r["kv_dtype"] == "float8_e4m3fn"]
    assert [r["case"] for r in fp8] == ["swd fp8 gqa b3 ctx40 W12", "swp fp8 chunked gqa 2x20 ctx45 W16"]
    # the window's fp8 K/V, one byte per element (the interpreter's count equals it, below): decode 3 x 12 keys
    # (lengths 40, 40, 37, window 12), prefill 2 x 35 keys (context 45 + 20 new, window 16: keys 30..64)
    assert [r["bytes_model"]["window_kv"] for r in fp8] == [36 * 2 * 128 * 1 * 2, 2 * 35 * 2 * 128 * 1 * 2]
    for r in fp8:
        assert (r["k_scale"], r["v_scale"]) == FP8_SCALES
        # the baselines read the dequantized values, so they agree with ours as closely as in fp16
        assert max(r["max_abs_diff"].values()) < 1e-2, r["case"]
    assert "fp8 cases: ours reads float8_e4m3fn" in (tmp_path / "sliding_window.md").read_text()
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


def test_fp8_byte_models_by_hand():
    # decode, fp8 cache and bf16 q: K/V rows one byte per element, q and the output still two
    m = sw_decode_bytes([40, 5], 12, hq=4, hkv=2, esize=2, splits=3, kv_esize=1)
    assert m["window_kv"] == m["kv_rows"] == (12 + 5) * 2 * 128 * 1 * 2
    assert m["q_out"] == 2 * 4 * 128 * 2 * 2
    assert m["partials"] == 2 * 4 * 3 * 129 * 4 * 2  # fp32 partials, whatever the cache holds
    p = sw_prefill_bytes(2, 45, 20, 16, hq=4, hkv=2, esize=2, block_m=32, kv_esize=1)
    assert p["window_kv"] == 2 * 35 * 2 * 128 * 1 * 2 and p["kv_issued"] == 2 * 4 * 35 * 128 * 1 * 2
    assert p["q_out"] == 2 * 20 * 4 * 128 * 2 * 2


def test_fp8_cases_reach_the_targets_threshold_in_fp8_bytes():
    """Every full-run fp8 case reads at least 1 GB of fp8 window K/V (so the targets apply to it) while its bf16
    copy and cache fit the benchmark's memory cap; --quick keeps one decode and the prefill case."""
    from kernels.bench.run import HEAD, MAX_BYTES

    for name, batch, hq, hkv, lens, window in sliding_window_fp8_decode_cases(False):
        assert sw_decode_bytes(lens, window, hq, hkv, 2, 1, kv_esize=1)["window_kv"] >= TARGET_MIN_BYTES, name
        lmax = -(-max(lens) // BLOCK) * BLOCK
        assert 2 * batch * lmax * hkv * HEAD * 2 * 2 <= MAX_BYTES, name
    for name, batch, hq, hkv, ctx, new, window in sliding_window_fp8_prefill_cases(False):
        assert sw_prefill_bytes(batch, ctx, new, window, hq, hkv, 2, 64, kv_esize=1)["window_kv"] >= TARGET_MIN_BYTES
        assert 2 * batch * -(-(ctx + new) // BLOCK) * BLOCK * hkv * HEAD * 2 * 2 <= MAX_BYTES, name
    assert len(sliding_window_fp8_decode_cases(True)) == 1 and len(sliding_window_fp8_prefill_cases(True)) == 1


def test_report_marks_fp8_cases(tmp_path):
    """The targets use an fp8 case's window bytes as recorded (fp8), and the report explains what the baselines
    read."""
    rec = {
        "case": "decode fp8 x",
        "kv_dtype": "float8_e4m3fn",
        "ms": {"ours": 1.0, "flex": 1.1},
        "bytes_model": {"window_kv": 1.07e9},
        "window_kv_gb": 1.07,
        "frac_of_copy": {"ours": 0.5},
        "ours_speed_vs_fastest_alternative": 1.1,
        "kv_bytes_moved_vs_window": 1.004,
        "ours_nan": False,
    }
    small = dict(rec, case="decode fp8 small", bytes_model={"window_kv": 0.6e9})
    result = {"env": {"torch": "t", "triton": "t"}, "decode": [rec, small], "prefill": []}
    tg = evaluate_targets(result)
    assert {t["case"] for t in tg if "speed" in t["target"]} == {"decode fp8 x"}  # 0.6 GB of fp8: below 1 GB
    assert all(t["met"] for t in tg)
    result["targets"] = tg
    write_markdown(result, tmp_path / "r.md")
    assert "have no fp8 K/V input" in (tmp_path / "r.md").read_text()


def _blocks(start, end):
    return (end - 1) // BLOCK - start // BLOCK + 1
