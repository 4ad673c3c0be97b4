"""The CPU fast path of one Skip RNN layer, shared by both cells: a hand-written BPTT whose
forward and backward are ``torch.library`` custom ops (``skiprnn::cpu_rnn_forward`` /
``skiprnn::cpu_rnn_backward``, with fake kernels and an autograd registration), so that
``torch.compile(fullgraph=True)`` and ``torch.export`` hold a call as one node; the cell maths
come from a :class:`CpuCell` (``skip_lstm/cpu.py``, ``skip_gru/cpu.py``).

Same contract (:mod:`skiprnn.ops.contract`) and maths as ``skip_rnn_naive`` (THE
definition; see ``skiprnn.ops.naive`` for the per-step equations), tested against them on every
output and every gradient. Only what must be sequential runs in the time loop, with fixed
buffers, ``out=`` arguments and no autograd graph. What makes it fast on a CPU:

* feature-major work tensors: each step's gates, state and saved coefficients are
  ``(features, B)`` blocks, so every per-step op reads and writes contiguous memory (ops on
  strided ``(B, H)`` slices cost three to four times more at these sizes);
* forward, per step: the cell's candidate (one ``addmm`` for ``W_hh h``, a few in-place ops),
  then seven ops for the update gate (one ``lerp`` mixes the state, another updates
  ``[cum; Δũ]``, both exact for u ∈ {0, 1}); the input projection ``W_ih x + b`` is one batched
  GEMM per chunk of 16 steps;
* per chunk, the coefficients the backward needs (σ', tanh', h' - h, ...) are written into one
  ``(T, W, B)`` buffer in a few large ops, so the reverse loop reads them ready-made;
* backward, per step: one ``addmm`` (``W_hhᵀ dgates``) and about ten small ops, written in place
  into the chunk's GEMM operand; a step where no column of the batch updates skips the cell's
  part (its dgates are 0, the state gradient passes through); the weight, bias and input
  gradients are a few GEMMs per chunk while the chunk's dgates are still in cache;
* big work buffers come from a pool and are reused across calls (fresh multi-MB buffers are
  page-faulted on every call, which at the paper's sequential-MNIST shape costs as much as the
  whole recurrence); those that leave the forward op for the backward return to the pool only
  once nothing uses them: up to ``SKIPRNN_CPU_POOL_MB`` (default 2048) stay allocated between
  calls, :func:`release_cpu_buffers` frees them; under ``torch.no_grad`` the backward
  bookkeeping is skipped.

Supported: one layer, the deterministic gate with a float threshold τ (a ``(T, B)`` threshold
tensor works as well), ``forced is None``, ``constant_delta is None``, and ``max_skip`` (the floor
on Δũ); anything else raises ``ValueError`` (use the reference). ``dropout`` is accepted because
the reference applies it only *between* layers, so it never acts on one layer. The mask must be
binary (bool or 0/1). Gradients flow to ``x``, the weights and biases, ``gate_weight``,
``gate_bias``, the initial state, ``update_prob0`` and ``cum_prob0`` from every output. The
gradient of the ``min`` in ``ũ = cum + min(Δũ, 1 - cum)`` goes wholly to Δũ at exact ties, as
TensorFlow's (ũ itself is computed as ``min(cum + Δũ, 1)``, equal up to one rounding where the
clamp acts). A second backward through the same call (``retain_graph=True``) works; double
backward does not (the backward op has no autograd formula: it raises). The output is saved for
backward, so modifying it in place before ``backward`` raises.

Works on CUDA tensors as well, as a slow generic fallback (it launches many tiny kernels).
"""

from __future__ import annotations

import functools
import importlib
import os
import threading
from types import SimpleNamespace
from typing import Sequence

import torch
from torch import Tensor

from .contract import OP_LAYER_ARGS, OP_OUTPUTS, GateOptions, RecurrenceResult, check_cell
from .naive import check_cap_holds, floor_update_prob, update_prob_floor

__all__ = ["CpuCell", "KKLayout", "skip_rnn_cpu", "release_cpu_buffers", "pooled_output",
           "add_h_old_gemm", "add_input_grads", "register_cell", "cpu_rnn_forward",
           "cpu_rnn_backward"]


#: torch's count of a storage's users (a private function): without it (another torch version)
#: lent buffers are fresh memory, never pooled
_USE_COUNT = getattr(torch._C, "_storage_Use_Count", None)


def _storage_users(t: Tensor) -> int:
    """How many tensors share ``t``'s storage (``t`` included)."""
    return _USE_COUNT(t.untyped_storage()._cdata) - 1  # minus the temporary


