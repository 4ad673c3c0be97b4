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


def synchronise_gates(p: dict, T: int, block: int = 16):
    """Turn kernel-test parameters ``p`` (functional layout: ``gate_weight`` (1, H), ``gate_bias``,
    ``update_prob0``, ``cum_prob0`` of B rows) into a case where whole blocks of ``block`` rows skip
    together: Δũ = 0.4 everywhere (n_skip = 1); the first block starts fresh (updates on even
    steps), the other rows half-way (odd steps) and end three steps early. Returns the (T, B)
    mask. Used by the forward-only kernels' block-skip tests (a block whose rows all skip a step
    does no work on it)."""
    B = p["update_prob0"].shape[0]
    like = p["update_prob0"]
    with torch.no_grad():
        p["gate_weight"] = torch.zeros_like(p["gate_weight"])
        p["gate_bias"] = torch.full_like(p["gate_bias"], logit(0.4))
        p["update_prob0"] = torch.full_like(like, 0.4)
        p["update_prob0"][:block] = 1.0
        p["cum_prob0"] = torch.zeros_like(like)
    lengths = torch.full((B,), T)
    lengths[block:] = max(1, T - 3)
    lengths[1] = 2  # a short row inside the first block
    return (torch.arange(T)[:, None] < lengths[None, :]).to(like)


def blocks_skip_together(updates, block: int = 16) -> bool:
    """True when some step has a whole block of rows skipping while another row updates (the
    case the block skip exists for)."""
    u = updates.reshape(updates.shape[0], -1)
    B = u.shape[1]
    for t in range(u.shape[0]):
        for b0 in range(0, B, block):
            if u[t, b0:b0 + block].sum() == 0 and u[t].sum() > 0:
                return True
    return False
