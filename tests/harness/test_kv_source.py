"""Token identities of the deterministic K/V (pure NumPy, no torch)."""

import numpy as np

from kernels.harness.kv_source import Lineage, mix, tag_hash
from sim.allocators.base import TokenContent


def test_mix_is_deterministic_and_spread():
    a = mix(np.arange(1000), np.arange(1000))
    b = mix(np.arange(1000), np.arange(1000))
    assert (a == b).all()
    assert len(np.unique(a % np.uint64(8192))) > 900  # few collisions among 1,000 keys in 8,192 rows
    assert tag_hash(("group", 7)) == tag_hash(("group", 7)) != tag_hash(("group", 8))


def test_fork_shares_positions_before_the_fork_only():
    root = Lineage.root(5, None)
    child = root.fork(1 << 40, at=20)
    p = np.arange(40)
    k_root, k_child = root.keys(p), child.keys(p)
    assert (k_root[:20] == k_child[:20]).all()
    assert (k_root[20:] != k_child[20:]).all()
    grandchild = child.fork((1 << 40) + 1, at=30)
    k_g = grandchild.keys(p)
    assert (k_g[:30] == k_child[:30]).all() and (k_g[30:] != k_child[30:]).all()
    assert (k_g[:20] == k_root[:20]).all()


def test_content_runs_are_shared_between_requests():
    content = TokenContent(((("group", 3), 32),))
    a, b = Lineage.root(1, content), Lineage.root(2, content)
    p = np.arange(48)
    ka, kb = a.keys(p), b.keys(p)
    assert (ka[:32] == kb[:32]).all()
    assert (ka[32:] != kb[32:]).all()
    other = Lineage.root(1, TokenContent(((("group", 4), 32),)))
    assert (other.keys(p)[:32] != ka[:32]).all()


def test_requests_without_content_differ_everywhere():
    a, b = Lineage.root(1, None), Lineage.root(2, None)
    p = np.arange(64)
    assert (a.keys(p) != b.keys(p)).all()
