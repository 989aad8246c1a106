"""Azure LLM inference traces (2023 and 2024 releases): TIMESTAMP, ContextTokens, GeneratedTokens.

TIMESTAMP is a date and time: '2023-11-16 18:17:03.9799600' (2023, no time zone) or
'2024-05-10 00:00:00.009930+00:00' (2024, with a UTC offset, which is applied; 'Z' means +00:00). A TIMESTAMP that
is a plain number (1700000000.5) is read as seconds (since 1970, say); either way arrivals are relative to row 1.
Every row must use the kind of the first: dates with an offset, dates without, or numbers -- a file that mixes them
is refused, as a naive time next to a UTC one is a guess. Dates must lie in 1678..2261 and span at most 292 years
(the range of 64-bit nanoseconds).
"""

from __future__ import annotations

import re

import numpy as np

from sim.errors import TraceError
from sim.traces.model import Trace
from sim.traces.readers.base import Reader, ReadOptions
from sim.traces.readers.rows import (
    Rows,
    column_index,
    ensure_non_decreasing,
    float_column,
    ignored_columns_note,
    positive_int_column,
)

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
EXAMPLE = "a date and time like '2023-11-16 18:17:03.9799600' or '2024-05-10 00:00:00.009930+00:00'"

_DATE = r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?"
_OFFSET = r"(?:Z|[+-]\d{2}:\d{2})"
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_KINDS = {  # kind -> a whole stamp of that kind
    "naive": re.compile(_DATE, re.ASCII),
    "offset": re.compile(_DATE + _OFFSET, re.ASCII),
    "seconds": re.compile(_NUMBER, re.ASCII),
}
_WHAT = {"naive": "no UTC offset", "offset": "a UTC offset", "seconds": "a number of seconds"}


def _kind(stamp: str) -> str | None:
    return next((k for k, pattern in _KINDS.items() if pattern.fullmatch(stamp)), None)


def _first_not_matching(stamps: list[str], kind: str) -> int | None:
    """Index of the first stamp that is not of this kind: one regex scan over all of them (fast for a million)."""
    joined = "\n".join(stamps)
    m = re.compile(rf"^(?!(?:{_KINDS[kind].pattern})$)", re.M | re.ASCII).search(joined)
    return None if m is None else joined.count("\n", 0, m.start())


def _check_kinds(rows: Rows, stamps: list[str]) -> str:
    """The kind of every stamp (that of the first); the first stamp of another kind, or of none, is reported."""
    kind = _kind(stamps[0])
    i = 0 if kind is None else _first_not_matching(stamps, kind)
    if i is None:
        return kind
    other = _kind(stamps[i])
    if other is None or kind is None:
        expected = "a number of seconds, as in row 1," if kind == "seconds" else EXAMPLE
        raise TraceError(rows.path, rows.line(i), f"TIMESTAMP must be {expected}, got {stamps[i]!r}")
    raise TraceError(
        rows.path,
        rows.line(i),
        f"TIMESTAMP {stamps[i]!r} has {_WHAT[other]}, but the first row's {stamps[0]!r} (line {rows.line(0)}) has "
        f"{_WHAT[kind]}: every row must be of the same kind",
    )


def _utc_offsets(rows: Rows, stamps: list[str]) -> tuple[list[str], np.ndarray]:
    """'2024-05-10 00:00:00.009930+00:00' -> ('2024-05-10 00:00:00.009930', offset in microseconds), for numpy, which
    has no time zones."""
    bases, offsets = [], np.zeros(len(stamps), dtype=np.int64)
    for i, s in enumerate(stamps):
        if s.endswith("Z"):
            bases.append(s[:-1])
        else:
            hours, minutes = int(s[-5:-3]), int(s[-2:])
            if hours > 23 or minutes > 59:
                raise TraceError(rows.path, rows.line(i), f"TIMESTAMP {s!r} has no valid UTC offset (+HH:MM)")
            offsets[i] = (1 if s[-6] == "+" else -1) * (hours * 60 + minutes) * 60 * 10**6
            bases.append(s[:-6])
    return bases, offsets


