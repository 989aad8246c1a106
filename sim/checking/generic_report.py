"""The report of the generic mutation check: counts per module and status, and the "Generic mutants" section of
reports/mutation-check.md (between START and END, the rest of the file kept) with the `generic` key of
reports/mutation-check.json."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from dataclasses import asdict
from pathlib import Path

from sim.checking.generic_equivalents import EQUIVALENT
from sim.checking.generic_mutants import GenericMutant

START, END = "<!-- generic-mutation:start -->", "<!-- generic-mutation:end -->"


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
        "Every mutant comes from `sim/checking/generic_mutants.py` (a syntax-tree mutator; operators: comparison "
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
