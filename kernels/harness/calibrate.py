"""`sim calibrate`: time iterations of a synthetic grid on the GPU and fit the simulator's cost profile.

The grid never looks at a trace: pure decode over batch sizes x context lengths, single and multi-sequence prefills
with and without cached context, and mixed prefill + decode iterations. Each point is a real scheduler `Batch` over a
real paged allocator, run through the same executor (and so the same host work, kernels and synchronisation) as the
GPU replay; its time is the median wall time of its timed runs, gathered over several passes in shuffled order
(see `measure`). The fit is
`sim.cost.profile.fit_profile` (documented there); the uniform decode points also give the profile its decode
correction (`sim.cost.profile.DecodeCorrection`).

A model with sliding-window layers or several KV-cache groups (`has_kv_groups`, e.g. a Gemma-3-like interleaving) is
calibrated on the grouped allocator's pool (`paged-hybrid`: vLLM's hybrid pages, one block table per group, see
kernels.harness.kv_pool), the layout its `sim validate --allocators paged-hybrid` replays run on; the sliding layers
attend over their window whatever the allocator. The profile's meta records the allocator (`allocator`) and the
number of groups (`kv_groups`).

The host link (`measure_host_link`): after the grid, the copies a host tier's iterations run (kernels.harness.host_pool,
the executor's own path: GPU gathers and scatters, pinned host blocks, one copy stream per direction) are timed with
CUDA events for batches of 1 to 256 blocks (at most 1 GiB a direction), to the GPU alone, to the host alone and both
at once (as many blocks each way), blocks scattered over the pool and the host pool. A non-negative least-squares fit
(relative errors) of `time = latency + bytes / bandwidth` over the single-direction batches gives one latency and a
bandwidth per direction; the batches both ways at once give a duplex cap when they ran more than 3% slower than the
slower direction alone would (else none). The profile keeps it in `meta["host_link"]` (sim.cost.profile), with its
samples and the fit's errors; replays with a host tier and this profile use it (sim.serving.replay.make_cost_model).
"""

from __future__ import annotations

import gc
import time
from dataclasses import replace

import numpy as np
import torch

from kernels.harness.host_pool import HostKVPool
from kernels.harness.kv_source import LineageTracker
from sim.allocators.host_tier import OFFLOAD, SWAP_IN, TO_GPU, TO_HOST, Transfer
from sim.allocators.hybrid import HybridPagedAllocator
from sim.allocators.paged import PagedAllocator
from sim.cost.profile import MIN_SAMPLES, batch_features, fit_profile, nnls
from sim.hardware.kv_groups import kv_layout
from sim.serving.request import Batch, Request


class SyntheticState:
    """A paged allocator over a run's pool, and an executor on it, for batches made up on the spot.

    On a pool laid out for KV-cache groups (a run built for `paged-hybrid`: `run.budget.layout`), `PagedAllocator`
    stands for the grouped allocator `HybridPagedAllocator` over the layout's groups: one block table per group, and
    sliding-window groups give back the blocks their window has left when a decode point's sequences grow."""

    def __init__(self, run, seed: int = 0, allocator_cls=PagedAllocator):
        self.run = run
        b = run.budget
        kwargs = {}
        if b.layout is not None:
            if allocator_cls is PagedAllocator:
                allocator_cls = HybridPagedAllocator
            if getattr(allocator_cls, "uses_kv_groups", False):
                kwargs["groups"] = b.layout.groups
        self.alloc = LineageTracker(allocator_cls(b.num_blocks, b.block_size, 1 << 30, **kwargs))
        self.executor = run.executor(self.alloc, seed=seed)  # the replay's execution path (graphs included)
        self.next_id = 1
        self.rng = np.random.default_rng(seed)
        self.paged = allocator_cls in (PagedAllocator, HybridPagedAllocator)
        if self.paged:  # scattered blocks, as a pool looks after a while: allocate in a shuffled order
            pool = self.alloc.wrapped.pool
            order = pool.free_block_ids()
            self.rng.shuffle(order)
            pool.reorder_free(order)
        with torch.no_grad():
            run.pool.kv.normal_()  # never time on NaN or zeros

    def new_seq(self, tokens: int) -> Request | None:
        sid = self.next_id
        if not self.alloc.can_admit(sid, tokens, tokens + 1):
            return None
        self.next_id += 1
        self.alloc.admit(sid, tokens, tokens + 1)
        seq = Request(sid, tokens, 2, 0.0)
        seq.branches = [sid]
        return seq

    def release(self, batch: Batch) -> None:
        for seq in batch.prefill + batch.decode:
            for b in seq.branches:
                self.alloc.free(b)
            seq.branches = []
        self.alloc.take_copy_ops()
        self.alloc.take_extent_copies()


