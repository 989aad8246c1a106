"""`sim report --gpus`: one report across GPUs, with prices, headroom and the cost of the recommended deployment.

The plan's figures (sim.report.plan) are checked against numbers worked out by hand in the comments; a tiny report
across two GPUs end to end; every bad input exits 2 with a message that says what is wrong.
"""

from __future__ import annotations

import json
import math
import os

import pytest

from sim.cli.main import main
from sim.cli.report import gpu_items
from sim.errors import UserError
from sim.report import plan
from sim.report.build import ConfigResult, recommend

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TRACE = os.path.join(ROOT, "traces", "sharegpt-2k.csv")


# --- the plan's figures, by hand ----------------------------------------------------------------------------------
def test_replicas_and_headroom_by_hand():
    # capacity 3.25 req/s, target 10 req/s, F = 1: 10 / 3.25 = 3.08 -> 4 replicas;
    # headroom = 1 - 10 / (4 x 3.25) = 1 - 10 / 13 = 3 / 13 = 0.230769...
    assert plan.replicas_needed(10, 3.25) == 4
    assert plan.headroom(10, 4, 3.25) == pytest.approx(3 / 13)
    # F = 0.8: 10 / (3.25 x 0.8) = 10 / 2.6 = 3.85 -> still 4 replicas, the same headroom
    assert plan.replicas_needed(10, 3.25, 0.8) == 4
    # F = 0.75: 10 / (3.25 x 0.75) = 10 / 2.4375 = 4.10 -> 5 replicas; headroom = 1 - 10 / 16.25 = 0.384615...
    assert plan.replicas_needed(10, 3.25, 0.75) == 5
    assert plan.headroom(10, 5, 3.25) == pytest.approx(1 - 10 / 16.25)
    assert plan.headroom(10, 5, 3.25) >= 1 - 0.75  # headroom >= 1 - F always
    # an exact fit: target 12, capacity 3, F = 1: 12 / 3 = 4 exactly -> 4 replicas (not 5), headroom 0
    assert plan.replicas_needed(12, 3.0) == 4
    assert plan.headroom(12, 4, 3.0) == pytest.approx(0.0)
    # the same at F = 0.8: 12 / 2.4 = 5 exactly -> 5 replicas; headroom = 1 - 12 / 15 = 0.2
    assert plan.replicas_needed(12, 3.0, 0.8) == 5
    assert plan.headroom(12, 5, 3.0) == pytest.approx(0.2)
    # a tiny target still needs one replica: 0.1 / 50 -> 1; headroom 1 - 0.1 / 50 = 0.998
    assert plan.replicas_needed(0.1, 50.0) == 1
    assert plan.headroom(0.1, 1, 50.0) == pytest.approx(0.998)
    # capacity 0 (the SLOs are never met): no replica count, no headroom
    assert plan.replicas_needed(10, 0.0) is None
    assert plan.headroom(10, None, 0.0) is None


def test_cost_per_hour_and_per_million_tokens_by_hand():
    # 5 replicas x 2 GPUs (tp=2) x $3.50 per GPU-hour = $35.00 per hour
    assert plan.cost_per_hour(5, 2, 3.50) == pytest.approx(35.0)
    # 4 replicas x 1 GPU x $2.99 = $11.96
    assert plan.cost_per_hour(4, 1, 2.99) == pytest.approx(11.96)
    assert plan.cost_per_hour(4, 1, None) is None  # not priced
    assert plan.cost_per_hour(None, 1, 2.99) is None  # not attainable
    # 1,000 output tokens over 8 requests of the trace (rejected ones included) = 125 tokens per request
    assert plan.output_tokens_per_request(1000, 8) == pytest.approx(125.0)
    assert plan.output_tokens_per_request(1000, 0) is None
    # $35 / hour at 12 req/s x 250 tokens per request: 12 x 250 x 3,600 = 10,800,000 tokens per hour,
    # so $35 / 10.8 M tokens x 1e6 = $3.2407... per million output tokens
    assert plan.cost_per_million_output_tokens(35.0, 12, 250) == pytest.approx(35 / 10.8)
    # $11.96 / hour at 20 req/s x 230 tokens: 20 x 230 x 3,600 = 16,560,000 tokens/h -> $0.72222... per million
    assert plan.cost_per_million_output_tokens(11.96, 20, 230) == pytest.approx(11.96 / 16.56)
    assert plan.cost_per_million_output_tokens(None, 12, 250) is None
    assert plan.cost_per_million_output_tokens(35.0, 12, 0) is None


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan"), float("inf")])
def test_max_utilization_outside_0_1_is_refused(bad):
    with pytest.raises(UserError, match=r"--max-utilization must be in \(0, 1\]"):
        plan.replicas_needed(10, 3.0, bad)


