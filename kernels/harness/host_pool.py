"""The host tier's KV blocks in host memory, and the iteration's host-link copies (`Batch.transfers`) run on them.

A host tier (sim.allocators.host_tier) lends the scheduler host blocks and records every copy as a `Transfer`
(direction, kind, GPU block, host block). `HostKVPool` holds those host blocks for a GPU pool (kernels.harness.kv_pool)
and executes an iteration's transfers, in their order, before the iteration's copy-on-write copies and forward pass.

Layout. One host block is everything a GPU block id stands for: every layer's K and V of `block_size` tokens, one
contiguous `[tensors, 2, block_size, kv_heads, head_size]` chunk, so the host pool is
`[host_blocks, tensors, 2, block_size, kv_heads, head_size]`, in pinned (page-locked) memory when the GPU pool is on
CUDA (`pin_memory=True`: asynchronous DMA copies; plain memory on the CPU, where the interpreter tests run). On the GPU
a block is not contiguous (the pool is `[tensors, 2, blocks, ...]`: one chunk per layer's K and per layer's V), so
each direction has a GPU staging buffer of whole blocks (at most `staging_bytes`, 256 MiB by default): a copy to the
host gathers the blocks into it (`index_select`, one kernel) and copies each run of consecutive host blocks with one
DMA (`copy_(non_blocking=True)`: a block of Llama-2-7B is 8 MiB, near the link's peak); a copy to the GPU does the
reverse (DMA into the staging buffer, then one `index_copy_` into the pool). More blocks than the staging buffer holds
go in chunks, one after the other on the direction's stream. Within a direction, copies are sorted by host block, so
that consecutive host blocks (a swap takes the lowest free ones) travel as one DMA.

Order. The transfers run in the order given, in waves: a wave is the longest run of transfers in which no GPU block
and no host block appears twice; one wave's copies are independent of each other and run together, each direction on
its own CUDA stream (the link is full duplex, and the simulator prices max(bytes to the GPU, bytes to the host), not
their sum); the next wave waits for both directions of the previous one (a swap-in may free the host block an offload
then writes; an offload may read the GPU block a host hit then fills; a block may move twice in one iteration). The
compute stream records a start event, both copy streams wait on it; when they are done the compute stream waits on
their last events and records an end event; then the executor issues the copy-on-write copies and the forward pass on
the compute stream, which therefore run after every transfer. Every iteration of the executor ends with a device
synchronisation, so a later iteration's copies never race with this one's.

Time. `elapsed(record)` is the end event's time after the start event (CUDA): the link's time for the iteration's
copies, including the gathers and scatters on the GPU and the host's issuing of the copies (the measured link time that
`sim validate` compares with the simulator's link time); on the CPU, the wall time of the (synchronous) copies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from sim.allocators.host_tier import TO_GPU, TO_HOST, Transfer

#: default bound of each direction's GPU staging buffer (bytes); at least one block
STAGING_BYTES = 256 << 20


@dataclass
class TransferRecord:
    """What one `HostKVPool.execute` issued: blocks each way, waves, DMA copies, and its timing handles."""

    blocks_to_host: int = 0
    blocks_to_gpu: int = 0
    waves: int = 0
    dma_copies: int = 0
    block_bytes: int = 0
    start: object = None  # CUDA events (None on the CPU)
    end: object = None
    wall_s: float | None = None  # CPU: wall time of the copies
    keep: list = field(default_factory=list)

    @classmethod
    def total(cls, records: list[TransferRecord], block_bytes: int) -> TransferRecord:
        """The counts of several records (an iteration's transfers in segments), without timing handles."""
        out = cls(block_bytes=block_bytes)
        for r in records:
            out.blocks_to_host += r.blocks_to_host
            out.blocks_to_gpu += r.blocks_to_gpu
            out.waves += r.waves
            out.dma_copies += r.dma_copies
        return out

    @property
    def bytes_to_host(self) -> int:
        return self.blocks_to_host * self.block_bytes

    @property
    def bytes_to_gpu(self) -> int:
        return self.blocks_to_gpu * self.block_bytes


def waves(transfers: list[Transfer]) -> list[list[Transfer]]:
    """Split ordered transfers into waves in which no GPU block and no host block appears twice (module docstring)."""
    out: list[list[Transfer]] = []
    cur: list[Transfer] = []
    gpu_seen: set[int] = set()
    host_seen: set[int] = set()
    for t in transfers:
        if t.gpu_block in gpu_seen or t.host_block in host_seen:
            out.append(cur)
            cur, gpu_seen, host_seen = [], set(), set()
        cur.append(t)
        gpu_seen.add(t.gpu_block)
        host_seen.add(t.host_block)
    if cur:
        out.append(cur)
    return out


def _runs(host_blocks: list[int]) -> list[tuple[int, int, int]]:
    """(first position, end position, first host block) of each run of consecutive host blocks."""
    runs = []
    i = 0
    n = len(host_blocks)
    while i < n:
        j = i + 1
        while j < n and host_blocks[j] == host_blocks[j - 1] + 1:
            j += 1
        runs.append((i, j, host_blocks[i]))
        i = j
    return runs


class HostKVPool:
    """Host blocks for a GPU KV pool and the copies between them (module docstring).

    Args:
        pool: the GPU pool (kernels.harness.kv_pool.KVPool); a host block holds what one of its block ids stands for.
        num_blocks: host blocks (the host tier's `num_blocks`).
        staging_bytes: bound of each direction's GPU staging buffer (at least one block).
        poison: fill the host blocks with NaN (a block read before anything was written to it shows in the checks).
    """

    def __init__(self, pool, num_blocks: int, staging_bytes: int = STAGING_BYTES, poison: bool = True):
        if num_blocks < 1:
            raise ValueError(f"a host pool needs at least one block, got {num_blocks}")
        kv = pool.kv  # [tensors, 2, blocks, block_size, kv_heads, head_size]
        self.pool = pool
        self.device = kv.device
        self.cuda = kv.is_cuda
        self.num_blocks = num_blocks
        self.gpu_blocks = kv.shape[2]
        self.block_shape = (kv.shape[0], 2, *kv.shape[3:])
        self.block_bytes = int(np.prod(self.block_shape)) * kv.element_size()
        #: the GPU pool seen as [blocks, tensors, 2, block_size, kv_heads, head_size] (a view: no copy)
        self._gpu = kv.permute(2, 0, 1, 3, 4, 5)
        self.storage = torch.empty((num_blocks, *self.block_shape), dtype=kv.dtype, device="cpu", pin_memory=self.cuda)
        if poison:
            self.storage.fill_(float("nan"))
        s = max(1, min(staging_bytes // self.block_bytes, num_blocks, self.gpu_blocks))
        self.staging_blocks = s
        self._stage_out = torch.empty((s, *self.block_shape), dtype=kv.dtype, device=self.device)
        self._stage_in = torch.empty((s, *self.block_shape), dtype=kv.dtype, device=self.device)
        if self.cuda:
            self._streams = (torch.cuda.Stream(device=self.device), torch.cuda.Stream(device=self.device))

    @staticmethod
    def block_bytes_of(pool) -> int:
        """Bytes of one host block for `pool` (everything one of its block ids stands for)."""
        kv = pool.kv
        return int(np.prod((kv.shape[0], 2, *kv.shape[3:]))) * kv.element_size()

    @property
    def nbytes(self) -> int:
        """Host bytes (the pinned pool)."""
        return self.storage.numel() * self.storage.element_size()

    @property
    def staging_nbytes(self) -> int:
        """GPU bytes of the two staging buffers."""
        return 2 * self._stage_out.numel() * self._stage_out.element_size()

    def fill(self, value: float) -> None:
        self.storage.fill_(value)

    # --- copies ------------------------------------------------------------------------------------------------------
    def _check(self, transfers: list[Transfer]) -> None:
        for t in transfers:
            if t.direction not in (TO_HOST, TO_GPU):
                raise ValueError(f"unknown transfer direction {t.direction!r}")
            if not 0 <= t.gpu_block < self.gpu_blocks or not 0 <= t.host_block < self.num_blocks:
                raise ValueError(
                    f"transfer {t} is outside the pools ({self.gpu_blocks} GPU blocks, {self.num_blocks} host blocks)"
                )

    def execute(self, transfers: list[Transfer]) -> TransferRecord:
        """Issue `transfers` in order (module docstring). On CUDA the copies are asynchronous: the compute stream waits
        for them, so work issued on it afterwards runs after them; read the time with `elapsed` once that work is
        synchronised."""
        self._check(transfers)
        rec = TransferRecord(block_bytes=self.block_bytes)
        if not transfers:
            return rec
        plan = []  # per wave: (to-host transfers, to-GPU transfers), each sorted by host block
        for wave in waves(transfers):
            outs = sorted((t for t in wave if t.direction == TO_HOST), key=lambda t: t.host_block)
            ins = sorted((t for t in wave if t.direction == TO_GPU), key=lambda t: t.host_block)
            plan.append((outs, ins))
            rec.blocks_to_host += len(outs)
            rec.blocks_to_gpu += len(ins)
        rec.waves = len(plan)
        # every GPU block index of the iteration in one small upload, in plan order
        order = [t.gpu_block for outs, ins in plan for t in outs + ins]
        idx = torch.from_numpy(np.asarray(order, dtype=np.int64))
        if not self.cuda:
            t0 = time.perf_counter()
            o = 0
            for outs, ins in plan:
                o = self._issue_out(outs, idx, o, rec)
                o = self._issue_in(ins, idx, o, rec)
            rec.wall_s = time.perf_counter() - t0
            return rec
        compute = torch.cuda.current_stream(self.device)
        idx = idx.to(self.device, non_blocking=False)
        s_out, s_in = self._streams
        idx.record_stream(s_out)  # read on the copy streams: not reused before they are done with it
        idx.record_stream(s_in)
        rec.keep.append(idx)
        rec.start = torch.cuda.Event(enable_timing=True)
        rec.end = torch.cuda.Event(enable_timing=True)
        rec.start.record(compute)
        s_out.wait_event(rec.start)
        s_in.wait_event(rec.start)
        o = 0
        for w, (outs, ins) in enumerate(plan):
            if w:  # the previous wave's copies, both directions, before this wave's
                e_out, e_in = torch.cuda.Event(), torch.cuda.Event()
                e_out.record(s_out)
                e_in.record(s_in)
                s_out.wait_event(e_in)
                s_in.wait_event(e_out)
            with torch.cuda.stream(s_out):
                o = self._issue_out(outs, idx, o, rec)
            with torch.cuda.stream(s_in):
                o = self._issue_in(ins, idx, o, rec)
        for s in (s_out, s_in):
            done = torch.cuda.Event()
            done.record(s)
            compute.wait_event(done)
        rec.end.record(compute)
        return rec

    def _issue_out(self, outs: list[Transfer], idx: torch.Tensor, o: int, rec: TransferRecord) -> int:
        """GPU -> host: gather a chunk of blocks into the staging buffer, one DMA per run of consecutive host blocks."""
        stage, s = self._stage_out, self.staging_blocks
        for c0 in range(0, len(outs), s):
            chunk = outs[c0 : c0 + s]
            k = len(chunk)
            torch.index_select(self._gpu, 0, idx[o + c0 : o + c0 + k], out=stage[:k])
            for i, j, h in _runs([t.host_block for t in chunk]):
                self.storage[h : h + j - i].copy_(stage[i:j], non_blocking=True)
                rec.dma_copies += 1
        return o + len(outs)

    def _issue_in(self, ins: list[Transfer], idx: torch.Tensor, o: int, rec: TransferRecord) -> int:
        """Host -> GPU: one DMA per run of consecutive host blocks into the staging buffer, then scatter the chunk into
        the pool's blocks."""
        stage, s = self._stage_in, self.staging_blocks
        for c0 in range(0, len(ins), s):
            chunk = ins[c0 : c0 + s]
            k = len(chunk)
            for i, j, h in _runs([t.host_block for t in chunk]):
                stage[i:j].copy_(self.storage[h : h + j - i], non_blocking=True)
                rec.dma_copies += 1
            self._gpu.index_copy_(0, idx[o + c0 : o + c0 + k], stage[:k])
        return o + len(ins)

    def elapsed(self, rec: TransferRecord) -> float:
        """Seconds the copies of `rec` took (module docstring); 0 for none. On CUDA, waits for its end event."""
        if rec.start is None:
            return rec.wall_s or 0.0
        rec.end.synchronize()
        return rec.start.elapsed_time(rec.end) / 1e3


__all__ = ["STAGING_BYTES", "HostKVPool", "TransferRecord", "waves"]
