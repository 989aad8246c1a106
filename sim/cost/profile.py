"""A cost model fitted to GPU measurements: `sim calibrate` writes a profile, `--cost-model FILE` loads it.

The fitted formula (seconds per iteration), every coefficient >= 0 (non-negative least squares, rows weighted by
1 / measured time so that the fit minimises relative error):

    time = c0
         + c_tokens x t + sum over knots k of c_knot[k] x max(t - k, 0)      (t = batched tokens: prefill + decode)
         + c_prefill_pairs x prefill attention (query, key) pairs           (n (n + 1) / 2 + n x context, summed)
         + c_decode_context x decode context tokens                         (KV tokens the decode branches read)
         + c_decode_seqs x decode sequences
         + c_prefill_seqs x requests prefilled (a request of n samples or beams is prefilled once)
         + c_has_prefill x [the batch prefills anything] + c_has_decode x [the batch decodes anything]

The knots make the token term a convex piecewise-linear curve: flat-ish while the matrix products are bound by
reading the weights (or by the host launching kernels), steeper once they are bound by arithmetic. The indicator
terms carry the fixed cost of launching the prefill and decode attention kernels in every layer.

Decode-only iterations (no prefill tokens) are then multiplied by a correction measured on the calibration grid's
uniform decode points (`DecodeCorrection`): measured / formula time at each (batch size, context per sequence) point,
interpolated between them. The additive formula cannot hold how the decode kernel's programs fill the GPU (a batch
of 8 at 2,048 tokens ran 6% over it on the H100 while a batch of 1 ran 3-5% under), and decode-only iterations are
most of a replay's time: without the correction, replays on the H100 ran 5-6% over the formula
(reports/validation/README.md).

The profile is JSON (see `ProfileCostModel.to_dict`): the coefficients, the knots, the measured samples they were
fitted to, the fit's quality and where it was measured. It needs no torch: `sim` loads it anywhere.

The host link (a host tier's copies, sim.cost.host_link): a calibration also measures the GPU's link to pinned host
memory (kernels.harness.calibrate.measure_host_link) and keeps it in `meta["host_link"]`: `bytes_per_s_to_gpu`,
`bytes_per_s_to_host`, `bytes_per_s_duplex` (null when both directions at once ran as fast as each alone),
`latency_s`, and the samples they were fitted to. `ProfileCostModel.host_link` reads it as a `HostLink`; a replay with
a host tier and this profile prices its copies with it unless `--host-link` is given (`make_cost_model`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from sim.cost.base import CostModel
from sim.errors import UserError
from sim.serving.request import Batch

MIN_SAMPLES = 3  # grid points a fit needs at the least

PROFILE_KIND = "kvsim-cost-profile"
PROFILE_VERSION = 1

#: Features of one iteration, in the order of the coefficient vector after c0 and the token terms.
FEATURES = ("prefill_pairs", "decode_context", "decode_seqs", "prefill_seqs", "has_prefill", "has_decode")


def batch_features(batch: Batch) -> dict[str, int]:
    """The quantities the formula reads from a scheduler Batch."""
    return {
        "tokens": batch.num_batched_tokens,
        "prefill_pairs": batch.prefill_attention_pairs,
        "decode_context": batch.decode_context_tokens,
        "decode_seqs": batch.num_decode_seqs,
        "prefill_seqs": len(batch.prefill),
        "has_prefill": 1 if batch.num_prefill_tokens > 0 or batch.num_prefill_seqs > 0 else 0,
        "has_decode": 1 if batch.num_decode_seqs > 0 else 0,
    }


def _design(rows: list[dict], knots: list[int]) -> np.ndarray:
    """Design matrix: one row per sample, columns [1, t, relu(t - k) for k in knots, FEATURES...]."""
    t = np.array([r["tokens"] for r in rows], dtype=np.float64)
    cols = [np.ones_like(t), t] + [np.maximum(t - k, 0.0) for k in knots]
    cols += [np.array([r[f] for r in rows], dtype=np.float64) for f in FEATURES]
    return np.column_stack(cols)


def nnls(a: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """Non-negative least squares, min ||a x - b|| subject to x >= 0 (Lawson and Hanson's active-set method)."""
    m, n = a.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    max_iter = max_iter or 3 * n + 30
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0
    a = a / scale  # columns of very different magnitudes: work in normalised columns
    tol = 1e-12 * max(1.0, float(np.abs(a).max())) * max(m, n)
    for _ in range(max_iter):
        w = a.T @ (b - a @ x)
        if passive.all() or (w[~passive] <= tol).all():
            break
        j = int(np.argmax(np.where(~passive, w, -np.inf)))
        passive[j] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
    return x / scale


@dataclass
class DecodeCorrection:
    """Measured / formula time of decode-only iterations, from the calibration grid's uniform decode points.

    For each measured decode batch size, the ratios at the measured contexts per sequence (tokens). A batch of `n`
    sequences reading `C` context tokens in all gets the ratio at `C / n` tokens per sequence: interpolated linearly
    along each measured batch size's contexts, then linearly between the two measured batch sizes around `n`; flat
    beyond the first and last measured context or batch size. At a grid point it is that point's own ratio, so the
    profile reproduces its uniform decode measurements exactly.
    """

    batch_sizes: list[int]  # ascending
    contexts: list[list[float]]  # per batch size: ascending context per sequence (tokens)
    ratios: list[list[float]]  # per batch size and context: measured / formula

    def __post_init__(self) -> None:
        if (
            not self.batch_sizes
            or len(self.contexts) != len(self.batch_sizes)
            or len(self.ratios) != len(self.batch_sizes)
        ):
            raise ValueError("decode correction: one row of contexts and ratios per batch size")
        if any(b <= a for a, b in zip(self.batch_sizes, self.batch_sizes[1:])):
            raise ValueError("decode correction: batch sizes must ascend")
        for xs, ys in zip(self.contexts, self.ratios):
            if not xs or len(xs) != len(ys) or any(b <= a for a, b in zip(xs, xs[1:])):
                raise ValueError("decode correction: each row needs ascending contexts, one ratio each")
            if not all(math.isfinite(r) and r > 0 for r in ys):
                raise ValueError("decode correction: ratios must be finite and positive")
        self._sizes = np.array(self.batch_sizes, dtype=np.float64)
        self._rows = [
            (np.array(xs, dtype=np.float64), np.array(ys, dtype=np.float64))
            for xs, ys in zip(self.contexts, self.ratios)
        ]

    def ratios_at(self, num_seqs: np.ndarray, context_tokens: np.ndarray) -> np.ndarray:
        """The ratio for batches of num_seqs sequences reading context_tokens in all (arrays of one shape). Element by
        element the same operations whatever the arrays' length, so one batch at a time and many at once agree bit for
        bit (the engine's fast-forward relies on it)."""
        n = np.asarray(num_seqs, dtype=np.float64)
        per_seq = np.asarray(context_tokens, dtype=np.float64) / n
        along = np.stack([np.interp(per_seq, xs, ys) for xs, ys in self._rows])  # (batch sizes, batches)
        pos = np.interp(n, self._sizes, np.arange(len(self._sizes), dtype=np.float64))
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, len(self._sizes) - 1)
        frac = pos - lo
        cols = np.arange(n.shape[0])
        return along[lo, cols] * (1.0 - frac) + along[hi, cols] * frac

    @classmethod
    def from_samples(cls, samples: list[dict], formula_s: np.ndarray) -> DecodeCorrection | None:
        """From the samples of kind "decode" (calibration's uniform decode points: `decode_seqs` sequences reading
        `decode_context` tokens in all) and the formula's time for every sample; None without any such sample."""
        rows: dict[int, dict[float, float]] = {}
        for s, f in zip(samples, formula_s):
            if s.get("kind") != "decode" or s["has_prefill"] or s["decode_seqs"] <= 0 or not f > 0:
                continue
            n = int(s["decode_seqs"])
            rows.setdefault(n, {})[s["decode_context"] / n] = float(s["time_s"]) / float(f)
        if not rows:
            return None
        sizes = sorted(rows)
        return cls(sizes, [sorted(rows[n]) for n in sizes], [[rows[n][c] for c in sorted(rows[n])] for n in sizes])

    def to_dict(self) -> dict:
        return {
            "batch_sizes": list(self.batch_sizes),
            "contexts": [list(r) for r in self.contexts],
            "ratios": [list(r) for r in self.ratios],
        }

    @classmethod
    def from_dict(cls, data: dict) -> DecodeCorrection:
        return cls(
            [int(b) for b in data["batch_sizes"]],
            [[float(c) for c in r] for r in data["contexts"]],
            [[float(v) for v in r] for r in data["ratios"]],
        )


