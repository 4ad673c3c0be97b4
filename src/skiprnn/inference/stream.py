"""Streaming inference: one step at a time, knowing ahead how many inputs will not be read.

    stream = SkipStream(rnn, batch_size=1)        # or rnn.stream(batch_size=1)
    while True:
        n = stream.skips_ahead                   # the next n inputs will NOT be read ...
        stream.skip(n)                           # ... so don't even produce them
        out, u = stream.step(next_frame_features())

Results equal the whole-sequence forward (``rnn(x)``): same gates, same outputs up to float rounding.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..outputs import SkipOutput
from ..ops.contract import GateOptions
from ..ops.naive import check_cap_holds
from ..ops.skipping import StepCell, np_dtype, simulate_skips, skip_rnn_skipping
from ..ops.waves import gate_state

__all__ = ["SkipStream", "stream"]


def _gate_config(layer):
    """(threshold, constant Δũ) of a Skip layer at inference (learned gate or periodic baseline);
    refuses a threshold its ``max_skip`` cannot hold under."""
    mode = getattr(layer, "gate_mode", "learned")
    if mode == "learned":
        check_cap_holds(getattr(layer, "max_skip", None), float(layer.threshold))
        return float(layer.threshold), None
    if mode == "periodic":
        return 1.0 - 0.5 / layer.period, 1.0 / layer.period
    raise ValueError(f"streaming needs a deterministic gate; {type(layer).__name__} has gate_mode "
                     f"{mode!r} (random skipping has no skip-ahead)")


def _layer_state(layer, state, batch_size: int):
    """The layer's full state for ``batch_size`` streams: fresh when ``state`` is None, else
    ``state`` (any ``hx`` the layer takes) checked and completed by ``layer.parse_state``."""
    if state is None:
        return layer.initial_state(batch_size)
    p = next(layer.parameters())
    like = torch.empty(1, batch_size, 1, device=p.device, dtype=p.dtype)  # a time-major batch
    return layer.parse_state(state, batch_size, like, unbatched=False)


def _step_cell(layer, threshold: float, constant_delta) -> StepCell:
    """The :class:`~skiprnn.ops.skipping.StepCell` of ``layer`` (its parameters, read live)."""
    g = layer.update_gate
    return StepCell(layer.mode, layer.layer_weights(), None if g is None else g.weight,
                    None if g is None else g.bias, constant_delta, threshold=threshold,
                    **layer.cell_options())


class SkipStream:
    """Step-by-step inference over a Skip LSTM / Skip GRU layer whose skipped steps cost nothing.

    Args:
        layer: a ``SkipLSTM`` / ``SkipGRU`` (any number of layers; its parameters are read live).
        batch_size: number of independent streams processed together.
        state: optional state to continue from (a layer state, as ``output.state``); default fresh.

    Attributes / methods:
        ``step(x_t)``: one step. ``x_t`` is ``(B, I)`` (or ``(I,)`` when B = 1), or only the rows
            that read this step ``(len(reading_rows()), I)``, or None when no row reads. Returns
            ``(output, update)``: the top-layer h ``(B, H)`` and u_t ``(B,)`` (1-D input: ``(H,)``
            and a 0-d update).
        ``skip(n)``: advance over n steps whose inputs are not read (error if one would be).
        ``feed(chunk)``: a ``(T, B, I)`` chunk through the whole-sequence skipping forward;
            returns the layer's ``SkipOutput``.
        ``skips_ahead``: how many upcoming steps no row reads (``math.inf``: the gate never
            opens again).
        ``reading_rows()``: rows that read at the next step. ``state``: the layer state now.
        ``t``: steps consumed so far.
    """

    def __init__(self, layer, batch_size: int = 1, state=None):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.layer, self.kind, self.B = layer, layer.mode, batch_size
        self.threshold, self.constant_delta = _gate_config(layer)
        p = next(layer.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.npdt = np_dtype(p.dtype)
        if self.npdt is None:
            raise TypeError(f"streaming supports float32 / float64 layers, got {p.dtype}")
        state = _layer_state(layer, state, batch_size)
        with torch.no_grad():
            self.hs = [h.clone() for h in state[0].unbind(0)]
            self.cs = [c.clone() for c in state[1].unbind(0)] if self.kind == "lstm" else None
        self.up, self.cum = gate_state(state.update_prob, state.cum_update_prob, self.npdt,
                                       getattr(layer, "max_skip", None), self.threshold)
        self.t, self.last_update_prob = 0, None

    # ------------------------------------------------------------------ helpers
    def _cell(self) -> StepCell:
        # cached: StepCell holds detached views that share the parameters' storage, so in-place
        # updates (optimizer steps, load_state_dict) are seen; a replaced Parameter is re-read.
        params = tuple(p for lay in self.layer.layer_weights() for p in lay)
        if self.layer.update_gate is not None:
            params += tuple(self.layer.update_gate.parameters())
        key = tuple(id(p) for p in params)
        if getattr(self, "_cell_key", None) != key:
            self._cell_cache = _step_cell(self.layer, self.threshold, self.constant_delta)
            self._cell_key = key
        return self._cell_cache

    def _u_tilde(self):
        return self.cum + np.minimum(self.up, self.npdt(1) - self.cum)

    @property
    def state(self):
        hc = [torch.stack(s) for s in (self.hs, self.cs) if s is not None]
        gate = (torch.from_numpy(a.copy()).to(self.device, self.dtype) for a in (self.up, self.cum))
        return self.layer.state_type(*hc, *gate)

    def reading_rows(self) -> np.ndarray:
        """Indices of the rows that read their input at the next step."""
        return np.flatnonzero(self._u_tilde() > self.npdt(self.threshold))

    @property
    def skips_ahead(self):
        """Upcoming steps that no row reads (their inputs need not be produced)."""
        best = math.inf
        for up, cum in zip(self.up, self.cum):
            n, _, _ = simulate_skips(up, cum, self.threshold, limit=None if best == math.inf
                                     else int(best), dtype=self.npdt)
            best = min(best, n)
            if best == 0:
                break
        return best

    # ------------------------------------------------------------------ stepping
    def _output(self, one_d: bool):
        out = self.hs[-1].clone()
        return out[0] if one_d else out

    def step(self, x_t: Tensor | None):
        ut = self._u_tilde()
        u = ut > self.npdt(self.threshold)
        rows = np.flatnonzero(u)
        n = rows.size
        one_d = isinstance(x_t, Tensor) and x_t.dim() == 1
        if x_t is None:
            if n:
                raise ValueError(f"step(None) at step {self.t}: {n} row(s) read their input this "
                                 f"step (rows {rows.tolist()[:8]}); pass x_t")
        else:
            x_t = self._check_x(x_t, n)
        if n:
            with torch.no_grad():
                cell = self._cell()
                if x_t.shape[0] == self.B and n < self.B:
                    x_t = x_t.index_select(0, torch.from_numpy(rows).to(x_t.device))
                if n == self.B:
                    self.hs, self.cs, delta = cell(x_t, self.hs, self.cs)
                else:
                    r = torch.from_numpy(rows).to(self.device)
                    new_h, new_c, delta = cell(
                        x_t, [h.index_select(0, r) for h in self.hs],
                        [c.index_select(0, r) for c in self.cs] if self.cs is not None else None)
                    self.hs = [h.index_copy(0, r, nh) for h, nh in zip(self.hs, new_h)]
                    if self.cs is not None:
                        self.cs = [c.index_copy(0, r, nc) for c, nc in zip(self.cs, new_c)]
            self.up = self.up.copy()
            self.up[rows] = delta.cpu().numpy()
        self.cum = np.where(u, self.npdt(0), ut).astype(self.npdt)
        self.last_update_prob = torch.from_numpy(ut.copy()).to(self.device, self.dtype)
        self.t += 1
        upd = torch.from_numpy(u.astype(self.npdt)).to(self.device, self.dtype)
        return self._output(one_d), (upd[0] if one_d else upd)

    def _check_x(self, x_t, n_read: int) -> Tensor:
        I = self.layer.input_size
        if not isinstance(x_t, Tensor):
            raise TypeError(f"x_t must be a tensor of shape ({self.B}, {I}), got {type(x_t).__name__}")
        if x_t.dim() == 1:
            if self.B != 1:
                raise ValueError(f"x_t must have shape ({self.B}, {I}) for batch_size={self.B}, "
                                 f"got {tuple(x_t.shape)}")
            x_t = x_t.unsqueeze(0)
        if x_t.dim() != 2 or x_t.shape[1] != I or x_t.shape[0] not in (self.B, n_read):
            raise ValueError(f"x_t must have shape ({self.B}, {I}) (all rows) or ({n_read}, {I}) "
                             f"(the rows that read this step), got {tuple(x_t.shape)}")
        return x_t.to(self.device, self.dtype)

    def skip(self, n: int = 1):
        """Advance over ``n`` steps whose inputs are not read; returns the held output ``(B, H)``.
        The ũ of the skipped steps are left in ``last_skip_probs`` ``(n, B)``."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        thr = self.npdt(self.threshold)
        probs = []
        for _ in range(int(n)):
            ut = self._u_tilde()
            if (ut > thr).any():
                raise ValueError(f"skip: the input of step {self.t} is read (skips_ahead was "
                                 f"exceeded); call step(x_t)")
            self.cum = ut
            probs.append(ut)
            self.t += 1
        stacked = np.stack(probs) if probs else np.empty((0, self.B), self.npdt)
        self.last_skip_probs = torch.from_numpy(stacked).to(self.device, self.dtype)
        if probs:
            self.last_update_prob = self.last_skip_probs[-1]
        return self._output(False)

    def feed(self, chunk: Tensor):
        """Run a ``(T, B, I)`` chunk (``(T, I)`` when B = 1) with the whole-sequence skipping
        forward and continue from its final state; returns ``SkipOutput``."""
        if not isinstance(chunk, Tensor):
            raise TypeError(f"chunk must be a tensor (T, {self.B}, {self.layer.input_size})")
        one_d = chunk.dim() == 2 and self.B == 1
        x = chunk.unsqueeze(1) if one_d else chunk
        I = self.layer.input_size
        if x.dim() != 3 or x.shape[1] != self.B or x.shape[2] != I:
            raise ValueError(f"chunk must have shape (T, {self.B}, {I}), got {tuple(chunk.shape)}")
        x = x.to(self.device, self.dtype)
        st, cell = self.state, self._cell()
        res = skip_rnn_skipping(self.kind, x, tuple(st[:-2]), st.update_prob, st.cum_update_prob,
                                cell.layers, cell.gate_weight, cell.gate_bias,
                                GateOptions(threshold=self.threshold,
                                            constant_delta=self.constant_delta,
                                            **self.layer.cell_options()))
        out, u, p = res.output, res.updates, res.update_probs
        self.hs = list(res.state[0].unbind(0))
        self.cs = list(res.state[1].unbind(0)) if self.kind == "lstm" else None
        self.up, self.cum = gate_state(res.update_prob, res.cum_prob, self.npdt, None, 0.5)
        self.t += x.shape[0]
        self.last_update_prob = p[-1]
        if one_d:
            out, u, p = out[:, 0], u[:, 0], p[:, 0]
        return SkipOutput(out, self.state, u, p)


def stream(layer, batch_size: int = 1, state=None) -> SkipStream:
    """``layer.stream(batch_size)``: a :class:`SkipStream` over ``layer``."""
    return SkipStream(layer, batch_size, state)
