"""Kernel tests: run the Triton kernels under the interpreter when there is no GPU. Without torch or triton the
kernel tests are not collected at all."""

from tests.triton_env import triton_ready

if not triton_ready():
    collect_ignore_glob = ["test_*.py"]
