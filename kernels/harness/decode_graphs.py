"""Decode-only iterations through static buffers, replayed as CUDA graphs (one per batch-size and context bucket).

Why: eager, a decode iteration of Llama-2-7B launches ~15 kernels per layer x 32 layers from Python and takes 12-17 ms
where reading the weights takes 4.5 ms (reports/validation/README.md): the GPU waits for the host, and the
host's jitter becomes the iteration's jitter. A CUDA graph launches the whole forward at once.

How (the vLLM recipe):

* Static device buffers hold a decode iteration's inputs: token ids, slot mapping, context lengths, block tables of a
  fixed width (`max_blocks_per_seq`, enough for the model's max length), contiguous starts, and in check mode the
  deterministic K/V rows. The host fills a pinned staging copy and sends it in one int32 and one int64 copy.
* A batch of `n` decode rows runs in the smallest batch bucket `B >= n` (1, 2, 4, 8, 16, 24, ... multiples of 8 up to
  the scheduler's max). Padded rows are harmless: slot -1 (the cache write skips it), length 0 (the decode kernel writes
  a zero row and reads nothing), token 0, block table row 0; their sampled tokens are ignored.
* The decode kernel sizes its split-KV grid from a host-side bound on the context (`max_seq_len`): any bound >= the
  longest context is correct (partitions past a sequence's length return at once, the reduction counts only the
  partitions the length covers), but the grid is baked into a graph. So each graph is captured with a context bucket
  `C` (powers of two from `min_ctx_bucket` up to the model's max length, which is the last bucket) and a batch runs in
  the graph of the smallest `C >= its longest context`. The bound is cut into 512-token partitions
  (`static_decode_attention`, which says why). Key: (paged or contiguous, B, C). The replay
  (`replay.GpuRun.build`) uses a single bucket, the model's max length: with finer buckets, calibration batches of
  uniform lengths ran the non-split kernel where replay batches of the same tokens ran the split path.
* A graph is captured on first use, from neutral inputs (every slot -1, every length 0), so neither its warm-up runs
  nor its capture touches the KV pool; the caller reports the capture time so that the replay clock excludes it.
  Graphs share one memory pool (they replay one at a time).
* Copy-on-write block copies and a contiguous allocator's fork copies stay outside the graph: the executor issues them
  on the same stream before the replay, so they precede the cache writes as in the eager path.
* Check mode: the graph keeps the query and attention output of the check layers (whole bucket) as outputs, so the
  reference checks read the graph's own results at sampled iterations (no eager fallback).
* KV-cache groups (a pool laid out for `paged-hybrid`, kernels.harness.kv_pool): the slots and the block tables are
  per group (`[groups, B]`, `[groups, B, width]`, each group's piece 16-byte aligned), each layer writes and reads
  through its group's, and a sliding-window layer's decode passes its window (its split count then comes from
  min(bound, window): the kernel reads only the window's keys). Placeholders (-1) stay in the tables: they address
  the pool's null block, which the window keeps the kernel from reading.

Without CUDA (tests: TRITON_INTERPRET=1 on the CPU) the same static-buffer forward runs eagerly, so the padding, the
buckets and the fixed-width tables are tested against the dynamic path; only the capture itself needs a GPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from kernels.attention import contiguous_decode_attention, paged_decode_attention
from kernels.cache_ops import write_kv
from kernels.harness.kv_pool import KVPool
from kernels.harness.kv_source import KVSource
from kernels.harness.model import RandomTransformer

#: Tokens per split-KV partition of the decode kernel inside static iterations (decode graphs and mixed graphs).
#: The split bound there is the model's max length, loose for most batches, and the kernel's automatic choice for it
#: (2 partitions of 2,048 tokens from batch 4 up) starts the second partitions, which only the long sequences of a
#: batch have, after every first one: a batch of spread lengths left a tail of long programs. On the H100, one layer's
#: paged decode on batches of spread lengths took 5.5% longer than on uniform batches of the same size and total
#: context with the automatic choice. Partitions of 512 tokens, the last ones started first (paged), took 0.89x the
#: automatic choice's time on the spread batches and 0.98x on the uniform ones (reports/validation/README.md).
STATIC_DECODE_PARTITION = 512


def static_decode_attention(
    q, pool: KVPool, layer: int, paged: bool, block_tables, starts, lens, scale: float, bound: int, out, window=None
) -> None:
    """One layer's decode attention as static iterations launch it: split bound `bound` tokens, partitions of
    `STATIC_DECODE_PARTITION` tokens (the paged kernel starts the last partitions first). Writes `out`.

    window: the layer's sliding window (None: full attention); the kernel then reads only a sequence's last `window`
    keys, and the partitions cut those (so the split count comes from min(bound, window))."""
    keys = min(int(bound), int(window)) if window else int(bound)
    splits = max(1, -(-keys // STATIC_DECODE_PARTITION))
    if paged:
        paged_decode_attention(
            q,
            pool.k(layer),
            pool.v(layer),
            block_tables,
            lens,
            scale,
            max_seq_len=bound,
            num_splits=splits,
            config={"reverse_parts": True},
            out=out,
            sliding_window=window,
        )
    else:
        contiguous_decode_attention(
            q,
            pool.k_slots(layer),
            pool.v_slots(layer),
            starts,
            lens,
            scale,
            max_seq_len=bound,
            num_splits=splits,
            out=out,
            sliding_window=window,
        )


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then multiples of 8 up to `max_batch` (the last bucket is `max_batch` itself)."""
    out = [b for b in (1, 2, 4, 8) if b < max_batch]
    out += list(range(16, max_batch, 8))
    return sorted(set(out + [max_batch]))


