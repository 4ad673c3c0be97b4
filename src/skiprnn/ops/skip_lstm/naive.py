"""The LSTM step of the Skip LSTM reference (``skiprnn.ops.naive.skip_rnn_naive``, THE definition).

Gate layout and maths are nn.LSTM's (rows of ``weight_ih`` are [i, f, g, o]):

    i, f, g, o = x W_ih^T + b_ih + h W_hh^T + b_hh
    c' = σ(f) c + σ(i) tanh(g);   h' = σ(o) tanh(c')

The candidate is computed bottom-up through the stack (each layer feeds its candidate ``h'`` to
the next, with dropout between layers in training); one gate u_t, from the top layer's new ``c'``,
updates or copies every layer together (paper §1.1, §1.5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def lstm_cell(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor,
              b_ih: Tensor | None, b_hh: Tensor | None) -> tuple[Tensor, Tensor]:
    """One nn.LSTM step: ``x (B, I), h (B, H), c (B, H) -> (h', c')``."""
    gates = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, dim=-1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    return h_new, c_new
