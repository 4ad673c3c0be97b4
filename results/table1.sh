#!/bin/bash
# How results/table1.{md,csv,json} were made (issue 3), on a 2-core CPU shared with other jobs.
# Runs live in runs/full/table1/<row>/seed<k>/ (git-ignored); every run has config.json,
# results.json (with the exact `skiprnn train` command line) and train.log.
# Base settings (TABLES["table1"]["full"] in src/skiprnn/training/reproduce.py):
#   lr 3e-3, batch 256, val every 100 steps, stop when solved (patience as below).
set -e
export PYTHONPATH=src
R="nice python -m skiprnn reproduce table1"

# Skip LSTM λ=1e-5, all 4 seeds (seeds 0/1 rerun after a first attempt with max_steps 3000 /
# patience 5, kept in runs/explore/table1_skip_lstm_l1e-5_seed{0,1}_max3000_pat5)
$R --seeds 4 --jobs 1 --rows skip_lstm_l1e-5 --set max_steps=2000 --set solved_patience=3
# with patience 3, seed 0 stopped solved but still at 100% updates (the budget had not yet acted),
# so every Skip LSTM seed got patience 8: seeds 0, 2, 3 continued from their stop point (the same
# trajectory a patience-8 run takes), seed 1 rerun from scratch:
for s in 0 2 3; do
  nice python -m skiprnn train --resume runs/full/table1/skip_lstm_l1e-5/seed$s --solved-patience 8 --max-steps 2000
done
$R --seeds 4 --jobs 1 --rows skip_lstm_l1e-5 --set max_steps=2000 --set solved_patience=8

# Skip GRU λ=1e-5: seed 0 was launched with max_steps 3000 / patience 5, stopped by hand at
# step 2513 and finalised with `skiprnn train --resume runs/full/table1/skip_gru_l1e-5/seed0 --max-steps 2513`;
# seeds 1-3:
$R --seeds 4 --jobs 2 --seed-major --rows skip_gru_l1e-5 --set max_steps=2500 --set solved_patience=3

# plain LSTM / GRU (stop at the first solved validation)
$R --seeds 4 --jobs 1 --seed-major --rows lstm gru --set max_steps=2000

# random skipping p_skip = 0.5, one seed each, 1000 steps
$R --seeds 1 --jobs 1 --rows lstm_p0.5 gru_p0.5 --set max_steps=1000

# second session: the remaining rows, one seed each
$R --seeds 1 --jobs 1 --rows lstm_p0.2 gru_p0.02 skip_lstm_l0 skip_gru_l0 --set max_steps=2000 --set solved_patience=3

