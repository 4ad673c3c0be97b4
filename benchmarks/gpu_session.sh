#!/usr/bin/env bash
# Device calls on the lent H100/H200 (15 min of device time per session, start-up included).
# Everything lands in $OUT (logs + JSON; the device returns at most 8 files from it).
#   bash benchmarks/gpu_session.sh [speed|mnist|inference|profile|train] ...
# speed: GPU kernel tests + training benchmark (~3 min); mnist: one sequential-MNIST run sized by
# MNIST_TIME / MNIST_TIMEOUT. Phases that earlier sessions ran (kernels, final, final2) are in the
# git history of this file (e.g. commit 40bbaac), next to the results they produced.
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
  local n=0
  while [ -n "$(jobs -r)" ]; do  # poll every 2 s (a finished run is not kept waiting), pack every 30 s
    sleep 2; n=$((n + 2))
    if [ $n -ge 30 ]; then n=0; snap "$1" "$2"; fi
  done
  wait
  snap "$1" "$2"
}
phases=("$@")
[ ${#phases[@]} -eq 0 ] && phases=(speed)
for phase in "${phases[@]}"; do
  case "$phase" in
    speed)
      # 1. compile in parallel (the machine has 16 cores; compiles dominated earlier calls): one
      #    throw-away benchmark process per (cell, shape) fills Triton's disk cache, while the
      #    cooperative-kernel GPU tests run in pytest-xdist workers (each case is a subprocess);
      # 2. then, alone on the GPU and with a warm cache, the training benchmark;
      # 3. the host-vs-device profile at the adding shape, if time is left
      XD=""
      python3 -c "import xdist" 2>/dev/null && XD="-n ${TEST_WORKERS:-6}"
      for cell in lstm gru; do
        for shape in mnist adding large; do
          SKIPRNN_COOP_MAXCAND=2 timeout "${WARM_TIMEOUT:-150}" python3 benchmarks/bench_gpu_train.py \
            --no-reference --reps 1 --warmup 0 --cells $cell --shapes $shape \
            --out "/tmp/warm_${cell}_$shape.json" > "/tmp/warm_${cell}_$shape.log" 2>&1 &
        done
      done
      timeout "${TEST_TIMEOUT:-170}" python3 -m pytest -q -rs $XD tests/ops/test_triton_coop.py \
        > "$OUT/gpu_tests_coop.log" 2>&1
      tail -4 "$OUT/gpu_tests_coop.log"
      wait
      grep -h "Error\|error" /tmp/warm_*.log | head -5
      SKIPRNN_COOP_MAXCAND=2 timeout "${BENCH_TIMEOUT:-150}" python3 benchmarks/bench_gpu_train.py \
        --no-reference --out "$OUT/bench_gpu_train_v4.json" > "$OUT/bench_gpu_train_v4.log" 2>&1
      tail -34 "$OUT/bench_gpu_train_v4.log"
      if [ "${PROFILE_TIMEOUT:-45}" != 0 ]; then
        timeout "${PROFILE_TIMEOUT:-45}" python3 benchmarks/profile_gpu.py --out "$OUT/profile_gpu_v4.json" \
          > "$OUT/profile_gpu_v4.log" 2>&1
        grep "'host_ms'" "$OUT/profile_gpu_v4.log"
      fi
      ;;
    mnist)
      # one Skip LSTM (λ = 1e-4) run; its directory (config, metrics CSV, results.json; no
      # checkpoints) is snapshotted into $OUT/mnist_run.tgz every 30 s, so a call cut short still
      # returns what was written
      SKIPRNN_COOP_MAXCAND=2 timeout "${MNIST_TIMEOUT:-420}" python3 -m skiprnn train mnist --model skip_lstm \
        --cost-per-sample 1e-4 --accelerator gpu --lr "${MNIST_LR:-1e-4}" --max-time "${MNIST_TIME:-00:00:05:00}" \
        --no-progress --out /tmp/mnist_run > "$OUT/mnist_train.log" 2>&1 &
      snapshots_while_running mnist_run mnist_run.tgz
      tail -12 "$OUT/mnist_train.log"
      ;;
    inference)
      timeout "${INFER_TIMEOUT:-150}" python3 benchmarks/bench_inference.py --device cuda \
        --out "$OUT/bench_inference_gpu.json" > "$OUT/bench_inference_gpu.log" 2>&1
      tail -20 "$OUT/bench_inference_gpu.log"
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
    *)
      echo "unknown phase '$phase' (expected speed, mnist, inference, profile or train)" >&2
      exit 2
      ;;
  esac
done
