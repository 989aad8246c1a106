#!/usr/bin/env bash
# Reproduce the headline figures of the vLLM paper (Kwon et al., SOSP 2023) with kvsim's vllm-v0 scheduler:
#   Figure 2  (share of KV memory holding token states, per system),
#   Figure 13 (mean batched requests, OPT-13B, ShareGPT at 2 req/s and Alpaca at 30 req/s),
#   Figure 12 (normalized latency against request rate; the vLLM / Orca throughput ratio at equal latency).
# Usage: reports/paper/reproduce.sh   (from anywhere; about 6 minutes on a 2-core machine; CPU only, offline)
# Writes the small result tables to reports/paper/results/ (CSV, and results.md with every table of README.md).
# Scratch files go to a temporary directory, removed at the end; each replay's output directory is deleted as soon as
# it has been read. KEEP_RUNS=DIR uses DIR instead and leaves it (the traces and `sim compare` printouts).
# Every simulation is a `sim` command; Python (the venv's, standard library only) only reads their outputs.
set -euo pipefail
cd "$(dirname "$0")/../.."
SIM=${SIM:-.venv/bin/sim}
PY=${PY:-.venv/bin/python}
RES=reports/paper/results
mkdir -p "$RES"
if [[ -n "${KEEP_RUNS:-}" ]]; then
  WORK=$KEEP_RUNS
  mkdir -p "$WORK"
else
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
fi
START=$(date +%s)

# The paper's setting (section 6.1): OPT-13B on one A100-40GB, block size 16, the vLLM (2023) engine.
# KV cache: 12 GiB = 15,728 token slots, as the paper's Table 1 is recalled (12 GB, 15.7K slots; not confirmed here)
# and as Figure 13's Orca (Max) = 7.00 requires; see README for why not kvsim's derived 10.67 GiB. Every run names the
# scheduler explicitly.
COMMON=(--model opt-13b --gpu a100-40gb --kv-memory 12GiB --block-size 16 --scheduler vllm-v0 --quiet --force)
SYSTEMS=contiguous-max,contiguous-pow2,contiguous-oracle,paged
DEFAULT_OV=2ms   # kvsim's default step overhead

# Paper values quoted for the overhead fit (Figure 13: vLLM batches 30.42 requests at 2 req/s on ShareGPT, 132.44 at
# 30 req/s on Alpaca).
PAPER_VLLM_BATCH_SG=30.42
PAPER_VLLM_BATCH_AL=132.44
NL_STOP=0.75     # the rate sweep stops a system once its mean normalized latency passes this (s/token)

cat > "$WORK/tools.py" <<'PY'
"""Read kvsim outputs (summary.json, compare.json, requests.csv) into small tables. Standard library only."""
import csv, json, math, sys

def normalized_latency(requests_csv):
    """The paper's metric: mean over completed requests of end-to-end latency / output length (s/token)."""
    vals = []
    with open(requests_csv) as f:
        for r in csv.DictReader(f):
            if r["finish_s"]:
                vals.append((float(r["finish_s"]) - float(r["arrival_s"])) / int(r["output_tokens"]))
    return sum(vals) / len(vals)

def summary_row(s):
    kv = s["kv_memory"]
    held = 1.0 - kv["free"]
    return {
        "batch_mean": s["batch_size"]["mean"], "batch_max": s["batch_size"]["max"],
        "token_states": kv["token_states"], "reserved": kv["reserved"],
        "internal_frag": kv["internal_fragmentation"], "external_frag": kv["external_fragmentation"],
        "free": kv["free"], "token_states_of_nonfree": kv["token_states"] / held if held > 0 else float("nan"),
        "throughput_rps": s["throughput"]["requests_per_s"], "preemptions": s["requests"]["preemptions"],
        "iterations": s["iterations"], "mean_iteration_ms": 1000 * s["duration_s"] / s["iterations"],
        "tpot_p50_ms": 1000 * s["latency_s"]["tpot"]["p50"], "ttft_p50_s": s["latency_s"]["ttft"]["p50"],
        "e2e_mean_s": s["latency_s"]["e2e"]["mean"],
    }

