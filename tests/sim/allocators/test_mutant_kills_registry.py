"""`resolve_allocator` (sim/allocators/__init__.py): registered names, a user's class, and every refusal, each with
its own message, where generated mutants showed the paths untested."""

import sys

import pytest

from sim.allocators import REGISTRY, resolve_allocator
from sim.allocators.paged import PagedAllocator
from sim.errors import UserError


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    """A directory on sys.path for throwaway modules; the modules are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("kvsim_mk_"):
            del sys.modules[name]


def test_registered_name_resolves_to_its_class():
    assert resolve_allocator("paged") is PagedAllocator
    assert all(resolve_allocator(name) is cls for name, cls in REGISTRY.items())


def test_unknown_name_without_a_colon_is_refused():
    with pytest.raises(UserError, match="unknown allocator 'nope'; registered: contiguous-max"):
        resolve_allocator("nope")


def test_malformed_spec_is_refused_before_importing():
    for spec in ("1bad.mod:Cls", "sim.allocators:1Cls", ".rel:Cls", "sim.allocators:"):
        with pytest.raises(UserError, match="is not package.module:ClassName"):
            resolve_allocator(spec)


def test_module_that_cannot_be_imported_is_refused():
    with pytest.raises(UserError, match="cannot import allocator module 'kvsim_mk_absent'"):
        resolve_allocator("kvsim_mk_absent:Cls")


def test_module_that_fails_while_importing_is_refused(module_dir):
    (module_dir / "kvsim_mk_boom.py").write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(UserError, match="importing allocator module 'kvsim_mk_boom' failed: RuntimeError: boom"):
        resolve_allocator("kvsim_mk_boom:Cls")


def test_missing_class_or_non_class_is_refused():
    with pytest.raises(UserError, match="module 'sim.allocators' has no class 'NoSuch'"):
        resolve_allocator("sim.allocators:NoSuch")
    with pytest.raises(UserError, match="has no class 'REGISTRY'"):
        resolve_allocator("sim.allocators:REGISTRY")  # a dict, not a class


def test_class_without_the_allocator_methods_is_refused():
    with pytest.raises(UserError, match="is not a KV allocator: it lacks never_fits, can_admit, admit, can_append"):
        resolve_allocator("sim.allocators.base:MemoryBreakdown")


def test_users_class_is_returned_and_named_by_its_spec(module_dir):
    (module_dir / "kvsim_mk_user.py").write_text(
        "from sim.allocators.paged import PagedAllocator\n\n\n"
        "class Named(PagedAllocator):\n    name = 'mine'\n\n\n"
        "class Unnamed(PagedAllocator):\n    name = ''\n"
    )
    named = resolve_allocator("kvsim_mk_user:Named")
    assert named.__name__ == "Named" and issubclass(named, PagedAllocator)
    assert named.name == "mine"  # a class's own name is kept
    unnamed = resolve_allocator("kvsim_mk_user:Unnamed")
    assert unnamed.__name__ == "Unnamed"
    assert unnamed.name == "kvsim_mk_user:Unnamed"  # a nameless class is named by its spec