def test_parse_prices():
    assert plan.parse_prices(["H100-80gb=2.99", "a100-80gb=$1.79"]) == {"h100-80gb": 2.99, "a100-80gb": 1.79}
    assert plan.parse_prices(None) == {}
    for bad, message in [
        ("h100-80gb", "expected GPU=DOLLARS_PER_HOUR"),
        ("=3", "expected GPU=DOLLARS_PER_HOUR"),
        ("h100-80gb=cheap", "is not a number"),
        ("h100-80gb=0", "must be a positive number"),
        ("h100-80gb=-2", "must be a positive number"),
        ("h100-80gb=nan", "must be a positive number"),
    ]:
        with pytest.raises(UserError, match=message):
            plan.parse_prices([bad])
    with pytest.raises(UserError, match="twice"):
        plan.parse_prices(["h200=3", "H200=4"])


def test_gpus_syntax():
    assert gpu_items(["h100-80gb,h200", "a100-80gb"]) == ["h100-80gb", "h200", "a100-80gb"]
    dims = "memory=48GB,bandwidth=864e9,bf16_flops=362e12,name=mine"
    assert gpu_items([f"h100-80gb, h200;{dims}"]) == ["h100-80gb", "h200", dims]
    assert gpu_items([f"{dims};l4"]) == [dims, "l4"]


def _result(label: str, gpus: int | None, capacity: float, cost: float | None) -> ConfigResult:
    return ConfigResult(
        "paged", 16, label, capacity, (capacity, None), [], False, False, False, gpus, gpus, 1, 16, gpu=label,
        cost_per_hour=cost,
    )  # fmt: skip


def test_recommendation_by_cost_when_every_gpu_is_priced():
    cheap_many = _result("a100", 6, 1.0, 6 * 1.79)  # $10.74
    dear_few = _result("h100", 3, 2.0, 3 * 2.99)  # $8.97: the cheapest
    rec, how = recommend([cheap_many, dear_few, _result("x", None, 0.0, None)])
    assert (rec.label, how) == ("h100", "cost")
    # one GPU unpriced: fewest GPUs instead
    rec, how = recommend([cheap_many, _result("h200", 2, 3.0, None)])
    assert (rec.label, how) == ("h200", "gpus")
    assert recommend([_result("x", None, 0.0, None)]) == (None, "gpus")


# --- end to end ------------------------------------------------------------------------------------------------------
def run(tmp_path, *extra: str, name: str = "r.html") -> int:
    argv = [
        "report",
        TRACE,
        "--model",
        "llama-2-7b",
        "--first",
        "150",
        "--slo",
        "ttft_p99=500ms,tpot_p99=60ms",
        "--target-rate",
        "25",
        "--precision",
        "0.1",
        "--allocators",
        "paged",
        "-q",
        "--validation-dir",
        str(tmp_path / "validation"),
        "-o",
        str(tmp_path / name),
        *extra,
    ]
    return main(argv)


