"""Regression tests for trace defects: silent row loss, tracebacks and silent wrong answers on bad input.

Each runs the CLI (`sim trace stats FILE`) the way a user would and checks exit status 2, a `file:line: reason`
message and no traceback -- or, for inputs that are now read, the right answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sim.cli.main import main
from sim.errors import TraceError, UserError
from sim.traces.readers import read_trace

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def write(tmp_path, text: str, name: str = "t.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def stats(path: str, capsys) -> tuple[int, str, str]:
    rc = main(["trace", "stats", path])
    out, err = capsys.readouterr()
    return rc, out, err


def refused(path: str, capsys) -> str:
    """Runs `sim trace stats PATH`, expects exit 2, returns the message after 'sim: error: '."""
    rc, out, err = stats(path, capsys)
    assert rc == 2, out
    assert "Traceback" not in err
    assert err.startswith("sim: error: ")
    return err.removeprefix("sim: error: ").strip()


# --- 1: an unclosed quote swallowed the rest of the file ------------------------------------------------------------
def test_unclosed_quote_names_the_line_of_the_quote(tmp_path, capsys):
    path = write(tmp_path, 'arrival_s,prompt_tokens,output_tokens,request_id\n0,10,5,"abc\n1,10,5,x\n')
    assert refused(path, capsys).startswith(f"{path}:2: a quote opened on this line is not closed on it")


def test_unclosed_quote_that_a_later_quote_closes_does_not_merge_rows(tmp_path, capsys):
    # Without the rule "a field may not span lines" this reads as 2 rows (row 3 inside row 2's request_id).
    path = write(tmp_path, 'arrival_s,prompt_tokens,output_tokens,request_id\n0,10,5,"abc\n1,10,5,x"\n2,10,5,y\n')
    assert refused(path, capsys).startswith(f"{path}:2: a quote opened on this line is not closed on it")


def test_unclosed_quote_on_the_last_line(tmp_path, capsys):
    path = write(tmp_path, 'arrival_s,prompt_tokens,output_tokens,request_id\n0,10,5,a\n1,10,5,"x')
    assert refused(path, capsys) == f"{path}:3: a quote opened on this line is never closed"


def test_unclosed_quote_in_a_long_file_names_its_line_not_the_field_limit(tmp_path, capsys):
    rows = "".join(f"{i},10,5,r{i}\n" for i in range(30_000))
    path = write(tmp_path, 'arrival_s,prompt_tokens,output_tokens,request_id\n0,10,5,"abc\n' + rows)
    assert refused(path, capsys).startswith(f"{path}:2: a quote opened on this line is not closed on it")


def test_text_after_a_closing_quote_is_malformed(tmp_path, capsys):
    path = write(tmp_path, 'arrival_s,prompt_tokens,output_tokens,request_id\n0,10,5,"ab"c\n')
    assert refused(path, capsys) == f"{path}:2: malformed CSV: ',' expected after '\"'"


def test_quoted_fields_that_close_still_read(tmp_path):
    path = write(tmp_path, 'arrival_s,prompt_tokens,output_tokens,request_id\n0,10,5,"a,b"\n1,"20",6,"c ""q"""\n')
    assert read_trace(path).request_id == ["a,b", 'c "q"']


# --- 7: tracebacks --------------------------------------------------------------------------------------------------
def test_mooncake_length_above_int64(tmp_path, capsys):
    record = {"timestamp": 0, "input_length": 2**70, "output_length": 5}
    path = write(tmp_path, json.dumps(record) + "\n", "m.jsonl")
    assert refused(path, capsys) == f"{path}:1: input_length is too large, got {2**70}"


def test_mooncake_timestamp_too_large_for_a_float(tmp_path, capsys):
    path = write(tmp_path, '{"timestamp": 1' + "0" * 400 + ', "input_length": 5, "output_length": 5}\n', "m.jsonl")
    message = refused(path, capsys)
    assert message.startswith(f"{path}:1: timestamp must be a finite number of milliseconds >= 0, got 1000")
    assert len(message) < len(path) + 200  # the 401 digits are not printed


