#!/usr/bin/env bash
# Memory saved by parallel sampling and beam search, and the gain of prefix caching, on generated workloads.
# Usage: reports/sharing/run.sh  (writes reports/sharing/results.md; about a minute)
set -euo pipefail
cd "$(dirname "$0")/../.."
SIM=${SIM:-.venv/bin/sim}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
common=(--model opt-13b --gpu a100-40gb --quiet --force)
row() {  # label, summary.json
  python3 - "$@" <<'PY'
import json, sys
label, path = sys.argv[1], sys.argv[2]
s = json.load(open(path))
sh = s["sharing"]
print(f"| {label} | {s['allocator']} | {sh['saved_fraction']:.1%} | {sh['cow_copies']:,} | "
      f"{sh['prefix_cache_hit_rate']:.1%} | {s['batch_size']['mean']:.1f} | {s['throughput']['requests_per_s']:.2f} | "
      f"{s['latency_s']['ttft']['p99']:.2f} |")
PY
}
{
echo "# Sharing KV blocks: measured on generated workloads"
echo
echo "Produced by \`reports/sharing/run.sh\` ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD)). OPT-13B on an"
echo "A100-40GB (derived KV budget), block size 16, roofline cost model, the default \`vllm-v1\` scheduler. \`saved\` is"
echo "\`sharing.saved_fraction\`: the share of KV memory held that sharing saves against the same live sequences with"
echo "nothing shared (README, Output figures)."
echo
echo "| workload | allocator | saved | CoW copies | prefix hit rate | mean batch (sequences) | req/s | TTFT p99 (s) |"
echo "|---|---|---|---|---|---|---|---|"
for n in 2 4 6; do
  $SIM trace generate --lengths alpaca --rate 20 --count 2000 --seed 1 --n $n -o "$work/alpaca-n$n.csv" --force >/dev/null
  $SIM replay "$work/alpaca-n$n.csv" --allocator paged --out "$work/n$n" "${common[@]}" >/dev/null
  row "Alpaca-like, parallel sampling n=$n" "$work/n$n/summary.json"
done
for w in 2 4 6; do
  $SIM trace generate --lengths alpaca --rate 20 --count 2000 --seed 1 --beam-width $w -o "$work/alpaca-b$w.csv" --force >/dev/null
  $SIM replay "$work/alpaca-b$w.csv" --allocator paged --out "$work/b$w" "${common[@]}" >/dev/null
  row "Alpaca-like, beam search width $w" "$work/b$w/summary.json"
done
$SIM trace generate --lengths sharegpt --rate 2 --count 2000 --seed 1 --prefix-groups 8 --prefix-tokens 1024 \
  -o "$work/prefix.csv" --force >/dev/null
$SIM replay "$work/prefix.csv" --allocator paged --no-sharing --out "$work/p-none" "${common[@]}" >/dev/null
row "ShareGPT-like + 8 groups x 1,024-token prefix, --no-sharing" "$work/p-none/summary.json"
for a in paged paged-prefix-cache; do
  $SIM replay "$work/prefix.csv" --allocator $a --out "$work/p-$a" "${common[@]}" >/dev/null
  row "ShareGPT-like + 8 groups x 1,024-token prefix" "$work/p-$a/summary.json"
done
} > reports/sharing/results.md
cat reports/sharing/results.md
