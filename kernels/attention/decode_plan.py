"""How a decode call is laid out: the default kernel config and the split-KV choice.

* :func:`decode_config`: tile size, warps, stages and options of the decode kernel for a grid size;
* :func:`choose_partition` / :func:`split_plan`: how many partitions (splits) each sequence's context is cut
  into, and whether the kernel makes the uniform-length test itself;
* :func:`auto_fused`: whether the split-KV partials are combined in the decode kernel or by a second launch;
* :func:`balanced_default`: whether a call takes the balanced (stream-K) kernel instead.

The constants are the heuristics' knobs; the reasons for their values are in ``reports/kernels/README.md``.
"""

from __future__ import annotations

import torch

from kernels.attention.common import interpreting, num_sms

# Split-KV heuristic knobs (see choose_partition).
RESIDENT_PROGRAMS_PER_SM = 2
PROGRAM_OVERHEAD_TOKENS = 128  # fixed cost of a program (start, q load, partial store) in tokens read
MIN_PARTITION = 256
MAX_PARTITION = 2048

# Alternatives measured slower on the H100 and not offered (reports/kernels/README.md): counting programs per SM
# instead of waves on small grids, the fused reduce on every split grid, and a 128-register cap on the fused kernel
# (it keeps 4 programs per SM, but its spills cost more on large grids; ``config["maxnreg"]`` still sets a cap).

# Small-grid decode configs: a grid of at most num_sms / TINY_GRID_FRACTION (sequence, KV head) pairs with
# grouped-query heads takes the register-prefetch config (see decode_config).
TINY_GRID_FRACTION = 8

# Uniform-length hint (``min_seq_len``): when every sequence is at least this fraction of the longest,
# the MAX_PARTITION cap (which exists to balance mixed lengths) is lifted.
UNIFORM_FRACTION = 0.9
# Without the hint the decode kernel makes the same test on the device (each program reads every length), for
# batches of up to this many sequences.
AUTO_UNIFORM_MAX_SEQS = 1024

# Balanced (stream-K) decode by default for batches the ``min_seq_len`` hint marks as mixed, of at least this many
# sequences and at most this many (sequence, KV head) pairs (see balanced_default).
BALANCED_MIN_SEQS = 16
BALANCED_MAX_PAIRS = 1024