class _BufferPool:
    """Reuse the big per-call work buffers of the fast paths across calls (CPU only; why: the
    module docstring). Two ways out of the pool, neither hands the same memory to two live users:

    * :meth:`get` / :meth:`put`: scratch buffers of one op call, handed back by the call itself
      (through a :class:`_Lease`) before it returns; they never escape the call.
    * :meth:`lend`: buffers that leave an op call as its outputs (the coefficients the backward
      reads, saved by autograd or held by a compiled graph). The caller gets a new tensor sharing
      a pooled tensor's storage; the pool takes the memory back only once no tensor but its own
      uses that storage (counted on the storage itself, so views, saved tensors and a compiled
      graph's references all keep it out), and only then writes it again. An op output therefore
      never aliases memory that is overwritten while anything can still read it.

    Up to ``max_bytes`` of free buffers are kept (least recently used shapes are dropped first).
    Set ``SKIPRNN_CPU_POOL_MB=0`` to disable.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._free: dict = {}  # (shape, dtype) -> list of tensors, in LRU order (dict order)
        self._lent: list = []  # pooled tensors whose storage was lent out (see lend)
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, shape, like: Tensor) -> Tensor:
        shape = tuple(shape)
        if like.device.type == "cpu" and self.max_bytes > 0:
            key = (shape, like.dtype)
            self._reclaim()
            with self._lock:
                lst = self._free.pop(key, None)
                if lst:
                    t = lst.pop()
                    self._bytes -= t.numel() * t.element_size()
                    if lst:
                        self._free[key] = lst  # most recently used last
                    return t
        return torch.empty(shape, dtype=like.dtype, device=like.device)

    def lend(self, shape, like: Tensor) -> Tensor:
        """A tensor of ``shape`` (``like``'s dtype and device) whose memory returns to the pool
        by itself once nothing uses it any more (fresh memory off the CPU or without a pool)."""
        if _USE_COUNT is None:
            return torch.empty(tuple(shape), dtype=like.dtype, device=like.device)
        t = self.get(shape, like)
        if t.device.type != "cpu" or t.numel() * t.element_size() > self.max_bytes:
            return t
        with self._lock:
            self._lent.append(t)
        return torch.empty(0, dtype=t.dtype, device=t.device).set_(t)

    def _reclaim(self) -> None:
        """Put back the lent tensors whose storage only the pool still uses."""
        with self._lock:
            if not self._lent:
                return
            back, kept = [], []
            for t in self._lent:
                (back if _storage_users(t) == 1 else kept).append(t)
            self._lent = kept
        if back:
            self.put(back)

    def put(self, tensors) -> None:
        with self._lock:
            for t in tensors:
                if t is None or t.device.type != "cpu":
                    continue
                nbytes = t.numel() * t.element_size()
                if nbytes > self.max_bytes:
                    continue
                key = (tuple(t.shape), t.dtype)
                lst = self._free.pop(key, [])
                lst.append(t)
                self._free[key] = lst  # most recently used last
                self._bytes += nbytes
                while self._bytes > self.max_bytes:  # evict least recently used
                    old = next(iter(self._free))
                    lst = self._free[old]
                    gone = lst.pop(0)
                    self._bytes -= gone.numel() * gone.element_size()
                    if not lst:
                        del self._free[old]

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._lent = []  # their users free them
            self._bytes = 0


_POOL = _BufferPool(int(float(os.environ.get("SKIPRNN_CPU_POOL_MB", "2048")) * 2**20))


def pooled_output(shape, like: Tensor) -> Tensor:
    """A tensor of ``shape`` (``like``'s dtype and device) for an output of a no-grad call: its
    memory comes back to the pool once nothing uses it and serves a later call's output, already
    paged in (:meth:`_BufferPool.lend`; fresh memory off the CPU). A (T, B, H) output of a
    batched sequential-MNIST call is 88 MB: its first touch cost ~37 ms of a ~60 ms call."""
    return _POOL.lend(shape, like)


def release_cpu_buffers() -> None:
    """Drop the work buffers the CPU fast paths keep for reuse (up to ``SKIPRNN_CPU_POOL_MB``,
    2048 by default, are kept between calls; 0 keeps none)."""
    _POOL.clear()


class _Lease:
    """Buffers checked out of the pool for one call; handed back once (on release or on GC)."""

    def __init__(self, like: Tensor):
        self.like = like
        self.bufs: list = []

    def new(self, *shape) -> Tensor:
        t = _POOL.get(shape, self.like)
        self.bufs.append(t)
        return t

    def release(self) -> None:
        bufs, self.bufs = self.bufs, []
        _POOL.put(bufs)

    def __del__(self):
        try:
            self.release()
        except Exception:  # interpreter shutdown
            pass


CHUNK = 16  # time steps per chunk: per-step work lives in small fixed buffers, flushed per chunk


def _thresholds(threshold, mask, T, B, like):
    """Threshold τ as a tensor: ``(T, 1, B)`` per step (``+inf`` on padded steps: never an
    update) when a mask or a tensor threshold is given, else ``(1, 1)``."""
    if isinstance(threshold, Tensor) and threshold.dim() > 0:
        thr = threshold.detach().to(like).expand(T, B).reshape(T, 1, B).clone()
    elif mask is None:
        return like.new_full((1, 1), float(threshold))
    else:
        thr = like.new_full((T, 1, B), float(threshold))
    if mask is not None:
        thr.masked_fill_(~mask.view(T, 1, B).bool(), float("inf"))
    return thr


def add_h_old_gemm(dW, dgp, Hh, h0, t0, n, B, H):
    """dW += dgates · h_oldᵀ for steps t0..t0+n-1 (h_old = h0 at step 0, else Hh[t-1]);
    ``dgp`` ``(rows, n B)``, ``Hh`` ``(T, B, H)``, ``h0`` ``(B, H)``."""
    if t0 > 0:
        dW.addmm_(dgp, Hh[t0 - 1:t0 + n - 1].view(n * B, H))
        return
    dW.addmm_(dgp[:, :B], h0)
    if n > 1:
        dW.addmm_(dgp[:, B:n * B], Hh[:n - 1].view((n - 1) * B, H))


def add_input_grads(bw, parts, t0, n):
    """The chunk's input-side gradients, for steps t0..t0+n-1: ``bw.dWibT`` ``(I + 1, G H)``
    ``+= [x | 1]ᵀ dgatesᵀ`` (the transposed gradient of ``[W_ih | b]``) and ``bw.dxT`` ``(I, T B)``
    ``= W_ihᵀ dgates``. ``parts``: ``(dgates rows (R, n B), W_ih rows (a slice))`` pairs, the rows
    of the chunk's dgates that act on those rows of W_ih. (Both GEMMs are computed transposed:
    with I of 1 to 3 the long dimension n B is then the output's, several times faster.)"""
    cols = slice(t0 * bw.B, (t0 + n) * bw.B)
    xa, dxc = bw.xaT[:, cols], bw.dxT[:, cols]
    for k, (dg, rows) in enumerate(parts):
        bw.dWibT[:, rows].addmm_(xa, dg.t())
        if k == 0:
            torch.mm(bw.WiT[:, rows], dg, out=dxc)
        else:
            dxc.addmm_(bw.WiT[:, rows], dg)


class KKLayout:
    """Row layout of the per-step block the reverse loop reads (``KK[t]``, ``(W, B)``):
    ``[state' - state (S rows) | Δũ'-Δũ, 1-u-ũ | cell coefficients (from row CO) | kz | u | 1-u |
    1-m | pu | m | cell extra rows (from row X)]``. The first ``S + 2`` rows dotted with the
    running gradient ``[dstate | dup | dcum]``, plus the gradient reaching u and ũ directly, give
    dũ; the cell says what its rows hold. (The backward only reads this block: it is an input of
    the backward op, which must not write its inputs.)
    """

    def __init__(self, state_rows: int, coef_rows: int, extra_rows: int = 0):
        self.S = state_rows
        self.CO = state_rows + 2
        self.KZ = self.CO + coef_rows
        self.U = self.KZ + 1
        self.C2 = self.KZ + 2  # [1 - u, 1 - m]
        self.PU = self.KZ + 4
        self.M = self.KZ + 5
        self.X = self.KZ + 6
        self.W = self.X + extra_rows


class CpuCell:
    """What one cell adds to the shared CPU path (subclassed in ``skip_lstm/cpu.py`` and
    ``skip_gru/cpu.py``). Work tensors are feature-major (``(features, B)`` per step); ``fw`` /
    ``bw`` are one call's shared buffers (:func:`_forward_work`, :func:`_backward_work`).

    * ``key``, its name for the ops (:func:`register_cell`); ``gates`` (gate blocks of
      W_ih / W_hh); ``has_c`` (the state rows are ``[h; c]``, else ``h``); ``saves_extra``
      (``forward_ops`` sets ``fw.extra``, ``(T, B, H)``); ``layout(H)``: its :class:`KKLayout`;
    * ``feature(cand, H)``: the rows of a candidate ``(C, state rows, B)`` the gate reads;
    * ``projection(w_ih, w_hh, b_ih, b_hh)`` -> ``(Wi (G H, I), Wh, bias (G H, 1) | None,
      b_extra)``: the chunk GEMM's operands in the cell's row order, W_hh, a per-step bias;
    * ``forward_ops(fw)`` -> ``(projected(n) | None, step(j), flush(kk, t0, n))``: after the
      chunk's input GEMM into ``fw.A[:n]``; step j's candidate into ``fw.CAND[j]`` from the state
      ``fw.ST[j]``; with ``fw.train`` the chunk's cell rows of ``kk`` (rows ``[:S]`` hold
      ``cand - state`` already); may set ``fw.extra``, a tensor handed to the backward;
    * ``backward_ops(bw, with_step=True)`` -> ``(step(j, t, cur) | None, chunk(dgp, t0, n),
      param_grads(has_bias))`` (no step without ``with_step``; a step reads :func:`_step_views`):
      given ``dz`` of step t, its dgates into ``bw.WDG[j]`` and the state rows of the next running
      gradient (``bw.Sn`` if ``cur`` is 0, else ``bw.S``); the chunk's weight and input gradients
      from ``dgp`` ``(4H, n B)``; finally ``(dW_ih, dW_hh, db_ih, db_hh)``.
    """

    key: str
    gates: int
    has_c: bool
    saves_extra: bool = False

    def fused_forward(self, fw, x, gw, gb, M, thr, floor):
        """``run(t0, n)``: a chunk fused (its input projection, its steps' candidates and
        update gates, what :func:`_flush_chunk` writes for them and the carry to the next
        chunk), or None (the per-step torch ops of :func:`_forward_chunks` then run)."""
        return None

    def fused_backward(self, bw, g_gate, M):
        """``run(t0, n, cur) -> cur``: a chunk's reverse steps fused, or None (see
        :func:`_backward_chunks`)."""
        return None


def _gate_flush(kk, sc, L, M_chunk, one, floor=None):
    """Per-step scalar coefficients of the reverse loop, for a chunk (rows of ``kk``). ``floor``:
    the Δũ floor of ``max_skip`` (None: none); ∂Δũ/∂(W_p z + b_p) is 0 where it is active."""
    cum_o, ut, up_o, dl, u = (sc[:, k:k + 1] for k in (0, 1, 2, 4, 5))
    torch.sub(dl, up_o, out=kk[:, L.S:L.S + 1])
    omu = kk[:, L.C2:L.C2 + 1]
    torch.sub(one, u, out=omu)
    torch.sub(omu, ut, out=kk[:, L.S + 1:L.S + 2])
    kz = kk[:, L.KZ:L.KZ + 1]
    torch.addcmul(dl, dl, dl, value=-1, out=kz)
    kz.mul_(u)
    if floor is not None:  # Δũ = max(σ, c): σ' where σ > c (Δũ > c), else 0 (floor_update_prob)
        kz.mul_(torch.gt(dl, floor))
    kk[:, L.U:L.U + 1] = u
    a = torch.sub(one, cum_o)
    pu = kk[:, L.PU:L.PU + 1]
    torch.le(up_o, a, out=pu)  # ∂ũ/∂Δũ = ∂ũ/∂cum: 1 where Δũ <= 1 - cum (TF's min at a tie), else 0
    if M_chunk is None:
        kk[:, L.C2 + 1] = 0
        kk[:, L.M] = 1
    else:
        torch.sub(one, M_chunk, out=kk[:, L.C2 + 1:L.C2 + 2])
        kk[:, L.M:L.M + 1] = M_chunk


# ---------------------------------------------------------------------------------- forward

def _forward_work(cell, x, h0, c0, up0, cum0, mask, train):
    """The forward's shared buffers: ``A`` (C, G H, B) gate pre-activations; ``ST`` (C+1, S, B)
    state before / after each step of the chunk; ``CAND`` (C, S, B) candidate; ``WSC`` (C+1, 6, B)
    per-step rows ``[cum_in, ũ, Δũ_in, 0, Δũ_cand, u]``; ``Hh`` (T, B, H) h after every step;
    ``SC`` (T, 6, B) every step's ``WSC`` rows; with ``train`` ``KK`` (T, W, B) and ``CC``
    (T, H, B) the feature the gate read. The big ones that outlive the call (``Hh`` under a mask,
    ``KK``, ``CC``, a cell's ``extra``) are lent by the pool (:meth:`_BufferPool.lend`)."""
    T, B, I = x.shape
    H = h0.shape[-1]
    C, L = min(CHUNK, T), cell.layout(H)
    new = x.new_empty

    def big(*shape):
        return _POOL.lend(shape, x)

    fw = SimpleNamespace(T=T, B=B, I=I, H=H, C=C, L=L, train=train, new=new, big=big, extra=None)
    fw.A, fw.ST, fw.CAND = new(C, cell.gates * H, B), new(C + 1, L.S, B), new(C, L.S, B)
    fw.WSC = new(C + 1, 6, B)
    fw.ST[0, :H] = h0[0].t()
    if c0 is not None:
        fw.ST[0, H:] = c0[0].t()
    fw.WSC[:, 3] = 0
    fw.WSC[0, 2] = up0
    fw.WSC[0, 0] = cum0
    # h after every step: the output itself without a mask (saved, so an in-place change of it is
    # caught), else a work buffer; with h0 it is the operand of the dW_hh GEMM
    fw.Hh = x.new_empty(T, B, H) if mask is None else big(T, B, H)
    fw.SC = new(T, 6, B)
    fw.KK = big(T, L.W, B) if train else None  # everything the reverse loop reads
    fw.CC = big(T, H, B) if train else None  # the gate's input (for its weight gradient)
    fw.one = x.new_ones(1, 1)
    return fw


def _forward_chunks(cell, fw, x, gw, gb, M, thr, floor):
    """The time loop: per chunk one input GEMM, per step the cell's candidate and the update
    gate (``u = 1[ũ > τ]``, state and ``[cum; Δũ]`` mixed by u), then the chunk's flush."""
    T, C = fw.T, fw.C
    A, ST, CAND, WSC = fw.A, fw.ST, fw.CAND, fw.WSC
    fused = cell.fused_forward(fw, x, gw, gb, M, thr, floor)
    if fused is not None:  # it projects, writes what the flush would and carries
        for t0 in range(0, T, C):
            fused(t0, min(C, T - t0))
        return
    projected, cell_step, cell_flush = cell.forward_ops(fw)
    thr_ = thr.unbind(0) if thr.dim() == 3 else [thr] * T
    m_ = M.unbind(0) if M is not None else None
    st_, cand_, feat_ = ST.unbind(0), CAND.unbind(0), cell.feature(CAND, fw.H).unbind(0)
    cum_, ut_, up_, dl_, u_ = (WSC[:, k:k + 1].unbind(0) for k in (0, 1, 2, 4, 5))
    sv_, en_, nx_ = WSC[:, 1:3].unbind(0), WSC[:, 3:5].unbind(0), WSC[:, 0:3:2].unbind(0)
    for t0 in range(0, T, C):
        n = min(C, T - t0)
        input_projection(fw, x, t0, n)
        if projected is not None:
            projected(n)
        for j in range(n):
            t = t0 + j
            ut, u, dl = ut_[j], u_[j], dl_[j]
            cell_step(j)
            # ũ = cum + min(Δũ, 1 - cum) = min(cum + Δũ, 1)
            torch.add(cum_[j], up_[j], out=ut)
            ut.clamp_max_(1)
            if m_ is not None:  # padded steps: ũ row carries cum, so cum' = cum
                torch.lerp(cum_[j], ut, m_[t], out=ut)
            torch.gt(ut, thr_[t], out=u)
            torch.lerp(st_[j], cand_[j], u, out=st_[j + 1])  # exact: u is 0 or 1
            torch.addmm(gb, gw, feat_[j], out=dl)
            dl.sigmoid_()
            if floor is not None:  # max_skip: the value of ops.naive.floor_update_prob
                dl.clamp_min_(floor)
            # [cum'; Δũ'] = [ũ; Δũ] + u ([0; Δũ_cand] - [ũ; Δũ]) in one op, exact for u in {0, 1}
            torch.lerp(sv_[j], en_[j], u, out=nx_[j + 1])
        _flush_chunk(cell, fw, cell_flush, M, t0, n, floor)


def input_projection(fw, x, t0, n):
    """``A[:n]`` = the chunk's ``W_ih x_t + b`` (one batched GEMM)."""
    xT = x[t0:t0 + n].transpose(1, 2)
    Wib = fw.Wi.expand(n, *fw.Wi.shape)
    if fw.bias is None:
        torch.bmm(Wib, xT, out=fw.A[:n])
    else:
        torch.baddbmm(fw.bias, Wib, xT, out=fw.A[:n])


def _flush_chunk(cell, fw, cell_flush, M, t0, n, floor):
    """Copy the chunk's h and gate rows out; with ``train`` write its backward coefficients; carry
    the last step's state and ``[cum, Δũ]`` to row 0 for the next chunk."""
    fw.Hh[t0:t0 + n] = fw.ST[1:n + 1, :fw.H].transpose(1, 2)
    fw.SC[t0:t0 + n] = fw.WSC[:n]
    if fw.train:
        kk = fw.KK[t0:t0 + n]
        torch.sub(fw.CAND[:n], fw.ST[:n], out=kk[:, :fw.L.S])
        cell_flush(kk, t0, n)
        fw.CC[t0:t0 + n] = cell.feature(fw.CAND[:n], fw.H)
        _gate_flush(kk, fw.WSC[:n], fw.L, None if M is None else M[t0:t0 + n], fw.one, floor)
    carry(fw, n)


def carry(fw, n):
    """The state and ``[cum, Δũ]`` after the chunk's last step become row 0 of the next."""
    fw.ST[0] = fw.ST[n]
    fw.WSC[0, 0:3:2] = fw.WSC[n, 0:3:2]


def _forward_results(fw, M, has_c):
    """``(output (T, B, H), h_n (1, B, H), c_n (1, B, H) | None, Δũ_n (B,), cum_n (B,),
    updates (T, B), ũ (T, B))``; padded steps give 0 outputs and probabilities."""
    T, B, H = fw.T, fw.B, fw.H
    if M is None:
        output, probs = fw.Hh, fw.SC[:, 1].clone()
    else:
        output, probs = fw.Hh * M.view(T, B, 1), fw.SC[:, 1] * M[:, 0]
    h_n = fw.ST[0, :H].t().unsqueeze(0).clone()
    c_n = fw.ST[0, H:].t().unsqueeze(0).clone() if has_c else None
    return (output, h_n, c_n, fw.WSC[0, 2].clone(), fw.WSC[0, 0].clone(), fw.SC[:, 5].clone(),
            probs)


# --------------------------------------------------------------------------------- backward

def _backward_work(cell, x, Wi, Wh, gw, Hh, h0, KK, extra, tmp_lease):
    """The backward's shared buffers: running gradients ``S``, ``Sn`` ``(S rows + 2, B)`` =
    ``[dstate; dup; dcum]``; ``DGP`` (4H, C B) the chunk's dgates, step j in columns
    ``j B:(j + 1) B`` (the layout of its weight / input GEMMs), and ``WDG`` (C, 4H, B) a view of
    it, step j's dgates ``WDG[j]`` (rows contiguous, row stride C B); ``WGO`` (C+1, H, B) output gradients of steps t0-1 .. t0+n-1; ``DZ``
    (T, 1, B) the gate pre-activation's gradient; ``xaT`` (I+1, T B) ``[x | 1]ᵀ``, ``WiT`` (I, G H),
    ``dWibT`` (I+1, G H), ``dxT`` (I, T B) and ``dx`` (T, B, I), a view of it (see
    :func:`add_input_grads`)."""
    T, B, I = x.shape
    H = Hh.shape[2]
    C, L, new = min(CHUNK, T), cell.layout(H), x.new_empty
    bw = SimpleNamespace(T=T, B=B, I=I, H=H, C=C, L=L, new=new, x=x, Wi=Wi, Wh=Wh, Hh=Hh,
                         h0=h0, KK=KK, extra=extra, gwT=gw.t())
    bw.S, bw.Sn = new(L.S + 2, B), new(L.S + 2, B)
    bw.DGP, bw.WGO = new(4 * H, C * B), new(C + 1, H, B)
    bw.WDG = bw.DGP.view(4 * H, C, B).permute(1, 0, 2)  # written in place: no copy per chunk
    bw.DZ = tmp_lease.new(T, 1, B)
    bw.xaT = tmp_lease.new(I + 1, T * B)  # [x | 1]ᵀ: one GEMM gives dW_ih and the bias gradient
    bw.xaT[:I] = x.reshape(T * B, I).t()
    bw.xaT[I] = 1
    bw.WiT, bw.dWibT, bw.dxT = Wi.t().contiguous(), x.new_zeros(I + 1, Wi.shape[0]), new(I, T * B)
    bw.dx = bw.dxT.t().view(T, B, I)
    return bw


def _step_views(bw):
    """Per-step views the Python reverse steps read (``u``, ``1 - u``, ``dz``, output grads)."""
    L, KK = bw.L, bw.KK
    bw.u_, bw.omu_ = KK[:, L.U:L.U + 1].unbind(0), KK[:, L.C2:L.C2 + 1].unbind(0)
    bw.dz_, bw.go_ = bw.DZ.unbind(0), bw.WGO.unbind(0)


def _init_running_grad(bw, g_out, g_hn, g_cn, g_up, g_cum, M):
    """S = the gradient of the final state and of the last step's output."""
    S, H, L, T = bw.S, bw.H, bw.L, bw.T
    last = g_out[T - 1] if M is None else g_out[T - 1] * M[T - 1].t()
    torch.add(g_hn[0], last, out=S[:H].t())
    if L.S > H:
        S[H:L.S] = g_cn[0].t()
    S[L.S] = g_up
    S[L.S + 1] = g_cum


def _output_grads(bw, g_out, M, t0, n):
    """``WGO[j]`` = the output gradient of step t0+j-1 (0 before step 0: h_old is h0 there)."""
    lo = max(t0 - 1, 0)
    src = g_out[lo:t0 + n].transpose(1, 2)
    dst = bw.WGO[1 if t0 == 0 else 0:n + 1]
    if M is not None:
        torch.mul(src, M[lo:t0 + n], out=dst)
    else:
        dst.copy_(src)
    if t0 == 0:
        bw.WGO[0].zero_()


def _held_step(bw, j, s, sn):
    """Step j of the chunk where no column updates (u = 0 everywhere): the state was held, so
    its dgates are 0 (``dz`` = 0 and ``u dstate'`` = 0) and the state gradient passes through,
    ``dstate = dstate'`` plus the output gradient on the h rows; what the cell's step gives for
    u = 0, without its GEMM. ``s``, ``sn``: the running gradient after / before the step."""
    S, H = bw.L.S, bw.H
    bw.WDG[j].zero_()
    torch.add(s[:H], bw.go_[j], out=sn[:H])
    if S > H:
        sn[H:S] = s[H:S]


def _backward_chunks(cell, bw, g_out, g_gate, M):
    """The reverse loop: per step dũ and dz (the gate), the cell's dgates and state gradient
    (:func:`_held_step` where no column updates), the gradient of ``[cum, Δũ]``; per chunk the
    cell's weight and input gradients. ``g_gate`` ``(T, 1, B)``: the gradient reaching u and ũ
    directly. Returns the final running gradient (that of the initial state)."""
    T, C, B, H, L, KK = bw.T, bw.C, bw.B, bw.H, bw.L, bw.KK
    fused = cell.fused_backward(bw, g_gate, M)
    if fused is not None:
        _, cell_chunk, param_grads = cell.backward_ops(bw, with_step=False)
        cur = 0
        for t0 in reversed(range(0, T, C)):
            n = min(C, T - t0)
            _output_grads(bw, g_out, M, t0, n)
            cur = fused(t0, n, cur)
            cell_chunk(bw.DGP[:, :n * B], t0, n)
        return (bw.S, bw.Sn)[cur], param_grads
    _step_views(bw)
    cell_step, cell_chunk, param_grads = cell.backward_ops(bw)
    views = [(s, s[L.S:L.S + 1], s[L.S:L.S + 2]) for s in (bw.S, bw.Sn)]
    dext_, gg_ = KK[:, :L.S + 2].unbind(0), g_gate.unbind(0)
    kz_, c2_, pu_, m_ = (KK[:, k:k + w].unbind(0) for k, w in (
        (L.KZ, 1), (L.C2, 2), (L.PU, 1), (L.M, 1)))
    dut, dz_ = bw.new(1, B), bw.dz_
    dut_flat = dut.view(B)
    masked = M is not None
    cur = 0
    for t0 in reversed(range(0, T, C)):
        n = min(C, T - t0)
        _output_grads(bw, g_out, M, t0, n)
        updated = KK[t0:t0 + n, L.U].any(1).tolist()  # does any column update at step t0 + j
        for j in range(n - 1, -1, -1):
            t = t0 + j
            s, dup, ssc = views[cur]
            torch.linalg.vecdot(dext_[t], s, dim=0, out=dut_flat)
            dut.add_(gg_[t])
            if masked:
                dut.mul_(m_[t])
            torch.mul(dup, kz_[t], out=dz_[t])
            if updated[j]:
                cell_step(j, t, cur)
            else:
                _held_step(bw, j, s, views[1 - cur][0])
            snsc = views[1 - cur][2]
            torch.mul(ssc, c2_[t], out=snsc)
            snsc.addcmul_(dut, pu_[t])
            cur = 1 - cur
        # the chunk's share of the weight / input gradients, while dgates are hot
        cell_chunk(bw.DGP[:, :n * B], t0, n)
    return views[cur][0], param_grads


# ------------------------------------------------------------------------ forward / backward

def _forward(cell, x, h0, c0, up0, cum0, w_ih, w_hh, b_ih, b_hh, gw, gb, mask, threshold, train,
             floor):
    """One layer's forward (feature-major inside): :func:`cpu_rnn_forward`'s first seven outputs
    (None for c_n without a c) and what the backward reads, ``(Hh, KK, CC, extra)`` (None where
    absent; ``Hh``: h after every step, the output itself without a mask)."""
    T, B, _ = x.shape
    fw = _forward_work(cell, x, h0, c0, up0, cum0, mask, train)
    fw.Wi, fw.Wh, fw.bias, fw.b_extra = cell.projection(w_ih, w_hh, b_ih, b_hh)
    M = mask.to(x.dtype).view(T, 1, B) if mask is not None else None
    _forward_chunks(cell, fw, x, gw, gb, M, _thresholds(threshold, mask, T, B, x), floor)
    return _forward_results(fw, M, cell.has_c), (fw.Hh, fw.KK, fw.CC, fw.extra)


def _backward(cell, x, h0, w_ih, w_hh, has_bias, gw, mask, Hh, KK, CC, extra, g_out, g_hn, g_cn,
              g_up, g_cum, g_gate):
    """One layer's backward from what :func:`_forward` saved; reads its inputs, writes none.
    Returns :func:`cpu_rnn_backward`'s gradients (None where absent)."""
    T, B, _ = x.shape
    Wi, Wh, _, _ = cell.projection(w_ih, w_hh, None, None)
    M = mask.to(x.dtype).view(T, 1, B) if mask is not None else None
    tmp_lease = _Lease(x)
    bw = _backward_work(cell, x, Wi, Wh, gw, Hh, h0[0], KK, extra, tmp_lease)
    L, H = bw.L, bw.H
    _init_running_grad(bw, g_out, g_hn, g_cn, g_up, g_cum, M)
    S, param_grads = _backward_chunks(cell, bw, g_out, g_gate.view(T, 1, B), M)
    grads = (
        bw.dx,
        S[:H].t().unsqueeze(0).clone(),
        S[H:L.S].t().unsqueeze(0).clone() if cell.has_c else None,
        S[L.S].clone(),
        S[L.S + 1].clone(),
        *param_grads(has_bias),
        torch.bmm(CC, bw.DZ.transpose(1, 2)).sum(0).t(),
        bw.DZ.sum().view(1),
    )
    del bw
    tmp_lease.release()
    return grads


# ------------------------------------------------------------------ torch.library custom ops
#
# Both ops always return 11 tensors; an output a call does not have is an empty ``(0,)`` tensor.
# No output aliases an input, another output or pool memory that is written again while the
# output lives (see :class:`_BufferPool`); the backward only reads its inputs.

_CELL_MODULES = {"lstm": "skiprnn.ops.skip_lstm.cpu", "gru": "skiprnn.ops.skip_gru.cpu",
                 "gru_paper": "skiprnn.ops.skip_gru.cpu"}
_CELLS: dict = {}


def register_cell(cell: CpuCell) -> CpuCell:
    """Make ``cell`` reachable by its ``key`` from the ops (the cell modules call this)."""
    _CELLS[cell.key] = cell
    return cell


def _cell(key: str) -> CpuCell:
    if key not in _CELLS:
        if key not in _CELL_MODULES:
            raise ValueError(f"unknown CPU cell {key!r}; one of {sorted(_CELL_MODULES)}")
        importlib.import_module(_CELL_MODULES[key])
    return _CELLS[key]


def _op_out(x, t):
    """An op output: ``t`` contiguous, or the empty ``(0,)`` for None."""
    return x.new_empty(0) if t is None else t.contiguous()


def _fake_out(x, *shape, when=True):
    """An output of a fake kernel: ``shape``, or the empty ``(0,)`` where ``when`` is false."""
    return x.new_empty(shape if when else (0,))


@torch.library.custom_op(
    "skiprnn::cpu_rnn_forward", mutates_args=(),
    schema=f"({OP_LAYER_ARGS}, Tensor? step_thresholds, float? delta_floor, bool train) -> "
           + OP_OUTPUTS)
def cpu_rnn_forward(cell, x, h0, c0, update_prob0, cum_prob0, w_ih, w_hh, b_ih, b_hh,
                    gate_weight, gate_bias, mask, threshold, step_thresholds, delta_floor, train):
    """One Skip RNN layer on the CPU path (the op; :func:`skip_rnn_cpu` is the user function).

    ``cell``: ``'lstm'``, ``'gru'`` or ``'gru_paper'`` (``reset_after=False``); ``x`` ``(T, B,
    I)``; ``h0`` / ``c0`` ``(1, B, H)`` (``c0`` None for a GRU); ``update_prob0``, ``cum_prob0``
    ``(B,)``; weights as nn.LSTM's / nn.GRU's; ``gate_weight`` ``(1, H)``, ``gate_bias`` ``(1,)``;
    ``mask`` ``(T, B)`` binary or None; ``threshold`` τ, or ``step_thresholds`` ``(T, B)`` when
    given; ``delta_floor`` the Δũ floor of ``max_skip`` (None: none); ``train``: also return what
    the backward reads.

    Returns ``(output (T, B, H), h_n (1, B, H), c_n (1, B, H) | (0,), Δũ_n (B,), cum_n (B,),
    updates (T, B), ũ (T, B), Hh (T, B, H) | (0,), KK (T, W, B) | (0,), CC (T, H, B) | (0,),
    extra (T, B, H) | (0,))``: the last four are the backward's inputs (``Hh``: h after every step,
    only under a mask, where it differs from the output; ``KK``, ``CC``, ``extra`` only with
    ``train``, ``extra`` only for ``'gru_paper'``)."""
    cl = _cell(cell)
    thr = threshold if step_thresholds is None else step_thresholds
    res, (Hh, KK, CC, extra) = _forward(cl, x, h0, c0, update_prob0, cum_prob0, w_ih, w_hh, b_ih,
                                        b_hh, gate_weight, gate_bias, mask, thr, train,
                                        delta_floor)
    return tuple(_op_out(x, t)
                 for t in (*res, Hh if train and mask is not None else None, KK, CC, extra))


@cpu_rnn_forward.register_fake
def _cpu_rnn_forward_fake(cell, x, h0, c0, update_prob0, cum_prob0, w_ih, w_hh, b_ih, b_hh,
                          gate_weight, gate_bias, mask, threshold, step_thresholds, delta_floor,
                          train):
    cl, (T, B, _), H = _cell(cell), x.shape, w_hh.shape[1]
    new = functools.partial(_fake_out, x)
    return (new(T, B, H), new(1, B, H), new(1, B, H, when=cl.has_c), new(B), new(B), new(T, B),
            new(T, B), new(T, B, H, when=train and mask is not None),
            new(T, cl.layout(H).W, B, when=train), new(T, H, B, when=train),
            new(T, B, H, when=train and cl.saves_extra))


@torch.library.custom_op(
    "skiprnn::cpu_rnn_backward", mutates_args=(),
    schema="(str cell, Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, bool has_b_ih, "
           "bool has_b_hh, Tensor gate_weight, Tensor? mask, Tensor hh, Tensor kk, Tensor cc, "
           "Tensor extra, Tensor g_output, Tensor g_h_n, Tensor? g_c_n, Tensor g_update_prob, "
           "Tensor g_cum_prob, Tensor g_gate) -> " + OP_OUTPUTS)
def cpu_rnn_backward(cell, x, h0, w_ih, w_hh, has_b_ih, has_b_hh, gate_weight, mask, hh, kk, cc,
                     extra, g_output, g_h_n, g_c_n, g_update_prob, g_cum_prob, g_gate):
    """The backward of :func:`cpu_rnn_forward` (an op as well, so compiled graphs hold it as one
    node). ``hh``, ``kk``, ``cc``, ``extra``: what the forward returned for it (``hh``: the output
    without a mask); ``g_*``: the gradients of the forward's outputs (``g_gate`` ``(T, B)``: of
    the updates plus of ũ). Reads its inputs only.

    Returns the gradients ``(x (T, B, I), h0 (1, B, H), c0 (1, B, H) | (0,), update_prob0 (B,),
    cum_prob0 (B,), w_ih, w_hh, b_ih (G H,) | (0,), b_hh | (0,), gate_weight (1, H),
    gate_bias (1,))``."""
    cl = _cell(cell)
    if kk.numel() == 0:
        raise RuntimeError("cpu_rnn_backward needs what cpu_rnn_forward saves with train=True")
    grads = _backward(cl, x, h0, w_ih, w_hh, (has_b_ih, has_b_hh), gate_weight, mask, hh, kk, cc,
                      extra if cl.saves_extra else None, g_output, g_h_n, g_c_n, g_update_prob,
                      g_cum_prob, g_gate)
    return tuple(_op_out(x, g) for g in grads)


@cpu_rnn_backward.register_fake
def _cpu_rnn_backward_fake(cell, x, h0, w_ih, w_hh, has_b_ih, has_b_hh, gate_weight, mask, hh,
                           kk, cc, extra, g_output, g_h_n, g_c_n, g_update_prob, g_cum_prob,
                           g_gate):
    cl, (T, B, _), (GH, H) = _cell(cell), x.shape, w_hh.shape
    new = functools.partial(_fake_out, x)
    return (new(*x.shape), new(1, B, H), new(1, B, H, when=cl.has_c), new(B), new(B),
            new(*w_ih.shape), new(*w_hh.shape), new(GH, when=has_b_ih), new(GH, when=has_b_hh),
            new(1, H), new(1))


def _setup_context(ctx, inputs, output):
    (cell, x, h0, c0, up0, cum0, w_ih, w_hh, b_ih, b_hh, gw, gb, mask, _, _, _, train) = inputs
    out, hh, kk, cc, extra = output[0], *output[7:]
    ctx.mark_non_differentiable(hh, kk, cc, extra)
    ctx.set_materialize_grads(False)  # else autograd zero-fills a gradient of KK (T, W, B)
    ctx.cell, ctx.train, ctx.has_c = cell, train, c0 is not None
    ctx.has_bias = (b_ih is not None, b_hh is not None)
    ctx.shapes = (up0.shape, cum0.shape, gw.shape, gb.shape)
    ctx.save_for_backward(x, h0, w_ih, w_hh, gw, mask, out if mask is None else hh, kk, cc, extra)


def _cpu_rnn_autograd(ctx, g_out, g_hn, g_cn, g_up, g_cum, g_u, g_ut, *_):
    if not ctx.train:
        raise RuntimeError("cpu_rnn_forward was called with train=False: it saved nothing for a "
                           "backward (skip_rnn_cpu sets train whenever an input requires grad)")
    x, h0, w_ih, w_hh, gw, mask, hh, kk, cc, extra = ctx.saved_tensors
    T, B, _ = x.shape
    H = w_hh.shape[1]

    def grad(g, *shape):
        return x.new_zeros(shape) if g is None else g

    dx, dh0, dc0, dup, dcum, dwi, dwh, dbi, dbh, dgw, dgb = cpu_rnn_backward(
        ctx.cell, x, h0, w_ih, w_hh, *ctx.has_bias, gw, mask, hh, kk, cc, extra,
        grad(g_out, T, B, H), grad(g_hn, 1, B, H), grad(g_cn, 1, B, H) if ctx.has_c else None,
        grad(g_up, B), grad(g_cum, B), grad(g_u, T, B) + grad(g_ut, T, B))
    up_shape, cum_shape, gw_shape, gb_shape = ctx.shapes
    return (None, dx, dh0, dc0 if ctx.has_c else None, dup.view(up_shape), dcum.view(cum_shape),
            dwi, dwh, dbi if ctx.has_bias[0] else None, dbh if ctx.has_bias[1] else None,
            dgw.view(gw_shape), dgb.view(gb_shape), None, None, None, None, None)


cpu_rnn_forward.register_autograd(_cpu_rnn_autograd, setup_context=_setup_context)


def skip_rnn_cpu(cell: str, x: Tensor, state: tuple, update_prob0: Tensor, cum_prob0: Tensor,
                 layers: Sequence[tuple], gate_weight: Tensor, gate_bias: Tensor,
                 opts: GateOptions = GateOptions()) -> RecurrenceResult:
    """The CPU backend: checks, then the op :func:`cpu_rnn_forward`. Arguments and result:
    :mod:`skiprnn.ops.contract` (one layer: ``state`` tensors ``(1, B, H)``). Raises
    ``ValueError`` for several layers, ``forced`` gates or ``constant_delta`` (the reference
    handles those). Double backward is not supported."""
    check_cell(cell, state, opts)
    threshold, max_skip = opts.threshold, opts.max_skip
    name = f"skip_rnn_cpu({cell!r})"
    if len(layers) != 1:
        raise ValueError(f"{name} supports one layer, got {len(layers)}; use the reference")
    if opts.forced is not None:
        raise ValueError(f"{name} does not support forced gates; use the reference")
    if opts.constant_delta is not None:
        raise ValueError(f"{name} does not support constant_delta; use the reference")
    if isinstance(threshold, Tensor) and threshold.dim() == 0:
        threshold = float(threshold)
    check_cap_holds(max_skip, threshold)
    # a given state's Δũ (autograd)
    update_prob0 = floor_update_prob(update_prob0, max_skip, threshold)
    w_ih, w_hh, b_ih, b_hh = layers[0]
    if x.dim() != 3:
        raise ValueError(f"x must be (T, B, I), got shape {tuple(x.shape)}")
    h0, c0 = state if cell == "lstm" else (state[0], None)
    args = (x, h0, c0, update_prob0, cum_prob0, w_ih, w_hh, b_ih, b_hh, gate_weight, gate_bias)
    # keep the per-step backward coefficients only when a graph will be built
    train = torch.is_grad_enabled() and any(a is not None and a.requires_grad for a in args)
    steps = threshold if isinstance(threshold, Tensor) else None
    key = cell if cell == "lstm" or opts.reset_after else "gru_paper"
    out, h_n, c_n, up, cum, upd, prob = cpu_rnn_forward(
        key, *args, opts.mask, 0.0 if steps is not None else float(threshold), steps,
        update_prob_floor(max_skip, threshold), train)[:7]
    return RecurrenceResult(out, (h_n, c_n) if cell == "lstm" else (h_n,), up, cum, upd, prob)