def _decode_batch(state: SyntheticState, batch: Batch, num: int, context: int) -> bool:
    for _ in range(num):
        seq = state.new_seq(context - 1)
        if seq is None or not state.alloc.can_append(seq.index, 1):
            if seq is not None:
                batch.decode.append(seq)
            return False
        state.alloc.append(seq.index, 1)
        batch.decode.append(seq)
        batch.num_decode_seqs += 1
        batch.decode_context_tokens += context
    return True


def _prefill_batch(state: SyntheticState, batch: Batch, num: int, new: int, context: int) -> bool:
    for _ in range(num):
        seq = state.new_seq(new + context)
        if seq is None:
            return False
        seq.cached_tokens = context
        batch.add_prefill(seq, context, new)
    return True


def synthetic_batches(state: SyntheticState, kind: str, a: int, b: int, prefill_seqs: int = 1):
    """Yield one Batch of a grid point (none if it does not fit the pool). Kinds: ("decode", batch size, context),
    ("prefill", new tokens, context), ("multi", sequences, new tokens each), ("mixed", prefill tokens, decode batch
    size at context 512), ("chunk", prefill tokens, decode batch size): the mixed shape with the prefill on
    CHUNK_CONTEXT tokens of context, as vllm-v1's chunked prefill runs it; ("copy", block copies, 0) -- a decode
    batch of 8 at context 64 with that many CoW copies."""
    batch = Batch()
    if kind == "decode":
        ok = _decode_batch(state, batch, a, b)
    elif kind == "prefill":
        ok = _prefill_batch(state, batch, 1, a, b)
    elif kind == "multi":
        ok = _prefill_batch(state, batch, a, b, 0)
    elif kind == "mixed":
        ok = _prefill_batch(state, batch, 1, a, 0) and _decode_batch(state, batch, b, 512)
    elif kind == "chunk":  # vllm-v1's shape: a prompt chunk on earlier chunks' context, beside decode rows
        ok = _prefill_batch(state, batch, 1, a, CHUNK_CONTEXT) and _decode_batch(state, batch, b, 512)
    elif kind == "copy":
        ok = state.paged and _decode_batch(state, batch, 8, 64)
        if ok:
            free = state.alloc.wrapped.pool.free_block_ids()
            if len(free) < 2 * a:
                ok = False
            else:
                blocks = free[: 2 * a]
                batch.copies = list(zip(blocks[:a], blocks[a:]))
    else:
        raise ValueError(kind)
    if not ok:
        state.release(batch)
        return
    yield batch


CHUNK_CONTEXT = 2048  # context of the "chunk" grid points: the earlier chunks of a long prompt
#: the allocator whose pool layout calibration times for a model with KV-cache groups (`has_kv_groups`)
CALIBRATION_GROUPED_ALLOCATOR = "paged-hybrid"


def has_kv_groups(model) -> bool:
    """Whether the grouped allocators lay the model out differently from one block of every layer: several KV-cache
    groups, or a sliding-window group (whose windows give blocks back)."""
    layout = kv_layout(model)
    return layout.is_hybrid or any(g.is_sliding for g in layout.groups)


def grid(max_len: int, max_seqs: int, max_batched: int) -> list[tuple[str, int, int]]:
    points = []
    # 24 and 48: batch sizes of the replay's graph buckets between powers of two, where overloaded replays run
    for n in (1, 2, 4, 8, 16, 24, 32, 48, 64, 128, 256):
        if n > max_seqs:
            continue
        for c in (16, 128, 512, 1024, 2048, 4096):
            if c <= max_len:
                points.append(("decode", n, c))
    for n in (16, 64, 128, 256, 512, 1024, 2048, 4096):
        for c in (0, 256, 1024):
            if n <= max_batched and n + c <= max_len:
                points.append(("prefill", n, c))
    for k, n in ((4, 32), (4, 128), (16, 32), (16, 128)):
        if k * n <= max_batched and n <= max_len and k <= max_seqs:
            points.append(("multi", k, n))
    for p in (128, 1024):
        for d in (8, 32, 128):
            if p <= max_batched and d + 1 <= max_seqs and p <= max_len:
                points.append(("mixed", p, d))
    for p in (512, 2048):
        for d in (8, 64):
            if p + d <= max_batched and d + 1 <= max_seqs and p + CHUNK_CONTEXT <= max_len:
                points.append(("chunk", p, d))
    return points


