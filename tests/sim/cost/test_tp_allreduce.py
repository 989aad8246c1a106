"""Tensor parallelism's all-reduce in the roofline: hand-computed times, tp 1 unchanged bit for bit, the decode fast
paths exact at tp > 1 (in the cost model and through a whole replay), and the refusals."""

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.cli.main import main
from sim.cost.roofline import RooflineCostModel
from sim.errors import UserError
from sim.hardware.gpus import GPUS, resolve_gpu
from sim.hardware.models import MODELS
from sim.serving.replay import ReplayOptions, replay
from sim.serving.request import Batch

LLAMA_7B = MODELS["llama-2-7b"]  # 32 layers, hidden 4096, 32 q and KV heads of 128, 6,738,415,616 parameters
LLAMA_70B = MODELS["llama-2-70b"]  # 80 layers, hidden 8192, 64 q heads, 8 KV heads of 128
H100 = GPUS["h100-80gb"]  # NVLink 4: 450e9 B/s each way, all-reduce latency 5 us


def test_presets_used_here():
    assert (LLAMA_7B.num_layers, LLAMA_7B.hidden_size) == (32, 4096)
    assert (LLAMA_70B.num_layers, LLAMA_70B.hidden_size) == (80, 8192)
    assert (H100.interconnect_bandwidth, H100.allreduce_latency_s) == (450e9, 5e-6)


def test_allreduce_time_by_hand_llama_7b_tp2():
    """32 layers, hidden 4096, tp 2, 100 batched tokens, 450e9 B/s, latency 5 us:
    buffer      = 100 tokens x 4096 x 2 B                = 819,200 B
    ring share  = 2 (2 - 1) / 2                          = 1, so 819,200 B sent
    one         = 5e-6 + 819,200 / 450e9 = 5e-6 + 1.820444e-6 = 6.820444e-6 s
    per step    = 2 x 32 layers x 6.820444e-6              = 436.508444e-6 s"""
    m = RooflineCostModel(LLAMA_7B, H100, tp=2)
    assert m.allreduce_time(100) == pytest.approx(436.508444e-6, rel=1e-6)
    assert m.allreduce_time(100) == pytest.approx(64 * (5e-6 + 819_200 / 450e9), rel=1e-14)
    # no latency: linear in the batched tokens; 0 tokens cost the latency only
    assert m.allreduce_time(0) == pytest.approx(64 * 5e-6, rel=1e-14)
    free = RooflineCostModel(LLAMA_7B, replace(H100, allreduce_latency_s=0.0), tp=2)
    assert free.allreduce_time(200) == pytest.approx(2 * free.allreduce_time(100), rel=1e-14)


def test_allreduce_time_by_hand_llama_7b_tp4():
    """tp 4: ring share 2 x 3 / 4 = 1.5, so 1.5 x 819,200 = 1,228,800 B sent of the same buffer:
    one = 5e-6 + 1,228,800 / 450e9 = 5e-6 + 2.730667e-6 = 7.730667e-6 s; per step 64 x that = 494.762667e-6 s"""
    m = RooflineCostModel(LLAMA_7B, H100, tp=4)
    assert m.allreduce_time(100) == pytest.approx(494.762667e-6, rel=1e-6)


def test_allreduce_time_by_hand_llama_70b_tp8_decode():
    """Llama-2-70B, tp 8, a decode step of 64 sequences (64 batched tokens):
    buffer = 64 x 8192 x 2 B = 1,048,576 B; ring share 2 x 7 / 8 = 1.75, so 1,835,008 B sent
    one = 5e-6 + 1,835,008 / 450e9 = 5e-6 + 4.077796e-6 = 9.077796e-6 s; per step 2 x 80 x that = 1.452447e-3 s"""
    m = RooflineCostModel(LLAMA_70B, H100, tp=8)
    assert m.allreduce_time(64) == pytest.approx(1.452447e-3, rel=1e-6)
    step = m.step_time(Batch(num_decode_seqs=64, decode_context_tokens=64 * 1000))
    assert step == pytest.approx(m.time(64, 64_000, 64_000), rel=0) and step > 1.452447e-3 + 0.002


