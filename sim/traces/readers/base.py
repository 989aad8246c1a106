"""The reader contract: what a format reader is (`Reader`) and the options a format may use (`ReadOptions`).

Each format module (native.py, azure.py, ...) defines its reading function and one `READER`; the package registers
them in `READERS`. The contract lives here, not in the package itself, so that format modules can import it
without importing the registry that imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sim.traces.model import Trace


@dataclass(frozen=True)
class ReadOptions:
    """Extras some formats need: arrivals for length-only traces, a model filter for BurstGPT."""

    rate: float | None = None  # requests/s of the Poisson arrivals generated for a length-only trace
    seed: int = 0
    model_filter: str | None = None


@dataclass(frozen=True)
class Reader:
    name: str
    description: str
    detect: Callable[[list[str]], bool]  # CSV header fields (or the first JSON record's keys) -> is it this format?
    read: Callable[
        ..., Trace
    ]  # (path, header, rows: Rows, options: ReadOptions) or, for JSONL, (path, keys, records, options)
    kind: str = "csv"  # "csv" or "jsonl"
    accepts: frozenset = frozenset()  # ReadOptions fields it uses besides seed: "rate", "model_filter"
