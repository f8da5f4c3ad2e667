#!/usr/bin/env bash
# The whole GPU check of docs/gpu.md in one call on a lent GPU machine, from the repository root:
#
#     bash benchmarks/gpu_device.sh                 # the device tool's run, with timeout_s=600
#     GPU_TESTS=0 bash benchmarks/gpu_device.sh     # the benchmark only
#     TOTAL=1200 bash benchmarks/gpu_device.sh      # where a call may run longer than 10 minutes
#
# Everything ends within $TOTAL seconds (default 570: the device tool's 10-minute call, less a margin):
# 1. tests/scoresde/test_gpu.py (the speed options against eager float32 on the card), at most $TEST_TIMEOUT s
#    (default 150);
# 2. benchmarks/gpu.py --loss-curve 200 in the time left, with --time-limit 150 s before the end: a
#    measurement not started by then is skipped (the loss curves come last), and every figure is
#    printed as soon as it is measured, so a cut-off run still reports what it measured.
# Logs go to $OUT (the device tool's folder that comes back; /tmp/scoresde_gpu elsewhere). Runs from the
# working tree (PYTHONPATH), with the machine's own python3 and packages: nothing is installed.
# Extra arguments go to benchmarks/gpu.py (e.g. --compile-mode reduce-overhead).
set -uo pipefail
OUT=${OUT:-/tmp/scoresde_gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR="$PWD/.inductor_cache"  # git-ignored: a second call on a warm machine reuses it
PY=${PYTHON:-python3}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$OUT/card.csv"
"$PY" -c "import sys, torch, torchdiffeq; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, 'torchdiffeq', torchdiffeq.__version__, 'device', torch.cuda.get_device_name())" \
  2>&1 | tee "$OUT/versions.txt"

status=0
if [ "${GPU_TESTS:-1}" != 0 ]; then
  timeout "${TEST_TIMEOUT:-150}" "$PY" -m pytest -m gpu -p no:cacheprovider -q tests/scoresde/test_gpu.py 2>&1 | tee "$OUT/tests.log"
  status=${PIPESTATUS[0]}
fi
left=$(( ${TOTAL:-570} - SECONDS ))
timeout "$left" "$PY" benchmarks/gpu.py --loss-curve 200 --time-limit "$(( left > 300 ? left - 150 : left / 2 ))" "$@" \
  2>&1 | tee "$OUT/gpu.log"
bench=${PIPESTATUS[0]}
echo "tests exit $status, benchmark exit $bench"
[ "$status" = 0 ] && [ "$bench" = 0 ]
