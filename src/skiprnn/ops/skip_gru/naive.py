"""Skip GRU reference: a per-step loop over ``skiprnn.ops.naive.skip_loop`` (THE definition).

Gate layout and maths are nn.GRU's (rows of ``weight_ih`` are [r, z, n]):

    r = σ(x W_ir^T + b_ir + h W_hr^T + b_hr);   z = σ(... z rows ...)
    n = tanh(x W_in^T + b_in + r ⊙ (h W_hn^T + b_hn));   h' = (1 - z) ⊙ n + z ⊙ h

With ``reset_after=False`` (the paper code's GRU, TF's GRUCell) the reset gate acts before the
product: ``n = tanh(x W_in^T + b_in + (r ⊙ h) W_hn^T + b_hn)``, the same parameters.

One gate u_t, from the top layer's new ``h'``, updates or copies every layer together.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..naive import skip_stack


def gru_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor,
             b_ih: Tensor | None, b_hh: Tensor | None, reset_after: bool = True) -> Tensor:
    """One GRU step: ``x (B, I), h (B, H) -> h'`` (nn.GRU's; ``reset_after=False``: the paper's)."""
    gi = F.linear(x, w_ih, b_ih)
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    if reset_after:
        gh = F.linear(h, w_hh, b_hh)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
    else:
        H2 = 2 * h.shape[-1]
        gh = F.linear(h, w_hh[:H2], None if b_hh is None else b_hh[:H2])
        h_r, h_z = gh.chunk(2, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    if reset_after:
        n = torch.tanh(i_n + r * h_n)
    else:
        n = torch.tanh(i_n + F.linear(r * h, w_hh[H2:], None if b_hh is None else b_hh[H2:]))
    return (1 - z) * n + z * h


def skip_gru_naive(x: Tensor, h0: Tensor, update_prob0: Tensor, cum_prob0: Tensor,
                   layers: Sequence[tuple], gate_weight: Tensor, gate_bias: Tensor, *options,
                   reset_after: bool = True, **kw_options):
    """Skip GRU over a whole sequence; arguments as ``skip_lstm_naive`` without ``c0``, plus
    ``reset_after`` (False: the paper's candidate, see :func:`gru_cell`).

    Returns ``(output (T, B, H), h_n (L, B, H), update_prob (B,), cum_prob (B,), updates (T, B),
    update_probs (T, B))``.
    """
    def layer(inp, parts, w_ih, w_hh, b_ih, b_hh):
        return (gru_cell(inp, parts[0], w_ih, w_hh, b_ih, b_hh, reset_after),)

    return skip_stack(layer, x, (h0,), update_prob0, cum_prob0, layers, gate_weight, gate_bias,
                      *options, feature=0, **kw_options)
