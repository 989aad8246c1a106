"""`sim cluster` and `sim routers` from the command line: outputs, and bad input (exit status 2, a clear message)."""

from __future__ import annotations

import csv
import json
import os

import pytest

from sim.cli.main import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TRACE = os.path.join(ROOT, "traces", "shared-prefix-1k.csv")


def test_cluster_writes_its_files(tmp_path, capsys):
    out = str(tmp_path / "run")
    args = ["cluster", TRACE, "--replicas", "3", "--router", "least-outstanding", "--out", out, "-q"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "cluster: 3 replicas, router least-outstanding" in printed
    assert "load imbalance (max / mean): all: requests" in printed
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["cluster"]["replicas"] == 3
    replicas = summary["replicas"]["all"]
    assert [r["replica"] for r in replicas] == [0, 1, 2]
    assert sum(r["routed_requests"] for r in replicas) == summary["requests"]["total"] == 1000
    with open(os.path.join(out, "requests.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1000 and {r["replica"] for r in rows} == {"0", "1", "2"}
    counts = {str(r["replica"]): r["routed_requests"] for r in replicas}
    assert all(sum(1 for row in rows if row["replica"] == k) == v for k, v in counts.items())
    with open(os.path.join(out, "replicas.csv")) as f:
        assert len(list(csv.DictReader(f))) == 3


def test_disaggregated_cluster(tmp_path, capsys):
    out = str(tmp_path / "pd")
    args = ["cluster", TRACE, "--prefill-replicas", "1", "--decode-replicas", "2", "--kv-link", "ib-400g"]
    assert main([*args, "--out", out, "-q"]) == 0
    assert "KV transfers: 1,000" in capsys.readouterr().out
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert set(summary["replicas"]) == {"prefill", "decode"}
    assert summary["kv_transfer"]["link_bandwidth_bytes_per_s"] == 50e9


def test_routers_lists_every_router(capsys):
    from sim.cluster.routers import ROUTERS

    assert main(["routers"]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in ROUTERS)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--replicas", "0"], "argument --replicas: expected a positive integer"),
        (["--replicas", "-3"], "argument --replicas: expected a positive integer"),
        (["--router", "closest"], "unknown router 'closest'"),
        (["--prefill-replicas", "2"], "needs --prefill-replicas and --decode-replicas"),
        (["--prefill-replicas", "1", "--decode-replicas", "1"], "give --kv-link"),
        (["--replicas", "2", "--kv-link", "nvlink"], "applies to a disaggregated cluster"),
        (["--kv-link-latency", "1ms"], "--kv-link-latency applies with --kv-link"),
        (["--prefill-replicas", "1", "--decode-replicas", "1", "--kv-link", "0"], "positive number of bytes/s"),
        (["--prefill-replicas", "1", "--decode-replicas", "1", "--kv-link", "wire"], "neither a link"),
        (
            ["--prefill-replicas", "1", "--decode-replicas", "1", "--kv-link", "nvlink", "--scheduler", "vllm-v0"],
            "modelled for vllm-v1",
        ),
    ],
)
def test_bad_cluster_options_exit_2(tmp_path, capsys, extra, message):
    try:
        code = main(["cluster", TRACE, "--out", str(tmp_path / "x"), "-q", *extra])
    except SystemExit as exc:  # argparse's own checks
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err
