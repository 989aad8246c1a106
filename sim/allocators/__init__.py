"""KV-cache allocators: a registry of the built-in ones, and loading of a user's own class."""

from __future__ import annotations

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
from sim.allocators.hybrid import HybridPagedAllocator, HybridPagedPrefixCache
from sim.allocators.paged import PagedAllocator, PagedPrefixCache
from sim.plugins import load_class

REGISTRY: dict[str, type[KVAllocator]] = {
    cls.name: cls
    for cls in (
        ContiguousMax,
        ContiguousPow2,
        ContiguousOracle,
        PagedAllocator,
        PagedPrefixCache,
        HybridPagedAllocator,
        HybridPagedPrefixCache,
    )
}
# What `sim compare` and `python -m sim.bench` run when no --allocators is given: the KV-cache designs of the vLLM
# paper. The grouped allocators hold exactly what `paged` holds for a model of one attention kind, so they are named
# when a model has sliding windows (see README, "KV-cache groups").
COMPARED_BY_DEFAULT: tuple[str, ...] = (
    "contiguous-max",
    "contiguous-pow2",
    "contiguous-oracle",
    "paged",
    "paged-prefix-cache",
)

__all__ = [
    "COMPARED_BY_DEFAULT",
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


#: What the engine, the scheduler and the checker call on an allocator (the abstract methods of KVAllocator).
REQUIRED_METHODS = (
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


def resolve_allocator(spec: str) -> type[KVAllocator]:
    """A registered name, or 'package.module:ClassName' for a user's own allocator class."""
    cls = load_class(spec, REGISTRY, REQUIRED_METHODS, "allocator", "sim.allocators.base", noun="a KV allocator")
    if not getattr(cls, "name", ""):
        cls.name = spec
    return cls
