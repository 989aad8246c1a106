"""`sim validate-external`: a `vllm bench serve --save-detailed` result replayed end to end, measured beside
predicted; bad files stop with `file: reason` and exit status 2."""

import json
import sys
from pathlib import Path

import pytest

from sim.cli.main import main
from sim.records.vllm_bench import metric_keys

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "traces"))
from test_vllm_bench_reader import detailed_result  # noqa: E402  (the result file's shape, from vLLM's source)


def test_end_to_end(tmp_path, capsys):
    path = tmp_path / "vllm-result.json"
    result = detailed_result()
    path.write_text(json.dumps(result))
    out = tmp_path / "val"
    argv = ["validate-external", str(path), "-q", "--out", str(out), "--kv-memory", "2GiB", "--goodput", "ttft:100"]
    assert main(argv) == 0
    report = json.loads((out / "external-validation.json").read_text())
    figures = report["figures"]
    assert list(figures) == metric_keys(goodput=True)
    for key in ("duration", "completed", "failed", "request_throughput", "mean_ttft_ms", "p99_itl_ms"):
        assert figures[key]["measured"] == result[key], key
        assert figures[key]["measured_from"] == "file"
    # e2el is not in vLLM's default --percentile-metrics: measured from the per-request lists (successful requests)
    assert figures["mean_e2el_ms"]["measured"] == pytest.approx(1000 * (0.43 + 0.64 + 0.22) / 3)
    assert figures["mean_e2el_ms"]["measured_from"] == "lists"
    assert figures["request_goodput"]["measured"] is None  # the file has none (it was run without --goodput)
    predicted = json.loads((out / "vllm-bench.json").read_text())
    assert figures["completed"]["predicted"] == predicted["completed"] == 3
    assert figures["total_input_tokens"]["predicted"] == 450
    assert figures["total_output_tokens"]["predicted"] == 60
    m, p = figures["mean_ttft_ms"]["measured"], figures["mean_ttft_ms"]["predicted"]
    assert figures["mean_ttft_ms"]["relative_error"] == pytest.approx((p - m) / m)
    assert report["requests_replayed"] == 3 and report["requests_skipped"] == 1
    assert (out / "summary.json").exists()
    text = capsys.readouterr().out
    assert "mean_ttft_ms" in text and "external-validation.json" in text


def test_pretty_printed_file_works(tmp_path):
    path = tmp_path / "pretty.json"
    path.write_text(json.dumps(detailed_result(), indent=2))
    assert main(["validate-external", str(path), "-q", "--out", str(tmp_path / "o"), "--kv-memory", "2GiB"]) == 0


@pytest.mark.parametrize(
    "text, reason",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a vllm bench serve result (a JSON object), got list"),
        (json.dumps({"completed": 3, "request_throughput": 1.0, "output_throughput": 2.0}), "--save-detailed"),
        (json.dumps(detailed_result(output_lens=[1])), "output_lens has 1 entries but input_lens has 4"),
    ],
)
def test_malformed_file_exits_2(tmp_path, capsys, text, reason):
    path = tmp_path / "bad.json"
    path.write_text(text)
    assert main(["validate-external", str(path), "-q", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sim: error: {path}: ")
    assert reason in err
    assert not (tmp_path / "o").exists()
