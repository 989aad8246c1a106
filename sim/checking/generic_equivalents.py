"""The generic mutants of sim/allocators (`sim.checking.generic_mutants`) shown equivalent to the code they mutate,
each with its proof: the mutation check counts them apart from survivors. Keys are the mutants' ids (`file#ordinal`)
in the current code: a change to a module renumbers its mutants, and the table must follow (`--list` shows them)."""

from __future__ import annotations

_PAGED_UNREF_DEAD = (
    "equivalent: unreachable; PagedAllocator._unref is called only by append's copy-on-write branch, which runs "
    "only when the source block has reference count > 1, so decref leaves it >= 1 and returns False"
)
_PAGED_ROUND_ORIGIN = (
    "equivalent: only differences from the round counter matter (base = tokens - round; every use is base + round, "
    "round vs (-base) mod block_size, or round + c keys of _res_zero), so another origin changes nothing"
)
_PAGED_ORDER_ORIGIN = (
    "equivalent: live orders are only compared with each other (sorting, `>`), so another origin changes nothing"
)
_PAGED_FAST_LOOP_GATE = (
    "equivalent: it only decides whether _register_full_blocks' fast loop runs; that loop covers indices below "
    "min(full, first run length // block_size), where chain_key gives the same (tag, index) keys (runs[0] always "
    "starts at offset 0), and the chain_key loop after it registers whatever it left"
)
_PAGED_BASE_PLACEHOLDER = (
    "equivalent: admit builds _Seq with a placeholder base that _attach overwrites (base = tokens - round) before "
    "anything reads it"
)
_PAGED_STALE_TAIL_REGISTERED = (
    "equivalent: the blocks registered already hold fill block_size (admit and append leave every full block exact) "
    "except, in a round, the sequence's just-filled last block, whose fill is stale by design: append, fork, free "
    "and check write back _tail_fill before reading it, a prefix hit on it reads no fill while it is held, and the "
    "crossing that makes it a non-last block (_cross, or its inlined copy) sets block_size"
)
_PAGED_STALE_TAIL_CROSS = (
    "equivalent: the new block is s's last block, whose fill is stale by design (the inlined copy of this step sets "
    "none): append, fork, free and check write back _tail_fill before reading it, a registration (block size 1) "
    "sets block_size, and the next crossing sets block_size"
)
_PAGED_REGISTER_GUARD = (
    "equivalent: whenever the original guard is false (pos // bs <= len(s.hashes)) the extra call returns at once "
    "(_register_full_blocks starts with `if len(s.hashes) >= tokens // block_size: return`), and whenever it is "
    "true the mutant's guard is too"
)
_PAGED_NO_FILLERS = (
    "equivalent: the filler list is evaluated in more cases only when no live sequence is indexed or bucket "
    "(r + 1) % bs is empty, where it is empty (None); the only side effect is sorting that bucket into live order "
    "early (every read of a bucket sorts one flagged unordered, so no order read changes), and crossers is re-read "
    "from ring[k], which holds the same sequences in the same order"
)
_PAGED_NOTHING_LEFT = (
    "equivalent: with no crossers the rest of the loop body adds len(crossers) = 0 to crossed, takes no block (an "
    "empty comprehension, or allocate_many(0), which changes nothing) and adds no reservation"
)
_PAGED_SAME_ORDER_EVENTS = (
    "equivalent: two events share an order only when one sequence both crosses and fills in a round (block size 1; "
    "for bs > 1, t % bs == 0 and (t + 1) % bs == 0 exclude each other); their keys are then equal and the stable "
    "sort keeps the crosser, listed first, before the filler, as (order, 0) < (order, 1) does; other events differ in "
    "the first key"
)
_PAGED_FULL_RESERVATION_TIE = (
    "equivalent: at c == last both branches add the same: last to res_sum, one to res_pos, and one at round r + last "
    "(= r + c) of _res_zero"
)
_PAGED_NO_ZERO_KEY = (
    "equivalent: no key of _res_zero is r + last or r - last here: keys are added as round + c with 1 <= c <= last "
    "(before this round: at most r - 1 + last; in this round's loop: r + c with c < last) and each round pops its "
    "own key, so all keys lie strictly between r and r + last, and both gets return 0"
)
_PAGED_SCAN_DEFAULT = (
    "equivalent: this line runs only when final_len > t, so final_len - t >= 1, and only element [1] of the default "
    "is read: max(d, final_len - t) == final_len - t for every default d <= 1"
)
_PAGED_SCAN_ONE_HOLDER = (
    "equivalent: a block with one holder gets the entry (partial, final_len - t), which no other sequence updates, "
    "and contributes min(bs - partial, final_len - t), exactly what the other branch adds to the total"
)
_HYBRID_RUN_END_DEFAULT = (
    "equivalent: the default run_end is read only by _sync_runs, which runs only for indexed sequences, and admit "
    "sets run_end explicitly for every indexed one (a fork copies its parent's)"
)
_HYBRID_SERIAL = (
    "equivalent: _serial only tells released positions apart, as (block, serial) keys of ghosts and _ghost_refs that "
    "are only compared with each other; any start and any step that gives a block a new value at each take keeps "
    "exactly the same keys equal and the same ones apart"
)
_HYBRID_ONE_TOKEN_HIT = (
    "equivalent: at num_tokens == 1 the loop over range((num_tokens - 1) // bs) = range(0) finds no block, so h = 0 "
    "and (0, []) is returned as by the early return (runs_from has no side effect)"
)
_HYBRID_PEAK_DOMINATED = (
    "equivalent: the extra lengths t the loop visits never raise the peak: t = prompt or prompt - 1 holds at most "
    "ceil(prompt / bs) blocks per group, the initial peak's count (skipped >= 0); a t <= final_len - bs is dominated "
    "by t + bs, still in the loop, as the count over t + bs is never below that over t (per group ceil grows by "
    "exactly 1 and max(0, t + bs - w) // bs grows by at most 1)"
)
_HYBRID_EMPTY_GIVE_BACK = (
    "equivalent: at hi == len(ghosts) the give-back has nothing to give back (an empty slice: no ghost, "
    "_logical -= 0, release_many([]) changes nothing, freed += 0); hi < len(ghosts) never happens (computed only grows "
    "and skipped is monotone in it)"
)
_HYBRID_NEGATIVE_WINDOW_START = (
    "equivalent: max(-1, x) differs from max(0, x) only for x <= -1, where -1 // bs = -1 and 0 // bs = 0 both give "
    "no range (range(len(ghosts), -1) is empty) and no hi > len(ghosts)"
)
_HYBRID_RESERVED_ONE_HOLDER = (
    "equivalent: every held block has reference count >= 1, and a block with one holder put in `shared` gets the "
    "entry (g, partial, want) that no other sequence updates and adds min(bs - partial, want), exactly what the other "
    "branch adds"
)
_HYBRID_RESERVED_DEFAULT = (
    "equivalent: this line runs only when final_len > t, so want >= 1, and max(want, d) == want for every default "
    "d <= 1"
)
# Mutants no test can kill because the mutated program behaves exactly as the original: "file#ordinal" -> why.
# (Filled from the survivors of the committed run; each reason is checked by reading the code.)
EQUIVALENT: dict[str, str] = {
    "sim/allocators/address_space.py#8": "equivalent: the loop over orders starts two orders higher, where "
    "`capacity >> order & 1` is 0 (above the top bit), so the same regions are made",
    "sim/allocators/address_space.py#10": "equivalent: the loop starts one order higher (bit_length()), where "
    "`capacity >> order & 1` is 0, so the same regions are made",
    "sim/allocators/address_space.py#27": "equivalent: `(size - 1).bit_length()` is never negative (bit_length() >= 0 "
    "for every int), so max(-1, x) == max(0, x) == x",
    "sim/allocators/address_space.py#75": "equivalent: at order == top the block is its whole region at s, whose "
    "bit `top` is 0 (s sums higher bits), so its buddy s + 2**top is the region's end; only smaller regions follow, "
    "so no free block of order top starts there and the extra iteration breaks",
    "sim/allocators/address_space.py#128": "equivalent: at order == region order the block is the whole region at s "
    "and s ^ 2**order = s + 2**order is the region's end, where less than 2**order slots remain; the tiling asserts "
    "above already hold, so no free block of that order starts there and the extra assert passes",
    "sim/allocators/contiguous.py#158": "equivalent: `e.start >= -1` differs from `>= 0` only at start -1, and the "
    "asserts above (space.check() tiles the space from 0; the extents equal the space's allocated ones) make "
    "start >= 0",
    "sim/allocators/contiguous.py#187": "equivalent: max_rounds > 0 (checked above) and room = held - tokens >= 0 "
    "(a sequence never holds more tokens than its reservation), so min(max_rounds, room) >= 0 and max(-1, x) == x",
    "sim/allocators/contiguous.py#211": "equivalent: `ones` is an int64 array of 1s, and x // 1 == x * 1 for every "
    "integer x",
    "sim/allocators/contiguous.py#212": "equivalent: `ones` is an int64 array of 1s, and x // 1 == x * 1 for every "
    "integer x",
    "sim/allocators/contiguous.py#213": "equivalent: `ones` is an int64 array of 1s, and x // 1 == x * 1 for every "
    "integer x",
    "sim/allocators/fast_paths.py#6": "equivalent: numpy's reshape reads any negative size as 'infer this "
    "dimension', so reshape(-2) of the 1-d array is reshape(-1)",
    "sim/allocators/fast_paths.py#17": "equivalent: numpy's reshape reads any negative size as 'infer this "
    "dimension', so reshape(-2) of the 1-d array is reshape(-1)",
    "sim/allocators/paged.py#2": "equivalent: the default run_end is read only by _sync_runs, which runs only for "
    "indexed sequences, and admit sets run_end explicitly for every indexed one (a fork copies its parent's)",
    "sim/allocators/paged.py#3": "equivalent: the default run_end is read only by _sync_runs, which runs only for "
    "indexed sequences, and admit sets run_end explicitly for every indexed one (a fork copies its parent's)",
    "sim/allocators/paged.py#22": _PAGED_ROUND_ORIGIN,
    "sim/allocators/paged.py#23": _PAGED_ROUND_ORIGIN,
    "sim/allocators/paged.py#28": _PAGED_ORDER_ORIGIN,
    "sim/allocators/paged.py#29": _PAGED_ORDER_ORIGIN,
    "sim/allocators/paged.py#54": "equivalent: without the instance attribute, reads find KVAllocator's class "
    "default num_cow_copies = 0, and `+= 1` then sets the instance attribute",
    "sim/allocators/paged.py#108": _PAGED_FAST_LOOP_GATE,
    "sim/allocators/paged.py#109": _PAGED_FAST_LOOP_GATE,
    "sim/allocators/paged.py#110": _PAGED_FAST_LOOP_GATE,
    "sim/allocators/paged.py#111": _PAGED_FAST_LOOP_GATE,
    "sim/allocators/paged.py#112": _PAGED_FAST_LOOP_GATE,
    "sim/allocators/paged.py#113": _PAGED_FAST_LOOP_GATE,
    "sim/allocators/paged.py#114": _PAGED_FAST_LOOP_GATE,
    "sim/allocators/paged.py#115": _PAGED_FAST_LOOP_GATE,
    "sim/allocators/paged.py#116": _PAGED_FAST_LOOP_GATE,
    "sim/allocators/paged.py#117": _PAGED_FAST_LOOP_GATE,
    "sim/allocators/paged.py#120": "equivalent: without the append in the fast loop, the chain_key loop after it "
    "starts again at the first missing index and appends the same (tag, index) keys (registration of a "
    "key already indexed is skipped), so hashes, index and fills end the same",
    "sim/allocators/paged.py#150": "equivalent: at final_len == tokens the other branch's value is the same: "
    "min(block_size - partial, final_len - tokens) = 0",
    "sim/allocators/paged.py#191": "equivalent: live orders are distinct (each admit or fork takes the next one), "
    "so the last sequence of a bucket never has s's order and `>=` flags exactly what `>` flags",
    "sim/allocators/paged.py#200": "equivalent: leaving the flag set only sorts the bucket again on the next read; "
    "sorting a bucket already in live order gives the same order",
    "sim/allocators/paged.py#310": _PAGED_BASE_PLACEHOLDER,
    "sim/allocators/paged.py#311": _PAGED_BASE_PLACEHOLDER,
    "sim/allocators/paged.py#314": "equivalent: live orders stay distinct and increasing in steps of 2, and they are "
    "only compared with each other",
    "sim/allocators/paged.py#212": "equivalent: a block _take_block returns has fill 0 (non-retaining pools zero "
    "every freed block) or is an evicted cached block whose fill is overwritten before any read: a copy sets it "
    "from the source; an append leaves it a last block (recomputed by _tail_fill on every read) or a full block of "
    "an indexed sequence (all are, in a retaining pool), which registration sets to block_size",
    "sim/allocators/paged.py#230": _PAGED_UNREF_DEAD,
    "sim/allocators/paged.py#231": _PAGED_UNREF_DEAD,
    "sim/allocators/paged.py#232": _PAGED_UNREF_DEAD,
    "sim/allocators/paged.py#233": _PAGED_UNREF_DEAD,
    "sim/allocators/paged.py#234": _PAGED_UNREF_DEAD,
    "sim/allocators/paged.py#235": _PAGED_UNREF_DEAD,
    "sim/allocators/paged.py#236": _PAGED_UNREF_DEAD,
    "sim/allocators/paged.py#237": _PAGED_UNREF_DEAD,
    "sim/allocators/paged.py#238": _PAGED_UNREF_DEAD,
    "sim/allocators/paged.py#239": _PAGED_UNREF_DEAD,
    "sim/allocators/paged.py#122": _PAGED_STALE_TAIL_REGISTERED,
    "sim/allocators/paged.py#136": _PAGED_STALE_TAIL_REGISTERED,
    "sim/allocators/paged.py#416": "equivalent: in append's loop len(s.block_table) == ceil(pos / bs) holds at every "
    "test (the table invariant; a step either takes a block at a boundary and writes 1..bs tokens, or stays within "
    "the last block), so pos % bs == 0 exactly when pos // bs == len(s.block_table), and `or` equals `and`",
    "sim/allocators/paged.py#443": _PAGED_REGISTER_GUARD,
    "sim/allocators/paged.py#445": _PAGED_REGISTER_GUARD,
    "sim/allocators/paged.py#472": _PAGED_NO_FILLERS,
    "sim/allocators/paged.py#475": _PAGED_NO_FILLERS,
    "sim/allocators/paged.py#501": "equivalent: _ring_bucket(k) returns bucket k itself when its flag is unset, and "
    "sorting an empty bucket gives an empty one (clearing a flag that would only have sorted a bucket refilled in "
    "live order), so crossers holds the same sequences in the same order",
    "sim/allocators/paged.py#504": _PAGED_NO_FILLERS,
    "sim/allocators/paged.py#513": "equivalent: after the sort above, ring[k] is crossers itself or the sorted bucket "
    "_ring_bucket stored there; when (r + 1) % bs == k (block size 1) the filler lookup finds k's flag cleared or "
    "k empty, so ring[k] still holds the same sequences in the same order as crossers",
    "sim/allocators/paged.py#525": _PAGED_NOTHING_LEFT + "; there are no fillers either",
    "sim/allocators/paged.py#532": "equivalent: the filler kind is only tested for truth and sorted after the "
    "crossers' 0 at equal order; 2 does both as 1 does",
    "sim/allocators/paged.py#536": _PAGED_SAME_ORDER_EVENTS,
    "sim/allocators/paged.py#537": _PAGED_SAME_ORDER_EVENTS,
    "sim/allocators/paged.py#544": "equivalent: this branch runs only when fillers is non-empty, so without the "
    "continue the fillers-only branch runs next: its _register_full_blocks calls return at once (each filler was "
    "just registered up to s.base + r), and its own continue skips the rest",
    "sim/allocators/paged.py#547": _PAGED_NOTHING_LEFT + "; the fillers were registered just above",
    "sim/allocators/paged.py#571": _PAGED_FULL_RESERVATION_TIE,
    "sim/allocators/paged.py#600": _PAGED_NO_ZERO_KEY,
    "sim/allocators/paged.py#684": _PAGED_FULL_RESERVATION_TIE,
    "sim/allocators/paged.py#713": _PAGED_NO_ZERO_KEY,
    "sim/allocators/paged.py#737": _PAGED_STALE_TAIL_CROSS,
    "sim/allocators/paged.py#738": _PAGED_STALE_TAIL_CROSS,
    "sim/allocators/paged.py#739": _PAGED_STALE_TAIL_CROSS,
    "sim/allocators/paged.py#745": "equivalent: append_each's general path over all live ids in live order declines "
    "exactly when append_round does (a listed sequence with a shared partly filled last block, which only forked "
    "ones have; or more sequences at a block boundary, bucket round % bs, than free blocks), else appends one token "
    "to each in live order, which append_round must equal (the FastPaths contract), and returns the same total",
    "sim/allocators/paged.py#806": "equivalent: live orders stay distinct and increasing in steps of 2 after a fork, "
    "and they are only compared with each other",
    "sim/allocators/paged.py#971": "equivalent: at final_len == t the mutant adds min(bs - partial, 0) = 0 to the "
    "total, or a shared entry (partial, max(previous, 0)) equal to what the entry is without it (absent reads 0)",
    "sim/allocators/paged.py#976": _PAGED_SCAN_ONE_HOLDER,
    "sim/allocators/paged.py#979": _PAGED_SCAN_ONE_HOLDER,
    "sim/allocators/paged.py#981": _PAGED_SCAN_DEFAULT,
    "sim/allocators/paged.py#982": _PAGED_SCAN_DEFAULT,
    "sim/allocators/paged.py#983": _PAGED_SCAN_DEFAULT,
    "sim/allocators/paged.py#984": _PAGED_SCAN_DEFAULT,
    "sim/allocators/prefix_hash.py#43": "equivalent: the break is a shortcut; once pos >= hi, every later run starts "
    "at or after hi (run lengths are >= 0), so start = max(lo, pos) >= hi >= end and it adds no piece",
    "sim/allocators/prefix_hash.py#45": "equivalent: deleting the break only scans the later runs, which start at or "
    "after hi (run lengths are >= 0): start >= hi >= end, so they add no piece",
    "sim/allocators/hybrid.py#29": _HYBRID_RUN_END_DEFAULT,
    "sim/allocators/hybrid.py#30": _HYBRID_RUN_END_DEFAULT,
    "sim/allocators/hybrid.py#66": _HYBRID_SERIAL,
    "sim/allocators/hybrid.py#67": _HYBRID_SERIAL,
    "sim/allocators/hybrid.py#82": "equivalent: without the instance attribute, reads find KVAllocator's class "
    "default num_cow_copies = 0, and `+= 1` then sets the instance attribute",
    "sim/allocators/hybrid.py#107": _HYBRID_SERIAL,
    "sim/allocators/hybrid.py#108": _HYBRID_SERIAL,
    "sim/allocators/hybrid.py#164": "equivalent: at len(s.hashes) == full the loop registers nothing and only "
    "_sync_runs runs early; syncing early gives the runs a later sync would (it extends s's own last run or appends "
    "it, additively), and runs are read only right after a sync (chain_key here, fork's copy after its own sync)",
    "sim/allocators/hybrid.py#179": _HYBRID_ONE_TOKEN_HIT,
    "sim/allocators/hybrid.py#182": _HYBRID_ONE_TOKEN_HIT,
    "sim/allocators/hybrid.py#202": "equivalent: with no sliding group the loop runs over no group and `all` of "
    "nothing breaks at once; with h == 0 the runs are built over no key and `while h` does not run: h and keys stay",
    "sim/allocators/hybrid.py#205": "equivalent: starting the count at 1 raises only the leading run of blocks "
    "cached from position 0, where run[h - 1] >= h >= h - skipped holds either way; the first miss resets the count "
    "to 0 and every later value is the same",
    "sim/allocators/hybrid.py#246": "equivalent: _skipped_blocks(g, -1) = max(0, -w) // bs = 0 = "
    "_skipped_blocks(g, 0) for every window w >= 1",
    "sim/allocators/hybrid.py#247": _HYBRID_PEAK_DOMINATED,
    "sim/allocators/hybrid.py#249": _HYBRID_PEAK_DOMINATED,
    "sim/allocators/hybrid.py#250": _HYBRID_PEAK_DOMINATED,
    "sim/allocators/hybrid.py#253": _HYBRID_PEAK_DOMINATED,
    "sim/allocators/hybrid.py#352": _HYBRID_EMPTY_GIVE_BACK,
    "sim/allocators/hybrid.py#432": _HYBRID_NEGATIVE_WINDOW_START,
    "sim/allocators/hybrid.py#437": _HYBRID_EMPTY_GIVE_BACK,
    "sim/allocators/hybrid.py#589": _HYBRID_NEGATIVE_WINDOW_START,
    "sim/allocators/hybrid.py#616": "equivalent: delta holds only blocks given back earlier in the round, which lie "
    "below a sequence's window and so are full (every holder of a block sees the same fill, check()), while the "
    "copy-on-write test reads a partly filled last block: delta.get(b, 0) is 0 there and + equals -",
    "sim/allocators/hybrid.py#697": "equivalent: at final_len == t the mutant adds min(bs - partial, 0) = 0 to the "
    "total, or a shared entry (g, partial, max(0, previous)) equal to what the entry is without it (absent adds "
    "nothing)",
    "sim/allocators/hybrid.py#704": _HYBRID_RESERVED_ONE_HOLDER,
    "sim/allocators/hybrid.py#707": _HYBRID_RESERVED_ONE_HOLDER,
    "sim/allocators/hybrid.py#712": _HYBRID_RESERVED_DEFAULT,
    "sim/allocators/hybrid.py#713": _HYBRID_RESERVED_DEFAULT,
}
