"""The `vllm bench serve --save-result --save-detailed` reader: detection, requests, arrivals, bad files."""

import json

import numpy as np
import pytest

from sim.errors import TraceError
from sim.traces.readers import detect_format, read_trace


def detailed_result(**overrides) -> dict:
    """A result as vllm/benchmarks/serve.py (vllm-project/vllm 009e6d4a1cd6ba3fb2a9fc00f4ec06f5297232a1) writes it
    with --save-result --save-detailed: `main_async`'s setup keys, then `benchmark()`'s result dict with its
    per-request lists and the keys `process_one_metric` adds. Request 2 failed (an error, 0 output tokens)."""
    result = {
        "date": "20260101-120000",
        "endpoint_type": "vllm",
        "backend": "vllm",
        "label": None,
        "model_id": "meta-llama/Llama-2-7b-hf",
        "tokenizer_id": "meta-llama/Llama-2-7b-hf",
        "num_prompts": 4,
        "request_rate": 2.0,
        "burstiness": 1.0,
        "max_concurrency": None,
        "duration": 2.5,
        "completed": 3,
        "failed": 1,
        "total_input_tokens": 450,
        "total_output_tokens": 60,
        "request_throughput": 1.2,
        "request_goodput": None,
        "output_throughput": 24.0,
        "total_token_throughput": 204.0,
        "input_lens": [100, 200, 300, 150],
        "output_lens": [20, 30, 0, 10],
        "ttfts": [0.05, 0.06, 0.0, 0.04],
        "itls": [[0.02] * 19, [0.02] * 29, [], [0.02] * 9],
        "latencies": [0.43, 0.64, 0.0, 0.22],
        "start_times": [1000.25, 1000.0, 1000.5, 1001.0],
        "queue_times": [0.0, 0.0, 0.0, 0.0],
        "generated_texts": ["a", "b", "", "c"],
        "errors": ["", "", "Bad Request", ""],
        "max_output_tokens_per_s": 50.0,
        "max_concurrent_requests": 2,
        "rtfx": 0.0,
        "mean_ttft_ms": 50.0,
        "median_ttft_ms": 50.0,
        "std_ttft_ms": 8.16,
        "p99_ttft_ms": 59.8,
        "mean_tpot_ms": 20.0,
        "median_tpot_ms": 20.0,
        "std_tpot_ms": 0.0,
        "p99_tpot_ms": 20.0,
        "mean_itl_ms": 20.0,
        "median_itl_ms": 20.0,
        "std_itl_ms": 0.0,
        "p99_itl_ms": 20.0,
    }
    result.update(overrides)
    return result


def write(tmp_path, data, name="result.json", indent=None) -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=indent))
    return str(path)


def test_detected_and_read(tmp_path):
    path = write(tmp_path, detailed_result())
    assert detect_format(path) == "vllm-bench"
    trace = read_trace(path)
    assert trace.format == "vllm-bench"
    # sorted by start time, relative to the first; the failed request 2 is skipped
    assert trace.arrival_s.tolist() == [0.0, 0.25, 1.0]
    assert trace.prompt_tokens.tolist() == [200, 100, 150]
    assert trace.output_tokens.tolist() == [30, 20, 10]
    assert trace.request_id == ["1", "0", "3"]
    assert trace.skipped_rows == 1 and any("1 failed" in n for n in trace.notes)


def test_a_pretty_printed_result_reads_as_the_one_line_form(tmp_path):
    path = write(tmp_path, detailed_result(), indent=2)
    assert detect_format(path) == "vllm-bench"
    trace = read_trace(path)
    assert trace.arrival_s.tolist() == [0.0, 0.25, 1.0] and trace.prompt_tokens.tolist() == [200, 100, 150]
    broken = write(tmp_path, json.dumps(detailed_result(), indent=2)[:-3], name="broken.json")  # no closing brace
    with pytest.raises(TraceError, match=r"broken\.json:1: not valid JSON"):
        read_trace(broken)


def test_no_start_times_uses_the_request_rate(tmp_path):
    result = detailed_result()
    del result["start_times"]
    trace = read_trace(write(tmp_path, result), seed=3)
    assert len(trace) == 3 and np.all(np.diff(trace.arrival_s) >= 0)
    assert any("no start_times" in n for n in trace.notes)
    result["request_rate"] = "inf"
    trace = read_trace(write(tmp_path, result, "inf.json"))
    assert trace.arrival_s.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "data, reason",
    [
        (
            {"completed": 3, "request_throughput": 1.0, "output_throughput": 2.0},
            "save it with --save-result --save-detailed",
        ),
        (detailed_result(output_lens=[20, 30]), "output_lens has 2 entries but input_lens has 4"),
        (detailed_result(input_lens=[100, "x", 300, 150]), 'input_lens[1] must be an integer >= 0, got "x"'),
        (detailed_result(start_times=[0, 1, None, 2]), "start_times[2] must be a number of seconds, got null"),
        (detailed_result(errors=["e", "e", "e", "e"]), "none of its 4 requests succeeded"),
    ],
)
def test_bad_files_say_file_and_reason(tmp_path, data, reason):
    path = write(tmp_path, data)
    with pytest.raises(TraceError) as err:
        read_trace(path, format="vllm-bench")
    assert str(err.value) == f"{path}: {err.value.reason}"
    assert reason in err.value.reason


def test_appended_results_are_refused(tmp_path):
    one = json.dumps(detailed_result())
    path = write(tmp_path, one + "\n" + one + "\n")
    with pytest.raises(TraceError, match="keep one result per file"):
        read_trace(path)


@pytest.mark.parametrize(
    "overrides, reason",
    [
        # integers past the float range: math.isinf / math.isfinite raised OverflowError (a traceback)
        ({"start_times": [0, 1, 2, 10**400]}, "start_times[3] must be a number of seconds"),
        ({"start_times": None, "request_rate": 10**400}, 'request_rate must be a positive number or "inf"'),
        # arrivals past the float range: inf (then NaN) arrivals were returned
        ({"start_times": [-1e308, 1e308, 0, 1]}, "start_times span more seconds than a float holds"),
        ({"start_times": None, "request_rate": 1e-320}, "request_rate 1e-320 is too small"),
    ],
)
def test_numbers_past_the_float_range_are_refused(tmp_path, overrides, reason):
    result = detailed_result(**overrides)
    if result["start_times"] is None:
        del result["start_times"]
    path = write(tmp_path, result)
    with pytest.raises(TraceError) as err:
        read_trace(path)
    assert str(err.value) == f"{path}: {err.value.reason}"
    assert reason in err.value.reason


def test_a_burstiness_past_the_float_range_is_read_as_1(tmp_path):
    # an integer past the float range raised OverflowError in math.isfinite; like any unusable burstiness, it is 1
    huge, one = detailed_result(burstiness=10**400), detailed_result(burstiness=1.0)
    del huge["start_times"], one["start_times"]
    trace = read_trace(write(tmp_path, huge), seed=5)
    assert trace.arrival_s.tolist() == read_trace(write(tmp_path, one, "one.json"), seed=5).arrival_s.tolist()
    assert any("burstiness 1," in n for n in trace.notes)
