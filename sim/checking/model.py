"""The obviously-right model the state machines compare an allocator with.

Per live sequence: its token count, final length and one content tag per token position. A tag names the token's
whole prefix (tag(p) = intern(tag(p - 1), identity(p))), because a token's KV depends on every token before it; two
positions have equal tags exactly when their prefixes are equal token for token. Token identities follow
`TokenContent`: token k of a run tagged t is ("run", t, k); every other token is ("unique", seq_id, position).

`SimMemory` is the simulated physical KV memory (slot -> tag): the machine writes each new token's tag into the slot
the allocator says it lives in and reads every live sequence back through its placement.

The expectations are independent models of the built-in families' policies (how many blocks a paged sequence
holds; where a buddy or first-fit space places an extent and what it can still place). They know nothing of the
allocator's code: free space is derived from the slots the model's own sequences hold.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from sim.allocators.base import TokenContent


def ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1), by doubling."""
    p = 1
    while p < n:
        p *= 2
    return p


def token_identity(content: TokenContent | None, seq_id: int, position: int) -> Hashable:
    if content is not None:
        start = 0
        for tag, length in content.runs:
            if position < start + length:
                return ("run", tag, position - start)
            start += length
    return ("unique", seq_id, position)


class TagInterner:
    """Small integer tags for prefixes: equal prefixes get equal tags, different prefixes different ones."""

    def __init__(self) -> None:
        self._ids: dict[tuple[int, Hashable], int] = {}

    def extend(self, prev: int, identity: Hashable) -> int:
        key = (prev, identity)
        tag = self._ids.get(key)
        if tag is None:
            tag = self._ids[key] = len(self._ids) + 1
        return tag


@dataclass
class SeqModel:
    seq_id: int
    final_len: int
    content: TokenContent | None
    tags: list[int] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return len(self.tags)

    def grow(self, interner: TagInterner, n: int, admitted: bool = False) -> None:
        """Add n tokens: admitted ones (a prefill) take their identity from the content; appended ones are
        generated, so unique to the sequence."""
        content = self.content if admitted else None
        for p in range(len(self.tags), len(self.tags) + n):
            prev = self.tags[-1] if self.tags else 0
            self.tags.append(interner.extend(prev, token_identity(content, self.seq_id, p)))


class Model:
    """Live and preempted sequences, as the caller of the allocator knows them."""

    def __init__(self) -> None:
        self.interner = TagInterner()
        self.live: dict[int, SeqModel] = {}
        self.preempted: list[SeqModel] = []  # freed by preemption: (tokens, final length, content) to re-admit
        self.forked = False  # once true, blocks may be shared

    def admit(self, seq_id: int, num_tokens: int, final_len: int, content: TokenContent | None) -> SeqModel:
        s = self.prospective(seq_id, num_tokens, final_len, content)
        self.live[seq_id] = s
        return s

    def prospective(self, seq_id: int, num_tokens: int, final_len: int, content: TokenContent | None) -> SeqModel:
        """The sequence an admission would create (not yet live)."""
        s = SeqModel(seq_id, final_len, content)
        s.grow(self.interner, num_tokens, admitted=True)
        return s

    def fork(self, parent: int, child: int) -> SeqModel:
        p = self.live[parent]
        s = SeqModel(child, p.final_len, p.content, list(p.tags))
        self.live[child] = s
        self.forked = True
        return s


class SimMemory(dict):
    """Physical KV memory: slot -> content tag of the token whose KV was last written there."""

    def copy_block(self, src: int, dst: int, block_size: int) -> None:
        for o in range(block_size):
            tag = self.get(src * block_size + o)
            if tag is None:
                self.pop(dst * block_size + o, None)
            else:
                self[dst * block_size + o] = tag


# --- free space of a linear address space ---------------------------------------------------------------------


