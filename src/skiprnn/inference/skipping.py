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

Functions here have exactly the naive functions' signature and return tuple, so
``skiprnn.ops.dispatch`` routes no-grad calls of the layers here. Calls that need something only
the reference does (forced gates of the random baseline, per-step thresholds, dropout in training,
dtypes other than float32/float64) fall back to the reference loop under ``torch.no_grad()``.

Paths:

* batch size 1: a scalar loop; an update runs the cell on one row (``torch.lstm_cell`` / the GRU
  maths), a skip costs a few scalar float operations; outputs are gathered in one ``index_select``.
* batch > 1: per step, only the rows that update run the cell (``index_select`` → cell →
  ``index_copy_``); steps where no row updates cost nothing. The gate bookkeeping lives on the host
  (NumPy), so on a GPU each step with an update reads back Δũ of the updated rows (one sync).
* CUDA batches, one layer (LSTM or GRU): the fused forward-only Triton kernel
  (``skip_lstm_triton_infer`` / ``skip_gru_triton_infer``) keeps the state on chip over the whole
  sequence; no host round trip at all.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["skip_lstm_skipping", "skip_gru_skipping", "simulate_skips", "np_dtype", "StepCell"]

_NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def np_dtype(dtype: torch.dtype):
    """The NumPy scalar type that replays the gate arithmetic of ``dtype`` exactly (or None)."""
    return _NP_DTYPES.get(dtype)


def simulate_skips(update_prob, cum_prob, threshold: float = 0.5, limit: int | None = None,
                   dtype=np.float32):
    """How many upcoming steps will NOT be read, replaying the ũ recursion exactly.

    Args:
        update_prob: the carried Δũ (a float, or the scalar of the state).
        cum_prob: the ũ accumulator of the state.
        threshold: τ (u = 1[ũ > τ]).
        limit: stop after this many skipped steps (None: no limit).
        dtype: the NumPy scalar type of the layer's dtype (``np.float32`` for float32 layers).

    Returns:
        ``(n, probs, cum)``: n skipped steps before the next read (``math.inf`` when ũ can never
        exceed τ again, e.g. Δũ underflowed to 0), the ũ of each skipped step (NumPy array), and
        the accumulator after them.
    """
    one, thr = dtype(1), dtype(threshold)
    up, cum = dtype(update_prob), dtype(cum_prob)
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
def _gru_cell(x, h, w_ih, w_hh, b_ih, b_hh):
    # the reference's arithmetic (skiprnn.ops.skip_gru.naive.gru_cell), op for op
    gi = F.linear(x, w_ih, b_ih)
    gh = F.linear(h, w_hh, b_hh)
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h


class StepCell:
    """The candidate update of a Skip LSTM / GRU stack and its Δũ, on any subset of rows.

    ``cell(x (n, I), hs [L × (n, H)], cs [L × (n, H)] | None) -> (new_hs, new_cs, delta (n,))``.
    """

    def __init__(self, kind: str, layers: Sequence[tuple], gate_weight, gate_bias,
                 constant_delta: float | None = None):
        if kind not in ("lstm", "gru"):
            raise ValueError(f"kind must be 'lstm' or 'gru', got {kind!r}")
        self.kind = kind
        self.layers = [tuple(p.detach() if isinstance(p, Tensor) else p for p in lay)
                       for lay in layers]
        self.gate_weight = gate_weight.detach() if gate_weight is not None else None
        self.gate_bias = gate_bias.detach() if gate_bias is not None else None
        self.constant_delta = constant_delta
        if constant_delta is None and self.gate_weight is None:
            raise ValueError("a learned gate needs gate_weight and gate_bias")

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def delta(self, feat: Tensor) -> Tensor:
        if self.constant_delta is not None:
            return feat.new_full((feat.shape[0],), self.constant_delta)
        return torch.sigmoid(F.linear(feat, self.gate_weight, self.gate_bias)).squeeze(-1)

    def __call__(self, x: Tensor, hs: Sequence[Tensor], cs: Sequence[Tensor] | None):
        inp = x
        new_h, new_c = [], []
        if self.kind == "lstm":
            for (w_ih, w_hh, b_ih, b_hh), h, c in zip(self.layers, hs, cs):
                # CPU: the same linear + linear and pointwise ops as the reference lstm_cell
                h, c = torch.lstm_cell(inp, (h, c), w_ih, w_hh, b_ih, b_hh)
                new_h.append(h)
                new_c.append(c)
                inp = h
            return new_h, new_c, self.delta(new_c[-1])
        for (w_ih, w_hh, b_ih, b_hh), h in zip(self.layers, hs):
            h = _gru_cell(inp, h, w_ih, w_hh, b_ih, b_hh)
            new_h.append(h)
            inp = h
        return new_h, None, self.delta(new_h[-1])


