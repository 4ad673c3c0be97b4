"""Update counts, the closed-form skip length (Eq. 6) and the paper's FLOP accounting (§6)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .losses import _per_sequence
from .ops.cells import cell_spec
from .ops.naive import check_max_skip


def n_skip(delta, max_skip=None):
    """Steps skipped after an update whose gate produced Δũ = ``delta`` (paper Eq. 6).

    ``N_skip = min{n ∈ Z+ : n·Δũ ≥ 0.5} − 1 = ceil(0.5 / Δũ) − 1``. Works on floats and tensors.
    At exact ties (n·Δũ == 0.5, e.g. Δũ = 0.25) the layers skip one step more, because
    round(0.5) = 0 (round half to even, as TensorFlow in the paper's code).
    ``max_skip``: a layer's cap K (``SkipLSTM(max_skip=K)``): ``min(N_skip, K)``, the steps that
    layer skips after an update whose unfloored gate gave ``delta``.
    """
    max_skip = check_max_skip(max_skip)
    if isinstance(delta, Tensor):
        if bool(((delta <= 0) | (delta > 1)).any()):
            raise ValueError("delta must lie in (0, 1]")
        n = torch.ceil(0.5 / delta).to(torch.long) - 1
        return n if max_skip is None else n.clamp_max(max_skip)
    if not 0.0 < float(delta) <= 1.0:
        raise ValueError(f"delta must lie in (0, 1], got {delta!r}")
    n = math.ceil(0.5 / float(delta)) - 1
    return n if max_skip is None else min(n, max_skip)


def update_counts(updates: Tensor, lengths=None, batch_first: bool = False) -> Tensor:
    """Σ_t u_t for each sequence, ``(B,)`` (padding excluded)."""
    return _per_sequence(updates.detach(), lengths, batch_first)[0]


def update_fraction(updates: Tensor, lengths=None, batch_first: bool = False) -> Tensor:
    """Fraction of each sequence's valid steps that updated the state, ``(B,)``."""
    counts, lens = _per_sequence(updates.detach(), lengths, batch_first)
    return counts / lens


def flops_per_update(cell: str, input_size: int, hidden_size: int, num_layers: int = 1,
                     skip: bool = True, frame_flops: float = 0.0) -> float:
    """Multiply-accumulates of one state update (paper §6).

    LSTM: 4·(d_in + h)·h per layer; GRU: 3·(d_in + h)·h; a learned Skip gate adds h (the h → 1
    projection, on update steps only); ``frame_flops`` adds a per-frame encoder cost (video tasks,
    skipped frames need not be encoded).
    """
    gates = cell_spec(cell).gates  # ValueError for another cell
    total = 0
    for k in range(num_layers):
        d_in = input_size if k == 0 else hidden_size
        total += gates * (d_in + hidden_size) * hidden_size
    if skip:
        total += hidden_size
    return float(total + frame_flops)


def inference_flops(updates, cell: str, input_size: int, hidden_size: int, num_layers: int = 1,
                    skip: bool = True, frame_flops: float = 0.0) -> float:
    """Inference FLOPs per sequence = (number of updates) × (cost of one update), paper §6.

    ``updates`` is the mean number of state updates per sequence (a number), or a ``(T, B)``
    tensor of binary updates (its mean per-sequence count is used).
    """
    if isinstance(updates, Tensor):
        updates = float(update_counts(updates).mean())
    return float(updates) * flops_per_update(cell, input_size, hidden_size, num_layers, skip, frame_flops)
