"""Synthetic traces: published means, arrival processes, resampling, prefix groups, n / beam_width, and errors."""

import numpy as np
import pytest

from sim.errors import UserError
from sim.traces.generate import LENGTH_MODELS, arrivals, fit_lognormal_mus, generate, make_rng, parse_lengths
from sim.traces.readers import read_trace
from sim.traces.writers import write_trace


@pytest.mark.parametrize("name, prompt_mean, output_mean", [("sharegpt", 161, 338), ("alpaca", 19, 58)])
def test_named_lengths_hit_published_means(name, prompt_mean, output_mean):
    t = generate(name, rate=10, count=100_000, seed=0)
    assert abs(t.prompt_tokens.mean() / prompt_mean - 1) < 0.02
    assert abs(t.output_tokens.mean() / output_mean - 1) < 0.02
    # vLLM's ShareGPT filter: both lengths >= 4, prompt <= 1,024, prompt + output <= 2,048.
    assert t.prompt_tokens.min() >= 4 and t.output_tokens.min() >= 4
    assert t.prompt_tokens.max() <= 1024 and (t.prompt_tokens + t.output_tokens).max() <= 2048


def test_fitted_constants_are_reproducible():
    for model in LENGTH_MODELS.values():
        mp, mo = fit_lognormal_mus(model, draws=400_000, iterations=8)
        assert mp == pytest.approx(model.prompt_mu, abs=0.02)
        assert mo == pytest.approx(model.output_mu, abs=0.02)


def test_seeded_and_deterministic():
    a = generate("sharegpt", rate=2, count=500, seed=3)
    b = generate("sharegpt", rate=2, count=500, seed=3)
    c = generate("sharegpt", rate=2, count=500, seed=4)
    assert a.arrival_s.tolist() == b.arrival_s.tolist() and a.prompt_tokens.tolist() == b.prompt_tokens.tolist()
    assert a.prompt_tokens.tolist() != c.prompt_tokens.tolist()


def test_poisson_arrivals():
    t = arrivals(make_rng(0), rate=4.0, count=200_001)
    gaps = np.diff(t)
    assert t[0] == 0.0 and len(t) == 200_001
    assert gaps.mean() == pytest.approx(0.25, rel=0.01)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.02)


def test_gamma_arrivals_have_the_asked_burstiness():
    t = arrivals(make_rng(0), rate=2.0, count=200_001, cv=3.0)
    gaps = np.diff(t)
    assert gaps.mean() == pytest.approx(0.5, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.05)


def test_duration_mode():
    t = arrivals(make_rng(1), rate=10.0, duration_s=1000.0)
    assert t[0] == 0.0 and t[-1] < 1000.0 and np.all(np.diff(t) >= 0)
    # Poisson count over 1,000 s at 10/s: 10,000 +- 100 (one standard deviation); allow 5.
    assert abs(len(t) - 10_001) < 500


def test_resample_draws_pairs_from_the_source(tmp_path):
    src = tmp_path / "src.csv"
    src.write_text("arrival_s,prompt_tokens,output_tokens\n0,100,1\n1,200,2\n2,300,3\n")
    t = generate(f"resample:{src}", rate=1, count=300, seed=0)
    pairs = set(zip(t.prompt_tokens.tolist(), t.output_tokens.tolist()))
    assert pairs == {(100, 1), (200, 2), (300, 3)}  # every pair kept together; 300 draws hit all three


def test_resample_from_length_only_trace(tmp_path):
    src = tmp_path / "len.csv"
    src.write_text("num_prefill_tokens,num_decode_tokens\n7,8\n")
    t = generate(f"resample:{src}", rate=1, count=5, seed=0)
    assert t.prompt_tokens.tolist() == [7] * 5 and t.output_tokens.tolist() == [8] * 5


def test_prefix_groups_prepend_a_shared_prefix():
    base = generate("fixed:50,10", rate=1, count=400, seed=5)
    t = generate("fixed:50,10", rate=1, count=400, seed=5, prefix_groups=4, prefix_tokens=200)
    assert t.prompt_tokens.tolist() == [250] * 400
    assert t.arrival_s.tolist() == base.arrival_s.tolist()  # groups are drawn after arrivals and lengths
    assert set(t.columns["prefix_group"].tolist()) == {0, 1, 2, 3}
    assert t.columns["prefix_tokens"].tolist() == [200] * 400
    half = generate("fixed:50,10", rate=1, count=4000, seed=5, prefix_groups=4, prefix_tokens=200, prefix_fraction=0.5)
    grouped = half.columns["prefix_group"] >= 0
    assert 0.45 < grouped.mean() < 0.55
    assert half.prompt_tokens[~grouped].tolist() == [50] * int((~grouped).sum())
    assert half.columns["prefix_tokens"][~grouped].tolist() == [0] * int((~grouped).sum())


def test_n_and_beam_width_columns_round_trip(tmp_path):
    t = generate("alpaca", rate=1, count=10, seed=0, n=4)
    assert t.columns["n"].tolist() == [4] * 10 and "beam_width" not in t.columns
    t = generate("alpaca", rate=1, count=10, seed=0, n=2, beam_width=4, prefix_groups=2, prefix_tokens=10)
    path = str(tmp_path / "g.csv")
    write_trace(t, path)
    back = read_trace(path)
    assert (
        open(path).readline().strip() == "arrival_s,prompt_tokens,output_tokens,n,beam_width,prefix_group,prefix_tokens"
    )
    for name in ("n", "beam_width", "prefix_group", "prefix_tokens"):
        assert back.columns[name].tolist() == t.columns[name].tolist()
    assert back.prompt_tokens.tolist() == t.prompt_tokens.tolist()
    assert np.allclose(back.arrival_s, t.arrival_s, atol=1e-7)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(arrival_process="gamma"), "gamma arrivals need --cv"),
        (dict(cv=2.0), "--cv applies to --arrivals gamma"),
        (dict(prefix_groups=3), "--prefix-groups and --prefix-tokens go together"),
        (dict(n=3, beam_width=2), r"--n \(3\) must not exceed --beam-width \(2\)"),
        (dict(lengths="zipf"), "unknown --lengths 'zipf'"),
        (dict(lengths="fixed:10"), "--lengths fixed:PROMPT,OUTPUT needs two positive integers"),
        (dict(arrival_process="uniform"), "unknown arrival process 'uniform'"),
    ],
)
def test_generate_errors(kwargs, message):
    args = dict(lengths="sharegpt", rate=1.0, count=10)
    args.update(kwargs)
    with pytest.raises(UserError, match=message):
        generate(args.pop("lengths"), **args)


def test_parse_lengths_fixed():
    sampler = parse_lengths("fixed:12,34")
    p, o = sampler.sample(make_rng(0), 3)
    assert p.tolist() == [12, 12, 12] and o.tolist() == [34, 34, 34]