def _parse_dates(rows: Rows, stamps: list[str], kind: str) -> np.ndarray:
    """Nanoseconds since 1970, UTC where an offset is given."""
    bases, offsets = _utc_offsets(rows, stamps) if kind == "offset" else (stamps, None)
    try:
        ns = np.array(bases, dtype="datetime64[ns]")
        us = np.array(bases, dtype="datetime64[us]")  # the same instants, in a range of 290,000 years
    except ValueError:  # a date like 2023-13-45: find it
        for i, base in enumerate(bases):
            try:
                np.datetime64(base, "ns")
            except ValueError:
                raise TraceError(rows.path, rows.line(i), f"TIMESTAMP must be {EXAMPLE}, got {stamps[i]!r}") from None
        raise TraceError(rows.path, 0, f"TIMESTAMP: a value is not {EXAMPLE}") from None  # pragma: no cover
    if offsets is not None:
        ns = ns - (offsets * 1000).astype("timedelta64[ns]")
        us = us - offsets.astype("timedelta64[us]")
    # numpy wraps dates outside 1678..2262 around silently at nanosecond resolution: the microsecond copy shows it.
    wrapped = np.abs(ns.astype(np.int64) // 1000 - us.astype(np.int64)) > 1
    hit = np.nonzero(wrapped | np.isnat(ns))[0]
    if len(hit):
        i = int(hit[0])
        raise TraceError(
            rows.path,
            rows.line(i),
            f"TIMESTAMP {stamps[i]!r} is out of range: dates from 1678 to 2261 can be read (64-bit nanoseconds)",
        )
    bad = np.nonzero(ns[1:] < ns[:-1])[0]
    if len(bad):
        i = int(bad[0]) + 1
        raise TraceError(rows.path, rows.line(i), f"TIMESTAMP must not decrease: {stamps[i]!r} after {stamps[i - 1]!r}")
    nanoseconds = ns.astype(np.int64)
    relative = nanoseconds - nanoseconds[0]  # wraps below 0 where the true gap passes 2^63 ns
    hit = np.nonzero(relative < 0)[0]
    if len(hit):
        i = int(hit[0])
        raise TraceError(
            rows.path,
            rows.line(i),
            f"TIMESTAMP {stamps[i]!r} is more than 292 years after the first row's {stamps[0]!r}: "
            f"arrival times must fit in 64-bit nanoseconds",
        )
    return relative


def _read_azure(path: str, header: list[str], rows: Rows, options: ReadOptions) -> Trace:
    idx = {name: column_index(path, header, name) for name in AZURE_COLUMNS}
    stamps = [s.strip() for s in rows.column(idx["TIMESTAMP"])]
    kind = _check_kinds(rows, stamps)
    if kind == "seconds":
        seconds = float_column(rows, idx["TIMESTAMP"], "TIMESTAMP", "a number of seconds")
        ensure_non_decreasing(rows, seconds, idx["TIMESTAMP"], "TIMESTAMP", quote=True)
        arrivals = seconds - seconds[0]
        notes = ["TIMESTAMP holds numbers: read as seconds"]
    else:
        arrivals = _parse_dates(rows, stamps, kind) / 1e9
        notes = []
    return Trace(
        path=path,
        format="azure",
        arrival_s=arrivals,
        prompt_tokens=positive_int_column(rows, idx["ContextTokens"], "ContextTokens"),
        output_tokens=positive_int_column(rows, idx["GeneratedTokens"], "GeneratedTokens"),
        notes=notes + ignored_columns_note(header, set(AZURE_COLUMNS)),
    )


READER = Reader(
    "azure",
    "Azure LLM inference trace: TIMESTAMP,ContextTokens,GeneratedTokens",
    lambda h: all(c in h for c in AZURE_COLUMNS),
    _read_azure,
)
