"""Generic mutation testing of the allocators: arbitrary generated mutants of sim/allocators/, not a hand-made list.

Long file: one tool whose mutator, runner, cache, report and equivalence table share the mutant records.

A small syntax-tree mutator. For every module of sim/allocators/ it enumerates, in a fixed order, one mutant per
applicable operator and site:

- `compare`: comparison flips `<` <-> `>`, `<=` <-> `>=`, boundaries `<` <-> `<=`, `>` <-> `>=`, and negations
  `==` <-> `!=`, `is` <-> `is not`, `in` <-> `not in`;
- `constant`: every integer constant n becomes n + 1 and n - 1 (booleans excluded);
- `arith`: `+` <-> `-`, `*` <-> `//` (and `/` -> `*`), in expressions and augmented assignments;
- `delete`: a simple statement (expression, assignment, augmented assignment, raise, assert, del, break, continue)
  becomes `pass`;
- `boolop`: `and` <-> `or`;
- `return`: `return X` becomes `return None`, and `return True` / `return False` the other one.

Docstrings, annotations, f-strings (messages) and `if TYPE_CHECKING:` blocks are not mutated. A mutant is the module
unparsed from the mutated tree (`ast.unparse`), written into a temporary copy of the repository (one per worker; the
working tree is never touched). The fast test selection then runs against the copy with `-x`: the unit tests of
tests/sim/allocators, the allocator state machines (tests/sim/allocators/test_allocator_properties.py) and the engine
property test (tests/sim/serving/test_engine_properties.py) at a reduced, derandomised hypothesis budget (profile
`mutation`: `--examples` examples, no shrinking), restricted to the allocator family the module belongs to (contiguous
for contiguous.py and address_space.py, paged for paged.py, block_pool.py and prefix_hash.py, all otherwise), with a
per-mutant timeout. A mutant is *killed* when the selection fails, *timeout* when it runs past the timeout (an
endless loop: counted as killed), *survived* when it passes. Mutants on lines the selection never executes (measured
once on the unmutated code) are *not covered*: not run, and counted as survivors.

Results are cached in `--cache` (JSON lines, keyed by the module's text and the mutant's ordinal and operator), so a
run can be interrupted and resumed; killed and timed-out mutants are never run again for the same module text;
survivors are run again when the test files changed. `--budget SECONDS` stops starting new mutants after that long.

    python -m sim.checking.generic_mutation [--jobs 2] [--examples 10] [--timeout 240] [--budget S] [--list]

writes the "Generic mutants" section of reports/mutation-check.md (keeping the project-mutant section) and the
`generic` key of reports/mutation-check.json. Equivalent mutants are listed in EQUIVALENT with the reason.
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = "sim/allocators"
UNIT_TESTS = "tests/sim/allocators"
PROPERTY_TEST = "tests/sim/allocators/test_allocator_properties.py"
ENGINE_PROPERTY_TEST = "tests/sim/serving/test_engine_properties.py"
FAMILIES = {
    "sim/allocators/contiguous.py": "contiguous",
    "sim/allocators/address_space.py": "contiguous",
    "sim/allocators/paged.py": "paged",
    "sim/allocators/block_pool.py": "paged",
    "sim/allocators/prefix_hash.py": "paged",
}
START, END = "<!-- generic-mutation:start -->", "<!-- generic-mutation:end -->"

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
    "sim/allocators/paged.py#99": _PAGED_FAST_LOOP_GATE,
    "sim/allocators/paged.py#100": _PAGED_FAST_LOOP_GATE,
    "sim/allocators/paged.py#101": _PAGED_FAST_LOOP_GATE,
    "sim/allocators/paged.py#102": _PAGED_FAST_LOOP_GATE,
    "sim/allocators/paged.py#103": _PAGED_FAST_LOOP_GATE,
    "sim/allocators/paged.py#104": _PAGED_FAST_LOOP_GATE,
    "sim/allocators/paged.py#105": _PAGED_FAST_LOOP_GATE,
    "sim/allocators/paged.py#106": _PAGED_FAST_LOOP_GATE,
    "sim/allocators/paged.py#107": _PAGED_FAST_LOOP_GATE,
    "sim/allocators/paged.py#108": _PAGED_FAST_LOOP_GATE,
    "sim/allocators/paged.py#111": "equivalent: without the append in the fast loop, the chain_key loop after it "
    "starts again at the first missing index and appends the same (tag, index) keys (registration of a "
    "key already indexed is skipped), so hashes, index and fills end the same",
    "sim/allocators/paged.py#141": "equivalent: at final_len == tokens the other branch's value is the same: "
    "min(block_size - partial, final_len - tokens) = 0",
    "sim/allocators/paged.py#182": "equivalent: live orders are distinct (each admit or fork takes the next one), "
    "so the last sequence of a bucket never has s's order and `>=` flags exactly what `>` flags",
    "sim/allocators/paged.py#191": "equivalent: leaving the flag set only sorts the bucket again on the next read; "
    "sorting a bucket already in live order gives the same order",
    "sim/allocators/paged.py#296": _PAGED_BASE_PLACEHOLDER,
    "sim/allocators/paged.py#297": _PAGED_BASE_PLACEHOLDER,
    "sim/allocators/paged.py#300": "equivalent: live orders stay distinct and increasing in steps of 2, and they are "
    "only compared with each other",
    "sim/allocators/paged.py#203": "equivalent: a block _take_block returns has fill 0 (non-retaining pools zero "
    "every freed block) or is an evicted cached block whose fill is overwritten before any read: a copy sets it "
    "from the source; an append leaves it a last block (recomputed by _tail_fill on every read) or a full block of "
    "an indexed sequence (all are, in a retaining pool), which registration sets to block_size",
    "sim/allocators/paged.py#221": _PAGED_UNREF_DEAD,
    "sim/allocators/paged.py#222": _PAGED_UNREF_DEAD,
    "sim/allocators/paged.py#223": _PAGED_UNREF_DEAD,
    "sim/allocators/paged.py#224": _PAGED_UNREF_DEAD,
    "sim/allocators/paged.py#225": _PAGED_UNREF_DEAD,
    "sim/allocators/paged.py#226": _PAGED_UNREF_DEAD,
    "sim/allocators/paged.py#227": _PAGED_UNREF_DEAD,
    "sim/allocators/paged.py#228": _PAGED_UNREF_DEAD,
    "sim/allocators/paged.py#229": _PAGED_UNREF_DEAD,
    "sim/allocators/paged.py#230": _PAGED_UNREF_DEAD,
    "sim/allocators/paged.py#113": _PAGED_STALE_TAIL_REGISTERED,
    "sim/allocators/paged.py#127": _PAGED_STALE_TAIL_REGISTERED,
    "sim/allocators/paged.py#401": "equivalent: in append's loop len(s.block_table) == ceil(pos / bs) holds at every "
    "test (the table invariant; a step either takes a block at a boundary and writes 1..bs tokens, or stays within "
    "the last block), so pos % bs == 0 exactly when pos // bs == len(s.block_table), and `or` equals `and`",
    "sim/allocators/paged.py#428": _PAGED_REGISTER_GUARD,
    "sim/allocators/paged.py#430": _PAGED_REGISTER_GUARD,
    "sim/allocators/paged.py#457": _PAGED_NO_FILLERS,
    "sim/allocators/paged.py#460": _PAGED_NO_FILLERS,
    "sim/allocators/paged.py#486": "equivalent: _ring_bucket(k) returns bucket k itself when its flag is unset, and "
    "sorting an empty bucket gives an empty one (clearing a flag that would only have sorted a bucket refilled in "
    "live order), so crossers holds the same sequences in the same order",
    "sim/allocators/paged.py#489": _PAGED_NO_FILLERS,
    "sim/allocators/paged.py#498": "equivalent: after the sort above, ring[k] is crossers itself or the sorted bucket "
    "_ring_bucket stored there; when (r + 1) % bs == k (block size 1) the filler lookup finds k's flag cleared or "
    "k empty, so ring[k] still holds the same sequences in the same order as crossers",
    "sim/allocators/paged.py#510": _PAGED_NOTHING_LEFT + "; there are no fillers either",
    "sim/allocators/paged.py#517": "equivalent: the filler kind is only tested for truth and sorted after the "
    "crossers' 0 at equal order; 2 does both as 1 does",
    "sim/allocators/paged.py#521": _PAGED_SAME_ORDER_EVENTS,
    "sim/allocators/paged.py#522": _PAGED_SAME_ORDER_EVENTS,
    "sim/allocators/paged.py#529": "equivalent: this branch runs only when fillers is non-empty, so without the "
    "continue the fillers-only branch runs next: its _register_full_blocks calls return at once (each filler was "
    "just registered up to s.base + r), and its own continue skips the rest",
    "sim/allocators/paged.py#532": _PAGED_NOTHING_LEFT + "; the fillers were registered just above",
    "sim/allocators/paged.py#556": _PAGED_FULL_RESERVATION_TIE,
    "sim/allocators/paged.py#585": _PAGED_NO_ZERO_KEY,
    "sim/allocators/paged.py#669": _PAGED_FULL_RESERVATION_TIE,
    "sim/allocators/paged.py#698": _PAGED_NO_ZERO_KEY,
    "sim/allocators/paged.py#722": _PAGED_STALE_TAIL_CROSS,
    "sim/allocators/paged.py#723": _PAGED_STALE_TAIL_CROSS,
    "sim/allocators/paged.py#724": _PAGED_STALE_TAIL_CROSS,
    "sim/allocators/paged.py#730": "equivalent: append_each's general path over all live ids in live order declines "
    "exactly when append_round does (a listed sequence with a shared partly filled last block, which only forked "
    "ones have; or more sequences at a block boundary, bucket round % bs, than free blocks), else appends one token "
    "to each in live order, which append_round must equal (the FastPaths contract), and returns the same total",
    "sim/allocators/paged.py#791": "equivalent: live orders stay distinct and increasing in steps of 2 after a fork, "
    "and they are only compared with each other",
    "sim/allocators/paged.py#948": "equivalent: at final_len == t the mutant adds min(bs - partial, 0) = 0 to the "
    "total, or a shared entry (partial, max(previous, 0)) equal to what the entry is without it (absent reads 0)",
    "sim/allocators/paged.py#953": _PAGED_SCAN_ONE_HOLDER,
    "sim/allocators/paged.py#956": _PAGED_SCAN_ONE_HOLDER,
    "sim/allocators/paged.py#958": _PAGED_SCAN_DEFAULT,
    "sim/allocators/paged.py#959": _PAGED_SCAN_DEFAULT,
    "sim/allocators/paged.py#960": _PAGED_SCAN_DEFAULT,
    "sim/allocators/paged.py#961": _PAGED_SCAN_DEFAULT,
    "sim/allocators/prefix_hash.py#43": "equivalent: the break is a shortcut; once pos >= hi, every later run starts "
    "at or after hi (run lengths are >= 0), so start = max(lo, pos) >= hi >= end and it adds no piece",
    "sim/allocators/prefix_hash.py#45": "equivalent: deleting the break only scans the later runs, which start at or "
    "after hi (run lengths are >= 0): start >= hi >= end, so they add no piece",
}

_COMPARE_SWAPS: dict[type, tuple[type, ...]] = {
    ast.Lt: (ast.LtE, ast.Gt),
    ast.LtE: (ast.Lt, ast.GtE),
    ast.Gt: (ast.GtE, ast.Lt),
    ast.GtE: (ast.Gt, ast.LtE),
    ast.Eq: (ast.NotEq,),
    ast.NotEq: (ast.Eq,),
    ast.Is: (ast.IsNot,),
    ast.IsNot: (ast.Is,),
    ast.In: (ast.NotIn,),
    ast.NotIn: (ast.In,),
}
_ARITH_SWAPS: dict[type, type] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.FloorDiv,
    ast.FloorDiv: ast.Mult,
    ast.Div: ast.Mult,
}
_OP_TEXT = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.FloorDiv: "//",
    ast.Div: "/",
    ast.And: "and",
    ast.Or: "or",
}
_DELETABLE = (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Raise, ast.Assert, ast.Delete, ast.Break)
_DELETABLE += (ast.Continue,)


@dataclass(frozen=True)
class GenericMutant:
    file: str  # relative to the root
    ordinal: int  # position in the module's enumeration
    op: str  # compare, constant, arith, delete, boolop, return
    line: int
    qualname: str  # enclosing function or class ("<module>" at top level)
    before: str
    after: str

    @property
    def id(self) -> str:
        return f"{self.file}#{self.ordinal}"


@dataclass
class _Site:
    node: ast.AST
    op: str
    line: int
    qualname: str
    before: str
    after: str
    apply: object  # callable(node) -> None, mutating the node (or its parent list) in place


def _is_docstring(stmt: ast.stmt, body: list[ast.stmt]) -> bool:
    return (
        body
        and stmt is body[0]
        and isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
    )


def _short(text: str, n: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _sites(tree: ast.Module) -> list[_Site]:
    """Every mutation site of a module, in a fixed order (depth first, fields in order, operators in order)."""
    out: list[_Site] = []

    def stmt_site(body: list[ast.stmt], i: int, qual: str) -> None:
        stmt = body[i]
        no_op = isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)  # `...`: deleting it is `pass`
        if isinstance(stmt, _DELETABLE) and not _is_docstring(stmt, body) and not no_op:
            if isinstance(stmt, ast.AnnAssign) and stmt.value is None:
                return
            if isinstance(stmt, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id in ("__all__", "__slots__") for t in stmt.targets
            ):
                return

            def apply(_node: ast.AST, body=body, i=i) -> None:
                body[i] = ast.copy_location(ast.Pass(), body[i])

            out.append(_Site(stmt, "delete", stmt.lineno, qual, _short(ast.unparse(stmt)), "pass", apply))
        if isinstance(stmt, ast.Return) and stmt.value is not None:
            v = stmt.value
            if isinstance(v, ast.Constant) and isinstance(v.value, bool):
                new = ast.Constant(not v.value)
            elif isinstance(v, ast.Constant) and v.value is None:
                new = None
            else:
                new = ast.Constant(None)
            if new is not None:

                def apply(node: ast.AST, new=new) -> None:
                    node.value = new

                out.append(
                    _Site(stmt, "return", stmt.lineno, qual, _short(ast.unparse(stmt)), f"return {new.value}", apply)
                )

    def visit(node: ast.AST, qual: str) -> None:
        if isinstance(node, (ast.JoinedStr,)) or _is_type_checking(node):
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            qual = node.name if qual == "<module>" else f"{qual}.{node.name}"
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Compare):
            for k, op in enumerate(node.ops):
                for new in _COMPARE_SWAPS.get(type(op), ()):

                    def apply(n: ast.AST, k=k, new=new) -> None:
                        n.ops[k] = new()

                    before = _short(ast.unparse(node))
                    out.append(
                        _Site(node, "compare", line, qual, before, f"{_OP_TEXT[type(op)]} -> {_OP_TEXT[new]}", apply)
                    )
        elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _ARITH_SWAPS:
            new = _ARITH_SWAPS[type(node.op)]

            def apply(n: ast.AST, new=new) -> None:
                n.op = new()

            out.append(
                _Site(
                    node,
                    "arith",
                    line,
                    qual,
                    _short(ast.unparse(node)),
                    f"{_OP_TEXT[type(node.op)]} -> {_OP_TEXT[new]}",
                    apply,
                )
            )
        elif isinstance(node, ast.BoolOp):
            new = ast.Or if isinstance(node.op, ast.And) else ast.And

            def apply(n: ast.AST, new=new) -> None:
                n.op = new()

            out.append(
                _Site(node, "boolop", line, qual, _short(ast.unparse(node)), f"{_OP_TEXT[type(node.op)]} -> ...", apply)
            )
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            for delta in (1, -1):

                def apply(n: ast.AST, delta=delta) -> None:
                    n.value = n.value + delta

                out.append(_Site(node, "constant", line, qual, repr(node.value), repr(node.value + delta), apply))
        for field, value in ast.iter_fields(node):
            if field in ("annotation", "returns", "type_comment", "decorator_list"):
                continue
            if isinstance(value, list):
                if value and all(isinstance(v, ast.stmt) for v in value):
                    for i in range(len(value)):
                        stmt_site(value, i, qual)
                        visit(value[i], qual)
                else:
                    for v in value:
                        if isinstance(v, ast.AST):
                            visit(v, qual)
            elif isinstance(value, ast.AST):
                visit(value, qual)

    visit(tree, "<module>")
    return out


def enumerate_source(source: str, file: str = "<string>") -> list[GenericMutant]:
    """The mutants of one module's source, in order."""
    tree = ast.parse(source, file)
    mutants = []
    for i, s in enumerate(_sites(tree)):
        after = s.after
        if s.op in ("compare", "arith", "boolop"):
            after = _mutated_segment(source, file, i) or after
        mutants.append(GenericMutant(file, i, s.op, s.line, s.qualname, s.before, _short(after)))
    return mutants


