#!/usr/bin/env bash
# One GPU session: environment, the kernel tests (bf16 included on CUDA), then the benchmark.
# Usage, from the repo root on the GPU machine:  OUT=dir bash kernels/gpu_check.sh [kernels.bench args]
set -o pipefail
OUT=${OUT:-/tmp/kernels_gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(0))"
} 2>&1 | tee "$OUT/env.txt"
XDIST=""
$PY -c "import xdist" 2>/dev/null && XDIST="-n ${TEST_WORKERS:-8}"
if [ "${SKIP_TESTS:-0}" != "1" ]; then
  timeout "${TEST_TIMEOUT:-240}" $PY -m pytest tests/kernels -q $XDIST --maxfail=25 -p no:cacheprovider 2>&1 | tee "$OUT/pytest.txt"
  echo "pytest exit: $?" | tee -a "$OUT/pytest.txt"
fi
timeout "${BENCH_TIMEOUT:-400}" $PY -m kernels.bench --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log"
echo "bench exit: $?"
