"""The named results of the Skip RNN layers: the output record and the per-cell states.

They sit at the bottom of the package (no imports from it), so that the layers (``modules``) and
the inference front ends (``inference``) can both build them without importing each other.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

__all__ = ["SkipOutput", "SkipLSTMState", "SkipGRUState"]


class SkipOutput(NamedTuple):
    """What every layer of this package returns.

    output: ``(T, B, H)`` (``(B, T, H)`` with batch_first, ``(T, H)`` unbatched, or a
        PackedSequence for packed input): the top layer's h after each step (copied when skipped,
        0 on padding).
    state: everything needed to continue the sequence (pass it back as ``hx``).
    updates: ``(T, B)`` / ``(B, T)``: the binary u_t (float, carries the straight-through
        gradient); 0 on padding.
    update_probs: same shape: ũ_t, the probability the gate was rounded from; 0 on padding.
    """

    output: Tensor | PackedSequence
    state: tuple
    updates: Tensor
    update_probs: Tensor


class SkipLSTMState(NamedTuple):
    """Skip LSTM state: h, c ``(L, B, H)``; update_prob (the carried Δũ) and cum_update_prob
    (the ũ accumulator) ``(B,)``. A fresh sequence starts from update_prob=1, cum_update_prob=0."""

    h: Tensor
    c: Tensor
    update_prob: Tensor
    cum_update_prob: Tensor


class SkipGRUState(NamedTuple):
    """Skip GRU state: h ``(L, B, H)``; update_prob and cum_update_prob ``(B,)``."""

    h: Tensor
    update_prob: Tensor
    cum_update_prob: Tensor
