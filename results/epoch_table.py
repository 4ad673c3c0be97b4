"""Per-epoch validation table (markdown) of a run: python results/epoch_table.py RUN_DIR.

Reads every csv*/metrics.csv of the run (one per sitting) and prints, per epoch, the step, the
validation accuracy, updates per sequence and cross-entropy (used for results/table2.md)."""
import csv, glob, sys, os
run = sys.argv[1]
rows = {}
for d in sorted(glob.glob(os.path.join(run, "csv*")), key=lambda p: (len(p), p)):
    f = os.path.join(d, "metrics.csv")
    if not os.path.exists(f):
        continue
    for r in csv.DictReader(open(f)):
        if r.get("val/accuracy"):
            rows[int(r["epoch"])] = (int(r["step"]) + 1, float(r["val/accuracy"]), float(r["val/updates"]), float(r["val/task_loss"]))
print("| epoch | step | val accuracy | val updates / 784 | val cross-entropy |")
print("|---:|---:|---:|---:|---:|")
for e in sorted(rows):
    s, a, u, l = rows[e]
    print(f"| {e + 1} | {s:,} | {a:.3f} | {u:.1f} | {l:.3f} |")