# the tables (no training), results/table1.* and results/table4.*:
# Writes results/table1.* and results/table4.* from the finished runs (no training).
export PYTHONPATH=src
PY="nice /work/venv/bin/python -m skiprnn"
$PY reproduce table1 --seeds 4 --report-only --set max_steps=2000 --set solved_patience=8 \
  --note "CPU runs (2 shared cores): lr 3e-3 instead of the paper's 1e-4, and a step cap; the paper trained until Ctrl-C. Batch 256, global-norm clip 1, 110 units, update-gate bias 1, learned initial state, as the paper." \
  --note "Stop rule: validation every 100 steps on 3840 fixed sequences; plain/random models stop at the first solved validation; Skip models stop N validations after the last solved validation that lowered the number of updates (N = 8 Skip LSTM, 3 Skip GRU), or at max_steps (2000 Skip LSTM, 2500 Skip GRU)." \
  --note "Skip LSTM λ=1e-5: a first attempt at seeds 0 and 1 used max_steps 3000 / patience 5; at lr 3e-3 their gate collapsed after they first solved the task (all steps skipped, then seed 1 recovered; results/figures/table1_adding_skip_lstm_l1e-5_seed1_curves_gate_collapse.png). Stopped by hand at 1556 / 2098 steps they gave solved, 60.5% / 62.1% updates (lowest-validation-loss checkpoints at steps 600 / 1700). They were rerun with the table's settings; the old runs are kept in runs/explore/. Skip LSTM uses patience 8 (seeds 0, 2, 3 first ran with patience 3 and were continued with skiprnn train --resume RUN --solved-patience 8, which follows the same trajectory as a patience-8 run; with patience 3 seed 0 had stopped solved at 100% updates)." \
  --note "Acceptance: Skip GRU λ=1e-5 solves on 4/4 seeds with 44.6-51.6% updates. Skip LSTM λ=1e-5 solves on 4/4 seeds but only 2/4 use <= 60% updates (58.2%, 58.9%); seed 1 uses 63.9% and seed 0 never started skipping (100%) before it stopped; in the other runs the gate collapsed (all steps skipped) after ~700-1000 steps at this lr, so longer training at lr 3e-3 does not help (runs/explore/, and the curves figure). A lower lr after solving (or the paper's 1e-4 with far more steps) is the likely fix; not run (CPU time)." \
  --note "Skip GRU λ=1e-5: seed 0 ran 2513 steps (launched with max_steps 3000, stopped by hand); seeds 1-3 max_steps 2500, patience 3. Skip GRU needs ~2000-2400 steps at lr 3e-3 before its updates fall to ~50%." \
  --note "Random-skip rows p=0.5: 1 seed each, 1000 steps (2x the steps the plain LSTM/GRU needed to solve at this lr; their validation MSE had been flat at ~0.075-0.08 since step 300). Second session, 1 seed each, max_steps 2000, patience 3: LSTM p=0.2 not solved (MSE 0.030, 80.5% updates; paper: no, 80.0%), GRU p=0.02 not solved (MSE 0.0033, 98.0%; paper: no, 98.0%), Skip GRU λ=0 solved at step 400 with 95.5% updates (paper: yes, 97.9%), Skip LSTM λ=0 not solved within 2000 steps (MSE 0.0049 vs the 0.0017 threshold, 60.9% updates; paper: yes, 81.1%) - the step cap, not a finding." \
  --note "Commands: results/table1.sh (several skiprnn reproduce invocations; table written with --report-only)."
$PY reproduce table4 --seeds 4 --report-only \
  --note "CPU runs: lr 1e-3, batch 64 (paper: 1e-4, 256), max_steps 4000, validation every 100 steps on 3840 fixed sequences, stop 5 validations after the last solved validation that lowered the number of updates." \
  --note "Only Skip LSTM λ=1e-4 at Ts = 1 ms was run (1 seed; CPU time). Its mean of 59 updates mixes two regimes: ~7-12 samples on distractor waves, ~100 on target-band waves (results/figures/table4_frequency_skip_lstm_l1e-4_ts1_seed0_samples.png); raising the inference threshold does not help (evaluate --threshold 0.7: 60 updates solved, 0.8: 55 updates, 88% accuracy)." \
  --note "Tried and abandoned (runs/explore/): lr 3e-3 with batch 256 or 64 collapsed the gate (6-19% updates, ~50% accuracy) within 600 steps; λ=1e-3 (not in the paper) at lr 1e-3, batch 64 collapsed to 1% updates at chance accuracy." \
  --note "Acceptance not met: solved (99.6% test accuracy) but with 59.2 of 100 updates, not <= 20 (paper: 12.7). Commands: results/table4.sh."

# Skip LSTM λ=1e-5 rerun at lr 1e-3 (results/table1_lr1e-3/table1.md): 4/4 solved, 58.1% ± 1.8% updates
nice python -m skiprnn reproduce table1 --seeds 4 --jobs 2 --rows skip_lstm_l1e-5 --set lr=1e-3 \
  --set max_steps=4000 --set solved_patience=15 --runs-dir runs/lr1e-3/table1 --out results/table1_lr1e-3 \
  --note "Skip LSTM λ=1e-5 rerun at lr 1e-3 (paper 1e-4), max 4000 steps, keep training while solved validations lower the updates (patience 15)"
