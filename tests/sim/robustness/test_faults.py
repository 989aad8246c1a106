"""Fault suite: SIGINT, SIGTERM and SIGKILL at seeded random moments of `sim replay`, `compare`, `report` and
`sweep` (subprocesses on small inputs), then:

- no process the run started is left (each run carries a unique marker in its environment; /proc is scanned);
- after SIGINT / SIGTERM: exit status 130 / 143 (or 0 if it had finished) and no `.tmp-*` file anywhere;
- the output is complete and consistent (summary.json with as many steps.csv rows as iterations and requests.csv
  rows as requests; compare.json only with every allocator's directory complete; a report page only with its data)
  or visibly incomplete (no summary.json / compare.json / page);
- a killed sweep, resumed, gives a table byte-identical to a fresh sweep's.

One kill point per command and signal by default (12 runs, ~20 s); KVSIM_FAULT_POINTS=N tries N of each, and
KVSIM_FAULT_SEED picks other moments. KVSIM_ROOT runs another checkout's `sim`.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = os.environ.get("KVSIM_ROOT") or str(Path(__file__).resolve().parents[3])
TRACES = Path(ROOT) / "traces"
MARKER = "KVSIM_FAULT_MARKER"
POINTS = int(os.environ.get("KVSIM_FAULT_POINTS", "1"))
SEED = int(os.environ.get("KVSIM_FAULT_SEED", "20240607"))
SIGNALS = {"INT": signal.SIGINT, "TERM": signal.SIGTERM, "KILL": signal.SIGKILL}
EXPECTED_RC = {"INT": 130, "TERM": 143}
COMPLETION = ("summary.json", "compare.json", "results.csv", "report.html", "r.html")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux /proc")


def run_env(marker: str | None = None) -> dict:
    e = dict(os.environ, PYTHONPATH=ROOT)
    if marker:
        e[MARKER] = marker
    return e


def marked(marker: str) -> list[int]:
    needle = f"{MARKER}={marker}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ and state != b"Z":
            pids.append(int(entry))
    return pids


def catches_sigterm(pid: int) -> bool:
    """True once the process has a handler for SIGTERM (the SigCgt mask of /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(mask >> (signal.SIGTERM - 1) & 1)


def wait_for_handlers(pid: int, timeout: float = 60.0) -> None:
    # a signal before the interpreter reaches sim/__main__.py kills it by default (exit -15): that is Python's
    # start-up, not ours, and on a loaded machine it can take longer than any fixed delay
    end = time.monotonic() + timeout
    while not catches_sigterm(pid):
        assert time.monotonic() < end, "sim never installed its signal handlers"
        time.sleep(0.005)


def sim(*args, cwd) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sim", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=run_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("faults")
    r = sim("trace", "slice", TRACES / "sharegpt-2k.csv", "--first", 300, "-o", d / "s300.csv", cwd=d)
    assert r.returncode == 0, r.stderr
    (d / "grid.toml").write_text(
        'name = "f"\ntraces = ["s300.csv"]\nallocators = ["paged", "contiguous-max"]\n'
        "rates = [1, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 8]\n"
    )
    r = sim("sweep", d / "grid.toml", "--out", d / "fresh", "-q", "-j", 2, cwd=d)
    assert r.returncode == 0, r.stderr
    return d


ALLOCATORS = "paged,contiguous-max,contiguous-pow2"
COMMANDS = {
    # name: (arguments with OUT for the output, the span of seconds the kill moment is drawn from)
    "replay": (["replay", "{traces}/sharegpt-2k.csv", "--out", "{out}", "-q"], 1.2),
    "compare": (["compare", "s300.csv", "--allocators", ALLOCATORS, "--out", "{out}", "-q"], 1.1),
    "report": (["report", "s300.csv", "-o", "{out}/r.html", "--jobs", "2", "--precision", "0.1", "-q"], 1.6),
    "sweep": (["sweep", "grid.toml", "--out", "{out}", "-j", "2", "-q"], 1.8),
}  # fmt: skip
CASES = [(c, s, i) for c in COMMANDS for s in SIGNALS for i in range(POINTS)]


def rows(path: Path) -> int:
    with open(path, newline="") as f:
        return sum(1 for _ in csv.reader(f)) - 1


def check_replay_dir(d: Path) -> bool:
    """True when complete (and then consistent); False when visibly incomplete."""
    if not (d / "summary.json").exists():
        return False
    summary = json.loads((d / "summary.json").read_text())
    assert rows(d / "steps.csv") == summary["iterations"], d
    assert rows(d / "requests.csv") == summary["requests"]["total"], d
    assert "kvsim" in summary
    return True


def check_output(command: str, out: Path, work: Path) -> str:
    if not out.exists():
        return "not created"
    if command == "replay":
        return "complete" if check_replay_dir(out) else "incomplete"
    if command == "compare":
        subs = {p.name: check_replay_dir(p) for p in out.iterdir() if p.is_dir()}
        if (out / "compare.json").exists():
            summaries = json.loads((out / "compare.json").read_text())
            assert [s["allocator"] for s in summaries] == ["paged", "contiguous-max", "contiguous-pow2"]
            assert all(subs.get(s["allocator"]) for s in summaries), subs
            return "complete"
        return "incomplete"
    if command == "report":
        if (out / "r.html").exists():
            data = json.loads((out / "r-data" / "report.json").read_text())
            assert rows(out / "r-data" / "results.csv") == len(data["results"]) == 2  # paged, contiguous-max
            assert "kvsim" in data
            return "complete"
        return "incomplete"
    # sweep: every cell file is whole; resuming gives the fresh run's table, byte for byte
    for cell in (out / "cells").glob("*.json") if (out / "cells").exists() else []:
        json.loads(cell.read_text())
    state = "complete" if (out / "results.csv").exists() else "incomplete"
    if state == "complete":
        assert (out / "results.csv").read_bytes() == (work / "fresh" / "results.csv").read_bytes()
    r = sim("sweep", work / "grid.toml", "--out", out, "-q", "-j", 2, cwd=work)
    assert r.returncode == 0, r.stderr
    assert (out / "results.csv").read_bytes() == (work / "fresh" / "results.csv").read_bytes()
    return state


@pytest.mark.parametrize("command, sig, point", CASES)
def test_fault(work, tmp_path, command, sig, point):
    rng = random.Random(f"{SEED}-{command}-{sig}-{point}")
    args, span = COMMANDS[command]
    delay = rng.uniform(0.0, span)  # counted from the moment `sim` catches SIGTERM (sim/__main__.py has run)
    out = tmp_path / "out"
    argv = [a.format(out=out, traces=TRACES) for a in args]
    marker = f"{os.getpid()}-{command}-{sig}-{point}"
    p = subprocess.Popen(
        [sys.executable, "-m", "sim", *argv], cwd=work, env=run_env(marker),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        # a shell running the tests in the background starts them with SIGINT ignored: start sim as a terminal would
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        wait_for_handlers(p.pid)
        time.sleep(delay)
        if sig == "INT":
            os.killpg(p.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
        else:
            p.send_signal(SIGNALS[sig])
        _, err = p.communicate(timeout=60)
        end = time.monotonic() + 5
        while marked(marker) and time.monotonic() < end:
            time.sleep(0.05)
        assert not marked(marker), f"orphaned processes after SIG{sig}: {marked(marker)}"
        if sig in EXPECTED_RC:
            assert p.returncode in (0, EXPECTED_RC[sig]), (p.returncode, err)
            assert "Traceback" not in err, err
            stray = [str(f) for f in out.rglob(".tmp-*")] if out.exists() else []
            assert not stray, stray
        else:
            assert p.returncode in (0, -signal.SIGKILL)
        state = check_output(command, out, work)
        print(f"{command} SIG{sig} at {delay:.3f}s: exit {p.returncode}, output {state}")
    finally:
        for pid in marked(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
