"""Binarizers for the state-update gate, with straight-through gradients (paper Eq. 2 and Eq. 7).

The forward value is exactly 0 or 1; the backward pass treats the binarizer as the identity
(∂u/∂ũ = 1), as the paper does by overriding the gradient of ``tf.round``.
"""

from __future__ import annotations

import torch
from torch import Tensor

BINARIZERS = ("round", "bernoulli")


def straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    """Return ``hard`` in the forward pass and the gradient of ``soft`` in the backward pass.

    ``hard + (soft - soft.detach())`` is exactly ``hard`` in floating point (``x - x == 0``), so a
    binary gate stays exactly 0 or 1 and skipped steps copy the state bit for bit.
    """
    return hard + (soft - soft.detach())


def check_binarizer(binarizer: str) -> str:
    if binarizer not in BINARIZERS:
        raise ValueError(f"binarizer must be one of {BINARIZERS}, got {binarizer!r}")
    return binarizer


def check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must lie in [0, 1), got {threshold}")
    return threshold


def hard_gate(u_tilde: Tensor, threshold: float | Tensor = 0.5) -> Tensor:
    """u = 1 where ũ > threshold, else 0 (same dtype as ``u_tilde``).

    With the default threshold 0.5 this equals ``torch.round(ũ)`` for ũ in [0, 1]: round half to
    even sends 0.5 to 0, exactly as TensorFlow's ``tf.round`` in the paper's code.
    """
    return (u_tilde > threshold).to(u_tilde.dtype)


def bernoulli_thresholds(shape, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Uniform(0, 1) thresholds: ``ũ > r`` with ``r ~ U(0, 1)`` is a Bernoulli(ũ) sample."""
    return torch.rand(shape, dtype=like.dtype, device=like.device, generator=generator)
