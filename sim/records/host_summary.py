"""summary.json's `host_tier` figures (sim.allocators.host_tier), for a replay with a host tier.

- capacity_bytes / capacity_blocks: the host tier on one GPU (whole blocks of the GPU's block bytes).
- link: the host link (name, bytes/s each way, latency); preemption: "recompute" or "swap".
- bytes_to_host, bytes_to_gpu: bytes the copies moved each way over the whole replay; blocks_offloaded (cached
  blocks the GPU evicted to the host), host_hit_blocks (blocks a prefix lookup found on the host and moved back),
  host_evictions (cached host blocks dropped for room), swap_outs / swap_ins (requests), swap_fallbacks (swap
  preemptions that had to recompute: no host room).
- host_hit_tokens: tokens admissions found on the host (host_hit_blocks x block size); host_hit_rate: those over
  every prefill token admissions asked for (the denominator of the summary's prefix-cache hit rate).
- link_time_s: seconds iterations spent on the link (sim.cost.host_link), summed.
- recompute_time_saved_s: an estimate of what the tier spared: for each host hit and swap-in, the time the compute
  model adds to an iteration for prefilling those tokens alone (on top of the context before them; a swap-in as a
  prefill of its longest branch), less the link time of the blocks moved back, when positive, summed.
- memory: mean over iterations of the host blocks holding cached prefix blocks and swapped requests, as fractions of
  the host tier.
"""

from __future__ import annotations

import numpy as np

from sim.serving.request import Batch


def _prefill_alone(cost, context: int, tokens: int) -> float:
    """What prefilling `tokens` tokens on top of `context` adds to an iteration: one such prefill alone, less an
    empty iteration (the fixed costs a batch pays anyway)."""
    batch = Batch(
        num_prefill_tokens=tokens,
        prefill_context_tokens=context,
        num_prefill_seqs=1,
        prefill_attention_pairs=tokens * (tokens + 1) // 2 + tokens * context,
    )
    return cost.step_time(batch) - cost.step_time(Batch())


def host_tier_summary(
    host, cost, steps: dict[str, np.ndarray], requested_prefill_tokens: int, block_size: int, preemption: str
) -> dict:
    """The `host_tier` figures (module docstring). `cost` is the replay's HostLinkCost."""
    hit_tokens = host.host_hit_blocks * block_size
    saved = 0.0
    for context, tokens, blocks in host.spared:
        gain = _prefill_alone(cost.compute, context, tokens) - cost.link.time(blocks * host.block_bytes, 0)
        saved += max(gain, 0.0)
    capacity = host.num_blocks * host.block_bytes
    memory = {}
    for key, column in (("cached", "host_cached_bytes"), ("swapped", "host_swapped_bytes")):
        values = steps.get(column)
        memory[key] = float(values.mean() / capacity) if values is not None and len(values) else 0.0
    return {
        "capacity_bytes": capacity,
        "capacity_blocks": host.num_blocks,
        "link": cost.link.describe(),
        "preemption": preemption,
        **host.figures(),
        "host_hit_tokens": hit_tokens,
        "host_hit_rate": hit_tokens / requested_prefill_tokens if requested_prefill_tokens else 0.0,
        "link_time_s": cost.link_time_s,
        "recompute_time_saved_s": saved,
        "memory": memory,
    }


__all__ = ["host_tier_summary"]
