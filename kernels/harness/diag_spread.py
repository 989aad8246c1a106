"""Diagnosis (GPU): does the decode kernel run a batch of spread-out context lengths slower than a batch of uniform
lengths with the same total, as the replay's paged decode iterations suggest?

Calibration times decode batches of uniform lengths; the replay's batches mix lengths (the longest is often 2-3x the
mean). Replaying the scheduler with run 7's measured clock recovers every iteration's batch exactly, and the paged
decode iterations' excess over the profile grows with longest / mean length (+1%, +3%, +5% at 1, 2, 3), much less so
for the contiguous kernel. This script times one layer's decode attention, as the decode graphs call it (split-KV
bound = the model's max length), on spread batches and on uniform batches of the same size and total context, for
the paged and the contiguous kernels and a few launch options.

    python -m kernels.harness.diag_spread --batches reports/validation/h100-run8/diagnosis/replay_batches.json --out D

Writes D/spread.json (times in ms, medians of triton.testing.do_bench) and prints a table. Run 8's result and what
came of it: reports/validation/README.md ("Run 8").
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

from kernels.harness.decode_graphs import batch_buckets
from kernels.paged_attention import contiguous_decode_attention, paged_decode_attention

HEADS, HEAD, BLOCK = 32, 128, 16  # Llama-2-7B: 32 q/KV heads of 128; 16-token blocks
BOUND = 4096  # the decode graphs' split-KV bound: the model's max length

PAGED_OPTIONS = {
    "default": {},
    "reverse": {"config": {"reverse_parts": True}},
    "splits4": {"num_splits": 4},
    "splits8": {"num_splits": 8},
    "splits8-reverse": {"num_splits": 8, "config": {"reverse_parts": True}},
    "tile32-stages5": {"config": {"block_n": 32, "num_stages": 5}},
}
CONTIGUOUS_OPTIONS = {"default": {}, "splits8": {"num_splits": 8}, "reverse": {"config": {"reverse_parts": True}}}


def synthetic_batches(rng: np.random.Generator) -> list[dict]:
    """Spread batches that come from no trace: lengths uniform in [16, 2 x mean], and one long sequence among short."""
    out = []
    for b in (8, 16, 24):
        for mean in (500, 1000, 1500):
            lens = np.clip(rng.uniform(16, 2 * mean, b), 1, BOUND - 1).astype(int)
            out.append({"run": "synthetic-uniform-spread", "lens": lens.tolist()})
        out.append({"run": "synthetic-one-long", "lens": [3500] + [600] * (b - 1)})
    return out


def bench(fn) -> float:
    import triton.testing

    if not torch.cuda.is_available():  # a CPU smoke test of this script (TRITON_INTERPRET=1): run once
        fn()
        return 1.0
    return float(triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default=None, help="JSON list of {'lens': [...]} (e.g. replay_batches.json)")
    ap.add_argument("--out", default="diag_spread")
    ap.add_argument("--blocks", type=int, default=4096)
    ap.add_argument("--limit", type=int, default=None, help="only the first N batches (smoke tests)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng(0)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float16
    k = torch.randn((a.blocks, BLOCK, HEADS, HEAD), dtype=dtype, device=dev)
    v = torch.randn_like(k)
    k_slots, v_slots = k.view(-1, HEADS, HEAD), v.view(-1, HEADS, HEAD)
    batches = synthetic_batches(rng)
    if a.batches:
        with open(a.batches) as f:
            batches += json.load(f)
    batches = batches[: a.limit]
    buckets = batch_buckets(256)
    rows = []
    for i, item in enumerate(batches):
        lens = np.asarray(item["lens"], dtype=np.int64)
        n = len(lens)
        b = next(x for x in buckets if x >= n)
        mean = int(round(lens.mean()))
        variants = {"spread": lens, "uniform": np.full(n, mean, dtype=np.int64)}
        q = torch.randn((b, HEADS, HEAD), dtype=dtype, device=dev)
        out = torch.empty_like(q)
        row = {"run": item.get("run"), "n": n, "bucket": b, "mean": mean, "max": int(lens.max()), "lens": lens.tolist()}
        for name, ls in variants.items():
            need = -(-ls // BLOCK)
            perm = rng.permutation(a.blocks)[: int(need.sum())]
            bt = torch.zeros((b, BOUND // BLOCK), dtype=torch.int32)
            starts = torch.zeros(b, dtype=torch.int64)
            pos = 0
            for s in range(n):
                bt[s, : need[s]] = torch.from_numpy(perm[pos : pos + need[s]].astype(np.int32))
                pos += int(need[s])
            # contiguous: each sequence one range, ranges in a shuffled order with gaps
            order = rng.permutation(n)
            slot = 0
            for s in order:
                slot += int(rng.integers(0, 64)) * BLOCK
                starts[s] = slot
                slot += int(ls[s])
            assert slot <= a.blocks * BLOCK
            seq_lens = torch.zeros(b, dtype=torch.int32)
            seq_lens[:n] = torch.from_numpy(ls.astype(np.int32))
            bt, starts, seq_lens = bt.to(dev), starts.to(dev), seq_lens.to(dev)
            for opt, kw in PAGED_OPTIONS.items():
                row[f"paged/{opt}/{name}"] = bench(
                    lambda kw=kw: paged_decode_attention(
                        q, k, v, bt, seq_lens, HEAD**-0.5, max_seq_len=BOUND, out=out, **kw
                    )
                )
            for opt, kw in CONTIGUOUS_OPTIONS.items():
                row[f"contiguous/{opt}/{name}"] = bench(
                    lambda kw=kw: contiguous_decode_attention(
                        q, k_slots, v_slots, starts, seq_lens, HEAD**-0.5, max_seq_len=BOUND, out=out, **kw
                    )
                )
            row[f"paged/tight-bound/{name}"] = bench(
                lambda: paged_decode_attention(q, k, v, bt, seq_lens, HEAD**-0.5, max_seq_len=int(ls.max()), out=out)
            )
        rows.append(row)
        keys = [x[: -len("/spread")] for x in row if x.endswith("/spread")]
        print(
            f"[{i}] {row['run']} n={n} B={b} mean={mean} max={row['max']} (max/mean {row['max'] / mean:.1f}): "
            + " ".join(f"{kk}={row[kk + '/spread'] * 1e3:.1f}/{row[kk + '/uniform'] * 1e3:.1f}us" for kk in keys),
            flush=True,
        )
    summary = {}
    for kk in [x[: -len("/spread")] for x in rows[0] if x.endswith("/spread")]:
        ratios = [r[kk + "/spread"] / r[kk + "/uniform"] for r in rows]
        base = [r[kk + "/spread"] / r["paged/default/spread"] for r in rows]
        summary[kk] = {
            "median_spread_over_uniform": float(np.median(ratios)),
            "median_spread_vs_paged_default": float(np.median(base)),
        }
        print(
            f"{kk:28s} spread/uniform median {np.median(ratios):.3f}  spread time vs paged/default "
            f"{np.median(base):.3f}"
        )
    with open(os.path.join(a.out, "spread.json"), "w") as f:
        json.dump(
            {
                "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
                "torch": torch.__version__,
                "bound": BOUND,
                "rows": rows,
                "summary": summary,
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
