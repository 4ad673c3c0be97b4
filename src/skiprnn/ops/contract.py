"""The contract every recurrence backend shares: what goes in besides the tensors, what comes out.

Every backend (``reference``, ``cpu``, ``triton``, ``skipping``; see :mod:`skiprnn.ops.dispatch`)
is ONE function for both cells::

    fn(cell, x, state, update_prob0, cum_prob0, layers, gate_weight, gate_bias,
       opts=GateOptions()) -> RecurrenceResult

    cell:          'lstm' | 'gru'
    x:             (T, B, I), time-major
    state:         (h0,) for the GRU, (h0, c0) for the LSTM, each (L, B, H)
    update_prob0:  (B,) the carried Δũ (1 for a fresh start)
    cum_prob0:     (B,) the ũ accumulator (0 for a fresh start)
    layers:        L tuples (w_ih (G·H, I_l), w_hh (G·H, H), b_ih (G·H,) | None, b_hh | None),
                   nn.LSTM's / nn.GRU's layout (G = 4 / 3)
    gate_weight:   (1, H) and gate_bias (1,): Δũ = σ(W_p z + b_p) from the top layer's new c
                   (LSTM) or h (GRU); None with ``opts.constant_delta``

This module imports only :mod:`skiprnn.ops.cells` (the cell descriptions): it is the bottom layer.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from .cells import cell_spec

__all__ = ["GateOptions", "RecurrenceResult", "check_cell"]


class GateOptions(NamedTuple):
    """Everything a backend call takes besides the tensors of the recurrence, by name.

    mask: ``(T, B)`` 1 on valid steps, 0 on padding (None: all valid). Padded steps are never
        updates and leave the state untouched.
    threshold: τ, a float, or a ``(T, B)`` tensor (uniform noise: Bernoulli sampling of the gate).
    dropout, training: dropout on the candidate h fed between layers (as nn.LSTM's), in training.
    forced: ``(T, B)`` binary updates that replace the learned gate (random-skip baseline).
    constant_delta: Δũ held at this constant instead of the learned gate (periodic baseline).
    max_skip: None, or K: at most K consecutive skipped steps (a floor on Δũ,
        ``skiprnn.ops.naive.update_prob_floor``); needs a float τ < 1 and the learned gate.
    reset_after: GRU only: True is nn.GRU's candidate, False the paper code's (the reset gate
        acts before ``W_hn``). An LSTM call must leave it True.
    precision: Triton only: 'ieee' | 'tf32' | None (the default for the dtype); others ignore it.

    The fast paths refuse (``ValueError``) what they do not run: several layers, ``forced``,
    ``constant_delta``, per-step thresholds (Triton), ``max_skip`` (Triton).
    """

    mask: Tensor | None = None
    threshold: float | Tensor = 0.5
    dropout: float = 0.0
    training: bool = False
    forced: Tensor | None = None
    constant_delta: float | None = None
    max_skip: int | None = None
    reset_after: bool = True
    precision: str | None = None


class RecurrenceResult(NamedTuple):
    """What every backend returns, the same for both cells.

    output: ``(T, B, H)`` the top layer's h after each step (held while skipping, 0 on padding).
    state: the final state, ``(h_n,)`` (GRU) or ``(h_n, c_n)`` (LSTM), each ``(L, B, H)``.
    update_prob, cum_prob: ``(B,)`` the final carried Δũ and ũ accumulator.
    updates: ``(T, B)`` the binary u_t (straight-through gradient); 0 on padding.
    update_probs: ``(T, B)`` ũ_t; 0 on padding.
    """

    output: Tensor
    state: tuple
    update_prob: Tensor
    cum_prob: Tensor
    updates: Tensor
    update_probs: Tensor

    def tensors(self) -> tuple:
        """Every tensor, flat: ``(output, *state, update_prob, cum_prob, updates,
        update_probs)`` (e.g. for ``torch.autograd.grad``)."""
        return (self.output, *self.state, self.update_prob, self.cum_prob, self.updates,
                self.update_probs)


def check_cell(cell: str, state, opts: GateOptions) -> None:
    """Refuse a call whose ``cell``, ``state`` and options do not fit one another."""
    spec = cell_spec(cell)
    if not isinstance(opts, GateOptions):
        raise TypeError(f"opts must be a GateOptions, got {type(opts).__name__}")
    n = len(spec.state_names)
    if not isinstance(state, (tuple, list)) or len(state) != n:
        raise ValueError(f"state for cell {cell!r} must be a tuple "
                         f"{'(h0, c0)' if n == 2 else '(h0,)'}, got {type(state).__name__}"
                         + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else ""))
    cell_spec(cell, opts.reset_after)  # refuses reset_after=False with the LSTM


#: The custom ops' shared schema pieces (``skiprnn::cpu_rnn_*``, ``skiprnn::triton_rnn_*``): the
#: layer arguments every forward op takes first, and the 11 tensors each op returns (an absent
#: one is an empty ``(0,)`` tensor).
OP_LAYER_ARGS = ("str cell, Tensor x, Tensor h0, Tensor? c0, Tensor update_prob0, Tensor cum_prob0, "
                 "Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor gate_weight, "
                 "Tensor gate_bias, Tensor? mask, float threshold")
OP_OUTPUTS = "(" + ", ".join(["Tensor"] * 11) + ")"
