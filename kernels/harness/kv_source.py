"""Deterministic K/V: what every KV slot *should* hold, computed from token identity alone.

In check mode the harness does not write the model's own K/V projections into the pool: it writes rows of a fixed
random table, chosen by a hash of the token's identity and the layer. The reference attention recomputes the same rows
from the same identities, never reading the pool, so a misplaced, overwritten or wrongly shared block shows up as a
difference between the kernel's output and the reference.

Token identity (one rule, applied to every position of every branch):

* a position inside the request's shared content (`TokenContent` runs: a prefix group's prefix, Mooncake hash ids)
  is identified by (run tag, index in the run) -- two requests with the same prefix hold the same K/V there, as a real
  model would, so prefix sharing and prefix caching are checked too;
* any other position p is identified by (owner, p), where the owner is the branch that wrote it: a request's first
  branch owns its positions; a branch forked at length L from a parent owns its positions >= L and inherits the
  parent's owners below L (so positions before a fork share the parent's values, after it they differ).

`LineageTracker` wraps the allocator the scheduler drives and records these owners as sequences are admitted, forked
and freed (it also records the KV copies a contiguous allocator's fork implies, which the allocator itself does not
report). `KVSource` holds the table: row = splitmix64(identity) mod rows, then shifted per layer.

With a host tier (`LineageTracker.track_order`), the tracker also records the order in which the allocator recorded
its copy-on-write copies and its host-tier transfers during one `schedule()`: the batch carries them in two lists
(`Batch.copies`, `Batch.transfers`), and running every transfer first is wrong when a copy was recorded before a
transfer that touches its blocks (a request's branch copies a shared block on its append, then the request is swapped
out in the same round: the swap-out must send the copy; or a copy's block is freed and filled again from the host).
`take_ops` returns the interleaving (kernels.harness.executor runs it in segments).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from sim.allocators.base import ExtentPlacement, TokenContent

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)
OWNER_SALT = 0x5EED_0F_0A11
LAYER_STRIDE = 7919  # row offset between layers (prime)


def mix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """splitmix64 of (a, b): uint64 array, well spread (int64 inputs, elementwise, broadcast)."""
    with np.errstate(over="ignore"):
        z = np.asarray(a, dtype=np.int64).astype(np.uint64) * _GOLD + np.asarray(b, dtype=np.int64).astype(np.uint64)
        z = z ^ (z >> np.uint64(30))
        z = z * _M1
        z = z ^ (z >> np.uint64(27))
        z = z * _M2
        return z ^ (z >> np.uint64(31))


def tag_hash(tag) -> int:
    """A stable (process-independent) 32-bit hash of a content tag such as ("group", 7)."""
    return zlib.crc32(repr(tag).encode())


@dataclass
class Lineage:
    """Who wrote each position of one branch (see the module docstring)."""

    run_tags: np.ndarray  # int64 hash per content run
    run_starts: np.ndarray  # int64 first position of each run
    run_total: int  # positions covered by content runs
    seg_starts: list[int] = field(default_factory=list)  # segment i covers [seg_starts[i], seg_starts[i+1])
    seg_owners: list[int] = field(default_factory=list)

    @classmethod
    def root(cls, seq_id: int, content: TokenContent | None) -> Lineage:
        runs = content.runs if content is not None else ()
        lengths = np.array([n for _, n in runs], dtype=np.int64)
        starts = (
            np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
            if len(runs)
            else np.zeros(0, dtype=np.int64)
        )
        return cls(np.array([tag_hash(t) for t, _ in runs], dtype=np.int64), starts, int(lengths.sum()), [0], [seq_id])

    def fork(self, child_id: int, at: int) -> Lineage:
        """The lineage of a branch forked from this one when it held `at` tokens."""
        keep = [i for i, s in enumerate(self.seg_starts) if s < at] or [0]
        return Lineage(
            self.run_tags,
            self.run_starts,
            self.run_total,
            [self.seg_starts[i] for i in keep] + [at],
            [self.seg_owners[i] for i in keep] + [child_id],
        )

    def keys(self, positions: np.ndarray) -> np.ndarray:
        """uint64 identity hash of each position."""
        p = np.asarray(positions, dtype=np.int64)
        seg = np.searchsorted(np.asarray(self.seg_starts, dtype=np.int64), p, side="right") - 1
        owners = np.asarray(self.seg_owners, dtype=np.int64)[seg]
        out = mix(owners ^ OWNER_SALT, p)
        if self.run_total:
            inside = p < self.run_total
            if inside.any():
                q = p[inside]
                r = np.searchsorted(self.run_starts, q, side="right") - 1
                out[inside] = mix(self.run_tags[r], q - self.run_starts[r])
        return out


class _Logged(list):
    """A list that also logs every appended item, with its kind, into a shared list (LineageTracker.track_order)."""

    def __init__(self, items, log: list, kind: str):
        super().__init__(items)
        self.log, self.kind = log, kind

    def append(self, item) -> None:
        super().append(item)
        self.log.append((self.kind, item))


COPY, TRANSFER = "copy", "transfer"


class LineageTracker:
    """Wraps an allocator (every attribute is the allocator's) and records lineages and contiguous fork copies.

    `extent_copies` collects (parent id, child id, source slot, destination slot, tokens) for forks of allocators whose
    placements are extents: the child's reservation must receive a copy of the parent's KV, which a contiguous
    allocator models but does not report as a copy operation.
    """

    def __init__(self, allocator):
        self.__dict__["_alloc"] = allocator
        self.__dict__["lineages"] = {}
        self.__dict__["extent_copies"] = []

    def __getattr__(self, name):
        return getattr(self._alloc, name)

    def __setattr__(self, name, value):
        setattr(self._alloc, name, value)

    @property
    def wrapped(self):
        return self._alloc

    def admit(self, seq_id, num_tokens, final_len, content=None):
        cached = self._alloc.admit(seq_id, num_tokens, final_len, content)
        self.lineages[seq_id] = Lineage.root(seq_id, content)
        return cached

    def fork(self, parent_id, child_id):
        self._alloc.fork(parent_id, child_id)
        at = self._alloc.num_tokens(parent_id)
        self.lineages[child_id] = self.lineages[parent_id].fork(child_id, at)
        src, dst = self._alloc.placement(parent_id), self._alloc.placement(child_id)
        if isinstance(src, ExtentPlacement) and isinstance(dst, ExtentPlacement) and at > 0:
            self.extent_copies.append((parent_id, child_id, src.start, dst.start, at))

    def free(self, seq_id):
        self._alloc.free(seq_id)
        self.lineages.pop(seq_id, None)

    def take_extent_copies(self) -> list[tuple[int, int, int, int, int]]:
        ops = self.extent_copies[:]
        self.extent_copies.clear()
        return ops

    # --- the order of copies and host-tier transfers (module docstring) ----------------------------------------------
    def track_order(self) -> None:
        """Log the order in which the allocator (a PagedAllocator with a host tier) records copy-on-write copies
        (`_copies`) and host transfers (`host._pending`); each `take_transfers` then keeps that schedule's order for
        `take_ops`."""
        a = self._alloc
        if not isinstance(getattr(a, "_copies", None), list) or not isinstance(
            getattr(getattr(a, "host", None), "_pending", None), list
        ):
            return  # not the PagedAllocator / HostTier bookkeeping this relies on: take_ops stays None
        d = self.__dict__
        d["_log"], d["_taken_copies"], d["_ops"] = [], [], None
        self._install(copies=True, transfers=True)

    def _install(self, copies: bool, transfers: bool) -> None:
        a, log = self._alloc, self.__dict__["_log"]
        if copies:
            a._copies = _Logged(a._copies, log, COPY)
        if transfers:
            a.host._pending = _Logged(a.host._pending, log, TRANSFER)

    def take_copy_ops(self):
        ops = self._alloc.take_copy_ops()
        if "_log" in self.__dict__:
            self.__dict__["_taken_copies"] = ops  # the last take of a schedule is the batch's (a failed fork drops)
            self._install(copies=True, transfers=False)
        return list(ops)

    def take_transfers(self):
        out = self._alloc.take_transfers()
        if "_log" in self.__dict__:
            d = self.__dict__
            sent, taken = {id(t) for t in out}, {id(c) for c in d["_taken_copies"]}
            d["_ops"] = [(kind, o) for kind, o in d["_log"] if id(o) in (sent if kind == TRANSFER else taken)]
            d["_log"].clear()
            d["_taken_copies"] = []
            self._install(copies=False, transfers=True)
        return list(out)

    def take_ops(self) -> list[tuple[str, object]] | None:
        """The last schedule's copies and transfers in the order the allocator recorded them: (COPY, (src, dst)) and
        (TRANSFER, Transfer), the same objects as the batch's; None unless `track_order`."""
        d = self.__dict__
        ops, d["_ops"] = d.get("_ops"), None
        return ops


class KVSource:
    """The table of K/V rows: `table[row]` is `[2 (K, V), kv_heads, head_size]`; row of (identity, layer) =
    (identity mod rows + layer x LAYER_STRIDE) mod rows. Built from a seed, so it can be rebuilt anywhere."""

    def __init__(self, rows: int, kv_heads: int, head_size: int, dtype, device, seed: int = 1234):
        import torch

        self.rows = rows
        gen = torch.Generator(device="cpu").manual_seed(seed)
        table = torch.randn((rows, 2, kv_heads, head_size), generator=gen, dtype=torch.float32)
        self.table = table.to(dtype).to(device)
        self.layer_offsets = torch.arange(0, 1 << 20, LAYER_STRIDE, dtype=torch.int64)  # enough for any model

    def base_rows(self, keys: np.ndarray) -> np.ndarray:
        """Layer-0 rows (int64) of identity hashes."""
        return (keys % np.uint64(self.rows)).astype(np.int64)

    def rows_for_layer(self, base: np.ndarray, layer: int) -> np.ndarray:
        return (base + layer * LAYER_STRIDE) % self.rows

    def nbytes(self) -> int:
        return self.table.numel() * self.table.element_size()
