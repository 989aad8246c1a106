"""Fuzzing every option parser with hypothesis: sizes and durations (sim.units), the argparse types of
sim.cli.options, model dimension strings, GPU and model presets, allocator specs, sweep specs (random TOML values for
every key) and the options of `sim replay` and `sim trace generate`, run through the `sim` command.

The promises checked, for any input:
- no traceback: a parser raises nothing but UserError / argparse.ArgumentTypeError, and the command exits 0 or 2 (an
  argparse error or `sim: error: ...`), its message naming the option;
- an accepted value is finite and within the documented bounds (README's option tables);
- what an accepted command writes is finite (the replay summary, the generated trace).

The "ci" profile (tests/conftest.py, the default) runs 60 examples per test (120 for the command-level ones, which
draw one option at a time); HYPOTHESIS_PROFILE=thorough runs 5,000 (10,000).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import tempfile

import numpy as np
import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from sim.allocators import resolve_allocator
from sim.cli import options as cli_options
from sim.cli.main import main
from sim.errors import UserError
from sim.hardware.budget import MAX_KV_BLOCKS, kv_budget
from sim.hardware.gpus import GPUS, resolve_gpu
from sim.hardware.models import DTYPE_BYTES, MAX_DIM, MAX_PARAMS, MODELS, resolve_model
from sim.traces.generate import MAX_GENERATED_REQUESTS
from sim.units import MAX_DURATION_S, parse_duration, parse_size

_DIR = tempfile.mkdtemp(prefix="kvsim-fuzz-options-")
TRACE = os.path.join(_DIR, "t.csv")
with open(TRACE, "w") as _f:
    _f.write("arrival_s,prompt_tokens,output_tokens\n0,10,5\n0.5,20,6\n1,300,4\n")

# The command-level tests draw one option at a time, so they get twice the profile's examples.
COMMAND_EXAMPLES = settings.default.max_examples * 2

# --- strategies --------------------------------------------------------------------------------------------------
ODD = [
    "",
    " ",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "infinity",
    "1e400",
    "-1e400",
    "1e-400",
    "-0",
    "0",
    "-1",
    "0x10",
    "1_000",
    " 7 ",
    "1e3",
    "1.5",
    ".5",
    "5.",
    "1e",
    "e5",
    "+3",
    "٣",
    "9" * 400,
    "9" * 5000,
    "1" * 30,
    "2**64",
    "1,000",
    "None",
    "true",
]
UNITS = ["", "b", "B", "kb", "KiB", "mb", "MiB", "GB", "gib", "TB", "TiB", "s", "ms", "us", "min", "h", "xb", "GIB "]


def number_texts() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(ODD),
        st.integers(-(10**30), 10**30).map(str),
        st.integers(0, 2**70).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.floats(min_value=0, max_value=1e12).map(lambda v: f"{v:g}"),
    )


def any_texts() -> st.SearchStrategy[str]:
    return st.one_of(number_texts(), st.text(max_size=30))


def unit_texts() -> st.SearchStrategy[str]:
    """A number and a unit, sometimes spaced, sometimes arbitrary text."""
    return st.one_of(
        st.builds(lambda n, s, u: f"{n}{s}{u}", number_texts(), st.sampled_from(["", " "]), st.sampled_from(UNITS)),
        st.text(max_size=20),
    )


# --- sim.units ---------------------------------------------------------------------------------------------------
@given(unit_texts())
def test_parse_size(text):
    try:
        value = parse_size(text)
    except UserError as exc:
        assert "cannot read size" in str(exc)
        return
    assert isinstance(value, int) and value >= 0


@given(unit_texts())
def test_parse_duration(text):
    try:
        value = parse_duration(text)
    except UserError as exc:
        assert "cannot read duration" in str(exc)
        return
    assert isinstance(value, float) and math.isfinite(value) and 0 <= value <= MAX_DURATION_S


# --- argparse types ----------------------------------------------------------------------------------------------
BOUNDS = {
    "positive_int": (int, 1, cli_options.MAX_INT),
    "non_negative_int": (int, 0, cli_options.MAX_INT),
    "seed": (int, 0, cli_options.MAX_SEED),
    "positive_float": (float, 0, math.inf),  # > 0 and finite: checked below
    "fraction": (float, 0, 1),  # (0, 1]
    "probability": (float, 0, 1),
}


@pytest.mark.parametrize("name", sorted(BOUNDS))
@given(text=any_texts())
def test_argparse_types(name, text):
    kind, low, high = BOUNDS[name]
    try:
        value = getattr(cli_options, name)(text)
    except argparse.ArgumentTypeError as exc:
        assert str(exc).startswith("expected ")
        return
    assert type(value) is kind and low <= value <= high
    if kind is float:
        assert math.isfinite(value)
        if name in ("positive_float", "fraction"):
            assert value > 0


# --- models and GPUs ---------------------------------------------------------------------------------------------
DIM_KEYS = ["layers", "hidden", "heads", "kv_heads", "head_size", "intermediate", "vocab", "params", "max_len"]


def dim_values() -> st.SearchStrategy[str]:
    return st.one_of(
        st.integers(1, 64).map(str),  # mostly plausible, so that many strings are accepted
        st.sampled_from(["1e9", "8e9", "128", "4096"]),
        number_texts(),
    )


@st.composite
def dimension_strings(draw) -> str:
    """A valid dimension string with 0 to 2 faults (a bad value, a key dropped, repeated or unknown), or any text."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=60))
    kv_heads = draw(st.integers(1, 16))
    values = {
        "layers": draw(st.integers(1, 96)),
        "heads": kv_heads * draw(st.integers(1, 8)),
        "kv_heads": kv_heads,
        "head_size": draw(st.sampled_from([1, 16, 64, 128, 256])),
        "params": draw(st.sampled_from(["1e3", "1e8", "7e9", "7e10", "1.2e12"])),
        "max_len": draw(st.integers(2, 32768)),
    }
    for key in draw(st.lists(st.sampled_from(["hidden", "intermediate", "vocab", "kv_dtype", "name"]), max_size=2)):
        values[key] = draw(st.sampled_from(sorted(DTYPE_BYTES))) if key == "kv_dtype" else draw(st.integers(1, 65536))
    items = [f"{k}={v}" for k, v in values.items()]
    for _ in range(draw(st.integers(0, 2))):
        fault = draw(st.sampled_from(["value", "drop", "repeat", "unknown", "bare"]))
        i = draw(st.integers(0, len(items) - 1))
        key = items[i].split("=")[0]
        if fault == "value":
            items[i] = f"{key}={draw(dim_values())}"
        elif fault == "drop" and len(items) > 1:
            del items[i]
        elif fault == "repeat":
            items.append(items[i])
        elif fault == "unknown":
            items.append(f"{draw(st.sampled_from(['colour', '', ' heads', 'kv_dtype']))}={draw(dim_values())}")
        else:
            items[i] = key
    return ",".join(draw(st.permutations(items)))


