"""Single-step Skip cells and a generic Skip RNN around any recurrent cell."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.cells import cell_spec
from ..ops.contract import GateOptions
from ..ops.naive import skip_loop, skip_rnn_naive
from ..ops.ste import bernoulli_thresholds, check_binarizer, check_threshold
from ._checks import check_input, check_lengths, check_matches_weights
from .rnn import (SkipGRUState, SkipLSTMState, SkipOutput, _GRUCandidate,
                  check_layer_max_skip, check_single_bias, paper_init_weights)


class SkipCellOutput(NamedTuple):
    """One step: output ``(B, H)``, state, update ``(B,)`` (binary, straight-through) and
    update_prob ``(B,)`` (ũ_t)."""

    output: Tensor
    state: tuple
    update: Tensor
    update_prob: Tensor


class _SkipCellBase(nn.Module):
    mode = "lstm"
    reset_after = True

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 binarizer: str = "round", threshold: float = 0.5, single_bias: bool = False,
                 max_skip: int | None = None, device=None, dtype=None):
        super().__init__()
        f = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        self.single_bias = check_single_bias(single_bias, bias)
        self.binarizer, self.threshold = check_binarizer(binarizer), check_threshold(threshold)
        self.max_skip = check_layer_max_skip(type(self).__name__, max_skip, binarizer,
                                             self.threshold)
        G = cell_spec(self.mode).gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(G, input_size, **f))
        self.weight_hh = nn.Parameter(torch.empty(G, hidden_size, **f))
        self.bias_ih = nn.Parameter(torch.empty(G, **f)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(G, **f)) if bias and not single_bias else None
        # single_bias: the step gets a constant zero b_hh (not a parameter, not in state_dict)
        self.register_buffer("_zero_bias", torch.zeros(G, **f) if single_bias else None,
                             persistent=False)
        self.update_gate = nn.Linear(hidden_size, 1, **f)
        self.reset_parameters()

    def reset_parameters(self):
        k = 1.0 / math.sqrt(self.hidden_size)
        for p in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh):
            if p is not None:
                nn.init.uniform_(p, -k, k)
        self.update_gate.reset_parameters()
        nn.init.constant_(self.update_gate.bias, 1.0)

    def paper_init_(self, joint: bool = False):
        """The paper code's initialisation, as the sequence layers' ``paper_init_``."""
        with torch.no_grad():
            paper_init_weights(self.mode, self.weight_ih, self.weight_hh, self.bias_ih,
                               self.bias_hh, joint=joint)
            nn.init.xavier_uniform_(self.update_gate.weight)
            self.update_gate.bias.fill_(1.0)
        return self

    def _layer(self):
        b_hh = self._zero_bias if self.single_bias else self.bias_hh
        return [(self.weight_ih, self.weight_hh, self.bias_ih, b_hh)]

    def _prep(self, input: Tensor):
        if not isinstance(input, Tensor) or not input.is_floating_point():
            raise TypeError(f"input must be a floating-point tensor, got {getattr(input, 'dtype', type(input))}")
        if input.dim() not in (1, 2) or input.shape[-1] != self.input_size:
            raise ValueError(f"input must have shape (B, {self.input_size}) or ({self.input_size},), "
                             f"got {tuple(input.shape)}")
        unbatched = input.dim() == 1
        input = check_matches_weights(input, self.weight_ih)
        return (input.unsqueeze(0) if unbatched else input), unbatched

    def _threshold(self, B, x):
        if self.binarizer == "bernoulli" and self.training:
            return bernoulli_thresholds((1, B), x)
        return self.threshold

    def forward(self, input: Tensor, state=None) -> SkipCellOutput:
        x, unb = self._prep(input)
        names = cell_spec(self.mode).state_names   # (h, c) / (h,)
        B, n = x.shape[0], len(names)
        if isinstance(state, Tensor):
            state = (state,)
        if state is not None and len(state) not in (n, n + 2):
            raise ValueError(f"state must hold {n} tensors ({', '.join(names)}) or {n + 2}"
                             f" (with update_prob, cum_update_prob), got {len(state)}")
        if state is None:
            state = tuple(x.new_zeros(B, self.hidden_size) for _ in range(n))
        elif unb:
            state = tuple(t.unsqueeze(0) for t in state)
        if len(state) == n:
            state = (*state, x.new_ones(B), x.new_zeros(B))
        *hs, up, cum = state
        res = skip_rnn_naive(self.mode, x[None], tuple(h[None] for h in hs), up, cum,
                             self._layer(), self.update_gate.weight, self.update_gate.bias,
                             GateOptions(threshold=self._threshold(B, x), max_skip=self.max_skip,
                                         reset_after=self.reset_after))
        # the step of a T = 1 result (without the batch axis if unbatched)
        b = (0,) if unb else ()
        st = (SkipLSTMState if self.mode == "lstm" else SkipGRUState)(
            *(s[(0, *b)] for s in res.state), res.update_prob[b], res.cum_prob[b])
        return SkipCellOutput(res.output[(0, *b)], st, res.updates[(0, *b)],
                              res.update_probs[(0, *b)])


class SkipLSTMCell(_SkipCellBase):
    """One Skip LSTM step (nn.LSTMCell parameters + ``update_gate``).

    ``forward(input (B, I), state=None) -> SkipCellOutput``; ``state`` is a SkipLSTMState with h,
    c of shape ``(B, H)`` and update_prob, cum_update_prob ``(B,)``, or nn.LSTMCell's ``(h, c)``.
    ``max_skip`` as :class:`SkipLSTM` (over a sequence of calls that carry the state).
    """


class SkipGRUCell(_GRUCandidate, _SkipCellBase):
    """One Skip GRU step (nn.GRUCell parameters + ``update_gate``); state is a SkipGRUState with
    h ``(B, H)`` or nn.GRUCell's ``h``. ``reset_after`` as :class:`SkipGRU`."""

    mode = "gru"