def cmd_nl(path):
    print(f"{normalized_latency(path):.6f}")

def cmd_fitrow(experiment, overhead, run_dir, out_csv):
    s = json.load(open(f"{run_dir}/summary.json"))
    row = {"experiment": experiment, "step_overhead_ms": overhead, **summary_row(s), "normalized_latency": normalized_latency(f"{run_dir}/requests.csv")}
    write = not _exists(out_csv)
    with open(out_csv, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if write:
            w.writeheader()
        w.writerow({k: _fmt(v) for k, v in row.items()})

def cmd_pickfit(fit_csv, experiment, target):
    rows = [r for r in csv.DictReader(open(fit_csv)) if r["experiment"] == experiment]
    best = min(rows, key=lambda r: abs(float(r["batch_mean"]) - float(target)))
    print(best["step_overhead_ms"])

def cmd_comparerows(label_dataset, overhead, compare_dir, out_csv):
    json.load(open(f"{compare_dir}/compare.json"))  # complete exactly when compare.json exists
    rows = []
    for name in ("contiguous-max", "contiguous-pow2", "contiguous-oracle", "paged"):
        if not _exists(f"{compare_dir}/{name}/summary.json"):
            continue  # not in this comparison
        s = json.load(open(f"{compare_dir}/{name}/summary.json"))
        nl = normalized_latency(f"{compare_dir}/{name}/requests.csv")
        rows.append({"experiment": label_dataset, "step_overhead_ms": overhead, "system": name,
                     **summary_row(s), "normalized_latency": nl})
    write = not _exists(out_csv)
    with open(out_csv, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if write:
            w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(v) for k, v in r.items()})

def cmd_swrow(run_dir):
    """batch mean, throughput of one replay (for the rate sweep)."""
    s = json.load(open(f"{run_dir}/summary.json"))
    print(f"{s['batch_size']['mean']:.4g},{s['throughput']['requests_per_s']:.4g}")

def _exists(p):
    try:
        open(p).close()
        return True
    except OSError:
        return False

def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v

if __name__ == "__main__":
    {"nl": cmd_nl, "fitrow": cmd_fitrow, "pickfit": cmd_pickfit, "comparerows": cmd_comparerows, "swrow": cmd_swrow}[sys.argv[1]](*sys.argv[2:])
