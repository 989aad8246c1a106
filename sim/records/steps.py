"""The per-iteration step log: it owns its columns (`STEP_COLUMNS`), gathers rows cheaply while a replay runs, and
writes them as steps.csv. `record_iteration` is the one place both clocks (simulator and GPU harness) record an
executed iteration. `GroupStepLog` adds each KV-cache group's columns (`group_columns`) for an allocator with groups;
every other run writes exactly `STEP_COLUMNS`."""

from __future__ import annotations

import io
from array import array

import numpy as np

from sim.allocators.base import MEMORY_CATEGORIES
from sim.records.requests import RequestLog

STEP_COLUMNS = (
    ("time_s", "duration_s", "running", "waiting", "prefill_tokens", "decode_tokens", "batched_tokens", "preempted")
    + tuple(f"{c}_bytes" for c in MEMORY_CATEGORIES)
    + ("unshared_bytes",)
)
COLUMN = {name: i for i, name in enumerate(STEP_COLUMNS)}  # column name -> index in a row

#: Each KV-cache group's figures in steps.csv (bytes, while the iteration runs), for an allocator with groups
#: (`memory_by_group` of `sim.allocators.hybrid`): token states, reserved and internal fragmentation as the five
#: categories define them, restricted to the group's blocks (they sum over the groups to the category's column), and
#: window_freed, the slots a full-attention layout would hold at the positions the group's window let go.
GROUP_CATEGORIES = ("token_states", "reserved", "internal_fragmentation", "window_freed")


#: A host tier's figures in steps.csv (sim.records.host_steps.HostStepLog), bytes: host blocks of the offloaded prefix
#: cache and of swapped-out requests after the iteration is scheduled, and the bytes its copies move each way.
HOST_COLUMNS = ("host_cached_bytes", "host_swapped_bytes", "to_host_bytes", "to_gpu_bytes")


def group_columns(num_groups: int) -> tuple[str, ...]:
    """steps.csv's per-group columns, group by group: g0_token_states_bytes, ..., g0_window_freed_bytes, g1_..."""
    return tuple(f"g{g}_{c}_bytes" for g in range(num_groups) for c in GROUP_CATEGORIES)


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

    def extend_stretch(
        self, ends: list[float], durations: list[float], num_seqs: int, waiting: int, bytes_per_token: int, plan
    ) -> None:
        """The rows of a fast-forwarded stretch of plan.rounds pure-decode iterations of an allocator whose plan
        (`DecodePlan`) gives each memory category per round in tokens: iteration i starts at ends[i] and lasts
        durations[i]."""
        rounds = plan.rounds
        rows = np.empty((rounds, len(STEP_COLUMNS)))
        rows[:, COLUMN["time_s"]] = ends[:rounds]
        rows[:, COLUMN["duration_s"]] = durations[:rounds]
        rows[:, COLUMN["running"]] = num_seqs
        rows[:, COLUMN["waiting"]] = waiting
        rows[:, COLUMN["prefill_tokens"]] = 0
        rows[:, COLUMN["decode_tokens"]] = num_seqs
        rows[:, COLUMN["batched_tokens"]] = num_seqs
        rows[:, COLUMN["preempted"]] = 0
        for category in MEMORY_CATEGORIES:
            rows[:, COLUMN[f"{category}_bytes"]] = getattr(plan, category)[:rounds]
        rows[:, COLUMN["unshared_bytes"]] = plan.unshared[:rounds]
        rows[:, COLUMN[f"{MEMORY_CATEGORIES[0]}_bytes"] :] *= bytes_per_token
        self.extend(rows)

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
        rows[:, COLUMN["time_s"]] = self._d_starts
        rows[:, COLUMN["duration_s"]] = self._d_durations
        rows[:, COLUMN["running"]] = n
        rows[:, COLUMN["waiting"]] = waiting
        rows[:, COLUMN["prefill_tokens"]] = 0
        rows[:, COLUMN["decode_tokens"]] = n
        rows[:, COLUMN["batched_tokens"]] = n
        rows[:, COLUMN["preempted"]] = 0
        rows[:, COLUMN["token_states_bytes"]] = tokens
        rows[:, COLUMN["reserved_bytes"]] = reserved
        rows[:, COLUMN["internal_fragmentation_bytes"]] = (held0 + blocks) * bs - tokens - reserved
        rows[:, COLUMN["external_fragmentation_bytes"]] = 0
        rows[:, COLUMN["free_bytes"]] = (free0 - blocks) * bs
        rows[:, COLUMN["unshared_bytes"]] = (logical0 + blocks) * bs
        rows[:, COLUMN["token_states_bytes"] :] *= bpt[:, None].astype(np.float64)
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

    def note_groups(self, groups) -> None:
        """KV-cache groups' figures for the next row: only a GroupStepLog records them."""

    def note_batch(self, batch) -> None:
        """The executed batch, before its row: only a HostStepLog records from it (its host copies)."""

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