# ---------------------------------------------------------------------------------------------
# whole-sequence engines
# ---------------------------------------------------------------------------------------------
class LazyInputProjection:
    """``x_t W_ihᵀ + b`` for the steps that are read, computed in small blocks on demand.

    A per-step matrix-vector product re-reads W_ih from memory at every read; a block of read steps
    is one GEMM. The block is predicted from the current skip period (the reads so far were ``period``
    steps apart): on a hit the next block doubles (up to ``max_block``), on a miss it shrinks back to
    one step, so at most a few unread steps are ever projected (``wasted`` counts them).
    """

    def __init__(self, x2d: Tensor, weight: Tensor, bias: Tensor | None, max_block: int = 32):
        self.x2d, self.wt, self.bias = x2d, weight.t(), bias
        self.T = x2d.shape[0]
        self.max_block = max_block
        self.size = 1
        self.map: dict = {}
        self.block = None
        self.last = -1
        self.projected = 0
        self.used = 0

    @property
    def wasted(self) -> int:
        return self.projected - self.used

    def get(self, t: int, period: int) -> int:
        """Make sure step t is projected; returns its row in ``self.block``."""
        j = self.map.get(t)
        self.used += 1
        if j is not None:
            return j
        self.size = min(self.max_block, self.size * 2) if t > self.last else 1
        stop = min(self.T, t + max(1, period) * self.size)
        steps = range(t, stop, max(1, period))
        if len(steps) == 1:
            rows = self.x2d[t:t + 1]
        else:
            rows = self.x2d.index_select(
                0, torch.arange(t, stop, max(1, period), device=self.x2d.device))
        self.block = (torch.addmm(self.bias, rows, self.wt) if self.bias is not None
                      else rows @ self.wt)
        self.map = {s: i for i, s in enumerate(steps)}
        self.last = steps[-1]
        self.projected += len(steps)
        return 0


