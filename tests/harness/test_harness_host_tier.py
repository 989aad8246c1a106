"""The GPU harness with a host tier (kernels.harness.host_pool): the iteration's host-link copies run on a host pool,
in order with the copy-on-write copies, before the forward pass; every iteration is checked against the reference, so
a block that came back from the host misplaced is caught; the records (host columns included) equal the simulator's
iteration by iteration; `sim validate` compares bytes (exactly) and link time; calibration measures the link.

On a machine without a GPU the kernels run in the Triton interpreter on a tiny model (a few seconds per replay); the
traces are the heads of the repository's traces, shortened to the tiny model's 128 tokens and all arriving at t = 0
(so the schedule does not depend on timing, see test_executor.py).
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from kernels.harness.calibrate import fit_host_link, measure_host_link  # noqa: E402
from kernels.harness.executor import copy_segments  # noqa: E402
from kernels.harness.host_pool import HostKVPool, waves  # noqa: E402
from kernels.harness.kv_pool import KVPool  # noqa: E402
from kernels.harness.replay import GpuRun, HarnessOptions, gpu_replay  # noqa: E402
from sim.allocators import REGISTRY  # noqa: E402
from sim.allocators.contiguous import ContiguousOracle  # noqa: E402
from sim.allocators.host_tier import SWAP_IN, SWAP_OUT, TO_GPU, TO_HOST, Transfer  # noqa: E402
from sim.cli.main import main  # noqa: E402
from sim.errors import UserError  # noqa: E402
from sim.hardware.gpus import GPUS  # noqa: E402
from sim.hardware.models import resolve_model  # noqa: E402
from sim.records.steps import HOST_COLUMNS  # noqa: E402
from sim.serving.replay import ReplayOptions, replay  # noqa: E402
from tests.harness._harness_testutil import BLOCK, DEVICE, DTYPE, TINY, trace_file  # noqa: E402

SCHEDULE_COLUMNS = ("running", "waiting", "prefill_tokens", "decode_tokens", "preempted", "free_bytes", *HOST_COLUMNS)


# --- the host pool alone ----------------------------------------------------------------------------------------------
def _pool(blocks=10, layers=3):
    pool = KVPool(layers, blocks, 4, 2, 8, torch.float32, "cpu")
    pool.kv.copy_(torch.randn_like(pool.kv))
    return pool


def _t(direction, gpu, host, kind=None):
    return Transfer(direction, kind or (SWAP_OUT if direction == TO_HOST else SWAP_IN), gpu, host, 1)


def test_transfers_run_in_order_in_waves_and_chunks():
    pool = _pool()
    orig = pool.kv.clone()
    hp = HostKVPool(pool, 6, staging_bytes=2 * HostKVPool.block_bytes_of(pool))  # chunks of 2 blocks
    assert hp.staging_blocks == 2 and hp.block_bytes == 3 * 2 * 4 * 2 * 8 * 4
    # out 3, 5, 7, 1 (host 0, 1, 2, 5); then host 2 back into GPU 3 (a second wave: host 2 again); then GPU 3 out
    # again (a third wave): host 2 ends with GPU 7's content, GPU 3 too
    tr = [
        _t(TO_HOST, 3, 0),
        _t(TO_HOST, 5, 1),
        _t(TO_HOST, 7, 2),
        _t(TO_HOST, 1, 5),
        _t(TO_GPU, 3, 2),
        _t(TO_HOST, 3, 4),
    ]
    assert [len(w) for w in waves(tr)] == [4, 1, 1]
    rec = hp.execute(tr)
    assert (rec.blocks_to_host, rec.blocks_to_gpu, rec.waves) == (5, 1, 3)
    assert rec.bytes_to_host == 5 * hp.block_bytes and hp.elapsed(rec) >= 0
    for gpu, host in ((3, 0), (5, 1), (7, 2), (1, 5), (7, 4)):
        assert torch.equal(hp.storage[host], orig[:, :, gpu])
    assert torch.equal(pool.kv[:, :, 3], orig[:, :, 7])
    # back, three at once (one chunk of 2, one of 1; host blocks 0 and 1 consecutive: one DMA)
    rec = hp.execute([_t(TO_GPU, 0, 0), _t(TO_GPU, 9, 1), _t(TO_GPU, 2, 5)])
    assert rec.dma_copies == 2
    for gpu, was in ((0, 3), (9, 5), (2, 1)):
        assert torch.equal(pool.kv[:, :, gpu], orig[:, :, was])
    with pytest.raises(ValueError, match="outside the pools"):
        hp.execute([_t(TO_GPU, 10, 0)])


def test_copy_segments_keep_the_recorded_order_where_blocks_meet():
    a, b, c = _t(TO_HOST, 6, 0), _t(TO_HOST, 7, 1), _t(TO_HOST, 7, 3)
    cow0, cow1, cow2 = (5, 8), (5, 7), (5, 6)
    # copies recorded between transfers that touch none of their blocks run after all of them: one segment
    assert copy_segments([a, b], [cow0], [("copy", cow0), ("transfer", a), ("transfer", b)]) == [([a, b], [cow0])]
    # a copy into block 7 recorded before 7's swap-out must run before it; b (7's earlier owner) before the copy
    ops = [("transfer", a), ("transfer", b), ("copy", cow1), ("copy", cow2), ("transfer", c)]
    assert copy_segments([a, b, c], [cow1, cow2], ops) == [([a, b], [cow1, cow2]), ([c], [])]
    # without the order: every transfer, then every copy; a transfer the order does not name (carried) goes first
    assert copy_segments([a, b, c], [cow1], None) == [([a, b, c], [cow1])]
    assert copy_segments([a, c], [cow1], [("copy", cow1), ("transfer", c)]) == [([a], [cow1]), ([c], [])]


# --- replays ----------------------------------------------------------------------------------------------------------
def _head(path, n):
    with open(path) as f:
        return [line.strip().split(",") for line in f.read().splitlines()[1 : 1 + n]]


def _swap_trace(tmp_path):
    """The first 5 requests of sharegpt-2k (one sequence each), prompts <= 24 and outputs <= 12 tokens."""
    rows = [(0, min(int(p), 24), min(int(o), 12)) for _, p, o in _head("traces/sharegpt-2k.csv", 5)]
    return trace_file(tmp_path, rows)


def _offload_trace(tmp_path):
    """The first 10 requests of shared-prefix-1k, lengths / 10 (25-token prefixes of 4 groups), outputs <= 6."""
    rows = [
        (0, int(p) // 10, min(int(o), 6), int(g), int(t) // 10)
        for _, p, o, g, t in _head("traces/shared-prefix-1k.csv", 10)
    ]
    return trace_file(tmp_path, rows, "arrival_s,prompt_tokens,output_tokens,prefix_group,prefix_tokens")


def _options(allocator, blocks, host_blocks=64, **kw):
    model = resolve_model(TINY)
    bpt = model.kv_bytes_per_token()
    return ReplayOptions(
        model=model,
        gpu=GPUS["h100-80gb"],
        allocator=allocator,
        block_size=BLOCK,
        kv_memory=blocks * BLOCK * bpt,
        host_kv_memory=host_blocks * BLOCK * bpt,
        scheduler="vllm-v1",
        max_num_seqs=8,
        max_num_batched_tokens=64,
        **kw,
    )


def _replay(trace, opts, hook=None):
    run = GpuRun.build(opts, HarnessOptions(dtype=DTYPE, device=DEVICE, check_every=1, warmup=False))
    if hook is not None:  # every executor of the run gets the (test-only) transfer hook
        make = run.executor

        def executor(*args, **kwargs):
            ex = make(*args, **kwargs)
            ex.transfer_hook = hook
            return ex

        run.executor = executor
    return gpu_replay(trace, run), replay(trace, opts)


def _matches(meas, pred):
    """Every iteration checked and within tolerance; the simulator's schedule and host columns, iteration by
    iteration; the bytes the executor moved are the policy's."""
    h = meas.summary["harness"]
    assert meas.checks["within_tolerance"] and not meas.checks["nan"], meas.checks
    assert meas.checks["iterations_checked"] == h["iterations"] == pred.summary["iterations"]
    for col in SCHEDULE_COLUMNS:
        np.testing.assert_array_equal(meas.steps[col], pred.steps[col], err_msg=col)
    assert meas.summary["requests"] == pred.summary["requests"]
    tier, moved = pred.summary["host_tier"], meas.summary["host_tier"]["measured"]
    assert (moved["bytes_to_host"], moved["bytes_to_gpu"]) == (tier["bytes_to_host"], tier["bytes_to_gpu"])
    assert moved["iterations_with_transfers"] == int(
        ((pred.steps["to_host_bytes"] + pred.steps["to_gpu_bytes"]) > 0).sum()
    )
    assert len(meas.transfer_s) == h["iterations"] and (meas.transfer_s >= 0).all()
    np.testing.assert_array_equal(
        meas.transfer_bytes.sum(axis=0), [moved["harness_bytes_to_host"], moved["harness_bytes_to_gpu"]]
    )


