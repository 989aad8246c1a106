"""Azure LLM inference traces (2023 and 2024 releases): TIMESTAMP, ContextTokens, GeneratedTokens."""

from __future__ import annotations

import numpy as np

from sim.errors import TraceError
from sim.traces.model import Trace
from sim.traces.readers.base import Reader, ReadOptions
from sim.traces.readers.rows import Rows, column_index, ensure_non_decreasing, ignored_columns_note, positive_int_column

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def _has_offset(stamp: str) -> bool:
    return stamp.endswith("Z") or (len(stamp) > 6 and stamp[-6] in "+-" and stamp[-3] == ":")


def _split_utc_offsets(stamps: list[str]) -> tuple[list[str], np.ndarray | None]:
    """'2024-05-10 00:00:00.009930+00:00' -> ('2024-05-10 00:00:00.009930', offset in ns), for numpy, which has no
    time zones. Stamps without an offset (the 2023 release) pass unchanged, with offset None."""
    if not any(_has_offset(s) for s in stamps):
        return stamps, None
    bases, offsets = [], np.zeros(len(stamps), dtype=np.int64)
    for i, s in enumerate(stamps):
        if s.endswith("Z"):
            bases.append(s[:-1])
        elif _has_offset(s) and s[-5:-3].isdigit() and s[-2:].isdigit():
            sign = 1 if s[-6] == "+" else -1
            offsets[i] = sign * (int(s[-5:-3]) * 60 + int(s[-2:])) * 60 * 10**9
            bases.append(s[:-6])
        else:
            bases.append(s)
    return bases, offsets


def _read_azure(path: str, header: list[str], rows: Rows, options: ReadOptions) -> Trace:
    idx = {name: column_index(path, header, name) for name in AZURE_COLUMNS}
    stamps = [s.strip() for s in rows.column(idx["TIMESTAMP"])]
    bases, utc_offsets = _split_utc_offsets(stamps)
    example = "a date and time like '2023-11-16 18:17:03.9799600' or '2024-05-10 00:00:00.009930+00:00'"
    try:
        times = np.array(bases, dtype="datetime64[ns]")
        if utc_offsets is not None:
            times = times - utc_offsets.astype("timedelta64[ns]")
    except ValueError:
        for i, (text, base) in enumerate(zip(stamps, bases)):
            try:
                if np.isnat(np.datetime64(base, "ns")):
                    raise ValueError
            except ValueError:
                raise TraceError(path, rows.line(i), f"TIMESTAMP must be {example}, got {text!r}") from None
        raise  # pragma: no cover
    nat = np.nonzero(np.isnat(times))[0]
    if len(nat):
        i = int(nat[0])
        raise TraceError(path, rows.line(i), f"TIMESTAMP must be {example}, got {stamps[i]!r}")
    nanoseconds = (times - times[0]).astype(np.int64)
    ensure_non_decreasing(rows, nanoseconds, idx["TIMESTAMP"], "TIMESTAMP", quote=True)
    return Trace(
        path=path,
        format="azure",
        arrival_s=nanoseconds / 1e9,
        prompt_tokens=positive_int_column(rows, idx["ContextTokens"], "ContextTokens"),
        output_tokens=positive_int_column(rows, idx["GeneratedTokens"], "GeneratedTokens"),
        notes=ignored_columns_note(header, set(AZURE_COLUMNS)),
    )


READER = Reader(
    "azure",
    "Azure LLM inference trace: TIMESTAMP,ContextTokens,GeneratedTokens",
    lambda h: all(c in h for c in AZURE_COLUMNS),
    _read_azure,
)
