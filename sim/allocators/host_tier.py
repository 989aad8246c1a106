"""A second tier of KV memory in the host (CPU) behind a link: an offloaded prefix cache and swapped-out requests.

The host holds `num_blocks` blocks of the GPU's block size (host KV memory // the GPU block's bytes). Each host
block is free, holds one cached prefix block (the offloaded prefix cache), or holds one block of a swapped-out
request; nothing else.

- Offloaded prefix cache (with `paged-prefix-cache`): a cached block the GPU evicts (its content is about to be
  overwritten) is copied to the host instead of being lost, least recently used host blocks making room; a later
  prefix lookup that misses on the GPU continues on the host, and a hit there copies the block back into a fresh GPU
  block (it leaves the host: the tiers are exclusive, so a block's content is in one tier or in flight). vLLM V1's
  CPU offloading writes every computed block to the host (an inclusive cache); this exclusive victim cache moves a
  block to the host only when the GPU lets go of it, and back only when it is needed.
- Swap preemption (`--preemption swap`, with `paged` or `paged-prefix-cache`): a preempted request's blocks (each
  shared block once) are copied to the host and their GPU blocks freed; before the request runs again they are copied
  into fresh GPU blocks and its block tables restored, sharing included (vLLM v0's swap). Swapped blocks are never
  evicted; when the host cannot take a request's blocks, even after dropping every cached block, the request is
  preempted by recompute instead (counted as `swap_fallbacks`).

Every copy is a `Transfer` (direction, kind, GPU block, host block) that the scheduler puts in the batch of the
iteration that caused it; the iteration carries the copies out before its forward pass, and the cost model adds the
link time of its bytes (each direction at the link's bandwidth, the two directions concurrently), not overlapped with
compute: vLLM v0 ran swap copies before the model on the same stream. For the offloaded cache this is the cautious
bound (vLLM V1 loads and stores asynchronously).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

TO_HOST = "to_host"
TO_GPU = "to_gpu"
OFFLOAD = "offload"  # a cached block evicted from the GPU, to the host
HOST_HIT = "host_hit"  # a cached block found on the host, back to the GPU
SWAP_OUT = "swap_out"
SWAP_IN = "swap_in"


@dataclass(frozen=True, slots=True)
class Transfer:
    """One block copied over the host link. `nbytes` is the block's bytes on one GPU."""

    direction: str  # TO_HOST or TO_GPU
    kind: str  # OFFLOAD, HOST_HIT, SWAP_OUT or SWAP_IN
    gpu_block: int
    host_block: int
    nbytes: int


@dataclass(frozen=True)
class HostMemory:
    """Where every host block is, in blocks: the three sum to the tier's num_blocks."""

    cached: int  # offloaded prefix blocks (LRU, evictable)
    swapped: int  # blocks of swapped-out requests (pinned until swapped in)
    free: int