def measure(
    state: SyntheticState,
    points,
    repeats: int = 2,
    passes: int = 3,
    deadline: float | None = None,
    log=print,
    seed: int = 0,
) -> list[dict]:
    """Time every grid point: `passes` visits in a shuffled order (so that slow drifts of the host, which launches
    every kernel and is the bottleneck at these sizes, spread over all points instead of biasing a few), each visit
    one warm-up run and `repeats` timed runs of a freshly placed batch; a point's time is the median of its timed
    runs."""
    ex = state.executor
    rng = np.random.default_rng(seed)
    walls: dict[int, list[float]] = {}
    gpus: dict[int, list[float]] = {}
    feats: dict[int, dict] = {}
    stop = False
    for _ in range(passes):
        for i in rng.permutation(len(points)):
            # The budget never cuts the grid below what a fit needs (warm-up alone may exceed a small budget).
            if deadline is not None and time.perf_counter() > deadline and len(walls) >= MIN_SAMPLES:
                stop = True
                break
            kind, a, b = points[i]
            for batch in synthetic_batches(state, kind, a, b):
                ex.execute(batch)  # warm-up (and any compilation)
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    r = ex.execute(batch)
                    walls.setdefault(int(i), []).append(time.perf_counter() - t0 - r.capture_s)
                    gpus.setdefault(int(i), []).append(r.gpu_s if r.gpu_s is not None else float("nan"))
                feats[int(i)] = batch_features(batch)
                state.release(batch)
        if stop:
            log(f"calibrate: time budget reached; {len(walls)} of {len(points)} points measured")
            break
    samples = []
    for i in sorted(walls):
        kind, a, b = points[i]
        w = np.array(walls[i])
        samples.append(
            {
                **feats[i],
                "time_s": float(np.median(w)),
                "gpu_s": float(np.median(gpus[i])),
                "kind": kind,
                "point": [a, b],
                "runs": len(w),
                "spread": float(w.max() / w.min() - 1),
            }
        )
        log(
            f"  {kind:<7} {a:>5} {b:>5}: {samples[-1]['time_s'] * 1e3:8.3f} ms wall, "
            f"{samples[-1]['gpu_s'] * 1e3:8.3f} ms GPU ({len(w)} runs, spread {100 * samples[-1]['spread']:.0f}%)"
        )
    return samples