def context_buckets(max_len: int, smallest: int = 256) -> list[int]:
    """Powers of two from `smallest` below `max_len`, then `max_len` (tokens)."""
    out, c = [], smallest
    while c < max_len:
        out.append(c)
        c *= 2
    return out + [max_len]


def smallest_bucket(buckets: list[int], n: int) -> int | None:
    """The smallest bucket that holds n (buckets ascending), None when none does."""
    for b in buckets:
        if b >= n:
            return b
    return None


def round_up_to_4(n: int) -> int:
    """n rounded up to a multiple of 4 (int32 rows of a static buffer start 16-byte aligned)."""
    return -(-n // 4) * 4


@dataclass
class DecodeInputs:
    """One decode iteration's inputs (host side, numpy)."""

    lens: np.ndarray  # int64 [n], context length including the new token
    slots: np.ndarray  # int64 [groups, n], slot of the new token in each KV-cache group's blocks
    positions: np.ndarray  # int64 [n]
    tables: list | None  # paged: per row, one block table per group (sequences of block ids); None for extents
    starts: np.ndarray | None  # extents: int64 [n] first slot; None for block tables
    src_rows: np.ndarray | None  # check mode: int64 [n] rows of the deterministic K/V table


@dataclass
class _Views:
    """Device views of the static buffers for one batch bucket (offsets depend on B so one copy covers them)."""

    ids: torch.Tensor
    slots: torch.Tensor  # [groups, B] int32 (each row 16-byte aligned)
    lens: torch.Tensor
    bt: torch.Tensor  # [groups, B, width] int32
    n32: int
    starts: torch.Tensor
    src: torch.Tensor
    n64: int


@dataclass
class DecodeOutput:
    tokens: torch.Tensor  # [B] sampled tokens (rows >= n are padding)
    q: dict[int, torch.Tensor] = field(default_factory=dict)  # check layer -> [B, Hq, D]
    attn: dict[int, torch.Tensor] = field(default_factory=dict)


class GraphCache:
    """One CUDA graph per key, captured on first use and replayed after; without graphs, `forward` runs eagerly.
    Subclasses give `forward(key)` (the work a graph captures, on static buffers) and `_neutral(key)` (inputs that
    touch nothing, so warm-up and capture leave the KV pool alone)."""

    warmup_runs = 2  # forward runs before a capture: Triton compiles, cuBLAS picks its kernels

    def _init_graphs(self, use_graphs: bool, mempool=None) -> None:
        if use_graphs and self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.use_graphs = use_graphs
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, object]] = {}
        self._mempool = (mempool if mempool is not None else torch.cuda.graph_pool_handle()) if use_graphs else None
        self.capture_s_total = 0.0
        self.replays = 0
        self.eager_runs = 0

    def forward(self, key: tuple):
        raise NotImplementedError

    def _neutral(self, key: tuple) -> None:
        raise NotImplementedError

    def capture(self, key: tuple) -> float:
        """Capture the graph of `key` after `warmup_runs` runs on a side stream; seconds."""
        t0 = time.perf_counter()
        torch.cuda.synchronize()
        self._neutral(key)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup_runs):
                self.forward(key)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._mempool):
            out = self.forward(key)
        torch.cuda.synchronize()
        self.graphs[key] = (graph, out)
        dt = time.perf_counter() - t0
        self.capture_s_total += dt
        return dt

    def ensure(self, key: tuple) -> float:
        """Capture `key`'s graph if it is missing (CUDA graphs only); returns the seconds spent capturing."""
        if not self.use_graphs or key in self.graphs:
            return 0.0
        return self.capture(key)

    def run(self, key: tuple):
        """Execute the staged and uploaded inputs: replay the graph (captured by `ensure`) or run eagerly."""
        if self.use_graphs:
            graph, out = self.graphs[key]
            graph.replay()
            self.replays += 1
            return out
        self.eager_runs += 1
        return self.forward(key)


