#!/usr/bin/env bash
# Results of record for the GPU harness, in one device call: environment, `sim calibrate`, then `sim validate` runs
# in priority order until the time budget is spent (a run that would not fit is skipped and listed).
# Usage, from the repo root on the GPU machine (simpy travels as a wheel in .whl/):
#   OUT=dir BUDGET=420 PART=1 bash kernels/harness/record.sh
#   OUT=dir BUDGET=500 PART=hybrid bash kernels/harness/record.sh   (MODEL defaults to llama-3.1-8b-swa)
#   OUT=dir BUDGET=500 PART=host bash kernels/harness/record.sh     (MODEL defaults to llama-3.1-8b, max length 8,192)
# Everything lands in $OUT/rec and is packed into $OUT/results.tar.gz (the device returns files 2 folders deep).
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/harness_out}
R=$OUT/rec
mkdir -p "$R"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
START=$(date +%s)
BUDGET=${BUDGET:-420}
PART=${PART:-1}
if [ "$PART" = hybrid ]; then
  MODEL=${MODEL:-llama-3.1-8b-swa}  # Llama-3.1-8B shapes, Gemma-3's 5 sliding (1,024 tokens) : 1 full layers
elif [ "$PART" = host ]; then
  MODEL=${MODEL:-llama-3.1-8b}  # long-prefix-2k's prompts (up to 5,115 tokens + output) need more than Llama-2's 4,096
  MODEL_ARGS=${MODEL_ARGS:---max-model-len 8192}
fi
MODEL_ARGS=${MODEL_ARGS:-}  # more model options for calibrate and every validate (word-split)
MODEL=${MODEL:-llama-2-7b}
GPU=${GPU:-h100-80gb}
PROFILE=${PROFILE:-$R/profile-$MODEL-$GPU.json}
left() { echo $((BUDGET - ($(date +%s) - START))); }

{
  date -u
  echo "commit ${COMMIT:-unknown}"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv
  python3 -c "import torch, triton, simpy, numpy; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'simpy', simpy.__version__, 'numpy', numpy.__version__)"
  python3 --version
} 2>&1 | tee "$R/env.txt"

if [ ! -f "$PROFILE" ]; then
  python3 -m sim calibrate --model "$MODEL" $MODEL_ARGS --gpu "$GPU" --budget-s "${CAL_BUDGET:-50}" --passes "${CAL_PASSES:-2}" \
    --out "$PROFILE" 2>&1 \
    | tee "$R/calibrate.log"
fi

run() {  # run NAME NEEDED_S ARGS...: one validate, if NEEDED_S seconds are left
  local name=$1 need=$2
  shift 2
  local l
  l=$(left)
  if [ "$l" -lt "$need" ]; then
    echo "skipped $name: $l s left, needs ~$need" | tee -a "$R/skipped.txt"
    return
  fi
  echo "=== $name ($l s left): sim validate $* --model $MODEL $MODEL_ARGS --gpu $GPU --cost-model $PROFILE" \
    | tee -a "$R/commands.txt"
  timeout $((l - 5)) python3 -m sim validate "$@" --model "$MODEL" $MODEL_ARGS --gpu "$GPU" --cost-model "$PROFILE" \
    --out "$R/$name" --time-limit $((l - 25)) -q 2>&1 | tee "$R/$name.log"
}

if [ "$PART" = 1 ]; then  # first H100 run (2026-11-22, before the alignment fix): kept for the record
  run azure 120 traces/azure-llm-2023-conv.csv --first 60 --scale 2 --kv-memory 4GiB \
    --allocators paged,contiguous-pow2,contiguous-max --scheduler vllm-v0
  run parallel 45 traces/parallel-sampling-1k.csv --first 100 --scale 4 --kv-memory 1GiB \
    --allocators paged,contiguous-pow2 --scheduler vllm-v0
  run prefix 50 traces/shared-prefix-1k.csv --first 40 --scale 4 --kv-memory 2GiB \
    --allocators paged-prefix-cache,paged --scheduler vllm-v0
  run sharegpt 70 traces/sharegpt-2k.csv --first 50 --scale 4 --kv-memory 2GiB \
    --allocators paged,contiguous-pow2 --scheduler vllm-v0