def check_model(model) -> None:
    for dim in ("num_layers", "hidden_size", "num_q_heads", "num_kv_heads", "head_size", "intermediate_size"):
        assert 1 <= getattr(model, dim) <= 4 * MAX_DIM**2, dim  # hidden and intermediate default to products
    assert 1 <= model.num_params <= MAX_PARAMS
    assert model.max_model_len >= 1 and model.num_q_heads % model.num_kv_heads == 0
    assert model.kv_dtype in DTYPE_BYTES and model.kv_bytes_per_token() > 0


@given(
    dimension_strings(), st.sampled_from(sorted(GPUS)), st.sampled_from([1, 2, 8, 16]), st.sampled_from([1, 16, 256])
)
def test_model_dimension_strings(text, gpu, tp, block_size):
    """Accepted dimensions are within bounds, and the KV budget they give is refused or at most MAX_KV_BLOCKS."""
    try:
        model = resolve_model(text)
    except UserError as exc:
        assert "model" in str(exc) or "kv_dtype" in str(exc) or "heads" in str(exc)
        event("dimensions refused")
        return
    check_model(model)
    try:
        budget = kv_budget(model, GPUS[gpu], block_size, tp=tp)
    except UserError:
        event("dimensions accepted, budget refused")
        return
    event("dimensions accepted, budget accepted")
    assert 1 <= budget.num_blocks <= MAX_KV_BLOCKS and budget.requested_bytes > 0


