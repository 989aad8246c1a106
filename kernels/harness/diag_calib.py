"""Diagnosis (GPU): does calibration time a decode iteration the way the replay runs it?

Run 7's records, re-created batch by batch (`kernels.harness.residuals`), show two opposite departures from the
profile: replay iterations whose batch has the shape of a calibration point (same size, uniform lengths, same total
context) ran 2-5% *faster* than calibration measured that point (GPU time 1-3% less, host gap 0.1-0.2 ms less), and
paged batches of spread lengths ran ~5% slower than uniform ones. This script times, on the full model and through
the replay's executor (graphs included), the same decode batches in three ways:

* ``repeat``: calibration's method (`calibrate.measure`): place the batch, one warm-up run, two timed runs;
* ``stream``: every batch placed fresh and run once, in a shuffled stream of all batches, as the replay meets them;
* ``evolve``: a batch decoded for several consecutive iterations, one token appended to every sequence after each
  (what the replay does between scheduler changes), each iteration timed;

* ``evolve-gapX``: as ``evolve``, with X ms of host idle time (busy-waiting) before every iteration, as the replay's
  scheduler leaves the GPU idle between iterations;
* ``evolve-prefill``: as ``evolve``, with a 128-token prefill iteration between decode iterations, as the replay
  interleaves admissions (only the decode iterations are timed);

and, in every mode, each batch of spread lengths beside a batch of uniform lengths with the same size and total.

    python -m kernels.harness.diag_calib --batches reports/validation/h100-run8/diagnosis/replay_batches.json --out D

Writes D/diag_calib.json (per batch and mode: median wall and GPU seconds); `--summarize D/diag_calib.json` prints
the medians per mode and of spread against uniform. Without CUDA (`--layers 1 --device cpu`) it runs a tiny smoke
version. Run 9's diagnosis (reports/validation/README.md) is what came of it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time

import numpy as np

from kernels.harness.calibrate import SyntheticState, _decode_batch, _prefill_batch
from sim.serving.schedulers.vllm_v0 import Batch


def place(state: SyntheticState, lens: list[int]) -> Batch | None:
    """A decode batch whose sequences read `lens` tokens each (the new token included), freshly placed."""
    batch = Batch()
    if all(_decode_batch(state, batch, 1, int(length)) for length in lens):
        return batch
    state.release(batch)
    return None


def place_prefill(state: SyntheticState, tokens: int) -> Batch | None:
    """A prefill-only batch of one new sequence of `tokens` tokens."""
    batch = Batch()
    if _prefill_batch(state, batch, 1, tokens, 0):
        return batch
    state.release(batch)
    return None


def timed(ex, batch: Batch) -> tuple[float, float]:
    t0 = time.perf_counter()
    r = ex.execute(batch)
    return time.perf_counter() - t0 - r.capture_s, (r.gpu_s if r.gpu_s is not None else float("nan"))


def batches_to_time(rng: np.random.Generator, replay: list[dict], max_len: int) -> list[dict]:
    """Uniform batches of calibration's shapes, synthetic and replayed spread batches, each spread one with its
    uniform twin (same size, same total context)."""
    out = []
    for n in (1, 4, 8, 12, 16, 24, 32, 48):
        for c in (256, 1024):
            out.append({"name": f"uniform {n}x{c}", "lens": [c] * n})
    spread = []
    for n in (8, 16, 24, 32):
        for mean in (500, 1000):
            spread.append(
                {
                    "name": f"synthetic {n}x~{mean}",
                    "lens": np.clip(rng.uniform(16, 2 * mean, n), 2, max_len - 1).astype(int).tolist(),
                }
            )
        spread.append({"name": f"one-long {n}", "lens": [min(3500, max_len - 1)] + [600] * (n - 1)})
    spread += [{"name": f"{b['run']}@{b['iteration']}", "lens": b["lens"]} for b in replay]
    for b in spread:
        lens = [min(int(x), max_len - 1) for x in b["lens"]]
        mean = int(round(np.mean(lens)))
        out.append({"name": b["name"], "lens": lens, "kind": "spread"})
        out.append({"name": b["name"] + " (uniform twin)", "lens": [mean] * len(lens), "kind": "twin"})
    return out


def summarize(path: str) -> None:
    """Print medians over batches, per kind, of each mode's time against ``repeat`` (calibration's method), and of
    each spread batch's time against its uniform twin's."""
    with open(path) as f:
        data = json.load(f)
    rows, modes = data["rows"], data.get("modes", ["repeat", "stream", "evolve"])
    print(f"wall time against {modes[0]} (median over batches; GPU time in brackets):")
    for kind in ("uniform", "spread", "twin"):
        sel = [r for r in rows if r["kind"] == kind and all(r[m]["wall_s"] for m in modes)]
        print(
            f"  {kind:<8} ({len(sel):>2} batches) "
            + "  ".join(
                f"{m} {np.median([r[m]['wall_s'] / r[modes[0]]['wall_s'] for r in sel]):.3f} "
                f"({np.median([r[m]['gpu_s'] / r[modes[0]]['gpu_s'] for r in sel]):.3f})"
                for m in modes[1:]
            )
        )
    twins = {r["name"][: -len(" (uniform twin)")]: r for r in rows if r["kind"] == "twin"}
    pairs = [
        (r, twins[r["name"]])
        for r in rows
        if r["kind"] == "spread"
        and r["name"] in twins
        and all(r[m]["wall_s"] and twins[r["name"]][m]["wall_s"] for m in modes)
    ]
    for label, keep in (
        ("all", lambda r: True),
        ("synthetic", lambda r: r["name"].startswith(("synthetic", "one-long"))),
    ):
        sel = [(s, t) for s, t in pairs if keep(s)]
        print(
            f"spread / uniform twin, {label} ({len(sel)} pairs): "
            + "  ".join(f"{m} {np.median([s[m]['wall_s'] / t[m]['wall_s'] for s, t in sel]):.3f}" for m in modes)
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default=None, help="JSON list of {'run', 'iteration', 'lens'} (replay_batches.json)")
    ap.add_argument("--out", default="diag_calib")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--evolve-steps", type=int, default=12)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--modes", default="repeat,stream,evolve,evolve-gap0.5,evolve-gap2,evolve-prefill")
    ap.add_argument("--limit", type=int, default=None, help="only the first N batches (smoke tests)")
    ap.add_argument("--summarize", metavar="JSON", help="print the summary of an earlier run's diag_calib.json")
    a = ap.parse_args()
    if a.summarize:
        summarize(a.summarize)
        return
    os.makedirs(a.out, exist_ok=True)

    from kernels.harness.replay import GpuRun, warm_up
    from sim.cli.gpu import _harness_options
    from sim.cli.main import _options, build_parser
    from sim.units import parse_size

    argv = ["calibrate", "--model", "llama-2-7b", "--gpu", "h100-80gb", "--device", a.device]
    if a.layers:
        argv += ["--layers", str(a.layers)]
    args = build_parser().parse_args(argv)
    args.trace = None
    options = _options(args, "paged")
    options.kv_memory = min(options.budget().requested_bytes, parse_size(args.calibration_kv))
    run = GpuRun.build(options, _harness_options(args))
    t0 = time.perf_counter()
    warm_up(run)
    print(f"warm-up {time.perf_counter() - t0:.1f} s", flush=True)
    state = SyntheticState(run)
    ex = state.executor
    rng = np.random.default_rng(0)
    replay = []
    if a.batches:
        with open(a.batches) as f:
            replay = json.load(f)
    max_len = min(options.model.max_model_len, 4096)
    items = batches_to_time(rng, replay, max_len)[: a.limit]
    modes = a.modes.split(",")
    res = {i: {m: ([], []) for m in modes} for i in range(len(items))}
    gc.collect()
    gc.disable()
    try:
        for mode in modes:
            t0 = time.perf_counter()
            for _ in range(a.passes):
                for i in rng.permutation(len(items)):
                    batch = place(state, items[i]["lens"])
                    if batch is None:
                        continue
                    walls, gpus = res[i][mode]
                    if mode == "repeat":
                        ex.execute(batch)
                        for _ in range(2):
                            w, g = timed(ex, batch)
                            walls.append(w)
                            gpus.append(g)
                    elif mode == "stream":
                        w, g = timed(ex, batch)
                        walls.append(w)
                        gpus.append(g)
                    else:
                        gap = float(mode[len("evolve-gap") :]) / 1e3 if mode.startswith("evolve-gap") else 0.0
                        pre = place_prefill(state, 128) if mode == "evolve-prefill" else None
                        for _ in range(a.evolve_steps):
                            if pre is not None:
                                ex.execute(pre)
                            if gap:
                                t_end = time.perf_counter() + gap
                                while time.perf_counter() < t_end:
                                    pass
                            w, g = timed(ex, batch)
                            walls.append(w)
                            gpus.append(g)
                            for seq in batch.decode:
                                if not state.alloc.can_append(seq.seq_id, 1):
                                    break
                                state.alloc.append(seq.seq_id, 1)
                            else:
                                batch.decode_context_tokens += batch.num_decode_seqs
                                continue
                            break
                        if pre is not None:
                            state.release(pre)
                    state.release(batch)
            print(f"{mode}: {time.perf_counter() - t0:.1f} s", flush=True)
    finally:
        gc.enable()
    rows = []
    for i, item in enumerate(items):
        row = {
            "name": item["name"],
            "kind": item.get("kind", "uniform"),
            "n": len(item["lens"]),
            "total": int(sum(item["lens"])),
            "max": int(max(item["lens"])),
        }
        for mode, (walls, gpus) in res[i].items():
            row[mode] = {
                "wall_s": float(np.median(walls)) if walls else None,
                "gpu_s": float(np.nanmedian(gpus)) if gpus else None,
                "runs": len(walls),
            }
        rows.append(row)
        base = row[modes[0]]["wall_s"] or float("nan")
        print(
            f"{item['name']:<34} n={row['n']:>3} total={row['total']:>6}  {modes[0]} {1e3 * base:7.3f}  "
            + "  ".join(f"{m} {(row[m]['wall_s'] or float('nan')) / base:.3f}" for m in modes[1:])
        )
    with open(os.path.join(a.out, "diag_calib.json"), "w") as f:
        json.dump({"rows": rows, "modes": modes, "passes": a.passes, "evolve_steps": a.evolve_steps}, f, indent=1)


if __name__ == "__main__":
    main()
