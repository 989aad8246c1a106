"""`sim sweep`: the grid, its table, resuming after an interruption, and the same table from local processes and
from a local Ray instance (skipped when Ray is not installed: `pip install 'kvsim[ray]'`)."""

from __future__ import annotations

import csv
import json
import os

import pytest

from sim.cli.main import main
from sim.errors import UserError
from sim.report import sweep as sweep_mod
from sim.report.sweep import run_sweep
from sim.report.sweep_spec import cells_of, load_spec

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TRACE = os.path.join(ROOT, "traces", "sharegpt-2k.csv")

SPEC = f"""
name = "tiny"
traces = ["{TRACE}"]
models = ["llama-2-7b"]
gpus = ["a100-40gb", "a100-80gb"]
allocators = ["paged", "contiguous-max"]
block_sizes = [16, 32]
rates = [2, 6, "native"]
slo = "ttft_p99=1s,tpot_p99=50ms"
first = 80

[options]
max_num_seqs = 64
"""


def write_spec(tmp_path, text: str = SPEC) -> str:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return str(path)


def read_table(path: str) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_grid_order_and_table(tmp_path):
    spec = load_spec(write_spec(tmp_path))
    cells = cells_of(spec)
    assert len(cells) == 1 * 1 * 2 * 2 * 2 * 3
    # product order: gpus, then allocators, then block sizes, then rates
    assert [(c.gpu, c.allocator, c.block_size, c.rate) for c in cells[:4]] == [
        ("a100-40gb", "paged", 16, 2.0),
        ("a100-40gb", "paged", 16, 6.0),
        ("a100-40gb", "paged", 16, "native"),
        ("a100-40gb", "paged", 32, 2.0),
    ]
    assert len({c.key for c in cells}) == len(cells)
    out = str(tmp_path / "out")
    assert main(["sweep", spec.path, "--out", out, "--jobs", "2", "-q"]) == 0
    rows = read_table(os.path.join(out, "results.csv"))
    assert len(rows) == 24
    for r, c in zip(rows, cells):
        assert (r["gpu"], r["allocator"], int(r["block_size"])) == (c.gpu, c.allocator, c.block_size)
        assert int(r["requests"]) == 80
        assert r["slo_met"] in ("True", "False")
        # native: the first 80 requests' own rate, (80 - 1) / their span
        if c.rate != "native":
            assert float(r["rate_rps"]) == c.rate
        total = sum(
            float(r[f"kv_{k}"])
            for k in ("token_states", "reserved", "internal_fragmentation", "external_fragmentation", "free")
        )
        assert total == pytest.approx(1.0, abs=1e-6)
    assert os.path.getsize(os.path.join(out, "report.html")) > 1_000_000  # plotly.js inlined


def test_resumes_without_recomputing_finished_cells(tmp_path, monkeypatch):
    spec = load_spec(write_spec(tmp_path))
    out = str(tmp_path / "out")
    real = sweep_mod.run_cell
    calls = []

    def interrupted(spec_, cell, trace):
        if len(calls) == 5:
            raise KeyboardInterrupt  # the session ends after 5 cells
        calls.append(cell.index)
        return real(spec_, cell, trace)

    monkeypatch.setattr(sweep_mod, "run_cell", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, out, jobs=1)
    assert len(os.listdir(os.path.join(out, "cells"))) == 5
    calls.clear()
    monkeypatch.setattr(sweep_mod, "run_cell", lambda s, c, t: (calls.append(c.index), real(s, c, t))[1])
    run = run_sweep(spec, out, jobs=1)
    assert run.resumed == 5 and run.computed == 19
    assert sorted(calls) == list(range(5, 24))
    # a rerun computes nothing; the rows are the ones a fresh run gives
    calls.clear()
    again = run_sweep(spec, out, jobs=1)
    assert calls == [] and again.resumed == 24
    fresh = run_sweep(spec, str(tmp_path / "fresh"), jobs=1)
    assert again.rows == fresh.rows


