"""The generic mutator generates the expected mutants for a tiny snippet, and applies each one faithfully."""

from __future__ import annotations

import ast

from sim.checking.generic_mutants import enumerate_source, mutate_source
from sim.checking.generic_mutation import selection
from sim.checking.generic_report import replace_section

SNIPPET = '''
def f(a, b):
    """Docstring: not mutated."""
    x = a + 1
    if a < b and b != 0:
        return True
    return x * 2
'''


def test_enumerates_every_operator_on_a_tiny_snippet():
    got = [(m.op, m.line, m.after) for m in enumerate_source(SNIPPET)]
    assert got == [
        ("delete", 4, "pass"),
        ("arith", 4, "a - 1"),
        ("constant", 4, "2"),
        ("constant", 4, "0"),
        ("boolop", 5, "a < b or b != 0"),
        ("compare", 5, "a <= b"),
        ("compare", 5, "a > b"),
        ("compare", 5, "b == 0"),
        ("constant", 5, "1"),
        ("constant", 5, "-1"),
        ("return", 6, "return False"),
        ("return", 7, "return None"),
        ("arith", 7, "x // 2"),
        ("constant", 7, "3"),
        ("constant", 7, "1"),
    ]


def test_each_mutant_changes_exactly_what_it_says():
    original = ast.unparse(ast.parse(SNIPPET))
    mutants = enumerate_source(SNIPPET)
    texts = [mutate_source(SNIPPET, m.ordinal) for m in mutants]
    assert len(set(texts)) == len(texts) and original not in texts
    assert "x = a - 1" in texts[1]
    assert "if a < b or b != 0:" in texts[4]
    assert "return x // 2" in texts[12]
    for t in texts:
        assert '"""Docstring: not mutated."""' in t or "'Docstring: not mutated.'" in t
        compile(t, "<mutant>", "exec")


def test_skips_annotations_fstrings_type_checking_and_no_op_statements():
    src = """
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    y = 1
def g(n: int = 3) -> int:
    ...
    raise ValueError(f"bad {n + 1}")
"""
    ops = [(m.op, m.before) for m in enumerate_source(src)]
    assert ops == [("constant", "3"), ("constant", "3"), ("delete", "raise ValueError(f'bad {n + 1}')")]


def test_family_selection_and_report_section():
    units = ["tests/sim/allocators/test_allocators.py"]
    props = ["p.py::t[contiguous-max[address_space=buddy]]", "p.py::t[paged]", "e.py::t[paged-prefix-cache]"]
    assert selection("sim/allocators/contiguous.py", units, props) == units + props[:1]
    assert selection("sim/allocators/block_pool.py", units, props) == units + props[1:]
    assert selection("sim/allocators/base.py", units, props) == units + props
    text = replace_section("# head\n\nbody\n", "<!-- generic-mutation:start -->\nA\n<!-- generic-mutation:end -->\n")
    again = replace_section(text, "<!-- generic-mutation:start -->\nB\n<!-- generic-mutation:end -->\n")
    assert again.startswith("# head\n\nbody\n") and "B" in again and "\nA\n" not in again