@given(
    st.one_of(st.sampled_from(sorted(MODELS)), st.sampled_from(sorted(GPUS)), st.text(max_size=20)),
    st.one_of(st.none(), st.integers(-5, 10**20)),
)
def test_presets(name, max_model_len):
    try:
        gpu = resolve_gpu(name)
    except UserError as exc:
        assert "unknown GPU" in str(exc)
    else:
        assert gpu is GPUS[name]
    if "=" in name:
        return  # a dimension string: above
    try:
        model = resolve_model(name, max_model_len)
    except UserError as exc:
        assert "unknown model" in str(exc) or "--max-model-len" in str(exc)
        return
    check_model(model)
    assert model.max_model_len == (max_model_len or MODELS[name].max_model_len) >= 2


# --- allocator specs ---------------------------------------------------------------------------------------------
# Module names from a fixed vocabulary (importing arbitrary modules has side effects) and random text.
MODULE_PARTS = ["sim", "allocators", "paged", "contiguous", "json", "", " ", "..", ".", "1a", "no_such_kvsim_module"]
CLASS_NAMES = ["PagedAllocator", "ContiguousMax", "REGISTRY", "resolve_allocator", "loads", "X", "", "1", "a b"]


@st.composite
def allocator_specs(draw) -> str:
    if draw(st.booleans()):
        return draw(
            st.one_of(st.sampled_from(["paged", "contiguous-max", ":X", "..rel:X", "a:b:c"]), st.text(max_size=10))
        )
    module = ".".join(draw(st.lists(st.sampled_from(MODULE_PARTS), min_size=1, max_size=3)))
    return f"{module}{draw(st.sampled_from([':', '::', '', ': ']))}{draw(st.sampled_from(CLASS_NAMES))}"


@given(allocator_specs())
def test_allocator_specs(spec):
    try:
        cls = resolve_allocator(spec)
    except UserError as exc:
        assert "allocator" in str(exc) or "KV allocator" in str(exc)
        return
    assert isinstance(cls, type) and cls.name


# --- sweep specs -------------------------------------------------------------------------------------------------
def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_scalars() -> st.SearchStrategy:
    return st.one_of(
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.integers(-3, 5000),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=12),
        st.sampled_from(["4096", "1e400", "40GiB", "2ms", "no", "native", "buddy", "t.csv", "p.json"]),
    )


def toml_values() -> st.SearchStrategy:
    return st.one_of(
        toml_scalars(),
        st.lists(toml_scalars(), max_size=3),
        st.dictionaries(st.sampled_from(["a", "tp"]), toml_scalars(), max_size=2),
    )


VALID_SPEC = {
    "name": "fuzz",
    "traces": ["t.csv"],
    "models": ["llama-2-7b"],
    "gpus": ["a100-40gb"],
    "allocators": ["paged"],
    "block_sizes": [16],
    "rates": ["native", 2.0],
    "slo": "ttft_p99=2s",
    "first": 3,
    "duration": "10s",
    "table": "results.csv",
}
VALID_OPTIONS = {
    "tp": 1,
    "max_num_seqs": 64,
    "max_num_batched_tokens": 4096,
    "kv_memory": "1GiB",
    "gpu_memory_utilization": 0.9,
    "max_model_len": 4096,
    "address_space": "buddy",
    "step_overhead": "2ms",
    "sharing": True,
    "beam_replace_prob": 0.3,
    "seed": 0,
    "cost_model": "p.json",
}
with open(os.path.join(_DIR, "p.json"), "w") as _f:
    _f.write("{}\n")  # not a profile: a spec naming it is refused


@st.composite
def sweep_specs(draw) -> str:
    """A valid spec with a few keys replaced by random TOML values, dropped, or added."""
    spec, options = dict(VALID_SPEC), dict(VALID_OPTIONS)
    del options["cost_model"]
    for key in draw(st.lists(st.sampled_from(sorted(VALID_SPEC) + ["colour"]), max_size=2)):
        spec[key] = draw(toml_values())
    for key in draw(st.lists(st.sampled_from(sorted(VALID_OPTIONS) + ["placement"]), max_size=2)):
        options[key] = draw(st.one_of(toml_values(), st.just(VALID_OPTIONS.get(key, 0))))
    if draw(st.integers(0, 3)) == 0:
        del spec[draw(st.sampled_from(sorted(spec)))]
    lines = [f"{k} = {toml_value(v)}" for k, v in spec.items()]
    if draw(st.integers(0, 9)):
        lines += ["[options]", *(f"{k} = {toml_value(v)}" for k, v in options.items())]
    else:
        lines.append(f"options = {toml_value(draw(toml_values()))}")
    return "\n".join(lines) + "\n"


