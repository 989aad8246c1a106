"""The CSV trace formats on small files written here: detection, values (by hand), and malformed rows with their
exact `file:line: reason`; the reader registry."""

import numpy as np
import pytest

from sim.errors import TraceError, UserError
from sim.traces.readers import READERS, detect_format, read_trace


def write(tmp_path, text, name="trace.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def error_of(path, **kwargs):
    with pytest.raises(TraceError) as info:
        read_trace(path, **kwargs)
    return str(info.value)


# --- native ------------------------------------------------------------------------------------------------------
def test_native_basic_and_request_ids(tmp_path):
    path = write(tmp_path, "arrival_s,prompt_tokens,output_tokens,request_id\n0,100,20,a\n0.5,200,10,b\n1.25,50,5,c\n")
    t = read_trace(path)
    assert t.format == "native"
    assert t.arrival_s.tolist() == [0.0, 0.5, 1.25]
    assert t.prompt_tokens.tolist() == [100, 200, 50]
    assert t.output_tokens.tolist() == [20, 10, 5]
    assert t.request_id == ["a", "b", "c"]
    assert t.prompt_tokens.dtype == np.int64 and t.arrival_s.dtype == np.float64
    assert t.columns == {} and t.block_hashes is None


def test_native_blank_lines_crlf_and_whole_floats(tmp_path):
    # Line numbers count blank lines; CRLF endings work; 12.0 reads as 12.
    path = write(tmp_path, "arrival_s,prompt_tokens,output_tokens\r\n\r\n0,12.0,5\r\n , ,\r\n1,7,3\r\n")
    t = read_trace(path)
    assert t.prompt_tokens.tolist() == [12, 7]
    bad = write(tmp_path, "arrival_s,prompt_tokens,output_tokens\n\n0,12,5\n\n1,x,3\n", "bad.csv")
    assert error_of(bad) == f"{bad}:5: prompt_tokens must be a positive integer, got 'x'"


def test_native_quoted_csv_goes_through_csv_module(tmp_path):
    path = write(tmp_path, 'arrival_s,prompt_tokens,output_tokens,request_id\n0,10,5,"a,b"\n1,"20",6,c\n')
    t = read_trace(path)
    assert t.request_id == ["a,b", "c"]
    assert t.prompt_tokens.tolist() == [10, 20]
    bad = write(tmp_path, 'arrival_s,prompt_tokens,output_tokens\n0,10,5\n1,"x",6\n', "bad.csv")
    assert error_of(bad) == f"{bad}:3: prompt_tokens must be a positive integer, got 'x'"


def test_native_optional_columns(tmp_path):
    path = write(
        tmp_path,
        "arrival_s,prompt_tokens,output_tokens,n,beam_width,prefix_group,prefix_tokens\n"
        "0,300,20,4,,0,200\n"
        "1,250,20,,4,0,200\n"
        "2,100,20,1,1,,\n"
        "3,100,20,2,3,-1,0\n",
    )
    t = read_trace(path)
    assert t.columns["n"].tolist() == [4, 1, 1, 2]  # empty -> 1
    assert t.columns["beam_width"].tolist() == [1, 4, 1, 3]  # empty -> 1
    assert t.columns["prefix_group"].tolist() == [0, 0, -1, -1]  # empty -> -1 (none)
    assert t.columns["prefix_tokens"].tolist() == [200, 200, 0, 0]
    assert all(v.dtype == np.int64 for v in t.columns.values())


@pytest.mark.parametrize(
    "body, message",
    [
        ("arrival_s,prompt_tokens,output_tokens,n\n0,10,5,0\n", "{p}:2: n must be a positive integer, got '0'"),
        (
            "arrival_s,prompt_tokens,output_tokens,beam_width\n0,10,5,2\n1,10,5,two\n",
            "{p}:3: beam_width must be a positive integer, got 'two'",
        ),
        (
            "arrival_s,prompt_tokens,output_tokens,n,beam_width\n0,10,5,4,2\n",
            "{p}:2: n (4) must not exceed beam_width (2): beam search returns n of its beam_width beams",
        ),
        (
            "arrival_s,prompt_tokens,output_tokens,prefix_group,prefix_tokens\n0,10,5,0,8\n1,10,5,0,11\n",
            "{p}:3: prefix_tokens (11) must not exceed prompt_tokens (10)",
        ),
        (
            "arrival_s,prompt_tokens,output_tokens,prefix_group,prefix_tokens\n0,10,5,-2,0\n",
            "{p}:2: prefix_group must be an integer >= -1, got '-2'",
        ),
        (
            "arrival_s,prompt_tokens,output_tokens,prefix_group,prefix_tokens\n0,10,5,,4\n",
            "{p}:2: prefix_tokens is 4 but prefix_group is empty: a prefix is shared within a group",
        ),
        (
            "arrival_s,prompt_tokens,output_tokens,prefix_group,prefix_tokens\n0,10,5,1,-1\n",
            "{p}:2: prefix_tokens must be an integer >= 0, got '-1'",
        ),
        (
            "arrival_s,prompt_tokens,output_tokens,prefix_group\n0,10,5,1\n",
            "{p}:1: column 'prefix_group' needs a 'prefix_tokens' column too (requests of a prefix group share their "
            "first prefix_tokens tokens)",
        ),
        ("arrival_s,prompt_tokens,output_tokens\n0,10,5\n1,10\n", "{p}:3: expected 3 fields, got 2"),
        ("arrival_s,prompt_tokens,output_tokens\n0,10,5,7\n", "{p}:2: expected 3 fields, got 4"),
        ("arrival_s,prompt_tokens,output_tokens\n-1,10,5\n", "{p}:2: arrival_s must be a finite number >= 0, got '-1'"),
        (
            "arrival_s,prompt_tokens,output_tokens\nnan,10,5\n",
            "{p}:2: arrival_s must be a finite number >= 0, got 'nan'",
        ),
        (
            "arrival_s,prompt_tokens,output_tokens\n0,99999999999999999999999,5\n",
            "{p}:2: prompt_tokens is too large, got '99999999999999999999999'",
        ),
    ],
)
def test_native_malformed(tmp_path, body, message):
    path = write(tmp_path, body)
    assert error_of(path) == message.format(p=path)


def test_native_unknown_columns_are_noted(tmp_path):
    path = write(tmp_path, "arrival_s,prompt_tokens,output_tokens,beam_witdh\n0,10,5,4\n")
    assert read_trace(path).notes == ["ignored columns: beam_witdh"]


def test_file_level_errors(tmp_path):
    assert error_of(str(tmp_path / "none.csv")) == f"{tmp_path / 'none.csv'}: no such file"
    assert error_of(str(tmp_path)) == f"{tmp_path}: is a directory, not a trace file"
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    assert error_of(str(binary)) == f"{binary}: not a text file (cannot decode as UTF-8)"
    empty = write(tmp_path, "\n\n", "e.csv")
    assert error_of(empty) == f"{empty}: the file is empty"
    unknown = write(tmp_path, "a,b\n1,2\n", "u.csv")
    assert error_of(unknown).startswith(f"{unknown}:1: unrecognised header (a, b): expected arrival_s,")
    with pytest.raises(TraceError, match="unknown trace format 'nope'"):
        read_trace(unknown, "nope")


# --- Azure -------------------------------------------------------------------------------------------------------
AZURE = (
    "TIMESTAMP,ContextTokens,GeneratedTokens\n"
    "2023-11-16 18:17:03.9799600,4808,10\n"
    "2023-11-16 18:17:04.0319600,3180,8\n"
    "2023-11-16 18:18:03.9799601,10,1\n"
)


def test_azure_2023_relative_arrivals(tmp_path):
    t = read_trace(write(tmp_path, AZURE))
    assert t.format == "azure"
    # 04.03196 - 03.97996 = 0.052 s; 18:18:03.9799601 - 18:17:03.9799600 = 60.0000001 s (100 ns resolution).
    assert t.arrival_s[0] == 0.0
    assert t.arrival_s[1] == pytest.approx(0.052, abs=1e-12)
    assert t.arrival_s[2] == pytest.approx(60.0000001, abs=1e-12)
    assert t.prompt_tokens.tolist() == [4808, 3180, 10]
    assert t.output_tokens.tolist() == [10, 8, 1]


def test_azure_2024_release(tmp_path):
    # The 2024 release: same columns, 6 fractional digits (or none) and a UTC offset.
    path = write(
        tmp_path,
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:00.009930+00:00,100,3\n"
        "2024-05-10 00:00:01+00:00,200,4\n"
        "2024-05-10 01:00:02.009930+01:00,300,5\n"
        "2024-05-10T00:00:03.009930Z,400,6\n",
    )
    t = read_trace(path)
    assert t.format == "azure"
    # 01:00:02.00993+01:00 is 00:00:02.00993 UTC
    assert t.arrival_s.tolist() == pytest.approx([0.0, 0.99007, 2.0, 3.0], abs=1e-9)
    assert t.prompt_tokens.tolist() == [100, 200, 300, 400]


@pytest.mark.parametrize(
    "row, message",
    [
        (
            "yesterday,10,1",
            "{p}:3: TIMESTAMP must be a date and time like '2023-11-16 18:17:03.9799600' or "
            "'2024-05-10 00:00:00.009930+00:00', got 'yesterday'",
        ),
        (
            "2023-11-16 18:17:02.0000000,10,1",
            "{p}:3: TIMESTAMP must not decrease: '2023-11-16 18:17:02.0000000' after '2023-11-16 18:17:03.9799600'",
        ),
        ("2023-11-16 18:17:05.0000000,10,0", "{p}:3: GeneratedTokens must be a positive integer, got '0'"),
        ("2023-11-16 18:17:05.0000000,,1", "{p}:3: ContextTokens must be a positive integer, got ''"),
    ],
)
def test_azure_malformed(tmp_path, row, message):
    path = write(
        tmp_path, "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,4808,10\n" + row + "\n"
    )
    assert error_of(path) == message.format(p=path)


# --- Vidur / Splitwise -------------------------------------------------------------------------------------------
def test_vidur(tmp_path):
    path = write(tmp_path, "arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,512,128\n0.25,1024,7\n")
    t = read_trace(path)
    assert t.format == "vidur"
    assert t.arrival_s.tolist() == [0.0, 0.25]
    assert t.prompt_tokens.tolist() == [512, 1024] and t.output_tokens.tolist() == [128, 7]
    bad = write(tmp_path, "arrived_at,num_prefill_tokens,num_decode_tokens\n0.5,512,128\n0.25,1024,7\n", "b.csv")
    assert error_of(bad) == f"{bad}:3: arrived_at must not decrease: 0.25 after 0.5"
    bad = write(tmp_path, "arrived_at,num_prefill_tokens,num_decode_tokens\n0.5,512,-1\n", "c.csv")
    assert error_of(bad) == f"{bad}:2: num_decode_tokens must be a positive integer, got '-1'"


# --- length-only -------------------------------------------------------------------------------------------------
LENGTHS = "num_prefill_tokens,num_decode_tokens,num_total_tokens\n10,5,15\n20,6,26\n30,7,37\n"


def test_lengths_need_rate(tmp_path):
    path = write(tmp_path, LENGTHS)
    assert detect_format(path) == "lengths"
    assert error_of(path) == (
        f"{path}:1: this trace has lengths but no arrival times (columns num_prefill_tokens, "
        f"num_decode_tokens): give --rate REQUESTS_PER_S to generate Poisson arrivals"
    )


def test_lengths_poisson_arrivals_seeded(tmp_path):
    path = write(tmp_path, LENGTHS)
    a = read_trace(path, rate=2.0, seed=7)
    b = read_trace(path, rate=2.0, seed=7)
    c = read_trace(path, rate=2.0, seed=8)
    assert a.format == "lengths"
    assert a.prompt_tokens.tolist() == [10, 20, 30] and a.output_tokens.tolist() == [5, 6, 7]
    assert a.arrival_s[0] == 0.0 and np.all(np.diff(a.arrival_s) > 0)
    assert a.arrival_s.tolist() == b.arrival_s.tolist() != c.arrival_s.tolist()
    # Same draws as numpy's PCG64 with this seed: two exponential gaps of mean 1/2 s.
    gaps = np.random.Generator(np.random.PCG64(7)).exponential(0.5, size=2)
    assert a.arrival_s.tolist() == pytest.approx([0.0, gaps[0], gaps[0] + gaps[1]])
    assert "arrivals generated: Poisson at 2 requests/s, seed 7" in a.notes
    assert "ignored columns: num_total_tokens" in a.notes


def test_lengths_rate_is_mean_rate(tmp_path):
    rows = "".join(f"{10 + i % 7},{3 + i % 5}\n" for i in range(4001))
    t = read_trace(write(tmp_path, "num_prefill_tokens,num_decode_tokens\n" + rows), rate=4.0)
    # 4,000 exponential gaps of mean 0.25 s: the sample mean is within 5 standard errors (0.25/sqrt(4000) each).
    assert np.diff(t.arrival_s).mean() == pytest.approx(0.25, abs=5 * 0.25 / np.sqrt(4000))


def test_rate_refused_for_timed_traces_and_must_be_positive(tmp_path):
    path = write(tmp_path, "arrival_s,prompt_tokens,output_tokens\n0,10,5\n")
    with pytest.raises(UserError, match="--rate generates arrivals for length-only traces, but .* is a native trace"):
        read_trace(path, rate=1.0)
    with pytest.raises(UserError, match="--rate must be a positive number"):
        read_trace(write(tmp_path, LENGTHS, "l.csv"), rate=0.0)


# --- BurstGPT ----------------------------------------------------------------------------------------------------
BURST = (
    "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
    "5,ChatGPT,472,18,490,Conversation log\n"
    "45,ChatGPT,1087,0,1087,Conversation log\n"
    "118,GPT-4,417,96,513,API log\n"
    "124,ChatGPT,0,12,12,API log\n"
    "130,GPT-4,20,0,20,API log\n"
    "131,ChatGPT,30,40,70,Conversation log\n"
)


def test_burstgpt_skips_failed_requests(tmp_path):
    t = read_trace(write(tmp_path, BURST))
    assert t.format == "burstgpt"
    assert t.arrival_s.tolist() == [5.0, 118.0, 131.0]
    assert t.prompt_tokens.tolist() == [472, 417, 30]
    assert t.output_tokens.tolist() == [18, 96, 40]
    assert t.skipped_rows == 3
    assert t.notes == ["skipped 2 failed requests (0 response tokens)", "skipped 1 requests with 0 request tokens"]


def test_burstgpt_model_filter(tmp_path):
    path = write(tmp_path, BURST)
    t = read_trace(path, model_filter="gpt-4")
    assert t.prompt_tokens.tolist() == [417]
    assert t.skipped_rows == 1
    assert t.notes[0] == "model filter 'gpt-4': kept 2 of 6 rows"
    assert (
        error_of(path, model_filter="llama") == f"{path}: no rows for model 'llama' (models in this trace: "
        f"ChatGPT, GPT-4)"
    )
    native = write(tmp_path, "arrival_s,prompt_tokens,output_tokens\n0,10,5\n", "n.csv")
    with pytest.raises(UserError, match="--model-filter applies to BurstGPT traces"):
        read_trace(native, model_filter="ChatGPT")


def test_burstgpt_malformed(tmp_path):
    head = (
        "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n5,ChatGPT,472,18,490,Conversation log\n"
    )
    path = write(tmp_path, head + "6,ChatGPT,12,-3,9,Conversation log\n")
    assert error_of(path) == f"{path}:3: Response tokens must be an integer >= 0, got '-3'"
    path = write(tmp_path, head + "4,ChatGPT,12,3,15,Conversation log\n", "b.csv")
    assert error_of(path) == f"{path}:3: Timestamp must not decrease: 4 after 5"
    path = write(tmp_path, head.split("\n")[0] + "\n1,ChatGPT,5,0,5,API log\n", "c.csv")
    assert error_of(path) == (
        f"{path}: no usable requests: every row is a failed request (0 response tokens) or has 0 request tokens"
    )


# --- registry ----------------------------------------------------------------------------------------------------
def test_registry_names():
    assert set(READERS) == {"native", "azure", "vidur", "burstgpt", "lengths", "mooncake", "vllm-bench"}


def test_forced_format_overrides_detection(tmp_path):
    # A native header also satisfies nothing else; forcing azure names the missing column.
    path = write(tmp_path, "arrival_s,prompt_tokens,output_tokens\n0,10,5\n")
    assert error_of(path, format="azure") == (
        f"{path}:1: missing column 'TIMESTAMP' (found: arrival_s, prompt_tokens, output_tokens)"
    )