def partition_for(max_len: int, splits: int, block_n: int) -> tuple[int, int]:
    part = -(-max_len // splits)
    part = -(-part // block_n) * block_n
    return -(-max_len // part), part


def choose_partition(
    num_seqs: int,
    num_kv_heads: int,
    max_len: int,
    block_n: int,
    num_sms: int,
    num_splits: int | None,
    min_len: int | None = None,
) -> tuple[int, int]:
    """Return ``(num_splits, partition_size)``; ``num_splits == 1`` means no split-KV.

    Automatic choice (``max_len`` is an upper bound on the context, e.g. the
    block-table width times the block size, so no device sync is needed):

    * no partition longer than ``MAX_PARTITION`` tokens, so that mixed lengths
      balance, and none shorter than ``MIN_PARTITION`` tokens;
    * among those, the split count that minimises
      ``waves x (partition + PROGRAM_OVERHEAD_TOKENS)``, where
      a wave is ``RESIDENT_PROGRAMS_PER_SM x num_sms`` programs running at once
      (the H100 fits two default decode programs per SM: 3 stages of 64-token
      K and V tiles).  This avoids a last, mostly empty wave, which costs more
      than longer partitions do (e.g. 4 splits beat 5 on batch 16 x 8 KV heads
      x 8,192 tokens on the H100);
    * ties go to about two waves of programs (enough in flight, few partials).

    * ``min_len`` (a lower bound on the lengths, a host hint): when it is at least
      ``UNIFORM_FRACTION`` of ``max_len`` the lengths are near-uniform, and if the
      (sequence, KV head) pairs alone fill a wave, nothing needs balancing and the
      ``MAX_PARTITION`` cap is lifted (one split is faster than the cap's four on the
      H100 for gqa batch 64 x 8,192).

    Partitions are multiples of ``block_n``.
    """
    max_len = max(int(max_len), 1)
    if num_splits is not None:
        splits = max(1, int(num_splits))
        if splits == 1:
            return 1, max_len
        return partition_for(max_len, splits, block_n)
    units = max(num_seqs * num_kv_heads, 1)
    slots = RESIDENT_PROGRAMS_PER_SM * num_sms
    # near-uniform lengths and a batch that fills a wave of programs by itself: splitting would only
    # balance, and there is nothing to balance (with fewer programs than slots the cap still helps)
    uniform = min_len is not None and int(min_len) >= UNIFORM_FRACTION * max_len and units >= slots
    s_min = -(-max_len // MAX_PARTITION) if max_len > MAX_PARTITION and not uniform else 1
    s_max = max(s_min, -(-max_len // MIN_PARTITION))
    best = None
    for s in range(s_min, min(s_max, 256) + 1):
        s_eff, part = (1, max_len) if s == 1 else partition_for(max_len, s, block_n)
        if s_eff != s:
            continue
        progs = units * s
        waves = -(-progs // slots)
        key = (waves * (part + PROGRAM_OVERHEAD_TOKENS), abs(progs - 2 * slots), s)
        if best is None or key < best[0]:
            best = (key, s, part)
    if best is None:
        return 1, max_len
    return best[1], best[2]


def split_plan(
    num_seqs: int,
    num_groups: int,
    max_len: int,
    block_n: int,
    num_sms: int,
    num_splits: int | None,
    min_len: int | None,
    allow_auto_uniform: bool = True,
) -> tuple[int, int, bool, int]:
    """``(num_splits, partition_size, auto_uniform, uniform_partition)`` of a decode launch.

    Without a ``min_len`` hint the kernel makes the hint's test on the device: the grid is sized for the capped
    split count of ``choose_partition``, and when every length is at least ``UNIFORM_FRACTION`` of the longest
    the sequences use ``uniform_partition``, the partition the hint would have given (the programs this leaves
    without work exit at once). ``auto_uniform`` is False where the hint would change nothing (automatic split
    choice only, batches of at most ``AUTO_UNIFORM_MAX_SEQS``)."""
    splits, part = choose_partition(num_seqs, num_groups, max_len, block_n, num_sms, num_splits, min_len)
    # the hint changes nothing unless the cap split the batch and the pairs fill a wave (choose_partition's
    # uniform rule); checked first so that other calls search the split counts once
    if (
        allow_auto_uniform
        and num_splits is None
        and min_len is None
        and splits > 1
        and num_seqs <= AUTO_UNIFORM_MAX_SEQS
        and max_len > MAX_PARTITION
        and num_seqs * num_groups >= RESIDENT_PROGRAMS_PER_SM * num_sms
    ):
        u_splits, u_part = choose_partition(num_seqs, num_groups, max_len, block_n, num_sms, None, max_len)
        if u_splits < splits:
            return splits, part, True, u_part
    return splits, part, False, part


def balanced_default(
    num_seqs: int,
    num_kv_heads: int,
    max_len: int,
    min_len: int | None,
    num_splits: int | None,
    heads_per_program: int = 1,
) -> bool:
    """Whether a decode call without ``config["balanced"]`` takes the balanced (stream-K) path
    (:mod:`kernels.attention.decode_balanced`): only when the caller's ``min_seq_len`` hint marks the batch as
    mixed (below ``UNIFORM_FRACTION`` of ``max_len``), the split count is automatic, and the batch has
    ``BALANCED_MIN_SEQS`` to ``BALANCED_MAX_PAIRS / num_kv_heads`` sequences. Without a hint the host cannot
    tell a mixed batch from a uniform one, and on uniform batches the balanced path measured slower
    (reports/kernels/README.md)."""
    return (
        min_len is not None
        and num_splits is None
        and heads_per_program == 1
        and int(min_len) < UNIFORM_FRACTION * max_len
        and BALANCED_MIN_SEQS <= num_seqs
        and num_seqs * num_kv_heads <= BALANCED_MAX_PAIRS
    )


def auto_fused(num_seqs: int, num_kv_heads: int, splits: int, device: torch.device) -> bool:
    """The default of ``fused_reduce``: True only when all ``num_seqs x num_kv_heads x splits`` programs are
    resident at once. There the reduce launch after the wave is pure overhead and fusing measured faster on the
    H100; on multi-wave grids of equal partitions it measured slower (reports/kernels/README.md)."""
    return num_seqs * num_kv_heads * splits <= RESIDENT_PROGRAMS_PER_SM * num_sms(device)


def decode_config(
    head_pad: int, group: int, dtype: torch.dtype, block_size: int, units: int | None = None, num_sms: int = 132
) -> dict:
    """Default decode config; ``units`` is the number of (sequence, KV head) pairs."""
    block_n = 64 if head_pad <= 128 else 32
    if interpreting():
        block_n = 32
    # From the H100 sweeps (reports/kernels/README.md): tensor-core dots (q rows padded to 16) beat the
    # CUDA-core path even for MHA (1.5x at batch 64 x 2,048); launching the KV heads of one token range next
    # to each other gains about 1%.
    # num_stages=3 gives the K/V loads a single shared-memory buffer (the block-table load takes a
    # pipeline stage): each program waits for every tile. That is enough when several programs
    # share an SM, i.e. on large grids.
    cfg = dict(
        block_n=block_n,
        num_warps=4,
        num_stages=3,
        use_dot=True,
        head_major=True,
        evict="",
        fuse_always=False,
        heads_per_program=1,
    )
    if units is not None and units < num_sms and head_pad <= 128 and not interpreting():
        # Small grids (fewer (sequence, KV head) pairs than SMs: batch 1, GQA batch 16): few programs
        # per SM, so each must keep loads in flight. 32-token tiles with 5 stages get two K/V buffers
        # (a tile in flight while one is used) in 38 KB of shared memory and ~100 registers, 2-7% faster
        # on the H100's batch-1 cases. The fused kernel of this shape has fewer registers than the
        # unfused one (96 vs 106), so it is fused on every split grid.
        cfg.update(block_n=32, num_stages=5, fuse_always=True)
        if group > 1 and units * TINY_GRID_FRACTION <= num_sms:
            # Tiny grouped-query grids (batch 1 or 2 with 8 KV heads): each program reads only a few tiles, so
            # its start-up latency counts. Register prefetch with 64-token tiles issues the first tile's
            # block-table load before the length arrives: 3-8% faster on the H100 for GQA batch 1. On MHA
            # batch 1 (32 pairs) and GQA batch 16 (128 pairs) it was 1-2% slower, so it is not used there.
            cfg.update(block_n=64, num_stages=1, prefetch=True)
    return cfg