def _mutated_segment(source: str, file: str, ordinal: int) -> str:
    tree = ast.parse(source, file)
    site = _sites(tree)[ordinal]
    site.apply(site.node)
    return ast.unparse(site.node)


def mutate_source(source: str, ordinal: int, file: str = "<string>") -> str:
    """The module's source with mutant `ordinal` applied (unparsed from the mutated tree)."""
    tree = ast.parse(source, file)
    sites = _sites(tree)
    site = sites[ordinal]
    site.apply(site.node)
    return ast.unparse(ast.fix_missing_locations(tree))


def target_files(root: str = ROOT) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in Path(root, TARGET).glob("*.py"))


def all_mutants(root: str = ROOT) -> list[GenericMutant]:
    out: list[GenericMutant] = []
    for rel in target_files(root):
        out += enumerate_source(Path(root, rel).read_text(), rel)
    return out


# --- running ------------------------------------------------------------------------------------------------------

_PLUGIN = """
import os, sys, json, threading
from hypothesis import HealthCheck, Phase, settings
settings.register_profile(
    "mutation",
    max_examples=int(os.environ.get("KVSIM_MUTATION_EXAMPLES", "10")),
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
_OUT = os.environ.get("KVSIM_MUTATION_COVERAGE")
_LINES = set()
if _OUT:
    _PREFIX = os.path.join(os.environ["KVSIM_MUTATION_ROOT"], "sim", "allocators") + os.sep

    def _local(frame, event, arg):
        if event == "line":
            _LINES.add((frame.f_code.co_filename, frame.f_lineno))
        return _local

    def _global(frame, event, arg):
        if frame.f_code.co_filename.startswith(_PREFIX):
            _LINES.add((frame.f_code.co_filename, frame.f_lineno))
            return _local
        return None

    sys.settrace(_global)
    threading.settrace(_global)


def pytest_sessionfinish(session, exitstatus):
    if _OUT:
        sys.settrace(None)
        root = os.environ["KVSIM_MUTATION_ROOT"]
        data = sorted((os.path.relpath(f, root), n) for f, n in _LINES)
        with open(_OUT, "w") as fh:
            json.dump(data, fh)
"""


