"""Skipping inference: skipped steps do no work (paper Eq. 6, Fig. 1d, §7).

Between two updates the ũ accumulator evolves without looking at the input or the state::

    ũ_t = cum_{t-1} + min(Δũ, 1 - cum_{t-1});   u_t = 1[ũ_t > τ];   cum_t = (1 - u_t)·ũ_t

so right after an update we know how many of the next inputs will be read, and skipped steps are
pure bookkeeping: the state is carried forward, the output of a skipped step is the held ``h``, and
the input of a skipped step is never touched (not projected, not even needed: see
``skiprnn.inference.stream``). The gate bookkeeping is replayed as scalar (or per-row) arithmetic in
the tensor's own dtype, one operation at a time in the same order as the reference loop, so the
binary gates and ũ are **bitwise** those of ``skiprnn.ops.naive.skip_loop``; outputs and states are
the reference's up to float rounding of the matrix products (bit-for-bit on CPU at batch size 1 for
the LSTM, which uses ``torch.lstm_cell``).

:func:`skip_rnn_skipping` has the contract of every backend (:mod:`skiprnn.ops.contract`), so
``skiprnn.ops.dispatch`` routes no-grad calls of the layers here. Calls that need something only
the reference does (forced gates of the random baseline, per-step thresholds, dropout in training,
dtypes other than float32/float64) fall back to the reference loop under ``torch.no_grad()``.

Paths:

* batch size 1 (CPU, :func:`run_single`): the first layer's input projected in blocks of steps
  (:class:`LazyInputProjection`), outputs gathered in one index at the end. A one-layer LSTM runs
  its steps in the C kernels (:func:`_run_fused`); otherwise a loop over the updates only: each
  run of skipped steps replayed at once (:class:`SkipRuns`, memoised: with a constant gate every
  run is a dict lookup) and written in bulk, an update one GEMV per weight matrix
  (:class:`AlternatingMV`) plus NumPy pointwise maths (:class:`NumpyStack`).
* batch > 1 (:mod:`skiprnn.ops.waves`; a one-layer LSTM on the CPU in the C kernels): the k-th
  pending update of every row runs in one wave (one GEMM per weight matrix over all rows still
  updating, whatever step each is at), the gate bookkeeping replayed on the host in blocks; a
  one-layer GRU goes to the dense CPU path for the rest of a sequence once its update fraction
  passes the break-even (``waves.DENSE_BREAK_EVEN``).
* CUDA batches, one layer (LSTM or GRU): the fused forward-only Triton kernel
  (``skiprnn.ops.triton_rnn.skip_rnn_triton_infer``) keeps the state on chip over the whole
  sequence; no host round trip at all.
"""

from __future__ import annotations

import ctypes
import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .._env import triton_available
from .cells import cell_spec
from .contract import GateOptions, RecurrenceResult, check_cell
from .cpu_rnn import pooled_output
from .naive import check_cap_holds, floor_update_prob, update_prob_floor
from .waves import fused_lstm_kernels, run_waves

__all__ = ["skip_rnn_skipping", "simulate_skips", "np_dtype", "StepCell", "NumpyStack",
           "AlternatingMV", "SkipRuns", "LazyInputProjection", "first_projection"]

_NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def np_dtype(dtype: torch.dtype):
    """The NumPy scalar type that replays the gate arithmetic of ``dtype`` exactly, or None."""
    return _NP_DTYPES.get(dtype)


def simulate_skips(update_prob, cum_prob, threshold: float = 0.5, limit: int | None = None,
                   dtype=np.float32, max_skip: int | None = None):
    """How many upcoming steps will NOT be read, replaying the ũ recursion exactly.

    Args:
        update_prob: the carried Δũ (a float, or the scalar of the state).
        cum_prob: the ũ accumulator of the state.
        threshold: τ (u = 1[ũ > τ]).
        limit: stop after this many skipped steps (None: no limit).
        dtype: the NumPy scalar type of the layer's dtype (``np.float32`` for float32 layers).
        max_skip: the layer's ``max_skip`` (its floor on Δũ is applied to ``update_prob``, a
            no-op on a Δũ the floored layer produced); None: no floor.

    Returns:
        ``(n, probs, cum)``: n skipped steps before the next read (``math.inf`` when ũ can never
        exceed τ again, e.g. Δũ underflowed to 0), the ũ of each skipped step (NumPy array), and
        the accumulator after them.
    """
    one, thr = dtype(1), dtype(threshold)
    up, cum = floor_update_prob(dtype(update_prob), max_skip, threshold), dtype(cum_prob)
    probs = []
    while limit is None or len(probs) < limit:
        ut = cum + min(up, one - cum)
        if ut > thr:
            break
        if ut == cum and len(probs) > 0:  # no progress: the gate never opens again
            return math.inf, np.asarray(probs, dtype), cum
        probs.append(ut)
        cum = ut
    return len(probs), np.asarray(probs, dtype), cum


