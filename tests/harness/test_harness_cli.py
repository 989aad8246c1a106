"""`sim calibrate` and `sim validate` end to end on a tiny model (interpreter on CPU), and their error exits."""

import json
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from sim.cli.main import main  # noqa: E402
from tests.harness._harness_testutil import TINY  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_commands_exit_2_without_a_gpu(capsys):
    assert main(["calibrate", "--model", "llama-2-7b"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert main(["validate", "traces/alpaca-2k.csv"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_cpu_device_needs_the_interpreter(monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert main(["calibrate", "--model", TINY, "--device", "cpu"]) == 2
    assert "TRITON_INTERPRET=1" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter path")
def test_calibrate_then_validate(tmp_path, capsys):
    prof = tmp_path / "prof.json"
    assert (
        main(
            [
                "calibrate",
                "--model",
                TINY,
                "--device",
                "cpu",
                "--dtype",
                "fp32",
                "--kv-memory",
                "256KiB",
                "--block-size",
                "8",
                "--max-num-seqs",
                "8",
                "--repeats",
                "1",
                "--passes",
                "1",
                "--budget-s",
                "4",
                "--out",
                str(prof),
            ]
        )
        == 0
    )
    data = json.loads(prof.read_text())
    assert data["kind"] == "kvsim-cost-profile" and data["meta"]["model"] == "tiny" and len(data["samples"]) >= 3
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens,n\n0,12,3,2\n0,9,2,1\n")
    out = tmp_path / "val"
    assert (
        main(
            [
                "validate",
                str(trace),
                "--model",
                TINY,
                "--gpu",
                "h100-80gb",
                "--device",
                "cpu",
                "--dtype",
                "fp32",
                "--kv-memory",
                "64KiB",
                "--block-size",
                "8",
                "--allocators",
                "paged,contiguous-oracle",
                "--cost-model",
                str(prof),
                "--check-every",
                "1",
                "--out",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "within bf16 tolerance" in text
    for alloc in ("paged", "contiguous-oracle"):
        rec = json.loads((out / alloc / "validation.json").read_text())
        assert rec["gpu"] == "h100-80gb" and rec["model"] == "tiny" and rec["allocator"] == alloc
        for name in (
            "batch_size_mean",
            "batch_size_max",
            "output_tokens_per_s",
            "ttft_p50",
            "ttft_p99",
            "tpot_p50",
            "tpot_p99",
            "preemptions",
            "duration_s",
            "peak_blocks_used",
            "kv_token_states",
            "kv_free",
        ):
            assert set(rec["metrics"][name]) >= {"predicted", "measured", "rel_error"}
        assert rec["metrics"]["batch_size_mean"]["rel_error"] == 0.0  # same schedule (arrivals before any work)
        assert rec["attention_check"]["within_tolerance"]
        assert os.path.exists(out / alloc / "measured_steps.csv")
        timing = (out / alloc / "measured_timing.csv").read_text().splitlines()
        steps = (out / alloc / "measured_steps.csv").read_text().splitlines()
        assert timing[0] == "execute_s,gpu_s,issue_s,static" and len(timing) == len(steps)
        assert any(line.endswith(",1") for line in timing[1:])  # decode-only iterations ran the static path
        assert any(line.endswith(",2") for line in timing[1:])  # and so did the prefills (mixed graphs)
        assert all(line.endswith((",1", ",2")) for line in timing[1:])
    head = json.loads((out / "headline.json").read_text())
    assert "paged/contiguous-oracle" in head["ratios"]

    # --no-prefill-graphs: the prefills run eagerly again (static 0), decode-only iterations still from graphs
    out2 = tmp_path / "val2"
    assert (
        main(
            [
                "validate",
                str(trace),
                "--model",
                TINY,
                "--gpu",
                "h100-80gb",
                "--device",
                "cpu",
                "--dtype",
                "fp32",
                "--kv-memory",
                "64KiB",
                "--block-size",
                "8",
                "--allocators",
                "paged",
                "--no-prefill-graphs",
                "--cost-model",
                str(prof),
                "--out",
                str(out2),
                "-q",
            ]
        )
        == 0
    )
    warn = capsys.readouterr().err
    assert "prefill_graphs=True, this replay runs with prefill_graphs=False" in warn
    timing = (out2 / "measured_timing.csv").read_text().splitlines()[1:]
    steps = (out2 / "measured_steps.csv").read_text().splitlines()
    cols = steps[0].split(",")
    prefill = [int(r.split(",")[cols.index("prefill_tokens")]) > 0 for r in steps[1:]]
    assert [line[-1] for line in timing] == ["0" if p else "1" for p in prefill] and any(prefill)
    assert json.loads((out2 / "measured_summary.json").read_text())["harness"]["prefill_graphs"] is False
    # vllm-v1 with a 16-token budget: the 12-token prompt fits, the second request's prompt and the decode rows share
    # iterations; every figure is set beside its measurement, and the schedule is the simulation's
    out3 = tmp_path / "val3"
    v1 = ["--scheduler", "vllm-v1", "--max-num-seqs", "4", "--max-num-batched-tokens", "16"]
    argv = ["validate", str(trace), "--model", TINY, "--gpu", "h100-80gb", "--device", "cpu", "--dtype", "fp32"]
    argv += ["--kv-memory", "64KiB", "--block-size", "8", "--allocators", "paged", "--cost-model", str(prof)]
    assert main([*argv, *v1, "--check-every", "1", "--out", str(out3), "-q"]) == 0
    rec = json.loads((out3 / "validation.json").read_text())
    assert rec["config"]["scheduler"] == "vllm-v1" and rec["config"]["max_num_batched_tokens"] == 16
    assert rec["metrics"]["batch_size_mean"]["rel_error"] == 0.0 and rec["attention_check"]["within_tolerance"]
    # the simulator itself loads the profile
    assert (
        main(
            [
                "replay",
                str(trace),
                "--model",
                TINY,
                "--kv-memory",
                "64KiB",
                "--block-size",
                "8",
                "--cost-model",
                str(prof),
                "--out",
                str(tmp_path / "r"),
                "-q",
            ]
        )
        == 0
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter path")
def test_calibrate_then_validate_a_hybrid_model(tmp_path, capsys):
    """A model with sliding-window and full layers (a config.json with layer_types): calibration times its grid on
    paged-hybrid's pages, validation replays paged-hybrid and then paged (the pool laid out again between them)."""
    from tests.harness._harness_testutil import tiny_hybrid_config

    model = tiny_hybrid_config(tmp_path)
    prof = tmp_path / "prof.json"
    common = ["--model", model, "--device", "cpu", "--dtype", "fp32", "--block-size", "4"]
    argv = ["calibrate", *common, "--kv-memory", "64KiB", "--max-num-seqs", "4", "--repeats", "1", "--passes", "1"]
    assert main([*argv, "--budget-s", "2", "--out", str(prof)]) == 0
    out = capsys.readouterr().out
    assert "3 KV-cache groups: the grid runs on paged-hybrid's pages" in out
    meta = json.loads(prof.read_text())["meta"]
    assert meta["model"] == "tiny-swa" and meta["allocator"] == "paged-hybrid" and meta["kv_groups"] == 3
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens,n\n0,9,8,2\n0,5,10,1\n")
    val = tmp_path / "val"
    argv = ["validate", str(trace), *common, "--gpu", "h100-80gb", "--kv-memory", "16KiB", "--check-every", "1"]
    argv += ["--allocators", "paged-hybrid,paged", "--cost-model", str(prof), "--out", str(val), "-q"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "KV-cache groups: 3; largest |error| 0.00pp" in text
    for alloc, groups in (("paged-hybrid", 3), ("paged", None)):
        rec = json.loads((val / alloc / "validation.json").read_text())
        assert rec["model"] == "tiny-swa" and rec["allocator"] == alloc and rec["config"]["kv_groups"] == groups
        assert rec["attention_check"]["within_tolerance"] and rec["attention_check"]["rows_checked"] > 10
        assert rec["metrics"]["batch_size_mean"]["rel_error"] == 0.0  # same schedule (arrivals before any work)
        assert rec["metrics"]["kv_free"]["abs_error_pp"] == 0.0
        if groups:
            assert [g["kind"] for g in rec["kv_groups"]] == ["sliding_window", "sliding_window", "full"]
            assert all(e["met"] for g in rec["kv_groups"] for e in g["kv_memory"].values())
        else:
            assert rec["kv_groups"] is None
    assert "paged/paged-hybrid" in json.loads((val / "headline.json").read_text())["ratios"]


def test_mla_models_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0,9,8\n")
    argv = ["validate", str(trace), "--model", "deepseek-v3", "--device", "cpu", "--kv-memory", "1GiB", "-q"]
    assert main([*argv, "--out", str(tmp_path / "v")]) == 2
    assert "caches an MLA latent" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_hybrid_preset_commands_of_record_sh_exit_2_without_a_gpu(capsys):
    """record.sh PART=hybrid's commands (less the profile it writes first) get as far as the GPU check."""
    assert main(["calibrate", "--model", "llama-3.1-8b-swa", "--gpu", "h100-80gb", "--budget-s", "50"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    argv = ["validate", "traces/azure-llm-2023-conv.csv", "--first", "300", "--scale", "2", "--kv-memory", "2GiB"]
    argv += ["--allocators", "paged-hybrid,paged", "--scheduler", "vllm-v1", "--max-num-seqs", "256"]
    argv += ["--max-num-batched-tokens", "2048", "--model", "llama-3.1-8b-swa", "--gpu", "h100-80gb", "-q"]
    assert main(argv) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
