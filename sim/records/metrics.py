"""Per-iteration and per-request records, the summary computed from them, and writing them to disk.

Every figure of `summary.json` is defined here (and in the README's table) and computed in `summarize`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from sim.allocators.base import MEMORY_CATEGORIES

STEP_COLUMNS = (
    ("time_s", "duration_s", "running", "waiting", "prefill_tokens", "decode_tokens", "batched_tokens", "preempted")
    + tuple(f"{c}_bytes" for c in MEMORY_CATEGORIES)
    + ("unshared_bytes",)
)


class StepLog:
    """One row per iteration: start time (s), duration (s), sequences in the batch, sequences waiting after
    scheduling, prompt tokens prefilled, decode tokens, batched tokens, sequences preempted, and the five KV memory
    categories in bytes while the iteration runs, and the bytes the live sequences would hold if nothing were
    shared (unshared_bytes)."""

    COMPACT_ROWS = 8192  # pending rows gathered into one array at a time (bounds memory, amortizes conversions)

    def __init__(self) -> None:
        self._rows: list[tuple] = []  # rows not yet gathered into a chunk
        # row lists, stretches (arrays) and decode segments (an int: that many rows of the decode columns below), in
        # order, not yet compacted
        self._pending: list[list[tuple] | np.ndarray | int] = []
        self._pending_rows = 0
        self._chunks: list[np.ndarray] = []
        self._length = 0
        # Decode segments (extend_decode): per row the start, duration, reserved slots and blocks taken since the
        # segment began; per segment (rows, sequences, waiting, bytes per token, block size, tokens, held blocks, free
        # blocks and unshared blocks before its first row).
        self._d_starts: list[float] = []
        self._d_durations: list[float] = []
        self._d_reserved: list[int] = []
        self._d_blocks: list[int] = []
        self._d_segments: list[tuple[int, ...]] = []

    def append(self, row: tuple) -> None:
        self._rows.append(row)
        self._length += 1
        self._pending_rows += 1
        if self._pending_rows >= self.COMPACT_ROWS:
            self._compact()

    def extend(self, block: np.ndarray) -> None:
        """Many rows at once (a fast-forwarded stretch), as a 2-D array in STEP_COLUMNS order."""
        if self._rows:
            self._pending.append(self._rows)
            self._rows = []
        self._pending.append(block)
        self._length += len(block)
        self._pending_rows += len(block)
        if self._pending_rows >= self.COMPACT_ROWS:
            self._compact()

    def extend_decode(
        self, ends: list[float], durations: list[float], num_seqs: int, waiting: int, bytes_per_token: int, plan
    ) -> None:
        """The rows of a fast-forwarded stretch of plan.rounds pure-decode iterations of a block allocator
        (`BlockDecodePlan`): iteration i starts at ends[i] and lasts durations[i]. Kept in Python lists and turned
        into rows together with every other pending segment (_decode_rows): one set of numpy operations for many
        stretches instead of one per stretch. The rows are those `extend` would get from the plan's arrays."""
        rounds = plan.rounds
        if self._rows:
            self._pending.append(self._rows)
            self._rows = []
        self._pending.append(rounds)
        self._d_starts += ends[:rounds]
        self._d_durations += durations[:rounds]
        self._d_reserved += plan.reserved_list
        self._d_blocks += plan.new_blocks
        self._d_segments.append(
            (
                rounds,
                num_seqs,
                waiting,
                bytes_per_token,
                plan.block_size,
                plan.tokens0,
                plan.held0,
                plan.free0,
                plan.logical0,
            )
        )
        self._length += rounds
        self._pending_rows += rounds
        if self._pending_rows >= self.COMPACT_ROWS:
            self._compact()

    def _decode_rows(self) -> np.ndarray:
        """The rows of every pending decode segment, in order (see BlockDecodePlan for the formulas; the integer
        arithmetic is int64 and the byte columns are converted to float64 before multiplying by bytes per token, as
        the engine's per-stretch rows are)."""
        seg = np.array(self._d_segments, dtype=np.int64).reshape(-1, 9)
        lengths = seg[:, 0]
        total = int(lengths.sum())
        per_row = np.repeat(seg, lengths, axis=0)
        step = np.arange(1, total + 1, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        n, waiting, bpt, bs = per_row[:, 1], per_row[:, 2], per_row[:, 3], per_row[:, 4]
        tokens0, held0, free0, logical0 = per_row[:, 5], per_row[:, 6], per_row[:, 7], per_row[:, 8]
        blocks = np.array(self._d_blocks, dtype=np.int64).reshape(-1)
        reserved = np.array(self._d_reserved, dtype=np.int64).reshape(-1)
        tokens = tokens0 + n * step
        rows = np.empty((total, len(STEP_COLUMNS)))
        rows[:, 0] = self._d_starts
        rows[:, 1] = self._d_durations
        rows[:, 2] = n
        rows[:, 3] = waiting
        rows[:, 4] = 0
        rows[:, 5] = n
        rows[:, 6] = n
        rows[:, 7] = 0
        rows[:, 8] = tokens
        rows[:, 9] = reserved
        rows[:, 10] = (held0 + blocks) * bs - tokens - reserved
        rows[:, 11] = 0
        rows[:, 12] = (free0 - blocks) * bs
        rows[:, 13] = (logical0 + blocks) * bs
        rows[:, 8:] *= bpt[:, None].astype(np.float64)
        self._d_starts, self._d_durations, self._d_reserved, self._d_blocks, self._d_segments = [], [], [], [], []
        return rows

    def _compact(self) -> None:
        if self._rows:
            self._pending.append(self._rows)
            self._rows = []
        if self._pending:
            width = len(STEP_COLUMNS)
            if len(self._pending) == 1 and not isinstance(self._pending[0], int):
                chunk = np.asarray(self._pending[0], dtype=np.float64).reshape(-1, width)
            else:
                # Scatter: the row tuples of every list in one conversion, the decode segments in one block.
                kinds: list[int] = []  # per part: 0 row tuples, 1 decode segment, 2 array
                lengths: list[int] = []
                tuples: list[tuple] = []
                arrays: list[np.ndarray] = []
                for part in self._pending:
                    if isinstance(part, int):
                        kinds.append(1)
                        lengths.append(part)
                    elif isinstance(part, list):
                        kinds.append(0)
                        lengths.append(len(part))
                        tuples += part
                    else:
                        kinds.append(2)
                        lengths.append(len(part))
                        arrays.append(part)
                kind = np.repeat(np.array(kinds, dtype=np.int8), lengths)
                chunk = np.empty((len(kind), width))
                if tuples:
                    chunk[kind == 0] = np.asarray(tuples, dtype=np.float64).reshape(-1, width)
                if self._d_segments:
                    chunk[kind == 1] = self._decode_rows()
                if arrays:
                    chunk[kind == 2] = np.concatenate(arrays)
            self._chunks.append(chunk)
            self._pending = []
        self._pending_rows = 0

    def _flush(self) -> None:
        self._compact()

    def __len__(self) -> int:
        return self._length

    def arrays(self) -> dict[str, np.ndarray]:
        self._flush()
        # One table, filled chunk by chunk while each chunk is let go: the table's pages are touched as the chunks'
        # are returned, so the log is not held twice (np.concatenate would peak at twice its size).
        chunks = self._chunks
        table = np.empty((sum(len(c) for c in chunks), len(STEP_COLUMNS)))
        pos = 0
        chunks.reverse()
        while chunks:
            chunk = chunks.pop()
            table[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
            del chunk
        self._chunks = [table]
        return {name: table[:, i] for i, name in enumerate(STEP_COLUMNS)}


@dataclass
class RequestLog:
    """Per request (trace order): times in seconds from the trace's start (NaN when it never happened)."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    admitted_s: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    preemptions: np.ndarray
    rejection: list[str | None]
    num_seqs: np.ndarray  # sequences per request: parallel samples or beams (1 for most requests)

    @classmethod
    def empty(
        cls,
        arrival_s: np.ndarray,
        prompt_tokens: np.ndarray,
        output_tokens: np.ndarray,
        num_seqs: np.ndarray | None = None,
    ) -> RequestLog:
        n = len(arrival_s)
        nan = lambda: np.full(n, np.nan)  # noqa: E731
        seqs = np.ones(n, dtype=np.int64) if num_seqs is None else num_seqs
        return cls(
            arrival_s, prompt_tokens, output_tokens, nan(), nan(), nan(), np.zeros(n, dtype=np.int64), [None] * n, seqs
        )


def record_iteration(
    steps: StepLog,
    requests: RequestLog,
    start: float,
    duration: float,
    end: float,
    batch,
    waiting: int,
    memory,
    unshared: int,
    bytes_per_token: int,
    finished,
) -> None:
    """Append one executed iteration to the records: its step row, and the admission, first-token and finish times
    of the requests it touched. Shared by the simulator and the GPU harness, so both write the same records."""
    bpt = bytes_per_token
    steps.append(
        (
            start,
            duration,
            batch.num_seqs,
            waiting,
            batch.num_prefill_tokens,
            batch.num_decode_seqs,
            batch.num_batched_tokens,
            len(batch.preempted),
            memory.token_states * bpt,
            memory.reserved * bpt,
            memory.internal_fragmentation * bpt,
            memory.external_fragmentation * bpt,
            memory.free * bpt,
            unshared * bpt,
        )
    )
    for seq in batch.preempted:
        requests.preemptions[seq.seq_id] += 1
    for seq in batch.prefill:
        i = seq.seq_id
        if np.isnan(requests.admitted_s[i]):
            requests.admitted_s[i] = seq.admitted_s
            requests.first_token_s[i] = seq.first_token_s
    for seq in finished:
        requests.finish_s[seq.seq_id] = end


def _stats(values: np.ndarray) -> dict[str, float | None]:
    if len(values) == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    return {
        "mean": float(np.mean(values)),
        "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
        "p99": float(np.percentile(values, 99)),
    }


def sharing_summary(
    steps: dict[str, np.ndarray], cow_copies: int, prefill_tokens_requested: int, prefill_tokens_cached: int
) -> dict:
    """The `sharing` figures.

    saved_fraction: 1 - (KV bytes held, summed over iterations) / (KV bytes the same live sequences would hold with
        nothing shared, summed over iterations) — i.e. the share of memory that sharing saves against the
        `--no-sharing` counterfactual of the same sequences at the same instants (0 when nothing is shared).
    cow_copies: blocks copied because a shared, partly filled block was written (copy-on-write).
    prefix_cache_hit_tokens: prompt tokens whose KV was found in memory at admission (not prefilled).
    prefix_cache_hit_rate: hit tokens / tokens of every admission's prefill (recomputes included).
    """
    held = sum(float(steps[f"{c}_bytes"].sum()) for c in ("token_states", "reserved", "internal_fragmentation"))
    unshared = float(steps["unshared_bytes"].sum())
    return {
        "saved_fraction": 1.0 - held / unshared if unshared > 0 else 0.0,
        "cow_copies": int(cow_copies),
        "prefix_cache_hit_tokens": int(prefill_tokens_cached),
        "prefix_cache_hit_rate": prefill_tokens_cached / prefill_tokens_requested if prefill_tokens_requested else 0.0,
    }


def summarize(steps: dict[str, np.ndarray], requests: RequestLog, capacity_bytes: int, start_s: float) -> dict:
    """The figures of summary.json (see README, 'Output figures').

    duration_s: from the first arrival to the end of the last iteration.
    throughput: completed requests, and the output tokens they generated (output tokens x sequences per request),
        per second of duration.
    batch_size: sequences per iteration (prefill + decode), mean over iterations and max.
    kv_memory: each category's fraction of KV capacity, averaged over iterations (unweighted).
    latency_s: over completed requests; ttft = first token - arrival; e2e = finish - arrival;
        tpot = (finish - first token) / (output tokens - 1), over requests with at least 2 output tokens.
    """
    completed = ~np.isnan(requests.finish_s)
    rejected = sum(r is not None for r in requests.rejection)
    n_steps = len(steps["time_s"])
    end = float(steps["time_s"][-1] + steps["duration_s"][-1]) if n_steps else start_s
    duration = max(0.0, end - start_s)
    out_tokens = int((requests.output_tokens[completed] * requests.num_seqs[completed]).sum())
    if n_steps:
        kv = {c: float(np.mean(steps[f"{c}_bytes"]) / capacity_bytes) for c in MEMORY_CATEGORIES}
        batch = {"mean": float(np.mean(steps["running"])), "max": int(np.max(steps["running"]))}
    else:
        kv = {c: (1.0 if c == "free" else 0.0) for c in MEMORY_CATEGORIES}
        batch = {"mean": 0.0, "max": 0}
    ttft = requests.first_token_s[completed] - requests.arrival_s[completed]
    e2e = requests.finish_s[completed] - requests.arrival_s[completed]
    multi = completed & (requests.output_tokens > 1)
    tpot = (requests.finish_s[multi] - requests.first_token_s[multi]) / (requests.output_tokens[multi] - 1)
    return {
        "requests": {
            "total": len(requests.arrival_s),
            "completed": int(completed.sum()),
            "rejected": rejected,
            "preemptions": int(requests.preemptions.sum()),
        },
        "iterations": n_steps,
        "duration_s": duration,
        "throughput": {
            "requests_per_s": float(completed.sum()) / duration if duration > 0 else 0.0,
            "output_tokens_per_s": out_tokens / duration if duration > 0 else 0.0,
        },
        "batch_size": batch,
        "kv_memory": kv,
        "latency_s": {"ttft": _stats(ttft), "tpot": _stats(tpot), "e2e": _stats(e2e)},
    }


# --- files -------------------------------------------------------------------------------------------------------
def atomic_write(path: str, text: str) -> None:
    """Write to a temporary file in the same directory, then rename: readers never see half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def to_json(data) -> str:
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(data), indent=2, default=_json_default) + "\n"


def steps_csv(steps: dict[str, np.ndarray]) -> str:
    buf = io.StringIO()
    buf.write(",".join(STEP_COLUMNS) + "\n")
    cols = [steps[c] for c in STEP_COLUMNS]
    int_cols = {i for i, c in enumerate(STEP_COLUMNS) if c not in ("time_s", "duration_s")}
    fmt = ",".join("%d" if i in int_cols else "%.9g" for i in range(len(cols)))
    if len(cols[0]):
        np.savetxt(buf, np.column_stack(cols), fmt=fmt)
    return buf.getvalue()


REQUEST_COLUMNS = (
    "request",
    "arrival_s",
    "prompt_tokens",
    "output_tokens",
    "admitted_s",
    "first_token_s",
    "finish_s",
    "preemptions",
    "rejection",
)


def requests_csv(requests: RequestLog, request_ids: list[str] | None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(REQUEST_COLUMNS)
    fmt = lambda x: "" if math.isnan(x) else f"{x:.9g}"  # noqa: E731
    for i in range(len(requests.arrival_s)):
        w.writerow(
            (
                request_ids[i] if request_ids else i,
                fmt(requests.arrival_s[i]),
                int(requests.prompt_tokens[i]),
                int(requests.output_tokens[i]),
                fmt(requests.admitted_s[i]),
                fmt(requests.first_token_s[i]),
                fmt(requests.finish_s[i]),
                int(requests.preemptions[i]),
                requests.rejection[i] or "",
            )
        )
    return buf.getvalue()
