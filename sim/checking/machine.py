"""The hypothesis state machine: random interleavings of every public allocator operation, checked against the model
after every step. `make_machine(spec)` builds one for any allocator class (a registered one or a user's own).

One module because it is one state machine: its rules share the model, the bundles and the checks run after each of
them, and hypothesis needs them on one class."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from sim.allocators.base import AllocationError, ExtentPlacement, KVAllocator, TokenContent
from sim.checking.invariants import Checker, CrashViolation, call, check_all, snapshot
from sim.checking.model import Model, SimMemory, expectation_for

UNKNOWN_SEQ = 987_654_321  # an id the machine never uses for a live sequence
CACHE_DROP_METHODS = ("reset_prefix_cache", "drop_cache", "clear_cache")


@dataclass(frozen=True)
class AllocatorSpec:
    """How to build the allocator under test: its class and extra constructor arguments (e.g. address_space)."""

    cls: type
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        base = getattr(self.cls, "name", "") or self.cls.__name__
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.kwargs.items()))
        return f"{base}[{extra}]" if extra else base

    def make(self, num_blocks: int, block_size: int, max_model_len: int):
        return self.cls(num_blocks, block_size, max_model_len, **self.kwargs)


def contents() -> st.SearchStrategy[list[tuple[int, int, int]] | None]:
    """What an admitted sequence's tokens are: None (every token unique), or one or two runs (group, whole blocks,
    extra tokens) from a few groups, turned into a TokenContent by `make_content` once the block size is known. Runs
    are mostly block-aligned, so prefix caches get hits, and equal runs follow different prefixes (a hash that
    forgets the prefix would match them)."""
    run = st.tuples(st.integers(0, 1), st.integers(1, 2), st.sampled_from([0, 0, 1, 3]))
    return st.none() | st.lists(run, min_size=1, max_size=2)


def make_content(spec: list[tuple[int, int, int]] | None, block_size: int) -> TokenContent | None:
    if spec is None:
        return None
    return TokenContent(tuple((("group", g), max(1, blocks * block_size + extra)) for g, blocks, extra in spec))


class AllocatorMachine(RuleBasedStateMachine):
    """Drives one allocator. Sequence ids are never reused except to re-admit a preempted sequence."""

    spec: ClassVar[AllocatorSpec]
    disabled: ClassVar[frozenset[str]] = frozenset()

    live = Bundle("live")

    def __init__(self) -> None:
        super().__init__()
        self.alloc = None
        self.expect = None
        self.model = Model()
        self.memory = SimMemory()
        self.ck = Checker(self.disabled)
        self.next_id = 0

    # --- set-up -------------------------------------------------------------------------------------------------
    @initialize(
        num_blocks=st.integers(1, 12), block_size=st.sampled_from([1, 2, 3, 4, 8]), max_model_len=st.integers(1, 64)
    )
    def setup(self, num_blocks: int, block_size: int, max_model_len: int) -> None:
        self.alloc = call(self.spec.make, num_blocks, block_size, max_model_len)
        self.expect = expectation_for(self.alloc, self.memory)

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def _expecting(self) -> bool:
        return self.expect is not None and self.expect.applies(self.model) and self.ck.on("capacity")

    # --- memory traffic -----------------------------------------------------------------------------------------
    def _apply_copies(self) -> None:
        ops = call(self.alloc.take_copy_ops)
        for src, dst in ops or ():
            if not (0 <= src < self.alloc.num_blocks and 0 <= dst < self.alloc.num_blocks):
                self.ck.fail(
                    "ownership", f"copy op ({src} -> {dst}) names a block outside [0, {self.alloc.num_blocks})"
                )
            self.memory.copy_block(src, dst, self.alloc.block_size)

    def _write(self, seq_id: int, lo: int, hi: int) -> None:
        """Write the model's tags of positions [lo, hi) where the allocator placed them."""
        if hi <= lo:
            return
        p = call(self.alloc.placement, seq_id)
        s = self.model.live[seq_id]
        others: dict[int, tuple[int, int]] = {}
        for sid, o in self.model.live.items():
            if sid == seq_id:
                continue
            op = call(self.alloc.placement, sid)
            for pos in range(o.tokens):
                try:
                    others[op.slot(pos)] = (sid, pos)
                except IndexError:
                    break
        for pos in range(lo, hi):
            try:
                slot = p.slot(pos)
            except IndexError:
                self.ck.fail("block-table", f"sequence {seq_id}: position {pos} has no slot in {p}")
                return
            owner = others.get(slot)
            if owner is not None and self.memory.get(slot) != s.tags[pos]:
                self.ck.fail(
                    "content",
                    f"sequence {seq_id} writes position {pos} into slot {slot}, which holds "
                    f"token {owner[1]} of live sequence {owner[0]}",
                )
            self.memory[slot] = s.tags[pos]

    # --- operations ---------------------------------------------------------------------------------------------
    def _attempt(self, ok: bool, query: str, fn, *args):
        """Run an operation its query answered `ok` for: if the query said yes, any exception breaks honesty."""
        try:
            return call(fn, *args)
        except CrashViolation as exc:
            if ok:
                self.ck.fail("honesty", f"{query} said yes but {exc.detail}")
            raise

    def _admit(self, seq_id: int, num_tokens: int, final_len: int, content: TokenContent | None):
        a, m, ck = self.alloc, self.model, self.ck
        ok = bool(call(a.can_admit, seq_id, num_tokens, final_len, content))
        want_extent = None
        if self._expecting():
            want = self.expect.admit_ok(m, num_tokens, final_len, seq_id, content)
            if want is not None and ok != want:
                ck.fail("capacity", f"can_admit({seq_id}, {num_tokens}, {final_len}) = {ok}; the policy says {want}")
            want_extent = self.expect.expected_extent(m, final_len, num_tokens)
        if not m.live and 0 <= num_tokens <= final_len:
            reason = call(a.never_fits, final_len, num_tokens)
            if self._expecting() and (reason is not None) != self.expect.never_fits(final_len, num_tokens):
                ck.fail(
                    "capacity",
                    f"never_fits({final_len}, {num_tokens}) = {reason!r}; the policy says it "
                    f"{'never fits' if self.expect.never_fits(final_len, num_tokens) else 'fits'}",
                )
            if reason is None and not ok:  # the engine relies on this: what never_fits accepts, an empty cache admits
                ck.fail(
                    "honesty",
                    f"in an empty cache never_fits({final_len}, {num_tokens}) = None (it fits) but "
                    f"can_admit({seq_id}, {num_tokens}, {final_len}) = False",
                )
        before = snapshot(a, m)
        try:
            hits = self._attempt(
                ok, f"can_admit({seq_id}, {num_tokens}, {final_len})", a.admit, seq_id, num_tokens, final_len, content
            )
        except AllocationError as exc:
            if ok:
                ck.fail("honesty", f"can_admit({seq_id}, {num_tokens}, {final_len}) said yes but admit raised: {exc}")
            if snapshot(a, m) != before:
                ck.fail("honesty", f"a refused admit({seq_id}, {num_tokens}, {final_len}) changed the allocator")
            return multiple()
        if not ok:
            ck.fail("honesty", f"can_admit({seq_id}, {num_tokens}, {final_len}) said no but admit succeeded")
        s = m.admit(seq_id, num_tokens, final_len, content)
        p = call(a.placement, seq_id)
        if self.expect is not None and isinstance(p, ExtentPlacement):
            if want_extent is not None and (p.start, p.length) != want_extent:
                ck.fail(
                    "capacity",
                    f"sequence {seq_id} (final {final_len}) placed at [{p.start}, "
                    f"{p.start + p.length}); the policy places it at [{want_extent[0]}, "
                    f"{want_extent[0] + want_extent[1]})",
                )
            self.expect.on_admit(seq_id, (p.start, p.length), num_tokens)
        if hits is None:
            hits = 0
        if not isinstance(hits, int) or not 0 <= hits <= num_tokens:
            ck.fail("content", f"admit({seq_id}, {num_tokens}, ...) reported {hits!r} cache-hit tokens")
            hits = 0
        for pos in range(hits):  # a prefix-cache hit must return exactly the request's content
            slot = p.slot(pos)
            if self.memory.get(slot) != s.tags[pos]:
                ck.fail(
                    "content",
                    f"admit({seq_id}) reported {hits} cache-hit tokens but position {pos} (slot "
                    f"{slot}) holds other content than the request's",
                )
        self._apply_copies()
        self._write(seq_id, hits, num_tokens)
        return seq_id

    @rule(target=live, num_tokens=st.integers(0, 24), extra=st.integers(0, 24), content=contents())
    def admit(self, num_tokens: int, extra: int, content):
        """A new sequence of num_tokens tokens and final length num_tokens + extra. With content, num_tokens counts
        the tokens after the content's runs (a prompt is a shared prefix and a suffix of its own), modulo 5."""
        tc = make_content(content, self.alloc.block_size)
        if tc is not None:
            num_tokens = sum(n for _, n in tc.runs) + num_tokens % 5
        return self._admit(self._new_id(), num_tokens, num_tokens + extra, tc)

    @rule(target=live, seq=live, other=live, mix=st.booleans(), suffix=st.integers(0, 4), extra=st.integers(0, 24))
    def admit_like(self, seq: int, other: int, mix: bool, suffix: int, extra: int):
        """A new sequence with a live one's content (the same prompt prefix), or, with mix, another live sequence's
        first run followed by this one's later runs (equal blocks after different prefixes, which must not match),
        plus `suffix` tokens of its own."""
        s, o = self.model.live.get(seq), self.model.live.get(other)
        if s is None or s.content is None or not s.content.runs:
            return multiple()
        runs = s.content.runs
        if mix and o is not None and o.content is not None and o.content.runs and len(runs) > 1:
            runs = o.content.runs[:1] + runs[1:]
        num_tokens = sum(n for _, n in runs) + suffix
        return self._admit(self._new_id(), num_tokens, num_tokens + extra, TokenContent(tuple(runs)))

    @rule(seq=live)
    def admit_live_id(self, seq: int) -> None:
        """Admitting an id that is already live must be refused and change nothing."""
        if seq not in self.model.live:
            return
        a, ck = self.alloc, self.ck
        if call(a.can_admit, seq, 1, 1, None):
            ck.fail("honesty", f"can_admit({seq}, ...) says yes for a live sequence")
        before = snapshot(a, self.model)
        try:
            call(a.admit, seq, 1, 1, None)
        except AllocationError:
            if snapshot(a, self.model) != before:
                ck.fail("honesty", f"a refused admit of live sequence {seq} changed the allocator")
            return
        ck.fail("honesty", f"admit of the live sequence {seq} succeeded")

    def _append(self, seq: int, n: int) -> None:
        m, a, ck = self.model, self.alloc, self.ck
        s = m.live.get(seq)
        if s is None:
            return
        ok = bool(call(a.can_append, seq, n))
        if self._expecting():
            want = self.expect.append_ok(m, s, n)
            if ok != want:
                ck.fail("capacity", f"can_append({seq}, {n}) = {ok} at {s.tokens} tokens; the policy says {want}")
        before = snapshot(a, m)
        try:
            self._attempt(ok, f"can_append({seq}, {n})", a.append, seq, n)
        except AllocationError as exc:
            if ok:
                ck.fail("honesty", f"can_append({seq}, {n}) said yes but append raised: {exc}")
            if snapshot(a, m) != before:
                ck.fail("honesty", f"a refused append({seq}, {n}) changed the allocator")
            return
        if not ok:
            ck.fail("honesty", f"can_append({seq}, {n}) said no but append succeeded")
        old = s.tokens
        s.grow(m.interner, n)
        self._apply_copies()
        self._write(seq, old, old + n)

    @rule(seq=live)
    def append_one(self, seq: int) -> None:
        self._append(seq, 1)

    @rule(seq=live, n=st.integers(0, 20))
    def append_many(self, seq: int, n: int) -> None:
        self._append(seq, n)

    def _free(self, seq: int) -> bool:
        if seq not in self.model.live:
            return False
        try:
            call(self.alloc.free, seq)
        except AllocationError as exc:
            self.ck.fail("honesty", f"free({seq}) of a live sequence raised: {exc}")
            return False
        del self.model.live[seq]
        if self.expect is not None:
            self.expect.on_free(seq)
        return True

    @rule(seq=consumes(live))
    def free(self, seq: int) -> None:
        self._free(seq)

    @rule(seq=consumes(live))
    def preempt(self, seq: int) -> None:
        s = self.model.live.get(seq)
        if s is not None and self._free(seq):
            self.model.preempted.append(s)

    @precondition(lambda self: bool(self.model.preempted))
    @rule(target=live, i=st.integers(0, 7))
    def readmit(self, i: int):
        """Re-admit a preempted sequence (recompute): same id, its tokens so far, same final length and content."""
        s = self.model.preempted[i % len(self.model.preempted)]
        result = self._admit(s.seq_id, s.tokens, s.final_len, s.content)
        if s.seq_id in self.model.live:
            self.model.preempted.remove(s)
        return result

    @precondition(lambda self: self.alloc is not None and getattr(self.alloc, "supports_fork", False))
    @rule(target=live, parent=live)
    def fork(self, parent: int):
        m, a, ck = self.model, self.alloc, self.ck
        if parent not in m.live:
            return multiple()
        child = self._new_id()
        ok = bool(call(a.can_fork, parent, child))
        want_extent = None
        if self._expecting():
            want = self.expect.fork_ok(m, m.live[parent])
            if ok != want:
                ck.fail("capacity", f"can_fork({parent}, {child}) = {ok}; the policy says {want}")
            want_extent = self.expect.fork_extent(m, m.live[parent])
        before = snapshot(a, m)
        try:
            self._attempt(ok, f"can_fork({parent}, {child})", a.fork, parent, child)
        except AllocationError as exc:
            if ok:
                ck.fail("honesty", f"can_fork({parent}, {child}) said yes but fork raised: {exc}")
            if snapshot(a, m) != before:
                ck.fail("honesty", f"a refused fork({parent}, {child}) changed the allocator")
            return multiple()
        if not ok:
            ck.fail("honesty", f"can_fork({parent}, {child}) said no but fork succeeded")
        s = m.fork(parent, child)
        self._apply_copies()
        pp, cp = call(a.placement, parent), call(a.placement, child)
        if self.expect is not None and isinstance(cp, ExtentPlacement):
            if want_extent is not None and (cp.start, cp.length) != want_extent:
                ck.fail(
                    "capacity",
                    f"fork child {child} placed at [{cp.start}, {cp.start + cp.length}); the policy "
                    f"places it at [{want_extent[0]}, {want_extent[0] + want_extent[1]})",
                )
            self.expect.on_admit(child, (cp.start, cp.length), self.expect.prompt_of(parent))
        if isinstance(cp, ExtentPlacement):  # a contiguous fork copies into the child's own reservation
            for pos in range(s.tokens):
                self.memory[cp.slot(pos)] = self.memory.get(pp.slot(pos))
        return child

    @precondition(
        lambda self: (
            self.alloc is not None
            and bool(self.model.live)
            and type(self.alloc).plan_decode is not KVAllocator.plan_decode
        )
    )
    @rule(
        max_rounds=st.integers(1, 12),
        apply=st.integers(0, 12),
        reverse=st.booleans(),
        next_final_len=st.none() | st.integers(1, 40),
        next_prompt_len=st.integers(0, 40),
    )
    def decode_rounds(
        self, max_rounds: int, apply: int, reverse: bool, next_final_len: int | None, next_prompt_len: int
    ) -> None:
        """Fast-forward: plan up to max_rounds rounds of one token per live sequence, check the plan against the
        same appends made one by one on a copy, apply min(apply, planned) rounds, compare the two allocators."""
        a, m, ck = self.alloc, self.model, self.ck
        ids = sorted(m.live, reverse=reverse)
        plan = call(a.plan_decode, ids, max_rounds, next_final_len, next_prompt_len)
        if plan is None:
            return
        if not 0 <= plan.rounds <= max_rounds or list(plan.seq_ids) != ids:
            ck.fail("decode-plan", f"plan_decode({ids}, {max_rounds}) planned {plan.rounds} rounds for {plan.seq_ids}")
            return
        k = min(apply, plan.rounds)
        ref = copy.deepcopy(a)
        want_state = _state(ref, ids) if k == 0 else None
        for r in range(plan.rounds):
            for sid in ids:
                if not ref.can_append(sid, 1):
                    ck.fail(
                        "decode-plan",
                        f"round {r + 1} of the plan appends to sequence {sid}, which one by one cannot grow",
                    )
                    return
                ref.append(sid, 1)
            if ref.take_copy_ops():
                ck.fail("decode-plan", f"round {r + 1} of the plan copies a block (copy-on-write)")
            mem = ref.memory(next_final_len, next_prompt_len).as_dict()
            planned = {c: int(getattr(plan, c)[r]) for c in mem}
            if planned != mem:
                ck.fail("decode-plan", f"after round {r + 1}, plan says {planned}; appends one by one give {mem}")
            unshared = ref.held_without_sharing() if hasattr(ref, "held_without_sharing") else None
            if unshared is not None and int(plan.unshared[r]) != unshared:
                ck.fail(
                    "decode-plan",
                    f"after round {r + 1}, plan says {int(plan.unshared[r])} slots unshared; one by one {unshared}",
                )
            if r + 1 == k:
                want_state = _state(ref, ids)
        call(a.apply_decode, plan, k)
        got = _state(a, ids)
        if got != want_state:
            ck.fail(
                "decode-plan",
                f"apply_decode of {k} of {plan.rounds} rounds left {got}; the same appends one by "
                f"one leave {want_state}",
            )
        for sid in ids:
            s = m.live[sid]
            old = s.tokens
            s.grow(m.interner, k)
            self._write(sid, old, old + k)

    @precondition(
        lambda self: (
            self.alloc is not None
            and bool(self.model.live)
            and type(self.alloc).append_each is not KVAllocator.append_each
        )
    )
    @rule(reverse=st.booleans(), skip=st.integers(0, 3))
    def append_each(self, reverse: bool, skip: int) -> None:
        """The batched append: one token to each listed sequence, exactly as append(i, 1) one by one, or nothing."""
        a, m = self.alloc, self.model
        ids = sorted(m.live, reverse=reverse)
        ids = [sid for i, sid in enumerate(ids) if skip == 0 or i % (skip + 1)] or ids
        ref = copy.deepcopy(a)
        before = _state(a, sorted(m.live))
        total = call(a.append_each, ids)
        self._check_batched_append(f"append_each({ids})", total, ids, ref, before)

    @precondition(
        lambda self: (
            self.alloc is not None
            and bool(self.model.live)
            and type(self.alloc).run_decode is not KVAllocator.run_decode
        )
    )
    @rule(max_rounds=st.integers(1, 12), live_order=st.booleans())
    def run_decode(self, max_rounds: int, live_order: bool) -> None:
        """run_decode (plan and apply in one pass) equals plan_decode then apply_decode of every planned round, on
        a copy: the same plan figures and the same allocator afterwards."""
        a, m, ck = self.alloc, self.model, self.ck
        ids = call(a.live_sequences) if live_order else sorted(m.live)
        ref = copy.deepcopy(a)
        want = call(ref.plan_decode, ids, max_rounds, None)
        if want is not None and want.rounds:
            call(ref.apply_decode, want, want.rounds)
        got = call(a.run_decode, ids, max_rounds, None)
        if (got is None) != (want is None):
            ck.fail("decode-plan", f"run_decode({ids}, {max_rounds}) returned {got}; plan_decode returned {want}")
            return
        if got is None:
            return
        fields = (
            "rounds",
            "token_states",
            "reserved",
            "internal_fragmentation",
            "external_fragmentation",
            "free",
            "unshared",
        )
        for f in fields:
            if not np.array_equal(np.asarray(getattr(got, f)), np.asarray(getattr(want, f))):
                ck.fail(
                    "decode-plan",
                    f"run_decode({ids}, {max_rounds}).{f} = {getattr(got, f)}; plan_decode says {getattr(want, f)}",
                )
                return
        if _state(a, sorted(m.live)) != _state(ref, sorted(m.live)):
            ck.fail(
                "decode-plan",
                f"run_decode({ids}, {max_rounds}) left {_state(a, sorted(m.live))}; plan and "
                f"apply leave {_state(ref, sorted(m.live))}",
            )
            return
        for sid in ids:
            s = m.live[sid]
            old = s.tokens
            s.grow(m.interner, got.rounds)
            self._write(sid, old, old + got.rounds)

    @precondition(
        lambda self: (
            self.alloc is not None
            and bool(self.model.live)
            and type(self.alloc).append_round is not KVAllocator.append_round
        )
    )
    @rule()
    def append_round(self) -> None:
        """The lazy round: one token to every live sequence in live order, exactly as append(i, 1) one by one in that
        order, or nothing; round_crossers names exactly the sequences that take a block in it."""
        a, m, ck = self.alloc, self.model, self.ck
        order = call(a.live_sequences)
        if sorted(order) != sorted(m.live):
            ck.fail("accounting", f"live_sequences() = {order}; the live sequences are {sorted(m.live)}")
            return
        ref = copy.deepcopy(a)
        crossers = call(a.round_crossers)
        before = _state(a, sorted(m.live))
        total = call(a.append_round)
        if crossers is not None:
            want = [sid for sid in order if ref.blocks_needed_to_append(sid, 1)]
            if crossers != want:
                ck.fail(
                    "accounting",
                    f"round_crossers() = {crossers}; the sequences at a block boundary, in live order, are {want}",
                )
        self._check_batched_append(f"append_round() (live order {order})", total, order, ref, before)

    def _check_batched_append(self, what: str, total: int | None, ids: list[int], ref, before: tuple) -> None:
        """A batched append (`what`, which returned `total`) against append(i, 1) for each of ids in order on `ref`,
        a copy of the allocator taken before it (state `before`); then the model grows the same way."""
        a, m, ck = self.alloc, self.model, self.ck
        if total is None:
            if _state(a, sorted(m.live)) != before:
                ck.fail("honesty", f"{what} declined but changed the allocator")
            return
        for sid in ids:
            if not ref.can_append(sid, 1):
                ck.fail("honesty", f"{what} succeeded though append({sid}, 1) one by one cannot")
                return
            ref.append(sid, 1)
        copies = ref.take_copy_ops()
        if copies:
            ck.fail("honesty", f"{what} succeeded though one by one it copies blocks {copies}")
        if _state(a, sorted(m.live)) != _state(ref, sorted(m.live)):
            ck.fail(
                "accounting",
                f"{what} left {_state(a, sorted(m.live))}; appends one by one leave {_state(ref, sorted(m.live))}",
            )
        want_total = sum(m.live[sid].tokens + 1 for sid in ids)
        if total != want_total:
            ck.fail("accounting", f"{what} returned {total}; the sequences hold {want_total} tokens")
        summed = call(a.total_tokens, ids) if hasattr(a, "total_tokens") else want_total
        if summed != want_total:
            ck.fail("accounting", f"total_tokens({ids}) = {summed} after {what}; the sequences hold {want_total}")
        for sid in ids:
            s = m.live[sid]
            old = s.tokens
            s.grow(m.interner, 1)
            self._write(sid, old, old + 1)

    @rule()
    def free_unknown(self) -> None:
        """Operations on an id that is not live are refused and change nothing."""
        a, ck = self.alloc, self.ck
        if call(a.can_append, UNKNOWN_SEQ, 1):
            ck.fail("honesty", "can_append says yes for a sequence that is not live")
        before = snapshot(a, self.model)
        try:
            call(a.free, UNKNOWN_SEQ)
        except AllocationError:
            if snapshot(a, self.model) != before:
                ck.fail("honesty", "a refused free of a sequence that is not live changed the allocator")
            return
        ck.fail("honesty", "free of a sequence that is not live succeeded")

    @rule(roll=st.integers(0, 3))
    def drain(self, roll: int) -> None:
        """Free every live sequence and drop caches: everything must be free again. (Only one call in four drains,
        so that states with many live sequences are common.)"""
        if roll:
            return
        a = self.alloc
        for seq in list(self.model.live):
            self._free(seq)
        for name in CACHE_DROP_METHODS:
            fn = getattr(a, name, None)
            if callable(fn):
                call(fn)
        mem = call(a.memory)
        cap = a.capacity_tokens
        if mem.free != cap:
            self.ck.fail("no-leaks", f"with no live sequence, memory() = {mem.as_dict()} (capacity {cap})")
        nfb = getattr(a, "num_free_blocks", None)
        if isinstance(nfb, int) and nfb != a.num_blocks:
            self.ck.fail("no-leaks", f"with no live sequence, {nfb} of {a.num_blocks} blocks are free")

    # --- after every step ---------------------------------------------------------------------------------------
    @invariant()
    def invariants(self) -> None:
        if self.alloc is not None:
            check_all(self.alloc, self.model, self.memory, self.expect, self.ck)


def _state(alloc, ids: list[int]) -> tuple:
    """Everything observable about an allocator, for comparing a fast-forwarded one with a step-by-step one."""
    pool = getattr(alloc, "pool", None)
    return (
        alloc.memory().as_dict(),
        tuple((sid, alloc.num_tokens(sid), alloc.placement(sid)) for sid in ids),
        getattr(alloc, "num_free_blocks", None),
        tuple(pool.free_block_ids()) if pool is not None and hasattr(pool, "free_block_ids") else None,
        tuple(pool.ref_counts) if pool is not None and hasattr(pool, "ref_counts") else None,
    )


def make_machine(spec: AllocatorSpec, disabled: frozenset[str] = frozenset()) -> type[AllocatorMachine]:
    """A state machine class for one allocator (skipping the `disabled` invariants)."""
    name = re.sub(r"\W+", "_", spec.name).strip("_").title().replace("_", "") or "Allocator"
    return type(
        f"{name}Machine", (AllocatorMachine,), {"spec": spec, "disabled": frozenset(disabled), "__module__": __name__}
    )
