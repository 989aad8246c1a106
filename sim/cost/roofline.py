"""Iteration time: how long one batch takes on the GPU (seconds).

The default `RooflineCostModel` is a roofline from the GPU's datasheet:

    time = max(bytes_moved / (HBM bandwidth x bandwidth_efficiency), flops / (peak FLOP/s x flops_efficiency))
           + (step_overhead_s + all-reduce time)

    bytes_moved = weight bytes read (per GPU) + KV read + KV written
        weight bytes read = those of the active parameters (ModelSpec.active_weight_bytes: every weight of a dense
                            model; a mixture of experts reads its shared and top-k routed experts only)
        KV read    = (decode context tokens + prefill context tokens) x KV bytes per token (per GPU)
        KV written = batched tokens x KV bytes per token
    flops = 2 x active parameters x batched tokens / tp + attention FLOPs
        attention FLOPs = 4 x layers x q heads x head size x (query, key) pairs / tp
        (query, key) pairs = sum of decode context lengths + causal prefill pairs n (n + 1) / 2 (+ n x context)

Tensor parallelism (tp > 1) splits the weights, KV heads and FLOPs over tp GPUs (above) and adds the all-reduces of
Megatron-style TP: two per layer, after attention's output projection and after the MLP's down projection (a mixture
of experts' layer too), each of one bf16 activation per hidden unit per batched token:

    all-reduce time = 2 x layers x (allreduce_latency_s + 2 (tp - 1) / tp x bytes / interconnect bandwidth)
        bytes = batched tokens x hidden size x 2 (bf16)
        2 (tp - 1) / tp: the share of the buffer each GPU sends in a ring all-reduce (reduce-scatter + all-gather),
        the least any algorithm sends; interconnect bandwidth and allreduce_latency_s are the GPU's (GpuSpec)

It is not overlapped with compute (vLLM runs each all-reduce on the critical path between layers), so it adds to the
step time; it depends on the batched tokens only, so a pure-decode step of n sequences pays that of n tokens. At tp 1
it is 0 and every time is what it was before it was modelled. Not modelled: pipeline parallelism, expert parallelism
(all-to-all), sequence parallelism, the all-gather of the logits, all-reduce algorithms other than the ring's
bandwidth term (one-shot all-reduces of small messages send more but wait less: the latency term stands for them),
contention between the all-reduce and HBM traffic, and communication across nodes. A later calibration fits these terms
to GPU measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.cost.base import CostModel
from sim.errors import UserError
from sim.hardware.gpus import GpuSpec
from sim.hardware.models import ModelSpec
from sim.serving.request import Batch

DEFAULT_STEP_OVERHEAD_S = 0.002
ACTIVATION_BYTES = 2  # bf16 activations: the all-reduced buffers hold one per hidden unit per batched token


def require_interconnect(gpu: GpuSpec, tp: int) -> None:
    """Refuse tp > 1 on a GPU without an interconnect bandwidth (the all-reduce could not be priced). Callers that
    validate options before a run starts may call it too; the cost model does."""
    if tp > 1 and gpu.interconnect_bandwidth is None:
        raise UserError(
            f"--tp {tp}: GPU {gpu.name} has no interconnect bandwidth to price tensor parallelism's all-reduce; give "
            f"one (bytes/s each GPU sends to its peers in each direction): interconnect_bandwidth in the GPU's TOML "
            f"file, or interconnect_bandwidth=450e9 in its dimensions (NVLink 4), or use a preset"
        )


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
        # Tensor-parallel all-reduce (module docstring): 2 per layer, of ACTIVATION_BYTES x hidden per batched token.
        self.allreduces_per_step = 2 * m.num_layers if tp > 1 else 0
        self.allreduce_bytes_per_token = ACTIVATION_BYTES * m.hidden_size
        self.allreduce_latency_s = self.gpu.allreduce_latency_s
        self.ring_factor = 2 * (tp - 1) / tp
        self.interconnect_bandwidth = self.gpu.interconnect_bandwidth
        require_interconnect(self.gpu, tp)

    def allreduce_time(self, batched_tokens: int) -> float:
        """Seconds of an iteration's tensor-parallel all-reduces (module docstring); 0.0 at tp 1."""
        if not self.allreduces_per_step:
            return 0.0
        bytes_sent = self.ring_factor * (batched_tokens * self.allreduce_bytes_per_token)
        return self.allreduces_per_step * (self.allreduce_latency_s + bytes_sent / self.interconnect_bandwidth)

    def fixed_time(self, batched_tokens: int) -> float:
        """What an iteration adds to its roofline: the step overhead plus the all-reduces (at tp 1 the step overhead
        itself, so times are bit for bit those before the all-reduce was modelled). One sum, shared by `time` and the
        decode fast paths, so that they stay bit-identical."""
        if not self.allreduces_per_step:
            return self.step_overhead_s
        return self.step_overhead_s + self.allreduce_time(batched_tokens)

    def time(self, batched_tokens: int, kv_read_tokens: int, attention_pairs: int) -> float:
        """Seconds for an iteration with these totals (the roofline formula above)."""
        bytes_moved = self.weight_bytes + (kv_read_tokens + batched_tokens) * self.kv_bytes_per_token
        flops = self.flops_per_token * batched_tokens + self.flops_per_pair * attention_pairs
        overhead = self.step_overhead_s if not self.allreduces_per_step else self.fixed_time(batched_tokens)
        return max(bytes_moved / self.bandwidth, flops / self.flop_rate) + overhead

    def decode_times(self, num_seqs: int, context_tokens: np.ndarray) -> np.ndarray:
        """Seconds of pure-decode iterations of num_seqs sequences reading context_tokens each (one entry per
        iteration): the same arithmetic as `time`, element by element, so results are bit-identical."""
        bytes_moved = self.weight_bytes + (context_tokens + num_seqs) * self.kv_bytes_per_token
        flops = self.flops_per_token * num_seqs + self.flops_per_pair * context_tokens
        return np.maximum(bytes_moved / self.bandwidth, flops / self.flop_rate) + self.fixed_time(num_seqs)

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
            self.fixed_time(num_seqs),  # step overhead + the all-reduces of num_seqs tokens
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
            # tensor-parallel all-reduce (at tp 1: none, allreduces_per_step 0)
            "interconnect_bandwidth_bytes_per_s": self.interconnect_bandwidth,
            "allreduce_latency_s": self.allreduce_latency_s,
            "allreduces_per_step": self.allreduces_per_step,
            "allreduce_bytes_per_token": self.allreduce_bytes_per_token,
        }
