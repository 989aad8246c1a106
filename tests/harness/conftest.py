"""GPU-harness tests: on a machine without a GPU the Triton kernels run in the interpreter (tiny models only).
Without torch or triton the tests that need them are not collected (the pure-NumPy ones still run)."""

from tests.triton_env import triton_ready

if not triton_ready():
    collect_ignore_glob = ["test_executor.py", "test_harness_cli.py"]
