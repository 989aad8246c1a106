"""Iterations with prefill tokens (prefill alone, or prefill + decode) through static buffers, replayed as CUDA graphs.

Why: eager, such an iteration launches ~16 kernels per layer from Python and is bound by the host, not the GPU: on
the H100's lent machines a 128-token prefill took 11-25 ms depending on the machine (the GPU work is ~5 ms), and the
replay's eager iterations ran ~6% slower than the same batch repeated back to back, as calibration times it
(reports/validation/README.md). Decode-only iterations already replay graphs
(`decode_graphs`); this does the same for the rest, so that every iteration's time is the GPU's.

How (decode_graphs' recipe, extended):

* Rows are laid out as `[decode rows, padded to a batch bucket B | prefill tokens, padded to a token bucket P]`.
  Padded rows write nothing (slot -1) and read nothing: a padded decode row has length 0, and padded prefill tokens
  belong to no sequence (the prefill kernel only reads rows inside `cu_seqlens`). Their outputs are never used.
* Prefill sequences are padded to a bucket S: a padded sequence has no new tokens (its `cu_seqlens` entry repeats
  the last one), so its programs return at once. The prefill kernel's grid is `(P / block_m, heads, S)`: the
  graph bakes it in, and programs past a sequence's length return at once.
* The decode rows' split-KV bound is the model's max length (one context bucket: the decode part of a mixed
  iteration is small beside its prefill, so finer buckets would only multiply the graphs).
* Key: (paged or contiguous, B, P, S). Buckets: B in {0} + decode_graphs.batch_buckets; P: multiples of 16 up to
  128, of 32 up to 512, of 128 up to 2048, of 256 beyond (padding costs at most 12.5% of the rows past 128
  tokens); S: powers of two, and the scheduler's max.
* Check mode: the graph gathers the (at most 32) sampled check rows of the check layers' query and attention output
  through a static index buffer, so a graph keeps a few rows rather than whole activations.
* Copies: the executor issues copy-on-write and fork copies whose source is already written before the replay, and
  those whose source this iteration's prefill writes after it (same stream), as the eager path orders them.
* KV-cache groups: slots and both block tables are per group, as in decode_graphs; sliding-window layers pass their
  window to both kernels. Such a pool takes only block tables, so its buffers are sized for those (not for extents'
  one-token blocks).

Without CUDA the same static-buffer forward runs eagerly (tests compare it with the dynamic path on the CPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from kernels.attention import paged_prefill_attention
from kernels.cache_ops import write_kv
from kernels.harness.decode_graphs import (
    GraphCache,
    batch_buckets,
    round_up_to_4,
    smallest_bucket,
    static_decode_attention,
)
from kernels.harness.kv_pool import KVPool
from kernels.harness.kv_source import KVSource
from kernels.harness.model import RandomTransformer

CHECK_ROWS = 32  # most rows a check iteration samples (executor._plan_capture: 3 decode + up to 18 prefill)


def token_buckets(max_tokens: int) -> list[int]:
    """Prefill-token buckets: multiples of 16 up to 128, of 32 up to 512, of 128 up to 2048, of 256 beyond; the last
    bucket is `max_tokens` itself."""
    out, t = [], 16
    while t < max_tokens:
        out.append(t)
        t += 16 if t < 128 else 32 if t < 512 else 128 if t < 2048 else 256
    return out + [max_tokens]


def seq_buckets(max_seqs: int) -> list[int]:
    """Prefill-sequence buckets: powers of two below `max_seqs`, then `max_seqs`."""
    out, s = [], 1
    while s < max_seqs:
        out.append(s)
        s *= 2
    return out + [max_seqs]


@dataclass
class MixedInputs:
    """One iteration's inputs (host side, numpy), rows in the executor's order: decode rows, then prefill tokens."""

    dec_lens: np.ndarray  # int64 [nd], context length including the new token
    dec_table: np.ndarray | None  # paged: int32 [groups, nd, w] block tables (zero-padded); None for extents
    dec_starts: np.ndarray | None  # extents: int64 [nd] first slot
    slots: np.ndarray  # int64 [groups, nd + npf], slot of every new token in each KV-cache group's blocks
    positions: np.ndarray  # int64 [nd + npf]
    cu: np.ndarray  # int64 [S_real + 1], cumulative new tokens per prefill sequence
    ctx: np.ndarray  # int64 [S_real], cached tokens per prefill sequence
    pf_table: np.ndarray  # int32 [groups, S_real, w], block tables (or one-token blocks for extents) of the prefills
    src_rows: np.ndarray | None = None  # check mode: int64 [nd + npf] rows of the deterministic K/V table
    check_rows: list[int] = field(default_factory=list)  # rows (executor's order) whose q/attention are kept


@dataclass
class MixedOutput:
    tokens: torch.Tensor  # [B + S] sampled tokens: decode rows, then each prefill sequence's last token
    q: dict[int, torch.Tensor] = field(default_factory=dict)  # check layer -> [CHECK_ROWS, Hq, D]
    attn: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass
class _Layout:
    """Offsets of one key's pieces in the static buffers (each piece on a 16-byte boundary), and their views."""

    off32: dict[str, int]
    off64: dict[str, int]
    n32: int
    n64: int
    views: dict[str, torch.Tensor]


