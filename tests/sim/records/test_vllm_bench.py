"""vllm-bench.json: vLLM's keys and units, and figures hand-computed on tiny records and a tiny replay."""

import csv
import json

import numpy as np
import pytest

from sim.cli.main import main
from sim.records.requests import RequestLog
from sim.records.vllm_bench import metric_keys, vllm_bench_metrics

# The keys `vllm bench serve --save-result` writes for a generative model with the default --percentile-metrics
# ("ttft,tpot,itl") and --metric-percentiles ("99"), plus e2el (vLLM writes it with --percentile-metrics
# ttft,tpot,itl,e2el). Source: vllm/benchmarks/serve.py at vllm-project/vllm commit
# 009e6d4a1cd6ba3fb2a9fc00f4ec06f5297232a1 -- `benchmark()`'s `result` dict (duration, completed, failed,
# total_input_tokens, total_output_tokens, request_throughput, request_goodput, output_throughput,
# total_token_throughput) and its `process_one_metric()` (mean_/median_/std_/p{P}_{metric}_ms), with the units of
# `calculate_metrics()` (`BenchmarkMetrics`): durations in s, rates per s, latencies x 1000 (ms).
VLLM_KEYS_AND_UNITS = {
    "duration": "s",
    "completed": "requests",
    "failed": "requests",
    "total_input_tokens": "tokens",
    "total_output_tokens": "tokens",
    "request_throughput": "req/s",
    "output_throughput": "tok/s",
    "total_token_throughput": "tok/s",
    **{
        f"{stat}_{metric}_ms": "ms"
        for metric in ("ttft", "tpot", "itl", "e2el")
        for stat in ("mean", "median", "std", "p99")
    },
}
GOODPUT_KEY = "request_goodput"  # req/s, only with --goodput SLOs


def test_keys_are_vllms():
    assert set(metric_keys()) == set(VLLM_KEYS_AND_UNITS)
    assert set(metric_keys(goodput=True)) == set(VLLM_KEYS_AND_UNITS) | {GOODPUT_KEY}
    assert "p99.9_itl_ms" in metric_keys((99.0, 99.9))  # vLLM's spelling of a fractional percentile


# Four iterations of 0.1, 0.2, 0.3, 0.4 s from t = 0: ends 0.1, 0.3, 0.6, 1.0. Iteration 1 preempted a sequence.
STEPS = {
    "time_s": np.array([0.0, 0.1, 0.3, 0.6]),
    "duration_s": np.array([0.1, 0.2, 0.3, 0.4]),
    "preempted": np.array([0, 1, 0, 0]),
}
NAN = float("nan")
# A: out 4, runs every iteration: tokens at 0.1 0.3 0.6 1.0 -> ITLs 0.2 0.3 0.4
# B: out 2, tokens at 0.3 0.6 -> ITL 0.3
# C: out 1, its only token at 0.6 -> no ITL, no TPOT
# D: rejected
# E: out 2, first token at 0.1, preempted in iteration 1, recomputed, second token at 1.0 -> one ITL of 0.9
REQUESTS = RequestLog(
    arrival_s=np.array([0.0, 0.1, 0.2, 0.3, 0.0]),
    prompt_tokens=np.array([10, 20, 30, 5000, 40]),
    output_tokens=np.array([4, 2, 1, 3, 2]),
    admitted_s=np.array([0.0, 0.1, 0.3, NAN, 0.0]),
    first_token_s=np.array([0.1, 0.3, 0.6, NAN, 0.1]),
    finish_s=np.array([1.0, 0.6, 0.6, NAN, 1.0]),
    preemptions=np.array([0, 0, 0, 0, 1]),
    rejection=[None, None, None, "too long", None],
    num_seqs=np.ones(5, dtype=np.int64),
)


def _ms_stats(values, name):
    v = np.array(values) * 1000
    return {
        f"mean_{name}_ms": np.mean(v),
        f"median_{name}_ms": np.median(v),
        f"std_{name}_ms": np.std(v),
        f"p99_{name}_ms": np.percentile(v, 99),
    }


