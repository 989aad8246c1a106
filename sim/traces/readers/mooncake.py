"""Mooncake JSONL: {"timestamp": ms, "input_length", "output_length", "hash_ids": [...]}, one request a line.

Hash ids name the content of 512-token prompt blocks (`MOONCAKE_BLOCK_TOKENS`); they become `Trace.block_hashes`."""

from __future__ import annotations

import json
import math

import numpy as np

from sim.errors import TraceError
from sim.traces.model import MOONCAKE_BLOCK_TOKENS, Trace
from sim.traces.readers.base import Reader, ReadOptions
from sim.traces.readers.rows import MAX_TOKENS

MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")
MAX_HASH_ID = 2**63 - 1


def _shown(value: object) -> str:
    """A JSON value for a message, shortened: a 400-digit number need not be printed whole."""
    text = json.dumps(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def _json_int(path: str, line: int, record: dict, key: str, minimum: int) -> int:
    value = record.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise TraceError(path, line, f"{key} must be {what}, got {_shown(value)}")
    if value > MAX_TOKENS:
        raise TraceError(path, line, f"{key} is too large, got {_shown(value)}")
    return value


def _milliseconds(path: str, line: int, stamp: object) -> float:
    try:
        if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not math.isfinite(stamp) or stamp < 0:
            raise ValueError
        return float(stamp)
    except (ValueError, OverflowError):  # OverflowError: an integer too large for a float (10**400)
        raise TraceError(
            path, line, f"timestamp must be a finite number of milliseconds >= 0, got {_shown(stamp)}"
        ) from None


def _read_mooncake(path: str, keys: list[str], records: list[tuple[int, object]], options: ReadOptions) -> Trace:
    count = len(records)
    arrivals = np.empty(count, dtype=np.float64)
    prompt = np.empty(count, dtype=np.int64)
    output = np.empty(count, dtype=np.int64)
    offsets = np.zeros(count + 1, dtype=np.int64)
    flat: list[int] = []
    previous = -math.inf
    per = MOONCAKE_BLOCK_TOKENS
    for i, (line, record) in enumerate(records):
        if not isinstance(record, dict):
            raise TraceError(path, line, f"expected a JSON object, got {type(record).__name__}")
        for key in MOONCAKE_KEYS:
            if key not in record:
                raise TraceError(path, line, f"missing key '{key}'")
        stamp = _milliseconds(path, line, record["timestamp"])
        if stamp < previous:
            raise TraceError(
                path, line, f"timestamp must not decrease: {_shown(record['timestamp'])} comes after {previous:g}"
            )
        previous = stamp
        arrivals[i] = stamp / 1000.0
        prompt[i] = p = _json_int(path, line, record, "input_length", 1)
        output[i] = _json_int(path, line, record, "output_length", 1)
        ids = record.get("hash_ids", [])
        if not isinstance(ids, list) or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 0 for h in ids):
            raise TraceError(path, line, "hash_ids must be a list of integers >= 0")
        if any(h > MAX_HASH_ID for h in ids):
            raise TraceError(path, line, f"a hash id does not fit in 64 bits: {_shown(max(ids))}")
        blocks = -(-p // per)
        if len(ids) > blocks:
            raise TraceError(
                path, line, f"{len(ids)} hash_ids for input_length {p}: at most {blocks} blocks of {per} tokens"
            )
        flat.extend(ids)
        offsets[i + 1] = len(flat)
    flat_array = np.array(flat, dtype=np.int64)
    return Trace(
        path=path,
        format="mooncake",
        arrival_s=arrivals,
        prompt_tokens=prompt,
        output_tokens=output,
        block_hashes=(flat_array, offsets),
        block_hash_tokens=per,
    )


READER = Reader(
    "mooncake",
    'Mooncake JSONL: {"timestamp", "input_length", "output_length", "hash_ids"}',
    lambda keys: all(k in keys for k in MOONCAKE_KEYS),
    _read_mooncake,
    kind="jsonl",
)
