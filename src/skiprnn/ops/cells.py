"""One description per recurrent cell, which every backend reads instead of restating it.

A Skip RNN wraps an ordinary recurrent cell S(s, x) and copies its state while skipping (paper
§1). The cells have nn.LSTM's / nn.GRU's parameter layout: the rows of ``weight_ih`` (G·H, I) and
``weight_hh`` (G·H, H) are G blocks of H rows, one per gate, in :attr:`CellSpec.gate_order`.

=========  ============  =======  ==========  =====================================================
cell       gate order    state    Δũ reads    candidate (gi = x W_ihᵀ + b_ih, gh = h W_hhᵀ + b_hh)
=========  ============  =======  ==========  =====================================================
LSTM       i, f, g, o    (h, c)   the new c   c' = σ(f) c + σ(i) tanh(g);  h' = σ(o) tanh(c')
                                              (i, f, g, o: the blocks of gi + gh)
GRU        r, z, n       (h,)     the new h   r, z = σ(gi + gh) blocks;  n = tanh(gi_n + r ⊙ gh_n);
                                              h' = (1 - z) n + z h   (nn.GRU's, ``reset_after``)
GRU_PAPER  r, z, n       (h,)     the new h   as GRU, but n = tanh(gi_n + (r ⊙ h) W_hnᵀ + b_hn):
                                              the reset gate acts before the product (the paper
                                              code's / TF's GRUCell; the same parameters)
=========  ============  =======  ==========  =====================================================

:func:`lstm_candidate` and :func:`gru_candidate` are the candidate maths on pre-activations;
:meth:`CellSpec.step` (one layer) and :meth:`CellSpec.stack` (a stack, bottom-up) are THE
reference step the per-step loop (``skiprnn.ops.naive``) and the exportable step
(``skiprnn.inference.export``) run. Fast paths that need another arithmetic (in-place NumPy on
the host, fused GEMMs, pre-halved sigmoid rows) take the gate order, sizes and the feature from
here (:meth:`CellSpec.gate_rows`, :meth:`CellSpec.arrange`) and say why they restate it.

This module imports nothing from the package: it is the bottom layer, beside
:mod:`skiprnn.ops.contract`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CellSpec", "LSTM", "GRU", "GRU_PAPER", "cell_spec", "lstm_candidate",
           "gru_candidate"]


def lstm_candidate(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The LSTM candidate from its pre-activations: ``gates`` ``(B, 4H)`` = gi + gh (blocks i, f,
    g, o), ``c`` ``(B, H)`` -> ``(h', c')``, each ``(B, H)``."""
    i, f, g, o = gates.chunk(4, dim=-1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c_new), c_new


