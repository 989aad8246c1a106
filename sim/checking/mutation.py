"""The mutation check: proof that the property suite bites.

Each mutant is a deliberate, realistic bug, located by syntax tree rather than by text, so that it survives
reformatting, moved code and renamed local variables:

- `function`: the qualified name of the function it lives in (`Class.method`, or a suffix of it such as `_stretch`),
  looked up in every module of the `sim` package; it must name exactly one function.
- `old`: an expression or a statement, matched against that function's syntax tree (formatting, comments and the
  file do not matter); `...` in it matches any expression. It must match exactly one node of the function.
- `new`: the source that replaces the matched node; `{0}`, `{1}`, ... stand for the source of what each `...`
  matched, in order.

For each mutant, the `sim` package and the tests are copied to a temporary directory, the mutant is applied there (the
working tree is never touched), and the property suite (test_allocator_properties.py and test_engine_properties.py,
found by name under tests/) runs against the copy in a subprocess with PYTHONPATH pointing at it. A mutant is *caught*
when the suite fails. A mutant whose function or node is not found exactly once fails the whole check loudly (and so
does tests/sim/checking/test_mutation.py), so the list stays in sync with the code.

    python -m sim.checking.mutation [--jobs 2] [--only ID,...] [--out reports]

writes reports/mutation-check.md and reports/mutation-check.json and exits 1 unless every mutant is caught.
"""

from __future__ import annotations

import argparse
import ast
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
from pathlib import Path

from sim.checking.mutants import MUTANTS, Mutant

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUITE_FILES = ("test_allocator_properties.py", "test_engine_properties.py")
IGNORED_FIELDS = ("ctx", "type_comment", "kind")  # AST fields that formatting or context decide, not the code


class MutantNotFound(LookupError):
    """A mutant's function or node is not found exactly once (the list is out of date with the code)."""


@dataclass(frozen=True)
class Site:
    """Where a mutant applies: the file (relative to the root), the matched node's byte span, the replacement."""

    file: str
    qualname: str
    start: int
    end: int
    replacement: str


def _functions(root: str) -> list[tuple[str, str, ast.AST]]:
    """(file relative to root, qualified name, node) of every function in the sim package under root."""
    found = []
    for path in sorted(Path(root, "sim").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_bytes(), rel)

        def walk(node: ast.AST, prefix: str, rel: str = rel) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = f"{prefix}{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        found.append((rel, name, child))
                    walk(child, name + ".")
                else:
                    walk(child, prefix)

        walk(tree, "")
    return found


def _pattern(m: Mutant) -> ast.AST:
    """The node to find: an expression where old and new both are one, else a statement."""
    body = ast.parse(m.old.strip()).body
    if len(body) != 1:
        raise MutantNotFound(f"{m.id}: pattern {m.old!r} is not one expression or statement")
    node = body[0]
    if isinstance(node, ast.Expr) and _is_wildcard(node.value):
        raise MutantNotFound(f"{m.id}: a pattern must be more than `...`")
    try:
        ast.parse(m.new.format(*["x"] * m.old.count("...")), mode="eval")
    except SyntaxError:
        return node  # new is a statement (e.g. pass): replace the whole statement
    return node.value if isinstance(node, ast.Expr) else node


