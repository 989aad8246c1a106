"""Regression tests, at the process level, for the issue "no half-written or mixed results".

Each test runs `python -m sim ...` as a subprocess. KVSIM_ROOT=/path/to/checkout runs them against another source
tree (e.g. the pre-fix checkout, where they fail); by default this repository's.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = os.environ.get("KVSIM_ROOT") or str(Path(__file__).resolve().parents[3])
TRACES = Path(ROOT) / "traces"
MARKER = "KVSIM_TEST_MARKER"
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux /proc")


def env(marker: str | None = None) -> dict:
    e = dict(os.environ, PYTHONPATH=ROOT)
    if marker:
        e[MARKER] = marker
    return e


def sim(*args, cwd, marker=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sim", *map(str, args)], cwd=cwd, env=env(marker), capture_output=True, text=True, **kw
    )


def _as_from_a_terminal() -> None:
    # a shell that runs the tests in the background (`... &`) starts them with SIGINT ignored, and `sim` keeps an
    # ignored SIGINT ignored (as nohup asks): start the run as a terminal would, with Ctrl-C's default
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def popen(*args, cwd, marker=None, **kw) -> subprocess.Popen:
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("preexec_fn", _as_from_a_terminal)
    return subprocess.Popen([sys.executable, "-m", "sim", *map(str, args)], cwd=cwd, env=env(marker), text=True, **kw)


def marked(marker: str) -> list[int]:
    """Pids of live processes whose environment holds MARKER=marker (the run and any process it started)."""
    needle = f"{MARKER}={marker}".encode()
    found = []
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
            found.append(int(entry))
    return found


def kill_marked(marker: str) -> None:
    for pid in marked(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for(predicate, timeout: float = 30.0, step: float = 0.01) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return False


@pytest.fixture
def small(tmp_path) -> Path:
    out = tmp_path / "s300.csv"
    r = sim("trace", "slice", TRACES / "sharegpt-2k.csv", "--first", 300, "-o", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return out


# --- 2: summary.json means complete -------------------------------------------------------------------------------
def test_forced_rerun_that_fails_midway_leaves_no_old_summary(tmp_path, small):
    out = tmp_path / "D"
    assert sim("replay", small, "--out", out, "-q", cwd=tmp_path).returncode == 0
    old_steps = (out / "steps.csv").read_text()
    # run B writes steps.csv, then fails on requests.csv (a directory is in the way): as if stopped there
    (out / "requests.csv").unlink()
    (out / "requests.csv").mkdir()
    r = sim("replay", TRACES / "alpaca-2k.csv", "--out", out, "--force", "-q", cwd=tmp_path)
    assert r.returncode != 0
    assert (out / "steps.csv").read_text() != old_steps  # B's steps were written
    assert not (out / "summary.json").exists(), "an old summary.json sits beside the new steps.csv"


def test_interrupted_forced_rerun_is_complete_or_visibly_incomplete(tmp_path, small):
    out = tmp_path / "D"
    assert sim("replay", small, "--out", out, "-q", cwd=tmp_path).returncode == 0
    ino = (out / "steps.csv").stat().st_ino
    p = popen("replay", TRACES / "alpaca-2k.csv", "--out", out, "--force", "-q", cwd=tmp_path)

    def new_steps() -> bool:
        try:
            return (out / "steps.csv").stat().st_ino != ino
        except FileNotFoundError:
            return False

    assert wait_for(new_steps, step=0.0005)
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=30)
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]
    if (out / "summary.json").exists():
        summary = json.loads((out / "summary.json").read_text())
        assert summary["requests"]["total"] == 2000  # B's, not A's
        assert len((out / "steps.csv").read_text().splitlines()) - 1 == summary["iterations"]


def test_sigterm_exits_143_without_temporary_files(tmp_path):
    out = tmp_path / "D"
    p = popen("replay", TRACES / "sharegpt-2k.csv", "--out", out, "-q", "--gpu", "a100-40gb", cwd=tmp_path)
    assert wait_for(lambda: out.exists(), step=0.001)
    time.sleep(0.3)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 143, err
    assert "Traceback" not in err
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]


# --- 3: a run owns its output directory ---------------------------------------------------------------------------
def test_two_runs_into_one_out_do_not_both_succeed(tmp_path):
    # the whole trace, step by step: each run works ~1.5 s after starting, so the two overlap even on a loaded
    # machine (with 300 requests one could finish before the other started, and both rightly succeeded)
    out = tmp_path / "D"
    procs = [
        popen(
            "replay",
            TRACES / "sharegpt-2k.csv",
            "--out",
            out,
            "--force",
            "-q",
            "--allocator",
            a,
            "--no-fast-forward",
            cwd=tmp_path,
        )
        for a in ("paged", "contiguous-max")
    ]
    results = [(p.wait(timeout=60), p.communicate()[1]) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    assert any("another run" in err and str(out) in err for _, err in results)
    summary = json.loads((out / "summary.json").read_text())
    requests = (out / "requests.csv").read_text().splitlines()
    assert len(requests) - 1 == summary["requests"]["total"]
    assert len((out / "steps.csv").read_text().splitlines()) - 1 == summary["iterations"]


def test_default_out_dirs_started_together_are_distinct(tmp_path, small):
    procs = [popen("replay", small, "-q", cwd=tmp_path) for _ in range(3)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    runs = os.listdir(tmp_path / "runs")
    assert len(runs) == 3, runs


# --- 4: no orphaned workers ---------------------------------------------------------------------------------------
def _sweep_spec(tmp_path: Path, rates: int = 24) -> Path:
    spec = tmp_path / "grid.toml"
    spec.write_text(
        f'name = "g"\ntraces = ["{TRACES / "sharegpt-2k.csv"}"]\nallocators = ["paged", "contiguous-max"]\n'
        f"rates = {[round(1 + 0.25 * i, 2) for i in range(rates)]}\n"
    )
    return spec


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_sweep_leaves_no_workers_and_closes_stdout(tmp_path, sig):
    marker = f"orphans-{os.getpid()}-{sig}"
    spec = _sweep_spec(tmp_path)
    p = popen("sweep", spec, "--out", tmp_path / "sw", "-j", 2, "-q", cwd=tmp_path, marker=marker)
    try:
        assert wait_for(lambda: len(marked(marker)) >= 3, timeout=60), "the workers never started"
        p.send_signal(sig)
        p.wait(timeout=30)
        if sig == signal.SIGTERM:
            assert p.returncode == 143
        reader = threading.Thread(target=p.stdout.read, daemon=True)
        reader.start()
        reader.join(10)
        assert not reader.is_alive(), "stdout stays open after the sweep died (sim sweep | tee never ends)"
        assert wait_for(lambda: not marked(marker), timeout=5), f"orphaned workers: {marked(marker)}"
    finally:
        kill_marked(marker)


def test_ctrl_c_during_report_prints_no_worker_traceback(tmp_path):
    marker = f"report-int-{os.getpid()}"
    p = popen(  # the full Azure trace: every replay takes seconds, so the report is surely still running at Ctrl-C
        "report", TRACES / "azure-llm-2023-conv.csv", "--allocators", "paged,contiguous-max,contiguous-pow2",
        "--jobs", 3, "-o", tmp_path / "r.html", "-q", cwd=tmp_path, marker=marker, start_new_session=True,
    )  # fmt: skip
    try:
        assert wait_for(lambda: len(marked(marker)) >= 4, timeout=60), "the workers never started"
        time.sleep(0.3)
        os.killpg(p.pid, signal.SIGINT)  # a terminal's Ctrl-C goes to the whole process group
        _, err = p.communicate(timeout=30)
        assert p.returncode == 130, err
        assert "Traceback" not in err, err
        assert wait_for(lambda: not marked(marker), timeout=5), f"orphaned workers: {marked(marker)}"
    finally:
        kill_marked(marker)


# --- 5: output errors: found before the work, never a traceback, computed work kept ---------------------------------
def test_unwritable_out_is_refused_before_the_work(tmp_path, small):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for command in (["replay", small], ["compare", small, "--allocators", "paged"]):
        r = sim(*command, "--out", blocker / "D", "-q", cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        assert str(blocker) in r.stderr
        assert "requests completed" not in r.stdout  # refused before replaying
    r = sim("report", small, "-o", blocker / "r.html", "-q", "--jobs", 1, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(blocker) in r.stderr, r.stderr
    spec = _sweep_spec(tmp_path, rates=1)
    r = sim("sweep", spec, "--out", blocker / "sw", "-q", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(blocker) in r.stderr, r.stderr


def _small_file_limit():
    # files may grow to 100 KB: the probe passes, steps.csv (MBs) fails with EFBIG, as a full disk would (ENOSPC)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))


def test_output_failing_after_the_replay_keeps_the_summary(tmp_path, small):
    out = tmp_path / "D"
    r = sim("replay", small, "--out", out, "-q", cwd=tmp_path, preexec_fn=_small_file_limit)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "steps.csv" in r.stderr and "instead" in r.stderr, r.stderr
    rescued = r.stderr.rsplit(" to ", 1)[1].split(" instead")[0].strip()
    summary = json.loads((Path(rescued) / "summary.json").read_text())
    assert summary["requests"]["total"] == 300
    assert not (out / "summary.json").exists()


def test_version_and_provenance_in_every_summary(tmp_path, small):
    r = sim("--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("sim (kvsim) "), r.stdout + r.stderr
    version = r.stdout.split()[-1]
    assert sim("compare", small, "--allocators", "paged,contiguous-max", "--out", tmp_path / "c", "-q", cwd=tmp_path)
    for data in [json.loads((tmp_path / "c" / a / "summary.json").read_text()) for a in ("paged", "contiguous-max")]:
        assert data["kvsim"]["version"] == version
        assert data["kvsim"]["command"].startswith("sim compare ")
        assert data["kvsim"]["created_utc"].endswith("Z")
    for data in json.loads((tmp_path / "c" / "compare.json").read_text()):
        assert data["kvsim"]["version"] == version