def gru_candidate(gi: Tensor, gh: Tensor, h: Tensor,
                  reset_hidden: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """The GRU candidate from its pre-activations -> h' ``(B, H)``.

    ``gi`` ``(B, 3H)`` = x W_ihᵀ + b_ih (blocks r, z, n); ``h`` ``(B, H)``. nn.GRU's cell
    (``reset_hidden`` None): ``gh`` ``(B, 3H)`` = h W_hhᵀ + b_hh, n = tanh(gi_n + r ⊙ gh_n). The
    paper's: ``gh`` the r, z blocks only ``(B, 2H)``, and ``reset_hidden(r ⊙ h)`` = (r ⊙ h) W_hnᵀ
    + b_hn ``(B, H)``, n = tanh(gi_n + reset_hidden(r ⊙ h)).
    """
    H = h.shape[-1]
    r = torch.sigmoid(gi[..., :H] + gh[..., :H])
    z = torch.sigmoid(gi[..., H:2 * H] + gh[..., H:2 * H])
    hn = r * gh[..., 2 * H:] if reset_hidden is None else reset_hidden(r * h)
    n = torch.tanh(gi[..., 2 * H:] + hn)
    return (1 - z) * n + z * h


class CellSpec(NamedTuple):
    """A cell: its gates, state and the state feature the update gate reads (module docstring).

    kind: the backends' ``cell`` argument, ``'lstm'`` | ``'gru'``.
    reset_after: GRU only: True is nn.GRU's candidate, False the paper's (:data:`GRU_PAPER`).
    gate_order: the gate of each block of H rows of ``weight_ih`` / ``weight_hh``.
    sigmoid_gates: the gates under a σ (the others under a tanh).
    state_names: the state tensors, in the backends' order: ``('h', 'c')`` / ``('h',)``.
    feature: the state tensor of the top layer's candidate that Δũ = σ(W_p · + b_p) reads.
    """

    kind: str
    reset_after: bool
    gate_order: tuple
    sigmoid_gates: tuple
    state_names: tuple
    feature: str

    @property
    def gates(self) -> int:
        """G: gate blocks per weight matrix (rows = G·H)."""
        return len(self.gate_order)

    @property
    def feature_index(self) -> int:
        """Index of :attr:`feature` in :attr:`state_names`."""
        return self.state_names.index(self.feature)

    def gate_rows(self, gate: str, hidden_size: int) -> slice:
        """The rows of ``gate`` in ``weight_ih`` / ``weight_hh`` / the biases (a block of H)."""
        k = self.gate_order.index(gate)
        return slice(k * hidden_size, (k + 1) * hidden_size)

    def arrange(self, w: Tensor) -> Tensor:
        """``w`` ``(G·H, ...)`` (a weight, a bias, or weights and bias side by side) with its gate
        blocks the σ gates first (LSTM i, f, o, g; GRU r, z, n) and the σ gates' rows scaled by
        ½ (exact in binary floating point): one ``tanh`` over the product's rows then gives
        tanh(a/2) for every σ gate, σ(a) = ½·tanh(a/2) + ½, and tanh(a) for the others. The
        layout of the fast paths that apply one tanh to all gates
        (``skiprnn.ops.skipping.NumpyStack``, ``skiprnn.ops.waves``)."""
        H, sig = w.shape[0] // self.gates, self.sigmoid_gates
        order = sig + tuple(g for g in self.gate_order if g not in sig)
        return torch.cat([w[self.gate_rows(g, H)] * 0.5 if g in sig else w[self.gate_rows(g, H)]
                          for g in order])

    def step(self, x: Tensor, state: Sequence[Tensor], w_ih: Tensor, w_hh: Tensor,
             b_ih: Tensor | None, b_hh: Tensor | None) -> tuple:
        """One layer's candidate: ``x (B, I)``, ``state`` per :attr:`state_names` ``(B, H)`` ->
        the new state tuple (LSTM ``(h', c')``, GRU ``(h',)``)."""
        gi = F.linear(x, w_ih, b_ih)
        h = state[0]
        if self.kind == "lstm":
            return lstm_candidate(gi + F.linear(h, w_hh, b_hh), state[1])
        if self.reset_after:
            return (gru_candidate(gi, F.linear(h, w_hh, b_hh), h),)
        H2 = 2 * h.shape[-1]
        gh = F.linear(h, w_hh[:H2], None if b_hh is None else b_hh[:H2])
        return (gru_candidate(gi, gh, h, lambda rh: F.linear(
            rh, w_hh[H2:], None if b_hh is None else b_hh[H2:])),)

    def stack(self, x: Tensor, state: Sequence, layers: Sequence[tuple],
              between: Callable[[Tensor], Tensor] | None = None, step: Callable | None = None):
        """The candidate of a stack of layers, bottom-up (layer k + 1 reads layer k's new h).

        Args:
            x: ``(B, I)`` the first layer's input.
            state: per :attr:`state_names` an ``(L, B, H)`` tensor or a sequence of L ``(B, H)``.
            layers: L tuples ``(w_ih, w_hh, b_ih, b_hh)``.
            between: applied to a layer's new h before the next layer reads it (dropout).
            step: the one-layer step, :meth:`step`'s signature (default :meth:`step`).

        Returns ``(new_state, feature)``: per state name a list of L ``(B, H)`` tensors, and the
        top layer's new :attr:`feature` ``(B, H)``.
        """
        step = self.step if step is None else step
        new = tuple([] for _ in self.state_names)
        inp, top = x, len(layers) - 1
        for k, weights in enumerate(layers):
            parts = step(inp, tuple(s[k] for s in state), *weights)
            for acc, p in zip(new, parts):
                acc.append(p)
            inp = parts[0] if between is None or k == top else between(parts[0])
        return new, new[self.feature_index][-1]


LSTM = CellSpec("lstm", True, ("i", "f", "g", "o"), ("i", "f", "o"), ("h", "c"), "c")
GRU = CellSpec("gru", True, ("r", "z", "n"), ("r", "z"), ("h",), "h")
GRU_PAPER = GRU._replace(reset_after=False)


def cell_spec(cell: str, reset_after: bool = True) -> CellSpec:
    """The description of ``cell`` (``'lstm'`` | ``'gru'``; ``reset_after=False``: the paper's
    GRU); ``ValueError`` for another cell, or ``reset_after=False`` with the LSTM."""
    if cell == "lstm":
        if not reset_after:
            raise ValueError("reset_after=False applies to the GRU only, got cell='lstm'")
        return LSTM
    if cell == "gru":
        return GRU if reset_after else GRU_PAPER
    raise ValueError(f"cell must be one of ('lstm', 'gru'), got {cell!r}")