def test_mooncake_hash_id_above_int64_names_its_line(tmp_path, capsys):
    good = {"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]}
    bad = {"timestamp": 1, "input_length": 600, "output_length": 5, "hash_ids": [1, 2**64]}
    path = write(tmp_path, json.dumps(good) + "\n" + json.dumps(bad) + "\n", "m.jsonl")
    assert refused(path, capsys) == f"{path}:2: a hash id does not fit in 64 bits: {2**64}"


def test_mooncake_integer_of_5000_digits(tmp_path, capsys):
    path = write(tmp_path, '{"timestamp": ' + "1" * 5000 + ', "input_length": 5, "output_length": 5}\n', "m.jsonl")
    assert refused(path, capsys).startswith(f"{path}:1: not usable JSON: ")


def test_jsonl_nested_too_deeply(tmp_path, capsys):
    path = write(tmp_path, '{"timestamp": ' + "[" * 100_000 + "\n", "m.jsonl")
    assert refused(path, capsys) == f"{path}:1: not usable JSON: nested too deeply"


def test_symlink_loop(tmp_path, capsys):
    loop = tmp_path / "loop.csv"
    loop.symlink_to(loop)
    assert refused(str(loop), capsys) == f"{loop}: cannot read: too many levels of symbolic links"


def test_path_through_a_file(tmp_path, capsys):
    path = write(tmp_path, "arrival_s,prompt_tokens,output_tokens\n0,1,1\n") + "/x.csv"
    assert refused(path, capsys) == f"{path}: cannot read: not a directory"


def test_name_too_long(tmp_path, capsys):
    path = str(tmp_path / ("a" * 300 + ".csv"))
    assert refused(path, capsys) == f"{path}: cannot read: file name too long"


def test_no_traceback_from_the_command_line(tmp_path):
    loop = tmp_path / "loop.csv"
    loop.symlink_to(loop)
    run = subprocess.run(
        [sys.executable, "-m", "sim", "trace", "stats", str(loop)], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr == f"sim: error: {loop}: cannot read: too many levels of symbolic links\n"


# --- 8: silent wrong answers ----------------------------------------------------------------------------------------
def test_azure_epoch_seconds_are_read_as_seconds(tmp_path, capsys):
    path = write(tmp_path, AZURE_HEADER + "1700000000.5,10,5\n1700000001.5,10,5\n1700000031,10,5\n")
    t = read_trace(path)
    assert t.arrival_s.tolist() == [0.0, 1.0, 30.5]
    assert "TIMESTAMP holds numbers: read as seconds" in t.notes
    rc, out, _ = stats(path, capsys)
    assert rc == 0 and "duration: 30.5 s" in out


def test_azure_integer_epoch_seconds_are_not_years(tmp_path):
    # numpy reads '1700000000' as the year 1,700,000,000 (wrapped around to 2252) and '2023' as a year.
    assert read_trace(write(tmp_path, AZURE_HEADER + "1700000000,10,5\n1700000002,10,5\n")).arrival_s.tolist() == [
        0.0,
        2.0,
    ]


def test_azure_numbers_mixed_with_dates(tmp_path, capsys):
    path = write(tmp_path, AZURE_HEADER + "1700000000,10,5\n2023-11-16 18:17:03,10,5\n")
    assert refused(path, capsys) == (
        f"{path}:3: TIMESTAMP '2023-11-16 18:17:03' has no UTC offset, but the first row's '1700000000' (line 2) "
        f"has a number of seconds: every row must be of the same kind"
    )


def test_azure_stamps_more_than_292_years_apart(tmp_path, capsys):
    path = write(tmp_path, AZURE_HEADER + "1700-01-01 00:00:00,10,5\n2100-01-01 00:00:00,10,5\n")
    assert refused(path, capsys) == (
        f"{path}:3: TIMESTAMP '2100-01-01 00:00:00' is more than 292 years after the first row's "
        f"'1700-01-01 00:00:00': arrival times must fit in 64-bit nanoseconds"
    )


def test_azure_date_outside_nanosecond_range_is_not_wrapped(tmp_path, capsys):
    # numpy reads 1500-01-01 at nanosecond resolution as 2084-07-20, without a word.
    path = write(tmp_path, AZURE_HEADER + "1500-01-01 00:00:00,10,5\n1500-01-01 00:00:01,10,5\n")
    assert refused(path, capsys) == (
        f"{path}:2: TIMESTAMP '1500-01-01 00:00:00' is out of range: dates from 1678 to 2261 can be read "
        f"(64-bit nanoseconds)"
    )


@pytest.mark.parametrize("word", ["now", "today"])
def test_azure_now_and_today_are_not_dates(tmp_path, capsys, word):
    path = write(tmp_path, AZURE_HEADER + f"2023-11-16 18:17:03,10,5\n{word},10,5\n")
    assert refused(path, capsys).startswith(f"{path}:3: TIMESTAMP must be a date and time like")


@pytest.mark.parametrize("offset", ["+00:00", "+02:00", "Z"])
def test_azure_naive_and_utc_stamps_mixed(tmp_path, capsys, offset):
    path = write(tmp_path, AZURE_HEADER + f"2024-05-10 00:00:00,10,5\n2024-05-10 00:00:01{offset},10,5\n")
    assert refused(path, capsys) == (
        f"{path}:3: TIMESTAMP '2024-05-10 00:00:01{offset}' has a UTC offset, but the first row's "
        f"'2024-05-10 00:00:00' (line 2) has no UTC offset: every row must be of the same kind"
    )


def test_azure_utc_then_naive(tmp_path, capsys):
    path = write(tmp_path, AZURE_HEADER + "2024-05-10 00:00:00+00:00,10,5\n\n2024-05-10 00:00:01,10,5\n")
    assert refused(path, capsys).startswith(f"{path}:4: TIMESTAMP '2024-05-10 00:00:01' has no UTC offset, but")


def test_azure_invalid_utc_offset(tmp_path, capsys):
    path = write(tmp_path, AZURE_HEADER + "2024-05-10 00:00:00+99:00,10,5\n")
    assert refused(path, capsys) == f"{path}:2: TIMESTAMP '2024-05-10 00:00:00+99:00' has no valid UTC offset (+HH:MM)"


@pytest.mark.parametrize("quoted", [False, True])
def test_duplicate_column_is_refused(tmp_path, capsys, quoted):
    header = 'arrival_s,prompt_tokens,output_tokens,"prompt_tokens"' if quoted else "arrival_s,prompt_tokens,"
    header += "" if quoted else "output_tokens,prompt_tokens"
    path = write(tmp_path, "\n" + header + "\n0,10,5,20\n")
    assert refused(path, capsys) == f"{path}:2: column 'prompt_tokens' appears twice in the header"


def test_duplicate_json_key_is_refused(tmp_path, capsys):
    path = write(tmp_path, '{"timestamp": 0, "input_length": 5, "output_length": 5, "input_length": 900}\n', "m.jsonl")
    assert refused(path, capsys) == f'{path}:1: key "input_length" appears twice in one object'


# --- found by the fuzz suite (test_fuzz_readers.py) ----------------------------------------------------------------
def test_token_count_that_overflows_sums(tmp_path, capsys):
    # int64 max was accepted, and `trace stats` printed a negative total (prompt + output wrapped around).
    big = str(2**63 - 1)
    path = write(tmp_path, f"arrival_s,prompt_tokens,output_tokens\n0,{big},5\n")
    assert refused(path, capsys) == f"{path}:2: prompt_tokens is too large, got '{big}'"
    t = read_trace(write(tmp_path, f"arrival_s,prompt_tokens,output_tokens\n0,{2**32 - 1},5\n", "ok.csv"))
    assert t.prompt_tokens.tolist() == [2**32 - 1]


def test_a_negative_number_is_below_the_minimum_not_too_large(tmp_path):
    path = write(tmp_path, "arrival_s,prompt_tokens,output_tokens\n0,-99999999999,5\n")
    with pytest.raises(TraceError, match=r":2: prompt_tokens must be a positive integer, got '-99999999999'"):
        read_trace(path)


@pytest.mark.parametrize("rate", [1e-320, 5e-324])
def test_lengths_trace_with_a_rate_too_low_for_finite_arrivals(tmp_path, rate):
    # 1 / 1e-320 is inf: every generated arrival after the first was inf, without a word.
    path = write(tmp_path, "num_prefill_tokens,num_decode_tokens\n10,5\n10,5\n10,5\n")
    with pytest.raises(UserError, match="--rate"):
        read_trace(path, rate=rate)
    assert np.isfinite(read_trace(path, rate=1e-6).arrival_s).all()


def test_negative_seed_is_a_user_error(tmp_path):
    path = write(tmp_path, "num_prefill_tokens,num_decode_tokens\n10,5\n")
    with pytest.raises(UserError, match=r"--seed must be an integer in \[0, 2\^64\), got -1"):
        read_trace(path, rate=1.0, seed=-1)
