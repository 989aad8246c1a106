"""The invariants, one exception class each (so hypothesis reports distinct violations separately), and the checks
run after every step of a state machine. Plain Python: no hypothesis here."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from sim.allocators.base import MEMORY_CATEGORIES, AllocationError, BlockTablePlacement, ExtentPlacement
from sim.checking import INVARIANTS
from sim.checking.model import Model, SimMemory, buddy_free_blocks, ceil_div, free_runs


class InvariantViolation(AssertionError):
    """An allocator broke an invariant; `invariant` names it (a key of sim.checking.INVARIANTS)."""

    invariant = ""

    def __init__(self, message: str):
        super().__init__(f"[{self.invariant}] {message}")
        self.detail = message


def _violation_class(name: str) -> type[InvariantViolation]:
    cls_name = "".join(part.capitalize() for part in name.split("-")) + "Violation"
    return type(cls_name, (InvariantViolation,), {"invariant": name, "__module__": __name__})


VIOLATIONS: dict[str, type[InvariantViolation]] = {name: _violation_class(name) for name in INVARIANTS}
SelfCheckViolation = VIOLATIONS["self-check"]
ConservationViolation = VIOLATIONS["conservation"]
OwnershipViolation = VIOLATIONS["ownership"]
BlockTableViolation = VIOLATIONS["block-table"]
ContentViolation = VIOLATIONS["content"]
HonestyViolation = VIOLATIONS["honesty"]
CapacityViolation = VIOLATIONS["capacity"]
LeakViolation = VIOLATIONS["no-leaks"]
AccountingViolation = VIOLATIONS["accounting"]
CrashViolation = VIOLATIONS["crash"]


class Checker:
    """Runs the checks for one allocator; `disabled` names invariants to skip (sim check uses it to find more than
    one violated invariant)."""

    def __init__(self, disabled: frozenset[str] = frozenset()):
        self.disabled = disabled

    def on(self, name: str) -> bool:
        return name not in self.disabled

    def fail(self, name: str, message: str) -> None:
        if self.on(name):
            raise VIOLATIONS[name](message)


def call(fn, *args, **kwargs):
    """Call an allocator method; anything but AllocationError is a crash."""
    try:
        return fn(*args, **kwargs)
    except (AllocationError, InvariantViolation):
        raise
    except Exception as exc:  # noqa: BLE001 - reported as a violation
        raise CrashViolation(f"{getattr(fn, '__name__', fn)}{args} raised {type(exc).__name__}: {exc}") from exc


@dataclass
class Observed:
    placements: dict
    held: set  # slots held by live sequences
    token_slots: set
    reserved_slots: set


def snapshot(alloc, model: Model):
    """What a refused operation must leave unchanged."""
    live = sorted(model.live)
    return (
        call(alloc.memory).as_dict(),
        tuple((s, call(alloc.num_tokens, s), call(alloc.placement, s)) for s in live),
        getattr(alloc, "num_free_blocks", None),
        tuple(sorted(call(alloc.live_sequences))),
    )


def held_slots(alloc, placement) -> list[int]:
    if isinstance(placement, ExtentPlacement):
        return list(range(placement.start, placement.start + placement.length))
    bs = placement.block_size
    return [b * bs + o for b in placement.block_table for o in range(bs)]


def positions_held(placement) -> int:
    if isinstance(placement, ExtentPlacement):
        return placement.length
    return len(placement.block_table) * placement.block_size


def check_all(alloc, model: Model, memory: SimMemory, expectation, ck: Checker) -> None:
    """Every invariant, after one step."""
    # self-check: the allocator's own assertions
    if ck.on("self-check"):
        try:
            alloc.check()
        except AssertionError as exc:
            raise SelfCheckViolation(f"check() failed: {exc}") from exc
        except Exception as exc:  # noqa: BLE001
            raise CrashViolation(f"check() raised {type(exc).__name__}: {exc}") from exc

    # accounting (bookkeeping): the live sequences and their token counts
    live = sorted(call(alloc.live_sequences))
    if live != sorted(model.live):
        ck.fail("accounting", f"live sequences are {live}; the model has {sorted(model.live)}")
    for sid, s in model.live.items():
        n = call(alloc.num_tokens, sid)
        if n != s.tokens:
            ck.fail("accounting", f"sequence {sid} holds {n} tokens; the model says {s.tokens}")

    placements = {sid: call(alloc.placement, sid) for sid in model.live}
    cap = alloc.capacity_tokens
    bs = alloc.block_size

    # block-table: exactly ceil(tokens / block_size) blocks; an extent holds at least its tokens
    for sid, p in placements.items():
        t = model.live[sid].tokens
        if isinstance(p, BlockTablePlacement):
            if p.block_size != bs:
                ck.fail("block-table", f"sequence {sid}: placement block size {p.block_size} != {bs}")
            if len(p.block_table) != ceil_div(t, bs):
                ck.fail(
                    "block-table",
                    f"sequence {sid} holds {t} tokens in {len(p.block_table)} blocks of {bs} "
                    f"(expected {ceil_div(t, bs)}): {list(p.block_table)}",
                )
        elif isinstance(p, ExtentPlacement):
            if p.length < t:
                ck.fail("block-table", f"sequence {sid} holds {t} tokens in an extent of {p.length} slots")
        else:
            ck.fail("crash", f"placement({sid}) returned {p!r}, neither BlockTablePlacement nor ExtentPlacement")

    # ownership: in bounds, disjoint unless shared by fork, reference counts, free lists, merged buddies
    refs: Counter = Counter()
    extents = []
    for sid, p in placements.items():
        if isinstance(p, ExtentPlacement):
            if p.start < 0 or p.length < 0 or p.start + p.length > cap:
                ck.fail("ownership", f"sequence {sid}: extent [{p.start}, {p.start + p.length}) outside [0, {cap})")
            extents.append((p.start, p.length, sid))
        elif isinstance(p, BlockTablePlacement):
            table = list(p.block_table)
            for b in table:
                if not (isinstance(b, int) and 0 <= b < alloc.num_blocks):
                    ck.fail("ownership", f"sequence {sid}: block id {b!r} outside [0, {alloc.num_blocks})")
            if len(set(table)) != len(table):
                ck.fail("ownership", f"sequence {sid} holds a block twice: {table}")
            refs.update(table)
    extents.sort()
    for (s1, n1, a), (s2, n2, b) in zip(extents, extents[1:]):
        if s1 + n1 > s2:
            ck.fail("ownership", f"extents of sequences {a} [{s1}, {s1 + n1}) and {b} [{s2}, {s2 + n2}) overlap")
    if not getattr(alloc, "supports_fork", False):
        shared = sorted(b for b, n in refs.items() if n > 1)
        if shared:
            ck.fail("ownership", f"blocks {shared} are in two block tables of an allocator that never shares")
    pool = getattr(alloc, "pool", None)
    if pool is not None and hasattr(pool, "ref_counts"):
        expected = [refs.get(b, 0) + _cache_holds(alloc).get(b, 0) for b in range(alloc.num_blocks)]
        actual = list(pool.ref_counts)
        if actual != expected:
            diff = {
                b: (actual[b], expected[b])
                for b in range(len(expected))
                if b >= len(actual) or actual[b] != expected[b]
            }
            ck.fail("ownership", f"reference counts differ from block-table entries (block: (count, entries)): {diff}")
        if hasattr(pool, "free_block_ids"):
            free = list(pool.free_block_ids())
            if len(set(free)) != len(free):
                ck.fail("ownership", f"a block is twice in the free queue: {free}")
            busy = sorted(set(free) & {b for b, n in enumerate(expected) if n > 0})
            if busy:
                ck.fail("ownership", f"blocks {busy} are in the free queue while referenced")
    space = getattr(alloc, "space", None)
    if space is not None and hasattr(space, "free_extents"):
        held_extents = [(s, n) for s, n, _ in extents]
        kind = type(space).__name__
        if kind == "BuddySpace":
            want = buddy_free_blocks(cap, held_extents)
            got = sorted(space.free_extents())
            if got != want:
                ck.fail("ownership", f"buddy free blocks {got}; a merged buddy space holding {held_extents} has {want}")
        elif kind == "FirstFitSpace":
            want = free_runs(cap, held_extents)
            got = sorted(space.free_extents())
            if got != want:
                ck.fail("ownership", f"first-fit free extents {got}; the free runs around {held_extents} are {want}")

    # conservation and accounting, slot by slot
    held: set[int] = set()
    token_slots: set[int] = set()
    future_slots: set[int] = set()
    for sid, p in placements.items():
        s = model.live[sid]
        held.update(held_slots(alloc, p))
        room = positions_held(p)
        for pos in range(min(s.tokens, room)):
            token_slots.add(p.slot(pos))
        for pos in range(s.tokens, min(s.final_len, room)):
            future_slots.add(p.slot(pos))
    held.update(_cache_slots(alloc))
    reserved_slots = future_slots - token_slots
    mem = call(alloc.memory)
    values = mem.as_dict()
    if any(not isinstance(v, int) or v < 0 for v in values.values()):
        ck.fail("conservation", f"memory() has a negative or non-integer category: {values}")
    if mem.total != cap:
        ck.fail("conservation", f"memory categories sum to {mem.total}, capacity is {cap}: {values}")
    if mem.external_fragmentation != 0:
        ck.fail("conservation", f"external fragmentation {mem.external_fragmentation} while nothing waits")
    if mem.free + mem.external_fragmentation != cap - len(held):
        ck.fail(
            "conservation",
            f"free slots {mem.free + mem.external_fragmentation}, but live sequences hold "
            f"{len(held)} of {cap} slots: {values}",
        )
    nfb = getattr(alloc, "num_free_blocks", None)
    if isinstance(nfb, int):
        held_blocks = {a // bs for a in held}
        if nfb * bs != mem.free + mem.external_fragmentation or nfb + len(held_blocks) != alloc.num_blocks:
            ck.fail(
                "conservation",
                f"{nfb} free blocks + {len(held_blocks)} held blocks != {alloc.num_blocks} "
                f"blocks, or free blocks x {bs} != free slots {mem.free}",
            )
    for probe in sorted({1, bs + 1, cap // 2 + 1, cap}):
        prompt = probe // 2  # a request prefilling half its final length (Pow2 sizes the rest)
        m = call(alloc.memory, probe, prompt)
        if m.total != cap or m.free + m.external_fragmentation != mem.free + mem.external_fragmentation:
            ck.fail("conservation", f"memory({probe}, {prompt}) = {m.as_dict()} does not conserve capacity")
        if expectation is not None and expectation.applies(model) and ck.on("capacity"):
            want = expectation.external(probe, prompt)
            if m.external_fragmentation != want:
                ck.fail(
                    "capacity",
                    f"external fragmentation for a next request of {probe} tokens is "
                    f"{m.external_fragmentation}; the free space can place all but {want} slots",
                )
    unshared_fn = getattr(alloc, "held_without_sharing", None)
    if callable(unshared_fn):
        unshared = call(unshared_fn)
        want_unshared = sum(positions_held(p) for p in placements.values())
        if unshared != want_unshared:
            ck.fail(
                "accounting", f"held_without_sharing() = {unshared}; the live placements span {want_unshared} slots"
            )
    expected = {
        "token_states": len(token_slots),
        "reserved": len(reserved_slots),
        "internal_fragmentation": len(held) - len(token_slots) - len(reserved_slots),
    }
    wrong = {k: (values[k], v) for k, v in expected.items() if values[k] != v}
    if wrong:
        ck.fail("accounting", f"memory() disagrees with the model (category: (reported, model)): {wrong}")

    # content: every live token reads back its own tag
    if ck.on("content"):
        for sid, p in placements.items():
            s = model.live[sid]
            room = positions_held(p)
            for pos in range(s.tokens):
                if pos >= room:
                    ck.fail("content", f"sequence {sid}: position {pos} has no slot")
                got = memory.get(p.slot(pos))
                if got != s.tags[pos]:
                    ck.fail(
                        "content",
                        f"sequence {sid}: position {pos} (slot {p.slot(pos)}) reads "
                        f"{_describe(got, memory, model)}; the model wrote {s.tags[pos]}",
                    )


def _describe(tag, memory, model) -> str:
    if tag is None:
        return "nothing written"
    owners = [f"seq {sid} pos {i}" for sid, s in model.live.items() for i, t in enumerate(s.tags) if t == tag]
    return f"tag {tag} ({', '.join(owners[:3]) if owners else 'a freed or overwritten token'})"


def _cache_holds(alloc) -> Counter:
    """References that a prefix cache holds on blocks outside any block table (allocators may expose
    `cache_block_refs()` -> {block: count})."""
    fn = getattr(alloc, "cache_block_refs", None)
    return Counter(fn()) if callable(fn) else Counter()


def _cache_slots(alloc) -> set[int]:
    bs = alloc.block_size
    return {b * bs + o for b, n in _cache_holds(alloc).items() if n > 0 for o in range(bs)}


__all__ = ["MEMORY_CATEGORIES", "VIOLATIONS", "Checker", "InvariantViolation", "call", "check_all", "snapshot"]