class _NumpyStack:
    """One state update at batch size 1 in NumPy (CPU): a GEMV plus in-place elementwise ufuncs.

    At batch size 1 a torch op costs several microseconds of dispatch while its arithmetic costs
    less; NumPy's ufuncs on preallocated buffers keep the per-update overhead well below the
    GEMV's memory traffic, so an update costs about one step of ``nn.LSTM``. Numerics: the same
    float32 products and sums as the reference, with NumPy's exp/tanh (within an ulp of torch's).
    """

    def __init__(self, cell: StepCell, npdt):
        self.kind, self.npdt = cell.kind, npdt
        self.G = 4 if cell.kind == "lstm" else 3

        def arr(t):
            return None if t is None else t.detach().contiguous().numpy()

        self.layers = [tuple(arr(p) for p in lay) for lay in cell.layers]
        self.H = self.layers[0][1].shape[1]
        # upper layers: one bias (b_ih + b_hh for the LSTM)
        self.const = cell.constant_delta
        self.gw = None if cell.gate_weight is None else arr(cell.gate_weight)[0]
        self.gb = None if cell.gate_bias is None else npdt(cell.gate_bias.item())
        GH = self.G * self.H
        # GEMVs go through torch (its BLAS honours torch.set_num_threads; NumPy's may spawn threads)
        self.w_hh_t = [lay[1].detach().contiguous() for lay in cell.layers]
        self.w_ih_t = [lay[0].detach().contiguous() for lay in cell.layers]
        self.buf_t = torch.empty(GH, dtype=cell.layers[0][1].dtype)
        self.buf = self.buf_t.numpy()
        self.sg = np.empty(GH, npdt)
        self.one = npdt(1)
        self.half = npdt(0.5)

    def _sigmoid(self, x, out):
        np.multiply(x, self.half, out=out)
        np.tanh(out, out=out)
        out *= self.half
        out += self.half
        return out

    def __call__(self, xp_first: np.ndarray, hs: list, cs: list | None):
        """``xp_first``: the first layer's ``x W_ihᵀ + b_ih`` (+ b_hh for the LSTM)."""
        H, one = self.H, self.one
        new_h, new_c = [], []
        inp = None
        for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.layers):
            h = hs[k]
            if self.kind == "lstm":
                torch.mv(self.w_hh_t[k], torch.from_numpy(h), out=self.buf_t)
                g = self.buf
                if k == 0:
                    g += xp_first
                else:
                    g += torch.mv(self.w_ih_t[k], torch.from_numpy(inp)).numpy()
                    if b_ih is not None:
                        g += b_ih
                        g += b_hh
                sg = self._sigmoid(g, self.sg)
                c = sg[H:2 * H] * cs[k]
                c += sg[:H] * np.tanh(g[2 * H:3 * H])
                h = sg[3 * H:] * np.tanh(c)
                new_c.append(c)
            else:
                torch.mv(self.w_hh_t[k], torch.from_numpy(h), out=self.buf_t)
                gh = self.buf
                if b_hh is not None:
                    gh += b_hh
                if k == 0:
                    gi = xp_first
                else:
                    gi = torch.mv(self.w_ih_t[k], torch.from_numpy(inp)).numpy()
                    if b_ih is not None:
                        gi += b_ih
                rz = gi[:2 * H] + gh[:2 * H]
                rz = self._sigmoid(rz, rz)
                r, z = rz[:H], rz[H:]
                n = gh[2 * H:] * r
                n += gi[2 * H:]
                np.tanh(n, out=n)
                h = (one - z) * n
                h += z * hs[k]
            new_h.append(h)
            inp = h
        feat = new_c[-1] if self.kind == "lstm" else new_h[-1]
        if self.const is not None:
            delta = self.npdt(self.const)
        else:
            zz = np.dot(self.gw, feat) + self.gb
            delta = one / (one + np.exp(-zz))
        return new_h, (new_c if self.kind == "lstm" else None), self.npdt(delta)


def _run_single(cell: StepCell, x, hs, cs, up0, cum0, valid, threshold, npdt, stats=None):
    """Batch size 1 on the CPU: scalar gate bookkeeping, the cell (NumPy) only on update steps."""
    T, H = x.shape[0], hs[0].shape[-1]
    one, thr = npdt(1), npdt(threshold)
    zero = npdt(0)
    up, cum = npdt(up0.item()), npdt(cum0.item())
    w_ih, w_hh, b_ih, b_hh = cell.layers[0]
    b = b_ih
    if cell.kind == "lstm" and b_ih is not None:
        b = b_ih + b_hh
    proj = LazyInputProjection(x[:, 0], w_ih, b)
    stack = _NumpyStack(cell, npdt)
    hs = [h[0].numpy().copy() for h in hs]
    cs = [c[0].numpy().copy() for c in cs] if cs is not None else None
    hist = [hs[-1], np.zeros(H, npdt)]  # 0: the top h before step 0; 1: padding
    cur = 0
    idx = np.ones(T, np.int64)
    u_np = np.zeros(T, npdt)
    p_np = np.zeros(T, npdt)
    last_read = None
    period = 1
    block_id, block_np = None, None
    for t in range(T):
        if valid is not None and not valid[t]:
            continue
        ut = cum + min(up, one - cum)
        p_np[t] = ut
        if ut > thr:
            if last_read is not None:
                period = t - last_read
            last_read = t
            j = proj.get(t, period)
            if proj.block is not block_id:
                block_id, block_np = proj.block, proj.block.numpy()
            xp = block_np[j]
            hs, cs, up = stack(xp, hs, cs)
            cum = zero
            u_np[t] = 1
            hist.append(hs[-1])
            cur = len(hist) - 1
        else:
            cum = ut
        idx[t] = cur
    if stats is not None:
        stats.update(projected=proj.projected, read=proj.used)
    dev = x.device
    out = torch.from_numpy(np.stack(hist)[idx]).unsqueeze(1)
    u = torch.from_numpy(u_np).unsqueeze(1)
    p = torch.from_numpy(p_np).unsqueeze(1)
    up_t = torch.tensor([up], dtype=x.dtype, device=dev)
    cum_t = torch.tensor([cum], dtype=x.dtype, device=dev)
    hs = [torch.from_numpy(h).unsqueeze(0) for h in hs]
    cs = [torch.from_numpy(c).unsqueeze(0) for c in cs] if cs is not None else None
    return out, hs, cs, up_t, cum_t, u, p


