"""Mooncake JSONL traces on small files written here: hash ids, KV block keys, malformed records with their exact
`file:line: reason`, selection and writing back."""

import json

import numpy as np
import pytest

from sim.errors import TraceError, UserError
from sim.traces.readers import read_trace
from sim.traces.writers import write_trace


def write(tmp_path, text, name="trace.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def error_of(path, **kwargs):
    with pytest.raises(TraceError) as info:
        read_trace(path, **kwargs)
    return str(info.value)


def mooncake(tmp_path, records, name="trace.jsonl"):
    return write(tmp_path, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), name)


MOON = [
    {"timestamp": 0, "input_length": 1100, "output_length": 10, "hash_ids": [0, 1, 2]},
    {"timestamp": 250, "input_length": 600, "output_length": 5, "hash_ids": [0, 3]},
    {"timestamp": 1500, "input_length": 512, "output_length": 7, "hash_ids": [0]},
]


def test_mooncake_reads_hash_ids_compactly(tmp_path):
    t = read_trace(mooncake(tmp_path, MOON))
    assert t.format == "mooncake"
    assert t.arrival_s.tolist() == [0.0, 0.25, 1.5]  # milliseconds -> seconds
    assert t.prompt_tokens.tolist() == [1100, 600, 512]
    assert t.output_tokens.tolist() == [10, 5, 7]
    flat, offsets = t.block_hashes
    assert flat.dtype == np.int64 and flat.tolist() == [0, 1, 2, 0, 3, 0]
    assert offsets.tolist() == [0, 3, 5, 6]
    assert t.hash_ids(1).tolist() == [0, 3]
    assert t.block_hash_tokens == 512


def test_mooncake_kv_block_keys(tmp_path):
    t = read_trace(mooncake(tmp_path, MOON))
    # Request 1: 600 prompt tokens, ids [0, 3]; block size 256 -> 2 KV blocks per hashed block; full KV blocks are
    # 0 and 1 (tokens 0-511, in id 0) and none of id 3's (tokens 512-599 fill no 256-token block):
    # keys 0*2+0, 0*2+1.
    assert t.kv_block_keys(1, 256).tolist() == [0, 1]
    # Request 0: 1,100 tokens -> 4 full 256-token blocks: id 0 (keys 0, 1), id 1 (keys 2, 3).
    assert t.kv_block_keys(0, 256).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="does not divide"):
        t.kv_block_keys(0, 48)


def test_mooncake_without_hash_ids_and_detection(tmp_path):
    path = mooncake(tmp_path, [{"timestamp": 1.5, "input_length": 10, "output_length": 2, "extra": 1}])
    t = read_trace(path)
    assert t.arrival_s.tolist() == [0.0015]
    assert t.hash_ids(0).tolist() == []


@pytest.mark.parametrize(
    "records, message",
    [
        ([MOON[0], "{not json"], "{p}:2: not valid JSON: Expecting property name enclosed in double quotes (column 2)"),
        ([MOON[0], "[1, 2]"], "{p}:2: expected a JSON object, got list"),
        ([MOON[0], {"timestamp": 5, "input_length": 3}], "{p}:2: missing key 'output_length'"),
        (
            [MOON[0], {"timestamp": 5, "input_length": 0, "output_length": 1}],
            "{p}:2: input_length must be a positive integer, got 0",
        ),
        (
            [MOON[0], {"timestamp": 5, "input_length": 2.5, "output_length": 1}],
            "{p}:2: input_length must be a positive integer, got 2.5",
        ),
        (
            [MOON[0], {"timestamp": "soon", "input_length": 2, "output_length": 1}],
            '{p}:2: timestamp must be a finite number of milliseconds >= 0, got "soon"',
        ),
        (
            [MOON[1], {"timestamp": 100, "input_length": 2, "output_length": 1}],
            "{p}:2: timestamp must not decrease: 100 comes after 250",
        ),
        (
            [MOON[0], {"timestamp": 5, "input_length": 513, "output_length": 1, "hash_ids": [1, 2, 3]}],
            "{p}:2: 3 hash_ids for input_length 513: at most 2 blocks of 512 tokens",
        ),
        (
            [MOON[0], {"timestamp": 5, "input_length": 513, "output_length": 1, "hash_ids": [1, "x"]}],
            "{p}:2: hash_ids must be a list of integers >= 0",
        ),
    ],
)
def test_mooncake_malformed(tmp_path, records, message):
    path = mooncake(tmp_path, records)
    assert error_of(path) == message.format(p=path)


def test_mooncake_forced_on_csv_and_unknown_jsonl(tmp_path):
    csv_path = write(tmp_path, "arrival_s,prompt_tokens,output_tokens\n0,10,5\n")
    assert error_of(csv_path, format="mooncake").startswith(f"{csv_path}:1: not valid JSON")
    other = mooncake(tmp_path, [{"t": 1}], "o.jsonl")
    assert error_of(other) == (
        f"{other}:1: unrecognised keys of the first record (t): expected Mooncake JSONL: "
        f'{{"timestamp", "input_length", "output_length", "hash_ids"}}; or vllm bench serve --save-result '
        f"--save-detailed JSON: {{..., input_lens, output_lens, start_times, ...}} (or force one with --format)"
    )


# --- selection, writing ------------------------------------------------------------------------------------------
def test_select_keeps_hash_ids(tmp_path):
    t = read_trace(mooncake(tmp_path, MOON))
    s = t.select(np.array([2, 0]))
    assert s.prompt_tokens.tolist() == [512, 1100]
    assert s.hash_ids(0).tolist() == [0] and s.hash_ids(1).tolist() == [0, 1, 2]
    s = t.select(slice(1, 3))
    assert s.block_hashes[1].tolist() == [0, 2, 3] and s.block_hashes[0].tolist() == [0, 3, 0]


def test_mooncake_round_trip_and_native_refusal(tmp_path):
    t = read_trace(mooncake(tmp_path, MOON))
    out = str(tmp_path / "out.jsonl")
    assert write_trace(t, out) == "mooncake"
    back = read_trace(out)
    assert back.arrival_s.tolist() == t.arrival_s.tolist()
    assert back.block_hashes[0].tolist() == t.block_hashes[0].tolist()
    with pytest.raises(UserError, match="write it to a .jsonl file"):
        write_trace(t, str(tmp_path / "out.csv"))
