"""GPU-harness tests: on a machine without a GPU the Triton kernels run in the interpreter (tiny models only).

TRITON_INTERPRET must be set before triton is imported anywhere, so this conftest decides it first. Without torch or
triton the tests that need them are not collected (the pure-NumPy ones still run).
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import triton  # noqa: F401
except ImportError:
    collect_ignore_glob = ["test_executor.py", "test_harness_cli.py"]
