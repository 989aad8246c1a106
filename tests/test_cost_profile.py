"""The fitted cost model: formula by hand, bit-identical decode_times, the fit, loading, and replays with it."""

import json

import numpy as np
import pytest

from sim.cost_profile import FEATURES, ProfileCostModel, batch_features, fit_profile, nnls
from sim.errors import UserError
from sim.scheduler import Batch, Sequence


def _model(**over) -> ProfileCostModel:
    coeffs = {"prefill_pairs": 1e-10, "decode_context": 3e-9, "decode_seqs": 2e-6, "prefill_seqs": 5e-6,
              "has_prefill": 1e-3, "has_decode": 4e-4}
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
    b.prefill = [Sequence(0, 100, 5, 0.0, num_branches=3), Sequence(1, 100, 5, 0.0)]
    b.num_prefill_tokens, b.num_prefill_seqs, b.prefill_attention_pairs = 200, 4, 20_100
    b.num_decode_seqs, b.decode_context_tokens = 10, 5_000
    t = 210
    expect = (5e-3 + 1e-6 * t + 2e-6 * (t - 32) + 7e-6 * (t - 128) + 1e-10 * 20_100 + 3e-9 * 5_000 + 2e-6 * 10
              + 5e-6 * 2 + 1e-3 + 4e-4)
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
    m = ProfileCostModel(c0=0.1 + 0.2, c_tokens=1 / 3, knots=[3, 11], c_knots=[1 / 7, 1 / 9],
                         coefficients={f: 1 / (i + 13) for i, f in enumerate(FEATURES)})
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
            b.prefill = [Sequence(0, p + c, 2, 0.0)]
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


def test_replay_with_profile_fast_forward_identical(tmp_path):
    """The engine's exact fast-forward with the profile model writes the same records as step by step."""
    from sim.config import MODELS, GPUS
    from sim.run import ReplayOptions, replay
    from sim.trace import read_trace

    path = tmp_path / "p.json"
    m = _model()
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
    from sim.config import MODELS, GPUS
    from sim.run import ReplayOptions, replay
    from sim.trace import read_trace

    m = _model()
    m.meta = {"model": "opt-13b"}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(m.to_dict()))
    with pytest.raises(UserError, match="opt-13b"):
        replay(read_trace("traces/alpaca-2k.csv"),
               ReplayOptions(model=MODELS["llama-2-7b"], gpu=GPUS["h100-80gb"], cost_model=str(path)))
