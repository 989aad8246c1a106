"""The roofline's Python decode times (what the engine's fast-forward uses) equal its numpy decode_times and
step_time bit for bit, memory-bound and compute-bound alike."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.cost.roofline import RooflineCostModel
from sim.hardware.gpus import GPUS
from sim.hardware.models import MODELS
from sim.serving.request import Batch


def model(gpu: str, flops_efficiency: float, overhead: float) -> RooflineCostModel:
    return RooflineCostModel(
        MODELS["llama-2-7b"], GPUS[gpu], step_overhead_s=overhead, flops_efficiency=flops_efficiency
    )


@settings(max_examples=300)
@given(
    gpu=st.sampled_from(sorted(GPUS)),
    num_seqs=st.integers(1, 512),
    first=st.integers(0, 3_000_000),
    rounds=st.integers(0, 70),
    overhead=st.sampled_from([0.0, 0.002, 0.0123456789]),
    # tiny FLOP rates make decode compute-bound, and ~0.003 puts the crossover inside the range
    flops_efficiency=st.sampled_from([1.0, 0.01, 0.003, 0.001, 1e-5]),
)
def test_decode_time_list_is_decode_times(gpu, num_seqs, first, rounds, overhead, flops_efficiency):
    m = model(gpu, flops_efficiency, overhead)
    got = m.decode_time_list(num_seqs, first, rounds)
    want = m.decode_times(num_seqs, first + num_seqs * np.arange(rounds, dtype=np.int64))
    assert len(got) == rounds
    assert np.array_equal(np.array(got, dtype=np.float64), want)
    for i in (0, rounds - 1) if rounds else ():  # and the per-iteration formula (step_time of a decode batch)
        context = first + num_seqs * i
        assert got[i] == m.step_time(Batch(num_decode_seqs=num_seqs, decode_context_tokens=context))


def test_both_branches_are_taken():
    """The examples above reach both sides of the roofline: a memory-bound and a compute-bound decode."""
    fast, slow = model("h100-80gb", 1.0, 0.0), model("h100-80gb", 1e-5, 0.0)
    bytes_s = (fast.weight_bytes + 10 * fast.kv_bytes_per_token) / fast.bandwidth
    assert fast.decode_time_list(9, 1, 1) == [bytes_s]  # 9 sequences reading 1 token of context: memory-bound
    flops = fast.flops_per_token * 9 + fast.flops_per_pair * 1
    assert slow.decode_time_list(9, 1, 1) == [flops / slow.flop_rate]  # at 1e-5 of peak FLOP/s: compute-bound
    assert flops / slow.flop_rate > bytes_s


def test_a_vllm_v1_step_prices_decode_rows_and_a_chunk_on_its_context():
    """A step of 3 decode rows reading 100 tokens in all and a 40-token prompt chunk on 200 tokens of earlier chunks,
    priced from the datasheet by hand: llama-2-7b on an H100 (bf16, 32 layers x 32 heads x 128, 524,288 KV bytes
    per token), no overhead."""
    m = model("h100-80gb", 1.0, 0.0)
    batch = Batch(
        num_decode_seqs=3,
        decode_context_tokens=100,
        num_prefill_seqs=1,
        num_prefill_tokens=40,
        prefill_context_tokens=200,
        prefill_attention_pairs=40 * 41 // 2 + 40 * 200,
    )
    kv = 2 * 32 * 32 * 128 * 2  # K and V, layers x heads x head size, 2 bytes each
    assert m.kv_bytes_per_token == kv
    weights = 2 * m.model.num_params  # fp16 weights
    memory = (weights + (100 + 200 + 43) * kv) / 3.35e12  # KV read (decode + chunk context) and written
    compute = (2 * m.model.num_params * 43 + 4 * 32 * 32 * 128 * (100 + 820 + 8000)) / 989.4e12
    assert m.step_time(batch) == pytest.approx(max(memory, compute), rel=1e-12)
    assert memory > compute  # 43 tokens: bound by reading the weights
