"""Content keys of full KV blocks, for shared prefixes and the prefix cache.

A sequence's tokens are described by runs (tag, first offset, length): token k of a run is the token with identity
(tag, first + k) (see `TokenContent`); tokens a sequence wrote itself carry the tag ("seq", its id). The key of logical
block i is a function of the identities of tokens 0 .. (i + 1) x block_size - 1 only, so two sequences whose leading
blocks hold the same tokens get the same keys, and a block's key says what every token before it was as well (the
chain). `BlockPool` indexes full blocks by these keys; `leading_hits` looks a new sequence's blocks up in that index.
"""

from __future__ import annotations

from collections.abc import Hashable

from sim.allocators.base import TokenContent

#: (tag, first offset, length): `length` tokens whose identities are (tag, first), (tag, first + 1), ...
Run = tuple[Hashable, int, int]


def runs_from(content: TokenContent | None, seq_id: int, num_tokens: int) -> list[Run]:
    """The runs of a new sequence's first num_tokens tokens: the content's runs, then its own tokens."""
    runs, pos = [], 0
    for tag, length in content.runs if content else ():
        length = min(length, num_tokens - pos)
        if length <= 0:
            break
        runs.append((tag, 0, length))
        pos += length
    if pos < num_tokens:
        runs.append((("seq", seq_id), pos, num_tokens - pos))
    return runs


def content_length(content: TokenContent | None) -> int:
    """Tokens the content's runs name (a sequence's tokens beyond them are its own)."""
    return sum(length for _, length in content.runs) if content else 0


def block_pieces(runs: list[Run], index: int, block_size: int) -> tuple:
    """Identities of the tokens of logical block `index`, as (tag, first offset, length) pieces."""
    lo, hi = index * block_size, (index + 1) * block_size
    pieces, pos = [], 0
    for tag, first, length in runs:
        start, end = max(lo, pos), min(hi, pos + length)
        if start < end:
            pieces.append((tag, first + start - pos, end - start))
        pos += length
        if pos >= hi:
            break
    return tuple(pieces)


def chain_key(prev: Hashable | None, runs: list[Run], index: int, block_size: int) -> Hashable:
    """The key of logical block `index` (`prev`: the key of block index - 1, None for block 0). When all the tokens
    of blocks 0..index belong to one run starting at its offset 0 (the common case), (tag, index) names that content
    exactly and costs no hashing; otherwise a hash chained over the previous block's key."""
    tag, first, length = runs[0]
    if first == 0 and length >= (index + 1) * block_size:
        return (tag, index)
    return hash((prev, block_pieces(runs, index, block_size)))


def leading_hits(hash_block: dict[Hashable, int], runs: list[Run], num_tokens: int, block_size: int) -> list[int]:
    """Blocks of the index `hash_block` (key -> block) holding the leading full blocks of a sequence of num_tokens
    tokens described by `runs`, up to the first miss; at least one token is always left to compute."""
    hits, prev = [], None
    for index in range((num_tokens - 1) // block_size):
        prev = chain_key(prev, runs, index, block_size)
        block = hash_block.get(prev)
        if block is None:
            break
        hits.append(block)
    return hits


def leading_hits_two_tiers(
    hash_block: dict[Hashable, int], on_host, runs: list[Run], num_tokens: int, block_size: int
) -> tuple[list[int], list[Hashable]]:
    """The GPU's leading hits (as `leading_hits`), then the keys of the blocks after them that the host tier holds
    (`on_host(key)`), up to the first block neither holds; at least one token is always left to compute."""
    hits: list[int] = []
    host: list[Hashable] = []
    prev = None
    for index in range((num_tokens - 1) // block_size):
        prev = chain_key(prev, runs, index, block_size)
        if not host:
            block = hash_block.get(prev)
            if block is not None:
                hits.append(block)
                continue
        if not on_host(prev):
            break
        host.append(prev)
    return hits, host
