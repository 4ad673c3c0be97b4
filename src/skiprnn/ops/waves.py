"""Skipping inference for batches: each row's updates are scheduled, and run in waves.

The rows of a batch are independent sequences, and a row's next update is known as soon as its
last one is done: between two updates ũ evolves from (Δũ, cum) alone (paper Eq. 6, see
``skiprnn.ops.skipping``). So instead of stepping through time and testing every row at every
step, the engine keeps, for each row, the step of its next update, and runs **wave k = the k-th
pending update of every row that has one**, whatever step each row is at. A wave is one matrix
product over all those rows (M = rows still updating, not the few rows that happen to update at
one step), and the state needs no gather or scatter between waves: it is kept compact, in the
order of the rows still updating, and shrinks (one gather) only when rows make their last update.

Per wave, on the host (NumPy, :class:`GateReplay`): the steps up to each row's next update,
replayed exactly (ũ of every step in between, the step where ũ crosses τ); on the device (torch,
:class:`_LstmWaves` / :class:`_GruWaves`): input rows gathered from ``x`` at each row's own step,
one GEMM per weight matrix, a handful of in-place pointwise ops, the new top ``h`` written into a
history buffer. The ``(T, B, H)`` output is one gather from that history at the end (a skipped
step's output is the row's last update's ``h``; a per-wave scatter into the large output cost
more than the GEMMs). With a constant gate, all rows from the same state update at the same
steps and a wave is exactly one step of the whole batch.

On the CPU with one layer, the rest of a sequence goes to the dense CPU path when the update
fraction so far is above a measured break-even (``DENSE_BREAK_EVEN``; decided every
``SWITCH_BLOCK`` steps, from counts only, so the same input always takes the same route).

A one-layer LSTM with a learned gate on the CPU runs the same waves in one call of the C kernels
(:func:`_fused_waves`, ``lstm_waves`` of :mod:`skiprnn.ops.cpu_kernels`): the GEMM through
torch's BLAS, the cell, Δũ and the replay per row in C (rows split over the threads), the output
filled at the end in time order from the history. In Python each wave cost ~150 µs of dispatch
and replay on top of its GEMM (``results/bench_cpu_b1_c_loop.md``).

Numerics: the binary gates and ũ are the reference's replayed bit for bit from the Δũ that the
engine computes (``StepCell.delta`` on its candidate state); candidate states are the reference's
up to float rounding (one GEMM on ``[x | h]`` instead of two, σ(a) as ½·tanh(½a) + ½ for the LSTM).
"""

from __future__ import annotations

import ctypes
import math

import numpy as np
import torch
from torch import Tensor

from .cpu_rnn import _Lease, pooled_output
from .contract import RecurrenceResult
from .naive import floor_update_prob, update_prob_floor

__all__ = ["GateReplay", "run_waves", "fused_lstm_kernels"]

# longest block of steps replayed at once by GateReplay (longer runs take several blocks)
REPLAY_BLOCK = 256

# Switching to the dense CPU path (``skiprnn.ops.cpu_rnn``, every step of every row) for the rest
# of a sequence: decided every SWITCH_BLOCK steps from the fraction of (valid) row-steps that were
# updates so far, against the break-even fraction of the cell and hidden size below (above it, the
# dense path is the faster one). Measured on one core, one torch thread, B = 256 / T = 784 /
# I = 1 / H = 110 and B = 64 / T = 300 / I = 64 / H = 512, a constant gate at 50 % and 100 %
# updates (waves engine vs dense path, same process; time of each interpolated linearly in the
# update fraction):
#   GRU   H = 110: 50 % 320 vs 391 ms, 100 % 609 vs 380 ms -> break-even ≈ 62 %
#   GRU   H = 512: 50 % 297 vs 504 ms, 100 % 524 vs 508 ms -> break-even ≈ 96 %
#   LSTM  both shapes: the dense path is slower even at 100 % updates (425 vs 535 ms; 628 vs
#         638 ms), so no switch (the CPU path's LSTM forward is 1.5-1.9x nn.LSTM, the GRU's
#         0.7-0.9x nn.GRU: results/bench_train_cpu_threads.md).
# An irregular (learned) gate costs the waves more than a constant one at the same fraction
# (more waves, fewer rows each), so these are on the side of staying with the waves.
SWITCH_BLOCK = 64
# (kind, largest hidden size of the class) -> break-even update fraction, first class that fits
DENSE_BREAK_EVEN = {"gru": ((256, 0.62), (None, 0.96)), "lstm": ()}


def gate_state(up0: Tensor, cum0: Tensor, npdt, max_skip, threshold: float):
    """NumPy copies ``(up, cum)`` of a carried Δũ and ũ accumulator (tensors), Δũ floored as the
    layer's (``skiprnn.ops.naive.floor_update_prob``)."""
    up = floor_update_prob(up0.detach().cpu().numpy().astype(npdt, copy=True), max_skip, threshold)
    return up, cum0.detach().cpu().numpy().astype(npdt, copy=True)