@dataclass
class ProfileCostModel(CostModel):
    """Iteration time from a calibration profile (the formula in the module docstring)."""

    c0: float
    c_tokens: float
    knots: list[int]
    c_knots: list[float]
    coefficients: dict[str, float]  # one per name in FEATURES
    meta: dict = field(default_factory=dict)  # model, device, date, versions, layers, command
    fit: dict = field(default_factory=dict)  # quality of the fit
    samples: list[dict] = field(default_factory=list)  # what it was fitted to (features + time_s)
    path: str | None = None

    decode_correction: DecodeCorrection | None = None  # decode-only iterations: measured / formula (see there)

    def __post_init__(self) -> None:
        if len(self.knots) != len(self.c_knots):
            raise ValueError("one coefficient per knot")
        missing = [f for f in FEATURES if f not in self.coefficients]
        if missing:
            raise ValueError(f"coefficients missing: {', '.join(missing)}")
        c = self.coefficients
        self._c = tuple(float(c[f]) for f in FEATURES)
        self._knots = tuple((int(k), float(ck)) for k, ck in zip(self.knots, self.c_knots))

    @property
    def host_link(self):
        """The measured host link of `meta["host_link"]` (module docstring) as a sim.cost.host_link.HostLink, or None
        when the profile has none (written before links were measured). A UserError when it is malformed."""
        data = self.meta.get("host_link")
        if data is None:
            return None
        from sim.cost.host_link import HostLink

        where = self.path or "cost profile"
        try:
            to_gpu = float(data["bytes_per_s_to_gpu"])
            to_host = float(data["bytes_per_s_to_host"])
            duplex = data.get("bytes_per_s_duplex")
            duplex = None if duplex is None else float(duplex)
            latency = float(data.get("latency_s", 0.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{where}: malformed host_link in the profile's meta: {exc}") from None
        speeds = [to_gpu, to_host] + ([duplex] if duplex is not None else [])
        if not all(math.isfinite(v) and v > 0 for v in speeds) or not (math.isfinite(latency) and latency >= 0):
            raise UserError(f"{where}: the profile's host_link needs positive speeds and a latency >= 0")
        name = data.get("name") or f"calibrated host link ({self.meta.get('device', 'GPU')})"
        return HostLink(str(name), to_gpu, latency, to_host, duplex)

    # --- evaluation --------------------------------------------------------------------------------------------------
    def _eval(self, tokens, prefill_pairs, decode_context, decode_seqs, prefill_seqs, has_prefill, has_decode):
        """The formula, term by term in a fixed order. Works on Python/NumPy scalars and on NumPy arrays alike,
        with the same IEEE operations in the same order, so an array result equals the scalar results exactly."""
        c_pp, c_dc, c_ds, c_ps, c_hp, c_hd = self._c
        x = self.c0 + self.c_tokens * tokens
        for knot, ck in self._knots:
            x = x + ck * np.maximum(tokens - knot, 0)
        x = x + c_pp * prefill_pairs
        x = x + c_dc * decode_context
        x = x + c_ds * decode_seqs
        x = x + c_ps * prefill_seqs
        x = x + c_hp * has_prefill
        x = x + c_hd * has_decode
        return x

    def formula_time_of(self, features: dict) -> float:
        """Seconds for an iteration with these features (keys as `batch_features` returns), by the formula alone."""
        return float(
            self._eval(
                features["tokens"],
                features["prefill_pairs"],
                features["decode_context"],
                features["decode_seqs"],
                features["prefill_seqs"],
                features["has_prefill"],
                features["has_decode"],
            )
        )

    def time_of(self, features: dict) -> float:
        """Seconds for an iteration with these features: the formula, times the decode correction on decode-only
        iterations."""
        t = self.formula_time_of(features)
        n = features["decode_seqs"]
        if self.decode_correction is None or features["has_prefill"] or n <= 0:
            return t
        ratio = self.decode_correction.ratios_at(
            np.array([n], dtype=np.int64), np.array([features["decode_context"]], dtype=np.int64)
        )
        return t * float(ratio[0])

    def step_time(self, batch: Batch) -> float:
        return self.time_of(batch_features(batch))

    def decode_times(self, num_seqs: int, context_tokens: np.ndarray) -> np.ndarray:
        """Seconds of pure-decode iterations of num_seqs sequences reading context_tokens each (one entry per
        iteration): the same arithmetic as `step_time` on such a batch, element by element (bit-identical)."""
        ctx = np.asarray(context_tokens, dtype=np.int64)
        n = np.full(ctx.shape, num_seqs, dtype=np.int64)
        zero = np.zeros(ctx.shape, dtype=np.int64)
        one = np.ones(ctx.shape, dtype=np.int64)
        t = np.asarray(self._eval(n, zero, ctx, n, zero, zero, one), dtype=np.float64)
        if self.decode_correction is None or num_seqs <= 0:
            return t
        return t * self.decode_correction.ratios_at(n, ctx)

    def describe(self) -> dict:
        return {
            "kind": "profile",
            "file": self.path,
            "formula": "see sim.cost.profile",
            "c0_s": self.c0,
            "c_tokens_s": self.c_tokens,
            "knots": list(self.knots),
            "c_knots_s": list(self.c_knots),
            "coefficients_s": dict(self.coefficients),
            "decode_correction": self.decode_correction.to_dict() if self.decode_correction else None,
            "fit": dict(self.fit),
            "meta": dict(self.meta),
        }

    # --- files -----------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "kind": PROFILE_KIND,
            "version": PROFILE_VERSION,
            "c0": self.c0,
            "c_tokens": self.c_tokens,
            "knots": list(self.knots),
            "c_knots": list(self.c_knots),
            "coefficients": dict(self.coefficients),
            "decode_correction": self.decode_correction.to_dict() if self.decode_correction else None,
            "meta": self.meta,
            "fit": self.fit,
            "samples": self.samples,
        }

    @classmethod
    def from_dict(cls, data: dict, path: str | None = None) -> ProfileCostModel:
        where = path or "cost profile"
        if not isinstance(data, dict) or data.get("kind") != PROFILE_KIND:
            raise UserError(
                f'{where}: not a cost profile (expected "kind": "{PROFILE_KIND}"; write one with `sim calibrate`)'
            )
        if data.get("version") != PROFILE_VERSION:
            raise UserError(f"{where}: profile version {data.get('version')!r}, this sim reads {PROFILE_VERSION}")
        try:
            numbers = [data["c0"], data["c_tokens"], *data["c_knots"], *data["coefficients"].values()]
            if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in numbers):
                raise ValueError("coefficients must be finite non-negative numbers")
            correction = data.get("decode_correction")  # absent from profiles written before it existed
            return cls(
                float(data["c0"]),
                float(data["c_tokens"]),
                [int(k) for k in data["knots"]],
                [float(c) for c in data["c_knots"]],
                {k: float(v) for k, v in data["coefficients"].items()},
                dict(data.get("meta", {})),
                dict(data.get("fit", {})),
                list(data.get("samples", [])),
                path,
                DecodeCorrection.from_dict(correction) if correction is not None else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"{where}: malformed cost profile: {exc}") from None

    @classmethod
    def load(cls, path: str) -> ProfileCostModel:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as exc:
            raise UserError(f"cannot read cost profile {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise UserError(f"{path}: not JSON: {exc}") from None
        return cls.from_dict(data, path)


def default_knots(max_tokens: int) -> list[int]:
    """Knots of the token term: 32, 128, 512, 2048, ... below the largest token count measured."""
    knots, k = [], 32
    while k < max_tokens:
        knots.append(k)
        k *= 4
    return knots


def fit_profile(samples: list[dict], knots: list[int] | None = None, meta: dict | None = None) -> ProfileCostModel:
    """Fit the formula to measured samples: dicts with the `batch_features` keys and `time_s` (and, for the decode
    correction, `kind` "decode" on uniform decode points). The profile's `fit` records: `r2`, `median_abs_rel_error`
    and `max_abs_rel_error` of the profile (formula and correction) over the samples; `formula_median_abs_rel_error`
    and `formula_max_abs_rel_error` of the formula alone; `decode_points_corrected`, the uniform decode points the
    correction was built from."""
    if len(samples) < MIN_SAMPLES:
        raise UserError(f"a cost profile needs at least {MIN_SAMPLES} measured samples")
    if knots is None:
        knots = default_knots(max(int(s["tokens"]) for s in samples))
    a = _design(samples, knots)
    y = np.array([float(s["time_s"]) for s in samples])
    w = 1.0 / y
    x = nnls(a * w[:, None], y * w)
    c0, c_tokens, c_knots, rest = (
        float(x[0]),
        float(x[1]),
        [float(v) for v in x[2 : 2 + len(knots)]],
        x[2 + len(knots) :],
    )
    model = ProfileCostModel(
        c0, c_tokens, list(knots), c_knots, {f: float(v) for f, v in zip(FEATURES, rest)}, meta or {}, {}, list(samples)
    )
    formula = np.array([model.formula_time_of(s) for s in samples])
    model.decode_correction = DecodeCorrection.from_samples(samples, formula)
    pred = np.array([model.time_of(s) for s in samples])
    rel = (pred - y) / y
    ss_res = float(((pred - y) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    formula_rel = np.abs((formula - y) / y)
    model.fit = {
        "samples": len(samples),
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0,
        "median_abs_rel_error": float(np.median(np.abs(rel))),
        "max_abs_rel_error": float(np.abs(rel).max()),
        "formula_median_abs_rel_error": float(np.median(formula_rel)),
        "formula_max_abs_rel_error": float(formula_rel.max()),
        "decode_points_corrected": 0
        if model.decode_correction is None
        else sum(len(c) for c in model.decode_correction.contexts),
        "weighting": "relative (rows weighted by 1 / measured time)",
    }
    return model
