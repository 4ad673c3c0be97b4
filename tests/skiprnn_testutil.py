"""Shared helpers for the tests."""

import math

import torch


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def set_constant_gate(layer, delta: float) -> None:
    """Make Δũ = ``delta`` at every update (update_gate weight 0, bias logit(delta))."""
    with torch.no_grad():
        layer.update_gate.weight.zero_()
        layer.update_gate.bias.fill_(logit(delta))


def open_gate(layer) -> None:
    """Force every step to update (Δũ ≈ 1)."""
    with torch.no_grad():
        layer.update_gate.weight.zero_()
        layer.update_gate.bias.fill_(30.0)