def test_hand_computed_figures():
    got = vllm_bench_metrics(STEPS, REQUESTS, 1.0)
    expected = {
        "duration": 1.0,
        "completed": 4,
        "failed": 1,
        "total_input_tokens": 100,
        "total_output_tokens": 9,
        "request_throughput": 4.0,
        "output_throughput": 9.0,
        "total_token_throughput": 109.0,
        **_ms_stats([0.1, 0.2, 0.4, 0.1], "ttft"),
        **_ms_stats([0.3, 0.3, 0.9], "tpot"),
        **_ms_stats([0.2, 0.3, 0.4, 0.3, 0.9], "itl"),
        **_ms_stats([1.0, 0.5, 0.4, 1.0], "e2el"),
    }
    assert set(got) - {"kvsim"} == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    assert got["mean_itl_ms"] == pytest.approx(420.0)  # sum of gaps (finish - first token) / gaps
    assert got["median_itl_ms"] == pytest.approx(300.0)
    assert got["kvsim"]["itl"] == {
        **got["kvsim"]["itl"],
        "exact_requests": 2,
        "paused_requests": 0,
        "modelled_requests": 1,  # E: no pause recorded (records written by hand), so it is modelled
        "gaps": 5,
    }  # C has one token
    assert GOODPUT_KEY not in got


def test_recorded_pauses_give_exact_gaps():
    # Iteration ends 0.1 0.3 0.6 1.0, as above, and every request's first token at 0.1, its last at 1.0.
    # E (out 2): paused 0.1 -> 1.0, tokens at 0.1 and 1.0: one ITL of 0.9.
    # F (out 3): passed over in iteration 2 (paused 0.3 -> 1.0), tokens at 0.1, 0.3, 1.0: ITLs 0.2 and 0.7.
    # G (out 3): preempted in iteration 1 (paused 0.1 -> 0.6), tokens at 0.1, 0.6, 1.0: ITLs 0.5 and 0.4.
    log = RequestLog(
        arrival_s=np.array([0.0, 0.0, 0.0]),
        prompt_tokens=np.array([10, 10, 10]),
        output_tokens=np.array([2, 3, 3]),
        admitted_s=np.array([0.0, 0.0, 0.0]),
        first_token_s=np.array([0.1, 0.1, 0.1]),
        finish_s=np.array([1.0, 1.0, 1.0]),
        preemptions=np.array([1, 0, 1]),
        rejection=[None, None, None],
        num_seqs=np.ones(3, dtype=np.int64),
        pauses={0: [(0.1, 1.0)], 1: [(0.3, 1.0)], 2: [(0.1, 0.6)]},
    )
    got = vllm_bench_metrics(STEPS, log, 1.0)
    itls = [0.9, 0.2, 0.7, 0.5, 0.4]
    for key, value in _ms_stats(itls, "itl").items():
        assert got[key] == pytest.approx(value, rel=1e-12), key
    assert got["kvsim"]["itl"] == {**got["kvsim"]["itl"], "exact_requests": 3, "paused_requests": 3, "gaps": 5}
    assert got["kvsim"]["itl"]["modelled_requests"] == 0


def test_goodput_with_slos():
    # ttft <= 250 ms and tpot <= 500 ms: A (100, 300) and B (200, 300); C's TTFT is 400, E's TPOT 900
    got = vllm_bench_metrics(STEPS, REQUESTS, 1.0, goodput={"ttft": 250, "tpot": 500})
    assert got[GOODPUT_KEY] == pytest.approx(2.0)


def test_empty_sets_give_zero_as_vllm():
    only_c = RequestLog(
        arrival_s=np.array([0.2]),
        prompt_tokens=np.array([30]),
        output_tokens=np.array([1]),
        admitted_s=np.array([0.3]),
        first_token_s=np.array([0.6]),
        finish_s=np.array([0.6]),
        preemptions=np.array([0]),
        rejection=[None],
        num_seqs=np.ones(1, dtype=np.int64),
    )
    got = vllm_bench_metrics(STEPS, only_c, 0.4)
    assert got["mean_itl_ms"] == got["p99_itl_ms"] == got["mean_tpot_ms"] == 0.0
    assert got["mean_ttft_ms"] == pytest.approx(400.0)


TINY_MODEL = "layers=1,heads=1,kv_heads=1,head_size=16,params=1000,max_len=64"


