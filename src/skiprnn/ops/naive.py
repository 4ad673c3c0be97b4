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

with Δũ_0 = 1 and cum_0 = 0, so the first step always updates.

A floor on reading (``max_skip=K``, off by default): Δũ_t = max(σ(W_p z_t + b_p), c), the
carried Δũ of a given state floored too; c and why it caps runs of skipped steps at K:
:func:`update_prob_floor`. ``z_t`` is the gate feature of the candidate state (the new
top-layer ``c`` for LSTM, ``h`` for GRU). The output at step t is one tensor of the gated state
(``state[out_index]``, the top-layer ``h``). Padded steps (``mask`` 0) are never updates and
leave every part of the state untouched.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .cells import cell_spec
from .contract import GateOptions, RecurrenceResult, check_cell
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


def check_max_skip(max_skip) -> int | None:
    """``max_skip``: None (no floor) or an int K ≥ 1, the most consecutive skipped steps."""
    if max_skip is None:
        return None
    if not isinstance(max_skip, int) or isinstance(max_skip, bool) or max_skip < 1:
        raise ValueError(f"max_skip must be None or an integer >= 1 (the most consecutive skipped "
                         f"steps), got {max_skip!r}")
    return max_skip


def check_cap_holds(max_skip, threshold=0.5, forced=None, constant_delta=None) -> None:
    """Refuse the gate settings under which ``max_skip`` could not cap runs of skipped steps: a
    threshold τ >= 1 (ũ <= 1 never passes it), per-step thresholds (Bernoulli sampling), forced
    gates or a constant Δũ (the random / periodic baselines, which have no learned gate)."""
    if max_skip is None:
        return
    if forced is not None or constant_delta is not None:
        raise ValueError("max_skip floors a learned update gate; the random / periodic baselines "
                         "(forced gates, constant Δũ) have none")
    if isinstance(threshold, Tensor):
        raise ValueError("max_skip needs a fixed threshold τ: with per-step thresholds (Bernoulli "
                         "sampling of the gate) ũ may stay under τ for any number of steps; use "
                         "binarizer='round'")
    if not float(threshold) < 1.0:
        raise ValueError(f"max_skip caps runs of skipped steps for a threshold τ < 1 (ũ never "
                         f"exceeds 1); got threshold={threshold!r}")


def update_prob_floor(max_skip, threshold: float = 0.5) -> float | None:
    """The least Δũ under ``max_skip=K`` at threshold τ: c = 2·max(τ, ½)/(2K+1) (None without a
    cap); 1/(2K+1) at the training threshold.

    After an update with Δũ = c the accumulator reads ũ = j·c, and K·c < m < (K+1)·c with
    m = max(τ, ½): for τ ≥ ½ exactly K skipped steps, the longest run any Δũ ≥ c gives (Eq. 6
    with Δũ = c); for τ < ½ (the gate held open, τ = 0) at most K. The floor depends on τ so
    that a capped model evaluated at another threshold (``skiprnn evaluate --threshold``) keeps
    its cap."""
    if check_max_skip(max_skip) is None:
        return None
    return 2.0 * max(float(threshold), 0.5) / (2 * max_skip + 1)


