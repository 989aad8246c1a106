"""The host tier from the command line: the files it adds, and bad input (exit status 2, a clear message)."""

from __future__ import annotations

import csv
import json
import os

import pytest

from sim.cli.main import main
from sim.records.steps import HOST_COLUMNS, STEP_COLUMNS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TRACE = os.path.join(ROOT, "traces", "parallel-sampling-1k.csv")
# llama-2-7b: 512 KiB per token x 16 = 8 MiB per block; 64 MiB of KV is 8 blocks
SMALL = ["--kv-memory", "64MiB", "--gpu", "h100-80gb", "-q"]


def run_err(capsys, argv) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.out
    assert "Traceback" not in captured.err
    return captured.err.strip()


def head(tmp_path, n=40) -> str:
    path = tmp_path / "head.csv"
    with open(TRACE) as f:
        path.write_text("".join(line for _, line in zip(range(n + 1), f)))
    return str(path)


def test_replay_with_swap_writes_the_tier(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["replay", head(tmp_path), "--allocator", "paged", *SMALL, "--out", str(out)]
    assert main([*argv, "--host-kv-memory", "1GiB", "--preemption", "swap"]) == 0
    printed = capsys.readouterr().out
    summary = json.load(open(out / "summary.json"))
    tier = summary["host_tier"]
    # the printed table ends with the tier's rows, as summary.json has them
    lines = {line[:28].strip(): line[28:].split() for line in printed.splitlines()}
    assert lines["swaps out / in"] == [f"{tier['swap_outs']:,}", "/", f"{tier['swap_ins']:,}"]
    assert lines["GiB to host"] == [f"{tier['bytes_to_host'] / 2**30:,.1f}"]
    # 1 GiB of 8 MiB blocks: 128; the H100's host link: PCIe Gen5 x16, 64e9 B/s each way
    assert tier["capacity_blocks"] == 128 and tier["capacity_bytes"] == 2**30
    assert tier["link"]["bytes_per_s"] == 64e9 and tier["preemption"] == "swap"
    assert summary["requests"]["preemptions"] > 0 and tier["swap_outs"] > 0
    # every swap out moves whole blocks, and what came back had gone out
    assert tier["bytes_to_host"] % (8 * 2**20) == 0 and tier["bytes_to_gpu"] <= tier["bytes_to_host"]
    with open(out / "steps.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [*STEP_COLUMNS, *HOST_COLUMNS]
    assert sum(int(r["to_host_bytes"]) for r in rows) == tier["bytes_to_host"]
    assert sum(int(r["to_gpu_bytes"]) for r in rows) == tier["bytes_to_gpu"]
    assert all(int(r["host_swapped_bytes"]) <= 2**30 for r in rows)


def test_compare_gives_the_tier_to_paged_allocators_only(tmp_path, capsys) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", head(tmp_path), "--allocators", "paged,contiguous-max", *SMALL, "--out", str(out)]
    assert main([*argv, "--host-kv-memory", "1GiB", "--preemption", "swap"]) == 0
    capsys.readouterr()
    summaries = {s["allocator"]: s for s in json.load(open(out / "compare.json"))}
    assert "host_tier" in summaries["paged"] and "host_tier" not in summaries["contiguous-max"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--preemption", "swap"], "--preemption swap needs a host tier to swap to: give --host-kv-memory"),
        (["--host-link", "pcie5"], "--host-link needs a host tier: give --host-kv-memory"),
        (
            ["--host-kv-memory", "1GiB", "--allocator", "contiguous-max"],
            "a host tier (--host-kv-memory, --preemption swap) works with paged and paged-prefix-cache, not "
            "contiguous-max",
        ),
        (
            ["--host-kv-memory", "1GiB", "--allocator", "paged-hybrid"],
            "a host tier (--host-kv-memory, --preemption swap) works with paged and paged-prefix-cache, not "
            "paged-hybrid",
        ),
        (
            ["--host-kv-memory", "4MiB"],
            "--host-kv-memory 4,194,304 B is smaller than one KV block (8,388,608 B: 16 tokens x 524,288 B)",
        ),
        (["--host-kv-memory", "1GiB", "--host-link", "0"], "--host-link speed must be a positive number"),
        (["--host-kv-memory", "1GiB", "--host-link=-3e9"], "--host-link speed must be a positive number"),
        (["--host-kv-memory", "1GiB", "--host-link", "nvlink9"], "--host-link must be one of pcie4, pcie5, c2c"),
        (
            ["--host-kv-memory", "1GiB", "--gpu", "memory=80GiB,bandwidth=3e12,bf16_flops=1e15,name=nolink"],
            "a host tier needs a link: nolink has no host_link_bandwidth; give --host-link",
        ),
    ],
)
def test_bad_host_tiers_exit_2(tmp_path, capsys, extra, message) -> None:
    argv = ["replay", head(tmp_path, 5), *SMALL, "--out", str(tmp_path / "o"), *extra]
    assert message in run_err(capsys, argv)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--allocators", "contiguous-max"], "--host-kv-memories needs a paged allocator in --allocators"),
        (["--host-kv-memory", "1GiB"], "give --host-kv-memory (one host tier) or --host-kv-memories (several)"),
    ],
)
def test_bad_report_host_tiers_exit_2(tmp_path, capsys, extra, message) -> None:
    argv = ["report", head(tmp_path, 5), *SMALL, "--out", str(tmp_path / "r"), "--host-kv-memories", "0,1GiB"]
    assert message in run_err(capsys, [*argv, *extra])


def test_report_host_tiers_need_a_size(tmp_path, capsys) -> None:
    argv = ["report", head(tmp_path, 5), *SMALL, "--out", str(tmp_path / "r"), "--host-kv-memories", "0"]
    assert "--host-kv-memories needs at least one host tier size" in run_err(capsys, argv)


def test_cluster_refuses_a_host_tier(tmp_path, capsys) -> None:
    argv = ["cluster", head(tmp_path, 5), *SMALL, "--replicas", "2", "--out", str(tmp_path / "c")]
    assert "sim cluster does not model host tiers yet" in run_err(capsys, [*argv, "--host-kv-memory", "1GiB"])
