"""Experiments worth re-running, each named by the question it answers. Shipped code never imports this package
and it is left out of the wheel (pyproject.toml); the answers on the H100 are in reports/kernels/README.md."""