def _tests_hash(root: str) -> str:
    h = hashlib.sha1()
    for p in sorted(Path(root, "tests").rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _file_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


class Workspace:
    """A temporary copy of the repository (sim/, tests/, pyproject.toml) where one mutant at a time is written."""

    def __init__(self, root: str):
        self.dir = tempfile.mkdtemp(prefix="kvsim-generic-mutant-")
        ignore = shutil.ignore_patterns("__pycache__", ".hypothesis", ".pytest_cache")
        for name in ("sim", "tests"):
            shutil.copytree(os.path.join(root, name), os.path.join(self.dir, name), ignore=ignore)
        for name in ("pyproject.toml",):
            if os.path.exists(os.path.join(root, name)):
                shutil.copy(os.path.join(root, name), self.dir)
        Path(self.dir, "kvsim_mutation_plugin.py").write_text(_PLUGIN)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def run(self, tests: list[str], timeout: float, examples: int, coverage_out: str | None = None) -> dict:
        env = dict(os.environ)
        env.update(
            PYTHONPATH=self.dir,
            PYTHONDONTWRITEBYTECODE="1",
            HYPOTHESIS_PROFILE="mutation",
            KVSIM_MUTATION_EXAMPLES=str(examples),
            KVSIM_MUTATION_ROOT=self.dir,
        )
        env.pop("KVSIM_DISABLED_INVARIANTS", None)
        if coverage_out:
            env["KVSIM_MUTATION_COVERAGE"] = coverage_out
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "--tb=line", "-p", "no:cacheprovider"]
        cmd += ["-p", "kvsim_mutation_plugin", *tests]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=self.dir, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "seconds": round(time.perf_counter() - t0, 1), "failed": ""}
        seconds = round(time.perf_counter() - t0, 1)
        if proc.returncode == 0:
            return {"status": "survived", "seconds": seconds, "failed": ""}
        failed = re.findall(r"^FAILED (\S+)", proc.stdout, re.M) or re.findall(r"^ERROR (\S+)", proc.stdout, re.M)
        if proc.returncode not in (1, 2) or not failed and proc.returncode != 1:
            # 2: interrupted / collection error (an import-time crash of the mutant): killed as well
            tail = (proc.stdout + proc.stderr)[-300:]
            return {"status": "killed", "seconds": seconds, "failed": failed[0] if failed else tail.strip()[-120:]}
        return {"status": "killed", "seconds": seconds, "failed": failed[0] if failed else ""}


