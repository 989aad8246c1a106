"""Iteration time: how long one batch takes on the GPU (seconds).

The default `RooflineCostModel` is a roofline from the GPU's datasheet:

    time = max(bytes_moved / (HBM bandwidth x bandwidth_efficiency), flops / (peak FLOP/s x flops_efficiency))
           + step_overhead_s

    bytes_moved = weight bytes read (per GPU) + KV read + KV written
        weight bytes read = those of the active parameters (ModelSpec.active_weight_bytes: every weight of a dense
                            model; a mixture of experts reads its shared and top-k routed experts only)
        KV read    = (decode context tokens + prefill context tokens) x KV bytes per token (per GPU)
        KV written = batched tokens x KV bytes per token
    flops = 2 x active parameters x batched tokens / tp + attention FLOPs
        attention FLOPs = 4 x layers x q heads x head size x (query, key) pairs / tp
        (query, key) pairs = sum of decode context lengths + causal prefill pairs n (n + 1) / 2 (+ n x context)

Tensor-parallel communication is not modelled. A later calibration fits these terms to GPU measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.cost.base import CostModel
from sim.hardware.gpus import GpuSpec
from sim.hardware.models import ModelSpec
from sim.serving.request import Batch

DEFAULT_STEP_OVERHEAD_S = 0.002


@dataclass
class RooflineCostModel(CostModel):
    model: ModelSpec
    gpu: GpuSpec
    tp: int = 1
    step_overhead_s: float = DEFAULT_STEP_OVERHEAD_S  # scheduling, kernel launches, sampling: per iteration
    bandwidth_efficiency: float = 1.0  # fraction of datasheet HBM bandwidth achieved
    flops_efficiency: float = 1.0  # fraction of datasheet FLOP/s achieved

    def __post_init__(self) -> None:
        m, tp = self.model, self.tp
        self.weight_bytes = m.active_weight_bytes(tp)  # = m.weight_bytes(tp) for a dense model
        self.kv_bytes_per_token = m.kv_bytes_per_token(tp)
        self.flops_per_token = 2 * m.active_params / tp  # active_params = num_params for a dense model
        self.flops_per_pair = 4 * m.num_layers * m.num_q_heads * m.head_size / tp
        self.bandwidth = self.gpu.hbm_bandwidth * self.bandwidth_efficiency
        self.flop_rate = self.gpu.bf16_flops * self.flops_efficiency

    def time(self, batched_tokens: int, kv_read_tokens: int, attention_pairs: int) -> float:
        """Seconds for an iteration with these totals (the roofline formula above)."""
        bytes_moved = self.weight_bytes + (kv_read_tokens + batched_tokens) * self.kv_bytes_per_token
        flops = self.flops_per_token * batched_tokens + self.flops_per_pair * attention_pairs
        return max(bytes_moved / self.bandwidth, flops / self.flop_rate) + self.step_overhead_s

    def decode_times(self, num_seqs: int, context_tokens: np.ndarray) -> np.ndarray:
        """Seconds of pure-decode iterations of num_seqs sequences reading context_tokens each (one entry per
        iteration): the same arithmetic as `time`, element by element, so results are bit-identical."""
        bytes_moved = self.weight_bytes + (context_tokens + num_seqs) * self.kv_bytes_per_token
        flops = self.flops_per_token * num_seqs + self.flops_per_pair * context_tokens
        return np.maximum(bytes_moved / self.bandwidth, flops / self.flop_rate) + self.step_overhead_s

    def decode_time_list(self, num_seqs: int, first_context: int, rounds: int) -> list[float]:
        """`decode_times(num_seqs, first_context + num_seqs * arange(rounds))` as a list, computed in Python: on the
        short stretches the engine fast-forwards (~10 rounds) numpy's per-call cost outweighs the arithmetic. The
        operations are the same, in the same order, on the same values (integers below 2**53 convert to float64
        exactly, and Python and numpy both round int -> float and each float operation to nearest), so the results
        are bit-identical (tests/sim/cost/test_roofline.py compares them)."""
        if rounds <= 0:
            return []
        weight, kv, bw, rate, overhead = (
            self.weight_bytes,
            self.kv_bytes_per_token,
            self.bandwidth,
            self.flop_rate,
            self.step_overhead_s,
        )
        seq_flops, pair_flops = self.flops_per_token * num_seqs, self.flops_per_pair
        last = first_context + num_seqs * (rounds - 1)
        margin = 1 + 1e-9
        if all(
            (weight + (c + num_seqs) * kv) / bw > (seq_flops + pair_flops * c) / rate * margin
            for c in (first_context, last)
        ):
            # Memory-bound at both ends by far more than rounding error: before rounding both terms are affine in
            # the context, so the memory term is the larger at every context in between too, and max() would pick
            # it. Only it is computed (the same integer, divided the same way).
            first_bytes, step = weight + (first_context + num_seqs) * kv, num_seqs * kv
            return [b / bw + overhead for b in range(first_bytes, first_bytes + step * rounds, step)]
        return [
            max((weight + (c + num_seqs) * kv) / bw, (seq_flops + pair_flops * c) / rate) + overhead
            for c in range(first_context, last + 1, num_seqs)
        ]

    def step_time(self, batch: Batch) -> float:
        return self.time(
            batch.num_batched_tokens,
            batch.decode_context_tokens + batch.prefill_context_tokens,
            batch.decode_context_tokens + batch.prefill_attention_pairs,
        )

    def describe(self) -> dict:
        return {
            "kind": "roofline",
            "gpu": self.gpu.name,
            "hbm_bandwidth_bytes_per_s": self.gpu.hbm_bandwidth,
            "bf16_flops_per_s": self.gpu.bf16_flops,
            "bandwidth_efficiency": self.bandwidth_efficiency,
            "flops_efficiency": self.flops_efficiency,
            "step_overhead_s": self.step_overhead_s,
            "tp": self.tp,
        }