def test_report_across_two_gpus_with_prices(tmp_path, capsys):
    args = ("--gpus", "a100-40gb,l40s", "--price", "a100-40gb=1.50", "--price", "L40S=0.90")
    assert run(tmp_path, *args, "--max-utilization", "0.8", "--jobs", "2") == 0
    out = capsys.readouterr().out
    data = json.load(open(tmp_path / "r-data" / "report.json"))
    assert [g["name"] for g in data["gpus"]] == ["a100-40gb", "l40s"]
    assert [g["price_per_hour"] for g in data["gpus"]] == [1.5, 0.9]
    assert data["max_utilization"] == 0.8
    results = {r["gpu"]: r for r in data["results"]}
    assert set(results) == {"a100-40gb", "l40s"}
    # the 150 requests' output tokens per request (none rejected, one sequence each): the trace's mean
    from sim.traces.readers import read_trace
    from sim.traces.tools import slice_trace

    trace = slice_trace(read_trace(TRACE), first=150)
    mean_out = float(trace.output_tokens.sum()) / 150
    for gpu, r in results.items():
        price = {"a100-40gb": 1.5, "l40s": 0.9}[gpu]
        cap = r["capacity_rps"]
        assert cap > 0
        assert r["replicas"] == math.ceil(25 / (cap * 0.8) - 1e-9)
        assert r["headroom"] == pytest.approx(1 - 25 / (r["replicas"] * cap))
        assert r["headroom"] >= 0.2 - 1e-9
        assert r["cost_per_hour_usd"] == pytest.approx(r["replicas"] * price)
        assert r["rejected"] == 0 and r["output_tokens_per_request"] == pytest.approx(mean_out, rel=1e-6)
        assert r["cost_per_million_output_tokens_usd"] == pytest.approx(
            r["cost_per_hour_usd"] / (25 * mean_out * 3600) * 1e6
        )
        assert f"{gpu} / paged / 16" in out
    cheapest = min(results.values(), key=lambda r: (r["cost_per_hour_usd"], r["gpus"]))
    h = data["headline"]
    assert (h["gpu"], h["recommended_by"]) == (cheapest["gpu"], "cost")
    assert h["cost_per_hour_usd"] == pytest.approx(cheapest["cost_per_hour_usd"])
    assert (h["rejected"], h["requests"], h["rejected_share"]) == (0, 150, 0.0)
    for word in ("recommendation:", "cost: $", "per million output tokens", "headroom:", "rejected: 0 of 150"):
        assert word in out
    page = open(tmp_path / "r.html").read()
    assert "Headroom" in page and "per million output tokens" in page and "l40s" in page
    from sim.report.browser import check_page, find_chromium

    if find_chromium() is not None:  # every chart of a page of several GPUs drawn, no JavaScript error
        check = check_page(str(tmp_path / "r.html"))
        assert check.errors == 0 and check.rendered == check.expected == 6, check.status_text


def test_one_gpu_priced_by_its_spec_or_by_price(tmp_path, capsys):
    dims = "memory=40GiB,bandwidth=1.555e12,bf16_flops=312e12,price=2,name=my-a100"
    assert run(tmp_path, "--gpu", dims) == 0
    data = json.load(open(tmp_path / "r-data" / "report.json"))
    assert data["gpus"][0]["price_source"] == "gpu spec" and data["gpus"][0]["price_per_hour"] == 2
    assert data["headline"]["cost_per_hour_usd"] == pytest.approx(2 * data["headline"]["gpus"])
    # --price overrides the spec's price; labels name no GPU with one GPU
    assert run(tmp_path, "--gpu", dims, "--price", "my-a100=3", "--force") == 0
    data = json.load(open(tmp_path / "r-data" / "report.json"))
    assert data["gpus"][0]["price_source"] == "--price"
    assert data["headline"]["cost_per_hour_usd"] == pytest.approx(3 * data["headline"]["gpus"])
    assert data["headline"]["config"] == "paged / 16"


def test_json_prints_report_json(tmp_path, capsys):
    assert run(tmp_path, "--gpus", "a100-40gb;l40s", "--json") == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)  # stdout is the JSON alone
    assert printed == json.load(open(tmp_path / "r-data" / "report.json"))
    for key in ("gpus", "results", "recommendation", "headline", "probes", "slos", "target_rate_rps"):
        assert key in printed
    assert "recommendation:" in captured.err  # the headline goes to stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--gpus", "a100-40gb,b300"], "--gpus: unknown GPU 'b300'"),
        (["--gpus", "a100-40gb,l40s", "--price", "h200=3"], "h200 is not a GPU of this report"),
        (["--gpus", "a100-40gb", "--price", "a100-40gb=0"], "the price must be a positive number"),
        (["--gpus", "a100-40gb", "--price", "a100-40gb=-1.5"], "the price must be a positive number"),
        (["--gpus", "a100-40gb", "--price", "a100-40gb"], "expected GPU=DOLLARS_PER_HOUR"),
        (["--gpus", "a100-40gb", "--price", "a100-40gb=1", "--price", "A100-40GB=2"], "twice"),
        (["--max-utilization", "0"], r"--max-utilization must be in \(0, 1\]"),
        (["--max-utilization", "1.2"], r"--max-utilization must be in \(0, 1\]"),
        (["--max-utilization", "-0.5"], r"--max-utilization must be in \(0, 1\]"),
        (["--gpu", "a100-40gb", "--gpus", "l40s"], "not both"),
        (["--gpus", "a100-40gb,A100-40GB"], "names a100-40gb twice"),
        (["--gpus", ";"], "--gpus needs at least one GPU"),
    ],
)
def test_bad_inputs_exit_2_with_a_message(tmp_path, capsys, extra, message):
    assert run(tmp_path, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("sim: error: ")
    import re

    assert re.search(message, err), err
    assert not os.path.exists(tmp_path / "r.html")  # refused before any work
