"""A loss-spike guard tried against the late collapse (not in the library; see ../../table4.md).

    python results/table4_fast/extra_runs/spike_guard/guard_run.py 4 0.99 SEED runs/guard4_sSEED

Recipe fast for frequency (`skiprnn train frequency --seed SEED --threads 1`), plus: once the
budget has started (the gate released), a training step whose loss is above FACTOR x the running
mean of the losses (decay DECAY) contributes no gradient (its loss is multiplied by 0, so the spike
enters neither the weights nor Adam's moments); the running mean takes such a loss at FACTOR x.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "src"))
F, D = float(sys.argv[1]), float(sys.argv[2])
seed, out = sys.argv[3], sys.argv[4]
from skiprnn.training import module as M
orig = M.SkipRNNModule.training_step
def training_step(self, batch, idx):
    loss = orig(self, batch, idx)
    l = loss.detach()
    ema = getattr(self, "_g_ema", None)
    if ema is None:
        self._g_ema, self._g_skips = l.clone(), torch.zeros((), dtype=l.dtype)
        return loss
    active = self.budget.fraction(int(self.global_step)) > 0   # once the gate is released
    keep = (l <= F * ema).to(l.dtype) if active else torch.ones_like(l)
    self._g_ema = D * ema + (1 - D) * torch.minimum(l, F * ema)   # a skipped loss counts at F x
    self._g_skips = self._g_skips + (1 - keep)
    if int(self.global_step) % 100 == 99:
        print(f"[guard] step {int(self.global_step) + 1}: ema {float(self._g_ema):.4g}, skipped so far {int(self._g_skips)}", flush=True)
    return loss * keep
M.SkipRNNModule.training_step = training_step
from skiprnn.cli import main
sys.exit(main(["train", "frequency", "--seed", seed, "--threads", "1", "--no-progress", "--out", out]))
