"""Execute one scheduler `Batch` on the GPU: the model's layers with our kernels over the real KV pool.

Long file: the GPU replay's hot loop; preparation, graph and eager paths share packed buffers.

Order of one iteration:

1. host: gather placements of every sequence in the batch (block tables or extents), the slot of every new token,
   lengths, and (check mode) the identity of every new token; two host-to-device copies (int32 and int64);
2. copies that must precede the writes: the allocator's copy-on-write `(src, dst)` block copies (`copy_blocks`, one
   launch for every layer's K and V) and a contiguous allocator's fork copies recorded before this iteration;
3. per layer: norm + QKV projection of the new tokens (decode rows first, then prefill rows); `write_kv` of the new
   K/V into their slots (check mode: rows of the deterministic table instead of the projections, see kv_source);
   decode attention (`paged_decode_attention`, or `contiguous_decode_attention` for extents) and prefill attention
   with context (`paged_prefill_attention`; extents are read through a block table of one-token blocks
   `start, start + 1, ...` over the same pool, since the kernels have no contiguous prefill); output projection and
   MLP;
4. copies whose source this iteration's prefill wrote (a fork at admission: the children's copy of the prompt);
5. final norm, LM head and argmax for one row per sequence, then a device synchronisation (the host needs the
   sampled tokens before the next iteration, as a serving engine does).

Decode-only iterations go through `decode_graphs.DecodeRunner` when the executor has one: the same steps on static
buffers padded to a batch bucket, replayed as one CUDA graph (steps 3 and 5; the copies of step 2 are issued on the
same stream just before the replay). Iterations with prefill tokens go through `mixed_graphs.MixedRunner` the same
way (decode rows, prefill tokens and prefill sequences each padded to a bucket; the copies of step 4 are issued just
after the replay). Without runners (`--no-cuda-graphs`), or for a batch no bucket fits, the iteration runs eagerly.

KV-cache groups (an allocator with `uses_kv_groups`: `paged-hybrid`, `paged-hybrid-prefix-cache`; the pool laid out
for them, kernels.harness.kv_pool): step 1 gathers every group's block table of each sequence (`block_tables`) and
each new token's slot in every group, so slots are `[groups, tokens]` and tables `[groups, sequences, width]`; in
step 3 each layer writes and reads through its group's slots and tables (`KVLayers.group`), and a sliding-window
layer passes its window to the decode and prefill kernels (`KVLayers.window`, whatever the allocator: it is the
model's attention), which start at the window's first key, so the placeholders (-1, the pool's null block) that a
window left in a table are never read. Copy-on-write copies are the allocator's per-group block copies: a block
belongs to one group, and `copy_blocks` copies its page in every pool tensor. The reference check masks keys
outside a sliding layer's window. An allocator with one table (or extents) drives a pool of one group.

Host-tier copies (`Batch.transfers`, sim.allocators.host_tier): before step 1, the executor's host pool
(kernels.harness.host_pool.HostKVPool) issues them in their order, each direction on its own copy stream, and the
compute stream waits for them, so they precede the copy-on-write copies of step 2 and every write of step 3; their
time (CUDA events around them: `ExecResult.transfer_s`) is not part of `gpu_s`, and the blocks and bytes they moved
are `ExecResult.transfer`. In check mode the sequences whose blocks came back from the host in this iteration (swapped
in, or prefix hits found on the host) are among the rows checked, so a block that came back misplaced or corrupted
shows in the check of that very iteration.

CUDA events bracket steps 1-5 on the device (`gpu_s`); the caller measures wall time around `execute`, less
`ExecResult.capture_s` (the first use of a graph bucket captures it, which a serving engine does at start-up).

This file is long because it is the GPU replay's hot loop: one `Executor` keeps the host-side preparation, the
static (graph) and eager paths and the reference check together, since they share the same packed buffers and the
same per-iteration bookkeeping (tests/harness/test_executor.py replays every path against the simulator).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from kernels import reference as ref
from kernels.attention import contiguous_decode_attention, paged_decode_attention, paged_prefill_attention
from kernels.cache_ops import write_kv
from kernels.harness.decode_graphs import DecodeInputs, DecodeRunner
from kernels.harness.host_pool import HostKVPool, TransferRecord
from kernels.harness.kv_pool import KVPool
from kernels.harness.kv_source import OWNER_SALT, KVSource, LineageTracker, mix
from kernels.harness.mixed_graphs import MixedInputs, MixedRunner
from kernels.harness.model import RandomTransformer
from sim.allocators.base import BlockTablePlacement
from sim.allocators.host_tier import TO_GPU
from sim.serving.request import Batch

# bf16 tolerances of the kernel tests (tests/kernels/_kernel_testutil.py): max |out - ref|, ||out - ref|| / ||ref||
TOLERANCE = {torch.bfloat16: (6e-2, 1.6e-2), torch.float16: (1e-2, 2e-3), torch.float32: (1e-4, 1e-5)}


def _pad16(n: int) -> int:
    return max(16, -(-n // 16) * 16)


def _pack(pieces: list[np.ndarray], per16: int) -> np.ndarray:
    """Concatenate 1-D pieces, each padded with zeros to a multiple of `per16` elements (16 bytes)."""
    dtype = np.int32 if per16 == 4 else np.int64
    sizes = [-(-p.size // per16) * per16 for p in pieces]
    out = np.zeros(max(sum(sizes), per16), dtype=dtype)
    o = 0
    for p, n in zip(pieces, sizes):
        out[o : o + p.size] = p.ravel()
        o += n
    return out


def copy_segments(transfers: list, copies: list, ops: list | None) -> list[tuple[list, list]]:
    """The order to run an iteration's host transfers and copy-on-write copies in: segments (transfers, copies), each
    segment's transfers before its copies, segment after segment. `ops` is the order the allocator recorded them in
    (LineageTracker.take_ops: (kind, object) pairs, the batch's own objects); the batch's transfers that `ops` does not
    name (carried from an iteration that ran nothing) go first, its copies that `ops` does not name last. A segment's
    copies move after the next segment's transfers when those touch none of their blocks, so an iteration usually
    runs as one segment: every transfer, then every copy."""
    if ops is None:
        return [(list(transfers), list(copies))]
    in_batch = {id(t) for t in transfers}
    named_t: set[int] = set()
    named_c: set[int] = set()
    seq = []
    for kind, obj in ops:
        if kind == "transfer":
            if id(obj) in in_batch and id(obj) not in named_t:
                named_t.add(id(obj))
                seq.append((True, obj))
        else:
            named_c.add(id(obj))
            seq.append((False, obj))
    seq = [(True, t) for t in transfers if id(t) not in named_t] + seq
    seq += [(False, c) for c in copies if id(c) not in named_c]
    segments: list[tuple[list, list]] = []
    for is_transfer, obj in seq:
        if not segments or (is_transfer and segments[-1][1]):
            segments.append(([], []))
        segments[-1][0 if is_transfer else 1].append(obj)
    i = 0
    while i < len(segments) - 1:
        (t1, c1), (t2, c2) = segments[i], segments[i + 1]
        touched = {t.gpu_block for t in t2}
        if not any(src in touched or dst in touched for src, dst in c1):
            segments[i : i + 2] = [(t1 + t2, c1 + c2)]
        else:
            i += 1
    return segments


@dataclass
class Capture:
    """Kernel inputs and outputs kept at a check iteration, for the reference."""

    layers: list[int]
    decode: list[tuple[int, int, int]]  # (row in the batch, branch id, length)
    prefill: list[tuple[int, int, int, int, list[int]]]  # (first row, branch id, cached, total, query offsets)
    q: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [rows, Hq, D]
    out: dict[int, torch.Tensor] = field(default_factory=dict)
    rows: torch.Tensor | None = None
    row_list: list[int] = field(default_factory=list)  # the same rows, on the host


@dataclass
class ExecResult:
    gpu_s: float | None  # CUDA-event time of the iteration's device work (None on CPU)
    tokens: int
    capture: Capture | None = None
    capture_s: float = 0.0  # wall time spent capturing a CUDA graph in this call (not part of the iteration)
    static: bool = False  # ran through the static-buffer decode path (a graph replay on CUDA)
    issue_s: float | None = None  # host time from the start event to the last launch (CUDA only): close to gpu_s
    # when the host, not the GPU, bounds the iteration
    mixed_static: bool = False  # an iteration with prefill tokens through the static-buffer (graph) path
    transfer: TransferRecord | None = None  # the host-tier copies issued before the iteration (None: none)
    transfer_s: float | None = None  # their time: CUDA events around them (CPU: wall time); None without copies


@dataclass
class _Prep:
    """Host-side inputs of one iteration, rows in order: decode rows, then each prefill's new tokens."""

    nd: int
    dec_lens: np.ndarray
    dec_slots: np.ndarray
    dec_bt: np.ndarray | None
    dec_starts: np.ndarray | None
    pf_firsts: list
    pf_cached: np.ndarray
    pf_totals: np.ndarray
    pf_bt: np.ndarray | None
    pf_paged: bool
    new: np.ndarray
    npf: int
    total: int
    cu: np.ndarray
    all_slots: np.ndarray
    positions: np.ndarray
    copies_before: list
    copies_after: list
    ext_before: list
    ext_after: list
    src_rows: np.ndarray | None
    capture: Capture | None


@dataclass
class CheckResult:
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    rows_checked: int = 0
    iterations_checked: int = 0
    failures: list[str] = field(default_factory=list)
    nan: bool = False

    def merge(self, other: CheckResult) -> None:
        self.max_abs_error = max(self.max_abs_error, other.max_abs_error)
        self.max_rel_error = max(self.max_rel_error, other.max_rel_error)
        self.rows_checked += other.rows_checked
        self.iterations_checked += other.iterations_checked
        self.nan = self.nan or other.nan
        self.failures.extend(other.failures[: max(0, 20 - len(self.failures))])

    def as_dict(self, dtype: torch.dtype) -> dict:
        atol, rtol = TOLERANCE[dtype]
        return {
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "rows_checked": self.rows_checked,
            "iterations_checked": self.iterations_checked,
            "nan": self.nan,
            "tolerance": {"max_abs": atol, "rel": rtol},
            "within_tolerance": (not self.nan and self.max_abs_error <= atol and self.max_rel_error <= rtol),
            "failures": self.failures,
        }


class Executor:
    """Runs batches of one scheduler/allocator pair on a model and a pool.

    Args:
        model: the random-weight transformer.
        pool: the KV pool (the allocator's capacity).
        allocator: the allocator the scheduler drives, wrapped in a LineageTracker (needed for check mode and for a
            contiguous allocator's fork copies).
        source: the deterministic K/V table (check mode), or None to write the model's own K/V projections.
        runner: the static-buffer/CUDA-graph path for decode-only iterations (shared by every executor of a run),
            or None to run them eagerly like the others.

    Raises ValueError when the allocator's KV-cache groups are not those the pool is laid out for.
    """

    def __init__(
        self,
        model: RandomTransformer,
        pool: KVPool,
        allocator: LineageTracker,
        source: KVSource | None = None,
        check_layers: list[int] | None = None,
        seed: int = 0,
        runner: DecodeRunner | None = None,
        mixed_runner: MixedRunner | None = None,
        host_pool: HostKVPool | None = None,
    ):
        self.model, self.pool, self.alloc, self.source = model, pool, allocator, source
        self.host_pool = host_pool  # the host tier's blocks (Batch.transfers run on them), or None
        # test only: maps an iteration's transfers to those executed (a misplaced block the checks must catch)
        self.transfer_hook = None
        self._loaded: set[int] = set()  # GPU blocks the iteration's transfers fill from the host (check planning)
        self.runner = runner
        self.mixed_runner = mixed_runner
        self.device = model.device
        self.cuda = self.device.type == "cuda"
        self.block_size = pool.block_size
        self.vocab = model.shapes.vocab
        n = model.shapes.layers
        self.layers = pool.layers
        self.num_groups = pool.layers.num_groups
        # An allocator with KV-cache groups gives one block table per group (`block_tables`); any other, one table
        # (or an extent) for every layer. The pool must be laid out for the same groups.
        self.grouped = bool(getattr(allocator, "uses_kv_groups", False)) and hasattr(allocator, "block_tables")
        alloc_groups = len(allocator.groups) if self.grouped else 1
        if alloc_groups != self.num_groups:
            raise ValueError(
                f"the KV pool is laid out for {self.num_groups} KV-cache group(s), the allocator has {alloc_groups}: "
                f"build the pool for this allocator (GpuRun.use_options)"
            )
        if check_layers is None:
            check_layers = runner.check_layers if runner is not None else pool.layers.check_layers()
        self.check_layers = sorted(set(check_layers))
        for r in (runner, mixed_runner):
            if r is not None and not set(self.check_layers) <= set(r.check_layers):
                raise ValueError(
                    f"check layers {self.check_layers} are not kept by the static-buffer runner ({r.check_layers})"
                )
        self.rng = np.random.default_rng(seed)
        if source is not None:
            self._layer_offsets = source.layer_offsets[:n, None].to(self.device)
        if self.cuda:
            self._ev0 = torch.cuda.Event(enable_timing=True)
            self._ev1 = torch.cuda.Event(enable_timing=True)

    # --- host side ----------------------------------------------------------------------------------------------------
    def _tables(self, branch: int):
        """The branch's block tables, one per group (a grouped allocator's `block_tables`: NULL_BLOCK placeholders
        stay -1, the pool's null block), or its placement when it is an extent."""
        if self.grouped:
            return self.alloc.block_tables(branch)
        p = self.alloc.placement(branch)
        return (p.block_table,) if isinstance(p, BlockTablePlacement) else p

    def _decode_meta(self, branches: list[int]):
        """(lengths, slots of the new tokens [groups, n], block tables [groups, n, width] or None, extent starts or
        None)."""
        alloc, bs, ng = self.alloc, self.block_size, self.num_groups
        n = len(branches)
        lens = np.fromiter((alloc.num_tokens(b) for b in branches), dtype=np.int64, count=n)
        tables = [self._tables(b) for b in branches]
        pos = lens - 1
        if not tables or isinstance(tables[0], tuple):
            width = _pad16(max((len(t[0]) for t in tables), default=1))
            bt = np.zeros((ng, n, width), dtype=np.int32)
            for i, t in enumerate(tables):
                bt[:, i, : len(t[0])] = t  # every group's table has the same length (placeholders included)
            slots = bt[:, np.arange(n), pos // bs].astype(np.int64) * bs + pos % bs
            return lens, slots, bt, None
        starts = np.fromiter((p.start for p in tables), dtype=np.int64, count=n)
        return lens, (starts + pos)[None, :], None, starts

    def _prefill_meta(self, seqs, spans):
        """(first branches, cached, totals, slots of the new tokens per sequence [groups, k], block tables
        [groups, sequences, width], paged)."""
        bs, ng = self.block_size, self.num_groups
        firsts, cached, totals, slots, tables = [], [], [], [], []
        paged = True
        for seq, (c, n) in zip(seqs, spans, strict=True):  # positions [c, n) on c tokens of context
            b = seq.branches[0]
            t = self._tables(b)
            pos = np.arange(c, n, dtype=np.int64)
            if isinstance(t, tuple):
                tbl = np.asarray(t, dtype=np.int64).reshape(ng, -1)[:, : -(-n // bs)]
                slots.append(tbl[:, pos // bs] * bs + pos % bs)
            else:
                paged = False
                tbl = (t.start + np.arange(n, dtype=np.int64))[None, :]  # one-token blocks over the same pool
                slots.append((t.start + pos)[None, :])
            tables.append(tbl)
            firsts.append(b)
            cached.append(c)
            totals.append(n)
        width = _pad16(max(t.shape[1] for t in tables))
        bt = np.zeros((ng, len(seqs), width), dtype=np.int32)
        for i, t in enumerate(tables):
            bt[:, i, : t.shape[1]] = t
        return firsts, np.array(cached, dtype=np.int64), np.array(totals, dtype=np.int64), slots, bt, paged

    def _source_rows(self, dec_branches, dec_pos, pf_firsts, pf_cached, pf_totals) -> np.ndarray:
        lineages = self.alloc.lineages
        parts = []
        if dec_branches:
            owners, plain = [], True
            for b in dec_branches:
                lin = lineages[b]
                owners.append(lin.seg_owners[-1])
            owners = np.asarray(owners, dtype=np.int64)
            keys = mix(owners ^ OWNER_SALT, dec_pos)
            # a decode position always lies in the branch's own last segment, past its content runs; check cheaply
            for i, b in enumerate(dec_branches):
                lin = lineages[b]
                if dec_pos[i] < lin.run_total or dec_pos[i] < lin.seg_starts[-1]:
                    plain = False
                    break
            if not plain:
                keys = np.concatenate([lineages[b].keys(dec_pos[i : i + 1]) for i, b in enumerate(dec_branches)])
            parts.append(keys)
        for b, c, n in zip(pf_firsts, pf_cached, pf_totals):
            parts.append(lineages[b].keys(np.arange(c, n, dtype=np.int64)))
        keys = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
        return self.source.base_rows(keys)

    # --- one iteration ------------------------------------------------------------------------------------------------
    def execute(self, batch: Batch, check: bool = False, ops: list | None = None) -> ExecResult:
        """Run one iteration: its host-tier copies (if any), then steps 1-5 of the module docstring. `ops`: the batch's
        copy-on-write copies and transfers in the order the allocator recorded them (LineageTracker.take_ops); None:
        every transfer, then every copy."""
        transfers = batch.transfers
        if not transfers:
            return self._execute(batch, check)
        if self.host_pool is None:
            raise RuntimeError("the batch has host-tier copies but the executor has no host pool")
        self._loaded = {t.gpu_block for t in transfers if t.direction == TO_GPU} if check else set()
        segments = copy_segments(transfers, batch.copies, ops)
        records = []
        saved = batch.copies
        try:
            for i, (run, copies) in enumerate(segments):
                if run:
                    records.append(self.host_pool.execute(self.transfer_hook(run) if self.transfer_hook else run))
                if copies and i < len(segments) - 1:  # copies recorded before later transfers that touch their blocks
                    self.pool.copy_blocks(self._pairs(copies))
            batch.copies = segments[-1][1]  # the copies after the last transfers: the iteration's own (step 2 or 4)
            res = self._execute(batch, check)
        finally:
            batch.copies = saved
            self._loaded = set()
        res.transfer = TransferRecord.total(records, self.host_pool.block_bytes)
        res.transfer_s = float(sum(self.host_pool.elapsed(r) for r in records))
        return res

    def _execute(self, batch: Batch, check: bool) -> ExecResult:
        dec_branches = [b for seq in batch.decode for b in seq.branches]
        if self.runner is not None and dec_branches and not batch.prefill:
            res = self._execute_static(batch, dec_branches, check)
            if res is not None:
                return res
        pr = self._prepare(batch, dec_branches, check)
        if self.mixed_runner is not None and pr.npf:
            res = self._execute_static_mixed(pr)
            if res is not None:
                return res
        return self._execute_eager(pr)

    def _extent_copies(self, prefilling: set) -> tuple[list, list]:
        """A contiguous allocator's fork copies since the last iteration: (before the writes, after the forward)."""
        ext_before, ext_after = [], []
        if isinstance(self.alloc, LineageTracker):
            live = self.alloc.lineages
            for parent, child, src, dst, n in self.alloc.take_extent_copies():
                if child in live:
                    (ext_after if parent in prefilling else ext_before).append((src, dst, n))
        return ext_before, ext_after

    def _execute_static(self, batch: Batch, dec_branches: list[int], check: bool) -> ExecResult | None:
        """A decode-only iteration on the runner's static buffers (a CUDA-graph replay on CUDA). None: no bucket
        fits (the caller runs it eagerly)."""
        alloc, bs, runner, ng = self.alloc, self.block_size, self.runner, self.num_groups
        nd = len(dec_branches)
        lens = np.fromiter((alloc.num_tokens(b) for b in dec_branches), dtype=np.int64, count=nd)
        tables = [self._tables(b) for b in dec_branches]
        paged = isinstance(tables[0], tuple)
        key = runner.key_for(nd, int(lens.max()), paged)
        if key is None:
            return None
        pos = lens - 1
        if paged:
            idx = (pos // bs).tolist()
            blk = np.array([[t[g][q] for t, q in zip(tables, idx)] for g in range(ng)], dtype=np.int64)
            inp = DecodeInputs(lens, blk.reshape(ng, nd) * bs + pos % bs, pos, tables, None, None)
        else:
            starts = np.fromiter((p.start for p in tables), dtype=np.int64, count=nd)
            inp = DecodeInputs(lens, (starts + pos)[None, :], pos, None, starts, None)
        if self.source is not None:
            inp.src_rows = self._source_rows(dec_branches, pos, [], [], [])
        ext_before, _ = self._extent_copies(set())
        copies = list(batch.copies)
        capture = self._plan_capture(dec_branches, lens, [], [], [], np.zeros(1, np.int64), nd) if check else None

        capture_s, t_issue = self._start(runner, key, inp, copies, ext_before)
        out = runner.run(key)
        if capture is not None:
            for layer in capture.layers:
                capture.q[layer] = out.q[layer][capture.rows].clone()
                capture.out[layer] = out.attn[layer][capture.rows].clone()
        gpu_s, issue_s = self._end(out.tokens, t_issue)
        return ExecResult(gpu_s, nd, capture, capture_s, True, issue_s)

    def _prepare(self, batch: Batch, dec_branches: list[int], check: bool) -> _Prep:
        """Host-side inputs of an iteration (both the eager and the static mixed path)."""
        nd = len(dec_branches)
        dec_lens, dec_slots, dec_bt, dec_starts = self._decode_meta(dec_branches)
        if batch.prefill:
            pf_firsts, pf_cached, pf_totals, pf_slots, pf_bt, pf_paged = self._prefill_meta(
                batch.prefill, batch.prefill_spans
            )
        else:
            pf_firsts, pf_cached, pf_totals, pf_slots, pf_bt, pf_paged = (
                [],
                np.zeros(0, np.int64),
                np.zeros(0, np.int64),
                [],
                None,
                True,
            )
        new = pf_totals - pf_cached
        npf = int(new.sum())
        total = nd + npf
        cu = np.concatenate(([0], np.cumsum(new))).astype(np.int64)
        ng = self.num_groups
        all_slots = np.concatenate([dec_slots] + pf_slots, axis=1) if total else np.zeros((ng, 0), np.int64)
        positions = (
            np.concatenate([dec_lens - 1] + [np.arange(c, n) for c, n in zip(pf_cached, pf_totals)])
            if total
            else np.zeros(0, np.int64)
        )

        # copies: before the writes, or after the forward pass when the source is written in this iteration
        copies_before, copies_after = list(batch.copies), []
        if copies_before and len(pf_firsts):
            written = set((np.concatenate(pf_slots, axis=1) // self.block_size).ravel().tolist())
            copies_after = [c for c in copies_before if c[0] in written]
            copies_before = [c for c in copies_before if c[0] not in written]
        ext_before, ext_after = self._extent_copies(set(pf_firsts))
        src_rows = None
        if self.source is not None and total:
            src_rows = self._source_rows(dec_branches, dec_lens - 1, pf_firsts, pf_cached, pf_totals)
        capture = self._plan_capture(dec_branches, dec_lens, pf_firsts, pf_cached, pf_totals, cu, nd) if check else None
        return _Prep(
            nd,
            dec_lens,
            dec_slots,
            dec_bt,
            dec_starts,
            pf_firsts,
            pf_cached,
            pf_totals,
            pf_bt,
            pf_paged,
            new,
            npf,
            total,
            cu,
            all_slots,
            positions,
            copies_before,
            copies_after,
            ext_before,
            ext_after,
            src_rows,
            capture,
        )

    def _execute_static_mixed(self, pr: _Prep) -> ExecResult | None:
        """An iteration with prefill tokens on the mixed runner's static buffers (a CUDA-graph replay on CUDA).
        None: no bucket fits (the caller runs it eagerly)."""
        runner = self.mixed_runner
        paged = pr.dec_starts is None and pr.pf_paged
        if pr.nd and (pr.dec_starts is None) != pr.pf_paged:
            return None  # block tables for one part, extents for the other: never happens with one allocator
        max_ctx = int(pr.pf_totals.max()) if len(pr.pf_totals) else 0
        if pr.nd:
            max_ctx = max(max_ctx, int(pr.dec_lens.max()))
        key = runner.key_for(pr.nd, pr.npf, len(pr.pf_firsts), paged, max_ctx)
        if key is None:
            return None
        inp = MixedInputs(
            pr.dec_lens,
            pr.dec_bt,
            pr.dec_starts,
            pr.all_slots,
            pr.positions,
            pr.cu,
            pr.pf_cached,
            pr.pf_bt,
            pr.src_rows,
            pr.capture.row_list if pr.capture is not None else [],
        )
        capture_s, t_issue = self._start(runner, key, inp, pr.copies_before, pr.ext_before)
        out = runner.run(key)
        if pr.copies_after:
            self.pool.copy_blocks(self._pairs(pr.copies_after))
        for src, dst, n in pr.ext_after:
            self.pool.copy_slots(src, dst, n)
        capture = pr.capture
        if capture is not None:
            k = len(capture.row_list)
            for layer in capture.layers:
                capture.q[layer] = out.q[layer][:k].clone()
                capture.out[layer] = out.attn[layer][:k].clone()
        gpu_s, issue_s = self._end(out.tokens, t_issue)
        return ExecResult(gpu_s, pr.total, capture, capture_s, False, issue_s, mixed_static=True)

    def _start(self, runner, key: tuple, inp, copies: list, ext_copies: list) -> tuple[float, float]:
        """Open a static-buffer iteration: capture the key's graph on its first use (outside the measured window),
        stage and upload the inputs, then the copies that precede the graph's cache writes (same stream). Returns
        (capture seconds, host time at the start event)."""
        capture_s = runner.ensure(key)
        n32, n64 = runner.stage(key, inp, self.vocab)
        t_issue = time.perf_counter()
        if self.cuda:
            self._ev0.record()
        runner.upload(n32, n64)
        if copies:
            self.pool.copy_blocks(self._pairs(copies))
        for src, dst, n in ext_copies:
            self.pool.copy_slots(src, dst, n)
        return capture_s, t_issue

    def _end(self, tokens: torch.Tensor | None, t_issue: float) -> tuple[float | None, float | None]:
        """Close the iteration: (CUDA-event time, host issue time) on CUDA after synchronising; on the CPU, wait for
        the sampled tokens and return (None, None)."""
        if self.cuda:
            issue_s = time.perf_counter() - t_issue
            self._ev1.record()
            self._ev1.synchronize()
            return self._ev0.elapsed_time(self._ev1) / 1e3, issue_s
        if tokens is not None:
            tokens.cpu()
        return None, None

    def _pairs(self, copies: list) -> torch.Tensor:
        return torch.from_numpy(np.array(copies, dtype=np.int64).reshape(-1, 2)).to(self.device, non_blocking=True)

    def _execute_eager(self, pr: _Prep) -> ExecResult:
        model, pool, s = self.model, self.pool, self.model.shapes
        nd, dec_lens, dec_bt, dec_starts = pr.nd, pr.dec_lens, pr.dec_bt, pr.dec_starts
        dec_paged = dec_starts is None
        pf_cached, pf_bt, pf_paged = pr.pf_cached, pr.pf_bt, pr.pf_paged
        new, npf, total, cu = pr.new, pr.npf, pr.total, pr.cu
        all_slots, positions = pr.all_slots, pr.positions
        last_rows = np.concatenate((np.arange(nd), nd + cu[1:] - 1)).astype(np.int64)
        copies_before, copies_after, ext_before, ext_after = (
            pr.copies_before,
            pr.copies_after,
            pr.ext_before,
            pr.ext_after,
        )
        src_rows, capture = pr.src_rows, pr.capture

        # one int32 and one int64 host-to-device copy
        ng = self.num_groups
        i32 = [
            *all_slots.astype(np.int32),  # one row per group, each 16-byte aligned
            (positions % self.vocab).astype(np.int32),
            dec_lens.astype(np.int32),
            cu.astype(np.int32),
            pf_cached.astype(np.int32),
        ]
        if dec_paged and nd:
            i32.append(dec_bt.ravel())
        if pf_bt is not None:
            i32.append(pf_bt.ravel())
        i64 = [last_rows]
        if not dec_paged:
            i64.append(dec_starts)
        if src_rows is not None:
            i64.append(src_rows)
        cp = np.array(copies_before + copies_after, dtype=np.int64).reshape(-1)
        i64.append(cp)

        t_issue = time.perf_counter()
        if self.cuda:
            self._ev0.record()
        # Every piece starts on a 16-byte boundary: Triton specialises kernels on pointer alignment, so unaligned
        # pieces would compile new variants in the middle of a replay (seen on the H100: stalls of 0.3-2 s).
        buf32 = torch.from_numpy(_pack(i32, 4)).to(self.device)
        buf64 = torch.from_numpy(_pack(i64, 2)).to(self.device)
        o = 0

        def take32(n):
            nonlocal o
            t = buf32[o : o + n]
            o += -(-n // 4) * 4
            return t

        slots_t = [take32(total) for _ in range(ng)]  # per group
        ids_t, dlens_t, cu_t, ctx_t = (
            take32(total),
            take32(nd),
            take32(len(cu)),
            take32(len(pf_cached)),
        )
        dbt_t = take32(dec_bt.size).view(dec_bt.shape) if dec_paged and nd else None
        pbt_t = take32(pf_bt.size).view(pf_bt.shape) if pf_bt is not None else None
        o64 = 0

        def take64(n):
            nonlocal o64
            t = buf64[o64 : o64 + n]
            o64 += -(-n // 2) * 2
            return t

        last_t = take64(len(last_rows))
        dstarts_t = take64(nd) if not dec_paged else None
        if src_rows is not None:
            src_t = take64(total)
            layer_rows = (src_t[None, :] + self._layer_offsets) % self.source.rows
        cp_t = take64(len(cp)).view(-1, 2)

        if copies_before:
            pool.copy_blocks(cp_t[: len(copies_before)])
        for src, dst, n in ext_before:
            pool.copy_slots(src, dst, n)

        if total:
            x = model.embed_tokens(ids_t)
            max_dec = int(dec_lens.max()) if nd else 0
            max_q = int(new.max()) if npf else 0
            lm = self.layers
            for layer in range(s.layers):
                g, window = lm.group[layer], lm.window[layer]  # the layer's block tables and sliding window
                q, k, v = model.qkv(layer, x)
                if src_rows is not None:
                    kv = self.source.table.index_select(0, layer_rows[layer])
                    k, v = kv[:, 0], kv[:, 1]
                write_kv(k, v, pool.k(layer), pool.v(layer), slots_t[g])
                attn = torch.empty((total, s.q_heads, s.head_size), dtype=q.dtype, device=self.device)
                if nd:
                    if dec_paged:
                        paged_decode_attention(
                            q[:nd],
                            pool.k(layer),
                            pool.v(layer),
                            dbt_t[g],
                            dlens_t,
                            model.scale,
                            max_seq_len=max_dec,
                            out=attn[:nd],
                            sliding_window=window,
                        )
                    else:
                        contiguous_decode_attention(
                            q[:nd],
                            pool.k_slots(layer),
                            pool.v_slots(layer),
                            dstarts_t,
                            dlens_t,
                            model.scale,
                            max_seq_len=max_dec,
                            out=attn[:nd],
                            sliding_window=window,
                        )
                if npf:
                    kc, vc = (
                        (pool.k(layer), pool.v(layer))
                        if pf_paged
                        else (pool.k_unit_blocks(layer), pool.v_unit_blocks(layer))
                    )
                    paged_prefill_attention(
                        q[nd:],
                        kc,
                        vc,
                        pbt_t[g],
                        cu_t,
                        ctx_t,
                        model.scale,
                        max_query_len=max_q,
                        out=attn[nd:],
                        sliding_window=window,
                    )
                if capture is not None and layer in capture.layers:
                    capture.q[layer] = q[capture.rows].clone()
                    capture.out[layer] = attn[capture.rows].clone()
                x = model.attn_out_and_mlp(layer, x, attn)
            if copies_after:
                pool.copy_blocks(cp_t[len(copies_before) :])
            for src, dst, n in ext_after:
                pool.copy_slots(src, dst, n)
            next_tokens = model.sample(x.index_select(0, last_t))
        else:
            next_tokens = None
        gpu_s, issue_s = self._end(next_tokens, t_issue)
        return ExecResult(gpu_s, total, capture, issue_s=issue_s)

    # --- checking against the reference -------------------------------------------------------------------------------
    def _plan_capture(
        self,
        dec_branches,
        dec_lens,
        pf_firsts,
        pf_cached,
        pf_totals,
        cu,
        nd,
        max_decode: int = 3,
        max_prefill_rows: int = 16,
    ) -> Capture | None:
        if self.source is None:
            return None
        rows: list[int] = []
        decode = []
        if dec_branches:
            pick = self.rng.choice(len(dec_branches), size=min(max_decode, len(dec_branches)), replace=False)
            picked = {int(i) for i in pick}
            if self._loaded:  # every branch (up to 8 more) reading a block that came back from the host just now
                picked |= set([i for i, b in enumerate(dec_branches) if self._reads_loaded(b)][:8])
            for i in sorted(picked):
                decode.append((len(rows), dec_branches[i], int(dec_lens[i])))
                rows.append(i)
        prefill = []
        if len(pf_firsts):
            j = int(self.rng.integers(len(pf_firsts)))
            if self._loaded:  # a prefill on context that came back from the host just now, if any
                j = next((k for k, b in enumerate(pf_firsts) if self._reads_loaded(b)), j)
            c, n = int(pf_cached[j]), int(pf_totals[j])
            new = n - c
            offs = sorted(
                set(
                    [0, new - 1]
                    + [int(x) for x in self.rng.choice(new, size=min(max_prefill_rows, new), replace=False)]
                )
            )
            prefill.append((len(rows), pf_firsts[j], c, n, offs))
            rows.extend(nd + int(cu[j]) + o for o in offs)
        if not rows:
            return None
        cap = Capture(self.check_layers, decode, prefill)
        cap.rows = torch.tensor(rows, dtype=torch.int64, device=self.device)
        cap.row_list = rows
        return cap

    def _reads_loaded(self, branch: int) -> bool:
        """Whether the branch's block tables hold a block the iteration's transfers fill from the host."""
        tables = self._tables(branch)
        return isinstance(tables, tuple) and any(not self._loaded.isdisjoint(t) for t in tables)

    def check(self, capture: Capture | None) -> CheckResult:
        """Reference attention for the captured rows, from the deterministic K/V (never reading the pool)."""
        res = CheckResult()
        if capture is None:
            return res
        res.iterations_checked = 1
        src, lineages, scale = self.source, self.alloc.lineages, self.model.scale
        for layer in capture.layers:
            window = self.layers.window[layer]
            q_all, out_all = capture.q[layer], capture.out[layer]
            jobs = [(r, b, 0, length, [length - 1]) for r, b, length in capture.decode]
            jobs += [(r, b, c, n, [c + off for off in offs]) for r, b, c, n, offs in capture.prefill]
            for r0, branch, _c, n, qpos in jobs:
                base = src.base_rows(lineages[branch].keys(np.arange(n, dtype=np.int64)))
                rows_l = torch.from_numpy(src.rows_for_layer(base, layer)).to(self.device)
                kv = src.table.index_select(0, rows_l).float()
                qp = torch.tensor(qpos, device=self.device)
                keys = torch.arange(n, device=self.device)[None, :]
                mask = keys <= qp[:, None]
                if window:  # a sliding-window layer: keys p - window < k <= p
                    mask &= keys > qp[:, None] - window
                q = q_all[r0 : r0 + len(qpos)]
                expect = ref._attend(q, kv[:, 0], kv[:, 1], scale, mask).float()
                got = out_all[r0 : r0 + len(qpos)].float()
                if not torch.isfinite(got).all():
                    res.nan = True
                    res.failures.append(f"layer {layer} branch {branch}: non-finite output")
                    continue
                err = (got - expect).abs().max().item()
                rel = ((got - expect).norm() / expect.norm().clamp_min(1e-30)).item()
                res.max_abs_error = max(res.max_abs_error, err)
                res.max_rel_error = max(res.max_rel_error, rel)
                res.rows_checked += len(qpos)
                atol, rtol = TOLERANCE.get(q.dtype, TOLERANCE[torch.float32])
                if (err > atol or rel > rtol) and len(res.failures) < 20:
                    res.failures.append(f"layer {layer} branch {branch} len {n}: max abs {err:.3g}, rel {rel:.3g}")
        return res
