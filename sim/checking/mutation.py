"""The mutation check: proof that the property suite bites.

Each mutant is a deliberate, realistic bug: (file, exact old snippet, new snippet, description). For each one, the
`sim` package and the tests are copied to a temporary directory, the mutant is applied there (the working tree is never
touched), and the property suite (tests/test_allocator_properties.py and tests/test_engine_properties.py) runs against
the copy in a subprocess with PYTHONPATH pointing at it. A mutant is *caught* when the suite fails. A snippet that is
not found exactly once fails the whole check loudly, so the list stays in sync with the code.

    python -m sim.checking.mutation [--jobs 2] [--only ID,...] [--out reports]

writes reports/mutation-check.md and reports/mutation-check.json and exits 1 unless every mutant is caught.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUITE = ["tests/test_allocator_properties.py", "tests/test_engine_properties.py"]


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str  # relative to the repository root
    old: str
    new: str
    description: str


MUTANTS: list[Mutant] = [
    # --- contiguous allocators ---------------------------------------------------------------------------------
    Mutant(
        "contiguous-free-keeps-tokens",
        "sim/allocators/contiguous.py",
        "        self._tokens -= ext.tokens\n        self._held -= ext.held\n",
        "        self._held -= ext.held\n",
        "free() forgets to subtract the sequence's tokens from the token counter",
    ),
    Mutant(
        "contiguous-append-off-by-one",
        "sim/allocators/contiguous.py",
        "ext.tokens + num_tokens <= ext.held",
        "ext.tokens + num_tokens <= ext.held + 1",
        "can_append lets a sequence grow one token past its reservation",
    ),
    Mutant(
        "pow2-reservation-off-by-one",
        "sim/allocators/contiguous.py",
        "        return next_power_of_two(final_len)\n",
        "        return next_power_of_two(final_len - 1)\n",
        "Pow2 reserves the power of two of final_len - 1 (too small when final_len is 2^k + 1)",
    ),
    # --- buddy placement -----------------------------------------------------------------------------------------
    Mutant(
        "buddy-merge-wrong-neighbour",
        "sim/allocators/address_space.py",
        "            buddy = start ^ (1 << order)\n",
        "            buddy = start + (1 << order)\n",
        "a freed block looks for its buddy above it, also when the buddy lies below",
    ),
    Mutant(
        "buddy-split-frees-kept-half",
        "sim/allocators/address_space.py",
        "            self._free.setdefault(o, set()).add(start + (1 << o))\n",
        "            self._free.setdefault(o, set()).add(start)\n",
        "splitting frees the half it hands out instead of the upper buddy",
    ),
    Mutant(
        "buddy-can-alloc-too-strict",
        "sim/allocators/address_space.py",
        "        return any(blocks for o, blocks in self._free.items() if o >= order)\n",
        "        return any(blocks for o, blocks in self._free.items() if o > order)\n",
        "can_alloc ignores free blocks of exactly the needed order",
    ),
    Mutant(
        "buddy-alloc-largest-block",
        "sim/allocators/address_space.py",
        "        o = min(candidates)\n",
        "        o = max(candidates)\n",
        "alloc splits the largest free block instead of the smallest that fits (worst fit)",
    ),
    Mutant(
        "buddy-unusable-counts-fitting-blocks",
        "sim/allocators/address_space.py",
        "        return sum(len(blocks) << o for o, blocks in self._free.items() if o < order)\n",
        "        return sum(len(blocks) << o for o, blocks in self._free.items() if o <= order)\n",
        "external fragmentation counts free blocks that exactly fit the waiting request as unusable",
    ),
    # --- first-fit placement ---------------------------------------------------------------------------------------
    Mutant(
        "first-fit-no-merge-with-next",
        "sim/allocators/address_space.py",
        "        if i < len(self._starts) and start + length == self._starts[i]:",
        "        if False and i < len(self._starts) and start + length == self._starts[i]:",
        "release never coalesces with the following free extent",
    ),
    Mutant(
        "first-fit-skips-exact-fit",
        "sim/allocators/address_space.py",
        "            if n >= size:\n                start = self._starts[i]\n",
        "            if n > size:\n                start = self._starts[i]\n",
        "alloc skips an extent of exactly the needed size (can_alloc still counts it)",
    ),
    # --- paged: blocks, reference counts, copy-on-write, prefix cache, fast-forward -------------------------------
    Mutant(
        "paged-admit-ignores-last-block",
        "sim/allocators/paged.py",
        "        return hits, ceil_div(num_tokens, self.block_size) - len(hits) + from_free\n",
        "        return hits, num_tokens // self.block_size - len(hits) + from_free\n",
        "the admission check counts whole blocks only, ignoring the partly filled last block",
    ),
    Mutant(
        "paged-free-missed-decref",
        "sim/allocators/paged.py",
        "            refs[block] = left\n",
        "            refs[block] = left if left == 0 else left + 1\n",
        "free() of a sequence sharing a block forgets to drop its reference",
    ),
    Mutant(
        "paged-cow-without-copy",
        "sim/allocators/paged.py",
        "            self._copies.append((src, dst))\n            self.num_cow_copies += 1\n",
        "            self.num_cow_copies += 1\n",
        "copy-on-write takes a private block but records no copy (its KV is never copied)",
    ),
    Mutant(
        "paged-no-cow-on-shared-tail",
        "sim/allocators/paged.py",
        "               and self.pool.ref_counts[s.block_table[-1]] > 1)\n",
        "               and self.pool.ref_counts[s.block_table[-1]] > 2)\n",
        "a block shared by exactly two sequences is written in place (no copy-on-write)",
    ),
    Mutant(
        "pool-decref-frees-shared-block",
        "sim/allocators/paged.py",
        "        self.ref_counts[block] -= 1\n        if self.ref_counts[block]:\n",
        "        self.ref_counts[block] = 0\n        if self.ref_counts[block]:\n",
        "dropping one reference frees a shared block",
    ),
    Mutant(
        "prefix-key-covers-partial-block",
        "sim/allocators/paged.py",
        "        if first == 0 and length >= (index + 1) * self.block_size:\n",
        "        if first == 0 and length > index * self.block_size:\n",
        "a block only partly inside the leading run is keyed by that run alone: its other tokens match anything",
    ),
    Mutant(
        "prefix-cache-eviction-keeps-index",
        "sim/allocators/paged.py",
        "            if h is not None:  # evict the cached content\n                del self.hash_block[h]\n",
        "            if h is not None:  # evict the cached content\n                pass\n",
        "evicting a cached block leaves its hash pointing at the block, which is rewritten",
    ),
    Mutant(
        "prefix-cache-bulk-eviction-keeps-index",
        "sim/allocators/paged.py",
        "                    if h is not None:  # evict the cached content\n                        del hash_block[h]\n",
        "                    if h is not None:  # evict the cached content\n                        pass\n",
        "taking many blocks at once (an admission) leaves evicted blocks' hashes pointing at them",
    ),
    Mutant(
        "paged-plan-one-round-too-many",
        "sim/allocators/paged.py",
        '        rounds = int(np.searchsorted(new_blocks, self.pool.num_free_blocks, side="right"))\n',
        "        rounds = min(max_rounds, int(np.searchsorted(new_blocks, self.pool.num_free_blocks, "
        'side="right")) + 1)\n',
        "fast-forward plans one decode round more than the free blocks allow",
    ),
    Mutant(
        "paged-run-decode-one-round-too-many",
        "sim/allocators/paged.py",
        "                if crossed + len(crossers) > free:\n",
        "                if crossed > free:\n",
        "plan-and-apply in one pass (run_decode, with the prefix cache) goes one round past the free blocks",
    ),
    Mutant(
        "paged-plain-rounds-one-round-too-many",
        "sim/allocators/paged.py",
        "                if crossed + len(crossers) > free:  # the free blocks do not cover this round: stop before it\n",
        "                if crossed > free:\n",
        "run_decode's own loop for plain rounds goes one round past the free blocks",
    ),
    Mutant(
        "lazy-round-reserved-not-falling",
        "sim/allocators/paged.py",
        "            res_sum -= res_pos  # every reserving sequence fills one of its reserved slots\n",
        "            pass\n",
        "a lazy decode round forgets that every reserving sequence fills one reserved slot",
    ),
    Mutant(
        "plain-rounds-reserved-not-falling",
        "sim/allocators/paged.py",
        "            res_sum -= res_pos  # each reserving sequence fills a reserved slot\n",
        "            pass\n",
        "in run_decode's own loop for plain rounds, reserving sequences do not fill their reserved slots",
    ),
    # --- engine and records ----------------------------------------------------------------------------------------
    Mutant(
        "stretch-finish-one-iteration-early",
        "sim/serving/engine.py",
        "                finish_s[seq.seq_id] = ends[rounds]\n",
        "                finish_s[seq.seq_id] = ends[rounds - 1]\n",
        "requests finishing at the end of a fast-forwarded stretch get the start of its last iteration as finish time",
    ),
    Mutant(
        "decode-rows-free-one-block-high",
        "sim/records/metrics.py",
        "        rows[:, 12] = (free0 - blocks) * bs\n",
        "        rows[:, 12] = (free0 - blocks + 1) * bs\n",
        "the rows of fast-forwarded stretches built many at a time count one block too many as free",
    ),
    # --- scheduler ---------------------------------------------------------------------------------------------------
    Mutant(
        "scheduler-emits-one-token-too-many",
        "sim/serving/schedulers/vllm_v0.py",
        "        r = seq.finish_round = self.round + seq.output_tokens - seq.generated\n",
        "        r = seq.finish_round = self.round + seq.output_tokens - seq.generated + 1\n",
        "a running request finishes one token late",
    ),
    Mutant(
        "scheduler-ignores-max-num-seqs",
        "sim/serving/schedulers/vllm_v0.py",
        "            if self.num_running_seqs + seq.num_branches > self.limits.max_num_seqs:\n",
        "            if self.num_running_seqs > self.limits.max_num_seqs:\n",
        "admission forgets the new request's own sequences when checking max_num_seqs",
    ),
]


def verify(mutants: list[Mutant], root: str = ROOT) -> None:
    """Every old snippet occurs exactly once in its file (else the list is out of date with the code)."""
    problems = []
    for m in mutants:
        with open(os.path.join(root, m.file), encoding="utf-8") as f:
            n = f.read().count(m.old)
        if n != 1:
            problems.append(f"{m.id}: the old snippet occurs {n} times in {m.file} (expected exactly once)")
    if len({m.id for m in mutants}) != len(mutants):
        problems.append("two mutants share an id")
    if problems:
        raise SystemExit("mutation check: the mutant list is out of sync with the code:\n  " + "\n  ".join(problems))


def _copy_tree(dst: str) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", "kernels")
    shutil.copytree(os.path.join(ROOT, "sim"), os.path.join(dst, "sim"), ignore=ignore)
    shutil.copytree(os.path.join(ROOT, "tests"), os.path.join(dst, "tests"), ignore=ignore)
    for name in ("pyproject.toml",):
        if os.path.exists(os.path.join(ROOT, name)):
            shutil.copy(os.path.join(ROOT, name), dst)


def run_suite(mutant: Mutant | None, timeout: float, disabled: str = "") -> dict:
    """Apply one mutant (None: the unmutated baseline) to a copy and run the property suite against it, with the
    `disabled` invariants (comma-separated) switched off."""
    with tempfile.TemporaryDirectory(prefix="kvsim-mutant-") as tmp:
        _copy_tree(tmp)
        if mutant is not None:
            path = os.path.join(tmp, mutant.file)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            if text.count(mutant.old) != 1:
                raise SystemExit(f"mutation check: snippet of {mutant.id} not found exactly once in {mutant.file}")
            with open(path, "w", encoding="utf-8") as f:
                f.write(text.replace(mutant.old, mutant.new))
        env = dict(os.environ, PYTHONPATH=tmp, PYTHONDONTWRITEBYTECODE="1")
        env.setdefault("HYPOTHESIS_PROFILE", "ci")
        env["KVSIM_DISABLED_INVARIANTS"] = disabled
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *SUITE]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
            rc, out = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, out = None, (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        took = time.perf_counter() - t0
        imported = re.search(r"sim imported from (\S+)", out)
    failed = re.findall(r"^FAILED (\S+)", out, flags=re.M)
    violated = re.findall(r"VIOLATED ([\w-]+):", out)
    first_error = next((line.strip() for line in out.splitlines() if line.startswith("E ")), "")
    if rc == 1:
        status = "caught"
    elif rc == 0:
        status = "missed"
    elif rc is None:
        status = "timeout"
    else:
        status = "error"
    return {
        "status": status,
        "returncode": rc,
        "seconds": round(took, 1),
        "failed_tests": failed,
        "violated": sorted(set(violated)),
        "first_error": first_error[:300],
        "output_tail": out[-1500:] if status != "caught" else "",
        "imported": imported.group(1) if imported else None,
    }


def write_report(results: list[tuple[Mutant, dict]], baseline: dict, out_dir: str, total_s: float) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    caught = sum(r["status"] == "caught" for _, r in results)
    meta = {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hypothesis_profile": os.environ.get("HYPOTHESIS_PROFILE", "ci"),
        "suite": SUITE,
        "command": "python -m sim.checking.mutation",
        "seconds": round(total_s, 1),
    }
    data = {
        "meta": meta,
        "baseline": baseline,
        "caught": caught,
        "total": len(results),
        "mutants": [{**asdict(m), **r} for m, r in results],
    }
    json_path = os.path.join(out_dir, "mutation-check.json")
    md_path = os.path.join(out_dir, "mutation-check.md")
    with open(json_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    os.replace(json_path + ".tmp", json_path)
    lines = [
        "# Mutation check of the property suite",
        "",
        f"{caught} of {len(results)} mutants caught. Run on {meta['date']} with Python {meta['python']}, hypothesis "
        f"profile `{meta['hypothesis_profile']}`, by `{meta['command']}` ({meta['seconds']} s in all).",
        "",
        "Each mutant is one deliberate bug applied to a temporary copy of `sim/` (the working tree is never touched); "
        f"the suite ({', '.join(f'`{s}`' for s in SUITE)}) then runs against the copy and must fail. The unmutated "
        f"copy passes first (baseline: {baseline['status']} in {baseline['seconds']} s).",
        "",
        "| # | mutant | file | bug | result | caught by | s | without the allocator's check() |",
        "|---|--------|------|-----|--------|-----------|---|------|",
    ]
    for i, (m, r) in enumerate(results, 1):
        by = ", ".join(r["violated"]) or (r["failed_tests"][0].split("::")[-1] if r["failed_tests"] else "")
        lines.append(
            f"| {i} | `{m.id}` | `{m.file}` | {m.description} | **{r['status']}** | {by} | {r['seconds']} "
            f"| {_without(r)} |"
        )
    lines += [
        "",
        "'caught by' names the violated invariants the failing property test reported (see "
        "`sim.checking.INVARIANTS`), or the failing test (the scheduler mutants are caught by the engine "
        "property test). The last column: mutants first caught by the allocator's own `check()` were run again "
        "with that check switched off (`--without-self-check`, KVSIM_DISABLED_INVARIANTS=self-check), to show "
        "that the model's independent invariants catch them as well; n/a: not caught by `check()` in the "
        "first place.",
        "",
    ]
    with open(md_path + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    os.replace(md_path + ".tmp", md_path)
    return md_path, json_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.checking.mutation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="mutants run in parallel (default: 2)")
    parser.add_argument("--only", help="comma-separated mutant ids (default: all)")
    parser.add_argument("--out", default=os.path.join(ROOT, "reports"), help="report directory (default: reports/)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per suite run (default: 600)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument(
        "--without-self-check",
        action="store_true",
        help="run mutants caught by the allocator's own check() again with that check switched off, "
        "to show the model's invariants catch them too",
    )
    args = parser.parse_args(argv)
    verify(MUTANTS)
    mutants = MUTANTS
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {m.id for m in MUTANTS}
        if unknown:
            parser.error(f"unknown mutant ids: {', '.join(sorted(unknown))}")
        mutants = [m for m in MUTANTS if m.id in wanted]
    if args.list:
        for m in mutants:
            print(f"{m.id:<38} {m.file:<30} {m.description}")
        return 0
    t0 = time.perf_counter()
    print("baseline: the unmutated suite ...", flush=True)
    baseline = run_suite(None, args.timeout)
    print(f"baseline: {baseline['status']} ({baseline['seconds']} s)", flush=True)
    if baseline["status"] != "missed":  # 'missed' = the suite passed
        print(baseline["output_tail"] or baseline["first_error"], file=sys.stderr)
        print("mutation check: the suite does not pass on the unmutated code; fix that first", file=sys.stderr)
        return 2
    baseline = {"status": "passed", "seconds": baseline["seconds"]}

    def one(m: Mutant) -> tuple[Mutant, dict]:
        r = run_suite(m, args.timeout)
        print(f"  {r['status']:<7} {m.id} ({r['seconds']} s) {', '.join(r['violated'])}", flush=True)
        if args.without_self_check and "self-check" in r["violated"]:
            w = run_suite(m, args.timeout, "self-check")
            r["without_self_check"] = {k: w[k] for k in ("status", "seconds", "violated", "failed_tests")}
            print(
                f"  {w['status']:<7} {m.id} without the allocator's check() ({w['seconds']} s) "
                f"{', '.join(w['violated'])}",
                flush=True,
            )
        return m, r

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(one, mutants))
    md, js = write_report(results, baseline, args.out, time.perf_counter() - t0)
    caught = sum(r["status"] == "caught" for _, r in results)
    print(f"{caught} of {len(results)} mutants caught; wrote {md} and {js}")
    return 0 if caught == len(results) else 1


def _without(r: dict) -> str:
    w = r.get("without_self_check")
    if w is None:
        return "n/a" if "self-check" not in r["violated"] else "not run"
    by = ", ".join(w["violated"]) or (w["failed_tests"][0].split("::")[-1] if w["failed_tests"] else "")
    return f"{w['status']} ({by})" if by else w["status"]


if __name__ == "__main__":
    sys.exit(main())