class GroupStepLog(StepLog):
    """A StepLog that also records each KV-cache group's figures (GROUP_CATEGORIES) per iteration, for an allocator
    with groups. An executed iteration takes the figures noted last (`note_groups`: record_iteration passes the
    iteration's MemoryBreakdown.by_group); a fast-forwarded stretch takes them from its plan
    (`plan.detail["by_group"]`, one tuple of the groups' memory per round). Figures are token slots until `arrays`
    multiplies them by bytes_per_token (the bytes of one slot), as the other memory columns are."""

    def __init__(self, num_groups: int, bytes_per_token: int) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.bytes_per_token = bytes_per_token
        self._groups = array("q")  # GROUP_CATEGORIES of every group, row after row (token slots)
        self._noted: tuple[int, ...] | None = None

    def _flat(self, groups) -> tuple[int, ...]:
        if len(groups) != self.num_groups:
            raise ValueError(f"{len(groups)} KV-cache groups reported, {self.num_groups} expected")
        return tuple(getattr(m, c) for m in groups for c in GROUP_CATEGORIES)

    def note_groups(self, groups) -> None:
        """The groups' memory (objects with the GROUP_CATEGORIES, in group order) for the next appended row."""
        self._noted = self._flat(groups)

    def append(self, row: tuple) -> None:
        if self._noted is None:
            raise RuntimeError("an iteration was recorded without its KV-cache groups' memory (note_groups)")
        self._groups.extend(self._noted)
        self._noted = None
        super().append(row)

    def extend_stretch(
        self, ends: list[float], durations: list[float], num_seqs: int, waiting: int, bytes_per_token: int, plan
    ) -> None:
        by_group = plan.detail.get("by_group")
        if by_group is None or len(by_group) < plan.rounds:
            raise RuntimeError("a decode plan of an allocator with KV-cache groups must carry detail['by_group']")
        for groups in by_group[: plan.rounds]:
            self._groups.extend(self._flat(groups))
        super().extend_stretch(ends, durations, num_seqs, waiting, bytes_per_token, plan)

    def extend_decode(self, *args, **kwargs) -> None:
        raise RuntimeError("an allocator with KV-cache groups must plan decode stretches as DecodePlan with by_group")

    def arrays(self) -> dict[str, np.ndarray]:
        out = super().arrays()
        width = len(GROUP_CATEGORIES) * self.num_groups
        slots = np.frombuffer(self._groups, dtype=np.int64).reshape(-1, width) if width else np.empty((0, 0))
        table = (slots * self.bytes_per_token).astype(np.float64)
        for i, name in enumerate(group_columns(self.num_groups)):
            out[name] = table[:, i]
        return out


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
    if memory.by_group:  # an allocator with KV-cache groups: its steps log is a GroupStepLog
        steps.note_groups(memory.by_group)
    steps.note_batch(batch)  # a host tier: its steps log is a HostStepLog
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
    for request in batch.preempted:
        requests.preemptions[request.index] += 1
    if batch.preempted or batch.stalled or batch.resumed:
        _record_pauses(requests, batch, start, end)
    for request in batch.prefill:
        i = request.index
        if np.isnan(requests.admitted_s[i]):
            requests.admitted_s[i] = request.admitted_s
        if np.isnan(requests.first_token_s[i]) and request.first_token_s is not None:  # a whole prompt computed
            requests.first_token_s[i] = request.first_token_s
    for request in finished:
        requests.finish_s[request.index] = end


def _record_pauses(requests: RequestLog, batch, start: float, end: float) -> None:
    """A request that emitted before and is preempted or passed over in this iteration last emitted at its start
    (the end of the previous iteration, which it ran in); one that emits again does so at its end."""
    since = requests.paused_since
    for request in (*batch.preempted, *batch.stalled):
        if request.first_token_s is not None and request.index not in since:
            since[request.index] = start
    for request in batch.resumed:
        t0 = since.pop(request.index, None)
        if t0 is not None:
            requests.pauses.setdefault(request.index, []).append((t0, end))


def num_groups_of(steps: dict[str, np.ndarray]) -> int:
    """How many KV-cache groups' columns the records hold (0 for an allocator without groups)."""
    n = 0
    while f"g{n}_{GROUP_CATEGORIES[0]}_bytes" in steps:
        n += 1
    return n


def steps_csv(steps: dict[str, np.ndarray]) -> str:
    """STEP_COLUMNS, then the per-group columns when the records have them (`group_columns`), then the host tier's
    (`sim.records.host_steps.HOST_COLUMNS`) when they have those."""
    columns = STEP_COLUMNS + group_columns(num_groups_of(steps))
    if HOST_COLUMNS[0] in steps:
        columns += HOST_COLUMNS
    buf = io.StringIO()
    buf.write(",".join(columns) + "\n")
    cols = [steps[c] for c in columns]
    int_cols = {i for i, c in enumerate(columns) if c not in ("time_s", "duration_s")}
    fmt = ",".join("%d" if i in int_cols else "%.9g" for i in range(len(cols)))
    if len(cols[0]):
        np.savetxt(buf, np.column_stack(cols), fmt=fmt)
    return buf.getvalue()
