"""The generic mutator of sim/allocators: a syntax-tree walk that enumerates, in a fixed order, one mutant per
applicable operator and site (comparison flips and boundaries, integer constants +-1, `+`/`-` and `*`/`//` swaps,
deleting a simple statement, `and`/`or`, return values), and writes one mutant into a module's source. Run by
`sim.checking.generic_mutation`."""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = "sim/allocators"

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
