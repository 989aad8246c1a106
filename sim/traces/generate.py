"""Seeded synthetic traces: arrivals (Poisson or gamma) and lengths (named distributions, or resampled from a trace).

Everything draws from one `numpy.random.Generator(PCG64(seed))`, so a seed and the options fix the trace exactly.

Arrivals: the first request arrives at 0; inter-arrival gaps are exponential (Poisson, coefficient of variation 1) or
gamma with shape 1/cv^2 and mean 1/rate (cv > 1 is burstier than Poisson, cv < 1 more regular).

Lengths: the named distributions draw prompt and output lengths from independent lognormals, rounded to integers,
and keep only pairs that pass the filter that vLLM's serving benchmark applies to ShareGPT (prompt and output at least
4 tokens, prompt at most 1,024, prompt + output at most 2,048); rejected pairs are redrawn. The lognormal shapes
(sigma) are chosen by hand for a long right tail; the locations (mu) are fitted (`fit_lognormal_mus`, 2,000,000
draws, seed 0) so that the means after the filter match published statistics:

  sharegpt  ShareGPT as used in the vLLM paper (Kwon et al., SOSP 2023): mean prompt 161, mean output 338 tokens
  alpaca    Alpaca as used in the vLLM paper: mean prompt 19, mean output 58 tokens

These match means, not shapes: they stand in for the datasets when only their summary statistics matter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sim.errors import UserError
from sim.traces.model import Trace
from sim.traces.readers import detect_format, read_trace
from sim.traces.readers.lengths import poisson_arrivals
from sim.traces.readers.rows import MAX_TOKENS
from sim.units import MAX_DURATION_S

# The most requests one generated trace may hold (about 1.2 GB of arrays while generating): a larger --count, or a
# --rate x --duration that asks for more, is refused before anything is drawn.
MAX_GENERATED_REQUESTS = 50_000_000
# Gamma arrivals: the coefficient of variation of the gaps (shape 1/cv^2 stays a usable float in this range).
MIN_CV, MAX_CV = 1e-3, 1e3
# A group prefix longer than this would overflow nothing, but no model holds it: refused as a typo.
MAX_PREFIX_TOKENS = 2**31 - 1


def make_rng(seed: int) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise UserError(f"--seed must be an integer in [0, 2^64), got {seed!r}")
    return np.random.Generator(np.random.PCG64(seed))


# --- arrivals ----------------------------------------------------------------------------------------------------
def _gaps(rng: np.random.Generator, size: int, rate: float, cv: float | None) -> np.ndarray:
    if cv is None:
        return rng.exponential(1.0 / rate, size=size)
    shape = 1.0 / (cv * cv)
    return rng.gamma(shape, 1.0 / (rate * shape), size=size)


def arrivals(
    rng: np.random.Generator,
    rate: float,
    count: int | None = None,
    duration_s: float | None = None,
    cv: float | None = None,
) -> np.ndarray:
    """Arrival times from 0: `count` of them, or all those before `duration_s`. cv None: Poisson; else gamma gaps
    with this coefficient of variation."""
    if not (math.isfinite(rate) and rate > 0):
        raise UserError(f"--rate must be a positive number of requests/s, got {rate:g}")
    if cv is not None and not (MIN_CV <= cv <= MAX_CV):
        raise UserError(f"--cv must be in [{MIN_CV:g}, {MAX_CV:g}], got {cv:g}")
    if (count is None) == (duration_s is None):
        raise UserError("give either --count or --duration")
    if count is not None:
        if count < 1:
            raise UserError(f"--count must be at least 1, got {count}")
        if count > MAX_GENERATED_REQUESTS:
            raise UserError(
                f"--count {count:,} is more than the {MAX_GENERATED_REQUESTS:,} requests a generated trace may hold"
            )
        if (count - 1) / rate > MAX_DURATION_S:
            raise UserError(
                f"--count {count:,} at --rate {rate:g} would span more than {MAX_DURATION_S:g} s; raise --rate"
            )
        if cv is None:
            return _finite(poisson_arrivals(count, rate, rng))
        out = np.zeros(count, dtype=np.float64)
        np.cumsum(_gaps(rng, count - 1, rate, cv), out=out[1:])
        return _finite(out)
    if not (math.isfinite(duration_s) and 0 < duration_s <= MAX_DURATION_S):
        raise UserError(f"--duration must be positive and at most {MAX_DURATION_S:g} s, got {duration_s:g}")
    too_many = f"--rate x --duration asks for more than {MAX_GENERATED_REQUESTS // 1_000_000} million requests"
    if rate * duration_s > MAX_GENERATED_REQUESTS:  # the expected count: refused before anything is drawn
        raise UserError(too_many)
    chunks, total, last = [np.zeros(1)], 0, 0.0
    while last < duration_s:
        need = min(max(int((duration_s - last) * rate * 1.2) + 16, 16), MAX_GENERATED_REQUESTS + 16)
        times = last + np.cumsum(_gaps(rng, need, rate, cv))
        chunks.append(times)
        total += need
        last = float(times[-1])
        if total > MAX_GENERATED_REQUESTS:
            raise UserError(too_many)
    times = np.concatenate(chunks)
    return _finite(times[times < duration_s])


def _finite(times: np.ndarray) -> np.ndarray:
    if len(times) and not np.isfinite(times[-1]):  # pragma: no cover - the bounds above keep sums finite
        raise UserError("the arrival times overflow; raise --rate")
    return times


# --- lengths -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LognormalLengths:
    """Independent lognormal prompt and output lengths, rounded, filtered by rejection (see the module docstring)."""

    name: str
    prompt_mu: float
    prompt_sigma: float
    output_mu: float
    output_sigma: float
    target_prompt_mean: float
    target_output_mean: float
    min_tokens: int = 4
    max_prompt: int = 1024
    max_total: int = 2048

    def _draw(self, z_prompt: np.ndarray, z_output: np.ndarray, prompt_mu: float, output_mu: float):
        prompt = np.rint(np.exp(prompt_mu + self.prompt_sigma * z_prompt)).astype(np.int64)
        output = np.rint(np.exp(output_mu + self.output_sigma * z_output)).astype(np.int64)
        ok = (
            (prompt >= self.min_tokens)
            & (output >= self.min_tokens)
            & (prompt <= self.max_prompt)
            & (prompt + output <= self.max_total)
        )
        return prompt[ok], output[ok]

    def sample(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
        prompts, outputs, have = [], [], 0
        while have < count:
            need = int((count - have) * 1.3) + 64
            p, o = self._draw(rng.standard_normal(need), rng.standard_normal(need), self.prompt_mu, self.output_mu)
            prompts.append(p)
            outputs.append(o)
            have += len(p)
        return np.concatenate(prompts)[:count], np.concatenate(outputs)[:count]


def fit_lognormal_mus(
    model: LognormalLengths, draws: int = 2_000_000, seed: int = 0, iterations: int = 30
) -> tuple[float, float]:
    """The (prompt_mu, output_mu) that make the filtered means hit the targets, by fixed-point iteration on common
    random numbers. This is how the constants in LENGTH_MODELS were obtained."""
    rng = make_rng(seed)
    zp, zo = rng.standard_normal(draws), rng.standard_normal(draws)
    mp, mo = model.prompt_mu, model.output_mu
    for _ in range(iterations):
        p, o = model._draw(zp, zo, mp, mo)
        mp += math.log(model.target_prompt_mean / p.mean())
        mo += math.log(model.target_output_mean / o.mean())
    return mp, mo


LENGTH_MODELS: dict[str, LognormalLengths] = {
    m.name: m
    for m in (
        LognormalLengths(
            "sharegpt",
            prompt_mu=4.5561,
            prompt_sigma=1.3,
            output_mu=5.5456,
            output_sigma=0.8,
            target_prompt_mean=161,
            target_output_mean=338,
        ),
        LognormalLengths(
            "alpaca",
            prompt_mu=2.8183,
            prompt_sigma=0.5,
            output_mu=3.6530,
            output_sigma=0.9,
            target_prompt_mean=19,
            target_output_mean=58,
        ),
    )
}


@dataclass(frozen=True)
class ResampledLengths:
    """(prompt, output) pairs drawn uniformly, with replacement, from an existing trace's rows."""

    name: str
    prompt: np.ndarray
    output: np.ndarray

    def sample(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
        idx = rng.integers(0, len(self.prompt), size=count)
        return self.prompt[idx], self.output[idx]


@dataclass(frozen=True)
class FixedLengths:
    name: str
    prompt_tokens: int
    output_tokens: int

    def sample(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
        return np.full(count, self.prompt_tokens, dtype=np.int64), np.full(count, self.output_tokens, dtype=np.int64)


LENGTHS_HELP = "sharegpt, alpaca, resample:TRACE (pairs drawn from a trace's rows), or fixed:PROMPT,OUTPUT"


def parse_lengths(spec: str):
    """A length sampler from '--lengths': a name in LENGTH_MODELS, 'resample:PATH' or 'fixed:PROMPT,OUTPUT'."""
    if spec in LENGTH_MODELS:
        return LENGTH_MODELS[spec]
    kind, _, arg = spec.partition(":")
    if kind == "resample" and arg:
        # A length-only trace has no arrivals; any rate will do, as only its lengths are used.
        rate = 1.0 if detect_format(arg) == "lengths" else None
        source = read_trace(arg, rate=rate)
        return ResampledLengths(spec, source.prompt_tokens, source.output_tokens)
    if kind == "fixed" and arg:
        parts = arg.split(",")
        try:
            p, o = (int(x) for x in parts)
        except ValueError:
            p = o = 0
        if len(parts) != 2 or p < 1 or o < 1:
            raise UserError(f"--lengths fixed:PROMPT,OUTPUT needs two positive integers, got {arg!r}")
        if max(p, o) > MAX_TOKENS:
            raise UserError(f"--lengths fixed:PROMPT,OUTPUT: each at most {MAX_TOKENS:,} tokens, got {arg!r}")
        return FixedLengths(spec, p, o)
    raise UserError(f"unknown --lengths {spec!r}: expected {LENGTHS_HELP}")


# --- whole traces ------------------------------------------------------------------------------------------------
def generate(
    lengths: str = "sharegpt",
    *,
    rate: float = 1.0,
    count: int | None = None,
    duration_s: float | None = None,
    arrival_process: str = "poisson",
    cv: float | None = None,
    seed: int = 0,
    prefix_groups: int = 0,
    prefix_tokens: int = 0,
    prefix_fraction: float = 1.0,
    n: int | None = None,
    beam_width: int | None = None,
    path: str = "<generated>",
) -> Trace:
    """A synthetic trace.

    Args:
        lengths: see `parse_lengths`.
        rate, count, duration_s: requests/s, and either how many requests or for how long (seconds).
        arrival_process: 'poisson' or 'gamma' (then cv, the coefficient of variation of the gaps, is required).
        seed: seeds the single PCG64 generator that draws everything.
        prefix_groups, prefix_tokens: when both > 0, each request (with probability prefix_fraction) joins one of
            prefix_groups groups, chosen uniformly, and a prefix_tokens-token shared prefix (think: a system prompt)
            is put in front of its prompt: prompt_tokens grows by prefix_tokens. Fills columns prefix_group and
            prefix_tokens.
        n, beam_width: when given, a constant `n` / `beam_width` column.
    """
    if arrival_process not in ("poisson", "gamma"):
        raise UserError(f"unknown arrival process {arrival_process!r}: expected poisson or gamma")
    if arrival_process == "gamma" and cv is None:
        raise UserError("gamma arrivals need --cv (the coefficient of variation of inter-arrival times; 1 is Poisson)")
    if arrival_process == "poisson" and cv is not None:
        raise UserError("--cv applies to --arrivals gamma (Poisson arrivals have cv 1)")
    if (prefix_groups > 0) != (prefix_tokens > 0):
        raise UserError("--prefix-groups and --prefix-tokens go together, both positive")
    if prefix_groups < 0 or prefix_tokens < 0:
        raise UserError("--prefix-groups and --prefix-tokens must not be negative")
    if prefix_tokens > MAX_PREFIX_TOKENS:
        raise UserError(f"--prefix-tokens must be at most {MAX_PREFIX_TOKENS:,}, got {prefix_tokens:,}")
    if not 0.0 < prefix_fraction <= 1.0:
        raise UserError(f"--prefix-fraction must be in (0, 1], got {prefix_fraction:g}")
    for name, value in (("--n", n), ("--beam-width", beam_width)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
        if value is not None and value > MAX_TOKENS:  # as a trace may hold
            raise UserError(f"{name} must be at most {MAX_TOKENS:,}, got {value:,}")
    if n is not None and beam_width is not None and beam_width > 1 and n > beam_width:
        raise UserError(f"--n ({n}) must not exceed --beam-width ({beam_width})")
    sampler = parse_lengths(lengths)
    rng = make_rng(seed)
    times = arrivals(rng, rate, count, duration_s, cv if arrival_process == "gamma" else None)
    prompt, output = sampler.sample(rng, len(times))
    prompt, output = prompt.astype(np.int64), output.astype(np.int64)
    columns: dict[str, np.ndarray] = {}
    if n is not None:
        columns["n"] = np.full(len(times), n, dtype=np.int64)
    if beam_width is not None:
        columns["beam_width"] = np.full(len(times), beam_width, dtype=np.int64)
    if prefix_groups > 0:
        group = rng.integers(0, prefix_groups, size=len(times)).astype(np.int64)
        if prefix_fraction < 1.0:
            group[rng.random(len(times)) >= prefix_fraction] = -1
        tokens = np.where(group >= 0, prefix_tokens, 0).astype(np.int64)
        prompt = prompt + tokens
        if len(prompt) and int(prompt.max()) > MAX_TOKENS:
            raise UserError(f"--prefix-tokens {prefix_tokens:,} makes prompts longer than {MAX_TOKENS:,} tokens")
        columns["prefix_group"] = group
        columns["prefix_tokens"] = tokens
    return Trace(
        path=path, format="native", arrival_s=times, prompt_tokens=prompt, output_tokens=output, columns=columns
    )