def test_step_time_adds_the_allreduce_to_the_roofline_by_hand():
    """Llama-2-7B, tp 2, H100, no step overhead, 100 decode sequences reading 100,000 tokens of context:
    weights per GPU    = 6,738,415,616 x 2 B / 2 = 6,738,415,616 B
    KV per token (GPU) = 2 x 32 layers x 16 KV heads x 128 x 2 B = 262,144 B
    memory  = (6,738,415,616 + (100,000 + 100) x 262,144) / 3.35e12 = 9.844487e-3 s (the larger)
    compute = (6,738,415,616 x 100 + 4 x 32 x 32 x 128 / 2 x 100,000) / 989.4e12 = 0.707556e-3 s
    step    = memory + all-reduce of 100 tokens (436.508444e-6 s, above) = 10.280995e-3 s"""
    m = RooflineCostModel(LLAMA_7B, H100, tp=2, step_overhead_s=0.0)
    memory = (6_738_415_616 + 100_100 * 262_144) / 3.35e12
    compute = (6_738_415_616 * 100 + 4 * 32 * 32 * 128 / 2 * 100_000) / 989.4e12
    assert memory > compute
    batch = Batch(num_decode_seqs=100, decode_context_tokens=100_000)
    assert memory == pytest.approx(9.844487e-3, rel=1e-6) and compute == pytest.approx(0.707556e-3, rel=1e-5)
    assert m.step_time(batch) == pytest.approx(10.280995e-3, rel=1e-6)


def test_tp1_is_unchanged_bit_for_bit_and_tp2_pays_the_allreduce():
    """At tp 1 no all-reduce: the time is exactly max(memory, compute) + overhead as before, on a GPU without an
    interconnect too. At tp 2 the step is the tp-2 roofline plus the all-reduce of its batched tokens."""
    batch = Batch(
        num_decode_seqs=3,
        decode_context_tokens=100,
        num_prefill_seqs=1,
        num_prefill_tokens=40,
        prefill_context_tokens=200,
        prefill_attention_pairs=40 * 41 // 2 + 40 * 200,
    )
    for gpu in (H100, replace(H100, interconnect_bandwidth=None)):
        one = RooflineCostModel(LLAMA_7B, gpu, tp=1, step_overhead_s=0.0123456789)
        assert one.allreduce_time(43) == 0.0 and one.allreduces_per_step == 0
        memory = (one.weight_bytes + (300 + 43) * one.kv_bytes_per_token) / one.bandwidth
        compute = (one.flops_per_token * 43 + one.flops_per_pair * (100 + 820 + 8000)) / one.flop_rate
        assert one.step_time(batch) == max(memory, compute) + 0.0123456789  # ==: bit for bit
        assert one.decode_time_list(5, 7, 3) == [one.time(5, c, c) for c in (7, 12, 17)]
    two = RooflineCostModel(LLAMA_7B, H100, tp=2, step_overhead_s=0.0123456789)
    memory = (two.weight_bytes + (300 + 43) * two.kv_bytes_per_token) / two.bandwidth
    compute = (two.flops_per_token * 43 + two.flops_per_pair * (100 + 820 + 8000)) / two.flop_rate
    # 43 tokens: 2 x 32 x (5e-6 + 43 x 4096 x 2 / 450e9) = 64 x 5.782756e-6 = 370.096356e-6 s
    assert two.allreduce_time(43) == pytest.approx(370.098631e-6, rel=1e-6)
    assert two.step_time(batch) == max(memory, compute) + (0.0123456789 + two.allreduce_time(43))
    # tp 2 reads half the weights per GPU: here that saves more than the all-reduce costs
    saved = RooflineCostModel(LLAMA_7B, H100, tp=1, step_overhead_s=0.0123456789).step_time(batch) - (
        max(memory, compute) + 0.0123456789
    )
    assert 0 < saved - two.allreduce_time(43)


def test_describe_reports_the_allreduce():
    d = RooflineCostModel(LLAMA_70B, H100, tp=8).describe()
    assert d["tp"] == 8 and d["interconnect_bandwidth_bytes_per_s"] == 450e9 and d["allreduce_latency_s"] == 5e-6
    assert d["allreduces_per_step"] == 160 and d["allreduce_bytes_per_token"] == 8192 * 2
    assert RooflineCostModel(LLAMA_70B, H100).describe()["allreduces_per_step"] == 0


