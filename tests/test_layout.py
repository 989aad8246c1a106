"""The package's shape: `import sim` needs no torch, no module imports an underscore name of another module, and the
import graph of the shipped packages (sim, kernels) has no cycle. Imports are read from the source (an AST walk), so
lazy imports inside functions count too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sim", "kernels")


def module_files() -> dict[str, Path]:
    """Every shipped module, by dotted name (a package by its name, its __init__.py as the file)."""
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import of a shipped module in `path`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] in PACKAGES]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] not in PACKAGES:
                continue
            names = [a.name for a in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
            found += [(m, [], node.lineno) for m in submodules]
            others = [n for n in names if f"{target}.{n}" not in modules]
            if others:
                found.append((target, others, node.lineno))
    return found


def graph() -> dict[str, set[str]]:
    modules = module_files()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for target, _, _ in imports_of(name, path, modules):
            if target in modules and target != name:
                edges[name].add(target)
    return edges


def test_import_sim_needs_no_torch() -> None:
    code = "import sys, sim, sim.cli.main, sim.serving.replay, sim.report.build; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_module_imports_a_private_name_of_another() -> None:
    modules = module_files()
    offenders = []
    for name, path in modules.items():
        for target, names, line in imports_of(name, path, modules):
            if target == name:
                continue
            offenders += [f"{path.relative_to(ROOT)}:{line}: {n} from {target}" for n in names if n.startswith("_")]
            if target.rpartition(".")[2].startswith("_") and target.rpartition(".")[2] != "__init__":
                offenders.append(f"{path.relative_to(ROOT)}:{line}: private module {target}")
    assert offenders == []


def test_the_import_graph_has_no_cycle() -> None:
    """Module-level and lazy imports alike; a package's __init__ importing its own modules is an edge too, so a module
    importing its package's __init__ while that __init__ imports it back is reported."""
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join((path + [node])[(path + [node]).index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    assert cycles == []


def test_a_cycle_is_found(tmp_path, monkeypatch) -> None:
    """The cycle check itself: two modules importing each other are reported."""
    package = tmp_path / "sim"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from sim.b import f\n")
    (package / "b.py").write_text("def f():\n    from sim.a import g\n")
    (tmp_path / "kernels").mkdir()
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    edges = graph()
    assert edges["sim.a"] == {"sim.b"} and edges["sim.b"] == {"sim.a"}