@settings(max_examples=COMMAND_EXAMPLES)
@given(sweep_specs())
def test_sweep_specs(text):
    """load_spec refuses with a UserError, or its spec's cells have checked options within bounds and the first cell
    replays (or is refused) with finite figures."""
    from sim.report.sweep import load_trace, run_cell
    from sim.report.sweep_spec import base_options, cells_of, load_spec
    from sim.serving.replay import validate_options

    path = os.path.join(_DIR, "spec.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    try:
        spec = load_spec(path)
    except UserError as exc:
        assert str(exc)
        event("spec refused")
        return
    cells = cells_of(spec)
    for cell in cells:
        options = base_options(spec, cell.model, cell.gpu)
        validate_options(options)
        assert options.tp >= 1 and 0 <= options.seed < 2**64 and isinstance(options.sharing, bool)
        assert math.isfinite(options.step_overhead_s) and 0 < options.gpu_memory_utilization <= 1
    try:
        row = run_cell(spec, cells[0], load_trace(spec, cells[0].trace))
    except UserError:
        event("spec accepted, cell refused")
        return
    event("spec accepted, cell replayed")
    assert row["trace"] == cells[0].trace
    for value in row.values():
        assert value is None or isinstance(value, (str, bool)) or math.isfinite(value)


# --- the sim command ---------------------------------------------------------------------------------------------
def run_sim(argv: list[str]) -> tuple[int, str]:
    """(exit status, stderr) of `sim ARGV` in this process; a traceback fails the test."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


def assert_refusal_names(err: str, *names: str) -> None:
    assert "error:" in err and "Traceback" not in err, err
    assert any(n in err for n in names), err


# option -> (strategy of values, fragments one of which a refusal's message holds)
REPLAY_OPTIONS = {
    "--block-size": (st.one_of(st.integers(-2, 4096).map(str), number_texts()), ["--block-size", "block"]),
    "--kv-memory": (
        st.one_of(unit_texts(), st.integers(0, 2**31).map(str), st.sampled_from(["1e30GiB", "1e400", "1TiB"])),
        ["--kv-memory", "KV memory"],
    ),
    "--tp": (st.one_of(st.sampled_from(["1", "2", "3", "8", "64", "10" * 20]), number_texts()), ["--tp"]),
    "--max-model-len": (number_texts(), ["--max-model-len"]),  # also named when its activations leave no KV
    "--max-num-seqs": (number_texts(), ["--max-num-seqs", "does not fit"]),
    "--max-num-batched-tokens": (number_texts(), ["--max-num-batched-tokens", "does not fit"]),
    "--gpu-memory-utilization": (number_texts(), ["--gpu-memory-utilization", "does not fit"]),
    "--step-overhead": (unit_texts(), ["--step-overhead"]),
    "--beam-replace-prob": (number_texts(), ["--beam-replace-prob"]),
    "--seed": (number_texts(), ["--seed"]),
    "--rate": (number_texts(), ["--rate"]),
    "--model": (
        st.one_of(dimension_strings(), st.sampled_from(sorted(MODELS))),
        ["model", "kv_dtype", "heads", "does not fit", "KV memory", "--tp"],
    ),
    "--gpu": (st.one_of(st.sampled_from(sorted(GPUS)), st.text(max_size=10)), ["GPU", "does not fit"]),
    "--allocator": (allocator_specs(), ["allocator", "--no-sharing", "--address-space"]),
}


@st.composite
def replay_options(draw) -> tuple[str, str]:
    option = draw(st.sampled_from(sorted(REPLAY_OPTIONS)))
    return option, draw(REPLAY_OPTIONS[option][0])


@settings(max_examples=COMMAND_EXAMPLES)
@given(replay_options())
# an fp8 model on the default GPU (no fp8): the refusal named only --kv-cache-dtype, not the model's kv_dtype
@example(("--model", "layers=1,heads=1,kv_heads=1,head_size=1,params=1e3,max_len=2,kv_dtype=fp8"))
def test_replay_options(option_value):
    """`sim replay` with one fuzzed option: exit 2 with a message naming it, or a summary of finite figures."""
    option, value = option_value
    out = tempfile.mkdtemp(dir=_DIR)
    code, err = run_sim(["replay", TRACE, "-q", "--force", "--out", out, f"{option}={value}"])
    event(f"{option} {'accepted' if code == 0 else 'refused'}")
    if code == 0:
        with open(os.path.join(out, "summary.json")) as f:
            summary = json.load(f)
        assert 1 <= summary["kv_blocks"] <= MAX_KV_BLOCKS
        assert math.isfinite(summary["duration_s"]) and summary["duration_s"] >= 0
        for stats in summary["latency_s"].values():
            assert all(v is None or math.isfinite(v) for v in stats.values())
        return
    assert code == 2, err
    assert_refusal_names(err, *REPLAY_OPTIONS[option][1])


GENERATE_OPTIONS = {
    "--lengths": (
        st.one_of(
            st.sampled_from(["sharegpt", "alpaca", "fixed:4,5", "fixed:0,5", "fixed:a", "resample:nowhere.csv"]),
            st.builds(lambda p, o: f"fixed:{p},{o}", number_texts(), number_texts()),
            st.text(max_size=12),
        ),
        ["--lengths", "nowhere.csv"],  # a trace to resample is refused as `file: reason`, as every trace
    ),
    "--count": (
        st.one_of(  # small enough to generate at once, or beyond the maximum (refused before anything is drawn)
            st.integers(-3, 2000).map(str), st.integers(MAX_GENERATED_REQUESTS + 1, 10**30).map(str)
        ),
        ["--count"],
    ),
    "--duration": (
        st.one_of(st.sampled_from(["1e9", "1e6", "1min", "0", "-1", "abc", ""]), unit_texts()),
        ["--duration", "--rate"],
    ),
    "--rate": (st.one_of(st.sampled_from(["0.5", "2", "100"]), number_texts()), ["--rate"]),
    "--cv": (number_texts(), ["--cv"]),
    "--arrivals": (st.sampled_from(["poisson", "gamma", "uniform", ""]), ["--arrivals", "--cv"]),
    "--seed": (number_texts(), ["--seed"]),
    "--prefix-groups": (number_texts(), ["--prefix-groups"]),
    "--prefix-tokens": (number_texts(), ["--prefix-tokens"]),
    "--prefix-fraction": (number_texts(), ["--prefix-fraction", "--prefix-groups"]),
    "--n": (number_texts(), ["--n"]),
    "--beam-width": (number_texts(), ["--beam-width"]),
}
# The options each fuzzed one needs beside it to be meaningful (gamma needs --cv, --cv needs gamma, ...).
GENERATE_COMPANIONS = {
    "--cv": ["--arrivals", "gamma"],
    "--arrivals": ["--cv", "2"],
    "--prefix-tokens": ["--prefix-groups", "2"],
    "--prefix-groups": ["--prefix-tokens", "8"],
    "--prefix-fraction": ["--prefix-groups", "2", "--prefix-tokens", "8"],
    "--n": ["--beam-width", "4"],
}


@st.composite
def generate_options(draw) -> list[str]:
    option = draw(st.sampled_from(sorted(GENERATE_OPTIONS)))
    value = draw(GENERATE_OPTIONS[option][0])
    argv = [f"{option}={value}", *GENERATE_COMPANIONS.get(option, [])]
    if option == "--duration":  # at most 1e9 s x 1e-5 req/s = 10,000 requests: quick when accepted
        argv += ["--rate", "1e-5"]
    elif option != "--count":  # a tiny --rate makes 50 requests span more than 1e9 s: refused
        argv += ["--count", "50"]
    return argv


@settings(max_examples=COMMAND_EXAMPLES)
@given(generate_options())
def test_trace_generate_options(argv):
    """`sim trace generate` with one fuzzed option: exit 2 with a message naming it, or a trace of finite arrivals
    and positive lengths."""
    option = argv[0].split("=")[0]
    out = os.path.join(tempfile.mkdtemp(dir=_DIR), "g.csv")
    code, err = run_sim(["trace", "generate", *argv, "-o", out])
    event(f"{option} {'accepted' if code == 0 else 'refused'}")
    if code == 0:
        data = np.loadtxt(out, delimiter=",", skiprows=1, ndmin=2, usecols=(0, 1, 2))
        assert 1 <= len(data) <= MAX_GENERATED_REQUESTS
        assert np.all(np.isfinite(data)) and np.all(np.diff(data[:, 0]) >= 0) and np.all(data[:, 1:] >= 1)
        return
    assert code == 2, err
    assert not os.path.exists(out)
    assert_refusal_names(err, *GENERATE_OPTIONS[option][1], "no request arrives")
