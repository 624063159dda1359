#!/usr/bin/env bash
# Issue 19's GPU measurements, in one run that fits a 10-minute device call.
#
# Run from the repository root on a machine with a CUDA GPU:
#
#     bash benchmarks/gpu_check.sh            # figures and logs under $OUT (default /tmp/gensift-gpu)
#
# It puts gensift from this tree on PYTHONPATH (no install), so the machine's own torch and
# torchvision are used. The dependencies the device image
# lacks come as wheels in .whl/: fetch them here first with benchmarks/gpu_wheels.sh and
# name .whl in the device call's carry.
#
# What it measures, each against its own ceilings in the same run (benchmarks/*.py say how):
#   1. sort_throughput.py, ResNet-50 x2 at batch 64, 512x512 PNGs, both scenarios: sort's
#      rate against the forward, decode and journal ceilings, peak GPU memory;
#   2. the same for two fine-tuned stages with inference.compile = "on";
#   3. watch_latency.py at 5 and at 200 images/s: p50 / p95 from rename to move;
#   4. tests/test_cuda.py: the GPU paths against the CPU's answers.
# Scale with COUNT (default 2000 images) and STEADY_SECONDS (default 30 s of steady watch load);
# STEPS picks steps (default "sort sort-compiled watch test-cuda"), to split a run over two
# calls if one would outlast the device's 10 minutes.
set -uo pipefail
OUT=${OUT:-/tmp/gensift-gpu}
COUNT=${COUNT:-2000}
STEADY=${STEADY_SECONDS:-30}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
STEPS=${STEPS:-sort sort-compiled watch test-cuda}
WORK=${WORK:-/tmp/gensift-gpu-work}  # drawn images, shared by the sort steps
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
cd "$(dirname "$0")/.."

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gensift-deps .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/gensift-deps${PYTHONPATH:+:$PYTHONPATH}
fi
if ! $PY -c "import gensift.daemon.cli" 2>/dev/null; then
    # gensift from this tree, as the package its pyproject maps it to (no build step, so no
    # setuptools needed); the benchmarks then run it as `python -m gensift.daemon.cli`
    mkdir -p /tmp/gensift-src/gensift
    ln -sfn "$PWD/daemon" /tmp/gensift-src/gensift/daemon
    ln -sfn "$PWD/models" /tmp/gensift-src/gensift/models
    export PYTHONPATH=/tmp/gensift-src${PYTHONPATH:+:$PYTHONPATH}
    $PY -c "import gensift.daemon.cli" || exit 1
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc;
  $PY -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)"; } \
    2>&1 | tee "$OUT/environment.txt"

step() {  # name, then the command: its output to $OUT/name.log, a line when it ends
    local name=$1; shift
    case " $STEPS " in *" ${name%%-[0-9]*} "*) ;; *) return 0 ;; esac
    local started=$SECONDS
    "$@" >"$OUT/$name.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - started)) s (tail follows)"
    tail -n 25 "$OUT/$name.log"
}

step sort $PY benchmarks/sort_throughput.py --device "$DEVICE" --count "$COUNT" \
    --batch-size 64 --rounds 2 --scenario both --compile off --dir "$WORK" \
    --json "$OUT/sort.json"
step sort-compiled $PY benchmarks/sort_throughput.py --device "$DEVICE" --count "$COUNT" \
    --batch-size 64 --rounds 1 --scenario finetuned --compile on --dir "$WORK" \
    --json "$OUT/sort-compiled.json"
for rate in 5 200; do
    step "watch-$rate" $PY benchmarks/watch_latency.py --device "$DEVICE" --rate "$rate" \
        --seconds "$STEADY" --idle-seconds 5 --flood 0 --batch-size 64 \
        --json "$OUT/watch-$rate.json"
done
step test-cuda $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py
