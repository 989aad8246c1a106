"""Where a replay's iteration times depart from a cost profile, iteration by iteration (no GPU needed).

The GPU replay records each iteration's start and duration but not its batch. The scheduler is deterministic given
its clock, so driving the same scheduler and allocator with the measured start and end times re-creates every batch
exactly (the script counts mismatches of batch size and prefill tokens against measured_steps.csv). Each decode-only
iteration's measured execute time is then set beside the profile's formula for that batch, grouped by decode batch
size and by longest / mean context.

    python -m kernels.harness.residuals RUN_DIR PROFILE TRACE --first N --scale S --kv-memory 10GiB --allocator paged

RUN_DIR holds measured_steps.csv(.gz) and measured_timing.csv(.gz) of one allocator's replay. This is how run 8's
diagnosis (reports/validation/README.md) found that paged decode iterations ran slower than the profile the more
their lengths spread, and that contiguous ones did not.
"""

from __future__ import annotations

import argparse
import collections
import csv
import gzip
import os

import numpy as np

from sim.cost.profile import ProfileCostModel
from sim.hardware.gpus import resolve_gpu
from sim.hardware.models import resolve_model
from sim.serving.engine import branches_of, content_of
from sim.serving.replay import ReplayOptions, make_allocator
from sim.serving.schedulers.vllm_v0 import BeamModel, Scheduler, SchedulerLimits, Sequence
from sim.traces.readers import read_trace
from sim.traces.tools import scale_trace, slice_trace
from sim.units import parse_size


def _rows(path: str) -> list[dict]:
    if os.path.exists(path + ".gz"):
        with gzip.open(path + ".gz", "rt") as f:
            return list(csv.DictReader(f))
    with open(path) as f:
        return list(csv.DictReader(f))


def rebuild(run_dir: str, trace, options: ReplayOptions):
    """Yield (batch, allocator context lengths of its decode branches, measured step row, timing row)."""
    budget = options.budget()
    alloc = make_allocator(options, budget)
    limits = SchedulerLimits(options.max_num_seqs, options.engine_config.batched_tokens_limit(options.model))
    sched = Scheduler(alloc, limits, BeamModel(options.beam_replace_prob, options.seed))
    max_len = options.model.max_model_len
    num_branches, beam = branches_of(trace)
    arrival, prompt, output = trace.arrival_s, trace.prompt_tokens, trace.output_tokens
    nxt = 0
    for row, tm in zip(
        _rows(os.path.join(run_dir, "measured_steps.csv")), _rows(os.path.join(run_dir, "measured_timing.csv"))
    ):
        start, dur = float(row["time_s"]), float(row["duration_s"])
        while nxt < len(trace) and arrival[nxt] <= start:
            i = nxt
            nxt += 1
            p, o = int(prompt[i]), int(output[i])
            if p + o > max_len or alloc.never_fits(p + o - 1) is not None:
                continue
            sched.add(
                Sequence(
                    i,
                    p,
                    o,
                    float(arrival[i]),
                    num_branches=int(num_branches[i]),
                    beam=bool(beam[i]),
                    content=content_of(trace, i),
                )
            )
        batch = sched.schedule(start)
        lens = [alloc.num_tokens(b) for s in batch.decode for b in s.branches]
        yield batch, lens, row, tm
        sched.finish(batch, start + dur)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("profile")
    ap.add_argument("trace")
    ap.add_argument("--first", type=int, default=None)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--kv-memory", required=True)
    ap.add_argument("--allocator", default="paged")
    ap.add_argument("--model", default="llama-2-7b")
    ap.add_argument("--gpu", default="h100-80gb")
    a = ap.parse_args()
    trace = scale_trace(slice_trace(read_trace(a.trace), first=a.first), factor=a.scale)
    options = ReplayOptions(resolve_model(a.model), resolve_gpu(a.gpu), a.allocator, kv_memory=parse_size(a.kv_memory))
    profile = ProfileCostModel.load(a.profile)
    mismatches = 0
    res_b, res_spread = collections.defaultdict(list), collections.defaultdict(list)
    res_since = collections.defaultdict(list)
    exe_sum = pred_sum = 0.0
    since_prefill = 10
    for batch, lens, row, tm in rebuild(a.run_dir, trace, options):
        if batch.num_seqs != int(row["running"]) or batch.num_prefill_tokens != int(row["prefill_tokens"]):
            mismatches += 1
        if batch.num_prefill_tokens or batch.num_prefill_seqs:
            since_prefill = 0
        if batch.num_prefill_tokens or not lens:
            continue
        pred, exe = profile.step_time(batch), float(tm["execute_s"])
        exe_sum += exe
        pred_sum += pred
        res_b[len(lens)].append(exe / pred - 1)
        res_spread[round(max(lens) / np.mean(lens))].append(exe / pred - 1)
        res_since[min(since_prefill, 10)].append(exe / pred - 1)  # 10: ten or more
        since_prefill += 1
    print(f"batches that differ from the measured record: {mismatches}")
    print(f"decode-only iterations: measured execute / predicted, summed: {exe_sum / pred_sum:.4f}")
    for name, groups in (
        ("decode batch size", res_b),
        ("longest / mean context", res_spread),
        ("iterations since the last one with prefill (10: ten or more)", res_since),
    ):
        print(f"by {name} (median measured / predicted - 1, iterations):")
        print("  " + " ".join(f"{k}:{np.median(v):+.3f}({len(v)})" for k, v in sorted(groups.items()) if len(v) >= 30))


if __name__ == "__main__":
    main()
