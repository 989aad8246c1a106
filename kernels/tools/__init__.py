"""Developer tools for the kernels (not imported by the kernels or the harness)."""
