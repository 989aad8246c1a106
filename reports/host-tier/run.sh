#!/usr/bin/env bash
# The host-tier walkthrough of the README: p99 TTFT against host KV memory, and the capacity report.
# Run from the repository root: bash reports/host-tier/run.sh [OUT]  (OUT defaults to runs/host-tier)
set -euo pipefail
OUT=${1:-runs/host-tier}
mkdir -p "$OUT"
COMMON=(traces/long-prefix-2k.csv --allocator paged-prefix-cache --model llama-3.1-8b --gpu h100-80gb --kv-memory 8GiB -q)
for h in 0 4GiB 8GiB 12GiB 16GiB 32GiB 64GiB; do
  host=()
  [ "$h" = 0 ] || host=(--host-kv-memory "$h")
  python -m sim replay "${COMMON[@]}" "${host[@]}" --out "$OUT/replay-$h" --force > /dev/null
done
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
rows = []
for h in ["0", "4GiB", "8GiB", "12GiB", "16GiB", "32GiB", "64GiB"]:
    s = json.load(open(f"{out}/replay-{h}/summary.json"))
    t = s.get("host_tier") or {}
    rows.append({
        "host_kv_memory": h,
        "ttft_p50_s": s["latency_s"]["ttft"]["p50"],
        "ttft_p99_s": s["latency_s"]["ttft"]["p99"],
        "prefix_cache_hit_rate": s["sharing"]["prefix_cache_hit_rate"],
        "host_hit_rate": t.get("host_hit_rate", 0.0),
        "bytes_to_gpu": t.get("bytes_to_gpu", 0),
        "bytes_to_host": t.get("bytes_to_host", 0),
        "link_time_s": t.get("link_time_s", 0.0),
        "recompute_time_saved_s": t.get("recompute_time_saved_s", 0.0),
        "preemptions": s["requests"]["preemptions"],
        "output_tokens_per_s": s["throughput"]["output_tokens_per_s"],
    })
json.dump(rows, open(f"{out}/ttft-by-host-memory.json", "w"), indent=1)
print("| host KV memory | TTFT p50 (s) | TTFT p99 (s) | prefix hits (all tiers) | of which from the host | GiB host -> GPU | GiB GPU -> host | link time (s) | recompute time saved (s) | preemptions |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['host_kv_memory']} | {r['ttft_p50_s']:.3f} | {r['ttft_p99_s']:.3f} | {r['prefix_cache_hit_rate']:.1%} | "
          f"{r['host_hit_rate']:.1%} | {r['bytes_to_gpu'] / 2**30:,.1f} | {r['bytes_to_host'] / 2**30:,.1f} | "
          f"{r['link_time_s']:.1f} | {r['recompute_time_saved_s']:.1f} | {r['preemptions']:,} |")
PY
python -m sim report traces/long-prefix-2k.csv --model llama-3.1-8b --gpu h100-80gb --kv-memory 8GiB \
  --allocators paged-prefix-cache --host-kv-memories 0,8GiB,32GiB --slo ttft_p99=5s,tpot_p99=100ms --routers none \
  --out "$OUT/report" -q --force