def free_runs(capacity: int, held: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Maximal runs (start, length) of slots not covered by any held (start, length) extent."""
    used = [False] * capacity
    for start, length in held:
        for a in range(max(0, start), min(capacity, start + length)):
            used[a] = True
    runs, a = [], 0
    while a < capacity:
        if used[a]:
            a += 1
            continue
        b = a
        while b < capacity and not used[b]:
            b += 1
        runs.append((a, b - a))
        a = b
    return runs


def buddy_regions(capacity: int) -> list[tuple[int, int]]:
    """The capacity split into aligned power-of-two regions, largest first (as an OS splits memory into zones)."""
    regions, start, size = [], 0, next_pow2(capacity + 1)
    while size >= 1:
        if capacity - start >= size:
            regions.append((start, size))
            start += size
        size //= 2
    return regions


def buddy_free_blocks(capacity: int, held: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The free blocks (start, size) of a fully merged buddy space whose allocated blocks are `held`: every maximal
    aligned power-of-two block (within its region) whose slots are all free."""
    used = [0] * (capacity + 1)  # prefix sums of used slots
    mark = [False] * capacity
    for start, length in held:
        for a in range(max(0, start), min(capacity, start + length)):
            mark[a] = True
    for a in range(capacity):
        used[a + 1] = used[a] + mark[a]
    out: list[tuple[int, int]] = []

    def visit(start: int, size: int) -> None:
        n_used = used[start + size] - used[start]
        if n_used == 0:
            out.append((start, size))
        elif n_used < size and size > 1:
            visit(start, size // 2)
            visit(start + size // 2, size // 2)

    for start, size in buddy_regions(capacity):
        visit(start, size)
    return sorted(out)


# --- expectations of the built-in families ----------------------------------------------------------------------


class PagedExpectation:
    """The built-in paged allocators. A sequence of t tokens maps ceil(t / block_size) blocks; a block is held while a
    live block table points at it, and every other block is free (a prefix cache's cached blocks included).

    Growth is exact: appending n tokens takes ceil((t + n) / bs) - ceil(t / bs) new blocks, plus one for a
    copy-on-write when the last block is partly filled and shared with another live sequence. Admission is bounded:
    it must succeed when ceil(n / bs) blocks are free (a hit never costs more than a miss), and must fail when even
    the most the request could share from held blocks leaves too few free blocks. What it could share is bounded
    from the simulated memory: a leading full block whose content (its last slot's prefix tag) no block holds cannot
    be a hit. Fork needs nothing with sharing and a copy of every block without."""

    def __init__(self, alloc, memory: SimMemory):
        self.alloc = alloc
        self.memory = memory
        self.num_blocks = alloc.num_blocks
        self.block_size = alloc.block_size
        self.sharing = bool(getattr(alloc, "sharing", getattr(alloc, "supports_fork", False)))

    def applies(self, model: Model) -> bool:
        return True

    def _tables(self, model: Model) -> dict[int, tuple[int, ...]]:
        return {sid: tuple(self.alloc.placement(sid).block_table) for sid in model.live}

    def _refs(self, model: Model) -> dict[int, int]:
        refs: dict[int, int] = {}
        for table in self._tables(model).values():
            for b in table:
                refs[b] = refs.get(b, 0) + 1
        return refs

    def free_blocks(self, model: Model) -> int:
        return self.num_blocks - len(self._refs(model))

    def never_fits(self, final_len: int, prompt_len: int | None = None) -> bool:
        return ceil_div(final_len, self.block_size) > self.num_blocks

    def admit_ok(
        self, model: Model, num_tokens: int, final_len: int, seq_id: int = 0, content: TokenContent | None = None
    ) -> bool | None:
        if num_tokens < 0:
            return False
        need, free = ceil_div(num_tokens, self.block_size), self.free_blocks(model)
        if need <= free:
            return True
        if not self.sharing:
            return False
        bs = self.block_size
        tags = model.prospective(seq_id, num_tokens, final_len, content).tags
        held = set(self._refs(model))
        where: dict[int, set[int]] = {}  # prefix tag at a block's last slot -> blocks holding it
        for b in range(self.num_blocks):
            tag = self.memory.get(b * bs + bs - 1)
            if tag is not None:
                where.setdefault(tag, set()).add(b)
        shareable = 0
        for i in range(num_tokens // bs):
            blocks = where.get(tags[(i + 1) * bs - 1])
            if not blocks:
                break
            shareable += bool(blocks & held)
        return None if need - shareable <= free else False

    def append_ok(self, model: Model, seq: SeqModel, n: int) -> bool:
        if n < 0:
            return False
        bs = self.block_size
        table = self._tables(model)[seq.seq_id]
        new = max(0, ceil_div(seq.tokens + n, bs) - len(table))
        cow = n > 0 and seq.tokens % bs != 0 and self._refs(model).get(table[-1], 0) > 1
        return new + cow <= self.free_blocks(model)

    def fork_ok(self, model: Model, parent: SeqModel) -> bool:
        if self.sharing:
            return True
        return len(self._tables(model)[parent.seq_id]) <= self.free_blocks(model)

    def fork_extent(self, model: Model, parent: SeqModel) -> tuple[int, int] | None:
        return None

    def expected_extent(self, model: Model, final_len: int, prompt_len: int | None = None) -> tuple[int, int] | None:
        return None

    def prompt_of(self, seq_id: int) -> int | None:
        return None

    def on_admit(self, seq_id: int, extent, prompt_len: int | None = None) -> None:
        pass

    def on_free(self, seq_id: int) -> None:
        pass

    def external(self, final_len: int, prompt_len: int | None = None) -> int:
        return 0


class ContiguousExpectation:
    """A contiguous allocator over a buddy or first-fit space. Reservation sizes come from the named policy (Max:
    max(max_model_len, final), Pow2: the prompt + the next power of two >= the output length, as the vLLM paper
    defines Orca Pow2, where the prompt is the tokens placed at admission (a fork keeps its parent's) and the output
    length final - prompt + 1; Oracle: max(1, final)); the buddy space rounds to a power of
    two and places at the lowest address of the smallest free block that fits; first-fit places at the lowest free
    run that fits. The expectation tracks its own extents, so free space is derived independently."""

    def __init__(self, policy_name: str, address_space: str, capacity: int, max_model_len: int, reservation):
        self.policy_name = policy_name
        self.address_space = address_space
        self.capacity = capacity
        self.max_model_len = max_model_len
        self._reservation = reservation  # the allocator's own, for families the model does not know
        self.extents: dict[int, tuple[int, int]] = {}  # seq -> (start, placed size)
        self.prompts: dict[int, int] = {}  # seq -> tokens placed at its admission (a fork: its parent's)

    def applies(self, model: Model) -> bool:
        return True

    def reservation(self, final_len: int, prompt_len: int | None = None) -> int:
        if self.policy_name == "contiguous-max":
            return max(self.max_model_len, final_len)
        if self.policy_name == "contiguous-pow2":
            prompt = final_len if prompt_len is None else max(0, min(prompt_len, final_len))
            output = final_len - prompt + 1  # the last output token's KV is never written
            return prompt + next_pow2(output)
        if self.policy_name == "contiguous-oracle":
            return max(1, final_len)
        return self._reservation(final_len, prompt_len)

    def placed(self, size: int) -> int:
        return next_pow2(size) if self.address_space == "buddy" else size

    def free_pieces(self) -> list[tuple[int, int]]:
        held = list(self.extents.values())
        if self.address_space == "buddy":
            return buddy_free_blocks(self.capacity, held)
        return free_runs(self.capacity, held)

    def largest(self) -> int:
        return buddy_regions(self.capacity)[0][1] if self.address_space == "buddy" else self.capacity

    def never_fits(self, final_len: int, prompt_len: int | None = None) -> bool:
        return self.placed(self.reservation(final_len, prompt_len)) > self.largest()

    def expected_extent(self, model: Model, final_len: int, prompt_len: int | None = None) -> tuple[int, int] | None:
        need = self.placed(self.reservation(final_len, prompt_len))
        fits = [(start, n) for start, n in self.free_pieces() if n >= need]
        if not fits:
            return None
        if self.address_space == "buddy":
            start = min(fits, key=lambda p: (p[1], p[0]))[0]
        else:
            start = fits[0][0]
        return start, need

    def admit_ok(
        self, model: Model, num_tokens: int, final_len: int, seq_id: int = 0, content: TokenContent | None = None
    ) -> bool | None:
        need = self.placed(self.reservation(final_len, num_tokens))
        return (
            0 <= num_tokens <= final_len
            and num_tokens <= need
            and self.expected_extent(model, final_len, num_tokens) is not None
        )

    def append_ok(self, model: Model, seq: SeqModel, n: int) -> bool:
        return n >= 0 and seq.tokens + n <= self.extents[seq.seq_id][1]

    def fork_extent(self, model: Model, parent: SeqModel) -> tuple[int, int] | None:
        """A fork copies the parent into a reservation of its own, sized for all of the parent's tokens."""
        return self.expected_extent(model, max(parent.final_len, parent.tokens), self.prompts[parent.seq_id])

    def fork_ok(self, model: Model, parent: SeqModel) -> bool:
        return self.fork_extent(model, parent) is not None

    def prompt_of(self, seq_id: int) -> int | None:
        return self.prompts.get(seq_id)

    def on_admit(self, seq_id: int, extent: tuple[int, int], prompt_len: int | None = None) -> None:
        self.extents[seq_id] = extent
        self.prompts[seq_id] = prompt_len

    def on_free(self, seq_id: int) -> None:
        del self.extents[seq_id]
        del self.prompts[seq_id]

    def external(self, final_len: int, prompt_len: int | None = None) -> int:
        need = self.placed(self.reservation(final_len, prompt_len))
        return sum(n for _, n in self.free_pieces() if n < need)


def expectation_for(alloc, memory: SimMemory):
    """The independent expectation for a built-in allocator family, or None for anything else."""
    from sim.allocators import paged
    from sim.allocators.contiguous import ContiguousAllocator

    if type(alloc) in (paged.PagedAllocator, getattr(paged, "PagedPrefixCache", None)):
        return PagedExpectation(alloc, memory)
    if isinstance(alloc, ContiguousAllocator) and getattr(alloc, "address_space_name", None) in ("buddy", "first-fit"):
        return ContiguousExpectation(
            type(alloc).name, alloc.address_space_name, alloc.capacity_tokens, alloc.max_model_len, alloc.reservation
        )
    return None
