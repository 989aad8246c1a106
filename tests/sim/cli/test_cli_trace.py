"""`sim trace ...` and the trace options of `sim replay`, end to end through sim.cli.main.main."""

import glob
import json
import os

import pytest

from sim.cli.main import main


def write(tmp_path, text, name="trace.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def run_ok(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def run_err(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.out
    assert "Traceback" not in captured.err
    return captured.err.strip()


# --- stats on the shipped Azure traces: the figures of traces/PROVENANCE.md -----------------------------------------
@pytest.mark.parametrize(
    "name, rows, prompt, output, rate, longest",
    [
        ("azure-llm-2023-code.csv", "8,819", "2,048", "28", "2.6", "7,841"),
        ("azure-llm-2023-conv.csv", "19,366", "1,155", "211", "5.5", "14,089"),
    ],
)
def test_stats_on_azure_traces_match_provenance(repo_root, capsys, name, rows, prompt, output, rate, longest):
    out = run_ok(capsys, ["trace", "stats", os.path.join(repo_root, "traces", name)])
    lines = out.splitlines()
    assert f"rows: {rows}" in lines
    assert f"arrival rate: {rate} requests/s  (= (rows - 1) / duration)" in lines
    table = {
        line.split()[0]: line.split()[1:] for line in lines if line.split()[:1] in (["prompt"], ["output"], ["total"])
    }
    assert table["prompt"][0] == prompt  # mean
    assert table["output"][0] == output  # mean
    assert table["total"][-1] == longest  # max of prompt + output
    stats = json.loads(run_ok(capsys, ["trace", "stats", os.path.join(repo_root, "traces", name), "--json"]))
    assert stats["rows"] == int(rows.replace(",", ""))
    assert stats["total_tokens"]["max"] == int(longest.replace(",", ""))


# --- generate --------------------------------------------------------------------------------------------------
def test_generate_then_stats(tmp_path, capsys):
    out = str(tmp_path / "g.csv")
    text = run_ok(
        capsys,
        ["trace", "generate", "--lengths", "sharegpt", "--rate", "2", "--count", "300", "--seed", "0", "-o", out],
    )
    assert text.startswith(f"wrote {out}: 300 requests over ")
    with open(out) as f:
        assert f.readline().strip() == "arrival_s,prompt_tokens,output_tokens"
    stats = json.loads(run_ok(capsys, ["trace", "stats", out, "--json"]))
    assert stats["rows"] == 300 and stats["format"] == "native"
    # same command, same file
    again = str(tmp_path / "h.csv")
    run_ok(
        capsys,
        ["trace", "generate", "--lengths", "sharegpt", "--rate", "2", "--count", "300", "--seed", "0", "-o", again],
    )
    assert open(out).read() == open(again).read()


def test_generate_duration_and_gamma(tmp_path, capsys):
    out = str(tmp_path / "g.csv")
    run_ok(
        capsys,
        [
            "trace",
            "generate",
            "--lengths",
            "alpaca",
            "--arrivals",
            "gamma",
            "--cv",
            "2",
            "--rate",
            "5",
            "--duration",
            "1min",
            "-o",
            out,
        ],
    )
    stats = json.loads(run_ok(capsys, ["trace", "stats", out, "--json"]))
    assert stats["duration_s"] < 60


def test_generate_optional_columns_and_prefix_stats(tmp_path, capsys):
    out = str(tmp_path / "g.csv")
    run_ok(
        capsys,
        [
            "trace",
            "generate",
            "--lengths",
            "fixed:100,10",
            "--count",
            "5",
            "--prefix-groups",
            "1",
            "--prefix-tokens",
            "40",
            "--n",
            "2",
            "-o",
            out,
        ],
    )
    assert open(out).readline().strip() == "arrival_s,prompt_tokens,output_tokens,n,prefix_group,prefix_tokens"
    text = run_ok(capsys, ["trace", "stats", out])
    # one group of 5 requests with 140-token prompts: the 4 after the first share 40 tokens each
    assert "shareable prefix tokens: 160 of 700 prompt tokens (22.9%, from prefix groups)" in text
    assert "n: mean 2.00, max 2" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--arrivals", "gamma", "--count", "5"],
            "sim: error: gamma arrivals need --cv (the coefficient of variation of inter-arrival times; 1 is Poisson)",
        ),
        (["--count", "5", "--duration", "10"], "sim: error: give --count or --duration, not both"),
        ([], "sim: error: give --count N (requests) or --duration D (e.g. 10min)"),
        (
            ["--count", "5", "--lengths", "zipf"],
            "sim: error: unknown --lengths 'zipf': expected sharegpt, alpaca, "
            "resample:TRACE (pairs drawn from a trace's rows), or fixed:PROMPT,OUTPUT",
        ),
        (
            ["--count", "5", "--prefix-tokens", "10"],
            "sim: error: --prefix-groups and --prefix-tokens go together, both positive",
        ),
    ],
)
def test_generate_errors(tmp_path, capsys, args, message):
    assert run_err(capsys, ["trace", "generate", *args, "-o", str(tmp_path / "g.csv")]) == message


