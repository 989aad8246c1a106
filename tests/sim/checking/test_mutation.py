"""The mutation check's list stays in sync with the code: every mutant is located by syntax tree exactly once, the
location survives reformatting and moved code, and a renamed function or a changed node fails loudly."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sim.checking.mutants import MUTANTS, Mutant
from sim.checking.mutation import MutantNotFound, apply, locate, suite, verify


def test_every_mutant_is_found_exactly_once_and_its_mutant_parses(repo_root) -> None:
    sites = verify(MUTANTS, repo_root)
    assert set(sites) == {m.id for m in MUTANTS}
    for m in MUTANTS:
        site = sites[m.id]
        original = Path(repo_root, site.file).read_bytes()[site.start : site.end].decode()
        assert original != site.replacement, m.id


def test_the_suite_files_are_found_by_name(repo_root) -> None:
    assert [Path(p).name for p in suite(repo_root)] == ["test_allocator_properties.py", "test_engine_properties.py"]


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


ONE_WAY = """
class Pool:
    def can_take(self, n):
        return n + self.used <= self.size  # room left
"""

ANOTHER_WAY = """
import os


class Pool:
    '''Moved to another module and reformatted.'''

    def can_take(self, count):
        ok = (
            count
            + self.used  # what is taken
            <= self.size
        )
        return ok
"""

OFF_BY_ONE = Mutant("off-by-one", "Pool.can_take", "... + self.used <= ...", "{0} + self.used <= {1} + 1", "")


def mutated(root: Path, m: Mutant) -> str:
    site = locate(m, str(root))
    apply(site, str(root))
    return (root / site.file).read_text()


def test_a_mutant_survives_reformatting_renamed_locals_and_a_moved_function(tmp_path) -> None:
    write(tmp_path / "a", "sim/pool.py", ONE_WAY)
    write(tmp_path / "b", "sim/sub/other.py", ANOTHER_WAY)
    for root in (tmp_path / "a", tmp_path / "b"):
        text = mutated(root, OFF_BY_ONE)
        ns: dict = {}
        exec(compile(ast.parse(text), "pool", "exec"), ns)
        pool = ns["Pool"]()
        pool.used, pool.size = 3, 5
        assert pool.can_take(3)  # 3 + 3 <= 5 + 1: the mutant lets one more in


def test_a_statement_mutant_keeps_the_indentation(tmp_path) -> None:
    write(tmp_path, "sim/pool.py", ONE_WAY.replace("return", "self.used -= 1\n        return"))
    text = mutated(tmp_path, Mutant("m", "can_take", "self.used -= ...", "pass", ""))
    assert "        pass\n" in text
    ast.parse(text)


@pytest.mark.parametrize(
    "m, message",
    [
        (Mutant("gone", "Pool.cannot_take", "... <= ...", "{0} < {1}", ""), "must name exactly one function"),
        (Mutant("changed", "Pool.can_take", "... < ...", "{0} <= {1}", ""), "matches 0 nodes"),
        (Mutant("twice", "Pool.can_take", "self.size", "self.used", ""), "matches 2 nodes"),
    ],
)
def test_a_mutant_that_is_not_found_exactly_once_fails_loudly(tmp_path, m: Mutant, message: str) -> None:
    write(tmp_path, "sim/pool.py", ONE_WAY.replace("<= self.size", "<= self.size + self.size"))
    with pytest.raises(MutantNotFound, match=message):
        locate(m, str(tmp_path))
    with pytest.raises(SystemExit, match="out of sync"):
        verify([m], str(tmp_path))