def test_a_changed_cell_is_recomputed(tmp_path):
    spec = load_spec(write_spec(tmp_path))
    keys = {c.key for c in cells_of(spec)}
    changed = load_spec(write_spec(tmp_path, SPEC.replace("max_num_seqs = 64", "max_num_seqs = 32")))
    assert keys.isdisjoint({c.key for c in cells_of(changed)})


def test_host_tier_options_reach_the_paged_cells_only(tmp_path):
    from sim.report.sweep_spec import cell_options, cells_of

    text = (
        f"traces = ['{TRACE}']\nallocators = ['paged', 'contiguous-max']\n[options]\nhost_kv_memory = '1GiB'\n"
        "host_link = 'pcie5'\npreemption = 'swap'"
    )
    spec = load_spec(write_spec(tmp_path, text))
    paged, contiguous = (cell_options(spec, c) for c in cells_of(spec))
    assert (paged.host_kv_memory, paged.host_link, paged.preemption) == (2**30, "pcie5", "swap")
    assert (contiguous.host_kv_memory, contiguous.host_link, contiguous.preemption) == (None, None, "recompute")


def test_spec_options_reach_the_replay(tmp_path):
    from sim.report.sweep_spec import base_options

    text = f"traces = ['{TRACE}']\ngpus = ['h100-80gb']\n[options]\nkv_cache_dtype = 'fp8'\nscheduler = 'vllm-v0'"
    spec = load_spec(write_spec(tmp_path, text))
    options = base_options(spec, "llama-2-7b", "h100-80gb")  # fp8 KV needs fp8 (not the A100)
    assert options.model.kv_bytes_per_token() == 2 * 32 * 32 * 128 * 1  # fp8: one byte per element
    assert options.scheduler == "vllm-v0"