def _is_wildcard(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is Ellipsis


def _match(pattern, node, captures: list) -> bool:
    """Whether `node` has the structure of `pattern` (`...` matches any expression; each match is captured)."""
    if isinstance(pattern, ast.AST) and _is_wildcard(pattern):
        if not isinstance(node, ast.expr):
            return False
        captures.append(node)
        return True
    if type(pattern) is not type(node):
        return False
    if isinstance(pattern, list):
        return len(pattern) == len(node) and all(_match(p, n, captures) for p, n in zip(pattern, node))
    if not isinstance(pattern, ast.AST):
        return type(pattern) is type(node) and pattern == node
    return all(
        _match(getattr(pattern, f, None), getattr(node, f, None), captures)
        for f in pattern._fields
        if f not in IGNORED_FIELDS
    )


def _offset(line_starts: list[int], lineno: int, col: int) -> int:
    return line_starts[lineno - 1] + col  # col_offset counts UTF-8 bytes, as the byte offsets here


def locate(m: Mutant, root: str = ROOT, functions: list | None = None) -> Site:
    """Where mutant m applies under root; raises MutantNotFound unless its function and node are each found once."""
    functions = _functions(root) if functions is None else functions
    hits = [(rel, q, f) for rel, q, f in functions if q == m.function or q.endswith("." + m.function)]
    if len(hits) != 1:
        where = ", ".join(f"{q} in {rel}" for rel, q, _ in hits) or "none"
        raise MutantNotFound(f"{m.id}: function {m.function!r} must name exactly one function in sim/ (found: {where})")
    rel, qualname, func = hits[0]
    pattern = _pattern(m)
    kind = ast.expr if isinstance(pattern, ast.expr) else ast.stmt
    matches = []
    for node in ast.walk(func):
        captures: list = []
        if isinstance(node, kind) and node is not func and _match(pattern, node, captures):
            matches.append((node, captures))
    if len(matches) != 1:
        raise MutantNotFound(
            f"{m.id}: {m.old!r} matches {len(matches)} nodes of {qualname} in {rel} (expected exactly one)"
        )
    node, captures = matches[0]
    data = Path(root, rel).read_bytes()
    line_starts = [0]
    for line in data.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))

    def span(n: ast.AST) -> tuple[int, int]:
        return _offset(line_starts, n.lineno, n.col_offset), _offset(line_starts, n.end_lineno, n.end_col_offset)

    sources = [data[slice(*span(c))].decode() for c in captures]
    new = m.new.format(*(f"({s})" for s in sources))
    if kind is ast.expr:
        new = f"({new})"
    else:
        new = new.replace("\n", "\n" + " " * node.col_offset)
    start, end = span(node)
    return Site(rel, qualname, start, end, new)


def apply(site: Site, root: str) -> None:
    """Write the mutant of `site` into the file under root."""
    path = Path(root, site.file)
    data = path.read_bytes()
    path.write_bytes(data[: site.start] + site.replacement.encode() + data[site.end :])


def verify(mutants: list[Mutant], root: str = ROOT) -> dict[str, Site]:
    """Every mutant's function and node are found exactly once and its mutated file still parses (else the list is
    out of date with the code: exit loudly). Returns the sites by mutant id."""
    problems, sites = [], {}
    functions = _functions(root)
    for m in mutants:
        try:
            site = sites[m.id] = locate(m, root, functions)
        except MutantNotFound as exc:
            problems.append(str(exc))
            continue
        data = Path(root, site.file).read_bytes()
        mutated = data[: site.start] + site.replacement.encode() + data[site.end :]
        try:
            ast.parse(mutated, site.file)
        except SyntaxError as exc:
            problems.append(f"{m.id}: the mutated {site.file} does not parse: {exc}")
        if mutated == data:
            problems.append(f"{m.id}: the mutant changes nothing")
    if len({m.id for m in mutants}) != len(mutants):
        problems.append("two mutants share an id")
    if problems:
        raise SystemExit("mutation check: the mutant list is out of sync with the code:\n  " + "\n  ".join(problems))
    return sites


def suite(root: str = ROOT) -> list[str]:
    """The property suite's test files, found by name under tests/ (relative to root)."""
    paths = []
    for name in SUITE_FILES:
        found = sorted(p.relative_to(root).as_posix() for p in Path(root, "tests").rglob(name))
        if len(found) != 1:
            raise SystemExit(f"mutation check: {name} must exist exactly once under tests/ (found {found or 'none'})")
        paths += found
    return paths


def _copy_tree(dst: str) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", "kernels")
    shutil.copytree(os.path.join(ROOT, "sim"), os.path.join(dst, "sim"), ignore=ignore)
    shutil.copytree(os.path.join(ROOT, "tests"), os.path.join(dst, "tests"), ignore=ignore)
    for name in ("pyproject.toml",):
        if os.path.exists(os.path.join(ROOT, name)):
            shutil.copy(os.path.join(ROOT, name), dst)


def run_suite(site: Site | None, timeout: float, disabled: str = "") -> dict:
    """Apply one mutant at `site` (None: the unmutated baseline) to a copy and run the property suite against it,
    with the `disabled` invariants (comma-separated) switched off."""
    with tempfile.TemporaryDirectory(prefix="kvsim-mutant-") as tmp:
        _copy_tree(tmp)
        if site is not None:
            apply(site, tmp)
        env = dict(os.environ, PYTHONPATH=tmp, PYTHONDONTWRITEBYTECODE="1")
        env.setdefault("HYPOTHESIS_PROFILE", "ci")
        env["KVSIM_DISABLED_INVARIANTS"] = disabled
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *suite(tmp)]
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