PY
T() { "$PY" "$WORK/tools.py" "$@"; }
rm -f "$RES"/*.csv "$RES"/*.json "$RES"/results.md

# Traces. The shipped ones, rescaled; and, for Alpaca, a longer trace made by the same generator and command as the
# shipped alpaca-2k.csv (traces/README.md) but with 10,000 requests: at 30 req/s the shipped 2,000 requests arrive
# within 67 s, so ramp-up and drain weigh on the averages, and above ~50 req/s a queue has too little time to grow
# for a latency-against-rate curve.
# The shipped sharegpt-2k.csv was generated at 2 req/s but its realized rate is 1.976 req/s: scaled to exactly 2.
$SIM trace scale traces/sharegpt-2k.csv --to-rate 2 -o "$WORK/sharegpt2k-2.csv" --force >/dev/null
$SIM trace scale traces/alpaca-2k.csv --to-rate 30 -o "$WORK/alpaca2k-30.csv" --force >/dev/null
$SIM trace generate --lengths alpaca --rate 10 --count 10000 --seed 0 -o "$WORK/alpaca-10k.csv" --force >/dev/null
$SIM trace scale "$WORK/alpaca-10k.csv" --to-rate 30 -o "$WORK/alpaca10k-30.csv" --force >/dev/null
$SIM gpus | awk 'NR == 1 || $1 == "a100-40gb"' > "$WORK/gpus.txt"
$SIM trace stats traces/sharegpt-2k.csv --json > "$WORK/trace_sharegpt2k_shipped.json"
$SIM trace stats "$WORK/sharegpt2k-2.csv" --json > "$WORK/trace_sharegpt2k_2rps.json"
$SIM trace stats "$WORK/alpaca2k-30.csv" --json > "$WORK/trace_alpaca2k_30rps.json"
$SIM trace stats "$WORK/alpaca10k-30.csv" --json > "$WORK/trace_alpaca10k_30rps.json"

echo "== 1. engine overhead: paged (vLLM) mean batch against --step-overhead, at the paper's Figure 13 rates" >&2
for ov in 2 5 10 15 18 20 21 22 23 24 25 30 40; do
  $SIM replay "$WORK/sharegpt2k-2.csv" "${COMMON[@]}" --allocator paged --step-overhead ${ov}ms --out "$WORK/fit" >/dev/null
  T fitrow sharegpt-2k-2rps "$ov" "$WORK/fit" "$RES/overhead_fit.csv"
done
for ov in 2 10 22 30 40 50 55 60 65 70 80; do
  $SIM replay "$WORK/alpaca10k-30.csv" "${COMMON[@]}" --allocator paged --step-overhead ${ov}ms --out "$WORK/fit" >/dev/null
  T fitrow alpaca-10k-30rps "$ov" "$WORK/fit" "$RES/overhead_fit.csv"
done
rm -rf "$WORK/fit"
PAPER_OV="$(T pickfit "$RES/overhead_fit.csv" sharegpt-2k-2rps "$PAPER_VLLM_BATCH_SG")ms"
ALPACA_OV="$(T pickfit "$RES/overhead_fit.csv" alpaca-10k-30rps "$PAPER_VLLM_BATCH_AL")ms"
echo "   overhead whose vLLM batch is closest to the paper's: ShareGPT $PAPER_OV, Alpaca $ALPACA_OV" >&2
echo "{\"sharegpt_fit_ms\": ${PAPER_OV%ms}, \"alpaca_fit_ms\": ${ALPACA_OV%ms}}" > "$RES/fitted_step_overhead.json"

echo "== 2. Figure 2 and Figure 13: the four systems at the paper's rates" >&2
fig13() {  # label, trace, overhead
  $SIM compare "$2" "${COMMON[@]}" --allocators $SYSTEMS --step-overhead $3 --out "$WORK/cmp" > "$WORK/compare-$1-$3.txt"
  T comparerows "$1" "${3%ms}" "$WORK/cmp" "$RES/fig13_fig2.csv"
  rm -rf "$WORK/cmp"
}
for ov in $DEFAULT_OV $PAPER_OV $ALPACA_OV; do
  fig13 sharegpt-2k-2rps "$WORK/sharegpt2k-2.csv" $ov
  fig13 alpaca-2k-30rps "$WORK/alpaca2k-30.csv" $ov
  fig13 alpaca-10k-30rps "$WORK/alpaca10k-30.csv" $ov
done

echo "== 3. sensitivity (ShareGPT-like, 2 req/s, $PAPER_OV): derived KV budget; first-fit address space" >&2
NOKV=(--model opt-13b --gpu a100-40gb --block-size 16 --scheduler vllm-v0 --quiet --force)
$SIM compare "$WORK/sharegpt2k-2.csv" "${NOKV[@]}" --allocators $SYSTEMS --step-overhead $PAPER_OV --out "$WORK/cmp" \
  > "$WORK/compare-derived-kv.txt"
T comparerows sharegpt-2k-2rps-derived-kv-budget "${PAPER_OV%ms}" "$WORK/cmp" "$RES/sensitivity.csv"
rm -rf "$WORK/cmp"
# (sim compare refuses --address-space when paged is among the allocators, so paged, which has no address space, is
# left out here; its figures are those of the main run)
$SIM compare "$WORK/sharegpt2k-2.csv" "${COMMON[@]}" --allocators ${SYSTEMS%,paged} --step-overhead $PAPER_OV \
  --address-space first-fit --out "$WORK/cmp" >/dev/null
T comparerows sharegpt-2k-2rps-first-fit "${PAPER_OV%ms}" "$WORK/cmp" "$RES/sensitivity.csv"
rm -rf "$WORK/cmp"

echo "== 4. Figure 12: normalized latency against request rate (each system until it passes $NL_STOP s/token)" >&2
echo "dataset,step_overhead_ms,system,rate_rps,normalized_latency,batch_mean,throughput_rps" > "$RES/fig12_sweep.csv"
grid() {  # first rate, number of rates: a geometric grid of 2^(1/4) steps
  awk -v a="$1" -v n="$2" 'BEGIN { for (k = 0; k < n; k++) printf "%.4g\n", a * 2 ^ (k / 4) }'
}
for ds in sharegpt-2k alpaca-10k; do
  if [[ $ds == sharegpt-2k ]]; then src=traces/sharegpt-2k.csv; rates=$(grid 0.25 21); else src="$WORK/alpaca-10k.csv"; rates=$(grid 2 29); fi
  for r in $rates; do $SIM trace scale "$src" --to-rate $r -o "$WORK/$ds-$r.csv" --force >/dev/null; done
  for ov in $DEFAULT_OV $PAPER_OV; do
    for sys in ${SYSTEMS//,/ }; do
      for r in $rates; do
        $SIM replay "$WORK/$ds-$r.csv" "${COMMON[@]}" --allocator $sys --step-overhead $ov --out "$WORK/sw" >/dev/null
        nl=$(T nl "$WORK/sw/requests.csv")
        echo "$ds,${ov%ms},$sys,$r,$nl,$(T swrow "$WORK/sw")" >> "$RES/fig12_sweep.csv"
        rm -rf "$WORK/sw"
        awk -v x="$nl" -v m="$NL_STOP" 'BEGIN { exit !(x > m) }' && break
      done
    done
  done
  rm -f "$WORK/$ds"-*.csv
done

echo "== 5. tables" >&2
"$PY" - "$RES" "$(git rev-parse --short HEAD)" "$(( $(date +%s) - START ))" "$WORK" <<'PY'
import csv, json, math, sys
res, commit, secs, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
NAMES = {"contiguous-max": "Orca (Max)", "contiguous-pow2": "Orca (Pow2)", "contiguous-oracle": "Orca (Oracle)", "paged": "vLLM"}
SYSTEMS = list(NAMES)
# Paper values, quoted: Figure 2; Figure 13 as read.
PAPER_FIG2 = {"contiguous-max": 20.4, "contiguous-pow2": 26.8, "contiguous-oracle": 38.2, "paged": 96.3}
PAPER_SG = {"contiguous-max": 7.00, "contiguous-pow2": 9.81, "contiguous-oracle": 13.62, "paged": 30.42}
PAPER_AL = {"contiguous-max": 7.00, "contiguous-pow2": 43.24, "contiguous-oracle": 72.75, "paged": 132.44}
THRESHOLDS = (0.1, 0.25, 0.5)  # s/token
import json
_fit = json.load(open(f"{res}/fitted_step_overhead.json"))
ov_sg, ov_al = str(_fit["sharegpt_fit_ms"]), str(_fit["alpaca_fit_ms"])
OVS = ["2", ov_sg, ov_al]
out = []
p = out.append
pct = lambda x: f"{100 * float(x):.1f}%"
p(f"# Results (generated by reports/paper/reproduce.sh at commit {commit}, in {secs} s)\n")
p(f"Step overheads: 2 ms (kvsim default); {ov_sg} ms (fitted: vLLM's ShareGPT batch, Figure 13a); "
  f"{ov_al} ms (fitted: vLLM's Alpaca batch, Figure 13b).\n")

p("## KV budget, as `sim compare` prints it\n")
for label, fname in (("main runs (--kv-memory 12GiB)", f"compare-sharegpt-2k-2rps-{ov_sg}ms.txt"),
                     ("sensitivity (derived budget)", "compare-derived-kv.txt")):
    lines = [l.strip() for l in open(f"{work}/{fname}") if l.startswith(("KV budget", "KV cache", "model:", "scheduler:"))]
    p(f"{label}:\n")
    p("```")
    p("\n".join(lines))
    p("```\n")

p("GPU preset (`sim gpus`):\n")
p("```")
p(open(f"{work}/gpus.txt").read().rstrip())
p("```\n")

p("## Traces (`sim trace stats`)\n")
p("| trace | rows | rate (req/s) | prompt mean / p99 / max | output mean / p99 / max |")
p("|---|---|---|---|---|")
for label, fname in (("ShareGPT-like, shipped 2k, as shipped", "trace_sharegpt2k_shipped.json"),
                     ("ShareGPT-like, shipped 2k, scaled to 2 req/s", "trace_sharegpt2k_2rps.json"),
                     ("Alpaca-like, shipped 2k, scaled to 30 req/s", "trace_alpaca2k_30rps.json"),
                     ("Alpaca-like, generated 10k, scaled to 30 req/s", "trace_alpaca10k_30rps.json")):
    t = json.load(open(f"{work}/{fname}"))
    pr, ou = t["prompt_tokens"], t["output_tokens"]
    p(f"| {label} | {t['rows']:,} | {t['arrival_rate_rps']:.3f} | {pr['mean']:.1f} / {pr['p99']} / {pr['max']} | "
      f"{ou['mean']:.1f} / {ou['p99']} / {ou['max']} |")
p("")

fit = list(csv.DictReader(open(f"{res}/overhead_fit.csv")))
for exp, title, target in (("sharegpt-2k-2rps", "ShareGPT-like (shipped 2k trace) at 2 req/s", 30.42),
                           ("alpaca-10k-30rps", "Alpaca-like (10k trace) at 30 req/s", 132.44)):
    p(f"## Engine overhead fit: vLLM (paged) on {title}; paper: {target}\n")
    p("| step overhead (ms) | mean batch | preemptions | mean iteration (ms) | TPOT p50 (ms) | e2e mean (s) | "
      "normalized latency (s/token) | KV free |")
    p("|---|---|---|---|---|---|---|---|")
    for r in fit:
        if r["experiment"] == exp:
            p(f"| {r['step_overhead_ms']} | {float(r['batch_mean']):.2f} | {r['preemptions']} | "
              f"{float(r['mean_iteration_ms']):.1f} | {float(r['tpot_p50_ms']):.1f} | {float(r['e2e_mean_s']):.1f} | "
              f"{float(r['normalized_latency']):.3f} | {pct(r['free'])} |")
    p("")

p("## Little's law: the paper's vLLM batch as a latency\n")
p("With no queue, mean batch = arrival rate x mean time a request spends running, so the paper's Figure 13 vLLM "
  "batch gives its mean running time per request; divided by the mean output length (of our trace) it bounds the "
  "paper's time per iteration from above (it also holds prefill iterations and any preemption). Our roofline part "
  "is the simulated mean iteration time minus the step overhead, at the fitted overhead.\n")
p("| workload | paper batch | rate (req/s) | time running (s) | mean output (tokens) | paper: s per output token | "
  "fitted overhead (ms) | our mean iteration (ms) | our roofline part (ms) | implied overhead (ms) |")
p("|---|---|---|---|---|---|---|---|---|---|")
for exp, tr, paper_b, rate, ov in (("sharegpt-2k-2rps", "trace_sharegpt2k_2rps.json", 30.42, 2.0, ov_sg),
                                   ("alpaca-10k-30rps", "trace_alpaca10k_30rps.json", 132.44, 30.0, ov_al)):
    out_mean = json.load(open(f"{work}/{tr}"))["output_tokens"]["mean"]
    w = paper_b / rate
    per_tok = w / out_mean
    r = next(r for r in fit if r["experiment"] == exp and r["step_overhead_ms"] == ov)
    it = float(r["mean_iteration_ms"])
    roof = it - float(ov)
    p(f"| {exp} | {paper_b} | {rate:g} | {w:.2f} | {out_mean:.1f} | {1000 * per_tok:.1f} ms | {ov} | {it:.1f} | "
      f"{roof:.1f} | {1000 * per_tok - roof:.1f} |")
bs, ba = (float(next(r for r in fit if r["experiment"] == e and r["step_overhead_ms"] == o)["batch_mean"])
          for e, o in (("sharegpt-2k-2rps", ov_sg), ("alpaca-10k-30rps", ov_al)))
slope = (float(ov_al) - float(ov_sg)) / (ba - bs)
p("")
p(f"One fixed overhead cannot give both fits: {ov_sg} ms at a mean batch of {bs:.1f} (ShareGPT) and {ov_al} ms at "
  f"{ba:.1f} (Alpaca). A per-iteration overhead of the form a + b x batch through both points "
  f"(a back-of-the-envelope reading, not a fit of kvsim): b = {slope:.2f} ms per sequence, a = {float(ov_sg) - slope * bs:.1f} ms.\n")

rows = list(csv.DictReader(open(f"{res}/fig13_fig2.csv")))
def get(exp, ov, sysname, rows=rows):
    for r in rows:
        if r["experiment"] == exp and r["step_overhead_ms"] == ov and r["system"] == sysname:
            return r
    raise KeyError((exp, ov, sysname))

p("## Figure 2: token states as a share of KV memory (ShareGPT-like, 2 req/s)\n")
p("Ours: averaged over iterations; 'of capacity' is kvsim's `kv_memory.token_states`, 'of non-free' divides it by "
  "1 - `kv_memory.free` (the paper's bars have no free-memory category).\n")
p("| system | paper | " + " | ".join(f"{ov} ms: of capacity | {ov} ms: of non-free" for ov in OVS) + " |")
p("|---|---|" + "---|---|" * len(OVS))
for s in SYSTEMS:
    cells = []
    for ov in OVS:
        r = get("sharegpt-2k-2rps", ov, s)
        cells += [pct(r["token_states"]), pct(r["token_states_of_nonfree"])]
    p(f"| {NAMES[s]} | {PAPER_FIG2[s]:.1f}% | " + " | ".join(cells) + " |")
p("")
p(f"KV breakdown at {ov_sg} ms (fractions of KV capacity, averaged over iterations):\n")
p("| system | token states | reserved | internal frag. | external frag. | free |")
p("|---|---|---|---|---|---|")
for s in SYSTEMS:
    b = get("sharegpt-2k-2rps", ov_sg, s)
    p(f"| {NAMES[s]} | {pct(b['token_states'])} | {pct(b['reserved'])} | {pct(b['internal_frag'])} | "
      f"{pct(b['external_frag'])} | {pct(b['free'])} |")
p("")

for exp, title, paper in (("sharegpt-2k-2rps", "ShareGPT-like (shipped 2k trace) at 2 req/s", PAPER_SG),
                          ("alpaca-2k-30rps", "Alpaca-like (shipped 2k trace) at 30 req/s", PAPER_AL),
                          ("alpaca-10k-30rps", "Alpaca-like (10k trace, same generator) at 30 req/s", PAPER_AL)):
    p(f"## Figure 13: mean batched requests, {title}\n")
    p("| system | paper | " + " | ".join(f"{ov} ms" for ov in OVS) + " | vLLM / system: paper | "
      + " | ".join(f"{ov} ms" for ov in OVS) + " |")
    p("|---|---|" + "---|" * (2 * len(OVS) + 1))
    for s in SYSTEMS:
        b = [float(get(exp, ov, s)["batch_mean"]) for ov in OVS]
        v = [float(get(exp, ov, "paged")["batch_mean"]) for ov in OVS]
        p(f"| {NAMES[s]} | {paper[s]:.2f} | " + " | ".join(f"{x:.2f}" for x in b) + f" | {paper['paged'] / paper[s]:.2f} | "
          + " | ".join(f"{vv / x:.2f}" for vv, x in zip(v, b)) + " |")
    p("")
    p(f"Load and latency in the same runs ({ov_sg} ms):\n")
    p("| system | throughput (req/s) | preemptions | TTFT p50 (s) | normalized latency (s/token) | external frag. | KV free |")
    p("|---|---|---|---|---|---|---|")
    for s in SYSTEMS:
        b = get(exp, ov_sg, s)
        p(f"| {NAMES[s]} | {float(b['throughput_rps']):.2f} | {b['preemptions']} | {float(b['ttft_p50_s']):.2f} | "
          f"{float(b['normalized_latency']):.3f} | {pct(b['external_frag'])} | {pct(b['free'])} |")
    p("")

sens = list(csv.DictReader(open(f"{res}/sensitivity.csv")))
p(f"## Sensitivity: ShareGPT-like at 2 req/s, {ov_sg} ms\n")
p("| variant | system | mean batch | token states (of capacity) | of non-free |")
p("|---|---|---|---|---|")
for exp, label in (("sharegpt-2k-2rps", "12 GiB, buddy (as above)"), ("sharegpt-2k-2rps-derived-kv-budget", "derived KV budget (10.67 GiB), buddy"),
                   ("sharegpt-2k-2rps-first-fit", "12 GiB, first-fit address space")):
    src = rows if exp == "sharegpt-2k-2rps" else sens
    for s in SYSTEMS:
        if exp.endswith("first-fit") and s == "paged":
            continue  # paged has no address space: the first group holds it
        b = get(exp, ov_sg, s, src)
        p(f"| {label} | {NAMES[s]} | {float(b['batch_mean']):.2f} | {pct(b['token_states'])} | {pct(b['token_states_of_nonfree'])} |")
p("")

# Figure 12: capacity = the highest rate whose mean normalized latency is <= T, interpolated (log rate, linear
# latency) between the last grid rate at or below T and the first above it.
sweep = list(csv.DictReader(open(f"{res}/fig12_sweep.csv")))
def capacity(ds, ov, s, t):
    pts = sorted((float(r["rate_rps"]), float(r["normalized_latency"])) for r in sweep
                 if r["dataset"] == ds and r["step_overhead_ms"] == ov and r["system"] == s)
    prev = None
    for rate, nl in pts:
        if nl > t:
            if prev is None:
                return None
            r0, n0 = prev
            f = (t - n0) / (nl - n0)
            return math.exp(math.log(r0) + f * (math.log(rate) - math.log(r0)))
        prev = (rate, nl)
    return None  # never crossed within the grid
caprows = []
p("## Figure 12: highest request rate at equal normalized latency, and vLLM / Orca\n")
p("Capacity (req/s): the highest rate at which the mean normalized latency (mean over requests of end-to-end latency "
  "/ output tokens) stays at or below T, interpolated on a grid of 2^(1/4) rate steps.\n")
p("| trace | step overhead | T (s/token) | Orca (Max) | Orca (Pow2) | Orca (Oracle) | vLLM | vLLM / Max | vLLM / Pow2 | vLLM / Oracle |")
p("|---|---|---|---|---|---|---|---|---|---|")
for ds in ("sharegpt-2k", "alpaca-10k"):
    for ov in ("2", ov_sg):
        for t in THRESHOLDS:
            caps = {s: capacity(ds, ov, s, t) for s in SYSTEMS}
            for s in SYSTEMS:
                caprows.append({"trace": ds, "step_overhead_ms": ov, "threshold_s_per_token": t, "system": s,
                                "capacity_rps": f"{caps[s]:.4g}" if caps[s] else ""})
            fmt = lambda x: f"{x:.2f}" if x else "n/a"
            ratio = lambda s: f"{caps['paged'] / caps[s]:.2f}" if caps["paged"] and caps[s] else "n/a"
            p(f"| {ds} | {ov} ms | {t} | " + " | ".join(fmt(caps[s]) for s in SYSTEMS) + " | "
              + " | ".join(ratio(s) for s in SYSTEMS[:3]) + " |")
p("")
with open(f"{res}/fig12_capacity.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(caprows[0]))
    w.writeheader()
    w.writerows(caprows)
open(f"{res}/results.md", "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
echo "done in $(( $(date +%s) - START )) s" >&2