def collect_ids(ws: Workspace) -> list[str]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            PROPERTY_TEST,
            ENGINE_PROPERTY_TEST,
        ],
        cwd=ws.dir,
        env={**os.environ, "PYTHONPATH": ws.dir, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in proc.stdout.splitlines() if "::" in line]


def selection(file: str, unit_files: list[str], property_ids: list[str]) -> list[str]:
    """The tests run against a mutant of `file`: the allocator unit tests, then the property tests of its family."""
    family = FAMILIES.get(file)
    props = [t for t in property_ids if family is None or f"[{family}" in t]
    return unit_files + props


def _load_cache(path: str) -> dict[str, dict]:
    cache: dict[str, dict] = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    r = json.loads(line)
                    cache[r["key"]] = r
    return cache


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    mutants = all_mutants(ROOT)
    sources = {rel: Path(ROOT, rel).read_text() for rel in target_files(ROOT)}
    fhash = {rel: _file_hash(t) for rel, t in sources.items()}
    thash = _tests_hash(ROOT)
    if args.file:
        mutants = [m for m in mutants if m.file in args.file]
    if args.list:
        for m in mutants:
            print(f"{m.id:<36} {m.op:<8} {m.line:>4} {m.qualname:<40} {m.before}  =>  {m.after}")
        print(f"{len(mutants)} mutants")
        return 0
    cache = _load_cache(args.cache)
    if args.report_only:  # the cached results as they stand; anything not in the cache is "not run"
        results = {m.id: r for m in mutants if (r := cache.get(_key(m, fhash)))}
        base = cache.get("baseline", {})
        write_report(mutants, results, base.get("seconds"), time.perf_counter() - t0, args)
        return 0
    workspaces = [Workspace(ROOT) for _ in range(max(1, args.jobs))]
    try:
        unit_files = sorted(
            p.relative_to(ROOT).as_posix()
            for p in Path(ROOT, UNIT_TESTS).glob("test_*.py")
            if p.name != os.path.basename(PROPERTY_TEST)
        )
        property_ids = collect_ids(workspaces[0])
        # baseline, with line coverage of sim/allocators
        cov_path = os.path.join(workspaces[0].dir, "coverage.json")
        print("baseline: the unmutated selection, with line coverage ...", flush=True)
        base = workspaces[0].run(unit_files + property_ids, args.timeout * 4, args.examples, cov_path)
        if base["status"] != "survived":
            print(f"baseline failed: {base}", file=sys.stderr)
            return 2
        covered = {(f, n) for f, n in json.load(open(cov_path))}
        print(f"baseline: passed in {base['seconds']} s; {len(covered)} lines of {TARGET} executed", flush=True)
        baseline_s = base["seconds"]
        with open(args.cache, "a", encoding="utf-8") as f:
            f.write(json.dumps({"key": "baseline", "seconds": baseline_s, "tests": thash}) + "\n")
        timeout = max(args.timeout, 3 * baseline_s)

        results: dict[str, dict] = {}
        todo: list[GenericMutant] = []
        for m in mutants:
            key = _key(m, fhash)
            r = cache.get(key)
            if r and (r["status"] in ("killed", "timeout") or r.get("tests") == thash):
                results[m.id] = r
            elif (m.file, m.line) not in covered and not _covered_span(m, covered):
                results[m.id] = {"key": key, "status": "not covered", "seconds": 0, "failed": "", "tests": thash}
                with open(args.cache, "a", encoding="utf-8") as f:
                    f.write(json.dumps(results[m.id]) + "\n")
            else:
                todo.append(m)
        print(
            f"{len(mutants)} mutants; {len(mutants) - len(todo)} cached or not covered; {len(todo)} to run", flush=True
        )
        lock = threading.Lock()
        free = list(workspaces)
        deadline = None if args.budget is None else time.monotonic() + args.budget
        done = [0]

        def one(m: GenericMutant) -> None:
            if deadline is not None and time.monotonic() > deadline:
                return
            with lock:
                ws = free.pop()
            path = os.path.join(ws.dir, m.file)
            try:
                Path(path).write_text(mutate_source(sources[m.file], m.ordinal, m.file))
                r = ws.run(selection(m.file, unit_files, property_ids), timeout, args.examples)
            finally:
                Path(path).write_text(sources[m.file])
                with lock:
                    free.append(ws)
            r.update(key=_key(m, fhash), tests=thash)
            with lock:
                results[m.id] = r
                with open(args.cache, "a", encoding="utf-8") as f:
                    f.write(json.dumps(r) + "\n")
                done[0] += 1
                print(
                    f"[{done[0]}/{len(todo)}] {r['status']:<8} {m.id:<34} {m.op:<8} l{m.line} {m.before} => {m.after}"
                    f" ({r['seconds']} s)",
                    flush=True,
                )

        with ThreadPoolExecutor(max_workers=len(workspaces)) as pool:
            list(pool.map(one, todo))
    finally:
        for ws in workspaces:
            ws.close()
    write_report(mutants, results, baseline_s, time.perf_counter() - t0, args)
    return 0


