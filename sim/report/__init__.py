"""Capacity planning: how many requests per second one replica serves within latency targets, how many GPUs a
target rate needs, and what the KV-cache design changes.

- `slo`: latency targets (`ttft_p99=2s,tpot_p99=100ms`), checking them on a replay, goodput.
- `capacity`: the capacity search (exponential bracketing, then bisection on the arrival rate) and its probes.
- `build`: a report's configurations (GPU x allocator x block size) searched in parallel, the recommendation.
- `plan`: replicas, headroom, $/hour and $ per million output tokens from a capacity (their definitions).
- `charts`: the plotly figures; `html`: one self-contained HTML file (plotly.js embedded once) and its data files.
- `validation`: predicted-vs-measured results found under reports/validation/.
- `sweep`: `sim sweep SPEC.toml`, a grid of replays on local processes or a Ray cluster, resumable.

Nothing here imports torch.
"""
