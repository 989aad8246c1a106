"""KV-cache allocators: a registry of the built-in ones, and loading of a user's own class."""

from __future__ import annotations

import importlib

from sim.allocators.base import (
    MEMORY_CATEGORIES,
    AllocationError,
    BlockTablePlacement,
    ExtentPlacement,
    KVAllocator,
    MemoryBreakdown,
    TokenContent,
)
from sim.allocators.block_pool import BlockPool
from sim.allocators.contiguous import ContiguousAllocator, ContiguousMax, ContiguousOracle, ContiguousPow2
from sim.allocators.paged import PagedAllocator, PagedPrefixCache
from sim.errors import UserError

REGISTRY: dict[str, type[KVAllocator]] = {
    cls.name: cls for cls in (ContiguousMax, ContiguousPow2, ContiguousOracle, PagedAllocator, PagedPrefixCache)
}

__all__ = [
    "MEMORY_CATEGORIES",
    "REGISTRY",
    "AllocationError",
    "BlockPool",
    "BlockTablePlacement",
    "ContiguousAllocator",
    "ContiguousMax",
    "ContiguousOracle",
    "ContiguousPow2",
    "ExtentPlacement",
    "KVAllocator",
    "MemoryBreakdown",
    "PagedAllocator",
    "PagedPrefixCache",
    "TokenContent",
    "resolve_allocator",
]


def resolve_allocator(spec: str) -> type[KVAllocator]:
    """A registered name, or 'package.module:ClassName' for a user's own allocator class."""
    if spec in REGISTRY:
        return REGISTRY[spec]
    if ":" not in spec:
        raise UserError(
            f"unknown allocator {spec!r}; registered: {', '.join(REGISTRY)} "
            f"(or give your own class as package.module:ClassName)"
        )
    module_name, _, class_name = spec.partition(":")
    if not all(part.isidentifier() for part in module_name.split(".")) or not class_name.isidentifier():
        raise UserError(
            f"allocator {spec!r} is not package.module:ClassName (dotted names, no relative import); "
            f"registered: {', '.join(REGISTRY)}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"cannot import allocator module {module_name!r}: {exc}") from None
    except Exception as exc:  # the module itself fails while importing: say so, without a traceback
        raise UserError(f"importing allocator module {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise UserError(f"allocator {spec}: module {module_name!r} has no class {class_name!r}")
    missing = [
        m
        for m in (
            "never_fits",
            "can_admit",
            "admit",
            "can_append",
            "append",
            "free",
            "num_tokens",
            "placement",
            "memory",
            "check",
        )
        if not callable(getattr(cls, m, None))
    ]
    if missing:
        raise UserError(f"{spec} is not a KV allocator: it lacks {', '.join(missing)} (see sim.allocators.base)")
    if not getattr(cls, "name", ""):
        cls.name = spec
    return cls
