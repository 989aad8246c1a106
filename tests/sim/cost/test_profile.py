"""The fitted cost model: formula by hand, bit-identical decode_times, the fit, loading, and replays with it."""

import json

import numpy as np
import pytest

from sim.cost.profile import FEATURES, DecodeCorrection, ProfileCostModel, batch_features, fit_profile, nnls
from sim.errors import UserError
from sim.serving.request import Batch, Request


def _model(**over) -> ProfileCostModel:
    coeffs = {
        "prefill_pairs": 1e-10,
        "decode_context": 3e-9,
        "decode_seqs": 2e-6,
        "prefill_seqs": 5e-6,
        "has_prefill": 1e-3,
        "has_decode": 4e-4,
    }
    coeffs.update(over)
    return ProfileCostModel(c0=5e-3, c_tokens=1e-6, knots=[32, 128], c_knots=[2e-6, 7e-6], coefficients=coeffs)


def _decode_batch(n: int, context: int) -> Batch:
    b = Batch()
    b.num_decode_seqs = n
    b.decode_context_tokens = context
    return b


def test_formula_by_hand():
    m = _model()
    b = Batch()
    b.prefill = [Request(0, 100, 5, 0.0, num_branches=3), Request(1, 100, 5, 0.0)]
    b.num_prefill_tokens, b.num_prefill_seqs, b.prefill_attention_pairs = 200, 4, 20_100
    b.num_decode_seqs, b.decode_context_tokens = 10, 5_000
    t = 210
    expect = (
        5e-3
        + 1e-6 * t
        + 2e-6 * (t - 32)
        + 7e-6 * (t - 128)
        + 1e-10 * 20_100
        + 3e-9 * 5_000
        + 2e-6 * 10
        + 5e-6 * 2
        + 1e-3
        + 4e-4
    )
    assert m.step_time(b) == pytest.approx(expect, rel=1e-12)
    # below the first knot, the knot terms vanish
    assert m.step_time(_decode_batch(8, 800)) == pytest.approx(5e-3 + 8e-6 + 3e-9 * 800 + 16e-6 + 4e-4, rel=1e-12)


@pytest.mark.parametrize("n", [1, 7, 31, 32, 33, 129, 256])
def test_decode_times_bit_identical_to_step_time(n):
    m = _model()
    rng = np.random.default_rng(n)
    context = np.cumsum(rng.integers(n, 3 * n, size=200)) + 17
    vec = m.decode_times(n, context)
    for c, v in zip(context, vec):
        assert m.step_time(_decode_batch(n, int(c))) == v  # exact equality, not approx
    assert vec.dtype == np.float64


def test_decode_times_bit_identical_on_awkward_coefficients():
    m = ProfileCostModel(
        c0=0.1 + 0.2,
        c_tokens=1 / 3,
        knots=[3, 11],
        c_knots=[1 / 7, 1 / 9],
        coefficients={f: 1 / (i + 13) for i, f in enumerate(FEATURES)},
    )
    context = np.arange(1, 5000, 7, dtype=np.int64)
    vec = m.decode_times(19, context)
    assert all(m.step_time(_decode_batch(19, int(c))) == v for c, v in zip(context, vec))


def test_nnls_recovers_nonnegative_solution():
    rng = np.random.default_rng(0)
    a = rng.random((60, 5))
    x_true = np.array([0.5, 0.0, 2.0, 0.0, 1.0])
    x = nnls(a, a @ x_true)
    np.testing.assert_allclose(x, x_true, atol=1e-9)
    # a negative unconstrained optimum is clipped to the boundary
    x2 = nnls(a, a @ np.array([1.0, -1.0, 0.5, 0.0, 0.0]))
    assert (x2 >= 0).all()


def _synthetic_samples(model: ProfileCostModel) -> list[dict]:
    samples = []
    for n in (1, 4, 16, 64, 256):
        for ctx in (128, 1024, 4096):
            b = _decode_batch(n, n * ctx)
            samples.append({**batch_features(b), "time_s": model.step_time(b)})
    for p in (16, 128, 512, 2048):
        for c in (0, 512):
            b = Batch()
            b.prefill = [Request(0, p + c, 2, 0.0)]
            b.num_prefill_tokens, b.num_prefill_seqs = p, 1
            b.prefill_attention_pairs = p * (p + 1) // 2 + p * c
            b.prefill_context_tokens = c
            samples.append({**batch_features(b), "time_s": model.step_time(b)})
            b.num_decode_seqs, b.decode_context_tokens = 8, 8 * 700
            samples.append({**batch_features(b), "time_s": model.step_time(b)})
    return samples


