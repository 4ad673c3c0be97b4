"""Skip LSTM reference: a per-step loop over ``skiprnn.ops.naive.skip_loop`` (THE definition).

Gate layout and maths are nn.LSTM's (rows of ``weight_ih`` are [i, f, g, o]):

    i, f, g, o = x W_ih^T + b_ih + h W_hh^T + b_hh
    c' = σ(f) c + σ(i) tanh(g);   h' = σ(o) tanh(c')

The candidate is computed bottom-up through the stack (each layer feeds its candidate ``h'`` to
the next, with dropout between layers in training); one gate u_t, from the top layer's new ``c'``,
updates or copies every layer together (paper §1.1, §1.5).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..naive import skip_stack


def lstm_cell(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor,
              b_ih: Tensor | None, b_hh: Tensor | None) -> tuple[Tensor, Tensor]:
    """One nn.LSTM step: ``x (B, I), h (B, H), c (B, H) -> (h', c')``."""
    gates = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, dim=-1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    return h_new, c_new


def skip_lstm_naive(x: Tensor, h0: Tensor, c0: Tensor, update_prob0: Tensor, cum_prob0: Tensor,
                    layers: Sequence[tuple], gate_weight: Tensor, gate_bias: Tensor, *options,
                    **kw_options):
    """Skip LSTM over a whole sequence.

    Args:
        x: ``(T, B, I)``.
        h0, c0: ``(L, B, H)`` initial state.
        update_prob0, cum_prob0: ``(B,)`` carried Δũ and accumulator (1 and 0 for a fresh start).
        layers: L tuples ``(w_ih (4H, I_l), w_hh (4H, H), b_ih (4H,) | None, b_hh (4H,) | None)``.
        gate_weight: ``(1, H)`` and gate_bias ``(1,)``: Δũ = σ(c'_top · W_p^T + b_p).
        options, in this order (or by name): ``mask=None``: optional ``(T, B)`` valid-step mask;
        ``threshold=0.5``: τ (float or ``(T, B)``); ``dropout=0.0``, ``training=False``: dropout
        on the candidate ``h'`` fed between layers (as nn.LSTM); ``forced=None``: optional
        ``(T, B)`` binary updates (random-skip baseline); ``constant_delta=None``: Δũ held at this
        constant instead of the learned gate (periodic baseline); ``max_skip=None``: at most K
        consecutive skipped steps (``skiprnn.ops.naive``'s floor on Δũ; needs a float threshold
        < 1 and the learned gate). See :func:`skiprnn.ops.naive.skip_stack`.

    Returns:
        ``(output (T, B, H), h_n (L, B, H), c_n (L, B, H), update_prob (B,), cum_prob (B,),
        updates (T, B), update_probs (T, B))``.
    """
    return skip_stack(_lstm_layer, x, (h0, c0), update_prob0, cum_prob0, layers, gate_weight,
                      gate_bias, *options, feature=1, **kw_options)


def _lstm_layer(x, parts, w_ih, w_hh, b_ih, b_hh):
    return lstm_cell(x, parts[0], parts[1], w_ih, w_hh, b_ih, b_hh)
