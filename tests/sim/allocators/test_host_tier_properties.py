"""The host tier's invariants under random operations (hypothesis state machine): admissions with shared content,
appends, forks, frees, swaps out and in, evictions to the host and hits from it, against an obviously-right model of
both memories. After every step: every host block is free, cached or swapped and exactly one of them (capacity never
exceeded); every token of every live sequence reads back through its block table as the token it is (content survives
a round trip over the link, and a host hit loads the right block); the can_* queries are honest; nothing leaks."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, multiple, rule

from sim.allocators.base import AllocationError, TokenContent
from sim.allocators.host_tier import TO_GPU, TO_HOST, HostTier
from sim.allocators.paged import PagedAllocator, PagedPrefixCache
from sim.checking.runner import suite_settings


class HostTierMachine(RuleBasedStateMachine):
    live = Bundle("live")
    swapped = Bundle("swapped")

    def __init__(self) -> None:
        super().__init__()
        self.a = None
        self.gpu: dict[int, object] = {}  # GPU slot -> token identity
        self.host_mem: dict[int, object] = {}  # host slot -> token identity
        self.ids: dict[int, list] = {}  # live sequence -> identity of each token
        self.away: dict[int, dict[int, list]] = {}  # swap number -> {sequence: identities}
        self.next_id = 0
        self.next_swap = 0
        self.handles: dict[int, object] = {}

    @initialize(
        num_blocks=st.integers(2, 12),
        block_size=st.sampled_from([1, 2, 4]),
        host_blocks=st.integers(1, 10),
        cache=st.booleans(),
    )
    def setup(self, num_blocks, block_size, host_blocks, cache) -> None:
        cls = PagedPrefixCache if cache else PagedAllocator
        self.a = cls(num_blocks, block_size, 64)
        self.host = HostTier(host_blocks, 100)
        self.a.attach_host(self.host)

    # --- the model of both memories ---------------------------------------------------------------------------------
    def _execute(self) -> None:
        """The batch's copies: host-link transfers first, in order, then copy-on-write copies."""
        bs = self.a.block_size
        for t in self.a.take_transfers():
            for off in range(bs):
                g, h = t.gpu_block * bs + off, t.host_block * bs + off
                if t.direction == TO_HOST:
                    if g in self.gpu:
                        self.host_mem[h] = self.gpu[g]
                    else:
                        self.host_mem.pop(h, None)
                else:
                    assert t.direction == TO_GPU
                    if h in self.host_mem:
                        self.gpu[g] = self.host_mem[h]
                    else:
                        self.gpu.pop(g, None)
        for src, dst in self.a.take_copy_ops():
            for off in range(bs):
                if src * bs + off in self.gpu:
                    self.gpu[dst * bs + off] = self.gpu[src * bs + off]

    def _write(self, seq: int, lo: int, hi: int) -> None:
        p = self.a.placement(seq)
        for pos in range(lo, hi):
            self.gpu[p.slot(pos)] = self.ids[seq][pos]

    def _state(self):
        a = self.a
        return (
            a.memory(),
            tuple((s, a.num_tokens(s), a.placement(s).block_table) for s in sorted(self.ids)),
            tuple(a.pool.ref_counts),
            self.host.memory(),
        )

    # --- rules ------------------------------------------------------------------------------------------------------
    @rule(target=live, n=st.integers(1, 12), extra=st.integers(0, 8), doc=st.integers(-1, 2))
    def admit(self, n, extra, doc):
        self.next_id += 1
        seq = self.next_id
        content = None
        # every position's token, also those it writes later: its first 12 are document `doc`'s (its content
        # names them, however they are computed), the rest its own
        identities = [(("seq", seq), k) for k in range(64)]
        if doc >= 0:
            content = TokenContent(((("doc", doc), 12),))
            identities[:12] = [(("doc", doc), k) for k in range(12)]
        a = self.a
        ok = a.can_admit(seq, n, n + extra, content)
        predicted = a.prefix_hit_tokens(seq, n, content)
        before = self._state()
        try:
            hits = a.admit(seq, n, n + extra, content)
        except AllocationError:
            assert not ok and self._state() == before and not a.take_transfers()
            return multiple()
        assert ok and hits == predicted
        self.ids[seq] = identities
        self._execute()
        p = a.placement(seq)
        for pos in range(hits):  # a hit, from the GPU or the host, reads back the sequence's own tokens
            assert self.gpu.get(p.slot(pos)) == identities[pos], f"hit position {pos} of sequence {seq}"
        self._write(seq, hits, n)
        return seq

    @rule(seq=live, n=st.integers(1, 5))
    def append(self, seq, n) -> None:
        if seq not in self.ids:
            return
        a = self.a
        old = a.num_tokens(seq)
        ok = a.can_append(seq, n)
        before = self._state()
        try:
            a.append(seq, n)
        except AllocationError:
            assert not ok and self._state() == before
            return
        assert ok
        self._execute()
        self._write(seq, old, old + n)

    @rule(target=live, parent=live)
    def fork(self, parent):
        if parent not in self.ids:
            return multiple()
        self.next_id += 1
        child = self.next_id
        a = self.a
        tokens = a.num_tokens(parent)
        if not a.can_fork(parent, child):
            return multiple()
        a.fork(parent, child)
        # the child's tokens so far are the parent's, and so are those the parent's content names beyond them (its
        # document's first 12); the ones it writes after that are its own
        covered = max(tokens, 12 if self.ids[parent][0][0][0] == "doc" else 0)
        self.ids[child] = self.ids[parent][:covered] + [(("seq", child), k) for k in range(covered, 64)]
        self._execute()
        return child

    @rule(seq=consumes(live))
    def free(self, seq) -> None:
        if seq in self.ids:
            self.a.free(seq)
            del self.ids[seq]
            self._execute()

    @rule(target=swapped, seqs=st.lists(live, min_size=1, max_size=3, unique=True))
    def swap_out(self, seqs):
        seqs = [s for s in seqs if s in self.ids]
        if not seqs:
            return multiple()
        a = self.a
        ok = a.can_swap_out(seqs)
        before = self._state()
        try:
            record = a.swap_out(seqs)
        except AllocationError:
            assert not ok and self._state() == before
            return multiple()
        assert ok
        self._execute()  # the copies to the host run before the freed blocks are reused
        self.next_swap += 1
        self.away[self.next_swap] = {s: self.ids.pop(s) for s in seqs}
        self.handles[self.next_swap] = record
        return self.next_swap

    @rule(number=consumes(swapped))
    def swap_in(self, number) -> None:
        record = self.handles.pop(number, None)
        if record is None:  # drained since
            return
        seqs = self.away.pop(number)
        a = self.a
        ok = a.can_swap_in(record)
        before = self._state()
        try:
            a.swap_in(record)
        except AllocationError:
            assert not ok and self._state() == before
            a.discard_swapped(record)  # give up on it: its host blocks are freed
            return
        assert ok
        self.ids.update(seqs)
        self._execute()
        for s in record.seq_ids:  # back exactly as it left, and one more token fits in every sequence
            assert a.can_append(s, 1)
        free = a.num_free_blocks
        need = a.swap_in_need(record) - record.num_blocks
        assert need <= free

    @rule()
    def drain(self) -> None:
        for seq in list(self.ids):
            self.a.free(seq)
        self.ids.clear()
        for record in list(self.handles.values()):
            self.a.discard_swapped(record)
        self.handles.clear()
        self.away.clear()
        self.a.drop_cache()
        self._execute()
        assert self.a.num_free_blocks == self.a.num_blocks
        assert self.host.memory().free == self.host.num_blocks

    # --- after every step -------------------------------------------------------------------------------------------
    @invariant()
    def invariants(self) -> None:
        if self.a is None:
            return
        self.a.check()  # includes HostTier.check: each host block in exactly one place
        m = self.host.memory()
        assert m.cached + m.swapped + m.free == self.host.num_blocks
        assert m.swapped == sum(r.num_blocks for r in self.handles.values())
        assert sorted(self.a.live_sequences()) == sorted(self.ids)
        for seq, ident in self.ids.items():
            p = self.a.placement(seq)
            for pos in range(self.a.num_tokens(seq)):
                assert self.gpu.get(p.slot(pos)) == ident[pos], f"sequence {seq} position {pos}"


HostTierMachine.TestCase.settings = suite_settings(settings(), scale=3)
test_host_tier_machine = HostTierMachine.TestCase