def test_generate_resample_bad_source_reports_file_and_line(tmp_path, capsys):
    src = write(tmp_path, "arrival_s,prompt_tokens,output_tokens\n0,10,5\n1,0,5\n")
    err = run_err(
        capsys, ["trace", "generate", "--lengths", f"resample:{src}", "--count", "5", "-o", str(tmp_path / "g.csv")]
    )
    assert err == f"sim: error: {src}:3: prompt_tokens must be a positive integer, got '0'"


def test_output_is_not_overwritten_without_force(tmp_path, capsys):
    out = write(tmp_path, "keep me\n", "g.csv")
    assert (
        run_err(capsys, ["trace", "generate", "--count", "3", "-o", out])
        == f"sim: error: {out} exists; use --force to overwrite it"
    )
    assert open(out).read() == "keep me\n"
    run_ok(capsys, ["trace", "generate", "--count", "3", "-o", out, "--force"])


# --- slice and scale -------------------------------------------------------------------------------------------
TIMED = "arrival_s,prompt_tokens,output_tokens\n10,1,1\n11,2,1\n13,3,1\n16,4,1\n20,5,1\n"


def test_slice_window_and_first(tmp_path, capsys):
    src = write(tmp_path, TIMED)
    out = str(tmp_path / "s.csv")
    run_ok(capsys, ["trace", "slice", src, "--start", "1", "--end", "6", "-o", out])
    assert open(out).read() == "arrival_s,prompt_tokens,output_tokens\n0,2,1\n2,3,1\n"
    run_ok(capsys, ["trace", "slice", src, "--first", "2", "--keep-times", "-o", out, "--force"])
    assert open(out).read() == "arrival_s,prompt_tokens,output_tokens\n10,1,1\n11,2,1\n"
    assert (
        run_err(capsys, ["trace", "slice", src, "-o", out, "--force"])
        == "sim: error: say what to keep: --start/--end (a time window), --first N and/or --skip N"
    )


def test_scale_factor_and_rate(tmp_path, capsys):
    src = write(tmp_path, TIMED)
    out = str(tmp_path / "s.csv")
    run_ok(capsys, ["trace", "scale", src, "--factor", "2", "-o", out])
    assert open(out).read() == "arrival_s,prompt_tokens,output_tokens\n10,1,1\n10.5,2,1\n11.5,3,1\n13,4,1\n15,5,1\n"
    # rate (5 - 1) / 10 s = 0.4; to 0.8 is a factor of 2
    run_ok(capsys, ["trace", "scale", src, "--to-rate", "0.8", "-o", out, "--force"])
    assert open(out).read() == "arrival_s,prompt_tokens,output_tokens\n10,1,1\n10.5,2,1\n11.5,3,1\n13,4,1\n15,5,1\n"


