"""Kernel tests: run the Triton kernels under the interpreter when there is no GPU.

TRITON_INTERPRET must be set before triton is imported anywhere, so this
conftest decides it first.  Without torch or triton the kernel tests are not
collected at all.
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

try:
    import torch  # noqa: F401

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import triton  # noqa: F401
except ImportError:  # torch or triton missing: skip the whole kernel suite
    collect_ignore_glob = ["test_*.py"]
