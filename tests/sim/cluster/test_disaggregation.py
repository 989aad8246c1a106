"""Prefill/decode disaggregation: times worked out by hand (1 s per iteration; the KV link's figures chosen so one
prompt's blocks take 0.5 s)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_routing import OPTIONS, OneSecond, trace

from sim.cluster.link import KVLink, parse_kv_link
from sim.cluster.run import ClusterOptions, simulate_cluster
from sim.cluster.summary import cluster_summary
from sim.errors import UserError
from sim.serving.replay import ReplayOptions

BPT = OPTIONS.model.kv_bytes_per_token()  # 524,288 bytes per token (llama-2-7b: 2 x 32 layers x 4,096 x 2 bytes)
assert BPT == 2 * 32 * 4096 * 2
PROMPT_BYTES = 7 * 16 * BPT  # a 100-token prompt fills 7 blocks of 16 tokens: 58,720,256 bytes
LINK = KVLink(bandwidth=PROMPT_BYTES / 0.5, latency_s=0.25)  # 0.5 s on the link, then 0.25 s


def run(t, prefill=1, decode=1, router="round-robin", link=LINK):
    options = ClusterOptions(OPTIONS, 0, router, prefill_replicas=prefill, decode_replicas=decode, link=link)
    return simulate_cluster(t, options, cost_model=OneSecond())


def test_one_request_ttft_includes_the_transfer():
    # Prefill replica: [0, 1) computes the 100-token prompt (its one token is discarded). The link carries the 7
    # blocks over [1, 1.5); they arrive at 1.75. The decode replica admits the request at 1.75 with 99 tokens
    # computed, computes the last prompt token in [1.75, 2.75) and emits the first token at 2.75 (TTFT 2.75 s:
    # 1 s prefill + 0.75 s transfer + 1 s), then the 2nd and 3rd at 3.75 and 4.75.
    r = run(trace([(0.0, 100, 3)]))
    log = r.requests
    assert log.admitted_s[0] == 1.75
    assert log.first_token_s[0] == 2.75
    assert log.finish_s[0] == 4.75
    assert r.prefill_requests.finish_s[0] == 1.0
    assert r.replica_of[0] == 1 and r.prefill_replica_of[0] == 0  # the decode pool's replica 1, prefill's 0
    s = cluster_summary(r)
    assert s["latency_s"]["ttft"]["p50"] == 2.75
    assert s["kv_transfer"]["transfers"] == 1
    assert s["kv_transfer"]["bytes"] == PROMPT_BYTES
    assert s["kv_transfer"]["time_s"]["mean"] == 0.75


def test_transfers_of_one_prefill_replica_queue_on_its_link():
    # Both prompts are computed in [0, 1). The first crosses [1, 1.5) and arrives at 1.75; the second waits for the
    # link, crosses [1.5, 2.0) and arrives at 2.25. Decode: the first runs [1.75, 2.75) (first token at 2.75); the
    # second arrived during that iteration and joins the next, [2.75, 3.75): first token at 3.75.
    r = run(trace([(0.0, 100, 2), (0.0, 100, 2)]))
    assert r.requests.first_token_s.tolist() == [2.75, 3.75]
    assert r.requests.finish_s.tolist() == [3.75, 4.75]
    s = cluster_summary(r)
    assert s["kv_transfer"]["queued_s"]["mean"] == 0.25  # (0 + 0.5) / 2
    assert s["kv_transfer"]["time_s"]["mean"] == 1.0  # (0.75 + 1.25) / 2


def test_two_prefill_replicas_send_in_parallel():
    # Round-robin puts the prompts on prefill replicas 0 and 1; each has its own link: both arrive at 1.75 and join
    # the decode replica's first iteration [1.75, 2.75).
    r = run(trace([(0.0, 100, 2), (0.0, 100, 2)]), prefill=2)
    assert r.prefill_replica_of.tolist() == [0, 1]
    assert r.requests.first_token_s.tolist() == [2.75, 2.75]


def test_a_preempted_decode_request_recomputes_its_prompt():
    # A request admitted on the decode side starts with its prompt computed elsewhere, once: Request.transferred_tokens
    # is spent at that admission (vllm_v1 sets it to 0), so a later admission after a preemption prefills it all.
    from sim.allocators import PagedAllocator
    from sim.serving.request import Request
    from sim.serving.schedulers import SchedulerLimits, VllmV1Scheduler

    sched = VllmV1Scheduler(PagedAllocator(64, 16, 4096), SchedulerLimits(8, 512))
    sched.add(Request(0, 100, 3, 0.0, transferred_tokens=100))
    batch = sched.schedule(0.0)
    assert batch.prefill_spans == [(99, 100)]  # all but the last prompt token came over the link
    assert batch.num_prefill_tokens == 1
    request = batch.prefill[0]
    assert request.transferred_tokens == 0


def test_link_presets_and_numbers():
    assert parse_kv_link("ib-400g").bandwidth == 50e9
    assert parse_kv_link("ib-400g", 0.001).latency_s == 0.001
    assert parse_kv_link("3e9").bandwidth == 3e9 and parse_kv_link("3e9").latency_s == 0.0
    with pytest.raises(UserError, match="neither a link"):
        parse_kv_link("fast")
    with pytest.raises(UserError, match="positive number of bytes/s"):
        parse_kv_link("0")
    with pytest.raises(UserError, match="positive number of bytes/s"):
        parse_kv_link("-5e9")
    with pytest.raises(UserError, match="kv-link-latency"):
        KVLink(1e9, math.nan)


def test_bad_disaggregated_set_ups():
    t = trace([(0.0, 10, 2)])
    with pytest.raises(UserError, match="without a link|give --kv-link"):
        run(t, link=None)
    with pytest.raises(UserError, match="needs --prefill-replicas and --decode-replicas"):
        run(t, prefill=2, decode=0)
    v0 = ReplayOptions(**{**OPTIONS.__dict__, "scheduler": "vllm-v0"})
    with pytest.raises(UserError, match="modelled for vllm-v1"):
        simulate_cluster(t, ClusterOptions(v0, 0, prefill_replicas=1, decode_replicas=1, link=LINK))
    with pytest.raises(UserError, match="applies to a disaggregated cluster"):
        simulate_cluster(t, ClusterOptions(OPTIONS, 2, link=LINK))


def test_every_request_reaches_the_decode_pool_or_is_rejected():
    t = trace([(i * 0.2, 20 + 7 * i, 1 + i % 5) for i in range(25)] + [(6.0, 5000, 10)])  # the last: too long
    r = run(t, prefill=2, decode=3, router="least-outstanding")
    done = ~np.isnan(r.requests.finish_s)
    rejected = np.array([x is not None for x in r.requests.rejection])
    assert (done ^ rejected).all()
    assert rejected.tolist() == [False] * 25 + [True]
    # decode admission never comes before the prompt's KV could have crossed the link
    assert (r.requests.admitted_s[done] >= r.prefill_requests.finish_s[done] + LINK.latency_s).all()