def write_report(
    results: list[tuple[Mutant, Site, dict]], baseline: dict, out_dir: str, total_s: float
) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    caught = sum(r["status"] == "caught" for _, _, r in results)
    meta = {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hypothesis_profile": os.environ.get("HYPOTHESIS_PROFILE", "ci"),
        "suite": suite(),
        "command": "python -m sim.checking.mutation",
        "seconds": round(total_s, 1),
    }
    data = {
        "meta": meta,
        "baseline": baseline,
        "caught": caught,
        "total": len(results),
        "mutants": [{**asdict(m), "file": site.file, "qualname": site.qualname, **r} for m, site, r in results],
    }
    json_path = os.path.join(out_dir, "mutation-check.json")
    md_path = os.path.join(out_dir, "mutation-check.md")
    kept_json, kept_md = _generic_section(json_path, md_path)  # the generic mutants' section is kept as it is
    if kept_json is not None:
        data["generic"] = kept_json
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
        f"the suite ({', '.join(f'`{s}`' for s in meta['suite'])}) then runs against the copy and must fail. The "
        f"unmutated copy passes first (baseline: {baseline['status']} in {baseline['seconds']} s). Each mutant is "
        "located by syntax tree (function, then node pattern; see `sim/checking/mutation.py`), so the list survives "
        "reformatting and moved code, and fails loudly when the code it names is gone.",
        "",
        "| # | mutant | function (file) | bug | result | caught by | s | without the allocator's check() |",
        "|---|--------|-----------------|-----|--------|-----------|---|------|",
    ]
    for i, (m, site, r) in enumerate(results, 1):
        by = ", ".join(r["violated"]) or (r["failed_tests"][0].split("::")[-1] if r["failed_tests"] else "")
        lines.append(
            f"| {i} | `{m.id}` | `{site.qualname}` (`{site.file}`) | {m.description} | **{r['status']}** | {by} "
            f"| {r['seconds']} "
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
    text = "\n".join(lines)
    if kept_md:
        text = text.rstrip("\n") + "\n\n" + kept_md
    with open(md_path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
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
    sites = verify(MUTANTS)
    mutants = MUTANTS
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {m.id for m in MUTANTS}
        if unknown:
            parser.error(f"unknown mutant ids: {', '.join(sorted(unknown))}")
        mutants = [m for m in MUTANTS if m.id in wanted]
    if args.list:
        for m in mutants:
            site = sites[m.id]
            print(f"{m.id:<38} {site.qualname:<40} {site.file:<32} {m.description}")
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

    def one(m: Mutant) -> tuple[Mutant, Site, dict]:
        r = run_suite(sites[m.id], args.timeout)
        print(f"  {r['status']:<7} {m.id} ({r['seconds']} s) {', '.join(r['violated'])}", flush=True)
        if args.without_self_check and "self-check" in r["violated"]:
            w = run_suite(sites[m.id], args.timeout, "self-check")
            r["without_self_check"] = {k: w[k] for k in ("status", "seconds", "violated", "failed_tests")}
            print(
                f"  {w['status']:<7} {m.id} without the allocator's check() ({w['seconds']} s) "
                f"{', '.join(w['violated'])}",
                flush=True,
            )
        return m, sites[m.id], r

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(one, mutants))
    md, js = write_report(results, baseline, args.out, time.perf_counter() - t0)
    caught = sum(r["status"] == "caught" for _, _, r in results)
    print(f"{caught} of {len(results)} mutants caught; wrote {md} and {js}")
    return 0 if caught == len(results) else 1


def _generic_section(json_path: str, md_path: str) -> tuple[dict | None, str]:
    """The generic-mutation results (python -m sim.checking.generic_mutation) already in the report files."""
    from sim.checking.generic_report import END, START

    kept_json, kept_md = None, ""
    if os.path.exists(json_path):
        with open(json_path, encoding="utf-8") as f:
            kept_json = json.load(f).get("generic")
    if os.path.exists(md_path):
        with open(md_path, encoding="utf-8") as f:
            text = f.read()
        if START in text and END in text:
            kept_md = START + text.split(START, 1)[1].split(END, 1)[0] + END + "\n"
    return kept_json, kept_md


def _without(r: dict) -> str:
    w = r.get("without_self_check")
    if w is None:
        return "n/a" if "self-check" not in r["violated"] else "not run"
    by = ", ".join(w["violated"]) or (w["failed_tests"][0].split("::")[-1] if w["failed_tests"] else "")
    return f"{w['status']} ({by})" if by else w["status"]


if __name__ == "__main__":
    sys.exit(main())