class HostTier:
    """The host's KV blocks and the copies to and from them (see the module docstring).

    Args:
        num_blocks: host blocks (>= 1).
        block_bytes: bytes of one block on one GPU (block size x KV bytes per token).
    """

    def __init__(self, num_blocks: int, block_bytes: int):
        if num_blocks < 1 or block_bytes < 1:
            raise ValueError(f"a host tier needs at least one block of at least one byte: {num_blocks}, {block_bytes}")
        self.num_blocks = num_blocks
        self.block_bytes = block_bytes
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() takes the lowest id first
        self._cache: OrderedDict[Hashable, int] = OrderedDict()  # content key -> host block, least recent first
        self._swapped: dict[int, list[int]] = {}  # swap handle -> host blocks, in the handle's block order
        self._next_handle = 0
        self._pending: list[Transfer] = []
        # figures (summary): bytes and blocks each way, and what moved them
        self.bytes_to_host = 0
        self.bytes_to_gpu = 0
        self.blocks_offloaded = 0
        self.host_hit_blocks = 0
        self.host_evictions = 0  # cached host blocks dropped to make room
        self.swap_outs = 0  # requests swapped out
        self.swap_ins = 0
        self.swap_fallbacks = 0  # swap preemptions that fell back to recompute (no host room)
        # what each host hit and swap-in spared: (tokens of context before, tokens not recomputed, blocks moved back)
        self.spared: list[tuple[int, int, int]] = []

    # --- inspection --------------------------------------------------------------------------------------------------
    def memory(self) -> HostMemory:
        swapped = sum(len(b) for b in self._swapped.values())
        return HostMemory(len(self._cache), swapped, len(self._free))

    def has_cached(self, key: Hashable) -> bool:
        return key in self._cache

    @property
    def num_cached(self) -> int:
        return len(self._cache)

    def swapped_blocks(self, handle: int) -> int:
        return len(self._swapped[handle])

    def take_transfers(self) -> list[Transfer]:
        """Copies recorded since the last call, in the order they must run."""
        out, self._pending = self._pending, []
        return out

    # --- the offloaded prefix cache ----------------------------------------------------------------------------------
    def _take(self, evict: bool) -> int | None:
        """A free host block, dropping the least recently used cached block if needed and `evict`; None if none."""
        if self._free:
            return self._free.pop()
        if evict and self._cache:
            _, block = self._cache.popitem(last=False)
            self.host_evictions += 1
            return block
        return None

    def offload(self, key: Hashable, gpu_block: int) -> None:
        """The GPU evicts cached content `key` from `gpu_block`: keep it on the host (most recently used)."""
        if key in self._cache:  # already here (the GPU had a second copy): it was used now
            self._cache.move_to_end(key)
            return
        host_block = self._take(evict=True)
        if host_block is None:  # every host block holds swapped requests
            return
        self._cache[key] = host_block
        self.blocks_offloaded += 1
        self.bytes_to_host += self.block_bytes
        self._pending.append(Transfer(TO_HOST, OFFLOAD, gpu_block, host_block, self.block_bytes))

    def claim(self, key: Hashable) -> int:
        """A prefix hit on the host: take `key`'s host block out of the cache (in flight until `load`)."""
        return self._cache.pop(key)

    def load(self, host_block: int, gpu_block: int) -> None:
        """Copy a claimed host block into `gpu_block` and free the host block."""
        self._free.append(host_block)
        self.host_hit_blocks += 1
        self.bytes_to_gpu += self.block_bytes
        self._pending.append(Transfer(TO_GPU, HOST_HIT, gpu_block, host_block, self.block_bytes))

    def drop_cache(self) -> None:
        """Forget every cached host block (swapped blocks stay)."""
        self._free.extend(self._cache.values())
        self._cache.clear()

    # --- swap --------------------------------------------------------------------------------------------------------
    def can_swap_out(self, num_blocks: int) -> bool:
        """Whether `num_blocks` blocks fit on the host, dropping cached blocks if needed."""
        return num_blocks <= len(self._free) + len(self._cache)

    def swap_out(self, gpu_blocks: list[int]) -> int:
        """Copy `gpu_blocks` (each once) to the host; returns the handle that swaps them in."""
        if not self.can_swap_out(len(gpu_blocks)):
            raise ValueError(f"{len(gpu_blocks)} blocks do not fit on the host")
        host_blocks = []
        for gpu_block in gpu_blocks:
            host_block = self._take(evict=True)
            assert host_block is not None
            host_blocks.append(host_block)
            self._pending.append(Transfer(TO_HOST, SWAP_OUT, gpu_block, host_block, self.block_bytes))
        handle = self._next_handle
        self._next_handle += 1
        self._swapped[handle] = host_blocks
        self.bytes_to_host += len(host_blocks) * self.block_bytes
        self.swap_outs += 1
        return handle

    def swap_in(self, handle: int, gpu_blocks: list[int]) -> None:
        """Copy the blocks of `handle` into `gpu_blocks` (same order) and free their host blocks."""
        host_blocks = self._swapped.pop(handle)
        assert len(host_blocks) == len(gpu_blocks)
        for host_block, gpu_block in zip(host_blocks, gpu_blocks):
            self._pending.append(Transfer(TO_GPU, SWAP_IN, gpu_block, host_block, self.block_bytes))
        self._free.extend(host_blocks)
        self.bytes_to_gpu += len(host_blocks) * self.block_bytes
        self.swap_ins += 1

    def uncount(self, transfers: list[Transfer]) -> None:
        """Copies that never ran (a replay that ended before the iteration that would have run them): out of the
        figures. Where the blocks are stays as it is: nothing reads them any more. (They are evictions to the host:
        a swapped request left waiting would have kept the replay going.)"""
        for t in transfers:
            if t.direction == TO_HOST:
                self.bytes_to_host -= t.nbytes
                self.blocks_offloaded -= t.kind == OFFLOAD
            else:
                self.bytes_to_gpu -= t.nbytes
                self.host_hit_blocks -= t.kind == HOST_HIT

    def note_spared(self, context_tokens: int, tokens: int, blocks: int) -> None:
        """A host hit or a swap-in spared computing `tokens` tokens on top of `context_tokens` by moving `blocks`
        blocks back (the summary's recompute time saved)."""
        self.spared.append((context_tokens, tokens, blocks))

    def discard(self, handle: int, pending: list[Transfer] | None = None) -> list[Transfer] | None:
        """Drop a swapped request's blocks without copying them back (it was rejected). `pending`: copies not run
        yet (an iteration that ran nothing); if this request's swap out is among them it never happens: it is taken
        out and uncounted. Returns `pending` without it."""
        blocks = self._swapped.pop(handle)
        self._free.extend(blocks)
        if not pending:
            return pending
        mine = set(blocks)
        kept = [t for t in pending if not (t.kind == SWAP_OUT and t.host_block in mine)]
        if len(kept) < len(pending):
            self.bytes_to_host -= (len(pending) - len(kept)) * self.block_bytes
            self.swap_outs -= 1
        return kept

    # --- invariants --------------------------------------------------------------------------------------------------
    def check(self) -> None:
        """Every host block is in exactly one place: free, cached or swapped; capacity is never exceeded."""
        places = list(self._free) + list(self._cache.values()) + [b for bs in self._swapped.values() for b in bs]
        assert sorted(places) == list(range(self.num_blocks)), "a host block is lost or in two places"

    def figures(self) -> dict:
        """The summary's host figures (bytes and counts since the start)."""
        return {
            "bytes_to_host": self.bytes_to_host,
            "bytes_to_gpu": self.bytes_to_gpu,
            "blocks_offloaded": self.blocks_offloaded,
            "host_hit_blocks": self.host_hit_blocks,
            "host_evictions": self.host_evictions,
            "swap_outs": self.swap_outs,
            "swap_ins": self.swap_ins,
            "swap_fallbacks": self.swap_fallbacks,
        }


__all__ = ["HOST_HIT", "OFFLOAD", "SWAP_IN", "SWAP_OUT", "TO_GPU", "TO_HOST", "HostMemory", "HostTier", "Transfer"]