# ---------------------------------------------------------------------------------------------
# one state update of the whole stack on a set of rows
# ---------------------------------------------------------------------------------------------
def _lstm_step_fused(x, state, *weights):
    """The LSTM's :meth:`CellSpec.step <skiprnn.ops.cells.CellSpec.step>` in one op (fewer
    dispatches per step; bitwise the reference's at batch size 1 on the CPU)."""
    return torch.lstm_cell(x, tuple(state), *weights)


class StepCell:
    """The candidate update of a Skip LSTM / GRU stack and its Δũ, on any subset of rows.

    ``cell(x (n, I), hs [L × (n, H)], cs [L × (n, H)] | None) -> (new_hs, new_cs, delta (n,))``;
    ``max_skip``, ``threshold``: Δũ floored as the layer's at τ
    (``skiprnn.ops.naive.floor_update_prob``). ``spec``: the cell's
    :class:`~skiprnn.ops.cells.CellSpec`.
    """

    def __init__(self, kind: str, layers: Sequence[tuple], gate_weight, gate_bias,
                 constant_delta: float | None = None, reset_after: bool = True,
                 max_skip: int | None = None, threshold: float = 0.5):
        self.spec = cell_spec(kind, reset_after)
        self.kind, self.reset_after = kind, reset_after
        self.layers = [tuple(p.detach() if isinstance(p, Tensor) else p for p in lay)
                       for lay in layers]
        self.gate_weight, self.gate_bias = (None if t is None else t.detach()
                                            for t in (gate_weight, gate_bias))
        if constant_delta is None and self.gate_weight is None:
            raise ValueError("a learned gate needs gate_weight and gate_bias")
        check_cap_holds(max_skip, threshold, constant_delta=constant_delta)
        self.constant_delta, self.max_skip, self.threshold = constant_delta, max_skip, threshold

    def delta(self, feat: Tensor) -> Tensor:
        """Δũ ``(n,)`` of the gate feature ``feat`` ``(n, H)`` (floored under ``max_skip``)."""
        if self.constant_delta is not None:
            return feat.new_full((feat.shape[0],), self.constant_delta)
        # (n, H) @ (H,) + b: one matrix-vector product (F.linear with a (1, H) weight is a GEMM)
        w = self.gate_weight[0]
        z = torch.mv(feat, w) if self.gate_bias is None else torch.addmv(self.gate_bias, feat, w)
        return floor_update_prob(z.sigmoid_(), self.max_skip, self.threshold)

    def __call__(self, x: Tensor, hs: Sequence[Tensor], cs: Sequence[Tensor] | None):
        lstm = self.kind == "lstm"
        new, feat = self.spec.stack(x, (hs, cs) if lstm else (hs,), self.layers,
                                    step=_lstm_step_fused if lstm else None)
        return new[0], (new[1] if lstm else None), self.delta(feat)


# ---------------------------------------------------------------------------------------------
# whole-sequence engines
# ---------------------------------------------------------------------------------------------
# steps per contiguous block of input projections (LazyInputProjection, dense reads)
PROJECTION_CHUNK = 128
# a sequence whose whole input projection is at most this many multiply-adds is projected at once
# (one GEMM of ~0.05 ms): blocks would cost more in calls than they save (I = 1, H = 110: 0.4 M)
EAGER_PROJECTION_MACS = 4_000_000
# LazyInputProjection.note_hits: up to this many reads a Python loop (~0.2 us a read) is cheaper
# than the closed form's NumPy calls (~40-70 us a call, more with cold caches)
NOTE_LOOP_READS = 64


