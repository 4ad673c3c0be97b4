"""Argument checks shared by the layers, with nn.LSTM-style messages (expected vs got)."""

from __future__ import annotations

import torch
from torch import Tensor


def check_input(input: Tensor, input_size: int, batch_first: bool) -> tuple[Tensor, bool]:
    """Validate ``input`` and return it time-major ``(T, B, I)`` plus whether it was unbatched."""
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a torch.Tensor or PackedSequence, got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got dtype {input.dtype}")
    if input.dim() not in (2, 3):
        raise ValueError(
            f"input must be 2-D (T, {input_size}) unbatched or 3-D "
            f"{'(B, T, ' if batch_first else '(T, B, '}{input_size}), got {input.dim()}-D with "
            f"shape {tuple(input.shape)}")
    if input.shape[-1] != input_size:
        raise ValueError(
            f"input.size(-1) must be equal to input_size. Expected {input_size}, got {input.shape[-1]}")
    unbatched = input.dim() == 2
    if unbatched:
        input = input.unsqueeze(1)
    elif batch_first:
        input = input.transpose(0, 1)
    if input.shape[0] == 0:
        raise ValueError("input has no time steps (T = 0): expected at least one step")
    if input.shape[1] == 0:
        raise ValueError("input has an empty batch (B = 0): expected at least one sequence")
    return input, unbatched


def check_matches_weights(x: Tensor, weight: Tensor) -> Tensor:
    """The input must have the layer's dtype and device (as nn.LSTM requires). Under autocast an
    input in another float dtype (an autocast encoder's output) is cast to the layer's dtype:
    the recurrence runs in the parameters' precision. Returns the input to use."""
    if x.device != weight.device:
        raise ValueError(f"input is on {x.device} but the layer's parameters are on "
                         f"{weight.device}: move one of them (e.g. layer.to({str(x.device)!r}))")
    if x.dtype != weight.dtype:
        if torch.is_autocast_enabled(x.device.type):
            return x.to(weight.dtype)
        raise ValueError(f"input must have the layer's dtype {weight.dtype}, got {x.dtype}: cast "
                         f"the input (x.to({weight.dtype})) or the layer, or run under autocast")
    return x


def check_lengths(lengths, T: int, B: int, device) -> Tensor:
    """Validate ``lengths`` (B,) with 1 <= length <= T; return a (T, B) bool mask."""
    if isinstance(lengths, (list, tuple)):
        lengths = torch.as_tensor(lengths)
    if not isinstance(lengths, Tensor):
        raise TypeError(f"lengths must be a 1-D integer tensor or list, got {type(lengths).__name__}")
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must hold integers, got dtype {lengths.dtype}")
    if lengths.dim() != 1 or lengths.shape[0] != B:
        raise ValueError(f"lengths must have shape ({B},) (one per sequence), got {tuple(lengths.shape)}")
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 1 or hi > T:
        raise ValueError(f"lengths must lie in [1, {T}] (the padded length), got values in [{lo}, {hi}]")
    steps = torch.arange(T, device=lengths.device).unsqueeze(1)
    return (steps < lengths.unsqueeze(0)).to(device)


def check_state_tensor(name: str, t, expected: tuple, like: Tensor) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a tensor of shape {expected}, got {type(t).__name__}")
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"Expected {name} size {tuple(expected)}, got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {t.dtype}")
    if t.device != like.device:
        raise ValueError(f"{name} is on {t.device} but the input is on {like.device}")
    if t.dtype != like.dtype:
        if torch.is_autocast_enabled(like.device.type):
            return t.to(like.dtype)
        raise ValueError(f"{name} must have the input's dtype {like.dtype}, got {t.dtype}")
    return t
