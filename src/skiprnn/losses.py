"""Losses that limit computation (paper §3.2, Eq. 8)."""

from __future__ import annotations

from torch import Tensor

from .modules._checks import check_lengths


def _per_sequence(updates: Tensor, lengths, batch_first: bool) -> tuple[Tensor, Tensor]:
    """Σ_t u_t per sequence ``(B,)`` (padding excluded) and each sequence's length ``(B,)``."""
    if not isinstance(updates, Tensor) or not updates.is_floating_point():
        raise TypeError(f"updates must be a floating-point tensor, got {getattr(updates, 'dtype', type(updates))}")
    if updates.dim() == 1:
        updates = updates.unsqueeze(1 if not batch_first else 0)
    if updates.dim() not in (2, 3):
        raise ValueError(f"updates must be (T, B) (or (B, T) with batch_first; a bidirectional "
                         f"layer's (T, B, 2)), got shape {tuple(updates.shape)}")
    u = updates.transpose(0, 1) if batch_first else updates  # (T, B) or (T, B, directions)
    n_dir = 1
    if u.dim() == 3:      # a bidirectional layer: both directions' updates count
        n_dir = u.shape[2]
        u = u.sum(2)
    T, B = u.shape
    if lengths is not None:
        mask = check_lengths(lengths, T, B, u.device).to(u.dtype)
        return (u * mask).sum(0), n_dir * mask.sum(0)
    return u.sum(0), u.new_full((B,), float(n_dir * T))


def budget_loss(updates: Tensor, cost_per_sample: float, lengths=None, batch_first: bool = False) -> Tensor:
    """λ · Σ_t u_t per sequence, averaged over the batch (paper Eq. 8; the code's form).

    Args:
        updates: ``(T, B)`` binary updates from a layer (``(B, T)`` with batch_first; a
            bidirectional layer's ``(T, B, 2)``, both directions counted); gradients reach the gate
            through the straight-through estimator.
        cost_per_sample: λ ≥ 0.
        lengths: optional ``(B,)``: padded steps are never counted.
    """
    if not isinstance(cost_per_sample, (int, float)) or cost_per_sample < 0:
        raise ValueError(f"cost_per_sample must be a number >= 0, got {cost_per_sample!r}")
    counts, _ = _per_sequence(updates, lengths, batch_first)
    return cost_per_sample * counts.mean()


def target_rate_loss(updates: Tensor, target_rate: float, lengths=None, kind: str = "l2",
                     weight: float = 1.0, batch_first: bool = False) -> Tensor:
    """Penalise the distance between each sequence's fraction of updates and ``target_rate``.

    The paper suggests (§3.2) an L1 or L2 loss towards a target number of updates; this is that
    loss on the fraction Σ_t u_t / length, so one target works for any length.

    Returns ``weight · mean_b |f_b − target|`` (kind='l1') or ``weight · mean_b (f_b − target)²``.
    """
    if not isinstance(target_rate, (int, float)) or not 0.0 <= target_rate <= 1.0:
        raise ValueError(f"target_rate must be a fraction in [0, 1], got {target_rate!r}")
    if kind not in ("l1", "l2"):
        raise ValueError(f"kind must be 'l1' or 'l2', got {kind!r}")
    if not isinstance(weight, (int, float)) or weight < 0:
        raise ValueError(f"weight must be a number >= 0, got {weight!r}")
    counts, lens = _per_sequence(updates, lengths, batch_first)
    diff = counts / lens - target_rate
    return weight * (diff.abs().mean() if kind == "l1" else diff.pow(2).mean())
