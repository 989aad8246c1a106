"""Shared by the kernel and harness conftests: run Triton under the interpreter when there is no GPU.

TRITON_INTERPRET must be set before triton is imported anywhere, so the conftests call this first.
"""

import os


def triton_ready() -> bool:
    """True when torch and triton import (interpreted on a machine without CUDA)."""
    try:
        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
