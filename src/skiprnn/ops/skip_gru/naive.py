"""The GRU step of the Skip GRU reference (``skiprnn.ops.naive.skip_rnn_naive``, THE definition).

Gate layout and maths are nn.GRU's (rows of ``weight_ih`` are [r, z, n]):

    r = σ(x W_ir^T + b_ir + h W_hr^T + b_hr);   z = σ(... z rows ...)
    n = tanh(x W_in^T + b_in + r ⊙ (h W_hn^T + b_hn));   h' = (1 - z) ⊙ n + z ⊙ h

With ``reset_after=False`` (the paper code's GRU, TF's GRUCell) the reset gate acts before the
product: ``n = tanh(x W_in^T + b_in + (r ⊙ h) W_hn^T + b_hn)``, the same parameters.

One gate u_t, from the top layer's new ``h'``, updates or copies every layer together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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