class DecodeRunner(GraphCache):
    """Static-buffer decode forward; on CUDA replayed from captured graphs (see the module docstring).

    Args:
        model, pool, source: as the executor's (source None: the model's own K/V are written).
        check_layers: layers whose q and attention output are kept for the reference checks.
        max_batch: largest decode batch (the scheduler's max_num_seqs); larger batches are refused (`fits`).
        max_len: longest context (the model's max length), tokens.
        use_graphs: capture and replay CUDA graphs (CUDA only); False runs the same static path eagerly.
        min_ctx_bucket: smallest context bucket, tokens.
    """

    def __init__(
        self,
        model: RandomTransformer,
        pool: KVPool,
        source: KVSource | None,
        check_layers: list[int],
        max_batch: int,
        max_len: int,
        use_graphs: bool,
        min_ctx_bucket: int = 256,
    ):
        self.model, self.pool, self.source = model, pool, source
        self.device = model.device
        self._init_graphs(use_graphs)
        self.check_layers = sorted(check_layers)
        self.block_size = pool.block_size
        self.max_len = int(max_len)
        blocks = -(-self.max_len // self.block_size)
        self.width = -(-blocks // 16) * 16  # block-table width, multiple of 16
        self.batch_buckets = batch_buckets(int(max_batch))
        self.ctx_buckets = context_buckets(self.max_len, min_ctx_bucket)
        self.num_groups = ng = pool.layers.num_groups  # block tables per sequence (KV-cache groups)
        bmax = self.batch_buckets[-1]
        n32 = (2 + ng) * round_up_to_4(bmax) + ng * bmax * self.width
        n64 = 2 * bmax
        pin = self.device.type == "cuda"
        self.host32 = torch.zeros(n32, dtype=torch.int32, pin_memory=pin)
        self.host64 = torch.zeros(n64, dtype=torch.int64, pin_memory=pin)
        self.np32, self.np64 = self.host32.numpy(), self.host64.numpy()
        self.dev32 = torch.zeros(n32, dtype=torch.int32, device=self.device)
        self.dev64 = torch.zeros(n64, dtype=torch.int64, device=self.device)
        if source is not None:
            self._layer_offsets = source.layer_offsets[: model.shapes.layers, None].to(self.device)
        self._views: dict[int, _Views] = {}

    # --- layout -------------------------------------------------------------------------------------------------------
    def views(self, b: int) -> _Views:
        """int32: ids [B] | slots [B] per group | lens [B] | block tables [B, width] per group; int64: starts [B] |
        src rows [B]. Every piece starts on a 16-byte boundary (Triton specialises on pointer alignment)."""
        v = self._views.get(b)
        if v is None:
            w, o, ng = self.width, round_up_to_4(b), self.num_groups
            d32, d64 = self.dev32, self.dev64
            t0 = (2 + ng) * o  # the block tables
            v = _Views(
                d32[0:b],
                d32[o : o + ng * o].view(ng, o)[:, :b],
                d32[(1 + ng) * o : (1 + ng) * o + b],
                d32[t0 : t0 + ng * b * w].view(ng, b, w),
                t0 + ng * b * w,
                d64[0:b],
                d64[b + b % 2 : b + b % 2 + b],
                2 * b + b % 2,
            )
            self._views[b] = v
        return v

    def key_for(self, n: int, max_ctx: int, paged: bool) -> tuple[bool, int, int] | None:
        """(paged, batch bucket, context bucket), or None when the batch does not fit any bucket."""
        b = smallest_bucket(self.batch_buckets, n)
        c = smallest_bucket(self.ctx_buckets, max_ctx)
        if b is None or c is None or (paged and -(-max_ctx // self.block_size) > self.width):
            return None
        return paged, b, c

    # --- host side ----------------------------------------------------------------------------------------------------
    def stage(self, key: tuple[bool, int, int], inp: DecodeInputs, vocab: int) -> tuple[int, int]:
        """Write the inputs, padded to the bucket, into the pinned staging buffers; returns (int32, int64) counts."""
        paged, b, _c = key
        n, w, o, ng = len(inp.lens), self.width, round_up_to_4(b), self.num_groups
        h32, h64 = self.np32, self.np64
        h32[0:n] = inp.positions % vocab
        h32[n:b] = 0
        sl = h32[o : o + ng * o].reshape(ng, o)
        sl[:, :n] = inp.slots
        sl[:, n:b] = -1  # padding: the cache write skips negative slots
        ln = (1 + ng) * o
        h32[ln : ln + n] = inp.lens
        h32[ln + n : ln + b] = 0  # padding: length 0 reads nothing and writes a zero row
        v = self.views(b)
        if paged:
            t0 = (2 + ng) * o
            bt = h32[t0 : t0 + ng * b * w].reshape(ng, b, w)
            bt[:] = 0
            for i, t in enumerate(inp.tables):
                bt[:, i, : len(t[0])] = t  # every group's table has the same length
        else:
            h64[0:n] = inp.starts
            h64[n:b] = 0
        if inp.src_rows is not None:
            s0 = b + b % 2
            h64[s0 : s0 + n] = inp.src_rows
            h64[s0 + n : s0 + b] = 0
        return v.n32, v.n64

    def upload(self, n32: int, n64: int) -> None:
        self.dev32[:n32].copy_(self.host32[:n32], non_blocking=True)
        self.dev64[:n64].copy_(self.host64[:n64], non_blocking=True)

    # --- device side --------------------------------------------------------------------------------------------------
    def forward(self, key: tuple[bool, int, int]) -> DecodeOutput:
        """The decode forward of bucket `key` on the static buffers (what a graph captures)."""
        paged, b, c = key
        model, pool, s, v = self.model, self.pool, self.model.shapes, self.views(b)
        out = DecodeOutput(tokens=None)
        x = model.embed_tokens(v.ids)
        layer_rows = (v.src[None, :] + self._layer_offsets) % self.source.rows if self.source is not None else None
        lm = pool.layers
        for layer in range(s.layers):
            g = lm.group[layer]  # the layer's KV-cache group: its slots and block tables
            q, k, val = model.qkv(layer, x)
            if layer_rows is not None:
                kv = self.source.table.index_select(0, layer_rows[layer])
                k, val = kv[:, 0], kv[:, 1]
            write_kv(k, val, pool.k(layer), pool.v(layer), v.slots[g])
            attn = torch.empty((b, s.q_heads, s.head_size), dtype=q.dtype, device=self.device)
            static_decode_attention(
                q, pool, layer, paged, v.bt[g], v.starts, v.lens, model.scale, c, attn, lm.window[layer]
            )
            if self.source is not None and layer in self.check_layers:
                out.q[layer], out.attn[layer] = q, attn
            x = model.attn_out_and_mlp(layer, x, attn)
        out.tokens = model.sample(x)
        return out

    def _neutral(self, key: tuple[bool, int, int]) -> None:
        """Inputs that touch nothing: every slot -1, every length 0 (so warm-up and capture leave the pool alone)."""
        v = self.views(key[1])
        v.ids.zero_()
        v.slots.fill_(-1)
        v.lens.zero_()
        v.bt.zero_()
        v.starts.zero_()
        v.src.zero_()