@pytest.mark.parametrize(
    "text,message",
    [
        ("traces = ['nope.csv']", "does not exist"),
        (f"traces = ['{TRACE}']\nrates = [0]", "positive numbers"),
        (f"traces = ['{TRACE}']\nblock_sizes = [16, 16]", "twice"),
        (f"traces = ['{TRACE}']\ncolour = 'red'", "unknown key"),
        (f"traces = ['{TRACE}']\n[options]\nwarp = 9", "unknown option"),
        (f"traces = ['{TRACE}']\nmodels = ['gpt-17']", "unknown model"),
        (f"traces = ['{TRACE}']\nslo = 'fast'", "cannot read SLO"),
        (f"traces = ['{TRACE}']\n[options]\nkv_cache_dtype = 'int4'", "kv_cache_dtype must be one of"),
        (f"traces = ['{TRACE}']\n[options]\nscheduler = 'v9'", "unknown scheduler"),
        (f"traces = ['{TRACE}']\n[options]\npreemption = 'swap'", "--preemption swap needs a host tier"),
        (f"traces = ['{TRACE}']\n[options]\npreemption = 'drop'", "preemption must be one of recompute, swap"),
        (f"traces = ['{TRACE}']\n[options]\nhost_kv_memory = true", "host_kv_memory must be a size"),
        (f"traces = ['{TRACE}']\n[options]\nhost_kv_memory = '1GiB'\nhost_link = 0", "--host-link speed must be"),
        ("traces = [", "not valid TOML"),
    ],
)
def test_bad_specs(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        load_spec(write_spec(tmp_path, text))


def test_local_and_ray_give_identical_tables(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'kvsim[ray]'): Ray sweep test skipped")
    spec_path = write_spec(tmp_path, SPEC.replace('gpus = ["a100-40gb", "a100-80gb"]', 'gpus = ["a100-40gb"]'))
    local, ray_out = str(tmp_path / "local"), str(tmp_path / "ray")
    assert main(["sweep", spec_path, "--out", local, "--jobs", "2", "-q"]) == 0
    assert main(["sweep", spec_path, "--out", ray_out, "--ray", "--jobs", "2", "-q"]) == 0
    with open(os.path.join(local, "results.csv")) as a, open(os.path.join(ray_out, "results.csv")) as b:
        table_local, table_ray = a.read(), b.read()
    assert table_local == table_ray
    assert len(table_local.splitlines()) == 1 + 12
    report = open(os.path.join(ray_out, "report.html")).read()
    assert "ray (local instance, 2 CPUs)" in report
    cell = json.load(open(os.path.join(ray_out, "cells", os.listdir(os.path.join(ray_out, "cells"))[0])))
    assert set(cell) >= {"key", "index", "row"}


CLUSTER_SPEC = f"""
traces = ["{TRACE}"]
allocators = ["paged"]
rates = [12]
replicas = [1, 3]
routers = ["round-robin", "least-outstanding"]
first = 90
"""


def test_cluster_cells(tmp_path):
    from sim.cluster.run import ClusterOptions, simulate_cluster
    from sim.cluster.summary import cluster_summary
    from sim.report.sweep_spec import cell_options
    from sim.traces.readers import read_trace
    from sim.traces.tools import scale_trace, slice_trace

    spec = load_spec(write_spec(tmp_path, CLUSTER_SPEC))
    cells = cells_of(spec)
    assert [(c.replicas, c.router) for c in cells] == [
        (1, "round-robin"),
        (1, "least-outstanding"),
        (3, "round-robin"),
        (3, "least-outstanding"),
    ]
    one_replica = load_spec(
        write_spec(
            tmp_path,
            CLUSTER_SPEC.replace("replicas = [1, 3]\n", "").replace(
                'routers = ["round-robin", "least-outstanding"]\n', ""
            ),
        )
    )
    assert cells_of(one_replica)[0].key == cells[0].key  # one replica, default router: the key of a plain cell
    out = str(tmp_path / "out")
    assert main(["sweep", write_spec(tmp_path, CLUSTER_SPEC), "--out", out, "--jobs", "1", "-q"]) == 0
    rows = read_table(os.path.join(out, "results.csv"))
    assert [(r["replicas"], r["router"]) for r in rows] == [(str(c.replicas), c.router) for c in cells]
    # a cluster row holds the figures of `sim cluster` for the same replay
    trace = scale_trace(slice_trace(read_trace(TRACE), first=90), rate=12)
    summary = cluster_summary(
        simulate_cluster(trace, ClusterOptions(cell_options(spec, cells[3]), 3, "least-outstanding"))
    )
    assert float(rows[3]["ttft_p99_s"]) == pytest.approx(summary["latency_s"]["ttft"]["p99"], rel=1e-9)
    assert float(rows[3]["load_imbalance"]) == pytest.approx(summary["load_imbalance"]["all"]["requests"], rel=1e-9)
    assert int(rows[3]["completed"]) == summary["requests"]["completed"] == 90
    # the one-replica rows are the same replay whatever the router
    assert rows[0]["ttft_p99_s"] == rows[1]["ttft_p99_s"] and float(rows[0]["load_imbalance"]) == 1.0


def test_cluster_specs_refused(tmp_path):
    with pytest.raises(UserError, match="positive integers"):
        load_spec(write_spec(tmp_path, f"traces = ['{TRACE}']\nreplicas = [0]"))
    with pytest.raises(UserError, match="unknown router"):
        load_spec(write_spec(tmp_path, f"traces = ['{TRACE}']\nrouters = ['nearest']"))


def test_cluster_sweep_local_and_ray_identical(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'kvsim[ray]'): Ray sweep test skipped")
    spec_path = write_spec(tmp_path, CLUSTER_SPEC)
    local, ray_out = str(tmp_path / "local"), str(tmp_path / "ray")
    assert main(["sweep", spec_path, "--out", local, "--jobs", "2", "-q"]) == 0
    assert main(["sweep", spec_path, "--out", ray_out, "--ray", "--jobs", "2", "-q"]) == 0
    with open(os.path.join(local, "results.csv")) as a, open(os.path.join(ray_out, "results.csv")) as b:
        assert a.read() == b.read()