class LazyInputProjection:
    """``x_t W_ihᵀ + b`` for the steps that are read, computed in blocks on demand.

    A per-step matrix-vector product re-reads W_ih from memory at every read; a block of steps is
    one GEMM. At a step that is not in the current block a new block starts there, of one of two
    kinds, chosen from the reads so far (running means of the interval between reads and of how
    often the strided prediction below missed):

    * dense reads (mean interval ≤ ``dense_interval``, or ≤ ``irregular_interval`` when the
      pattern is irregular): the next ``chunk`` steps, contiguous. Every read in them is a hit
      whatever the pattern; the unread rows cost GEMM time, which at this density is less than
      the cost of many small blocks after mispredictions.
    * otherwise: the steps ``period`` apart from here (``period`` = the last interval), a strided
      view of x. On a hit the next block doubles (up to ``max_block``), on a miss it shrinks back
      to one step, so at most a few unread steps are ever projected.

    Crossovers measured on one CPU core (H = 512, I = 64, ``benchmarks``-style runs): contiguous
    blocks are faster for a regular pattern up to an interval of about 3, for an irregular one
    (a learned gate) up to an interval of about 12-16: after a misprediction a one-row GEMM reads
    all of W_ih for one row, a chunk reads it once for ``chunk`` rows.

    A sequence whose whole projection costs at most ``eager_macs`` multiply-adds (default
    ``EAGER_PROJECTION_MACS``) is projected at once, as one contiguous block.

    ``wasted`` counts the projected rows that were not read; ``n_contiguous`` / ``n_strided``
    the blocks of each kind.
    """

    def __init__(self, x2d: Tensor, weight: Tensor, bias: Tensor | None, max_block: int = 32,
                 chunk: int | None = None, dense_interval: float = 3.0,
                 irregular_interval: float = 12.0, eager_macs: int | None = None):
        self.x2d, self.wt, self.bias = x2d, weight.t(), bias
        self.T = x2d.shape[0]
        self.max_block = max_block
        self.chunk = PROJECTION_CHUNK if chunk is None else chunk
        self.dense_interval, self.irregular_interval = dense_interval, irregular_interval
        self.miss, self.size, self.block = 0.0, 1, None  # miss: mean of strided mispredictions
        self.start, self.last, self.stride = 0, -1, 1  # the block holds start, start+stride…, last
        self.prev = self.interval = None
        self.projected = self.used = self.n_contiguous = self.n_strided = 0
        eager_macs = EAGER_PROJECTION_MACS if eager_macs is None else eager_macs
        if 0 < self.T and self.T * x2d.shape[1] * weight.shape[0] <= eager_macs:
            self._project(0, self.T, 1)
            self.n_contiguous += 1

    @property
    def wasted(self) -> int:
        return self.projected - self.used

    def _note(self, t: int) -> int | None:
        """Count a read of step t; the interval since the previous read (None: the first)."""
        self.used += 1
        d = None
        if self.prev is not None:
            d = t - self.prev
            self.interval = d if self.interval is None else 0.75 * self.interval + 0.25 * d
        self.prev = t
        return d

    def note_hits(self, reads) -> None:
        """Count reads (increasing steps, an int array) that the current block held, made
        without :meth:`get` (which counts a hit the same way, no block changes): what
        :meth:`_note` does per read, at once (the running mean of the intervals in closed form,
        equal to the one-by-one recursion up to rounding). Up to ``NOTE_LOOP_READS`` reads are
        counted one by one (cheaper than NumPy's calls at that size)."""
        m = len(reads)
        if m <= NOTE_LOOP_READS:
            for t in reads.tolist():
                self._note(t)
            return
        self.used += m
        steps = np.asarray(reads, dtype=np.float64)
        if self.prev is not None:
            steps = np.concatenate(([float(self.prev)], steps))
        d = np.diff(steps)
        self.prev = int(reads[-1])
        if self.interval is None:  # the first interval starts the mean
            self.interval, d = float(d[0]), d[1:]
        # I_k = 0.75 I_(k-1) + 0.25 d_k unrolled as I_0 + sum_k w_k (d_k - I_0), w summing to
        # 1 - 0.75^k: exact when the intervals equal I_0 (a regular pattern stays on its
        # dense / irregular thresholds exactly, as the recursion keeps it)
        weights = 0.25 * 0.75 ** np.arange(d.size - 1, -1, -1)
        self.interval = self.interval + float(weights @ (d - self.interval))

    def get(self, t: int) -> int:
        """Make sure step t (read steps in increasing order) is projected; returns its row in
        ``self.block``."""
        d = self._note(t)  # the last interval: the expected one to the next read
        off = t - self.start
        if 0 <= off and t <= self.last and off % self.stride == 0:
            return off // self.stride
        if self.stride > 1:
            # the strided block ran out on its grid (a hit), or t fell off the grid (a miss)
            self.miss = 0.75 * self.miss + (0.0 if t == self.last + self.stride else 0.25)
        elif self.block is not None:
            self.miss *= 0.9  # now and then, try predicting again
        if self.interval is not None and (
                self.interval <= self.dense_interval
                or (self.miss > 0.5 and self.interval <= self.irregular_interval)):
            stride, stop = 1, min(self.T, t + self.chunk)
            self.n_contiguous += 1
        else:
            stride = max(1, d or 1)
            self.size = min(self.max_block, self.size * 2) if t > self.last else 1
            stop = min(self.T, t + stride * self.size)
            self.n_strided += 1
        self._project(t, stop, stride)
        return 0

    def _project(self, t: int, stop: int, stride: int) -> None:
        """The block of steps t, t + stride, ... before stop."""
        rows = self.x2d[t:stop:stride]
        self.block = (torch.addmm(self.bias, rows, self.wt) if self.bias is not None
                      else rows @ self.wt)
        n = rows.shape[0]
        self.start, self.stride, self.last = t, stride, t + stride * (n - 1)
        self.projected += n