def _misplace(direction, field, blocks):
    """A transfer hook (test only): the first transfer of `direction` goes to the next of the `blocks` blocks of
    `field` (its GPU block or its host block)."""
    done = []

    def hook(transfers):
        out = []
        for t in transfers:
            if not done and t.direction == direction:
                done.append(t)
                ids = {"gpu_block": t.gpu_block, "host_block": t.host_block}
                ids[field] = (ids[field] + 1) % blocks
                t = Transfer(t.direction, t.kind, nbytes=t.nbytes, **ids)
            out.append(t)
        return out

    return hook


def test_swap_heavy_replay_round_trips_every_swapped_block(tmp_path):
    trace = _swap_trace(tmp_path)
    meas, pred = _replay(trace, _options("paged", 8, preemption="swap"))
    tier = pred.summary["host_tier"]
    assert tier["swap_outs"] == tier["swap_ins"] == 3 and tier["swap_fallbacks"] == 0
    _matches(meas, pred)


def test_a_swap_out_to_the_wrong_host_block_is_caught_at_swap_in(tmp_path):
    trace = _swap_trace(tmp_path)
    meas, pred = _replay(trace, _options("paged", 8, preemption="swap"), hook=_misplace(TO_HOST, "host_block", 64))
    assert not meas.checks["within_tolerance"] and meas.checks["failures"]
    np.testing.assert_array_equal(meas.steps["running"], pred.steps["running"])  # the same schedule, wrong content


