import os
import sys

import pytest
from hypothesis import HealthCheck, settings

# Property-test profiles: "ci" (default, fast) and "thorough" (HYPOTHESIS_PROFILE=thorough, long runs).
settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "thorough", max_examples=5000, deadline=None, stateful_step_count=200, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture
def repo_root() -> str:
    return ROOT