def test_replay_writes_vllm_bench_json_hand_computed(tmp_path):
    """Two requests at t = 0 on a model so small that every iteration takes the 10 ms step overhead: both prefill
    in iteration 1 (first tokens at 10 ms), B's second token ends it at 20 ms, A's third at 30 ms."""
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0,4,3\n0,4,2\n")
    out = tmp_path / "run"
    argv = ["replay", str(trace), "-q", "--out", str(out), "--model", TINY_MODEL, "--kv-memory", "1MiB"]
    assert main([*argv, "--step-overhead", "10ms"]) == 0
    got = json.loads((out / "vllm-bench.json").read_text())
    assert (out / "summary.json").exists()
    approx = lambda v: pytest.approx(v, rel=1e-4)  # noqa: E731  (the roofline adds nanoseconds)
    assert got["completed"] == 2 and got["failed"] == 0
    assert got["duration"] == approx(0.030)
    assert got["total_input_tokens"] == 8 and got["total_output_tokens"] == 5
    assert got["request_throughput"] == approx(2 / 0.03)
    assert got["output_throughput"] == approx(5 / 0.03)
    assert got["total_token_throughput"] == approx(13 / 0.03)
    for stat in ("mean", "median", "p99"):
        assert got[f"{stat}_ttft_ms"] == approx(10.0)
        assert got[f"{stat}_tpot_ms"] == approx(10.0)
        assert got[f"{stat}_itl_ms"] == approx(10.0)
    assert got["mean_e2el_ms"] == approx(25.0)
    assert got["median_e2el_ms"] == approx(25.0)
    assert got["std_e2el_ms"] == approx(5.0)
    assert got["p99_e2el_ms"] == approx(20.0 + 0.99 * 10.0)
    assert got["kvsim"]["itl"]["gaps"] == 3 and got["kvsim"]["command"].startswith("sim replay")


def test_itl_consistent_with_requests_csv_under_preemption(tmp_path):
    """A replay that preempts: the mean ITL is sum(finish - first token) / sum(output tokens - 1) over the requests
    of requests.csv, and every request's gaps are exact (the pauses of the preempted ones are recorded)."""
    lines = ["arrival_s,prompt_tokens,output_tokens"] + [
        f"{i * 0.01:.2f},{200 + 37 * i},{60 + 13 * i}" for i in range(40)
    ]
    trace = tmp_path / "t.csv"
    trace.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    assert main(["replay", str(trace), "-q", "--out", str(out), "--kv-memory", "2GiB"]) == 0
    got = json.loads((out / "vllm-bench.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    rows = list(csv.DictReader((out / "requests.csv").open()))
    assert summary["requests"]["preemptions"] > 0  # the case this test is about
    spans = [(float(r["finish_s"]) - float(r["first_token_s"]), int(r["output_tokens"]) - 1) for r in rows]
    assert got["mean_itl_ms"] == pytest.approx(1000 * sum(s for s, _ in spans) / sum(n for _, n in spans))
    assert got["kvsim"]["itl"]["gaps"] == sum(n for _, n in spans)
    assert got["kvsim"]["itl"]["exact_requests"] == len(rows)  # every pause recorded: every gap exact
    # (vllm-v1 preempts some requests while their prompt is still being computed, before any token: no pause)
    assert 0 < got["kvsim"]["itl"]["paused_requests"] <= sum(1 for r in rows if r["preemptions"] != "0")
    assert got["completed"] == summary["requests"]["completed"]
    assert got["duration"] == summary["duration_s"]
    assert got["request_throughput"] == pytest.approx(summary["throughput"]["requests_per_s"])
    assert got["output_throughput"] == pytest.approx(summary["throughput"]["output_tokens_per_s"])
    assert got["mean_ttft_ms"] == pytest.approx(1000 * summary["latency_s"]["ttft"]["mean"])
    assert got["mean_tpot_ms"] == pytest.approx(1000 * summary["latency_s"]["tpot"]["mean"])


def test_metric_percentiles_option_writes_the_requested_keys(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0,10,5\n0.1,20,8\n0.2,300,3\n")
    out = tmp_path / "o"
    assert main(["replay", str(trace), "-q", "--out", str(out), "--metric-percentiles", "0,50,100,99.9"]) == 0
    bench = json.loads((out / "vllm-bench.json").read_text())
    assert {"p0_ttft_ms", "p50_ttft_ms", "p100_ttft_ms", "p99.9_ttft_ms"} <= set(bench)
    assert "p99_ttft_ms" not in bench  # the default is replaced, as vLLM's option does
    with open(out / "requests.csv") as f:
        rows = list(csv.DictReader(f))
    ttft_ms = sorted((float(r["first_token_s"]) - float(r["arrival_s"])) * 1000 for r in rows)
    assert bench["p0_ttft_ms"] == pytest.approx(ttft_ms[0]) and bench["p100_ttft_ms"] == pytest.approx(ttft_ms[-1])
    assert bench["p50_ttft_ms"] == pytest.approx(ttft_ms[1]) == pytest.approx(bench["median_ttft_ms"])
    for bad in ("101", "-1", "x"):
        with pytest.raises(SystemExit) as exc:
            main(["replay", str(trace), "-q", "--metric-percentiles", bad])
        assert exc.value.code == 2
