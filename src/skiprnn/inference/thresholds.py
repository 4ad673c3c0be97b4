"""Runtime threshold: trade accuracy for updates at inference without retraining.

u_t = 1[ũ_t > τ]; the paper's round() is τ = 0.5. Raising τ after training makes the gate open
later (fewer updates), lowering it opens it sooner. ``evaluate_thresholds`` sweeps τ on a trained
model and returns rows ready for ``skiprnn.plots.plot_tradeoff``.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from ..ops.ste import check_threshold

__all__ = ["evaluate_thresholds", "plot_thresholds", "skip_layers"]


def skip_layers(model: nn.Module) -> list:
    """The learned-gate Skip layers inside ``model`` (``model`` itself included)."""
    from ..modules.rnn import SkipRNNBase
    return [m for m in model.modules()
            if isinstance(m, SkipRNNBase) and getattr(m, "gate_mode", "learned") == "learned"]


def _default_forward(model, batch):
    return model(batch[0] if isinstance(batch, (tuple, list)) else batch)


def evaluate_thresholds(model: nn.Module, data: Iterable, thresholds: Sequence[float],
                        metric_fn: Callable, forward_fn: Callable | None = None,
                        layers: Sequence[nn.Module] | None = None) -> list[dict]:
    """Evaluate ``model`` at several thresholds τ of its Skip layers.

    Args:
        model: a trained model containing one or more SkipLSTM / SkipGRU layers (or a layer).
        data: an iterable of batches (re-iterated once per τ, e.g. a DataLoader or a list).
        thresholds: the τ values, each in [0, 1).
        metric_fn: ``metric_fn(model_output, batch) -> float``, the batch's mean metric.
        forward_fn: ``forward_fn(model, batch) -> model_output``; default ``model(batch[0])``
            (or ``model(batch)`` for a tensor batch).
        layers: the Skip layers whose τ is set (default: every learned-gate Skip layer in model).

    Returns:
        One dict per τ: ``threshold``, ``metric`` (batch-size-weighted mean), ``updates`` (mean
        Σ_t u_t per sequence), ``updates_fraction`` (updates / valid steps), ``label`` ("τ=…");
        they plot with ``skiprnn.plots.plot_tradeoff``. Updates are those of the first layer.
        The layers' τ and the model's training mode are restored afterwards.
    """
    layers = list(layers) if layers is not None else skip_layers(model)
    if not layers:
        raise ValueError("evaluate_thresholds: the model has no learned-gate Skip layer")
    forward_fn = forward_fn or _default_forward
    saved = [lay.threshold for lay in layers]
    was_training = model.training
    captured = []

    def hook(_mod, _inp, out):
        captured.append((out.updates.detach(), out.update_probs.detach(), _mod.batch_first))

    handle = layers[0].register_forward_hook(hook)
    rows = []
    try:
        model.eval()
        for tau in thresholds:
            tau = check_threshold(tau)
            for lay in layers:
                lay.threshold = tau
            m_sum = n_seq = upd = steps = 0.0
            with torch.no_grad():
                for batch in data:
                    captured.clear()
                    out = forward_fn(model, batch)
                    if not captured:
                        raise RuntimeError("evaluate_thresholds: the Skip layer was not called")
                    u, p, bf = captured[-1]
                    if u.dim() == 1:
                        u, p = u.unsqueeze(1), p.unsqueeze(1)
                    elif bf:
                        u, p = u.transpose(0, 1), p.transpose(0, 1)
                    B = u.shape[1]
                    m_sum += float(metric_fn(out, batch)) * B
                    n_seq += B
                    upd += float(u.sum())
                    steps += float((p > 0).sum())  # ũ is 0 exactly on padding
            if n_seq == 0:
                raise ValueError("evaluate_thresholds: data is empty")
            rows.append(dict(threshold=tau, metric=m_sum / n_seq, updates=upd / n_seq,
                             updates_fraction=upd / max(steps, 1.0), label=f"τ={tau:g}"))
    finally:
        handle.remove()
        for lay, tau in zip(layers, saved):
            lay.threshold = tau
        model.train(was_training)
    return rows


def plot_thresholds(rows: Sequence[dict], path, metric_name: str = "accuracy", group: str | None = None,
                    **kw):
    """Plot ``evaluate_thresholds`` rows (metric vs % of steps updated) through
    ``skiprnn.plots.plot_tradeoff``."""
    from ..plots import plot_tradeoff
    pts = [dict(r, group=group) if group else dict(r) for r in rows]
    kw.setdefault("title", "Runtime threshold τ")
    return plot_tradeoff(pts, path, metric_name, **kw)
