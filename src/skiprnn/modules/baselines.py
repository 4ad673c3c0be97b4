"""The paper's baselines behind the same output contract as the Skip layers.

- ``PlainLSTM`` / ``PlainGRU``: nn.LSTM / nn.GRU (cuDNN where available); ``updates`` all ones.
- ``RandomSkipLSTM`` / ``RandomSkipGRU``: skip each state update with probability ``p_skip``
  (u_t ~ Bernoulli(1 - p_skip)); the first step of a sequence still updates (paper §2).
- ``PeriodicSkipLSTM`` / ``PeriodicSkipGRU``: update every ``period`` steps (steps 1, 1+period, ...).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..ops import dispatch
from ..ops.contract import GateOptions
from ._checks import check_input, check_lengths
from .rnn import (_PARAM_NAMES, SkipOutput, _GRUCandidate, SkipRNNBase, check_single_bias,
                  paper_init_weights)


class _RandomSkip:
    gate_mode = "random"

    def __init__(self, *args, p_skip: float = 0.5, **kwargs):
        if not isinstance(p_skip, (int, float)) or isinstance(p_skip, bool) or not 0 <= p_skip < 1:
            raise ValueError(f"p_skip must be a probability in [0, 1), got {p_skip!r}")
        self.p_skip = float(p_skip)
        super().__init__(*args, **kwargs)

    def extra_repr(self):
        return super().extra_repr() + f", p_skip={self.p_skip}"


class _PeriodicSkip:
    gate_mode = "periodic"

    def __init__(self, *args, period: int = 2, **kwargs):
        if not isinstance(period, int) or isinstance(period, bool) or period < 1:
            raise ValueError(f"period must be a positive integer, got {period!r}")
        self.period = period
        super().__init__(*args, **kwargs)

    def extra_repr(self):
        return super().extra_repr() + f", period={self.period}"


class RandomSkipLSTM(_RandomSkip, SkipRNNBase):
    """LSTM that skips each update with probability ``p_skip`` (first step forced)."""

    mode = "lstm"


class RandomSkipGRU(_RandomSkip, _GRUCandidate, SkipRNNBase):
    """GRU that skips each update with probability ``p_skip`` (first step forced)."""

    mode = "gru"


class PeriodicSkipLSTM(_PeriodicSkip, SkipRNNBase):
    """LSTM that updates on steps 1, 1+period, 1+2·period, ... (chunked calls keep the phase)."""

    mode = "lstm"


class PeriodicSkipGRU(_PeriodicSkip, _GRUCandidate, SkipRNNBase):
    """GRU that updates on steps 1, 1+period, 1+2·period, ... (chunked calls keep the phase)."""

    mode = "gru"


class _Plain:
    """forward(input, hx=None, lengths=None) -> SkipOutput on top of nn.LSTM / nn.GRU.

    ``single_bias=True``: ``bias_hh_l{k}`` are zero and frozen (``requires_grad=False``), so only
    ``bias_ih_l{k}`` trains, one bias per gate as TF's cells (the layer still runs on cuDNN).
    """

    def __init__(self, *args, learn_init: bool = False, single_bias: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.learn_init = learn_init
        self.single_bias = check_single_bias(single_bias, self.bias)
        if single_bias:
            with torch.no_grad():
                for k in range(self.num_layers):
                    getattr(self, f"bias_hh_l{k}").zero_().requires_grad_(False)
        n, p = 2 if isinstance(self, nn.LSTM) else 1, next(self.parameters())
        self.register_parameter("init_state", nn.Parameter(torch.randn(
            n, self.num_layers, 1, self.hidden_size, device=p.device, dtype=p.dtype))
            if learn_init else None)

    def forward(self, input, hx=None, lengths=None) -> SkipOutput:  # noqa: D102 - see class doc
        packed = isinstance(input, PackedSequence)
        if packed and lengths is not None:
            raise ValueError("pass lengths only with a padded tensor, not with a PackedSequence")
        padded, lengths = pad_packed_sequence(input) if packed else (input, lengths)
        x, unbatched = check_input(padded, self.input_size, self.batch_first and not packed)
        T, B = x.shape[:2]
        mask = check_lengths(lengths, T, B, x.device) if lengths is not None else None
        if hx is None and self.init_state is not None:
            s = self.init_state.to(x.dtype).expand(-1, -1, B, -1).contiguous()
            hx = (s[0], s[1]) if isinstance(self, nn.LSTM) else s[0]
        elif hx is not None and unbatched:
            hx = tuple(h.unsqueeze(1) for h in hx) if isinstance(hx, tuple) else hx.unsqueeze(1)
        out, state = self._run(x, hx, lengths, mask)
        u = torch.ones(T, B, device=x.device, dtype=x.dtype) if mask is None else mask.to(x.dtype)
        if packed:
            out = input._replace(data=pack_padded_sequence(out, lengths.cpu(), enforce_sorted=False).data) \
                if input.sorted_indices is not None else pack_padded_sequence(out, lengths.cpu())
        elif unbatched:
            out, u = out.squeeze(1), u.squeeze(1)
            state = tuple(s.squeeze(1) for s in state) if isinstance(state, tuple) else state.squeeze(1)
        elif self.batch_first:
            out, u = out.transpose(0, 1), u.transpose(0, 1)
        return SkipOutput(out, state, u, u.clone())

    def _layers(self) -> list:
        """Per layer ``(w_ih, w_hh, b_ih, b_hh)``."""
        return [tuple(getattr(self, f"{n}_l{k}") for n in _PARAM_NAMES)
                for k in range(self.num_layers)]

    def paper_init_(self, joint: bool = False):
        """The paper code's initialisation of every layer (:func:`paper_init_weights`)."""
        with torch.no_grad():
            for layer in self._layers():
                paper_init_weights("lstm" if isinstance(self, nn.LSTM) else "gru", *layer,
                                   joint=joint)
        return self

    def _run(self, x, hx, lengths, mask):
        """nn.LSTM / nn.GRU on time-major ``x``; returns a time-major output (0 on padding)."""
        bf = self.batch_first
        inp = x.transpose(0, 1) if bf else x
        if mask is None:
            out, state = super().forward(inp, hx)
            return (out.transpose(0, 1) if bf else out), state
        pk = pack_padded_sequence(inp, torch.as_tensor(lengths).cpu(), batch_first=bf,
                                  enforce_sorted=False)
        out, state = super().forward(pk, hx)
        out, _ = pad_packed_sequence(out, total_length=x.shape[0])
        return out, state


