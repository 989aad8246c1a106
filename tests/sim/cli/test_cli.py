"""The `sim` command end to end: outputs, files, and every bad-input case with its message and exit status."""

import json
import os

import pytest

from sim.cli.main import main

GOOD = "arrival_s,prompt_tokens,output_tokens\n0,100,20\n0.5,200,10\n1.0,50,5\n"


def write(tmp_path, text, name="trace.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "{p}: the file is empty"),
        ("arrival_s,prompt_tokens,output_tokens\n", "{p}:1: no requests after the header"),
        (
            "arrival_s,prompt_tokens,output_tokens\n0,10,5\n1,10,-3\n",
            "{p}:3: output_tokens must be a positive integer, got '-3'",
        ),
        (
            "arrival_s,prompt_tokens,output_tokens\n0,ten,5\n",
            "{p}:2: prompt_tokens must be a positive integer, got 'ten'",
        ),
        (
            "arrival_s,prompt_tokens,output_tokens\nsoon,10,5\n",
            "{p}:2: arrival_s must be a number of seconds, got 'soon'",
        ),
        (
            "arrival_s,prompt_tokens,output_tokens\n0,10,5\n2,10,5\n1,10,5\n",
            "{p}:4: arrival_s must not decrease: 1 after 2",
        ),
        ("arrival_s,prompt_tokens,output_tokens\n0,10\n", "{p}:2: expected 3 fields, got 2"),
        ("arrival_s,prompt_tokens,output_tokens\n0,0,5\n", "{p}:2: prompt_tokens must be a positive integer, got '0'"),
        (
            "arrival_s,prompt_tokens,output_tokens\n0,2.5,5\n",
            "{p}:2: prompt_tokens must be a positive integer, got '2.5'",
        ),
    ],
)
def test_bad_traces_exit_2_with_file_and_line(tmp_path, capsys, text, message):
    path = write(tmp_path, text)
    assert main(["replay", path, "--quiet", "--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == "sim: error: " + message.format(p=path)
    assert "Traceback" not in captured.err


def test_missing_trace_file(tmp_path, capsys):
    assert main(["replay", str(tmp_path / "nope.csv"), "-q"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_unrecognised_header(tmp_path, capsys):
    path = write(tmp_path, "arrival_s,prompt_tokens\n0,10\n")
    assert main(["replay", path, "-q"]) == 2
    assert capsys.readouterr().err.startswith(f"sim: error: {path}:1: unrecognised header (arrival_s, prompt_tokens)")


def test_missing_column_named(tmp_path, capsys):
    path = write(tmp_path, "TIMESTAMP,ContextTokens\n2023-11-16 18:17:03.9799600,5\n")
    assert main(["replay", path, "--format", "azure", "-q"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"sim: error: {path}:1: missing column 'GeneratedTokens' (found: TIMESTAMP, ContextTokens)"
    )


def test_bad_options_exit_2(tmp_path, capsys):
    path = write(tmp_path, GOOD)
    assert main(["replay", path, "--model", "gpt-9", "-q"]) == 2
    assert "unknown model 'gpt-9'" in capsys.readouterr().err
    assert main(["replay", path, "--kv-memory", "lots", "-q"]) == 2
    assert "cannot read size 'lots'" in capsys.readouterr().err
    assert main(["replay", path, "--allocator", "nonesuch", "-q"]) == 2
    assert "unknown allocator 'nonesuch'" in capsys.readouterr().err
    assert main(["replay", path, "--allocator", "no.such.module:X", "-q"]) == 2
    assert "cannot import allocator module" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse's own errors also exit 2
        main(["replay", path, "--block-size", "0"])
    assert exc.value.code == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--scheduler", "vllm-v7"], "unknown scheduler 'vllm-v7'"),
        (["--scheduler", "no.such.module:X"], "cannot import scheduler module"),
        (["--scheduler", "vllm-v0", "--long-prefill-token-threshold", "64"], "applies to vllm-v1, not the vllm-v0"),
        (["--scheduler", "vllm-v1", "--max-num-batched-tokens", "8"], "smaller than one KV block (16 tokens)"),
        (["--scheduler", "vllm-v1", "--max-num-batched-tokens", "100"], "smaller than --max-num-seqs 256"),
    ],
)
def test_bad_scheduler_options_exit_2(tmp_path, capsys, args, message):
    path = write(tmp_path, GOOD)
    for command in (["replay", path], ["compare", path]):
        assert main([*command, *args, "-q"]) == 2
        assert message in capsys.readouterr().err


def test_replay_writes_summary_steps_requests(tmp_path, capsys):
    path = write(tmp_path, GOOD)
    out = tmp_path / "run"
    assert main(["replay", path, "--model", "opt-13b", "--kv-memory", "12GiB", "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert (
        "KV cache: 983 blocks x 16 tokens = 15,728 tokens (12.00 GiB); max concurrency at 2,048 tokens per "
        "request: 7.68x"
    ) in printed
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "allocator",
        "block_size",
        "model",
        "gpu",
        "kv_capacity_bytes",
        "kv_capacity_tokens",
        "requests",
        "duration_s",
        "throughput",
        "batch_size",
        "kv_memory",
        "latency_s",
    ):
        assert key in summary
    assert summary["kv_capacity_tokens"] == 15_728
    assert summary["kv_capacity_bytes"] == 15_728 * 819_200
    assert summary["requests"] == {"total": 3, "completed": 3, "rejected": 0, "preemptions": 0}
    assert sum(summary["kv_memory"].values()) == pytest.approx(1.0)
    for metric in ("ttft", "tpot", "e2e"):
        assert set(summary["latency_s"][metric]) == {"mean", "p50", "p90", "p99"}
    steps = (out / "steps.csv").read_text().splitlines()
    # 20 output tokens for the longest request: one iteration per token, with arrivals landing mid-replay
    assert len(steps) - 1 == summary["iterations"] >= 20
    requests = (out / "requests.csv").read_text().splitlines()
    assert len(requests) == 4
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]


def test_existing_out_dir_needs_force(tmp_path, capsys):
    path = write(tmp_path, GOOD)
    out = str(tmp_path / "run")
    assert main(["replay", path, "--out", out, "-q"]) == 0
    assert main(["replay", path, "--out", out, "-q"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["replay", path, "--out", out, "-q", "--force"]) == 0


def test_default_out_dir_is_new_each_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, GOOD)
    assert main(["replay", path, "-q"]) == 0
    assert main(["replay", path, "-q"]) == 0
    assert len(os.listdir(tmp_path / "runs")) == 2


def test_user_allocator_class_plugs_in(tmp_path, capsys, repo_root):
    # two 100-token prompts with 40 output tokens each in 15 blocks (240 tokens): they grow to 9 blocks each
    path = write(tmp_path, "arrival_s,prompt_tokens,output_tokens\n0,100,40\n0,100,40\n")
    out = tmp_path / "run"
    ref = tmp_path / "ref"
    common = ["--out", str(out), "-q", "--kv-memory", "120MiB"]
    assert main(["replay", path, "--allocator", "tests.sim.allocators.user_allocator:MyPaged", *common]) == 0
    assert main(["replay", path, "--allocator", "paged", *common[2:], "--out", str(ref)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    expected = json.loads((ref / "summary.json").read_text())
    assert summary["allocator"] == "my-paged"
    assert summary["requests"]["preemptions"] > 0
    for key in ("requests", "iterations", "batch_size", "kv_memory", "latency_s"):
        assert summary[key] == expected[key]


def test_compare_side_by_side(tmp_path, capsys):
    path = write(tmp_path, GOOD)
    out = tmp_path / "cmp"
    assert main(["compare", path, "--allocators", "contiguous-max,paged", "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "contiguous-max" in printed and "paged" in printed
    summaries = json.loads((out / "compare.json").read_text())
    assert [s["allocator"] for s in summaries] == ["contiguous-max", "paged"]
    assert (out / "paged" / "steps.csv").exists()


def test_listing_commands(capsys):
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "opt-13b" in text and "819,200" in text and "mistral-7b" in text
    assert main(["gpus"]) == 0
    assert "h100-80gb" in capsys.readouterr().out
    assert main(["allocators"]) == 0
    text = capsys.readouterr().out
    for name in ("contiguous-max", "contiguous-pow2", "contiguous-oracle", "paged"):
        assert name in text
    assert main(["schedulers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("vllm-v0 ") and lines[1].startswith("vllm-v1 ") and lines[1].endswith("(default)")


def test_ci_runs_the_readme_test_command(repo_root):
    readme = open(os.path.join(repo_root, "README.md")).read()
    ci = open(os.path.join(repo_root, ".ci", "run")).read()
    marker = "<!-- test-command -->"
    assert marker in readme, "README must mark its test command"
    command = readme.split(marker)[1].split("```")[1].strip().splitlines()[-1]
    assert command in ci


def test_compare_applies_family_options_to_their_family(tmp_path, capsys):
    # --address-space is a contiguous allocator's option and --no-sharing a paged one's: compare gives each to its own
    # family, as sweep does, where replay refuses the option for the other family
    path = write(tmp_path, GOOD)
    out = tmp_path / "cmp"
    args = ["compare", path, "--allocators", "paged,contiguous-pow2", "--address-space", "first-fit"]
    assert main([*args, "--no-sharing", "-q", "--out", str(out)]) == 0
    config = {s["allocator"]: s["config"] for s in json.loads((out / "compare.json").read_text())}
    assert (config["paged"]["address_space"], config["paged"]["sharing"]) == (None, False)
    assert (config["contiguous-pow2"]["address_space"], config["contiguous-pow2"]["sharing"]) == ("first-fit", True)
    assert main(["replay", path, "--allocator", "paged", "--address-space", "first-fit", "-q"]) == 2
    assert "applies to contiguous allocators" in capsys.readouterr().err
