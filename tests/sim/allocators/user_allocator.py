"""A user's own allocator, outside the project's registry, to prove `--allocator module:Class` works."""

from sim.allocators.paged import PagedAllocator


class MyPaged(PagedAllocator):
    """Paged allocation under another name: must behave exactly like the registered `paged`."""

    name = "my-paged"
    description = "the user's copy of paged"
