"""Kernel tests: run the Triton kernels under the interpreter when there is no GPU. Without torch or triton the
kernel tests are not collected at all."""

import os
import sys

from tests.triton_env import triton_ready

# the test packages below this folder (attention/, tools/) import the shared helpers of _kernel_testutil.py
HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

if not triton_ready():
    collect_ignore_glob = ["test_*.py", "*/test_*.py"]
