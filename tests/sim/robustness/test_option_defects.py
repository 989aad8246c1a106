"""Bad options exit 2 with a message naming the option and the reason: never a traceback, never a silent wrong
answer (regressions of the robustness issue, items 6, 7, 8 and 10). Each test runs the command through
`sim.cli.main.main`, as `sim` does."""

from __future__ import annotations

import csv
import json
import os

import pytest

import sim
from sim.cli.main import main
from sim.hardware.budget import MAX_KV_BLOCKS

TINY = "layers=1,heads=1,kv_heads=1,head_size=1,params=1e3,max_len=8"
DIMS = "layers=2,heads=8,kv_heads=2,head_size=64,params=1e8,max_len=512"


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `sim ARGV`: argparse's errors end in SystemExit(2), the others return 2."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(capsys, argv: list[str], *fragments: str) -> str:
    code, _, err = run(capsys, argv)
    assert code == 2, err
    assert "error:" in err and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.fixture
def trace(tmp_path) -> str:
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,prompt_tokens,output_tokens\n0,10,5\n1,20,6\n2,30,4\n")
    return str(path)


def replay(trace: str, tmp_path, *options: str) -> list[str]:
    return ["replay", trace, "-q", "--out", str(tmp_path / "out"), *options]


# --- 6. unbounded memory -------------------------------------------------------------------------------------------
def test_tiny_model_on_a_large_gpu_is_refused_with_the_numbers(capsys, tmp_path, trace):
    """Was: MemoryError (billions of blocks). Now: the block count, the maximum, and the block size that fits."""
    err = refused(
        capsys, replay(trace, tmp_path, "--model", TINY, "--gpu", "h100-80gb"), f"more than the {MAX_KV_BLOCKS:,}"
    )
    assert "blocks of 16 tokens" in err and "--block-size" in err


def test_huge_kv_memory_is_refused(capsys, tmp_path, trace):
    """Was: OverflowError (1e30GiB: more blocks than an index; 1e400: float infinity)."""
    refused(capsys, replay(trace, tmp_path, "--kv-memory", "1e30GiB"), f"more than the {MAX_KV_BLOCKS:,}")
    refused(capsys, replay(trace, tmp_path, "--kv-memory", "1e400"), "--kv-memory", "too large")


def test_the_cap_refuses_only_what_is_above_it():
    """Exactly MAX_KV_BLOCKS blocks is a budget; one block more is refused."""
    from sim.errors import UserError
    from sim.hardware.budget import kv_budget
    from sim.hardware.models import resolve_model

    model = resolve_model(TINY)  # 2 B of KV per token (2 x 1 layer x 1 head x 1 x 2 B)
    block = 16 * model.kv_bytes_per_token()
    assert kv_budget(model, None, 16, kv_memory=MAX_KV_BLOCKS * block).num_blocks == MAX_KV_BLOCKS
    with pytest.raises(UserError, match="use --block-size 17 or more"):
        kv_budget(model, None, 16, kv_memory=(MAX_KV_BLOCKS + 1) * block)


# --- 7. tracebacks on options --------------------------------------------------------------------------------------
def test_negative_seed_is_refused(capsys, tmp_path, trace):
    """Was: ValueError from numpy's PCG64 (replay, trace generate)."""
    refused(capsys, replay(trace, tmp_path, "--seed", "-1"), "--seed", "[0, 2^64)")
    out = str(tmp_path / "g.csv")
    refused(capsys, ["trace", "generate", "--count", "5", "--seed", "-1", "-o", out], "--seed")
    refused(capsys, ["trace", "generate", "--count", "5", "--seed", str(2**64), "-o", out], "--seed")
    assert not os.path.exists(out)