def floor_update_prob(delta, max_skip, threshold: float = 0.5):
    """Δũ floored at :func:`update_prob_floor` (``delta`` returned as is when ``max_skip`` is None).

    ``delta``: a tensor (any shape; the gradient flows only where ``delta`` > c, zero where the
    floor is active, ties included) or a NumPy scalar / array (the inference engines' replay,
    floored in its own dtype). The value is ``max(delta, c)`` with c in ``delta``'s dtype, so every
    backend floors to the same number.
    """
    c = update_prob_floor(max_skip, threshold)
    if c is None:
        return delta
    if isinstance(delta, Tensor):
        return torch.where(delta > c, delta, delta.new_tensor(c))
    dt = getattr(delta, "dtype", None)
    return np.maximum(delta, dt.type(c)) if dt is not None else max(delta, c)


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
    max_skip: int | None = None,
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
        max_skip: None, or K: at most K consecutive skipped steps (Δũ floored at 1/(2K+1), the
            carried ``update_prob0`` too; :func:`floor_update_prob`). Needs a float τ < 1.

    Returns:
        a :class:`~skiprnn.ops.contract.RecurrenceResult` whose ``state`` is the final tuple of
        ``step``'s state tensors; outputs, updates and update_probs are 0 on padded steps.
    """
    check_cap_holds(max_skip, threshold, forced)
    T = x.shape[0]
    state = tuple(state0)
    up, cum = floor_update_prob(update_prob0, max_skip, threshold), cum_prob0
    outs, us, probs = [], [], []
    for t in range(T):
        u_tilde = accumulate(up, cum)
        if forced is not None:
            u = torch.maximum(forced[t].to(u_tilde.dtype), (u_tilde >= 1).to(u_tilde.dtype))
        else:
            thr = threshold[t] if isinstance(threshold, Tensor) else threshold
            u = straight_through(hard_gate(u_tilde, thr), u_tilde)
        if mask is not None:
            m = mask[t].to(u.dtype)
            u = u * m
        cand, feat = step(x[t], state)
        new_state = mix_state(u, cand, state)
        delta = floor_update_prob(delta_fn(feat), max_skip, threshold)
        new_up = u * delta + (1 - u) * up
        new_cum = (1 - u) * u_tilde
        top = new_state[out_index]
        if mask is not None:
            new_up = m * new_up + (1 - m) * up
            new_cum = m * new_cum + (1 - m) * cum
            u_tilde = u_tilde * m
            top = top * _bcast(m, top)
        state, up, cum = new_state, new_up, new_cum
        outs.append(top)
        us.append(u)
        probs.append(u_tilde)
    return RecurrenceResult(torch.stack(outs), state, up, cum, torch.stack(us), torch.stack(probs))


def skip_rnn_naive(cell: str, x: Tensor, state: tuple, update_prob0: Tensor, cum_prob0: Tensor,
                   layers: Sequence[tuple], gate_weight: Tensor, gate_bias: Tensor,
                   opts: GateOptions = GateOptions()) -> RecurrenceResult:
    """The reference backend: a stack of ``cell`` layers (the step of
    :func:`skiprnn.ops.cells.cell_spec`, i.e. :meth:`~skiprnn.ops.cells.CellSpec.stack`) under one
    update gate, one step at a time over :func:`skip_loop`. Arguments and result:
    :mod:`skiprnn.ops.contract`.

    The candidate is computed bottom-up (layer k + 1 reads layer k's new ``h``, with
    ``opts.dropout`` between layers in training); one gate u_t, from the top layer's new ``c``
    (LSTM) or ``h`` (GRU), updates or copies every layer together (paper §1.1, §1.5).
    """
    check_cell(cell, state, opts)
    spec = cell_spec(cell, opts.reset_after)
    L, P = len(layers), len(state)
    between = (functools.partial(F.dropout, p=opts.dropout, training=True)
               if opts.dropout and opts.training else None)

    def step(x_t, flat):  # the state flat: part p of layer k at p·L + k
        new, feat = spec.stack(x_t, [flat[p * L:(p + 1) * L] for p in range(P)], layers, between)
        return tuple(t for part in new for t in part), feat

    check_cap_holds(opts.max_skip, opts.threshold, opts.forced, opts.constant_delta)
    if opts.constant_delta is not None:
        def delta_fn(feat):
            return feat.new_full((feat.shape[0],), opts.constant_delta)
    else:
        def delta_fn(feat):
            return torch.sigmoid(F.linear(feat, gate_weight, gate_bias)).squeeze(-1)
    state0 = tuple(t for s in state for t in s.unbind(0))
    res = skip_loop(step, x, state0, update_prob0, cum_prob0, delta_fn, out_index=L - 1,
                    mask=opts.mask, threshold=opts.threshold, forced=opts.forced,
                    max_skip=opts.max_skip)
    flat = res.state
    return res._replace(state=tuple(torch.stack(flat[p * L:(p + 1) * L]) for p in range(P)))