elif [ "$PART" = 2 ]; then  # results of record
  run azure 100 traces/azure-llm-2023-conv.csv --first 50 --scale 2 --kv-memory 4GiB \
    --allocators paged,contiguous-pow2,contiguous-max --scheduler vllm-v0
  run parallel 50 traces/parallel-sampling-1k.csv --first 80 --scale 4 --kv-memory 1GiB \
    --allocators paged,contiguous-pow2 --scheduler vllm-v0
  run sharegpt 80 traces/sharegpt-2k.csv --first 25 --scale 4 --kv-memory 3GiB \
    --allocators paged,contiguous-pow2 --scheduler vllm-v0
  run prefix 45 traces/shared-prefix-1k.csv --first 20 --scale 4 --kv-memory 2GiB \
    --allocators paged-prefix-cache --scheduler vllm-v0
elif [ "$PART" = v1 ]; then  # vllm-v1 of record: Azure conversation slice, prefix-heavy, ShareGPT-like
  V1="--scheduler vllm-v1 --max-num-seqs 256 --max-num-batched-tokens 2048"
  run azure300 200 traces/azure-llm-2023-conv.csv --first 300 --scale 2 --kv-memory 6GiB \
    --allocators paged,contiguous-pow2 $V1
  run prefix 100 traces/shared-prefix-1k.csv --first 200 --scale 2 --kv-memory 2GiB \
    --allocators paged-prefix-cache $V1
  run sharegpt 150 traces/sharegpt-2k.csv --first 200 --scale 3 --kv-memory 3GiB \
    --allocators paged,contiguous-pow2 $V1
elif [ "$PART" = hybrid ]; then  # the hybrid dense model: calibrated on paged-hybrid's pages (sim calibrate does so
  # for a model with KV-cache groups), then the Azure conversation slice where memory binds (paged-hybrid against
  # paged: the windows' freed pages in the throughput ratio) and a prefix-heavy trace on the grouped prefix cache
  V1="--scheduler vllm-v1 --max-num-seqs 256 --max-num-batched-tokens 2048"
  run azure300 200 traces/azure-llm-2023-conv.csv --first 300 --scale 2 --kv-memory 2GiB \
    --allocators paged-hybrid,paged $V1
  run prefix 100 traces/shared-prefix-1k.csv --first 200 --scale 2 --kv-memory 768MiB \
    --allocators paged-hybrid-prefix-cache $V1
elif [ "$PART" = host ]; then  # the host tier (kernels.harness.host_pool): the calibration also measures the pinned
  # host link (profile meta host_link, which the predictions use); then a swap-heavy replay (--preemption swap: 307
  # swaps, 8.0 GB each way) and an offload-heavy one (paged-prefix-cache's evicted prefix blocks to the host and back:
  # 60.6 GB to the host, 16.7 GB back). Every request arrives at t = 0 (the slices' arrival times set to 0), so the
  # schedule does not depend on timing and the bytes moved must equal the simulation's exactly. sharegpt: one sequence
  # per request (a request of several sequences that preempts itself mid-append is recomputed, not swapped:
  # tests/harness/test_harness_host_tier.py).
  # Roofline durations 44 s and 51 s (calibrated replays of Llama-2-7B ran ~15% over the roofline): ~200 s in all
  # with the calibration (~45 s) and each run's start-up, warm-up and host pool (~15 s).
  V1="--scheduler vllm-v1 --max-num-seqs 256 --max-num-batched-tokens 2048"
  at0() { awk -F, -v n="$2" 'BEGIN { OFS = "," } NR == 1 { print; next } NR <= n + 1 { $1 = 0; print }' "$1" >"$3"; }
  at0 traces/sharegpt-2k.csv 200 "$R/sharegpt-200-at-0.csv"
  at0 traces/long-prefix-2k.csv 120 "$R/long-prefix-120-at-0.csv"
  run swap 90 "$R/sharegpt-200-at-0.csv" --kv-memory 768MiB --allocators paged --preemption swap \
    --host-kv-memory 2GiB $V1
  run offload 110 "$R/long-prefix-120-at-0.csv" --kv-memory 4GiB --allocators paged-prefix-cache \
    --host-kv-memory 8GiB $V1
else
  eval "${RUNS:-}"
fi
echo "total $(($(date +%s) - START)) s" | tee -a "$R/commands.txt"
tar czf "$OUT/results.tar.gz" -C "$OUT" rec