def test_fit_recovers_a_model_it_can_express():
    truth = _model()
    fitted = fit_profile(_synthetic_samples(truth), knots=[32, 128])
    assert fitted.fit["max_abs_rel_error"] < 1e-6
    for s in _synthetic_samples(truth):
        assert fitted.time_of(s) == pytest.approx(s["time_s"], rel=1e-6)


def test_round_trip_and_errors(tmp_path):
    m = fit_profile(_synthetic_samples(_model()), meta={"model": "llama-2-7b"})
    path = tmp_path / "p.json"
    path.write_text(json.dumps(m.to_dict()))
    loaded = ProfileCostModel.load(str(path))
    b = _decode_batch(5, 900)
    assert loaded.step_time(b) == m.step_time(b)
    assert loaded.describe()["kind"] == "profile"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "something else"}))
    with pytest.raises(UserError, match="not a cost profile"):
        ProfileCostModel.load(str(bad))
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not JSON"):
        ProfileCostModel.load(str(bad))
    d = m.to_dict()
    d["c0"] = -1.0
    bad.write_text(json.dumps(d))
    with pytest.raises(UserError, match="malformed"):
        ProfileCostModel.load(str(bad))
    with pytest.raises(UserError, match="cannot read"):
        ProfileCostModel.load(str(tmp_path / "missing.json"))


@pytest.mark.parametrize("corrected", [False, True], ids=["formula", "decode-correction"])
def test_replay_with_profile_fast_forward_identical(tmp_path, corrected):
    """The engine's exact fast-forward with the profile model writes the same records as step by step."""
    from sim.hardware.gpus import GPUS
    from sim.hardware.models import MODELS
    from sim.serving.replay import ReplayOptions, replay
    from sim.traces.readers import read_trace

    path = tmp_path / "p.json"
    m = _model()
    if corrected:
        m.decode_correction = _correction()
    m.meta = {"model": "llama-2-7b"}
    path.write_text(json.dumps(m.to_dict()))
    trace = read_trace("traces/sharegpt-2k.csv")
    base = dict(model=MODELS["llama-2-7b"], gpu=GPUS["h100-80gb"], kv_memory=2 * 2**30, cost_model=str(path))
    fast = replay(trace, ReplayOptions(**base, fast_forward=True))
    slow = replay(trace, ReplayOptions(**base, fast_forward=False))
    assert fast.summary["iterations_fast_forwarded"] > 0
    for k in fast.steps:
        np.testing.assert_array_equal(fast.steps[k], slow.steps[k])
    np.testing.assert_array_equal(fast.requests.finish_s, slow.requests.finish_s)
    assert fast.summary["config"]["cost_model"]["kind"] == "profile"


def test_replay_rejects_profile_of_another_model(tmp_path):
    from sim.hardware.gpus import GPUS
    from sim.hardware.models import MODELS
    from sim.serving.replay import ReplayOptions, replay
    from sim.traces.readers import read_trace

    m = _model()
    m.meta = {"model": "opt-13b"}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(m.to_dict()))
    with pytest.raises(UserError, match="opt-13b"):
        replay(
            read_trace("traces/alpaca-2k.csv"),
            ReplayOptions(model=MODELS["llama-2-7b"], gpu=GPUS["h100-80gb"], cost_model=str(path)),
        )


def _correction() -> DecodeCorrection:
    return DecodeCorrection(
        batch_sizes=[1, 4, 16],
        contexts=[[100.0, 300.0], [100.0], [64.0, 512.0, 4096.0]],
        ratios=[[0.9, 1.1], [1.2], [1.0, 1.08, 0.96]],
    )


def test_decode_correction_interpolates_by_hand():
    c = _correction()
    n = np.array([1, 1, 1, 2, 4, 10, 16, 16, 300, 16])
    ctx = np.array([100, 200, 1000, 2 * 200, 4 * 7, 10 * 300, 16 * 288, 16 * 9000, 300 * 64, 16 * 64])
    got = c.ratios_at(n, ctx)
    # batch 1: along its contexts, flat past 300; batch 2 sits a third of the way from batch 1 to batch 4 (ratio
    # 1.0 at 200 tokens there, 1.2 flat for batch 4); batch 10 halfway between batch 4 (1.2) and batch 16 at 300
    # tokens (1.0 + 0.08 x 236 / 448); batch 16 at 288 (1.0 + 0.08 x 224 / 448 = 1.04), flat past 4096 and
    # beyond the largest batch size
    expect = [0.9, 1.0, 1.1, 1.0 + (1.2 - 1.0) / 3, 1.2, (1.2 + 1.0 + 0.08 * 236 / 448) / 2, 1.04, 0.96, 1.0, 1.0]
    np.testing.assert_allclose(got, expect, rtol=1e-12)