def _key(m: GenericMutant, fhash: dict[str, str]) -> str:
    return f"{m.id}@{fhash[m.file]}:{m.op}:{m.line}:{_file_hash(m.before + '=>' + m.after)}"


def _covered_span(m: GenericMutant, covered: set[tuple[str, int]]) -> bool:
    # a statement spanning several lines is covered when any of its first lines ran (tracing reports one line)
    return any((m.file, m.line + d) in covered for d in (1, 2, 3))


def summarize(mutants: list[GenericMutant], results: dict[str, dict]) -> dict:
    counts: dict[str, int] = {}
    for m in mutants:
        s = results.get(m.id, {}).get("status", "not run")
        if s == "survived" and m.id in EQUIVALENT:
            s = "equivalent"
        counts[s] = counts.get(s, 0) + 1
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    non_equivalent = len(mutants) - counts.get("equivalent", 0) - counts.get("not run", 0)
    return {
        "mutants": len(mutants),
        "counts": counts,
        "killed": killed,
        "non_equivalent": non_equivalent,
        "kill_rate": round(killed / non_equivalent, 4) if non_equivalent else None,
    }


def write_report(mutants, results, baseline_s, seconds, args) -> None:
    summary = summarize(mutants, results)
    by_file: dict[str, dict[str, int]] = {}
    for m in mutants:
        s = results.get(m.id, {}).get("status", "not run")
        if s == "survived" and m.id in EQUIVALENT:
            s = "equivalent"
        by_file.setdefault(m.file, {}).setdefault(s, 0)
        by_file[m.file][s] += 1
    ops: dict[str, dict[str, int]] = {}
    for m in mutants:
        s = results.get(m.id, {}).get("status", "not run")
        ops.setdefault(m.op, {}).setdefault(s, 0)
        ops[m.op][s] += 1
    meta = {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "command": "python -m sim.checking.generic_mutation " + " ".join(sys.argv[1:]),
        "jobs": args.jobs,
        "examples": args.examples,
        "baseline_seconds": baseline_s,
        "seconds": round(seconds, 1),
    }
    survivors = [m for m in mutants if results.get(m.id, {}).get("status") in ("survived", "not covered", "not run")]
    rate = summary["kill_rate"]
    lines = [
        START,
        "",
        "## Generic mutants of sim/allocators",
        "",
        f"**{summary['killed']} of {summary['non_equivalent']} non-equivalent mutants killed "
        f"({100 * (rate or 0):.1f}%)**; {summary['mutants']} generated, "
        f"{summary['counts'].get('equivalent', 0)} equivalent "
        f"(explained below). Run on {meta['date']} with Python {meta['python']} by `{meta['command']}` "
        f"({meta['jobs']} jobs, {meta['seconds']} s of this run; results cached across runs).",
        "",
        *(
            [
                f"**Incomplete: {summary['counts']['not run']} of {summary['mutants']} mutants were not run** in "
                "the time this run had (2 cores); the kill rate above is over the mutants that were run. "
                "`python -m sim.checking.generic_mutation` resumes from the cache.",
                "",
            ]
            if summary["counts"].get("not run")
            else []
        ),
        "Every mutant comes from `sim/checking/generic_mutation.py` (a syntax-tree mutator; operators: comparison "
        "flips and boundaries, integer constants +-1, `+`/`-` and `*`/`//` swaps, deleting a simple statement, "
        "`and`/`or`, return values). Each one is written into a temporary copy of the repository, and the fast "
        "selection runs against it with `-x`: the unit tests of `tests/sim/allocators`, the allocator state "
        "machines and the engine property test of the module's allocator family, with hypothesis at "
        f"{meta['examples']} examples per machine run (x3 for the allocator machines; derandomised, no shrinking); "
        f"the unmutated selection passes in {baseline_s if baseline_s is not None else 'n/a'} s. Killed: the "
        "selection fails (timeout: it runs past "
        "the per-mutant limit, an endless loop). Not covered: on a line the selection never executes.",
        "",
        "| module | " + " | ".join(("killed", "timeout", "survived", "equivalent", "not covered", "not run")) + " |",
        "|---|---|---|---|---|---|---|",
    ]
    for f, c in by_file.items():
        cells = " | ".join(
            str(c.get(k, 0)) for k in ("killed", "timeout", "survived", "equivalent", "not covered", "not run")
        )
        lines.append(f"| `{f}` | {cells} |")
    lines += ["", "| operator | mutants | killed or timeout |", "|---|---|---|"]
    for op, c in ops.items():
        lines.append(f"| {op} | {sum(c.values())} | {c.get('killed', 0) + c.get('timeout', 0)} |")
    lines += ["", "### Survivors", ""]
    if not survivors:
        lines.append("None.")
    else:
        lines += ["| mutant | line | function | original | mutant | fate |", "|---|---|---|---|---|---|"]
        for m in survivors:
            st = results.get(m.id, {}).get("status", "not run")
            fate = EQUIVALENT.get(m.id, f"**{st}**")
            before = m.before.replace("|", "\\|")
            after = m.after.replace("|", "\\|")
            lines.append(f"| `{m.id}` | {m.line} | `{m.qualname}` | `{before}` | `{after}` | {fate} |")
    lines += ["", END, ""]
    section = "\n".join(lines)
    os.makedirs(args.out, exist_ok=True)
    md_path = os.path.join(args.out, "mutation-check.md")
    text = Path(md_path).read_text() if os.path.exists(md_path) else ""
    text = replace_section(text, section)
    Path(md_path + ".tmp").write_text(text)
    os.replace(md_path + ".tmp", md_path)
    json_path = os.path.join(args.out, "mutation-check.json")
    data = json.loads(Path(json_path).read_text()) if os.path.exists(json_path) else {}
    data["generic"] = {
        "meta": meta,
        "summary": summary,
        "by_file": by_file,
        "mutants": [  # the mutants with a result (`--list` enumerates all of them)
            {**asdict(m), **{k: v for k, v in results[m.id].items() if k != "key"}} for m in mutants if m.id in results
        ],
    }
    Path(json_path + ".tmp").write_text(json.dumps(data, indent=2))
    os.replace(json_path + ".tmp", json_path)
    print(
        f"{summary['killed']} of {summary['non_equivalent']} non-equivalent mutants killed "
        f"({summary['kill_rate']}); {summary['counts']}; wrote {md_path}"
    )


def replace_section(text: str, section: str) -> str:
    """The markdown text with the generic-mutation section replaced (or appended when absent)."""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
        return head + section.rstrip("\n") + tail
    return text.rstrip("\n") + "\n\n" + section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sim.checking.generic_mutation", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--jobs", type=int, default=2, help="mutants run in parallel (default: 2)")
    parser.add_argument("--examples", type=int, default=10, help="hypothesis examples per property test (default: 10)")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per mutant at least (default: 240)")
    parser.add_argument("--budget", type=float, help="stop starting mutants after this many seconds")
    parser.add_argument("--file", action="append", help="only mutants of this module (repeatable)")
    parser.add_argument("--cache", default=os.path.join(ROOT, ".generic-mutation-cache.jsonl"), help="result cache")
    parser.add_argument("--out", default=os.path.join(ROOT, "reports"), help="report directory (default: reports/)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--report-only", action="store_true", help="write the report from the cache, run nothing")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