def warm_up(run, force: bool = False) -> float:
    """Compile every kernel variant a replay can meet (Triton specialises on sizes: 1, multiples of 16, others),
    outside the measured loop. Returns seconds spent."""
    from sim.allocators.contiguous import ContiguousOracle

    t0 = time.perf_counter()
    if not force and (not run.harness.warmup or run.model.device.type != "cuda"):
        return 0.0  # the interpreter compiles nothing; tests stay quick
    max_len = min(run.options.model.max_model_len, run.budget.capacity_tokens // 2)
    lens = sorted({x for x in (1, 2, 15, 16, 17, 33, 100, 300, 600, 1500, 2100, 5000) if x <= max_len})
    shapes = (
        [("decode", b, c) for b in (1, 3, 16, 17) for c in lens]
        + [("prefill", n, c) for n in (1, 16, 17, 300) for c in (0, 16, 17) if n + c <= max_len]
        + [("mixed", 64, 4), ("copy", 4, 0)]
    )
    windows = {w for w in run.pool.layers.window if w}
    for w in sorted(windows):  # eager prefills past a sliding window: the kernels' windowed variants
        shapes += [("prefill", n, w + 17) for n in (1, 16, 17) if n + w + 17 <= max_len]
    # block tables and extents: different kernel variants (a pool of several KV-cache groups takes only the
    # grouped allocator, which SyntheticState puts in place of PagedAllocator)
    classes = (PagedAllocator,) if run.pool.layers.num_groups > 1 else (PagedAllocator, ContiguousOracle)
    for cls in classes:
        state = SyntheticState(run, allocator_cls=cls)
        for kind, a, b in shapes:
            for batch in synthetic_batches(state, kind, a, b):
                state.executor.execute(batch)
                state.release(batch)
    state = SyntheticState(run)
    if run.source is not None:  # the check path, once
        for batch in synthetic_batches(state, "decode", 2, 40):
            state.executor.check(state.executor.execute(batch, check=True).capture)
            state.release(batch)
    return time.perf_counter() - t0


LINK_BLOCKS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # blocks per batch of the host-link measurement
LINK_MAX_BYTES = 1 << 30  # most bytes one direction of one batch moves
DUPLEX_SLACK = 0.03  # both directions at once this much slower than the slower alone: a duplex cap


def measure_host_link(
    run,
    repeats: int = 5,
    sizes: tuple[int, ...] = LINK_BLOCKS,
    max_bytes: int = LINK_MAX_BYTES,
    seed: int = 0,
    log=print,
) -> dict:
    """Time the host-tier copy path on `run`'s pool and fit the link (module docstring). Returns the profile's
    `meta["host_link"]`: bytes_per_s_to_gpu, bytes_per_s_to_host, bytes_per_s_duplex (or None), latency_s, the
    harness block's bytes, the samples (direction, blocks, bytes each way, median seconds) and the fit's errors."""
    pool = run.pool
    block_bytes = HostKVPool.block_bytes_of(pool)
    n_max = max(1, min(max(sizes), pool.num_blocks // 2, max(1, max_bytes // block_bytes)))
    sizes = sorted({n for n in sizes if n <= n_max} | {n_max})
    hp = HostKVPool(pool, 2 * n_max, poison=False)
    rng = np.random.default_rng(seed)
    samples = []
    try:
        for n in sizes:
            for mode in ("to_gpu", "to_host", "both"):
                times = []
                for r in range(repeats + 1):  # the first run is a warm-up
                    gpu = rng.permutation(pool.num_blocks)[: 2 * n].tolist()
                    host = rng.permutation(2 * n_max)[: 2 * n].tolist()
                    outs = [Transfer(TO_HOST, OFFLOAD, g, h, block_bytes) for g, h in zip(gpu[:n], host[:n])]
                    ins = [Transfer(TO_GPU, SWAP_IN, g, h, block_bytes) for g, h in zip(gpu[n:], host[n:])]
                    batch = ins if mode == "to_gpu" else outs if mode == "to_host" else outs + ins
                    t = hp.elapsed(hp.execute(batch))
                    if r:
                        times.append(t)
                nbytes = n * block_bytes
                samples.append(
                    {
                        "direction": mode,
                        "blocks": n,
                        "bytes_to_gpu": 0 if mode == "to_host" else nbytes,
                        "bytes_to_host": 0 if mode == "to_gpu" else nbytes,
                        "time_s": float(np.median(times)),
                        "spread": float(max(times) / min(times) - 1) if min(times) > 0 else None,
                    }
                )
    finally:
        del hp
        gc.collect()
    link = fit_host_link(samples)
    link["block_bytes"] = block_bytes
    link["device"] = str(pool.kv.device)
    log(
        f"calibrate: host link to GPU {link['bytes_per_s_to_gpu'] / 1e9:.1f} GB/s, to host "
        f"{link['bytes_per_s_to_host'] / 1e9:.1f} GB/s, latency {link['latency_s'] * 1e6:.0f} us, duplex "
        + ("full" if link["bytes_per_s_duplex"] is None else f"{link['bytes_per_s_duplex'] / 1e9:.1f} GB/s both ways")
        + f" (median |error| {100 * link['fit']['median_abs_rel_error']:.1f}%, max "
        f"{100 * link['fit']['max_abs_rel_error']:.1f}% over {len(samples)} batches)"
    )
    return link


def fit_host_link(samples: list[dict]) -> dict:
    """The host link's figures from measured batches (measure_host_link's samples; module docstring)."""
    from sim.cost.host_link import HostLink

    alone = [s for s in samples if s["direction"] != "both" and s["time_s"] > 0]
    if not alone:
        raise ValueError("no single-direction host-link batch was measured")
    a = np.array([[1.0, s["bytes_to_gpu"], s["bytes_to_host"]] for s in alone])
    y = np.array([s["time_s"] for s in alone])
    lat, inv_gpu, inv_host = nnls(a / y[:, None], np.ones(len(y)))

    def speed(inv: float, key: str) -> float:
        if inv > 0:
            return 1.0 / inv
        rows = [s for s in alone if s[key]]  # no slope (a flat fit): the largest batch's own rate
        big = max(rows, key=lambda s: s[key]) if rows else max(alone, key=lambda s: s["time_s"])
        return max(big[key], 1) / big["time_s"]

    to_gpu, to_host = speed(inv_gpu, "bytes_to_gpu"), speed(inv_host, "bytes_to_host")
    duplex = None
    both = [s for s in samples if s["direction"] == "both" and s["time_s"] > lat]
    if both:
        slow = [
            s["time_s"] / HostLink("", to_gpu, lat, to_host).time(s["bytes_to_gpu"], s["bytes_to_host"]) for s in both
        ]
        if float(np.median(slow)) > 1 + DUPLEX_SLACK:
            implied = [(s["bytes_to_gpu"] + s["bytes_to_host"]) / (s["time_s"] - lat) for s in both]
            duplex = float(np.median(implied))
    link = HostLink("", to_gpu, float(lat), to_host, duplex)
    rel = np.array(
        [link.time(s["bytes_to_gpu"], s["bytes_to_host"]) / s["time_s"] - 1 for s in samples if s["time_s"] > 0]
    )
    return {
        "name": "calibrated host link (pinned copies)",
        "bytes_per_s_to_gpu": float(to_gpu),
        "bytes_per_s_to_host": float(to_host),
        "bytes_per_s_duplex": duplex,
        "latency_s": float(lat),
        "fit": {
            "median_abs_rel_error": float(np.median(np.abs(rel))),
            "max_abs_rel_error": float(np.abs(rel).max()),
            "weighting": "relative (rows weighted by 1 / measured time)",
        },
        "samples": samples,
    }


def calibrate(
    run, meta: dict, repeats: int = 2, passes: int = 3, budget_s: float | None = None, log=print, link: bool = True
):
    """Measure the grid on `run` (a kernels.harness.replay.GpuRun) and return the fitted ProfileCostModel; with
    `link`, also the host link (`measure_host_link`, into the profile's meta)."""

    o = run.options
    t0 = time.perf_counter()
    if run.budget.layout is None and has_kv_groups(o.model):
        # A model with sliding-window layers or several KV-cache groups: time the grid on the grouped allocator's
        # pool (vLLM's hybrid pages, one block table per group), the layout its replays with paged-hybrid run on.
        run.use_options(replace(o, allocator=CALIBRATION_GROUPED_ALLOCATOR))
        o = run.options
    if run.budget.layout is not None:  # (`sim calibrate` builds such a run on the grouped pool from the start)
        log(
            f"calibrate: {len(run.budget.layout.groups)} KV-cache groups: the grid runs on {o.allocator}'s pages "
            f"({run.budget.num_blocks:,} pages of {run.budget.layout.group_size} layers)"
        )
    meta = {**meta, "allocator": o.allocator, "kv_groups": len(run.budget.layout.groups) if run.budget.layout else 1}
    warm = warm_up(run)
    log(f"calibrate: warm-up {warm:.1f} s")
    state = SyntheticState(run)
    points = grid(o.model.max_model_len, o.engine_config.max_num_seqs, o.engine_config.batched_tokens_limit(o.model))
    deadline = t0 + budget_s if budget_s else None
    gc.collect()
    gc.disable()  # no collector pauses inside the timed runs
    try:
        samples = measure(state, points, repeats, passes, deadline, log)
    finally:
        gc.enable()
    profile = fit_profile(samples, meta=meta)
    if link:
        try:
            profile.meta["host_link"] = measure_host_link(run, log=log)
        except (RuntimeError, ValueError) as exc:  # e.g. pinned memory refused: the profile is still good without it
            log(f"calibrate: host link not measured: {exc}")
    profile.meta["calibration_s"] = time.perf_counter() - t0
    return profile