# bytes of weight per block of rows in a batch-size-1 matrix-vector product (AlternatingMV)
MV_BLOCK_BYTES = 1 << 20


class AlternatingMV:
    """``out = W v`` for a fixed ``W``, its rows in blocks read alternately first-to-last and
    last-to-first.

    At batch size 1 an update is one matrix-vector product per weight matrix, bound by reading W
    (H = 512 LSTM: W_hh is 4 MB, more than a core's L2). Streaming it in the same order every time
    evicts each block before it is read again; reading the blocks in the reverse order of the
    previous product starts with the blocks that were read last, which are still cached, so about
    an L2's worth of W comes from L2 instead of L3/DRAM on every update (H = 512 LSTM on one core
    here: ≈ 130 instead of ≈ 155 µs per product). The blocks (whole multiples of 16 rows) are the
    same in both directions, so the result does not depend on the order; with MKL it is bitwise
    that of one ``torch.mv`` when the number of rows is a multiple of 16 (within a few ulp
    otherwise). Matrices up to ``block_bytes`` are one block.

    With more than one torch thread (``threads``, default ``torch.get_num_threads()``) W is one
    block: one ``torch.mv`` lets MKL split the rows across the threads the same way every time, so
    each core keeps its share of W in its own L2 (H = 512: 2 MB per core with 2 threads) and all
    cores stream at once; 1 MB blocks would make each product several short parallel regions,
    each split again, for no cache gain.
    """

    def __init__(self, weight: Tensor, out: Tensor, block_bytes: int | None = None,
                 threads: int | None = None):
        block_bytes = MV_BLOCK_BYTES if block_bytes is None else block_bytes
        w = weight.detach().contiguous()
        rows = w.shape[0]
        n = max(1, min(8, -(-w.numel() * w.element_size() // max(1, block_bytes))))
        if (torch.get_num_threads() if threads is None else threads) > 1:
            n = 1
        step = -(-rows // (16 * n)) * 16 if n > 1 else rows  # ⌈rows / n⌉, a multiple of 16
        self.blocks = [(w[i:i + step], out[i:i + step]) for i in range(0, rows, step)]
        self.reverse = self.blocks[::-1]
        self.out = out
        self.flip = False

    def __call__(self, v: Tensor) -> Tensor:
        blocks = self.reverse if self.flip else self.blocks
        self.flip = not self.flip
        for w, o in blocks:
            torch.mv(w, v, out=o)
        return self.out


class NumpyStack:
    """One state update of a Skip LSTM / GRU stack at batch size 1 on the CPU: per layer one or
    two matrix-vector products (torch, into buffers NumPy shares) and in-place NumPy ufuncs.

    Why the cell maths of :mod:`skiprnn.ops.cells` is restated here: at batch size 1 a torch op
    costs several microseconds of dispatch while its arithmetic costs less; NumPy's ufuncs on
    preallocated buffers keep the per-update overhead small next to the GEMV, which reads W_hh
    (see :class:`AlternatingMV`). Gate order, sizes and the gate feature come from the cell's
    :class:`~skiprnn.ops.cells.CellSpec`; the weights are in its :meth:`arrange` layout (σ gates
    first, their rows pre-halved), so one ``tanh`` over the gates and two in-place ops give every
    σ(a) = ½·tanh(a/2) + ½.

    Every layer keeps one vector ``v`` and multiplies it with its weights side by side:

    * LSTM: ``v = [h; inp; 1]`` (no 1 without biases) and ``[W_hh | W_ih | b_ih + b_hh]``;
    * GRU: ``v = [h; 1; inp; 1]``, ``[W_hh | b_hh]`` on ``[h; 1]`` and ``[W_ih | b_ih]`` on
      ``[inp; 1]`` (the candidate needs the two parts apart).

    With ``first_projected`` the caller projects the first layer's input (with
    :func:`first_projection`'s weights, e.g. in :class:`LazyInputProjection`'s block GEMMs) and
    passes the row to :meth:`update`; the first layer's matrix is then ``W_hh`` (GRU:
    ``[W_hh | b_hh]``) alone.

    Args:
        cell: the :class:`StepCell` (weights, gate, Δũ floor).
        hs, cs: per layer the state ``(H,)`` NumPy arrays (``cs`` None for the GRU); ``cs`` is
            updated in place, ``hs`` copied.
        npdt: the NumPy scalar type of the layer's dtype.

    Results equal the reference's up to float rounding (the bias folded into the product, W_ih x
    and W_hh h summed in one dot product); Δũ is floored as the layer's.
    """

    def __init__(self, cell: StepCell, hs: list, cs: list | None, npdt,
                 first_projected: bool = False):
        spec = self.spec = cell.spec
        if not spec.reset_after:
            raise ValueError("NumpyStack runs nn.GRU's candidate (reset_after=True); the paper's "
                             "GRU takes the torch paths")
        self.lstm, self.npdt = spec.kind == "lstm", npdt
        self.L, self.H = len(cell.layers), hs[0].shape[0]
        H = self.H
        self.half, self.one = npdt(0.5), npdt(1)
        self.tmp, self.tmp2 = np.empty(H, npdt), np.empty(H, npdt)
        self.v, self.inp, self.mv, self.g = [], [], [], []
        self.c = cs
        for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(cell.layers):
            bias = b_ih is not None
            own = k > 0 or not first_projected  # the layer projects its own input
            n_in, dt = (w_ih.shape[1] if own else 0), w_hh.dtype
            if self.lstm:  # [W_hh | W_ih | b_ih + b_hh] on [h; inp; 1]
                mats = [torch.cat([w_hh, w_ih] + ([(b_ih + b_hh)[:, None]] if bias else []), 1)
                        if own else w_hh]
            else:  # [W_hh | b_hh] on [h; 1], [W_ih | b_ih] on [inp; 1]
                mats = [torch.cat([w, b[:, None]], 1) if bias else w
                        for w, b in ((w_hh, b_hh), (w_ih, b_ih))[:1 + own]]
            vt = torch.zeros(sum(m.shape[1] for m in mats), dtype=dt)
            v, mvs, gates, end = vt.numpy(), [], [], 0
            for m in mats:  # each product on its part of v, a 1 in its bias column
                g, start, end = torch.empty(m.shape[0], dtype=dt), end, end + m.shape[1]
                mvs.append((AlternatingMV(spec.arrange(m), g), vt[start:end]))
                gates.append(g.numpy())
                if bias and (own or not self.lstm):
                    v[end - 1] = 1
            v[:H] = hs[k]
            in_at = H if self.lstm else H + bias  # where the layer's input starts in v
            self.v.append(v)
            self.mv.append(mvs)
            self.g.append((gates + [None])[:2])  # GRU: (gh, gi), gi None when first_projected
            self.inp.append(v[in_at:in_at + n_in])
        self.x2t = torch.from_numpy(self.inp[0]).view(1, -1)  # the first layer's input, (1, I)
        self.const = None if cell.constant_delta is None else npdt(cell.constant_delta)
        self.max_skip, self.threshold = cell.max_skip, cell.threshold
        self.gw = None if cell.gate_weight is None else cell.gate_weight[0].numpy()
        self.gb = None if cell.gate_bias is None else npdt(cell.gate_bias.item())

    @property
    def hs(self) -> list:
        """The state's h per layer (views of the layers' vectors)."""
        return [v[:self.H] for v in self.v]

    def update(self, h_top: np.ndarray, xp=None):
        """One update from the first layer's input (in ``x2t``, or its projection ``xp``
        ``(G·H,)`` with ``first_projected``); the top layer's new h is also written into
        ``h_top`` ``(H,)``. Returns Δũ (a NumPy scalar)."""
        H, half, tmp = self.H, self.half, self.tmp
        for k in range(self.L):
            v = self.v[k]
            h = v[:H]
            for amv, vt in self.mv[k]:
                amv(vt)
            if self.lstm:  # rows (i, f, o, g), i, f, o pre-halved
                g = self.g[k][0]
                if xp is not None and k == 0:
                    g += xp
                np.tanh(g, out=g)
                sig = g[:3 * H]
                sig *= half
                sig += half
                np.multiply(g[:H], g[3 * H:], out=tmp)
                c = self.c[k]
                c *= g[H:2 * H]
                c += tmp
                np.tanh(c, out=tmp)
                np.multiply(g[2 * H:3 * H], tmp, out=h)  # v[:H] is free: the products are done
            else:  # rows (r, z, n), r, z pre-halved
                gh, gi = self.g[k]
                if gi is None:
                    gi = xp
                rz = np.add(gi[:2 * H], gh[:2 * H], out=gh[:2 * H])
                np.tanh(rz, out=rz)
                rz *= half
                rz += half
                r, z = rz[:H], rz[H:]
                n = np.multiply(gh[2 * H:], r, out=tmp)
                n += gi[2 * H:]
                np.tanh(n, out=n)
                zh = np.multiply(z, h, out=self.tmp2)
                np.subtract(self.one, z, out=h)
                h *= n
                h += zh
            if k < self.L - 1:
                self.inp[k + 1][:] = h
        h_top[:] = h
        if self.const is not None:
            return self.const
        feat = (self.hs, self.c)[self.spec.feature_index][-1]
        zz = np.dot(self.gw, feat) + self.gb
        return floor_update_prob(self.npdt(self.one / (self.one + np.exp(-zz))), self.max_skip,
                                 self.threshold)


class SkipRuns:
    """``simulate_skips`` from a state, memoised: after an update the accumulator is 0, so with a
    constant (or recurring) Δũ every run of skipped steps is the same and costs one dict lookup."""

    def __init__(self, threshold, npdt, max_size: int = 4096):
        self.thr, self.npdt, self.max_size = threshold, npdt, max_size
        self.memo: dict = {}

    def until_read(self, up, cum, left: int):
        """``(n, probs)``: the skipped steps before the next read (n ≤ left) and their ũ (probs
        may run past n); when the gate never opens again, all ``left`` steps, ũ held at its last
        value."""
        hit = self.memo.get((up, cum))
        if hit is None:
            n, probs, _ = simulate_skips(up, cum, self.thr, limit=left, dtype=self.npdt)
            hit = (len(probs), probs, n == math.inf)  # (n, ũ, stuck: the gate never opens again)
            if hit[0] < left or hit[2]:  # a complete run (not cut by the limit): reusable
                if len(self.memo) >= self.max_size:
                    self.memo.clear()
                self.memo[(up, cum)] = hit
        n, probs, stuck = hit
        if not stuck:
            return min(n, left), probs
        if left > len(probs):
            probs = np.concatenate([probs, np.full(left - len(probs), probs[-1], self.npdt)])
        return left, probs


def first_projection(cell: StepCell, arranged: bool = True) -> tuple:
    """The first layer's input projection: ``(W_ih, b)`` with b = b_ih + b_hh for the LSTM (one
    sum per gate), b_ih for the GRU (its b_hh goes with W_hh h), None without biases; in
    :meth:`CellSpec.arrange`'s layout, or with ``arranged=False`` in the layer's own (no copy of
    W_ih: the C kernels arrange each update's sum themselves)."""
    w_ih, _, b_ih, b_hh = cell.layers[0]
    b = None if b_ih is None else b_ih + b_hh if cell.kind == "lstm" else b_ih
    if not arranged:
        return w_ih, b
    return cell.spec.arrange(w_ih), None if b is None else cell.spec.arrange(b)


def run_single(cell: StepCell, x, hs, cs, up0, cum0, valid, npdt, fetch=None):
    """Batch size 1 on the CPU: the cell only on update steps, runs of skipped steps written in
    bulk (their ũ replayed, their output an index of the held h); the first layer's input
    projected in blocks (:class:`LazyInputProjection`). A one-layer LSTM runs its steps in the C
    kernels (:func:`_run_fused`), anything else in NumPy (:func:`_run_numpy`).

    ``fetch`` (lazy inputs, ``skiprnn.inference.lazy``): ``fetch(t) -> (1, I)`` the input of read
    step t, made only then (NumPy loop, no projections); ``x`` then only gives T, the dtype and
    the device (e.g. an empty ``(T, 1, 0)``)."""
    T, H = x.shape[0], hs[0].shape[-1]
    up, cum = floor_update_prob(npdt(up0.item()), cell.max_skip, cell.threshold), npdt(cum0.item())
    cs = [c[0].numpy().copy() for c in cs] if cs is not None else None
    kernels = fused_lstm_kernels(cell, x.dtype) if fetch is None else None
    stack = None if kernels is not None else NumpyStack(cell, [h[0].numpy() for h in hs], cs,
                                                        npdt, first_projected=fetch is None)
    steps = np.arange(T) if valid is None else np.flatnonzero(valid)  # steps that count
    n_steps = len(steps)
    # inputs up to the last step that counts (blocks of projections stop there)
    proj = fetch or LazyInputProjection(x[:int(steps[-1]) + 1 if n_steps else 0, 0],
                                        *first_projection(cell, arranged=stack is not None))
    # output rows: 0 the top h before step 0, 1 padding (masked steps), 2 + j the j-th update's h
    hist = np.empty((n_steps + 2, H), npdt)
    hist[0] = hs[-1][0].numpy()
    hist[1] = 0
    idx, u_np, p_np = np.ones(T, np.int64), np.zeros(T, npdt), np.zeros(T, npdt)
    loop = (up, cum, hist, idx, u_np, p_np, npdt)
    if stack is None:
        h_states = [hs[0][0].numpy().copy()]
        up, cum = _run_fused(kernels, cell, h_states[0], cs[0], proj, steps, valid is None, *loop)
    else:
        up, cum = _run_numpy(stack, proj, steps, valid is None, *loop)
        h_states = stack.hs
    out = pooled_output((T, 1, H), x)  # (already paged in where an earlier output was dropped)
    # the rows gathered over the torch threads (2-3x NumPy's take of the same rows)
    torch.index_select(torch.from_numpy(hist), 0, torch.from_numpy(idx), out=out.view(T, H))
    up_t, cum_t = (torch.tensor([v], dtype=x.dtype, device=x.device) for v in (up, cum))
    state = tuple(torch.from_numpy(np.stack(part)[:, None]) for part in (h_states, cs)
                  if part is not None)
    return RecurrenceResult(out, state, up_t, cum_t, torch.from_numpy(u_np).unsqueeze(1),
                            torch.from_numpy(p_np).unsqueeze(1))


def _run_numpy(stack: NumpyStack, proj, steps, dense: bool, up, cum, hist, idx, u_np, p_np, npdt):
    """:func:`run_single`'s loop over the updates with a :class:`NumpyStack`; fills ``hist``,
    ``idx``, ``u_np``, ``p_np``; returns the final (Δũ, ũ). ``proj``: a
    :class:`LazyInputProjection`, or ``run_single``'s ``fetch``."""
    one, zero = npdt(1), npdt(0)
    runs = SkipRuns(stack.threshold, npdt)
    n_steps = len(steps)
    fetch, x2 = callable(proj), stack.x2t
    block_id = block_np = xp = None
    cur = k = 0
    while k < n_steps:
        n, probs = runs.until_read(up, cum, n_steps - k)
        if n:
            sel = slice(k, k + n) if dense else steps[k:k + n]
            p_np[sel] = probs[:n]
            idx[sel] = cur
            cum = probs[n - 1]
            k += n
            if k >= n_steps:
                break
        # a read step: ũ crosses τ
        t = int(steps[k])
        p_np[t] = cum + min(up, one - cum)
        u_np[t] = 1
        if fetch:
            x2.copy_(proj(t))  # any dtype / device
        else:
            j = proj.get(t)
            if proj.block is not block_id:
                block_id, block_np = proj.block, proj.block.numpy()
            xp = block_np[j]
        cur += 1 if cur else 2
        up = stack.update(hist[cur], xp)
        cum = zero
        idx[t] = cur
        k += 1
    return up, cum


def _run_fused(kernels, cell: StepCell, h, c, proj, steps, dense: bool, up, cum, hist, idx, u_np,
               p_np, npdt):
    """:func:`run_single`'s loop in the C kernels (``lstm_single_run`` of
    :mod:`skiprnn.ops.cpu_kernels`): one call runs the steps up to a read that the current block
    of projections does not hold; the next block is then projected here. Each update is one
    ``lstm_single_update`` (W_hh · h as below; the projection in the layer's gate order,
    ``first_projection(cell, arranged=False)``; the same numbers as the NumPy loop's up to the
    rounding of the GEMV); the ũ replay is the same arithmetic in the same dtype, so the gates
    equal the NumPy loop's. ``h``, ``c`` ``(H,)`` are updated in place; returns the final
    (Δũ, ũ)."""
    from . import cpu_kernels
    H = h.shape[0]
    w = cell.layers[0][1].contiguous()               # W_hh, nn.LSTM's gate order
    gw = cell.gate_weight[0].contiguous()
    scratch = np.empty(4 * H, npdt)
    # W_hh of 1 MB or more as the layer holds it, its rows split over the torch threads; under
    # 1 MB on one core (a parallel region per update costs more than it saves), the product as
    # AXPYs over a transposed copy (no per-row sums; the copy is small)
    small = w.numel() * w.element_size() < 1 << 20
    threads = 1 if small else torch.get_num_threads()
    wt = None
    if small:   # (H, single_wt_rows(H)), zeros past the 4H columns: the C kernel's whole blocks
        wt = w.new_zeros(H, kernels.single_wt_rows(H))
        wt[:, :4 * H] = w.t()
    single = cpu_kernels.SingleArgs(
        H=H, threads=threads, flip=0, W=w.data_ptr(), h=h.ctypes.data,
        c=c.ctypes.data, a=scratch.ctypes.data, gw=gw.data_ptr(),
        gb=float(npdt(cell.gate_bias.item())), WT=None if wt is None else wt.data_ptr())
    steps = np.ascontiguousarray(steps, np.int64)
    reads = np.empty(max(1, len(steps)), np.int64)
    floor = update_prob_floor(cell.max_skip, cell.threshold)
    run = cpu_kernels.run_args(w.dtype)(
        steps=None if dense else steps.ctypes.data, k=0, n_steps=len(steps), cur=0, block=None,
        b_start=0, b_stride=1, b_last=-1, row_bytes=0, p=p_np.ctypes.data, u=u_np.ctypes.data,
        idx=idx.ctypes.data, hist=hist.ctypes.data, reads=reads.ctypes.data, n_reads=0,
        has_floor=floor is not None, up=float(up), cum=float(cum), thr=float(cell.threshold),
        floor=0.0 if floor is None else float(floor))
    args, fn = (ctypes.byref(single), ctypes.byref(run)), kernels.single_run
    counted = 0    # reads of this call already counted by proj.get
    while True:
        more = fn(*args)
        proj.note_hits(reads[counted:run.n_reads])
        if not more:
            break
        proj.get(int(steps[run.k]))                 # a block that holds the next read
        block = proj.block
        run.block, run.b_start, run.b_stride, run.b_last = (
            block.data_ptr(), proj.start, proj.stride, proj.last)
        run.row_bytes = block.stride(0) * block.element_size()
        counted = 1
    return npdt(run.up), npdt(run.cum)


def _dense_continuation(cell: StepCell, device_type: str):
    """The dense CPU path (:func:`skiprnn.ops.cpu_rnn.skip_rnn_cpu`) as ``run_waves``' ``dense``
    argument, or None where it cannot continue the call (other devices, several layers, a
    constant Δũ)."""
    if device_type != "cpu" or len(cell.layers) != 1 or cell.constant_delta is not None:
        return None
    from .cpu_rnn import skip_rnn_cpu
    opts = GateOptions(threshold=cell.threshold, max_skip=cell.max_skip,
                       reset_after=cell.reset_after)
    return lambda x, state, up, cum, mask: skip_rnn_cpu(
        cell.kind, x, state, up, cum, cell.layers, cell.gate_weight, cell.gate_bias,
        opts._replace(mask=mask))


def skip_rnn_skipping(cell: str, x: Tensor, state: tuple, update_prob0: Tensor,
                      cum_prob0: Tensor, layers: Sequence[tuple], gate_weight: Tensor,
                      gate_bias: Tensor, opts: GateOptions = GateOptions()) -> RecurrenceResult:
    """Skip RNN inference whose skipped steps do no work (no autograd: results are detached).
    Arguments and result: :mod:`skiprnn.ops.contract`, as the reference's.

    Calls that need the reference (forced gates, per-step thresholds, dropout between layers in
    training, dtypes other than float32 / float64) run it under ``torch.no_grad()``. With
    ``reset_after=False`` (the paper's GRU) batch size 1 runs on the batched (torch) engine.
    """
    check_cell(cell, state, opts)
    L, B = len(layers), x.shape[1]
    threshold, mask = opts.threshold, opts.mask
    if (opts.forced is not None or isinstance(threshold, Tensor) or np_dtype(x.dtype) is None
            or (opts.training and opts.dropout and L > 1)):
        from .naive import skip_rnn_naive
        with torch.no_grad():
            return skip_rnn_naive(cell, x, state, update_prob0, cum_prob0, layers, gate_weight,
                                  gate_bias, opts)
    check_cap_holds(opts.max_skip, threshold, opts.forced, opts.constant_delta)
    thr = float(threshold)
    with torch.no_grad():
        step = StepCell(cell, layers, gate_weight, gate_bias, opts.constant_delta,
                        opts.reset_after, opts.max_skip, thr)
        # (the Triton kernels have no floor on Δũ)
        if (x.device.type == "cuda" and B > 1 and L == 1 and opts.constant_delta is None
                and opts.max_skip is None and triton_available()):
            from .triton_rnn import skip_rnn_triton_infer
            # one persistent kernel: state stays on chip, no host round trip per step
            return skip_rnn_triton_infer(cell, x, state, update_prob0, cum_prob0, layers,
                                         gate_weight, gate_bias,
                                         GateOptions(mask=mask, threshold=thr,
                                                     reset_after=opts.reset_after))
        hs = list(state[0].unbind(0))
        cs = list(state[1].unbind(0)) if cell == "lstm" else None
        valid = None if mask is None else mask.detach().to("cpu", torch.bool).numpy()
        npdt = np_dtype(x.dtype)
        if B == 1 and x.device.type == "cpu" and opts.reset_after:  # NumPy: nn.GRU's candidate
            with np.errstate(over="ignore"):
                return run_single(step, x, hs, cs, update_prob0, cum_prob0,
                                  None if valid is None else valid[:, 0], npdt)
        return run_waves(step, x, hs, cs, update_prob0, cum_prob0, valid, thr, npdt,
                         dense=_dense_continuation(step, x.device.type))
