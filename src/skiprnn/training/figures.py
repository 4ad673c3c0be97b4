"""``skiprnn plot RUN``: the paper-like figures of a run's task and its learning curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

__all__ = ["plot_run", "metrics_files"]


def metrics_files(run_dir) -> list[Path]:
    """CSVLogger files of a run in session order (csv/, csv_resume1/, csv_resume2/, ...).

    Sessions without a metrics.csv (a resume that trained no step) are skipped, not taken as the
    end of the list."""
    run_dir = Path(run_dir)
    numbered = ((d.name.removeprefix("csv_resume"), d) for d in run_dir.glob("csv_resume*"))
    resumes = sorted((int(n), d / "metrics.csv") for n, d in numbered
                     if n.isdecimal() and d.is_dir())
    files = [run_dir / "csv" / "metrics.csv"] + [f for _, f in resumes]
    return [f for f in files if f.is_file()]


def _merged_metrics(run_dir) -> dict:
    """``{metric: (steps, values)}`` over every session. A resumed session restarts from the last
    checkpoint, so it may log steps an earlier session had already logged: at such a step the
    later session's values replace the earlier ones."""
    from ..plots import read_metrics_csv
    merged: dict = {}
    for f in metrics_files(run_dir):
        for k, (xs, ys) in read_metrics_csv(f).items():
            xs, ys = list(xs), list(ys)
            new_steps = set(xs)
            ox, oy = merged.get(k, ([], []))
            keep = [(x, y) for x, y in zip(ox, oy) if x not in new_steps]
            pairs = sorted(keep + list(zip(xs, ys)), key=lambda p: p[0])   # stable: session order
            merged[k] = ([p[0] for p in pairs], [p[1] for p in pairs])
    return merged


#: y-axis labels of the learning curves
_YLABELS = {"train/loss_step": "training loss (task + budget)", "val/loss": "validation loss (task + budget)",
            "val/mse": "validation MSE", "val/accuracy": "validation accuracy",
            "val/update_fraction": "fraction of steps updated (validation)",
            "train/update_fraction_step": "fraction of steps updated (training)",
            "val/updates": "updates per sequence (validation)"}


def plot_run(run_dir, ckpt: str = "best", samples: int = 10, notes: Optional[list] = None) -> list[Path]:
    """Write RUN/figures/{samples,learning_curves,gate_dynamics}.png; returns the paths written
    (gate_dynamics: runs with a learned gate whose metrics hold the ``gate/*`` diagnostics).
    ``notes`` (a list) receives a sentence for each figure that was not drawn or shows no learned
    skipping."""
    from .. import plots
    from ..modules.registry import has_learned_gate
    from .fit import load_module

    notes = [] if notes is None else notes

    run_dir = Path(run_dir)
    fig_dir = run_dir / "figures"
    written = []
    module, cfg, _ = load_module(run_dir, ckpt)
    task = module.task
    ds = task.test_dataset()
    n = min(samples, len(ds))
    if task.name == "frequency":  # the test set is stratified by halves: take both classes
        idx = list(range(n // 2)) + list(range(len(ds) - (n - n // 2), len(ds)))
    else:
        idx = list(range(n))
    items = [ds[i] for i in idx]
    x = torch.stack([it[0] for it in items])
    y = torch.stack([torch.as_tensor(it[1]) for it in items])
    with torch.no_grad():
        _, out = module(x)
    u = out.updates
    if not has_learned_gate(cfg["model"]):
        how = ("every input is used" if cfg["model"] in ("lstm", "gru") else
               "the inputs it skips are drawn at random (p_skip)" if cfg["model"].startswith("random_")
               else "it updates on a fixed period")
        notes.append(f"samples.png: {cfg['model']} has no learned update gate, so {how}: the figure "
                     "shows no learned skipping")
    title_model = cfg["model"] + (f", λ={cfg['cost_per_sample']:g}" if cfg["model"].startswith("skip_") else "")
    if task.name == "adding":
        written.append(plots.plot_adding_samples(
            x, u, fig_dir / "samples.png", max_samples=n,
            title=f"Adding task, {title_model}: used (red) and skipped (blue) samples"))
    elif task.name == "frequency":
        written.append(plots.plot_frequency_samples(
            x[..., 0], u, fig_dir / "samples.png", labels=y.tolist(), max_samples=n,
            title=f"Frequency discrimination, {title_model}: used (red) / skipped (blue)"))
    elif task.name == "mnist":
        written.append(plots.plot_mnist_masks(
            x[..., 0].reshape(-1, 28, 28), u, fig_dir / "samples.png", labels=y.tolist(),
            max_samples=min(n, 8), title=f"Sequential MNIST, {title_model}: used (red) / skipped (blue)"))
    metrics = _merged_metrics(run_dir)
    m = task.metric_name
    held = f"val/{m}_held_open"     # a metric warm-up's release metric (the gate held open)
    keys = [k for k in ("train/loss_step", "val/loss", f"val/{m}", held, "val/update_fraction",
                        "train/update_fraction_step", "val/updates") if k in metrics]
    if keys:
        threshold = getattr(task, "solved_threshold", None)
        hlines = {f"val/{m}": (threshold, f"solved ({'≤' if not task.higher_is_better else '>'} "
                                          f"{threshold:.3g})")} if threshold is not None else {}
        if module.metric_warmup is not None:
            level = module.metric_warmup.level
            hlines[held] = (level, f"release level ({level:.3g})")
        ylabels = {**_YLABELS, held: f"validation {m}, gate held open (until the release)"}
        written.append(plots.plot_learning_curves(
            {k: metrics[k] for k in keys}, fig_dir / "learning_curves.png", keys=keys,
            ylabels=ylabels, hlines=hlines or None,
            title=f"{task.name} / {title_model} (seed {cfg.get('seed', 0)})"))
    else:
        notes.append(f"learning_curves.png: not drawn: no training or validation metrics were logged "
                     f"in {run_dir} (csv*/metrics.csv)")
    if any(k.startswith("gate/") for k in metrics):
        written.append(plots.plot_gate_dynamics(
            metrics, fig_dir / "gate_dynamics.png",
            title=f"{task.name} / {title_model} (seed {cfg.get('seed', 0)}): what decides the gate"))
    (fig_dir / "figures.json").write_text(json.dumps([str(p) for p in written], indent=2) + "\n")
    return written