class PlainLSTM(_Plain, nn.LSTM):
    """nn.LSTM (cuDNN on GPU) with the Skip layers' ``forward(input, hx, lengths) -> SkipOutput``.

    ``updates`` are all ones (0 on padding); ``state`` is nn.LSTM's ``(h_n, c_n)``.
    """


class PlainGRU(_GRUCandidate, _Plain, nn.GRU):
    """nn.GRU (cuDNN on GPU) with the Skip layers' output contract; ``state`` is ``h_n``.

    ``reset_after=False`` (the paper code's GRU candidate, see :class:`skiprnn.SkipGRU`) is not
    something nn.GRU (cuDNN) computes: it runs on the Skip GRU backends (``dispatch``: the CPU /
    Triton fast paths for one layer, else the reference loop) with the update gate held open
    (Δũ = σ(100) = 1.0 exactly, so every valid step updates). Same parameters as nn.GRU's.
    """

    def _run(self, x, hx, lengths, mask):
        if self.reset_after:
            return super()._run(x, hx, lengths, mask)
        B, H, L = x.shape[1], self.hidden_size, self.num_layers
        if hx is None:
            hx = x.new_zeros(L, B, H)
        layers = self._layers()
        dropout = self.training and self.dropout > 0 and L > 1
        _, fn = dispatch.select("gru", "auto", device_type=x.device.type, num_layers=L,
                                fast_ok=not dropout, grad=torch.is_grad_enabled(), skip_ok=True)
        res = fn("gru", x, (hx,), x.new_ones(B), x.new_zeros(B), layers, x.new_zeros(1, H),
                 x.new_full((1,), 100.0), GateOptions(mask=mask, dropout=self.dropout,
                                                      training=self.training, reset_after=False))
        return res.output, res.state[0]

    def extra_repr(self):
        return super().extra_repr() + ("" if self.reset_after else ", reset_after=False")