def valid_order(valid: np.ndarray | None, T: int, B: int):
    """``(n_valid (B,), times (T, B) | None)``: each row's number of valid steps, and its valid
    steps first in time order (``times[o, b]``: row b's o-th valid step; None: all valid)."""
    if valid is None:
        return np.full(B, T, np.int64), None
    times = np.argsort(~valid, axis=0, kind="stable")  # int64 and C-ordered: the C kernels read it
    return valid.sum(0).astype(np.int64), np.ascontiguousarray(times, np.int64)


def dense_break_even(kind: str, hidden_size: int) -> float | None:
    """The update fraction above which the dense CPU path is faster than the waves for this cell
    and hidden size (``DENSE_BREAK_EVEN``), or None: never."""
    for largest, frac in DENSE_BREAK_EVEN.get(kind, ()):
        if largest is None or hidden_size <= largest:
            return frac
    return None


class GateReplay:
    """The ũ recursion of every row between its updates, replayed on the host in blocks of steps.

    Steps are counted per row in *ordinals* of its valid (unmasked) steps: padding steps neither
    advance ũ nor update, so in ordinals every row's steps are contiguous. ``times[o, b]`` is the
    time step of row b's o-th valid step.

    ``probs``: the ``(T, B)`` ũ of every step (0 on padding), filled as rows are replayed.

    Args:
        T, B: sequence length and batch size.
        valid: ``(T, B)`` bool (NumPy) or None (every step valid).
        threshold: τ.
        npdt: the NumPy scalar type of the layer's dtype (the replay is in that precision).
    """

    def __init__(self, T: int, B: int, valid: np.ndarray | None, threshold: float, npdt):
        if valid is not None and valid.shape != (T, B):
            raise ValueError(f"valid must have shape {(T, B)}, got {valid.shape}")
        self.T, self.B, self.npdt = T, B, npdt
        self.one, self.thr = npdt(1), npdt(threshold)
        # (T + REPLAY_BLOCK, B): after_update writes whole blocks, past the end too
        self._probs = np.zeros((T + REPLAY_BLOCK, B), npdt)
        self.probs = self._probs[:T]
        self._cols = np.arange(B)
        self._steps = np.arange(REPLAY_BLOCK)[:, None]
        self.n_valid, self.times = valid_order(valid, T, B)
        self._memo: dict = {}

    def time_of(self, ordinal: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Time steps of valid-step ``ordinal`` (< ``n_valid[rows]``) of each of ``rows``."""
        return ordinal if self.times is None else self.times[ordinal, rows]

    def column(self, up, cum, limit: int):
        """ũ of the next steps of one row in gate state (``up``, ``cum``): a 1-D array that ends at
        the first step where ũ > τ (included), or after ``limit`` steps. Memoised (with a constant
        gate every wave asks for the same run)."""
        key = (up, cum)
        hit = self._memo.get(key)
        if hit is not None and (hit[1] or hit[0].size >= limit):
            return hit[0][:limit]
        self._col = []
        at, _ = self._replay(np.zeros(1, np.int64), np.array([limit]), np.array([up]),
                             np.array([cum]), rows=None)
        ut = np.concatenate(self._col) if self._col else np.zeros(0, self.npdt)
        if len(self._memo) > 4096:
            self._memo.clear()
        self._memo[key] = (ut, bool(at[0] < limit))
        return ut

    def next_update(self, rows: np.ndarray, start: np.ndarray, up: np.ndarray, cum: np.ndarray):
        """Replay ũ for ``rows`` from ordinal ``start`` (the first step not yet evaluated) with
        the carried Δũ ``up`` and accumulator ``cum`` (all ``(m,)``), up to each row's next update
        (ũ > τ) or its last valid step. Writes ``probs`` on every step replayed (the update's too).

        Returns ``(at, cum_end)``: the ordinal of each row's next update (``n_valid`` of the row
        when there is none: then ``cum_end`` is its accumulator after its last step).
        """
        n_valid = self.n_valid[rows]
        rem = n_valid - start
        u0, c0, s0 = up[0], cum[0], start[0]
        if (up == u0).all() and (cum == c0).all() and (start == s0).all():
            # one gate state for all rows (a constant gate): one memoised column
            ut = self.column(u0, c0, int(rem.max()))
            n = ut.size
            if self.times is None and n <= rem.min():  # same steps for every row
                self.probs[s0:s0 + n, rows if rows.size < self.B else slice(None)] = ut[:, None]
                crossed = n and ut[-1] > self.thr
                at = np.full(rows.size, s0 + n - 1, np.int64) if crossed else n_valid
                return at, np.full(rows.size, ut[-1] if n else c0, self.npdt)
            col = np.broadcast_to(ut[:, None], (n, rows.size))
            n_now = np.minimum(n, rem)
            self._write_probs(rows, start, col, n_now)
            last = np.where(n_now > 0, ut[np.maximum(n_now - 1, 0)], c0) if n else np.full(
                rows.size, c0, self.npdt)
            crossed = (n_now == n) & (n > 0) & (last > self.thr)
            return np.where(crossed, start + n_now - 1, n_valid), last
        ut = cum + np.minimum(up, self.one - cum)
        if (rem > 0).all() and (ut > self.thr).all():  # every row updates on its next step
            self._write_probs(rows, start, ut[None, :], np.ones(rows.size, np.int64))
            return start.astype(np.int64), np.zeros(rows.size, self.npdt)
        return self._replay(start, n_valid, up, cum, rows)

    def after_update(self, rows: np.ndarray, start: np.ndarray, up: np.ndarray):
        """:meth:`next_update` right after an update of every row (accumulator 0), in one block.

        With no padding and τ < 1, ũ_j of the steps after an update is the running float sum
        Δũ + Δũ + … (``np.add.accumulate``, the recursion's own adds) up to the first step where
        that sum exceeds τ, where ũ = ũ_{j-1} + min(Δũ, 1 - ũ_{j-1}) (the sum can only exceed
        1 - ũ_{j-1} at a step where it exceeds τ too). The block (long enough for the smallest
        Δũ, at most ``REPLAY_BLOCK`` steps) is written whole into ``probs`` for every row: the
        steps past a row's update hold scratch until that row is replayed from there (each
        row's replays cover its steps in order, each from where the last one's update was).
        Rows without a crossing in the block go on in :meth:`next_update`.

        Args:
            rows, start: ``(m,)`` rows and the step after each row's update.
            up: ``(m,)`` the Δũ of each row's update.

        Returns ``(at, cum_end)`` as :meth:`next_update`.
        """
        m = rows.shape[0]
        thr = self.thr
        if self.times is not None or not thr < self.one or m == 0:
            return self.next_update(rows, start, up, np.zeros(m, self.npdt))
        rem = self.T - start
        u_min = float(up.min())
        guess = float(thr) / u_min + 2.0 if u_min > 0 else math.inf
        L = int(max(1, min(int(rem.max()), REPLAY_BLOCK, guess)))
        acc = np.empty((L, m), self.npdt)
        acc[:] = up
        np.add.accumulate(acc, axis=0, out=acc)  # acc[j]: the sum at step start + j
        over = acc > thr
        first = over.argmax(0)
        cols = self._cols[:m]
        found = over[first, cols] & (first < rem)
        prev = acc[first - 1, cols]
        prev[first == 0] = 0
        # the crossing step's ũ; where there is none, first = 0 and this is Δũ = acc[0] again
        acc[first, cols] = prev + np.minimum(up, self.one - prev)
        self._probs[start + self._steps[:L], rows] = acc
        at = start + first
        if found.all():
            return at, np.zeros(m, self.npdt)
        cum_end = np.zeros(m, self.npdt)
        ended = ~found & (rem <= L)  # no update before the row's end: its accumulator there
        if ended.any():
            at[ended] = self.T
            cum_end[ended] = np.where(rem[ended] > 0, acc[rem[ended] - 1, cols[ended]], 0)
        more = ~found & ~ended  # no crossing within the block: replay on from its end
        if more.any():
            a, c = self._replay(start[more] + L, self.n_valid[rows[more]], up[more],
                                acc[L - 1, cols[more]], rows[more])
            at[more], cum_end[more] = a, c
        return at, cum_end

    def _replay(self, start, n_valid, up, cum, rows):
        """The block replay behind :meth:`next_update` (``rows`` None: one column, its ũ appended
        to the list ``self._col`` instead of written)."""
        one, thr, npdt = self.one, self.thr, self.npdt
        m = start.shape[0]
        at = np.empty(m, np.int64)
        cum_end = np.zeros(m, npdt)
        pos = np.arange(m)  # positions still searching
        o, c, u = start.astype(np.int64), cum.astype(npdt), up.astype(npdt)
        while pos.size:
            rem = n_valid[pos] - o
            out = rem <= 0
            if out.any():  # no steps left: no further update
                at[pos[out]] = n_valid[pos[out]]
                cum_end[pos[out]] = c[out]
                keep = ~out
                pos, o, c, u, rem = pos[keep], o[keep], c[keep], u[keep], rem[keep]
                if not pos.size:
                    break
            u_min = float(u.min())  # ≈ the longest run before ũ crosses τ: (τ - cum) / Δũ
            guess = (float(thr) - float(c.min())) / u_min if u_min > 0 else math.inf
            L = int(min(rem.max(), REPLAY_BLOCK, max(1.0, guess + 2.0)))
            # cum_j by sequential float adds of Δũ (what the recursion does while Δũ ≤ 1 - cum),
            # then ũ_j = cum_{j-1} + min(Δũ, 1 - cum_{j-1}) exactly; both agree up to the first
            # step where ũ crosses τ or 1 - cum < Δũ, and the replay stops there.
            acc = np.empty((L + 1, pos.size), npdt)
            acc[0] = c
            acc[1:] = u
            np.add.accumulate(acc, axis=0, out=acc)
            prev = acc[:-1]
            room = one - prev
            ut = prev + np.minimum(u, room)
            stop = (ut > thr) | (u > room)
            first = stop.argmax(0)
            cols = np.arange(pos.size)
            stopped = stop[first, cols]
            # steps replayed now: up to and including the stop, within the block and the row
            n_now = np.minimum(np.where(stopped, first + 1, L), rem)
            if rows is None:
                self._col.append(ut[:n_now[0], 0])
            else:
                self._write_probs(rows[pos], o, ut, n_now)
            last = ut[n_now - 1, cols]
            crossed = stopped & (first < n_now) & (last > thr)
            at[pos[crossed]] = o[crossed] + first[crossed]
            go = ~crossed  # no crossing yet: carry on from the last step replayed
            pos, o, c, u = pos[go], o[go] + n_now[go], last[go], u[go]
        return at, cum_end

    def _write_probs(self, rows, start, ut, n_now):
        """``probs`` of ``n_now[i]`` steps of ``rows[i]`` from ordinal ``start[i]``: ``ut[:, i]``."""
        if self.times is None and ut.shape[0] == 1:  # one step per row
            self.probs[start, rows] = ut[0]
            return
        j = np.arange(ut.shape[0])[:, None]
        sel = j < n_now[None, :]
        ordinal = (start[None, :] + j)[sel]
        cols = np.broadcast_to(rows[None, :], sel.shape)[sel]
        self.probs[self.time_of(ordinal, cols), cols] = ut[sel]


# ---------------------------------------------------------------------------------------------
# the candidate update of the rows still updating, on their compact state
# ---------------------------------------------------------------------------------------------
class _Waves:
    """Compact state of the rows still updating (in ``self.rows`` order) and the final state of
    the others. Subclasses implement ``input_buffer()`` (where the first layer's input rows go)
    and ``update(h_out) -> top h``; :meth:`step` adds the gate feature, the state tensor the
    cell's :class:`~skiprnn.ops.cells.CellSpec` names.

    Why the subclasses restate the cell maths of :mod:`skiprnn.ops.cells`: one GEMM per weight
    matrix on preallocated buffers and in-place pointwise ops over all rows of a wave (no
    temporaries, the LSTM's σ and tanh in one pass over its :meth:`~skiprnn.ops.cells.CellSpec.
    arrange` layout); gate order, sizes and the feature come from the description."""

    def __init__(self, cell, states, rows: np.ndarray, x: Tensor):
        self.spec, self.L, self.H = cell.spec, len(cell.layers), cell.layers[0][1].shape[1]
        self.dev, self.dt, self.I, self.rows = x.device, x.dtype, x.shape[2], rows
        # final state (L, B, H) per state tensor; rows that stop updating are written here
        self.final = [torch.stack(list(s)).clone() for s in states]

    def step(self, h_out: Tensor):
        """One update of every live row (inputs already in ``input_buffer()``); the top layer's
        new h goes to ``h_out`` ``(m, H)``. Returns ``(top h, gate feature)``, each ``(m, H)``."""
        h = self.update(h_out)
        return h, self.live_states()[self.spec.feature_index][-1]

    def index(self, a: np.ndarray) -> Tensor:
        """A NumPy index array as a tensor on the state's device."""
        return torch.from_numpy(a).to(self.dev)

    def compact_state(self, keep: np.ndarray) -> None:
        """Rows at positions ``~keep`` made their last update: save their state, drop them."""
        gone, kept = self.index(np.flatnonzero(~keep)), self.index(np.flatnonzero(keep))
        done_rows = self.index(self.rows[~keep])
        for fin, live in zip(self.final, self.live_states()):
            for k in range(self.L):
                fin[k].index_copy_(0, done_rows, live[k].index_select(0, gone))
        self.rows = self.rows[keep]
        self._select(kept)

    def finish(self) -> list:
        if self.rows.size:
            self.compact_state(np.zeros(self.rows.size, bool))
        return self.final


def _arranged_lstm_weight(spec, layer, H: int) -> Tensor:
    """``arrange([W_ih | W_hh | b])ᵀ`` ``(In + H + 1, 4H)`` of one LSTM layer ``(w_ih, w_hh,
    b_ih, b_hh)``: the weight of a wave's GEMM on ``[inp | h | 1]`` (see :class:`_LstmWaves`)."""
    w_ih, w_hh, b_ih, b_hh = layer   # (detached by StepCell; b: b_ih + b_hh, either may be None)
    bs = [b for b in (b_ih, b_hh) if b is not None]
    b = bs[0] + bs[1] if len(bs) == 2 else bs[0] if bs else w_ih.new_zeros(4 * H)
    return spec.arrange(torch.cat([w_ih, w_hh, b[:, None]], 1)).t().contiguous()


class _LstmWaves(_Waves):
    """LSTM stack. Per layer one GEMM ``[inp | h | 1] @ arrange([W_ih | W_hh | b])ᵀ`` (the bias as
    a column of ones: no separate pass to add it; rows (i, f, o, g), i, f, o halved), so that one
    in-place tanh over all gates gives tanh(½a) for i, f, o (σ = ½·tanh(½a) + ½) and tanh(a)
    for g."""

    def __init__(self, cell, states, rows, x):
        super().__init__(cell, states, rows, x)
        H = self.H
        self.w, self.S, self.C, self.n_in = [], [], [], []
        r = self.index(rows)
        for k, layer in enumerate(cell.layers):
            self.w.append(_arranged_lstm_weight(self.spec, layer, H))  # (In + H + 1, 4H)
            n_in = layer[0].shape[1]
            self.n_in.append(n_in)
            s = torch.empty(rows.size, n_in + H + 1, dtype=self.dt, device=self.dev)
            s[:, n_in:n_in + H] = self.final[0][k].index_select(0, r)
            s[:, -1] = 1
            self.S.append(s)
            self.C.append(self.final[1][k].index_select(0, r))
        self.gates, self.tmp = (torch.empty(rows.size, n, dtype=self.dt, device=self.dev)
                                for n in (4 * H, H))
        self.half = torch.tensor(0.5, dtype=self.dt, device=self.dev)

    def live_states(self):
        return ([s[:, n:-1] for s, n in zip(self.S, self.n_in)], self.C)

    def _select(self, kept: Tensor) -> None:
        self.S = [s.index_select(0, kept) for s in self.S]
        self.C = [c.index_select(0, kept) for c in self.C]
        m = kept.shape[0]
        self.gates, self.tmp = self.gates[:m], self.tmp[:m]

    def input_buffer(self) -> Tensor:
        """Where the first layer's input rows go (``(m, I)``, a view)."""
        return self.S[0][:, :self.I]

    def update(self, h_out: Tensor):
        """See :meth:`_Waves.step`; returns the top h."""
        H = self.H
        g = self.gates
        for k in range(self.L):
            s, c = self.S[k], self.C[k]
            torch.mm(s, self.w[k], out=g)
            g.tanh_()
            torch.add(self.half, g[:, :3 * H], alpha=0.5, out=g[:, :3 * H])  # σ, in one pass
            c.mul_(g[:, H:2 * H])
            c.addcmul_(g[:, :H], g[:, 3 * H:])
            h = self.tmp if k < self.L - 1 else h_out
            torch.tanh(c, out=h)
            h.mul_(g[:, 2 * H:3 * H])
            s[:, self.n_in[k]:-1].copy_(h)
            if k < self.L - 1:
                self.S[k + 1][:, :H].copy_(h)
        return h


class _GruWaves(_Waves):
    """GRU stack (nn.GRU's candidate, or the paper's with ``reset_after=False``): GEMMs on the
    input and on h, then in-place pointwise ops; h' = n + z·(h - n)."""

    def __init__(self, cell, states, rows, x):
        super().__init__(cell, states, rows, x)
        self.reset_after = cell.reset_after
        H = self.H
        r = self.index(rows)
        self.w_ih, self.w_hh, self.b_ih, self.b_hh, self.Hs = [], [], [], [], []
        for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(cell.layers):
            self.w_ih.append(w_ih.detach().t().contiguous())
            self.w_hh.append(w_hh.detach().t().contiguous())
            zero = w_ih.new_zeros(3 * H).detach()
            self.b_ih.append(zero if b_ih is None else b_ih.detach())
            self.b_hh.append(zero if b_hh is None else b_hh.detach())
            self.Hs.append(self.final[0][k].index_select(0, r))
        self.x_in, self.gi, self.gh = (torch.empty(rows.size, n, dtype=self.dt, device=self.dev)
                                       for n in (self.I, 3 * H, 3 * H))

    def live_states(self):
        return (self.Hs,)

    def _select(self, kept: Tensor) -> None:
        self.Hs = [h.index_select(0, kept) for h in self.Hs]
        m = kept.shape[0]
        self.x_in, self.gi, self.gh = self.x_in[:m], self.gi[:m], self.gh[:m]

    def input_buffer(self) -> Tensor:
        return self.x_in

    def update(self, h_out: Tensor):
        """See :meth:`_Waves.step`; returns the top h."""
        H = self.H
        gi, gh = self.gi, self.gh
        inp = self.x_in
        for k in range(self.L):
            h = self.Hs[k]
            torch.addmm(self.b_ih[k], inp, self.w_ih[k], out=gi)
            if self.reset_after:
                torch.addmm(self.b_hh[k], h, self.w_hh[k], out=gh)
                rz = gi[:, :2 * H].add_(gh[:, :2 * H]).sigmoid_()
                n = gh[:, 2 * H:].mul_(rz[:, :H])
            else:  # n = tanh(x W_in + b_in + (r ⊙ h) W_hn + b_hn)
                gh_rz = torch.addmm(self.b_hh[k][:2 * H], h, self.w_hh[k][:, :2 * H],
                                    out=gh[:, :2 * H])
                rz = gi[:, :2 * H].add_(gh_rz).sigmoid_()
                n = torch.addmm(self.b_hh[k][2 * H:], rz[:, :H] * h, self.w_hh[k][:, 2 * H:],
                                out=gh[:, 2 * H:])
            n.add_(gi[:, 2 * H:]).tanh_()
            h.sub_(n).mul_(rz[:, H:]).add_(n)
            inp = h
        h_out.copy_(self.Hs[-1])
        return self.Hs[-1]


def _fill_outputs(out: Tensor, hist: Tensor, written: np.ndarray, valid: np.ndarray | None,
                  start: int):
    """Outputs of steps ``start..T-1``, gathered from ``hist`` into ``out`` in blocks of steps.

    Args:
        out: ``(T·B, H)``, the output (row ``t·B + b``: step t of row b).
        hist: ``(B + 1 + n, H)``: rows 0..B-1 the top h each row carries into step ``start``,
            row B zeros (padding), then the top h of every update since.
        written: ``(T, B)``: 1 + the ``hist`` row of each update from ``start`` on, 0 where no
            update (entries before ``start`` are ignored).
        valid: ``(T, B)`` bool or None (every step valid).
        start: the first step whose outputs are not written yet.

    The output of a step is the h of its row's latest update so far (its own, if it updates),
    else the carried h; zeros on padding.
    """
    (T, B), H = written.shape, hist.shape[1]
    if start >= T:
        return
    src = np.maximum.accumulate(written[start:], axis=0) - 1
    src = np.where(src < 0, np.arange(B), src)
    if valid is not None:
        src = np.where(valid[start:], src, B)
    src_t = torch.from_numpy(src.reshape(-1)).to(out.device)
    block = max(1, FILL_BLOCK_BYTES // (B * H * out.element_size()))
    for s in range(0, T - start, block):
        e = min(T - start, s + block)
        torch.index_select(hist, 0, src_t[s * B:e * B], out=out[(start + s) * B:(start + e) * B])


# ---------------------------------------------------------------------------------------------
# bytes of output rows assembled per block at the end of run_waves
FILL_BLOCK_BYTES = 1 << 20


def _boundary_cum(replay: GateReplay, written: np.ndarray, valid: np.ndarray | None,
                  cum0: np.ndarray, t_b: int) -> np.ndarray:
    """``(B,)`` accumulator of every row after its last valid step before ``t_b`` (0 after an
    update, else that step's ũ; ``cum0`` for a row without a valid step yet)."""
    B = written.shape[1]
    if t_b == 0:
        return cum0.copy()
    if valid is None:
        last, has = np.full(B, t_b - 1), np.ones(B, bool)
    else:
        last, has = t_b - 1 - valid[:t_b][::-1].argmax(0), valid[:t_b].any(0)
    cols = np.arange(B)
    cum = np.where(written[last, cols] > 0, 0, replay.probs[last, cols]).astype(cum0.dtype)
    return np.where(has, cum, cum0)


def run_waves(cell, x: Tensor, hs: list, cs: list | None, up0: Tensor, cum0: Tensor,
              valid: np.ndarray | None, threshold: float, npdt, dense=None):
    """The batched skipping forward (any batch size, any device).

    Args:
        cell: the ``skiprnn.ops.skipping.StepCell`` (kind, layers, ``delta``).
        x: ``(T, B, I)``; hs / cs: per layer ``(B, H)`` states (cs None for the GRU).
        up0, cum0: ``(B,)`` carried Δũ and accumulator; valid: ``(T, B)`` bool or None.
        threshold: τ; npdt: NumPy scalar type of ``x.dtype``.
        dense: None, or the dense path to continue on,
            ``dense(x (T', B, I), state, up (B,), cum (B,), mask (T', B) | None) ->
            RecurrenceResult``: then the waves run in blocks of ``SWITCH_BLOCK`` steps
            (rows wait at the end of a block), and at the end of a block the rest of the sequence
            goes to ``dense`` when the update fraction so far is above
            ``dense_break_even(cell.kind, H)``.

    Returns a :class:`~skiprnn.ops.contract.RecurrenceResult` (state ``(h_n,)`` or
    ``(h_n, c_n)``, each ``(L, B, H)``). While the whole batch updates at the same steps (a
    constant gate from a fresh state) each wave writes its h straight into the output and over
    the skipped steps up to the next wave, instead of into the history.
    """
    if dense is None or dense_break_even(cell.kind, hs[0].shape[-1]) is None:  # no switch
        fused = _fused_waves(cell, x, hs, cs, up0, cum0, valid, threshold, npdt)
        if fused is not None:
            return fused
    run = _WaveRun(cell, x, hs, cs, up0, cum0, valid, threshold, npdt, dense)
    while run.rows.size or run.next_block():
        run.wave()
    return run.results()


def fused_lstm_kernels(cell, dtype: torch.dtype):
    """The C kernels (:mod:`skiprnn.ops.cpu_kernels`) of ``dtype`` where they run a skipping
    call of ``cell`` (a ``StepCell``): a one-layer LSTM with a learned gate, float32 / float64
    weights of that dtype, kernels built; else None. (CPU tensors: the caller's to check.)"""
    if not (cell.kind == "lstm" and len(cell.layers) == 1 and cell.constant_delta is None
            and cell.gate_bias is not None and dtype in (torch.float32, torch.float64)
            and all(t.dtype == dtype for t in (*cell.layers[0][:2], cell.gate_weight))):
        return None
    from . import cpu_kernels
    fns = cpu_kernels.load()
    return None if fns is None else fns[dtype]


def _fused_waves(cell, x: Tensor, hs: list, cs: list | None, up0: Tensor, cum0: Tensor,
                 valid: np.ndarray | None, threshold: float, npdt):
    """:func:`run_waves` in one call of the C kernels (see the module's docstring), or None where
    they do not run it: a one-layer LSTM with a learned gate, float32 / float64 CPU tensors,
    kernels built with torch's BLAS. The GEMM is :class:`_LstmWaves`' and the ũ replay the
    recursion itself; the cell's σ, tanh and Δũ are C's, so values equal its to rounding."""
    kernels = fused_lstm_kernels(cell, x.dtype) if x.device.type == "cpu" else None
    if kernels is None or kernels.gemm is None:
        return None
    from . import cpu_kernels
    T, B, I = x.shape
    H = cell.layers[0][1].shape[1]
    wt = _arranged_lstm_weight(cell.spec, cell.layers[0], H)
    x = x.contiguous()
    gw = cell.gate_weight[0].contiguous()
    h, c = hs[0].to(x.dtype).contiguous().clone(), cs[0].to(x.dtype).contiguous().clone()
    up, cum = gate_state(up0, cum0, npdt, cell.max_skip, cell.threshold)
    n_valid, times = valid_order(valid, T, B)
    out = pooled_output((T, B, H), x)
    probs, upd = np.zeros((T, B), npdt), np.zeros((T, B), npdt)
    src = np.zeros((T, B), np.int64)
    mask = None if valid is None else np.ascontiguousarray(valid, np.uint8)
    lease = _Lease(x)   # (pooled: a fresh history would be paged in at every call)
    hist = lease.new(B + 1 + int(n_valid.sum()), H)
    scratch_s, scratch_g = (torch.empty(B, n, dtype=x.dtype) for n in (I + H + 1, 4 * H))
    live, at = np.empty(B, np.int64), np.empty(B, np.int64)
    threads = torch.get_num_threads()
    cur = np.empty((threads, B), np.int64)
    floor = update_prob_floor(cell.max_skip, cell.threshold)
    ptr = (lambda a: a.ctypes.data)
    args = cpu_kernels.waves_args(x.dtype)(
        T=T, B=B, I=I, H=H, threads=threads, x=x.data_ptr(), Wt=wt.data_ptr(),
        gw=gw.data_ptr(), gb=float(npdt(cell.gate_bias.item())),
        times=None if times is None else ptr(times), n_valid=ptr(n_valid),
        valid=None if mask is None else ptr(mask), up=ptr(up), cum=ptr(cum), h=h.data_ptr(),
        c=c.data_ptr(), out=out.data_ptr(), probs=ptr(probs), upd=ptr(upd),
        hist=hist.data_ptr(), src=ptr(src), S=scratch_s.data_ptr(), G=scratch_g.data_ptr(),
        live=ptr(live), at=ptr(at), cur=ptr(cur), gemm=kernels.gemm,
        has_floor=floor is not None, thr=float(threshold),
        floor=0.0 if floor is None else float(floor), waves=0)
    kernels.waves(ctypes.byref(args))
    lease.release()
    as_t = torch.from_numpy
    return RecurrenceResult(out, (h[None], c[None]), as_t(up), as_t(cum), as_t(upd), as_t(probs))


class _WaveRun:
    """One call of :func:`run_waves`: the rows still to update (``rows``, ascending) and the
    replay position of their next update (``at``), the engine holding their states, the output
    and the compact history of updates. :meth:`wave` runs one wave (every row in ``rows`` at its
    next update); :meth:`next_block` starts the next block of steps or ends the waves."""

    def __init__(self, cell, x, hs, cs, up0, cum0, valid, threshold, npdt, dense):
        (T, B, _), H = x.shape, hs[0].shape[-1]
        self.cell, self.x, self.valid, self.npdt, self.dense = cell, x, valid, npdt, dense
        self.T, self.B, self.H = T, B, H
        self.replay = replay = GateReplay(T, B, valid, threshold, npdt)
        self.up, cum = gate_state(up0, cum0, npdt, cell.max_skip, cell.threshold)
        self.cum, self.cum_init = cum, cum.copy()
        rows = np.arange(B)
        self.frac = dense_break_even(cell.kind, H) if dense is not None else None
        self.block = SWITCH_BLOCK if self.frac is not None else T
        self.t_end = min(T, self.block)  # rows whose next update is at t_end or later wait
        self.waiting = []  # (rows, at) that wait for the next block
        self.switch_at = None  # the step the dense path starts at
        at, cum_end = replay.next_update(rows, np.zeros(B, np.int64), self.up, cum)
        live = at < replay.n_valid
        cum[~live] = cum_end[~live]
        cum[live] = 0
        self.rows, self.at = rows[live], at[live]
        self.engine = _LstmWaves if cell.kind == "lstm" else _GruWaves
        self.eng = self.engine(cell, (hs,) if cs is None else (hs, cs), self.rows, x)
        self.out = pooled_output((T * B, H), x)  # step t, row b: t·B + b
        # history (see _fill_outputs): carried h, a zero row, then one row per update (at most one
        # per valid step; untouched rows of the allocation are never paged in)
        # (CPU: a pooled buffer, kept for the next call: a fresh one is paged in at every call)
        self.lease = _Lease(x)
        self.hist = self.lease.new(B + 1 + int(replay.n_valid.sum()), H)
        self.hist[:B] = self.eng.final[0][-1]
        self.hist[B] = 0
        self.n_hist = B + 1
        self.written = np.zeros((T, B), np.int64)  # 1 + the hist row of an update, 0 where none
        self.x_rows = None
        # filled: every output up to the current step is written into `out` (a synced batch copies
        # h over its skipped steps at once); fill_from: the first step whose outputs are gathered
        self.filled = valid is None and self.rows.size == B and bool((self.at == self.at[0]).all())
        self.fill_from = 0
        if self.filled and self.at[0]:  # steps before the first update hold the initial h
            n = int(self.at[0])
            self.out[:n * B].view(n, B, H).copy_(self.hist[:B].expand(n, B, H))
        self._hold_for_next_block()

    def _hold_for_next_block(self) -> None:
        """With a dense switch: rows whose next update is past the block's end wait for it."""
        if self.frac is None or not self.rows.size:
            return
        wait = self.replay.time_of(self.at, self.rows) >= self.t_end
        if wait.any():
            self.waiting.append((self.rows[wait], self.at[wait]))
            self.eng.compact_state(~wait)
            self.rows, self.at = self.rows[~wait], self.at[~wait]

    def next_block(self) -> bool:
        """At the end of a block (no row left to update before ``t_end``): whether the waves go
        on (the waiting rows in the next block) or stop, at the end of the sequence or for the
        dense path (the update fraction so far above the break-even: ``switch_at``)."""
        while not self.rows.size:
            if not self.waiting:
                return False
            t_end, valid = self.t_end, self.valid
            n_upd = int((self.written[:t_end] > 0).sum())
            n_steps = t_end * self.B if valid is None else int(valid[:t_end].sum())
            if n_upd > self.frac * n_steps:
                self.switch_at = t_end
                return False
            rows = np.concatenate([r for r, _ in self.waiting])
            at = np.concatenate([a for _, a in self.waiting])
            order = np.argsort(rows)
            self.rows, self.at = rows[order], at[order]
            self.waiting = []
            self.eng = self.engine(self.cell, tuple(list(f.unbind(0)) for f in self.eng.final),
                                   self.rows, self.x)
            self.t_end = min(self.T, self.t_end + self.block)
            self._hold_for_next_block()
        return True

    def wave(self) -> None:
        """Every row of ``rows`` takes its next update: the cell step, Δũ, the output or history
        rows, the replay to each row's following update; rows done with the sequence leave."""
        rows, at, eng, x, B, H = self.rows, self.at, self.eng, self.x, self.B, self.H
        m = rows.size
        t = self.replay.time_of(at, rows)
        t0 = int(t[0])
        if self.filled:  # (then the wave is synced: rows only leave together)
            self.written[t0] = 1
            eng.input_buffer().copy_(x[t0])
            h, feat = eng.step(self.out[t0 * B:(t0 + 1) * B])
        else:
            self.written[t, rows] = np.arange(self.n_hist + 1, self.n_hist + 1 + m)
            if m == B and bool((t == t0).all()):  # the whole batch at one step: no gather
                eng.input_buffer().copy_(x[t0])
            else:
                if self.x_rows is None:
                    self.x_rows = x.reshape(self.T * B, -1)
                torch.index_select(self.x_rows, 0, eng.index(t * B + rows), out=eng.input_buffer())
            h, feat = eng.step(self.hist[self.n_hist:self.n_hist + m])
            self.n_hist += m
        delta = self.cell.delta(feat).cpu().numpy().astype(self.npdt)
        self.up[rows] = delta
        at, cum_end = self.replay.after_update(rows, at + 1, delta)
        if self.filled:
            if bool((at == at[0]).all()):  # the skipped steps up to the next update hold h
                n = int(at[0]) - t0 - 1
                self.out[(t0 + 1) * B:(t0 + 1 + n) * B].view(n, B, H).copy_(h.expand(n, B, H))
            else:  # rows part ways: from here on outputs are gathered from the history
                self.filled = False
                self.fill_from = t0 + 1
                self.hist[:B] = h
        live = at < self.replay.n_valid[rows]
        if not live.all():
            self.cum[rows[~live]] = cum_end[~live]
            eng.compact_state(live)
            rows, at = rows[live], at[live]
        self.rows, self.at = rows, at
        self._hold_for_next_block()

    def results(self) -> RecurrenceResult:
        """The outputs gathered, the final states; with a switch, the rest of the sequence on
        the dense path from the state at ``switch_at``."""
        T, B, H, valid, written = self.T, self.B, self.H, self.valid, self.written
        final = self.eng.finish()
        t_b = T if self.switch_at is None else self.switch_at
        if not self.filled:
            _fill_outputs(self.out[:t_b * B], self.hist, written[:t_b],
                          None if valid is None else valid[:t_b], self.fill_from)
        self.lease.release()
        updates, probs, up_n, cum_n = (torch.from_numpy(a).to(self.x.device, self.x.dtype)
                                       for a in (written > 0, self.replay.probs, self.up, self.cum))
        state = tuple(final)
        out = self.out
        if self.switch_at is not None:  # the rest of the sequence on the dense path
            cum_b = torch.from_numpy(_boundary_cum(self.replay, written, valid, self.cum_init,
                                                   t_b)).to(self.x.device, self.x.dtype)
            mask = None if valid is None else torch.from_numpy(valid[t_b:]).to(self.x.device)
            res = self.dense(self.x[t_b:], state, up_n, cum_b, mask)
            out[t_b * B:].copy_(res.output.reshape(-1, H))
            state, up_n, cum_n = res.state, res.update_prob, res.cum_prob
            updates[t_b:] = res.updates
            probs[t_b:] = res.update_probs
        return RecurrenceResult(out.view(T, B, H), state, up_n, cum_n, updates, probs)
