"""`sim check`: a user's own correct allocator passes; deliberately broken ones are reported with the invariant they
break and hypothesis's shrunk operations; without hypothesis the command says how to install it and exits 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sim.cli.main import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository


def run_check(capsys, *argv: str) -> tuple[int, str]:
    code = main(["check", *argv])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_a_correct_user_allocator_passes(capsys) -> None:
    code, out = run_check(capsys, "tests.sim.checking.broken_allocators:ToyPaged", "--examples", "100")
    assert code == 0, out
    assert "OK" in out and "VIOLATED" not in out


@pytest.mark.parametrize(
    "cls, invariant, operation",
    [
        ("LeakyToy", "no-leaks", "state.drain("),
        ("PartialBlockToy", "block-table", "state.admit("),
        ("WrongBlockFreeToy", "ownership", "state.admit("),
        ("OptimisticToy", "honesty", "state.append_"),
    ],
)
def test_a_broken_allocator_is_reported_with_its_invariant_and_shrunk_steps(capsys, cls, invariant, operation) -> None:
    code, out = run_check(
        capsys,
        f"tests.sim.checking.broken_allocators:{cls}",
        "--examples",
        "200",
        "--max-violations",
        "1",
        "--derandomize",
    )
    assert code == 1, out
    assert f"VIOLATED {invariant}:" in out, out
    assert "shrunk sequence of operations:" in out and "state.setup(" in out and operation in out, out


def test_registered_contiguous_allocator_is_checked_with_each_address_space(capsys) -> None:
    code, out = run_check(capsys, "contiguous-oracle", "--examples", "20")
    assert code == 0, out
    assert "address_space=buddy" in out and "address_space=first-fit" in out


def test_unknown_allocator_is_a_usage_error(capsys) -> None:
    code, out = run_check(capsys, "no-such-allocator")
    assert code == 2 and "unknown allocator" in out


def test_without_hypothesis_sim_check_says_how_to_install_it_and_replay_still_imports() -> None:
    code = (
        "import sys; sys.modules['hypothesis'] = None\n"  # any `import hypothesis` now raises ImportError
        "import sim, sim.checking, sim.serving.replay\n"
        "from sim.cli.main import main\n"
        "assert main(['allocators']) == 0\n"
        "sys.exit(main(['check', 'paged']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "pip install 'kvsim[test]'" in proc.stderr
