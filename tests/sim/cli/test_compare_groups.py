"""`sim compare` with an allocator that takes KV-cache groups: the per-group table and the concurrency line after the
usual table, their figures recomputed from compare.json, the per-group steps.csv columns, and bad input (exit 2)."""

from __future__ import annotations

import csv
import json

import pytest

from sim.cli.main import main
from sim.cli.tables import concurrency_gain, full_attention_baseline
from sim.records.steps import STEP_COLUMNS, group_columns

# 30 requests of 300-500 prompt and 100-200 output tokens, 10 ms apart: more than 100 paged blocks of gpt-oss-20b
TRACE = "arrival_s,prompt_tokens,output_tokens\n" + "".join(
    f"{i * 0.01:.2f},{300 + 7 * i % 200},{100 + 13 * i % 100}\n" for i in range(30)
)
# 100 pages of 16 slots x 24,576 B (gpt-oss-20b: 2 groups of 12 layers x 2,048 B): 50 paged blocks of 49,152 B
KV = str(100 * 16 * 24_576)
GPT_OSS = ["--model", "gpt-oss-20b", "--max-model-len", "2048", "--gpu", "h100-80gb", "--kv-memory", KV, "-q"]


def write(tmp_path, text=TRACE):
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return str(path)


def run_compare(tmp_path, capsys, allocators: str, *extra: str):
    out = tmp_path / "cmp"
    code = main(["compare", write(tmp_path), "--allocators", allocators, *GPT_OSS, "--out", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err, out


def test_the_groups_table_and_the_concurrency_line(tmp_path, capsys) -> None:
    code, printed, _, out = run_compare(tmp_path, capsys, "paged,paged-hybrid")
    assert code == 0
    summaries = {s["allocator"]: s for s in json.loads((out / "compare.json").read_text())}
    paged, hybrid = summaries["paged"], summaries["paged-hybrid"]
    assert "kv_groups" not in paged and len(hybrid["kv_groups"]) == 2

    lines = printed.splitlines()
    title = lines.index("KV-cache groups (mean over iterations, as fractions of the KV capacity):")
    assert lines[title + 1].split() == [
        "allocator",
        "group",
        "kind",
        "layers",
        "KV",
        "B/token",
        "token",
        "states",
        "reserved",
        "internal",
        "frag",
        "window",
        "freed",
    ]
    sliding = lines[title + 3].split()
    full = lines[title + 4].split()
    g0, g1 = hybrid["kv_groups"]
    assert sliding[:5] == ["paged-hybrid", "0", "sliding_window(128)", "12", "24,576"]
    assert full[:5] == ["paged-hybrid", "1", "full", "12", "24,576"]
    assert sliding[5:] == [
        f"{g0['kv_memory'][k]:.1%}" for k in ("token_states", "reserved", "internal_fragmentation", "window_freed")
    ]
    assert full[8] == "0.0%"  # a full group lets nothing go

    # the concurrency line: mean batch of paged-hybrid / mean batch of paged, from the summaries
    gain = hybrid["batch_size"]["mean"] / paged["batch_size"]["mean"]
    assert concurrency_gain(hybrid, paged) == gain
    assert gain > 1  # memory binds: the window lets more sequences run
    line = next(x for x in lines if x.startswith("paged-hybrid held "))
    assert line.startswith(
        f"paged-hybrid held {gain:.2f}x the concurrent sequences of paged (every layer's KV kept for every token; "
        f"an MLA model's latent in both) in this replay: "
    )
    assert f"mean batch {hybrid['batch_size']['mean']:.2f} vs {paged['batch_size']['mean']:.2f}" in line
    capacity = next(x for x in lines if x.startswith("  KV capacity: "))
    # paged: 50 blocks x 16 = 800 tokens; paged-hybrid: 100 pages x 16 = 1,600 slots, 800 tokens in each group;
    # the window keeps at most ceil((128 + 15) / 16) = 9 pages of a sequence
    assert capacity == (
        "  KV capacity: paged 800 tokens; paged-hybrid 1,600 page slots in 2 groups (800 tokens in each; a sliding "
        "group keeps at most 9 pages per sequence)"
    )
    # the design line: the trace's prompts sum to 9,000 + 2,845 (7i mod 200 over i < 30: 7 x 435 - 200) and its
    # outputs to 3,000 + 1,455 (13i mod 100: 13 x 435 - 100 x 42), 16,300 tokens, a mean of 543.3 -> 544 tokens,
    # 34 blocks of 16. paged-hybrid: 34 pages in the full group + 9 in the sliding one = 43 of its 100 -> 2 requests;
    # full attention (49,152 B per token): 50 blocks, 34 per request -> 1.
    design = next(x for x in lines if x.startswith("KV design: "))
    assert design.startswith(
        "KV design: the KV-cache groups hold 2.00x the concurrent requests of full-attention KV: 2 vs 1 requests of "
        "544 tokens (this trace's mean prompt + output) at once in 37.50 MiB; one takes 16.12 MiB vs 25.50 MiB "
        "(full attention: 49,152 B per token per GPU"
    )
    table_end = next(i for i, x in enumerate(lines) if x.startswith("e2e p99 (s)"))
    assert table_end < title < lines.index(design) < lines.index(line) < lines.index(capacity)  # after the usual table

    # steps.csv: the per-group columns for paged-hybrid only
    with open(out / "paged" / "steps.csv") as f:
        assert next(csv.reader(f)) == list(STEP_COLUMNS)
    with open(out / "paged-hybrid" / "steps.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [*STEP_COLUMNS, *group_columns(2)]
    for row in rows:
        for c in ("token_states", "reserved", "internal_fragmentation"):
            assert int(row[f"g0_{c}_bytes"]) + int(row[f"g1_{c}_bytes"]) == int(row[f"{c}_bytes"])


def test_without_the_baseline_the_line_says_what_to_add(tmp_path, capsys) -> None:
    code, printed, _, _ = run_compare(tmp_path, capsys, "paged-hybrid-prefix-cache")
    assert code == 0
    assert full_attention_baseline("paged-hybrid-prefix-cache") == "paged-prefix-cache"
    assert "paged-hybrid-prefix-cache: add paged-prefix-cache to --allocators to compare it with full-attention KV" in (
        printed
    )


def test_allocators_without_groups_print_no_group_lines(tmp_path, capsys) -> None:
    code, printed, _, _ = run_compare(tmp_path, capsys, "paged,contiguous-oracle")
    assert code == 0
    assert "KV-cache groups" not in printed and "concurrent sequences" not in printed


def test_json_output_carries_the_groups(tmp_path, capsys) -> None:
    code, printed, err, _ = run_compare(tmp_path, capsys, "paged,paged-hybrid", "--json")
    assert code == 0
    summaries = json.loads(printed)
    assert [len(s.get("kv_groups", ())) for s in summaries] == [0, 2]
    assert "KV-cache groups" not in printed + err


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--model", "gpt-oss-20b", "--max-model-len", "100"],
            "gpt-oss-20b: the sliding window of 128 tokens is larger than the max model length 100",
        ),
        (
            ["--model", "gpt-oss-20b", "--gpu", "a100-80gb", "--kv-cache-dtype", "fp8"],
            "an fp8 KV cache needs a GPU with fp8 support; a100-80gb has none",
        ),
        (
            ["--model", "deepseek-v3", "--gpu", "a100-80gb", "--kv-cache-dtype", "fp8", "--tp", "8"],
            "an fp8 KV cache needs a GPU with fp8 support; a100-80gb has none",
        ),
    ],
)
def test_bad_input_exits_2(tmp_path, capsys, args, message) -> None:
    path = write(tmp_path)
    out = tmp_path / "never"
    for command in (
        ["compare", path, "--allocators", "paged,paged-hybrid"],
        ["replay", path, "--allocator", "paged-hybrid"],
    ):
        assert main([*command, *args, "--kv-memory", "1GiB", "--out", str(out), "-q"]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()  # refused before anything was written