class MixedRunner(GraphCache):
    """Static-buffer forward of iterations with prefill tokens; on CUDA replayed from captured graphs.

    Args:
        model, pool, source: as the executor's.
        check_layers: layers whose sampled check rows are kept.
        max_batch: the scheduler's max sequences (decode rows and prefill sequences).
        max_tokens: the scheduler's max batched tokens (prefill tokens of one iteration).
        max_len: the model's max length, tokens (the decode rows' split-KV bound; table widths).
        use_graphs: capture and replay CUDA graphs (CUDA only).
        mempool: a graph memory pool to share (the decode runner's), or None for a new one.
    """

    warmup_runs = 1  # (the first capture compiles; later keys only need cuBLAS to pick its kernels)

    def __init__(
        self,
        model: RandomTransformer,
        pool: KVPool,
        source: KVSource | None,
        check_layers: list[int],
        max_batch: int,
        max_tokens: int,
        max_len: int,
        use_graphs: bool,
        mempool=None,
    ):
        self.model, self.pool, self.source = model, pool, source
        self.device = model.device
        self._init_graphs(use_graphs, mempool)
        self.check_layers = sorted(check_layers)
        self.block_size = pool.block_size
        self.max_len = int(max_len)
        blocks = -(-self.max_len // self.block_size)
        self.width = -(-blocks // 16) * 16  # paged table width (blocks)
        self.unit_width = -(-self.max_len // 16) * 16  # one-token-block table width (extents)
        self.num_groups = pool.layers.num_groups  # block tables per sequence (KV-cache groups)
        self.batch_buckets = [0] + batch_buckets(int(max_batch))
        self.token_buckets = token_buckets(int(max_tokens))
        self.seq_buckets = seq_buckets(int(max_batch))
        bmax, pmax, smax = self.batch_buckets[-1], self.token_buckets[-1], self.seq_buckets[-1]
        # the largest layout: extents' one-token-block tables are the widest, but a pool of several KV-cache groups
        # takes only block tables (a contiguous allocator has one table for every layer)
        big = self._offsets(bmax, pmax, smax, self.num_groups > 1)
        pin = self.device.type == "cuda"
        self.host32 = torch.zeros(big[2], dtype=torch.int32, pin_memory=pin)
        self.host64 = torch.zeros(big[3], dtype=torch.int64, pin_memory=pin)
        self.np32, self.np64 = self.host32.numpy(), self.host64.numpy()
        self.dev32 = torch.zeros(big[2], dtype=torch.int32, device=self.device)
        self.dev64 = torch.zeros(big[3], dtype=torch.int64, device=self.device)
        if source is not None:
            self._layer_offsets = source.layer_offsets[: model.shapes.layers, None].to(self.device)
        self._layouts: dict[tuple, _Layout] = {}

    # --- layout -------------------------------------------------------------------------------------------------------
    def _offsets(self, b: int, p: int, s: int, paged: bool):
        pw, ng = (self.width if paged else self.unit_width), self.num_groups
        sizes32 = {  # per group: slots (each row padded to 16 bytes), decode and prefill block tables
            "ids": b + p,
            "slots": ng * round_up_to_4(b + p),
            "dlens": b,
            "cu": s + 1,
            "ctx": s,
            "dbt": ng * b * self.width,
            "pbt": ng * s * pw,
        }
        sizes64 = {"dstarts": b, "src": b + p, "last": b + s, "check": CHECK_ROWS}
        off32, o = {}, 0
        for k, n in sizes32.items():
            off32[k] = o
            o += round_up_to_4(n)
        off64, o64 = {}, 0
        for k, n in sizes64.items():
            off64[k] = o64
            o64 += -(-n // 2) * 2
        return off32, off64, o, o64, sizes32, sizes64, pw

    def layout(self, key: tuple[bool, int, int, int]) -> _Layout:
        lay = self._layouts.get(key)
        if lay is None:
            paged, b, p, s = key
            off32, off64, n32, n64, sz32, sz64, pw = self._offsets(b, p, s, paged)
            ng = self.num_groups
            v = {k: self.dev32[off32[k] : off32[k] + n] for k, n in sz32.items()}
            v.update({k: self.dev64[off64[k] : off64[k] + n] for k, n in sz64.items()})
            v["slots"] = v["slots"].view(ng, round_up_to_4(b + p))[:, : b + p]
            v["dbt"] = v["dbt"].view(ng, b, self.width)
            v["pbt"] = v["pbt"].view(ng, s, pw)
            lay = _Layout(off32, off64, n32, n64, v)
            self._layouts[key] = lay
        return lay

    def key_for(self, nd: int, npf: int, nseqs: int, paged: bool, max_ctx: int) -> tuple[bool, int, int, int] | None:
        """(paged, B, P, S), or None when the iteration fits no bucket (the executor runs it eagerly)."""
        b = smallest_bucket(self.batch_buckets, nd)
        p = smallest_bucket(self.token_buckets, npf)
        s = smallest_bucket(self.seq_buckets, nseqs)
        if b is None or p is None or s is None or max_ctx > self.max_len or (not paged and self.num_groups > 1):
            return None
        return paged, b, p, s

    # --- host side ----------------------------------------------------------------------------------------------------
    def stage(self, key: tuple[bool, int, int, int], inp: MixedInputs, vocab: int) -> tuple[int, int]:
        """Write the inputs, padded to the key's buckets, into the pinned staging buffers; (int32, int64) counts."""
        paged, b, p, s = key
        lay = self.layout(key)
        o32, o64 = lay.off32, lay.off64
        h32, h64 = self.np32, self.np64
        nd, ns = len(inp.dec_lens), len(inp.ctx)
        npf = int(inp.cu[-1])

        def rows(h: np.ndarray, arr: np.ndarray, base: int, pad: int) -> None:  # [decode | pad | prefill | pad]
            h[base : base + nd] = arr[:nd]
            h[base + nd : base + b] = pad
            h[base + b : base + b + npf] = arr[nd:]
            h[base + b + npf : base + b + p] = pad

        rows(h32, inp.positions % vocab, o32["ids"], 0)
        for g in range(self.num_groups):  # the cache write skips negative slots
            rows(h32, inp.slots[g], o32["slots"] + g * round_up_to_4(b + p), -1)
        d = o32["dlens"]
        h32[d : d + nd] = inp.dec_lens
        h32[d + nd : d + b] = 0  # length 0: reads nothing, writes a zero row
        c = o32["cu"]
        h32[c : c + ns + 1] = inp.cu
        h32[c + ns + 1 : c + s + 1] = npf  # padded sequences: no new tokens
        c = o32["ctx"]
        h32[c : c + ns] = inp.ctx
        h32[c + ns : c + s] = 0
        ng = self.num_groups
        if paged and b:
            bt = h32[o32["dbt"] : o32["dbt"] + ng * b * self.width].reshape(ng, b, self.width)
            bt[:] = 0
            if nd:
                bt[:, :nd, : inp.dec_table.shape[2]] = inp.dec_table
        pw = lay.views["pbt"].shape[2]
        pbt = h32[o32["pbt"] : o32["pbt"] + ng * s * pw].reshape(ng, s, pw)
        pbt[:] = 0
        pbt[:, :ns, : inp.pf_table.shape[2]] = inp.pf_table
        if not paged:
            d = o64["dstarts"]
            if nd:
                h64[d : d + nd] = inp.dec_starts
            h64[d + nd : d + b] = 0
        if inp.src_rows is not None:
            rows(h64, inp.src_rows, o64["src"], 0)
        last = o64["last"]
        h64[last : last + nd] = np.arange(nd)
        h64[last + nd : last + b] = 0
        h64[last + b : last + b + ns] = b + inp.cu[1:] - 1
        h64[last + b + ns : last + b + s] = 0
        chk = o64["check"]
        moved = [r if r < nd else r - nd + b for r in inp.check_rows]
        h64[chk : chk + len(moved)] = moved
        h64[chk + len(moved) : chk + CHECK_ROWS] = 0
        return lay.n32, lay.n64

    def upload(self, n32: int, n64: int) -> None:
        self.dev32[:n32].copy_(self.host32[:n32], non_blocking=True)
        self.dev64[:n64].copy_(self.host64[:n64], non_blocking=True)

    # --- device side --------------------------------------------------------------------------------------------------
    def forward(self, key: tuple[bool, int, int, int]) -> MixedOutput:
        """The forward of bucket `key` on the static buffers (what a graph captures)."""
        paged, b, p, s = key
        model, pool, sh, v = self.model, self.pool, self.model.shapes, self.layout(key).views
        out = MixedOutput(tokens=None)
        x = model.embed_tokens(v["ids"])
        layer_rows = (v["src"][None, :] + self._layer_offsets) % self.source.rows if self.source is not None else None
        lm = pool.layers
        for layer in range(sh.layers):
            g, window = lm.group[layer], lm.window[layer]  # the layer's KV-cache group and sliding window
            q, k, val = model.qkv(layer, x)
            if layer_rows is not None:
                kv = self.source.table.index_select(0, layer_rows[layer])
                k, val = kv[:, 0], kv[:, 1]
            write_kv(k, val, pool.k(layer), pool.v(layer), v["slots"][g])
            attn = torch.empty((b + p, sh.q_heads, sh.head_size), dtype=q.dtype, device=self.device)
            if b:
                static_decode_attention(
                    q[:b],
                    pool,
                    layer,
                    paged,
                    v["dbt"][g],
                    v["dstarts"],
                    v["dlens"],
                    model.scale,
                    self.max_len,
                    attn[:b],
                    window,
                )
            kc, vc = (pool.k(layer), pool.v(layer)) if paged else (pool.k_unit_blocks(layer), pool.v_unit_blocks(layer))
            paged_prefill_attention(
                q[b:],
                kc,
                vc,
                v["pbt"][g],
                v["cu"],
                v["ctx"],
                model.scale,
                max_query_len=p,
                out=attn[b:],
                sliding_window=window,
            )
            if self.source is not None and layer in self.check_layers:
                out.q[layer] = q.index_select(0, v["check"])
                out.attn[layer] = attn.index_select(0, v["check"])
            x = model.attn_out_and_mlp(layer, x, attn)
        out.tokens = model.sample(x.index_select(0, v["last"]))
        return out

    def _neutral(self, key: tuple[bool, int, int, int]) -> None:
        """Inputs that touch nothing: every slot -1, every length 0, no prefill tokens."""
        v = self.layout(key).views
        for name in ("ids", "dlens", "cu", "ctx", "dbt", "pbt", "dstarts", "src", "last", "check"):
            v[name].zero_()
        v["slots"].fill_(-1)
