"""Where a trained frequency model errs: error rate by the sine's period (fresh samples, not the
test set). Usage: python error_by_period.py RUN_DIR[:CHECKPOINT] ... (CHECKPOINT: best | last |
best_metric | a path; default best)."""

import argparse

import torch

from skiprnn.training.fit import load_module

BINS = (1, 2, 3, 4, 4.5, 5, 6, 6.5, 7, 8, 10, 15, 20, 30, 50, 100)


def errors(module, label: int, n: int, generator: torch.Generator):
    """Periods (ms) of ``n`` fresh class-``label`` items and whether the model got each wrong."""
    task = module.task
    periods = task.sample_periods(n, label, generator)
    phase = torch.rand(n, generator=generator, dtype=torch.float64) * periods
    x = torch.cos(2 * torch.pi * task.times_ms()[None, :] / periods[:, None] + phase[:, None])
    with torch.no_grad():
        pred, _ = module(x.float().unsqueeze(-1))
    return periods, pred.argmax(-1) != label


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("runs", nargs="+")
    p.add_argument("--n", type=int, default=20000, help="items per class (default 20000)")
    a = p.parse_args()
    for spec in a.runs:
        run, _, ckpt = spec.partition(":")
        module, _, path = load_module(run, ckpt or "best")
        g = torch.Generator().manual_seed(123)
        p0, w0 = errors(module, 0, a.n, g)
        p1, w1 = errors(module, 1, a.n, g)
        print(f"{run} ({path.name}): error on the target band {w0.float().mean():.4f}, "
              f"on distractors {w1.float().mean():.4f}")
        cells = [f"{lo:g}–{hi:g} ms: {w1[(p1 >= lo) & (p1 < hi)].float().mean():.3f}"
                 for lo, hi in zip(BINS[:-1], BINS[1:]) if ((p1 >= lo) & (p1 < hi)).any()]
        print("  distractor error by period:", "; ".join(cells))


if __name__ == "__main__":
    main()