def test_offload_heavy_replay_hits_blocks_on_the_host(tmp_path):
    trace = _offload_trace(tmp_path)
    meas, pred = _replay(trace, _options("paged-prefix-cache", 12))
    tier = pred.summary["host_tier"]
    assert tier["blocks_offloaded"] > 20 and tier["host_hit_blocks"] >= 5 and tier["swap_outs"] == 0
    _matches(meas, pred)
    assert meas.summary["host_tier"]["host_hit_blocks"] == tier["host_hit_blocks"]


@pytest.mark.parametrize("field", ["host_block", "gpu_block"])
def test_a_host_hit_from_or_into_the_wrong_block_is_caught(tmp_path, field):
    trace = _offload_trace(tmp_path)
    meas, _ = _replay(
        trace, _options("paged-prefix-cache", 12), hook=_misplace(TO_GPU, field, 12 if field == "gpu_block" else 64)
    )
    assert not meas.checks["within_tolerance"] and meas.checks["failures"]


def test_a_multi_sequence_request_swapped_out_by_its_own_append(tmp_path):
    """A request of several sequences that is its own preemption victim after some of its sequences took this
    iteration's token is recomputed, not swapped: a swap would keep that token's slot, which is never written (the
    check read it as NaN before the schedulers passed mid_append)."""
    trace = trace_file(
        tmp_path, [(0, 12, 6, 3), (0, 10, 6, 3), (0, 9, 6, 2)], "arrival_s,prompt_tokens,output_tokens,n"
    )
    meas, pred = _replay(trace, _options("paged", 7, host_blocks=32, preemption="swap"))
    _matches(meas, pred)


