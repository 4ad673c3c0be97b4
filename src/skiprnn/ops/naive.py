"""The readable per-step definition of a Skip RNN (paper Eqs. 2-5, with the Fig. 1d trick).

This loop IS the definition: every fast path in ``skiprnn.ops`` is tested against it. It is
generic over the recurrent cell: the caller supplies ``step(x_t, state) -> (candidate_state,
output, gate_feature)`` and the loop does the gate, the state copy and the ũ accumulator.

Per step t (B rows, state tensors of shape (B, *)):

    ũ_t      = cum_{t-1} + min(Δũ_{t-1}, 1 - cum_{t-1})            # Eq. 5 in the code's form (*)
    u_t      = 1[ũ_t > τ_t]  with a straight-through gradient         # Eq. 2 (τ = 0.5: round)
    s_t      = u_t · S(s_{t-1}, x_t) + (1 - u_t) · s_{t-1}            # Eq. 3
    Δũ_t     = u_t · σ(W_p z_t + b_p) + (1 - u_t) · Δũ_{t-1}          # Eq. 4, carried while skipping
    cum_t    = (1 - u_t) · ũ_t

(*) at an exact tie the whole gradient of the min goes to Δũ, as TensorFlow's (``accumulate``).

with Δũ_0 = 1 and cum_0 = 0, so the first step always updates. ``z_t`` is the gate feature of the
candidate state (the new top-layer ``c`` for LSTM, ``h`` for GRU).  The output at step t is one
tensor of the gated state (``state[out_index]``, the top-layer ``h``). Padded steps (``mask`` 0) are
never updates and leave every part of the state untouched.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from .ste import hard_gate, straight_through

StepFn = Callable[[Tensor, tuple], tuple]  # (x_t, state) -> (candidate_state, gate_feature)


def _bcast(u: Tensor, like: Tensor) -> Tensor:
    """Reshape the per-row gate (B,) to broadcast against a state tensor (B, *)."""
    return u.view(u.shape[0], *([1] * (like.dim() - 1)))


def accumulate(update_prob: Tensor, cum: Tensor) -> Tensor:
    """ũ = cum + min(Δũ, 1 - cum) (Eq. 5 in the code's form), with TensorFlow's gradient of the min.

    At an exact tie (Δũ == 1 - cum: every fresh start, or Δũ saturated at 1.0 right after an
    update) ``tf.minimum`` sends the whole gradient to its first argument, Δũ, where
    ``torch.minimum`` would split it 50/50. The value is the same; every backend follows this rule
    (∂ũ/∂Δũ = ∂ũ/∂cum = 1 where Δũ <= 1 - cum, else 0).
    """
    room = 1 - cum
    return cum + torch.where(update_prob <= room, update_prob, room)


def mix_state(u: Tensor, new: Sequence[Tensor], old: Sequence[Tensor]) -> tuple:
    """Eq. 3 for every state tensor: u·new + (1-u)·old, an exact copy of ``old`` where u == 0."""
    out = []
    for n, o in zip(new, old):
        ub = _bcast(u, n)
        out.append(ub * n + (1 - ub) * o)
    return tuple(out)


def skip_loop(
    step: StepFn,
    x: Tensor,
    state0: tuple,
    update_prob0: Tensor,
    cum_prob0: Tensor,
    delta_fn: Callable[[Tensor], Tensor],
    out_index: int = 0,
    mask: Tensor | None = None,
    threshold: float | Tensor = 0.5,
    forced: Tensor | None = None,
):
    """Run a Skip RNN over time, one step at a time.

    Args:
        step: ``step(x_t (B, I), state) -> (candidate_state, gate_feature (B, F))``.
        x: ``(T, B, I)`` inputs, time-major.
        state0: tuple of ``(B, *)`` tensors, the state before step 1.
        update_prob0, cum_prob0: ``(B,)`` the carried Δũ and the accumulator (1 and 0 at the start).
        delta_fn: ``gate_feature (B, F) -> Δũ (B,)`` (``σ(W_p z + b_p)`` for a learned gate).
        out_index: which state tensor is the per-step output (``(B, H)``).
        mask: optional ``(T, B)``, 1 on valid steps and 0 on padding.
        threshold: τ, a float or a ``(T, B)`` tensor (uniform noise gives Bernoulli sampling).
        forced: optional ``(T, B)`` binary updates that replace the learned gate (baselines); the
            first step of a fresh sequence (ũ = 1) still updates.

    Returns:
        ``(outputs (T, B, H), state, update_prob (B,), cum_prob (B,), updates (T, B),
        update_probs (T, B))``; outputs, updates and update_probs are 0 on padded steps.
    """
    T = x.shape[0]
    state = tuple(state0)
    up, cum = update_prob0, cum_prob0
    outs, us, probs = [], [], []
    for t in range(T):
        u_tilde = accumulate(up, cum)
        if forced is not None:
            hard = torch.maximum(forced[t].to(u_tilde.dtype), (u_tilde >= 1).to(u_tilde.dtype))
            u = hard
        else:
            thr = threshold[t] if isinstance(threshold, Tensor) else threshold
            u = straight_through(hard_gate(u_tilde, thr), u_tilde)
        if mask is not None:
            m = mask[t].to(u.dtype)
            u = u * m
        cand, feat = step(x[t], state)
        new_state = mix_state(u, cand, state)
        delta = delta_fn(feat)
        new_up = u * delta + (1 - u) * up
        new_cum = (1 - u) * u_tilde
        if mask is not None:
            new_up = m * new_up + (1 - m) * up
            new_cum = m * new_cum + (1 - m) * cum
            u_tilde = u_tilde * m
        top = new_state[out_index]
        if mask is not None:
            top = top * _bcast(m, top)
        state, up, cum = new_state, new_up, new_cum
        outs.append(top)
        us.append(u)
        probs.append(u_tilde)
    return torch.stack(outs), state, up, cum, torch.stack(us), torch.stack(probs)
