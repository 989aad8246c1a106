"""The validated in-memory trace (`Trace`): requests in arrival order as compact numpy columns.

Readers (`sim.traces.readers`) build a `Trace` from a file, writers (`sim.traces.writers`) turn one back into text;
generators and tools (`sim.traces.generate`, `sim.traces.tools`) make new ones. Requests take 24 bytes each (three
numpy columns), so a million-request trace fits easily in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import numpy as np

MOONCAKE_BLOCK_TOKENS = 512  # tokens of prompt content named by one Mooncake hash id


@dataclass
class Trace:
    """Requests in arrival order, as parallel arrays (one entry per request).

    arrival_s: arrival time in seconds (non-decreasing, float64); the engine's clock starts at the first arrival.
    prompt_tokens, output_tokens: lengths in tokens (int64, >= 1).
    request_id: the trace's own ids, or None (then ids are the row indices).
    columns: optional per-request columns (numpy arrays, one entry per request) by name. The native reader fills:
      n              int64 >= 1: parallel samples per request (default 1); the prompt is shared by the n sequences.
      beam_width     int64 >= 1: beams kept by beam search (default 1 = no beam search); n <= beam_width when > 1.
      prefix_group   int64 >= 0, or -1 for none: requests of one group share the first tokens of their prompt.
      prefix_tokens  int64 >= 0 (0 when prefix_group is -1), <= prompt_tokens: how many leading prompt tokens this
                     request shares with the other requests of its group (two requests of a group share the first
                     min(prefix_tokens) tokens of the two).
      A column is present only when the file has it.
    block_hashes: prompt-content identity (Mooncake traces): (flat, offsets), int64 arrays, where request i's ids are
      flat[offsets[i]:offsets[i + 1]]. Id k of a request names the content of prompt tokens
      [k * block_hash_tokens, (k + 1) * block_hash_tokens); equal ids mean equal content (and, as ids are hashes of
      the whole prefix, an equal prefix). A request may have fewer ids than blocks: its remaining tokens are unique.
    block_hash_tokens: tokens per hashed block (512 in Mooncake traces; one such block spans several KV blocks).
    skipped_rows: rows a reader skipped on purpose (e.g. failed requests), with the reason in notes.
    notes: what a reader did that a user should know (skipped rows, ignored columns, generated arrivals).
    """

    path: str
    format: str
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    request_id: list[str] | None = None
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    skipped_rows: int = 0
    notes: list[str] = field(default_factory=list)
    block_hashes: tuple | None = None
    block_hash_tokens: int = MOONCAKE_BLOCK_TOKENS

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def name(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0]

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) else 0.0

    def hash_ids(self, i: int) -> np.ndarray:
        """Request i's prompt block hash ids (empty when the trace has none)."""
        if self.block_hashes is None:
            return np.empty(0, dtype=np.int64)
        flat, offsets = self.block_hashes
        return flat[offsets[i] : offsets[i + 1]]

    def kv_block_keys(self, i: int, block_size: int) -> np.ndarray:
        """Content keys of request i's full KV blocks of `block_size` tokens that hash ids cover, in prompt order.

        KV block j holds prompt tokens [j * block_size, (j + 1) * block_size); it lies inside hashed block
        h = hash_ids(i)[j * block_size // block_hash_tokens] at position p within it, and its key is
        h * (block_hash_tokens // block_size) + p. Two KV blocks with equal keys hold equal content (and follow equal
        prefixes). Needs block_size to divide block_hash_tokens.
        """
        if block_size <= 0 or self.block_hash_tokens % block_size:
            raise ValueError(
                f"block size {block_size} does not divide the {self.block_hash_tokens}-token hashed "
                f"blocks of this trace"
            )
        ids = self.hash_ids(i)
        per = self.block_hash_tokens // block_size
        covered = min(int(self.prompt_tokens[i]), len(ids) * self.block_hash_tokens)
        j = np.arange(covered // block_size, dtype=np.int64)
        return ids[j // per] * per + j % per

    def select(self, index: np.ndarray | slice) -> Trace:
        """A new trace with the requests at `index` (a slice, an index array or a boolean mask), in that order."""
        idx = np.arange(len(self))[index]
        hashes = None
        if self.block_hashes is not None:
            flat, offsets = self.block_hashes
            lengths = (offsets[1:] - offsets[:-1])[idx]
            new_offsets = np.zeros(len(idx) + 1, dtype=np.int64)
            np.cumsum(lengths, out=new_offsets[1:])
            if len(idx) and np.all(np.diff(idx) == 1):
                new_flat = flat[offsets[idx[0]] : offsets[idx[-1] + 1]].copy()
            else:
                new_flat = (
                    np.concatenate([flat[offsets[k] : offsets[k + 1]] for k in idx])
                    if len(idx)
                    else np.empty(0, dtype=np.int64)
                )
            hashes = (new_flat, new_offsets)
        return replace(
            self,
            arrival_s=self.arrival_s[idx].copy(),
            prompt_tokens=self.prompt_tokens[idx].copy(),
            output_tokens=self.output_tokens[idx].copy(),
            request_id=[self.request_id[k] for k in idx] if self.request_id is not None else None,
            columns={k: v[idx].copy() for k, v in self.columns.items()},
            notes=list(self.notes),
            block_hashes=hashes,
        )