# --- refusals ---------------------------------------------------------------------------------------------------------
class HostedOracle(ContiguousOracle):
    """An allocator the simulator would give a host tier (it has attach_host) whose placements are extents."""

    name = "test-hosted-oracle"

    def attach_host(self, host):
        self.host = host

    def take_transfers(self):
        return []


def test_allocators_the_harness_cannot_run_a_host_tier_for_are_refused(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(REGISTRY, HostedOracle.name, HostedOracle)
    with pytest.raises(UserError, match="paged allocators of one block table"):
        GpuRun.build(_options(HostedOracle.name, 8), HarnessOptions(dtype=DTYPE, device=DEVICE, warmup=False))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,prompt_tokens,output_tokens\n0,9,4\n")
    argv = ["validate", str(path), "--model", TINY, "--device", "cpu", "--dtype", "fp32", "--kv-memory", "16KiB"]
    argv += ["--block-size", "8", "--out", str(tmp_path / "v"), "-q"]
    assert main([*argv, "--host-kv-memory", "1MiB", "--allocators", HostedOracle.name]) == 2
    assert "paged allocators of one block table" in capsys.readouterr().err
    assert main([*argv, "--host-kv-memory", "100TiB", "--preemption", "swap"]) == 2
    assert "more than half of this machine's" in capsys.readouterr().err


# --- the link: calibration, the profile, validation -------------------------------------------------------------------
def test_fit_host_link_recovers_latency_bandwidths_and_a_duplex_cap():
    lat, to_gpu, to_host, duplex = 20e-6, 50e9, 40e9, 60e9
    samples = []
    for n in (1, 4, 16, 64):
        b = n * 8 << 20
        samples.append({"direction": "to_gpu", "bytes_to_gpu": b, "bytes_to_host": 0, "time_s": lat + b / to_gpu})
        samples.append({"direction": "to_host", "bytes_to_gpu": 0, "bytes_to_host": b, "time_s": lat + b / to_host})
        samples.append({"direction": "both", "bytes_to_gpu": b, "bytes_to_host": b, "time_s": lat + 2 * b / duplex})
    link = fit_host_link(samples)
    assert link["latency_s"] == pytest.approx(lat, rel=1e-3)
    assert link["bytes_per_s_to_gpu"] == pytest.approx(to_gpu, rel=1e-6)
    assert link["bytes_per_s_to_host"] == pytest.approx(to_host, rel=1e-6)
    assert link["bytes_per_s_duplex"] == pytest.approx(duplex, rel=1e-3)
    assert link["fit"]["max_abs_rel_error"] < 1e-3
    # a full-duplex link: both at once as fast as the slower direction alone: no cap
    for s in samples:
        if s["direction"] == "both":
            s["time_s"] = lat + s["bytes_to_gpu"] / to_host
    assert fit_host_link(samples)["bytes_per_s_duplex"] is None


def test_measure_host_link_times_the_executor_copy_path():
    opts = _options("paged", 40)
    run = GpuRun.build(opts, HarnessOptions(dtype=DTYPE, device=DEVICE, warmup=False, check=False))
    lines = []
    link = measure_host_link(run, repeats=1, sizes=(1, 4, 64), log=lines.append)
    assert [s["blocks"] for s in link["samples"]] == [1, 1, 1, 4, 4, 4, 20, 20, 20]  # at most half the pool's blocks
    assert link["block_bytes"] == HostKVPool.block_bytes_of(run.pool)
    assert link["bytes_per_s_to_gpu"] > 0 and link["bytes_per_s_to_host"] > 0 and link["latency_s"] >= 0
    assert "host link to GPU" in lines[-1]


def _profile(path, link: dict | None):
    from sim.cost.profile import ProfileCostModel

    coefficients = dict.fromkeys(
        ("prefill_pairs", "decode_context", "decode_seqs", "prefill_seqs", "has_prefill", "has_decode"), 0.0
    )
    meta = {"model": "tiny"} | ({"host_link": link} if link else {})
    prof = ProfileCostModel(1e-3, 1e-6, [], [], coefficients, meta)
    path.write_text(json.dumps(prof.to_dict()))
    return str(path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter path")
def test_validate_compares_bytes_exactly_and_link_time(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    link = {"bytes_per_s_to_gpu": 2e9, "bytes_per_s_to_host": 1e9, "bytes_per_s_duplex": None, "latency_s": 1e-5}
    prof = _profile(tmp_path / "prof.json", link)
    trace = tmp_path / "swap.csv"
    rows = [(0, min(int(p), 24), min(int(o), 12)) for _, p, o in _head("traces/sharegpt-2k.csv", 5)]
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n" + "".join(f"{a},{p},{o}\n" for a, p, o in rows))
    out = tmp_path / "val"
    argv = ["validate", str(trace), "--model", TINY, "--gpu", "h100-80gb", "--device", "cpu", "--dtype", "fp32"]
    argv += ["--kv-memory", "16KiB", "--block-size", "8", "--scheduler", "vllm-v1", "--max-num-seqs", "8"]
    argv += ["--max-num-batched-tokens", "64", "--host-kv-memory", "128KiB", "--preemption", "swap"]
    assert main([*argv, "--cost-model", prof, "--check-every", "1", "--out", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    rec = json.loads((out / "validation.json").read_text())
    m, t = rec["metrics"], rec["targets"]
    for way in ("to_host", "to_gpu"):
        assert m[f"host_bytes_{way}"]["predicted"] == m[f"host_bytes_{way}"]["measured"] > 0
        assert t[f"host_bytes_{way}"] == {
            "target": "exact",
            "predicted": m[f"host_bytes_{way}"]["predicted"],
            "measured": m[f"host_bytes_{way}"]["measured"],
            "met": True,
        }
    assert m["host_transfer_s"]["predicted"] > 0 and m["host_transfer_s"]["measured"] > 0
    assert t["host_transfer_s"]["target_rel"] == 0.10
    # the prediction priced the copies with the profile's measured link, iteration by iteration comparable
    assert rec["config"]["host_link"]["bytes_per_s"] == 2e9 and rec["config"]["host_link"]["bytes_per_s_to_host"] == 1e9
    series = rec["series"]["host_transfer"]
    assert series["compared"] == rec["host_tier"]["measured"]["measured"]["iterations_with_transfers"] > 0
    assert series["predicted_s"] == pytest.approx(m["host_transfer_s"]["predicted"])
    assert rec["attention_check"]["within_tolerance"] and rec["metrics"]["batch_size_mean"]["rel_error"] == 0.0
    assert "host_bytes_to_host" in text and "host copies per iteration" in text
    timing = (out / "measured_timing.csv").read_text().splitlines()
    assert timing[0] == "execute_s,gpu_s,issue_s,static,transfer_s,moved_to_host_bytes,moved_to_gpu_bytes"
    moved = np.array([[int(x) for x in line.split(",")[-2:]] for line in timing[1:]])
    assert moved.sum(axis=0).tolist() == [
        rec["host_tier"]["measured"]["measured"]["harness_bytes_to_host"],
        rec["host_tier"]["measured"]["measured"]["harness_bytes_to_gpu"],
    ]
    steps = (out / "measured_steps.csv").read_text().splitlines()
    assert steps[0].endswith(",".join(HOST_COLUMNS)) and len(steps) == len(timing)


def test_a_calibrated_profile_prices_the_host_link_unless_one_is_given(tmp_path):
    from sim.cost.host_link import HostLink
    from sim.serving.replay import make_cost_model

    link = {"bytes_per_s_to_gpu": 50e9, "bytes_per_s_to_host": 40e9, "bytes_per_s_duplex": 60e9, "latency_s": 1e-5}
    opts = _options("paged", 8)
    opts.cost_model = _profile(tmp_path / "p.json", link)
    cost = make_cost_model(opts)
    assert (cost.link.bytes_per_s, cost.link.bytes_per_s_to_host, cost.link.bytes_per_s_duplex) == (50e9, 40e9, 60e9)
    # time = latency + max(to GPU / 50e9, to host / 40e9, both / 60e9)
    assert cost.link.time(50e9, 0) == pytest.approx(1 + 1e-5)
    assert cost.link.time(0, 40e9) == pytest.approx(1 + 1e-5)
    assert cost.link.time(30e9, 30e9) == pytest.approx(1 + 1e-5)  # the duplex cap binds
    assert cost.describe()["host_link"]["bytes_per_s_duplex"] == 60e9
    opts.host_link = "pcie5"  # an explicit --host-link wins
    assert make_cost_model(opts).link == HostLink("pcie5", 64e9)
    opts.host_link, opts.cost_model = None, _profile(tmp_path / "q.json", None)  # a profile without a link: the GPU's
    assert make_cost_model(opts).link.bytes_per_s == GPUS["h100-80gb"].host_link_bandwidth
    opts.cost_model = _profile(tmp_path / "r.json", {**link, "bytes_per_s_to_host": -1})
    with pytest.raises(UserError, match="host_link needs positive speeds"):
        make_cost_model(opts)
    # the nominal links keep their formula: max(bytes) / bandwidth
    assert HostLink("x", 10.0, 0.5).time(30, 20) == 0.5 + 30 / 10.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_host_commands_of_record_sh_exit_2_without_a_gpu(capsys):
    """record.sh PART=host's commands (less the profile it writes first) get as far as the GPU check."""
    model = ["--model", "llama-3.1-8b", "--max-model-len", "8192", "--gpu", "h100-80gb"]
    assert main(["calibrate", *model, "--budget-s", "50", "--passes", "2"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    v1 = ["--scheduler", "vllm-v1", "--max-num-seqs", "256", "--max-num-batched-tokens", "2048", "-q"]
    for argv in (
        ["traces/sharegpt-2k.csv", "--kv-memory", "768MiB", "--allocators", "paged", "--preemption", "swap"]
        + ["--host-kv-memory", "2GiB"],
        ["traces/long-prefix-2k.csv", "--kv-memory", "4GiB", "--allocators", "paged-prefix-cache"]
        + ["--host-kv-memory", "8GiB"],
    ):
        assert main(["validate", *argv, *v1, *model, "--time-limit", "400"]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err


def test_copies_of_an_iteration_that_runs_nothing_run_with_the_next(tmp_path, monkeypatch):
    """Every request is preempted (swapped) and the last one, alone, cannot be placed: it is rejected, the iteration
    runs nothing, and the other request's swap-out happens in the next iteration (sim.serving.engine.Engine._carried),
    on the GPU as in the simulation; that request is swapped back in later and checked."""
    from sim.serving.intake import Intake

    carried = []
    reject_head = Intake.reject_head

    def spy(self, batch):
        out = reject_head(self, batch)
        carried.append(len(batch.transfers))
        return out

    monkeypatch.setattr(Intake, "reject_head", spy)
    rows = [(0, 8, 21, 3), (0, 5, 14, 1)]
    trace = trace_file(tmp_path, rows, "arrival_s,prompt_tokens,output_tokens,n")
    opts = _options("paged", 6, host_blocks=32, preemption="swap")
    opts.scheduler = "vllm-v0"
    meas, pred = _replay(trace, opts)
    assert carried == [2, 2]  # the GPU replay and the simulation (in that order) each carried 2 block copies
    assert pred.summary["host_tier"]["swap_ins"] >= 1 and pred.summary["requests"]["rejected"] == 1
    _matches(meas, pred)
