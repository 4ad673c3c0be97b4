#!/usr/bin/env bash
# One GPU session on the lent H100/H200: kernel tests, training and inference benchmarks,
# and a short sequential-MNIST training run. Everything lands in $OUT (logs + JSON).
#   bash benchmarks/gpu_session.sh [kernels|inference|mnist|profile|train|speed|final|final2|all] ...
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:/tmp/site:${PYTHONPATH:-}"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
OUT="${OUT:-/tmp/skiprnn_out}"
mkdir -p "$OUT"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
  echo "commit ${SKIPRNN_GIT_COMMIT:-unknown}"
} 2>&1 | tee "$OUT/device.txt"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
# snapshots_while_running DIR TARBALL: while this shell's background jobs run (and once after),
# replace $OUT/TARBALL every 30 s with /tmp/DIR packed without checkpoints or TensorBoard files
# (the device returns at most 8 files from $OUT: a call cut short still returns what was written)
snapshots_while_running() {
  snap() {
    tar czf "/tmp/$1_snap.tgz" --exclude=checkpoints --exclude=tb -C /tmp "$1" 2>/dev/null \
      && cp "/tmp/$1_snap.tgz" "$OUT/$2.part" && mv "$OUT/$2.part" "$OUT/$2"
  }
  while [ -n "$(jobs -r)" ]; do sleep 30; snap "$1" "$2"; done
  wait
  snap "$1" "$2"
}
phases=("$@")
[ ${#phases[@]} -eq 0 ] && phases=(all)
for phase in "${phases[@]}"; do
  case "$phase" in
    kernels|all)
      timeout 300 python3 -m pytest -q -rs -x --durations=10 tests/ops/test_triton_lstm.py tests/ops/test_triton_gru.py 2>&1 | tail -25 | tee "$OUT/gpu_tests.log"
      timeout 200 python3 benchmarks/bench_gpu_train.py --out "$OUT/bench_gpu_train.json" 2>&1 | tee "$OUT/bench_gpu_train.log" | tail -30
      ;;&
    inference|all)
      if [ -f benchmarks/bench_inference.py ]; then
        timeout 150 python3 benchmarks/bench_inference.py --device cuda --out "$OUT/bench_inference_gpu.json" 2>&1 | tee "$OUT/bench_inference_gpu.log" | tail -20
      fi
      ;;&
    mnist|all)
      # the run directory (config, metrics CSV, results.json; no checkpoints) is snapshotted into
      # $OUT/mnist_run.tgz every 30 s, so a call cut short still returns what was written
      SKIPRNN_COOP_MAXCAND=2 timeout "${MNIST_TIMEOUT:-420}" python3 -m skiprnn train mnist --model skip_lstm \
        --cost-per-sample 1e-4 --accelerator gpu --lr "${MNIST_LR:-1e-3}" --max-time "${MNIST_TIME:-00:00:05:00}" \
        --no-progress --out /tmp/mnist_run > "$OUT/mnist_train.log" 2>&1 &
      snapshots_while_running mnist_run mnist_run.tgz
      tail -12 "$OUT/mnist_train.log"
      ;;
    speed)
      # third-session kernels (biases in-kernel, W_hh read in place, per-row-block sums of gz·c̃):
      # multi-column correctness first, then the training benchmark and the adding-shape profile
      timeout "${TEST_TIMEOUT:-100}" python3 -m pytest -q -rs tests/ops/test_triton_coop.py \
        > "$OUT/gpu_tests_coop.log" 2>&1
      tail -4 "$OUT/gpu_tests_coop.log"
      SKIPRNN_COOP_MAXCAND=2 timeout "${BENCH_TIMEOUT:-170}" python3 benchmarks/bench_gpu_train.py \
        --no-reference --out "$OUT/bench_gpu_train_v4.json" > "$OUT/bench_gpu_train_v4.log" 2>&1
      tail -34 "$OUT/bench_gpu_train_v4.log"
      timeout "${PROFILE_TIMEOUT:-90}" python3 benchmarks/profile_gpu.py --out "$OUT/profile_gpu_v4.json" \
        > "$OUT/profile_gpu_v4.log" 2>&1
      grep "'host_ms'" "$OUT/profile_gpu_v4.log"
      ;;
    profile)
      # host vs device time and a torch.profiler table at the adding shape (fixed costs)
      timeout 150 python3 benchmarks/profile_gpu.py --out "$OUT/profile_gpu.json" > "$OUT/profile_gpu.log" 2>&1
      tail -20 "$OUT/profile_gpu.log"
      ;;
    train)
      # concurrent training runs on the one GPU (time-sliced): sequential MNIST at the paper's
      # lr 1e-4 and Table 4 (frequency, Ts = 1 ms, Skip LSTM λ = 1e-4) at the paper's lr 1e-4,
      # batch 256, three seeds; each for TRAIN_TIME, then test evaluation. The device returns at
      # most 8 files from $OUT, so the run directories live in /tmp/gpu_runs and a snapshot of
      # them without checkpoints (configs, logs, metrics CSVs, results.json) replaces
      # $OUT/gpu_runs.tgz every 30 s: whatever has been written when the call ends comes back.
      TT="${TRAIN_TIME:-00:00:03:30}"
      R=/tmp/gpu_runs
      mkdir -p "$R"
      SKIPRNN_COOP_MAXCAND=2 timeout "${RUN_TIMEOUT:-420}" python3 -m skiprnn train mnist \
        --model skip_lstm --cost-per-sample 1e-4 --accelerator gpu --lr 1e-4 --max-time "$TT" \
        --no-progress --out "$R/mnist_lr1e-4" > "$R/mnist_lr1e-4.log" 2>&1 &
      for s in 0 1 2; do
        SKIPRNN_COOP_MAXCAND=2 timeout "${RUN_TIMEOUT:-420}" python3 -m skiprnn train frequency \
          --model skip_lstm --cost-per-sample 1e-4 --accelerator gpu --lr 1e-4 --batch-size 256 \
          --seed $s --max-steps 10000000 --max-time "$TT" --solved-patience 1000000 --no-progress \
          --out "$R/t4_skip_lstm_l1e-4_ts1_seed$s" > "$R/t4_seed$s.log" 2>&1 &
      done
      snapshots_while_running gpu_runs gpu_runs.tgz
      for f in "$R"/*.log; do echo "== $f"; grep -v -i "warn\|tip:" "$f" | tail -8; done
      ;;
    final2)
      # second session call: speed first (training kernels, then skipping inference), then the
      # GPU tests of the kernels (block-skip multi-column cases first)
      SKIPRNN_COOP_MAXCAND=2 timeout "${BENCH_TIMEOUT:-170}" python3 benchmarks/bench_gpu_train.py \
        --no-reference --out "$OUT/bench_gpu_train_v3.json" > "$OUT/bench_gpu_train_v3.log" 2>&1
      tail -34 "$OUT/bench_gpu_train_v3.log"
      timeout 60 python3 benchmarks/bench_inference.py --device cuda --reps 7 --gpu-budget-s 30 --no-lazy \
        --out "$OUT/inference_cuda_v3.json" > "$OUT/inference_cuda_v3.log" 2>&1
      tail -12 "$OUT/inference_cuda_v3.log"
      timeout 80 python3 -m pytest -q -rs tests/ops/test_triton_coop.py -k "sync or cfg16_16_4-mask" \
        > "$OUT/gpu_tests_coop_v3.log" 2>&1
      tail -4 "$OUT/gpu_tests_coop_v3.log"
      if [ "${FULL_TESTS:-0}" = 1 ]; then
        timeout "${TEST_TIMEOUT:-120}" python3 -m pytest -q -rs tests/ops/test_triton_lstm.py \
          tests/ops/test_triton_gru.py > "$OUT/gpu_tests_v3.log" 2>&1
        tail -6 "$OUT/gpu_tests_v3.log"
      fi
      if [ -n "${MNIST_SHORT:-}" ]; then
        # a short sequential-MNIST run at the paper's lr 1e-4; only its log (with the printed
        # summary) and metrics CSV come back (the device returns at most 8 files from $OUT)
        SKIPRNN_COOP_MAXCAND=2 timeout "$((MNIST_SHORT + 60))" python3 -m skiprnn train mnist \
          --model skip_lstm --cost-per-sample 1e-4 --accelerator gpu --lr 1e-4 \
          --max-time "00:00:00:$MNIST_SHORT" --no-progress --out /tmp/mnist_lr1e-4_short \
          > "$OUT/mnist_lr1e-4_short.log" 2>&1
        cp /tmp/mnist_lr1e-4_short/csv/metrics.csv "$OUT/mnist_lr1e-4_short_metrics.csv" 2>/dev/null
        tail -8 "$OUT/mnist_lr1e-4_short.log"
      fi
      ;;
    final)
      # the one-shot session: speed first, then inference, MNIST, and the multi-column kernel tests
      SKIPRNN_COOP_MAXCAND=2 timeout 170 python3 benchmarks/bench_gpu_train.py --no-reference \
        --out "$OUT/bench_gpu_train_v2.json" > "$OUT/bench_gpu_train_v2.log" 2>&1
      tail -32 "$OUT/bench_gpu_train_v2.log"
      timeout 45 python3 benchmarks/bench_inference.py --device cuda --reps 7 --gpu-budget-s 30 --no-lazy \
        --out "$OUT/inference_cuda_v2.json" > "$OUT/inference_cuda_v2.log" 2>&1
      tail -12 "$OUT/inference_cuda_v2.log"
      MNIST_TIMEOUT=120 MNIST_TIME=00:00:01:35 bash "$0" mnist
      timeout 60 python3 -m pytest -q -rs -x tests/ops/test_triton_coop.py > "$OUT/coop_tests.log" 2>&1
      tail -5 "$OUT/coop_tests.log"
      ;;
  esac
done