@pytest.mark.parametrize("value", ["nan", "inf", "-1e9", "0"])
def test_params_must_be_a_finite_positive_count(capsys, tmp_path, trace, value):
    """Was: ValueError/OverflowError (nan, inf); a replay with negative or no weights (-1e9, 0)."""
    model = f"layers=1,heads=1,kv_heads=1,head_size=128,max_len=8,params={value}"
    refused(capsys, replay(trace, tmp_path, "--model", model), "model dimension params", repr(value))


@pytest.mark.parametrize("spec", [":X", "..rel:X", "sim.allocators:", "a b:C", "x:y:z"])
def test_malformed_allocator_specs_are_refused(capsys, tmp_path, trace, spec):
    """Was: ValueError 'Empty module name' (:X), TypeError about relative imports (..rel:X)."""
    refused(capsys, replay(trace, tmp_path, "--allocator", spec), repr(spec), "package.module:ClassName")


def test_allocator_module_that_fails_to_import_is_reported(capsys, tmp_path, trace, monkeypatch):
    (tmp_path / "broken_alloc_mod.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    refused(capsys, replay(trace, tmp_path, "--allocator", "broken_alloc_mod:X"), "RuntimeError: boom")


def test_generate_count_beyond_the_maximum_is_refused_at_once(capsys, tmp_path):
    """Was: numpy's _ArrayMemoryError (7.28 TiB for 10^12 arrival times)."""
    out = str(tmp_path / "g.csv")
    refused(capsys, ["trace", "generate", "--count", "1000000000000", "-o", out], "--count 1,000,000,000,000")
    refused(capsys, ["trace", "generate", "--rate", "1e300", "--duration", "1e9", "-o", out], "50 million")
    assert not os.path.exists(out)


def test_generate_lengths_and_columns_beyond_a_trace_are_refused(capsys, tmp_path):
    """Was: OverflowError from numpy (fixed:3,10^23, found by the fuzz suite); a trace whose n column the readers
    refuse (--n 10^11); ZeroDivisionError for extreme --cv."""
    out = str(tmp_path / "g.csv")
    refused(capsys, ["trace", "generate", "--lengths", "fixed:3," + "9" * 23, "--count", "5", "-o", out], "--lengths")
    refused(capsys, ["trace", "generate", "--n", "99999999999", "--count", "5", "-o", out], "--n must be at most")
    for cv in ("1e200", "1e-200"):  # was: ZeroDivisionError (gamma shape 1 / cv^2 of 0, or scale of 1 / inf)
        refused(capsys, ["trace", "generate", "--cv", cv, "--arrivals", "gamma", "--count", "5", "-o", out], "--cv")
    assert not os.path.exists(out)


def test_validate_reports_a_missing_cost_model_before_the_gpu(capsys, tmp_path, trace):
    """Was: 'needs a CUDA GPU' on a machine without one (the missing file unmentioned), or a FileNotFoundError
    traceback with --device cpu."""
    missing = str(tmp_path / "missing.json")
    refused(capsys, ["validate", trace, "--cost-model", missing], "cannot read cost profile", "missing.json")


# --- 8. silent wrong answers ---------------------------------------------------------------------------------------
def test_infinite_step_overhead_is_refused(capsys, tmp_path, trace):
    """Was: a replay whose latencies are all nan (exit 0)."""
    refused(capsys, replay(trace, tmp_path, "--step-overhead", "1e400"), "--step-overhead", "at most")


def test_tp_larger_than_the_attention_heads_is_refused(capsys, tmp_path, trace):
    """Was: a replay with 0 weight bytes per GPU (exit 0)."""
    refused(capsys, replay(trace, tmp_path, "--tp", "1000000000000000000000000000000"), "--tp")
    refused(capsys, replay(trace, tmp_path, "--tp", "64"), "--tp 64", "32 attention heads")


@pytest.mark.parametrize(
    "dims",
    ["layers=0", "kv_heads=-1", "heads=0", "heads=-8", "hidden=-5", "intermediate=0", "vocab=-1", "head_size=1.5"],
)
def test_zero_negative_or_fractional_dimensions_are_refused(capsys, tmp_path, trace, dims):
    key = dims.split("=")[0]
    base = ",".join(d for d in DIMS.split(",") if not d.startswith(key + "="))
    refused(capsys, replay(trace, tmp_path, "--model", f"{base},{dims}"), f"model dimension {key} must be")


def test_heads_is_required(capsys, tmp_path, trace):
    """Was: heads silently taken equal to kv_heads (activations and FLOPs of a GQA model underestimated)."""
    dims = DIMS.replace("heads=8,", "")
    refused(capsys, replay(trace, tmp_path, "--model", dims), "model dimensions missing: heads")


def test_a_dimension_given_twice_is_refused(capsys, tmp_path, trace):
    """Was: the last one silently won."""
    refused(capsys, replay(trace, tmp_path, "--model", DIMS + ",layers=4"), "layers is given twice")


# --- sweep specs ---------------------------------------------------------------------------------------------------
def sweep_spec(directory, trace_name: str, options: str = "", extra: str = "") -> str:
    spec = directory / "spec.toml"
    spec.write_text(
        f'name = "s"\ntraces = ["{trace_name}"]\nmodels = ["llama-2-7b"]\nrates = ["native"]\n{extra}\n'
        f"[options]\n{options}\n"
    )
    return str(spec)


@pytest.fixture
def spec_dir(tmp_path, trace):
    d = tmp_path / "specs"
    d.mkdir()
    with open(trace) as src, open(d / "t.csv", "w") as dst:
        dst.write(src.read())
    return d


@pytest.mark.parametrize(
    "option, fragment",
    [
        ("seed = -1", "[options] seed must be an integer >= 0"),
        ('max_num_batched_tokens = "4096"', "[options] max_num_batched_tokens must be an integer"),
        ('kv_memory = "1e400"', "[options] kv_memory"),
        ('sharing = "no"', "[options] sharing must be true or false"),
        ("sharing = 0", "[options] sharing must be true or false"),
        ("tp = 1.7", "[options] tp must be an integer"),
        ('tp = "2"', "[options] tp must be an integer"),
        ("gpu_memory_utilization = true", "[options] gpu_memory_utilization"),
        ('step_overhead = "1e400"', "[options] step_overhead"),
        ('cost_model = "nowhere.json"', "[options] cost_model: nowhere.json does not exist"),
    ],
)
def test_sweep_option_values_are_checked_by_type_and_range(capsys, tmp_path, spec_dir, option, fragment):
    """Was: tracebacks (seed, a string where a number goes, 1e400), or silently wrong cells: sharing = "no" read as
    true, tp = 1.7 read as 1; cost_model refused as unknown."""
    spec = sweep_spec(spec_dir, "t.csv", option)
    refused(capsys, ["sweep", spec, "--out", str(tmp_path / "out"), "-q", "-j", "1"], fragment)


def run_sweep_cli(capsys, spec: str, out) -> list[dict]:
    code, _, err = run(capsys, ["sweep", spec, "--out", str(out), "-q", "-j", "1"])
    assert code == 0, err
    with open(os.path.join(out, "results.csv")) as f:
        return list(csv.DictReader(f))


def test_sweep_trace_column_does_not_depend_on_the_cwd(capsys, tmp_path, spec_dir, monkeypatch):
    """Was: the trace column was a path relative to the cwd ('../../tmp/.../t.csv'), so the same spec gave a
    different table from another directory."""
    spec = sweep_spec(spec_dir, "./t.csv")
    tables = []
    for i, cwd in enumerate((tmp_path, spec_dir, "/")):
        monkeypatch.chdir(cwd)
        rows = run_sweep_cli(capsys, spec, tmp_path / f"out{i}")
        assert rows[0]["trace"] == "t.csv"
        with open(tmp_path / f"out{i}" / "results.csv") as f:
            tables.append(f.read())
    assert tables[0] == tables[1] == tables[2]


def test_sweep_cache_keys_include_the_version(tmp_path, spec_dir, monkeypatch):
    """Was: an upgrade reused cells computed by the old version."""
    from sim.report.sweep_spec import cells_of, load_spec

    spec = load_spec(sweep_spec(spec_dir, "t.csv"))
    before = {c.key for c in cells_of(spec)}
    monkeypatch.setattr(sim, "__version__", sim.__version__ + ".post1")
    assert before.isdisjoint({c.key for c in cells_of(spec)})


@pytest.mark.parametrize(
    "content",
    [
        "[]",
        '"a string"',
        '{"key": "KEY", "row": [1, 2]}',
        '{"key": "KEY", "row": {"x": 1}}',
        '{"key": "KEY", "row": {"trace": "t.csv", "model": {"nested": 1}}}',
        '{"key": "KEY"}',
    ],
)
def test_sweep_cell_file_of_the_wrong_shape_is_recomputed(capsys, tmp_path, spec_dir, content):
    """Was: AttributeError ('list' object has no attribute 'get' / 'items') or KeyError while writing the table."""
    spec = sweep_spec(spec_dir, "t.csv")
    out = tmp_path / "out"
    good = run_sweep_cli(capsys, spec, out)
    (cell,) = os.listdir(out / "cells")
    (out / "cells" / cell).write_text(content.replace("KEY", cell[: -len(".json")]))
    assert run_sweep_cli(capsys, spec, out) == good
    assert json.loads((out / "cells" / cell).read_text())["row"]["trace"] == "t.csv"


def test_sweep_options_apply_to_the_cells_they_mean_something_for(capsys, tmp_path, spec_dir):
    """Was: README's own example ([options] address_space = "buddy" with allocators paged and contiguous-max) stopped
    with `--address-space applies to contiguous allocators, not paged`; sharing = false likewise for contiguous."""
    extra = 'allocators = ["paged", "contiguous-max"]'
    for option in ('address_space = "first-fit"', "sharing = false"):
        rows = run_sweep_cli(capsys, sweep_spec(spec_dir, "t.csv", option, extra), tmp_path / option[:5])
        assert [r["allocator"] for r in rows] == ["paged", "contiguous-max"]


def test_sweep_accepts_a_cost_model_relative_to_the_spec(capsys, tmp_path, spec_dir):
    """Was: `unknown option(s) cost_model`, so a sweep could not use a calibrated profile."""
    from sim.cost.profile import ProfileCostModel

    coefficients = {
        "prefill_pairs": 0.0,
        "decode_context": 0.0,
        "decode_seqs": 0.0,
        "prefill_seqs": 0.0,
        "has_prefill": 0.0,
        "has_decode": 0.0,
    }
    profiles = spec_dir / "profiles"
    profiles.mkdir()
    for name, c0 in (("slow.json", 1.0), ("fast.json", 0.001)):
        profile = ProfileCostModel(c0, 0.0, [], [], coefficients, meta={"model": "llama-2-7b"})
        (profiles / name).write_text(json.dumps(profile.to_dict()))
    slow = run_sweep_cli(capsys, sweep_spec(spec_dir, "t.csv", 'cost_model = "profiles/slow.json"'), tmp_path / "a")
    # every iteration takes c0 = 1 s: the three requests of 4 to 6 tokens take whole seconds each
    assert float(slow[0]["e2e_p50_s"]) >= 4.0
    fast = run_sweep_cli(capsys, sweep_spec(spec_dir, "t.csv", 'cost_model = "profiles/fast.json"'), tmp_path / "b")
    assert float(fast[0]["e2e_p50_s"]) < 0.1
    # the same spec and cells, another profile: recomputed, not resumed
    again = run_sweep_cli(capsys, sweep_spec(spec_dir, "t.csv", 'cost_model = "profiles/slow.json"'), tmp_path / "b")
    assert again == slow