@pytest.mark.parametrize("n", [1, 3, 4, 9, 16, 40])
def test_decode_times_with_correction_bit_identical_to_step_time(n):
    m = _model()
    m.decode_correction = _correction()
    context = np.cumsum(np.random.default_rng(n).integers(n, 40 * n, size=150)) + 5
    vec = m.decode_times(n, context)
    for c, v in zip(context, vec):
        assert m.step_time(_decode_batch(n, int(c))) == v
    assert not np.array_equal(vec, _model().decode_times(n, context))  # the correction did apply


def test_decode_correction_applies_to_decode_only_iterations():
    m = _model()
    plain = _model()
    m.decode_correction = _correction()
    b = _decode_batch(4, 400)
    assert m.step_time(b) == pytest.approx(plain.step_time(b) * 1.2, rel=1e-15)
    b.prefill = [Request(0, 100, 5, 0.0)]
    b.num_prefill_tokens, b.num_prefill_seqs, b.prefill_attention_pairs = 100, 1, 5050
    assert m.step_time(b) == plain.step_time(b)  # a batch with prefill: the formula alone


def test_fit_builds_correction_from_uniform_decode_points():
    """Measured decode points the formula cannot express: the profile reproduces them exactly, and other
    batches get the formula times the interpolated ratio."""
    truth = _model()
    samples = _synthetic_samples(truth)
    bumps = {1: 0.95, 4: 1.03, 16: 1.06, 64: 1.0, 256: 0.98}
    for s in samples:
        if not s["has_prefill"]:
            s["kind"], s["point"] = "decode", [s["decode_seqs"], s["decode_context"] // s["decode_seqs"]]
            s["time_s"] *= bumps[s["decode_seqs"]] * (1 + s["decode_context"] / s["decode_seqs"] / 1e5)
    fitted = fit_profile(samples, knots=[32, 128])
    assert fitted.fit["decode_points_corrected"] == 15
    for s in samples:
        if s.get("kind") == "decode":
            assert fitted.time_of(s) == pytest.approx(s["time_s"], rel=1e-12)
    # between batch sizes 4 and 16 at 1,024 tokens each: the two ratios, weighted 3/4 and 1/4 at batch 7
    b = _decode_batch(7, 7 * 1024)
    r4 = (
        1.03
        * (1 + 1024 / 1e5)
        * truth.step_time(_decode_batch(4, 4 * 1024))
        / fitted.formula_time_of(batch_features(_decode_batch(4, 4 * 1024)))
    )
    r16 = (
        1.06
        * (1 + 1024 / 1e5)
        * truth.step_time(_decode_batch(16, 16 * 1024))
        / fitted.formula_time_of(batch_features(_decode_batch(16, 16 * 1024)))
    )
    assert fitted.step_time(b) == pytest.approx(
        fitted.formula_time_of(batch_features(b)) * (0.75 * r4 + 0.25 * r16), rel=1e-12
    )


def test_correction_round_trip_and_old_profiles(tmp_path):
    m = _model()
    m.decode_correction = _correction()
    path = tmp_path / "p.json"
    path.write_text(json.dumps(m.to_dict()))
    loaded = ProfileCostModel.load(str(path))
    for n, c in ((2, 600), (16, 16 * 3000), (4, 40)):
        assert loaded.step_time(_decode_batch(n, c)) == m.step_time(_decode_batch(n, c))
    d = m.to_dict()
    del d["decode_correction"]  # a profile written before the correction existed: the formula alone
    path.write_text(json.dumps(d))
    assert ProfileCostModel.load(str(path)).step_time(_decode_batch(4, 400)) == _model().step_time(
        _decode_batch(4, 400)
    )
    d["decode_correction"] = {"batch_sizes": [4, 1], "contexts": [[1.0], [1.0]], "ratios": [[1.0], [1.0]]}
    path.write_text(json.dumps(d))
    with pytest.raises(UserError, match="malformed.*ascend"):
        ProfileCostModel.load(str(path))
    d["decode_correction"] = {"batch_sizes": [1], "contexts": [[1.0]], "ratios": [[-1.0]]}
    path.write_text(json.dumps(d))
    with pytest.raises(UserError, match="positive"):
        ProfileCostModel.load(str(path))
