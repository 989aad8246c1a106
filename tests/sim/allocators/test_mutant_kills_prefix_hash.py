"""Block keys (sim/allocators/prefix_hash.py) worked out by hand: runs of a new sequence, the token identities of a
block, chained keys and leading hits, at the boundaries generated mutants showed untested."""

from sim.allocators.base import TokenContent
from sim.allocators.prefix_hash import block_pieces, chain_key, leading_hits, runs_from

A, B = ("group", 1), ("group", 2)
S7 = ("seq", 7)


def test_runs_from_without_content():
    assert runs_from(None, 7, 5) == [(S7, 0, 5)]
    assert runs_from(TokenContent(), 7, 5) == [(S7, 0, 5)]
    assert runs_from(None, 7, 0) == []


def test_runs_from_content_then_own_tokens():
    content = TokenContent(((A, 3), (B, 4)))
    # A covers tokens 0..2, B 3..6, the sequence's own tokens 7..9 (identities (S7, 7), ...)
    assert runs_from(content, 7, 10) == [(A, 0, 3), (B, 0, 4), (S7, 7, 3)]
    assert runs_from(content, 7, 8) == [(A, 0, 3), (B, 0, 4), (S7, 7, 1)]
    assert runs_from(TokenContent(((A, 1), (B, 2))), 7, 5) == [(A, 0, 1), (B, 0, 2), (S7, 3, 2)]


def test_runs_from_cut_at_num_tokens():
    content = TokenContent(((A, 3), (B, 4)))
    assert runs_from(content, 7, 7) == [(A, 0, 3), (B, 0, 4)]  # exactly the content
    assert runs_from(content, 7, 5) == [(A, 0, 3), (B, 0, 2)]  # B cut
    assert runs_from(content, 7, 4) == [(A, 0, 3), (B, 0, 1)]  # B cut to one token
    assert runs_from(content, 7, 3) == [(A, 0, 3)]  # B not reached: no empty run
    assert runs_from(content, 7, 2) == [(A, 0, 2)]
    assert runs_from(content, 7, 0) == []


def test_block_pieces_across_runs():
    runs = [(A, 0, 3), (B, 0, 4), (S7, 7, 3)]  # 10 tokens
    assert block_pieces(runs, 0, 4) == ((A, 0, 3), (B, 0, 1))  # tokens 0..3
    assert block_pieces(runs, 1, 4) == ((B, 1, 3), (S7, 7, 1))  # tokens 4..7
    assert block_pieces(runs, 2, 4) == ((S7, 8, 2),)  # tokens 8..9 (the block is partly filled)
    assert block_pieces(runs, 3, 4) == ()


def test_block_pieces_with_a_run_ending_at_the_block_start():
    runs = [(A, 0, 4), (B, 5, 4)]
    assert block_pieces(runs, 0, 4) == ((A, 0, 4),)
    assert block_pieces(runs, 1, 4) == ((B, 5, 4),)  # A ends exactly where block 1 starts: no empty piece
    assert block_pieces(runs, 1, 2) == ((A, 2, 2),)


def test_chain_key_inside_the_first_run():
    runs = [(A, 0, 8), (S7, 8, 4)]
    assert chain_key(None, runs, 0, 4) == (A, 0)
    assert chain_key((A, 0), runs, 1, 4) == (A, 1)  # the run ends exactly with block 1
    # block 2 lies beyond the first run: hashed, chained over block 1's key
    assert chain_key((A, 1), runs, 2, 4) == hash(((A, 1), ((S7, 8, 4),)))


def test_chain_key_hashed_when_the_first_run_is_short_or_offset():
    short = [(A, 0, 3), (S7, 3, 5)]
    assert chain_key(None, short, 0, 4) == hash((None, ((A, 0, 3), (S7, 3, 1))))
    offset = [(A, 2, 8)]  # A's tokens 2..9: not named by (A, index)
    assert chain_key(None, offset, 0, 4) == hash((None, ((A, 2, 4),)))
    assert chain_key("k0", offset, 1, 4) == hash(("k0", ((A, 6, 4),)))


def test_leading_hits_leave_one_token_to_compute():
    runs = [(A, 0, 16)]
    index = {(A, 0): 5, (A, 1): 6, (A, 2): 7, (A, 3): 8}
    assert leading_hits(index, runs, 8, 4) == [5]  # block 1 is full but holds the last token
    assert leading_hits(index, runs, 9, 4) == [5, 6]
    assert leading_hits(index, runs, 12, 4) == [5, 6]
    assert leading_hits(index, runs, 13, 4) == [5, 6, 7]
    assert leading_hits(index, runs, 1, 4) == []
    assert leading_hits({(A, 0): 5, (A, 2): 7}, runs, 16, 4) == [5]  # up to the first miss


def test_leading_hits_follow_the_chain():
    runs = [(A, 0, 3), (S7, 3, 10)]
    k0 = hash((None, ((A, 0, 3), (S7, 3, 1))))
    k1 = hash((k0, ((S7, 4, 4),)))
    k2 = hash((k1, ((S7, 8, 4),)))
    assert leading_hits({k0: 1, k1: 2}, runs, 13, 4) == [1, 2]
    assert leading_hits({k0: 1, k1: 2, k2: 3}, runs, 13, 4) == [1, 2, 3]
    assert leading_hits({k1: 2}, runs, 13, 4) == []