def test_scale_to_stdout(tmp_path, capsys):
    src = write(tmp_path, TIMED)
    code = main(["trace", "scale", src, "--factor", "0.5", "-o", "-"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out == "arrival_s,prompt_tokens,output_tokens\n10,1,1\n12,2,1\n16,3,1\n22,4,1\n30,5,1\n"
    assert captured.err.startswith("wrote -: 5 requests")


def test_slice_mooncake_keeps_hash_ids(tmp_path, capsys):
    src = write(
        tmp_path,
        '{"timestamp": 0, "input_length": 600, "output_length": 2, "hash_ids": [0, 1]}\n'
        '{"timestamp": 500, "input_length": 100, "output_length": 3, "hash_ids": [0]}\n',
        "m.jsonl",
    )
    out = str(tmp_path / "s.jsonl")
    run_ok(capsys, ["trace", "slice", src, "--skip", "1", "-o", out])
    assert json.loads(open(out).read()) == {"timestamp": 0, "input_length": 100, "output_length": 3, "hash_ids": [0]}
    assert run_err(capsys, ["trace", "slice", src, "--skip", "1", "-o", str(tmp_path / "s.csv")]) == (
        "sim: error: this trace carries Mooncake hash ids, which the native CSV cannot hold: write it to a .jsonl "
        "file (Mooncake format) instead"
    )


# --- replay with every format ----------------------------------------------------------------------------------
def replay(tmp_path, capsys, path, *extra):
    out = run_ok(capsys, ["replay", path, "--quiet", "--out", str(tmp_path / "out"), "--force", *extra])
    with open(tmp_path / "out" / "summary.json") as f:
        return out, json.load(f)


def test_replay_length_only_needs_and_uses_rate(tmp_path, capsys):
    path = write(tmp_path, "num_prefill_tokens,num_decode_tokens\n100,10\n200,20\n50,5\n")
    assert run_err(capsys, ["replay", path, "-q", "--out", str(tmp_path / "o")]) == (
        f"sim: error: {path}:1: this trace has lengths but no arrival times (columns num_prefill_tokens, "
        f"num_decode_tokens): give --rate REQUESTS_PER_S to generate Poisson arrivals"
    )
    out, summary = replay(tmp_path, capsys, path, "--rate", "2", "--seed", "1")
    assert "trace note: arrivals generated: Poisson at 2 requests/s, seed 1" in out
    assert summary["requests"]["total"] == 3 and summary["requests"]["completed"] == 3


def test_replay_rejects_rate_for_timed_trace(tmp_path, capsys):
    path = write(tmp_path, TIMED)
    assert run_err(capsys, ["replay", path, "-q", "--rate", "3"]) == (
        f"sim: error: --rate generates arrivals for length-only traces, but {path} is a native trace with its own "
        f"arrival times (to change its rate, use `sim trace scale`)"
    )


def test_replay_burstgpt_with_model_filter(tmp_path, capsys):
    path = write(
        tmp_path,
        "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
        "5,ChatGPT,472,18,490,Conversation log\n45,ChatGPT,1087,0,1087,Conversation log\n"
        "118,GPT-4,417,96,513,API log\n",
    )
    out, _ = replay(tmp_path, capsys, path)
    assert "trace: " + path + " (burstgpt, 2 requests over 113.0 s)" in out
    assert "trace note: skipped 1 failed requests (0 response tokens)" in out
    out, _ = replay(tmp_path, capsys, path, "--model-filter", "GPT-4")
    assert "(burstgpt, 1 requests over 0.0 s)" in out


@pytest.mark.parametrize(
    "name, text",
    [
        ("v.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,100,10\n0.5,200,20\n"),
        (
            "m.jsonl",
            '{"timestamp": 0, "input_length": 600, "output_length": 2, "hash_ids": [0, 1]}\n'
            '{"timestamp": 500, "input_length": 100, "output_length": 3, "hash_ids": [0]}\n',
        ),
        (
            "a.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:00.0090000,100,3\n"
            "2024-05-10 00:00:01.5090000,200,4\n",
        ),
    ],
)
def test_replay_other_formats(tmp_path, capsys, name, text):
    path = write(tmp_path, text, name)
    out, _ = replay(tmp_path, capsys, path)
    assert "2 requests over" in out


@pytest.mark.parametrize(
    "name, text, message",
    [
        (
            "v.csv",
            "arrived_at,num_prefill_tokens,num_decode_tokens\n0,100,10\n0.5,abc,20\n",
            "{p}:3: num_prefill_tokens must be a positive integer, got 'abc'",
        ),
        ("l.csv", "num_prefill_tokens,num_decode_tokens\n100,10\n200\n", "{p}:3: expected 2 fields, got 1"),
        (
            "b.csv",
            "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n5,ChatGPT,x,18,490,API log\n",
            "{p}:2: Request tokens must be an integer >= 0, got 'x'",
        ),
        (
            "m.jsonl",
            '{"timestamp": 0, "input_length": 600, "output_length": 2}\n{"timestamp": 1, "input_length": -4, '
            '"output_length": 2}\n',
            "{p}:2: input_length must be a positive integer, got -4",
        ),
        (
            "a.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:00.0090000,100,3\n"
            "2024-05-10 00:00:01.5090000,200,4.5\n",
            "{p}:3: GeneratedTokens must be a positive integer, got '4.5'",
        ),
    ],
)
def test_replay_malformed_rows_exit_2_with_file_and_line(tmp_path, capsys, name, text, message):
    path = write(tmp_path, text, name)
    extra = ["--rate", "1"] if name == "l.csv" else []
    assert run_err(
        capsys, ["replay", path, "-q", "--out", str(tmp_path / "o"), *extra]
    ) == "sim: error: " + message.format(p=path)


def test_every_shipped_trace_replays(repo_root, tmp_path, capsys):
    """Each shipped trace reads and replays; its first 150 requests keep the test fast (the full replays are run
    by hand, see traces/README.md)."""
    paths = sorted(glob.glob(os.path.join(repo_root, "traces", "*.csv")))
    assert len(paths) >= 8
    for path in paths:
        head = str(tmp_path / ("head-" + os.path.basename(path)))
        run_ok(capsys, ["trace", "slice", path, "--first", "150", "-o", head])
        out, summary = replay(tmp_path, capsys, head)
        assert "150 requests" in out and summary["requests"]["total"] == 150
