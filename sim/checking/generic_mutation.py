"""Generic mutation testing of the allocators: arbitrary generated mutants of sim/allocators/, not a hand-made list.

The mutator is `sim.checking.generic_mutants`, the equivalence table `sim.checking.generic_equivalents`, the report
`sim.checking.generic_report`; this module runs the mutants (workspaces, coverage, cache) and is the command.

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
for contiguous.py and address_space.py, paged for paged.py, block_pool.py and prefix_hash.py, paged-hybrid for
hybrid.py, all otherwise; hybrid.py's unit tests are only its own, `UNIT_SELECTIONS`), with a per-mutant timeout. A
mutant is *killed* when the selection fails, *timeout* when it runs past the timeout (an endless loop: counted as
killed), *survived* when it passes. Mutants on lines the selection never executes (measured once on the unmutated code:
the union of the selections of the modules mutated) are *not covered*: not run, and counted as survivors.

Results are cached in `--cache` (JSON lines, keyed by the module's text and the mutant's ordinal and operator), so a
run can be interrupted and resumed; killed and timed-out mutants are never run again for the same module text;
survivors are run again when the test files changed. `--budget SECONDS` stops starting new mutants after that long.

    python -m sim.checking.generic_mutation [--jobs 2] [--examples 10] [--timeout 240] [--budget S] [--list]

writes the "Generic mutants" section of reports/mutation-check.md (keeping the project-mutant section) and the
`generic` key of reports/mutation-check.json. Equivalent mutants are listed in
`sim.checking.generic_equivalents.EQUIVALENT` with the reason.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sim.checking.generic_mutants import ROOT, TARGET, GenericMutant, all_mutants, mutate_source, target_files
from sim.checking.generic_report import write_report

UNIT_TESTS = "tests/sim/allocators"
PROPERTY_TEST = "tests/sim/allocators/test_allocator_properties.py"
ENGINE_PROPERTY_TEST = "tests/sim/serving/test_engine_properties.py"
FAMILIES = {
    "sim/allocators/contiguous.py": "contiguous",
    "sim/allocators/address_space.py": "contiguous",
    "sim/allocators/paged.py": "paged",
    "sim/allocators/block_pool.py": "paged",
    "sim/allocators/prefix_hash.py": "paged",
    "sim/allocators/hybrid.py": "paged-hybrid",  # matches paged-hybrid and paged-hybrid-prefix-cache
}
#: The unit tests run against a module's mutants where all of tests/sim/allocators would be needlessly many (the
#: contiguous and paged unit tests never construct the module's allocator), in this order (the hand-made kills first:
#: they fail fastest). A file not there (yet) is skipped.
UNIT_SELECTIONS = {
    "sim/allocators/hybrid.py": [
        "tests/sim/allocators/test_mutant_kills_hybrid.py",
        "tests/sim/allocators/test_hybrid.py",
    ],
}


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
    """The tests run against a mutant of `file`: the allocator unit tests (its own, where UNIT_SELECTIONS names
    them), then the property tests of its family."""
    family = FAMILIES.get(file)
    props = [t for t in property_ids if family is None or f"[{family}" in t]
    if file in UNIT_SELECTIONS:
        unit_files = [t for t in UNIT_SELECTIONS[file] if t in unit_files]
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
        base_tests = list(
            dict.fromkeys(t for f in sorted({m.file for m in mutants}) for t in selection(f, unit_files, property_ids))
        )
        base = workspaces[0].run(base_tests, args.timeout * 4, args.examples, cov_path)
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
