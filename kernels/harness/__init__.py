"""The GPU harness: the simulator's scheduler and allocators driving a real model on a real KV pool.

Modules: model (random-weight transformer with a preset's shapes), kv_pool (the pool the placements index: one
tensor per layer, or vLLM's hybrid pages for an allocator with KV-cache groups, and each layer's sliding window),
kv_source (deterministic K/V by token identity, and the lineage tracker), host_pool (a host tier's blocks in pinned
memory and the iteration's host-link copies), executor (one Batch on the GPU, and the reference checks), replay (the
real-time loop), calibrate (`sim calibrate`, the host link included), validate (`sim validate`'s comparison).
"""