@settings(max_examples=300)
@given(
    gpu=st.sampled_from(sorted(GPUS)),
    name_tp=st.sampled_from([("llama-2-7b", 2), ("llama-2-7b", 4), ("llama-2-70b", 8), ("llama-2-70b", 2)]),
    num_seqs=st.integers(1, 512),
    first=st.integers(0, 3_000_000),
    rounds=st.integers(0, 70),
    overhead=st.sampled_from([0.0, 0.002, 0.0123456789]),
    # tiny FLOP rates make decode compute-bound, and ~0.003 puts the crossover inside the range
    flops_efficiency=st.sampled_from([1.0, 0.01, 0.003, 0.001, 1e-5]),
    latency=st.sampled_from([None, 0.0, 1.234567e-5]),
)
def test_decode_fast_paths_are_step_time_at_tp_above_1(
    gpu, name_tp, num_seqs, first, rounds, overhead, flops_efficiency, latency
):
    """As tests/sim/cost/test_roofline.py at tp 1: decode_time_list == decode_times == step_time, bit for bit."""
    name, tp = name_tp
    spec = GPUS[gpu] if latency is None else replace(GPUS[gpu], allreduce_latency_s=latency)
    m = RooflineCostModel(MODELS[name], spec, tp=tp, step_overhead_s=overhead, flops_efficiency=flops_efficiency)
    assert m.allreduce_time(num_seqs) > 0
    got = m.decode_time_list(num_seqs, first, rounds)
    want = m.decode_times(num_seqs, first + num_seqs * np.arange(rounds, dtype=np.int64))
    assert len(got) == rounds
    assert np.array_equal(np.array(got, dtype=np.float64), want)
    for i in (0, rounds // 2, rounds - 1) if rounds else ():
        context = first + num_seqs * i
        assert got[i] == m.step_time(Batch(num_decode_seqs=num_seqs, decode_context_tokens=context))


def _same_records(trace, options: ReplayOptions) -> int:
    fast = replay(trace, options)
    slow = replay(trace, replace(options, fast_forward=False))
    a, b = dict(fast.summary), dict(slow.summary)
    skipped = a.pop("iterations_fast_forwarded")
    assert b.pop("iterations_fast_forwarded") == 0
    assert a == b
    for name in slow.steps:
        assert np.array_equal(fast.steps[name], slow.steps[name]), name
    for name in ("admitted_s", "first_token_s", "finish_s"):
        assert np.array_equal(getattr(fast.requests, name), getattr(slow.requests, name), equal_nan=True), name
    return skipped


@pytest.mark.parametrize("scheduler", ["vllm-v0", "vllm-v1"])
def test_replay_fast_forward_is_exact_at_tp_2(scheduler, repo_root):
    """The engine's fast-forward at tp 2 writes exactly the records of a step-by-step replay, and the all-reduce
    lengthens the run against the same replay on a GPU whose all-reduce is free (infinite bandwidth, no latency)."""
    from sim.traces.readers import read_trace

    trace = read_trace(f"{repo_root}/traces/azure-llm-2023-conv.csv").select(slice(0, 200))
    options = ReplayOptions(LLAMA_70B, H100, "paged", kv_memory=2 * 2**30, tp=2, scheduler=scheduler)
    assert _same_records(trace, options) > 0  # the comparison is not vacuous
    busy = replay(trace, options).steps["duration_s"].sum()
    free_gpu = replace(H100, interconnect_bandwidth=float("inf"), allreduce_latency_s=0.0)
    free = replay(trace, replace(options, gpu=free_gpu)).steps["duration_s"].sum()
    assert busy > free


def test_tp_above_1_needs_an_interconnect():
    custom = resolve_gpu("memory=80GiB,bandwidth=3.35e12,bf16_flops=989.4e12")
    assert custom.interconnect_bandwidth is None
    RooflineCostModel(LLAMA_7B, custom, tp=1)  # tp 1: nothing to price
    with pytest.raises(UserError, match="--tp 2: GPU custom has no interconnect bandwidth.*interconnect_bandwidth"):
        RooflineCostModel(LLAMA_7B, custom, tp=2)
    given = resolve_gpu("memory=80GiB,bandwidth=3.35e12,bf16_flops=989.4e12,interconnect_bandwidth=450e9")
    assert RooflineCostModel(LLAMA_7B, given, tp=2).allreduce_time(100) == pytest.approx(436.508444e-6, rel=1e-6)


def test_cli_refuses_tp_without_interconnect_with_exit_2(tmp_path, capsys, repo_root):
    trace = f"{repo_root}/traces/alpaca-2k.csv"
    gpu = "memory=80GiB,bandwidth=3.35e12,bf16_flops=989.4e12"
    code = main(["replay", trace, "--gpu", gpu, "--tp", "2", "--out", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "interconnect" in err and "Traceback" not in err
    code = main(["replay", trace, "--gpu", gpu + ",interconnect_bandwidth=-1", "--tp", "2", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "interconnect_bandwidth must be a positive finite number" in err