class SkipRNNState(NamedTuple):
    """State of a generic :class:`SkipRNN`: the wrapped cell's state (a tensor or tuple of
    ``(B, *)`` tensors), update_prob and cum_update_prob ``(B,)``."""

    cell_state: object
    update_prob: Tensor
    cum_update_prob: Tensor


class SkipRNN(nn.Module):
    """Skip RNN around any recurrent cell mapping ``(input (B, I), state) -> state``.

    Works with nn.RNNCell, nn.GRUCell, nn.LSTMCell or a custom cell. The state may be a tensor
    ``(B, H)`` or a tuple of ``(B, *)`` tensors.

    Args:
        cell: the recurrent cell.
        gate_size: size of the gate feature (default ``cell.hidden_size``).
        gate_index: which state tensor feeds Δũ (default -1: ``c`` for nn.LSTMCell, as the paper).
        output_index: which state tensor is the output (default 0: ``h``).
        batch_first, binarizer, threshold, max_skip: as :class:`SkipLSTM`.

    ``forward(input, hx=None, lengths=None) -> SkipOutput``; ``hx`` is the cell's state or a
    SkipRNNState; without ``hx`` the cell state starts at zeros (needs ``cell.hidden_size``;
    nn.LSTMCell gets ``(h, c)``).
    """

    def __init__(self, cell: nn.Module, gate_size: int | None = None, gate_index: int = -1,
                 output_index: int = 0, batch_first: bool = False, binarizer: str = "round",
                 threshold: float = 0.5, max_skip: int | None = None):
        super().__init__()
        if not callable(cell):
            raise TypeError(f"cell must be a callable nn.Module, got {type(cell).__name__}")
        self.cell = cell
        gate_size = gate_size if gate_size is not None else getattr(cell, "hidden_size", None)
        if gate_size is None:
            raise ValueError("gate_size is required when the cell has no hidden_size attribute")
        self.input_size = getattr(cell, "input_size", None)
        self.gate_index, self.output_index = gate_index, output_index
        self.batch_first = batch_first
        self.binarizer, self.threshold = check_binarizer(binarizer), check_threshold(threshold)
        self.max_skip = check_layer_max_skip(type(self).__name__, max_skip, binarizer,
                                             self.threshold)
        self.update_gate = nn.Linear(gate_size, 1)
        nn.init.constant_(self.update_gate.bias, 1.0)

    def _initial_cell_state(self, B, x):
        H = getattr(self.cell, "hidden_size", None)
        if H is None:
            raise ValueError("hx is required for a cell without a hidden_size attribute")
        z = x.new_zeros(B, H)
        return (z, z.clone()) if isinstance(self.cell, nn.LSTMCell) else z

    def forward(self, input: Tensor, hx=None, lengths=None) -> SkipOutput:
        if self.input_size is not None:
            x, unbatched = check_input(input, self.input_size, self.batch_first)
        else:
            if not isinstance(input, Tensor) or input.dim() != 3:
                raise ValueError(f"input must be a 3-D tensor, got {getattr(input, 'shape', type(input))}")
            x, unbatched = (input.transpose(0, 1) if self.batch_first else input), False
        T, B = x.shape[:2]
        mask = check_lengths(lengths, T, B, x.device) if lengths is not None else None
        if isinstance(hx, SkipRNNState):
            cs, up, cum = hx
        else:
            cs = hx if hx is not None else self._initial_cell_state(B, x)
            up, cum = x.new_ones(B), x.new_zeros(B)
        single = isinstance(cs, Tensor)
        state0 = (cs,) if single else tuple(cs)

        def step(x_t, state):
            new = self.cell(x_t, state[0] if single else tuple(state))
            new = (new,) if isinstance(new, Tensor) else tuple(new)
            return new, new[self.gate_index]

        def delta_fn(feat):
            return torch.sigmoid(F.linear(feat, self.update_gate.weight, self.update_gate.bias)).squeeze(-1)

        thr = (bernoulli_thresholds((T, B), x) if self.binarizer == "bernoulli" and self.training
               else self.threshold)
        res = skip_loop(step, x, state0, up, cum, delta_fn,
                        out_index=self.output_index % len(state0), mask=mask, threshold=thr,
                        max_skip=self.max_skip)
        out, u, p = res.output, res.updates, res.update_probs
        st = SkipRNNState(res.state[0] if single else res.state, res.update_prob, res.cum_prob)
        if unbatched:
            out, u, p = out.squeeze(1), u.squeeze(1), p.squeeze(1)
        elif self.batch_first:
            out, u, p = out.transpose(0, 1), u.transpose(0, 1), p.transpose(0, 1)
        return SkipOutput(out, st, u, p)