def _run_batched(cell: StepCell, x, hs, cs, up0, cum0, valid, threshold, npdt):
    """Batch > 1: per step, gather the updating rows, run the cell on them, scatter back."""
    T, B, H = x.shape[0], x.shape[1], hs[0].shape[-1]
    dev = x.device
    one, thr, zero = npdt(1), npdt(threshold), npdt(0)
    up = up0.detach().cpu().numpy().astype(npdt, copy=True)
    cum = cum0.detach().cpu().numpy().astype(npdt, copy=True)
    hs = [h.clone() for h in hs]
    cs = [c.clone() for c in cs] if cs is not None else None
    hist = [hs[-1].clone(), hs[-1].new_zeros(1, H)]  # rows 0..B-1: initial top h; row B: padding
    cur = np.arange(B, dtype=np.int64)
    offset = B + 1
    idx = np.empty((T, B), np.int64)
    U = np.zeros((T, B), npdt)
    P = np.zeros((T, B), npdt)
    arange_b = np.arange(B, dtype=np.int64)
    for t in range(T):
        ut = cum + np.minimum(up, one - cum)
        u = ut > thr
        if valid is not None:
            v = valid[t]
            u &= v
            P[t] = np.where(v, ut, zero)
            cum = np.where(u, zero, np.where(v, ut, cum))
        else:
            P[t] = ut
            cum = np.where(u, zero, ut)
        rows = np.flatnonzero(u)
        n = rows.size
        if n:
            if n == B:
                new_h, new_c, delta = cell(x[t], hs, cs)
                for k in range(len(hs)):
                    hs[k].copy_(new_h[k])
                    if cs is not None:
                        cs[k].copy_(new_c[k])
                up = delta.cpu().numpy().astype(npdt)
                cur = offset + arange_b
            else:
                r = torch.from_numpy(rows).to(dev)
                new_h, new_c, delta = cell(
                    x[t].index_select(0, r), [h.index_select(0, r) for h in hs],
                    [c.index_select(0, r) for c in cs] if cs is not None else None)
                for k in range(len(hs)):
                    hs[k].index_copy_(0, r, new_h[k])
                    if cs is not None:
                        cs[k].index_copy_(0, r, new_c[k])
                up[rows] = delta.cpu().numpy()
                cur = cur.copy()
                cur[rows] = offset + np.arange(n, dtype=np.int64)
            hist.append(new_h[-1])
            offset += n
            U[t, rows] = 1
        idx[t] = cur if valid is None else np.where(valid[t], cur, B)
    out = torch.cat(hist).index_select(0, torch.from_numpy(idx.reshape(-1)).to(dev)).view(T, B, H)
    to = dict(device=dev, dtype=x.dtype)
    return (out, hs, cs, torch.from_numpy(up).to(**to), torch.from_numpy(cum).to(**to),
            torch.from_numpy(U).to(**to), torch.from_numpy(P).to(**to))


def _triton_infer(kind: str):
    """The fused forward-only Triton kernel for ``kind`` (CUDA batches), or None without Triton."""
    from ..ops.dispatch import triton_available

    if not triton_available():
        return None
    try:
        if kind == "lstm":
            from ..ops.skip_lstm.fused import skip_lstm_triton_infer as fn
        else:
            from ..ops.skip_gru.fused import skip_gru_triton_infer as fn
    except ImportError:
        return None
    return fn


def _needs_reference(x, threshold, dropout, training, forced, num_layers) -> bool:
    return (forced is not None or isinstance(threshold, Tensor) or np_dtype(x.dtype) is None
            or (training and dropout and num_layers > 1))


