"""The named results of the Skip RNN layers: the output record and the per-cell states.

They sit at the bottom of the package (no imports from it), so that the layers (``modules``) and
the inference front ends (``inference``) can both build them without importing each other.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

__all__ = ["SkipOutput", "SkipLSTMState", "SkipGRUState", "LSTMHidden", "nn_hidden"]


class LSTMHidden(tuple):
    """nn.LSTM's ``(h_n, c_n)`` pair, each ``(num_layers, B, H)``, that also carries the update
    gate's state, so that passing it back as ``hx`` continues the sequence exactly.

    It unpacks and indexes as a 2-tuple (``h_n, c_n = hidden``); ``update_prob`` (the carried
    Δũ) and ``cum_update_prob`` (the ũ accumulator), ``(B,)``, are attributes. A plain
    ``(h, c)`` tuple built from its tensors starts a fresh gate instead.
    """

    def __new__(cls, h: Tensor, c: Tensor, update_prob: Tensor, cum_update_prob: Tensor):
        self = super().__new__(cls, (h, c))
        self.update_prob, self.cum_update_prob = update_prob, cum_update_prob
        return self

    def __getnewargs__(self):           # pickle / copy: rebuild with the gate's state
        return (self[0], self[1], self.update_prob, self.cum_update_prob)

    def __repr__(self) -> str:
        return (f"LSTMHidden(h={self[0]!r}, c={self[1]!r}, update_prob={self.update_prob!r}, "
                f"cum_update_prob={self.cum_update_prob!r})")


def nn_hidden(state):
    """The nn.LSTM / nn.GRU-style second result of a layer for its full ``state``.

    Skip LSTM: an :class:`LSTMHidden` ``(h_n, c_n)``. Skip GRU: ``h_n`` as a tensor (a new view of
    the state's h) with the gate's state as the attributes ``update_prob`` and ``cum_update_prob``.
    Anything else (the plain baselines' nn-style states, :class:`SkipRNN`'s record) is returned as
    it is. Either form, passed back as ``hx``, continues the sequence exactly.
    """
    if isinstance(state, SkipLSTMState):
        return LSTMHidden(*state)
    if isinstance(state, SkipGRUState):
        h = state.h.view(state.h.shape)   # a new tensor object: the attributes stay off the inputs
        h.update_prob, h.cum_update_prob = state.update_prob, state.cum_update_prob
        return h
    return state


class SkipOutput(tuple):
    """What every layer of this package returns: ``(output, hidden)``, as nn.LSTM / nn.GRU, so
    ``out, (h_n, c_n) = skip_lstm(x)`` and ``out, h_n = skip_gru(x)`` work; the rest are attributes.

    output: ``(T, B, H)`` (``(B, T, H)`` with batch_first, ``(T, H)`` unbatched, or a
        PackedSequence for packed input): the top layer's h after each step (copied when skipped,
        0 on padding). Also ``result.output``.
    hidden (the second item): nn-style, see :func:`nn_hidden`: ``(h_n, c_n)`` for a Skip LSTM,
        ``h_n`` for a Skip GRU, each ``(num_layers, B, H)``, carrying the gate's state so that
        passing it back as ``hx`` continues the sequence exactly. Also ``result.hidden``.
    state: the full state as one record (:class:`SkipLSTMState` / :class:`SkipGRUState`): h, c,
        update_prob, cum_update_prob. Passing it back as ``hx`` continues exactly too.
    updates: ``(T, B)`` / ``(B, T)``: the binary u_t (float, carries the straight-through
        gradient); 0 on padding.
    update_probs: same shape: ũ_t, the probability the gate was rounded from; 0 on padding.
    """

    def __new__(cls, output: Tensor | PackedSequence, state, updates: Tensor,
                update_probs: Tensor):
        self = super().__new__(cls, (output, nn_hidden(state)))
        self.state, self.updates, self.update_probs = state, updates, update_probs
        return self

    @property
    def output(self) -> Tensor | PackedSequence:
        return self[0]

    @property
    def hidden(self):
        return self[1]

    def __getnewargs__(self):
        return (self[0], self.state, self.updates, self.update_probs)

    def __repr__(self) -> str:
        return (f"SkipOutput(output={self[0]!r}, state={self.state!r}, updates={self.updates!r}, "
                f"update_probs={self.update_probs!r})")


class SkipLSTMState(NamedTuple):
    """Skip LSTM state: h, c ``(L, B, H)``; update_prob (the carried Δũ) and cum_update_prob
    (the ũ accumulator) ``(B,)``. A fresh sequence starts from update_prob=1, cum_update_prob=0."""

    h: Tensor
    c: Tensor
    update_prob: Tensor
    cum_update_prob: Tensor


class SkipGRUState(NamedTuple):
    """Skip GRU state: h ``(L, B, H)``; update_prob and cum_update_prob ``(B,)``."""

    h: Tensor
    update_prob: Tensor
    cum_update_prob: Tensor


def _register_pytrees() -> None:
    """Let torch.export / torch.utils._pytree see through the records (their tensors are leaves):
    a SkipOutput flattens to (output, state, updates, update_probs), an LSTMHidden to its four
    tensors; both rebuild through their constructors (the GRU's hidden is a tensor already)."""
    import torch.utils._pytree as pytree

    pytree.register_pytree_node(
        SkipOutput, lambda r: ([r[0], r.state, r.updates, r.update_probs], None),
        lambda children, _: SkipOutput(*children),
        serialized_type_name="skiprnn.outputs.SkipOutput")
    pytree.register_pytree_node(
        LSTMHidden, lambda h: ([h[0], h[1], h.update_prob, h.cum_update_prob], None),
        lambda children, _: LSTMHidden(*children),
        serialized_type_name="skiprnn.outputs.LSTMHidden")


_register_pytrees()
