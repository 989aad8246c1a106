"""Units and small integer arithmetic: sizes (bytes) and durations (seconds) given on the command line, parsed and
formatted; `ceil_div` and `next_power_of_two`."""

from __future__ import annotations

import math
import re

from sim.errors import UserError

GiB = 2**30
# The largest duration accepted anywhere (about 32 years): keeps every sum of durations finite.
MAX_DURATION_S = 1e9

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_TIME_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "min": 60.0}
_NUMBER_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'12GiB', '80GB', '1.5e9' -> bytes (int >= 0). GB is 10^9, GiB is 2^30. A number too large for a float
    (1e400) is refused."""
    m = _NUMBER_UNIT.match(str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _SIZE_UNITS:
        raise UserError(
            f"cannot read size {text!r}: expected a number with an optional unit "
            f"(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 12GiB"
        )
    value = float(m.group(1)) * _SIZE_UNITS[unit]
    if not math.isfinite(value):
        raise UserError(f"cannot read size {text!r}: the number is too large to represent")
    return int(round(value))


def parse_duration(text: str) -> float:
    """'2s', '100ms', '0.5' -> seconds, finite, in [0, MAX_DURATION_S]."""
    m = _NUMBER_UNIT.match(str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _TIME_UNITS:
        raise UserError(
            f"cannot read duration {text!r}: expected a number with an optional unit (s, ms, us, min), e.g. 100ms"
        )
    value = float(m.group(1)) * _TIME_UNITS[unit]
    if not value <= MAX_DURATION_S:  # also refuses inf (a number too large for a float)
        raise UserError(f"cannot read duration {text!r}: at most {MAX_DURATION_S:g} s (about 32 years)")
    return value


def format_bytes(n: float) -> str:
    """Binary units with two decimals: 12884377600 -> '12.00 GiB' (three significant digits from a million TiB)."""
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {unit}" if abs(n) < factor * 1e6 else f"{n / factor:.3g} {unit}"
    return f"{int(n)} B"


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_two(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()