def _skipping(kind, x, hc, update_prob0, cum_prob0, layers, gate_weight, gate_bias, mask,
              threshold, dropout, training, forced, constant_delta):
    L = len(layers)
    with torch.no_grad():
        cell = StepCell(kind, layers, gate_weight, gate_bias, constant_delta)
        hs = list(hc[0].unbind(0))
        cs = list(hc[1].unbind(0)) if kind == "lstm" else None
        T, B = x.shape[0], x.shape[1]
        thr = float(threshold)
        if x.device.type == "cuda" and B > 1 and L == 1 and constant_delta is None:
            fused = _triton_infer(kind)
            if fused is not None:
                # one persistent kernel: state stays on chip, no host round trip per step
                return fused(x, hc[0], *([hc[1]] if kind == "lstm" else []), update_prob0,
                             cum_prob0, layers, gate_weight, gate_bias, mask=mask, threshold=thr)
        valid = None if mask is None else mask.detach().to("cpu", torch.bool).numpy()
        npdt = np_dtype(x.dtype)
        if B == 1 and x.device.type == "cpu":
            with np.errstate(over="ignore"):
                out, hs, cs, up, cum, u, p = _run_single(
                    cell, x, hs, cs, update_prob0, cum_prob0,
                    None if valid is None else valid[:, 0], thr, npdt)
        else:
            out, hs, cs, up, cum, u, p = _run_batched(cell, x, hs, cs, update_prob0, cum_prob0,
                                                      valid, thr, npdt)
    hn = torch.stack(hs)
    if kind == "lstm":
        return out, hn, torch.stack(cs), up, cum, u, p
    return out, hn, up, cum, u, p


def skip_lstm_skipping(x: Tensor, h0: Tensor, c0: Tensor, update_prob0: Tensor, cum_prob0: Tensor,
                       layers: Sequence[tuple], gate_weight: Tensor, gate_bias: Tensor,
                       mask: Tensor | None = None, threshold: float | Tensor = 0.5,
                       dropout: float = 0.0, training: bool = False, forced: Tensor | None = None,
                       constant_delta: float | None = None):
    """Skip LSTM inference whose skipped steps do no work; signature and return tuple of
    ``skiprnn.ops.skip_lstm.naive.skip_lstm_naive`` (no autograd: results are detached).

    Returns ``(output (T, B, H), h_n (L, B, H), c_n (L, B, H), update_prob (B,), cum_prob (B,),
    updates (T, B), update_probs (T, B))``.
    """
    if _needs_reference(x, threshold, dropout, training, forced, len(layers)):
        from ..ops.skip_lstm.naive import skip_lstm_naive
        with torch.no_grad():
            return skip_lstm_naive(x, h0, c0, update_prob0, cum_prob0, layers, gate_weight,
                                   gate_bias, mask=mask, threshold=threshold, dropout=dropout,
                                   training=training, forced=forced, constant_delta=constant_delta)
    return _skipping("lstm", x, (h0, c0), update_prob0, cum_prob0, layers, gate_weight, gate_bias,
                     mask, threshold, dropout, training, forced, constant_delta)


def skip_gru_skipping(x: Tensor, h0: Tensor, update_prob0: Tensor, cum_prob0: Tensor,
                      layers: Sequence[tuple], gate_weight: Tensor, gate_bias: Tensor,
                      mask: Tensor | None = None, threshold: float | Tensor = 0.5,
                      dropout: float = 0.0, training: bool = False, forced: Tensor | None = None,
                      constant_delta: float | None = None):
    """Skip GRU inference whose skipped steps do no work; signature and return tuple of
    ``skiprnn.ops.skip_gru.naive.skip_gru_naive``.

    Returns ``(output (T, B, H), h_n (L, B, H), update_prob (B,), cum_prob (B,), updates (T, B),
    update_probs (T, B))``.
    """
    if _needs_reference(x, threshold, dropout, training, forced, len(layers)):
        from ..ops.skip_gru.naive import skip_gru_naive
        with torch.no_grad():
            return skip_gru_naive(x, h0, update_prob0, cum_prob0, layers, gate_weight, gate_bias,
                                  mask=mask, threshold=threshold, dropout=dropout,
                                  training=training, forced=forced, constant_delta=constant_delta)
    return _skipping("gru", x, (h0,), update_prob0, cum_prob0, layers, gate_weight, gate_bias,
                     mask, threshold, dropout, training, forced, constant_delta)
