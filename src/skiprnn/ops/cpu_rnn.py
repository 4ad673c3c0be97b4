"""The CPU fast path of one Skip RNN layer, shared by both cells: a hand-written BPTT in one
``torch.autograd.Function``; the cell maths come from a :class:`CpuCell`
(``skip_lstm/cpu.py``, ``skip_gru/cpu.py``).

Same signatures, maths and return tuples as ``skip_lstm_naive`` / ``skip_gru_naive`` (THE
definitions; see ``skiprnn.ops.naive`` for the per-step equations), tested against them on every
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
* backward, per step: one ``addmm`` (``W_hhᵀ dgates``) and about ten small ops; the weight, bias
  and input gradients are a few GEMMs per chunk while the chunk's dgates are still in cache;
* big work buffers come from a pool and are reused across calls (fresh multi-MB buffers are
  page-faulted on every call, which costs as much as the recurrence): up to
  ``SKIPRNN_CPU_POOL_MB`` (default 2048) stay allocated between calls, :func:`release_cpu_buffers`
  frees them; under ``torch.no_grad`` the backward bookkeeping is skipped.

Supported: one layer, the deterministic gate with a float threshold τ (a ``(T, B)`` threshold
tensor works as well), ``forced is None``, ``constant_delta is None``, and ``max_skip`` (the floor
on Δũ); anything else raises ``ValueError`` (use the reference). ``dropout`` is accepted because
the reference applies it only *between* layers, so it never acts on one layer. The mask must be
binary (bool or 0/1). Gradients flow to ``x``, the weights and biases, ``gate_weight``,
``gate_bias``, the initial state, ``update_prob0`` and ``cum_prob0`` from every output. The
gradient of the ``min`` in ``ũ = cum + min(Δũ, 1 - cum)`` goes wholly to Δũ at exact ties, as
TensorFlow's (ũ itself is computed as ``min(cum + Δũ, 1)``, equal up to one rounding where the
clamp acts). Not supported: double backward (``once_differentiable``) and a second backward
through the same call (``retain_graph=True``): both raise. The output is saved for backward, so
modifying it in place before ``backward`` raises too.

Works on CUDA tensors as well, as a slow generic fallback (it launches many tiny kernels).
"""

from __future__ import annotations

import os
import threading
from types import SimpleNamespace
from typing import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .naive import check_cap_holds, floor_update_prob, update_prob_floor

__all__ = ["CpuCell", "KKLayout", "skip_rnn_cpu", "release_cpu_buffers", "add_h_old_gemm"]

_SECOND_BACKWARD = (
    "Trying to backward through a CPU fast-path Skip RNN call a second time: its work buffers "
    "were handed back after the first backward (retain_graph=True is not supported here; use "
    "backend='reference' for that).")


class _BufferPool:
    """Reuse the big per-call work buffers of the fast paths across calls (CPU only).

    A fresh multi-MB CPU tensor is mmap'd by the allocator and page-faulted (zeroed by the kernel)
    on every call: for the paper's sequential-MNIST shape that costs about as much as the whole
    recurrence. Buffers are checked out in ``forward``, handed back when ``backward`` is done (or
    when the autograd graph is freed, or at the end of a no-grad forward), and kept for the next
    call up to ``max_bytes`` in all (least recently used shapes are dropped first). Set
    ``SKIPRNN_CPU_POOL_MB=0`` to disable. Never hands the same tensor to two live calls.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._free: dict = {}  # (shape, dtype) -> list of tensors, in LRU order (dict order)
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, shape, like: Tensor) -> Tensor:
        shape = tuple(shape)
        if like.device.type == "cpu" and self.max_bytes > 0:
            key = (shape, like.dtype)
            with self._lock:
                lst = self._free.pop(key, None)
                if lst:
                    t = lst.pop()
                    self._bytes -= t.numel() * t.element_size()
                    if lst:
                        self._free[key] = lst  # most recently used last
                    return t
        return torch.empty(shape, dtype=like.dtype, device=like.device)

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
            self._bytes = 0


_POOL = _BufferPool(int(float(os.environ.get("SKIPRNN_CPU_POOL_MB", "2048")) * 2**20))


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


class KKLayout:
    """Row layout of the per-step block the reverse loop reads (``KK[t]``, ``(W, B)``):
    ``[state' - state (S rows) | Δũ'-Δũ, 1-u-ũ, g_u+g_ũ | cell coefficients (from row CO) | kz |
    u | 1-u | 1-m | pu | m | cell extra rows (from row X)]``. The first ``S + 3`` rows dotted with
    the running gradient ``[dstate | dup | dcum | 1]`` give dũ; the cell says what its rows hold.
    """

    def __init__(self, state_rows: int, coef_rows: int, extra_rows: int = 0):
        self.S = state_rows
        self.CO = state_rows + 3
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

    * ``name``; ``gates`` (gate blocks of W_ih / W_hh); ``has_c`` (the state rows are ``[h; c]``,
      else ``h``); ``layout(H)``: its :class:`KKLayout`;
    * ``feature(cand, H)``: the rows of a candidate ``(C, state rows, B)`` the gate reads;
    * ``projection(w_ih, w_hh, b_ih, b_hh)`` -> ``(Wi (G H, I), Wh, bias (G H, 1) | None,
      b_extra)``: the chunk GEMM's operands in the cell's row order, W_hh, a per-step bias;
    * ``forward_ops(fw)`` -> ``(projected(n) | None, step(j), flush(kk, t0, n))``: after the
      chunk's input GEMM into ``fw.A[:n]``; step j's candidate into ``fw.CAND[j]`` from the state
      ``fw.ST[j]``; with ``fw.train`` the chunk's cell rows of ``kk`` (rows ``[:S]`` hold
      ``cand - state`` already); may set ``fw.extra``, a tensor handed to the backward;
    * ``backward_ops(bw)`` -> ``(step(j, t, cur), chunk(dgp, t0, n), param_grads(has_bias))``:
      given ``dz`` of step t, its dgates into ``bw.WDG[j]`` and the state rows of the next running
      gradient (``bw.Sn`` if ``cur`` is 0, else ``bw.S``); the chunk's weight and input gradients
      from ``dgp`` ``(4H, n B)``; finally ``(dW_ih, dW_hh, db_ih, db_hh)``.
    """

    name: str
    gates: int
    has_c: bool


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

def _forward_work(cell, x, h0, c0, up0, cum0, mask, lease, train):
    """The forward's shared buffers: ``A`` (C, G H, B) gate pre-activations; ``ST`` (C+1, S, B)
    state before / after each step of the chunk; ``CAND`` (C, S, B) candidate; ``WSC`` (C+1, 6, B)
    per-step rows ``[cum_in, ũ, Δũ_in, 0, Δũ_cand, u]``; ``Hh`` (T, B, H) h after every step;
    ``SC`` (T, 6, B) every step's ``WSC`` rows; with ``train`` ``KK`` (T, W, B) and ``CC``
    (T, H, B) the feature the gate read."""
    T, B, I = x.shape
    H = h0.shape[-1]
    C, L = min(CHUNK, T), cell.layout(H)
    new, big = x.new_empty, lease.new
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
    A, ST, CAND, WSC, bias = fw.A, fw.ST, fw.CAND, fw.WSC, fw.bias
    projected, cell_step, cell_flush = cell.forward_ops(fw)
    Wib = fw.Wi.expand(C, *fw.Wi.shape)
    thr_ = thr.unbind(0) if thr.dim() == 3 else [thr] * T
    m_ = M.unbind(0) if M is not None else None
    st_, cand_, feat_ = ST.unbind(0), CAND.unbind(0), cell.feature(CAND, fw.H).unbind(0)
    cum_, ut_, up_, dl_, u_ = (WSC[:, k:k + 1].unbind(0) for k in (0, 1, 2, 4, 5))
    sv_, en_, nx_ = WSC[:, 1:3].unbind(0), WSC[:, 3:5].unbind(0), WSC[:, 0:3:2].unbind(0)
    for t0 in range(0, T, C):
        n = min(C, T - t0)
        xT = x[t0:t0 + n].transpose(1, 2)
        if bias is None:
            torch.bmm(Wib[:n], xT, out=A[:n])
        else:
            torch.baddbmm(bias, Wib[:n], xT, out=A[:n])
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
    """The backward's shared buffers: running gradients ``S``, ``Sn`` ``(S rows + 3, B)`` =
    ``[dstate; dup; dcum; 1]``; ``WDG`` (C, 4H, B) the chunk's dgates and ``DGP`` (4H, C B) the
    same for its GEMMs; ``WGO`` (C+1, H, B) output gradients of steps t0-1 .. t0+n-1; ``DZ``
    (T, 1, B) the gate pre-activation's gradient; ``xa`` (T B, I+1) ``[x | 1]``; ``dx``."""
    T, B, I = x.shape
    H = Hh.shape[2]
    C, L, new = min(CHUNK, T), cell.layout(H), x.new_empty
    bw = SimpleNamespace(T=T, B=B, I=I, H=H, C=C, L=L, new=new, x=x, Wi=Wi, Wh=Wh, Hh=Hh,
                         h0=h0, KK=KK, extra=extra, gwT=gw.t())
    bw.S, bw.Sn = new(L.S + 3, B), new(L.S + 3, B)
    bw.WDG, bw.DGP, bw.WGO = new(C, 4 * H, B), new(4 * H, C * B), new(C + 1, H, B)
    bw.DZ = tmp_lease.new(T, 1, B)
    bw.xa = tmp_lease.new(T * B, I + 1)  # [x | 1]: one GEMM gives dW_ih and the bias gradient
    bw.xa[:, :I] = x.reshape(T * B, I)
    bw.xa[:, I] = 1
    bw.dx = new(T, B, I)
    bw.u_, bw.omu_ = KK[:, L.U:L.U + 1].unbind(0), KK[:, L.C2:L.C2 + 1].unbind(0)
    bw.dz_, bw.go_ = bw.DZ.unbind(0), bw.WGO.unbind(0)
    return bw


def _init_running_grad(bw, g_out, g_hn, g_cn, g_up, g_cum, M):
    """S = the gradient of the final state and of the last step's output."""
    S, H, L, T = bw.S, bw.H, bw.L, bw.T
    last = g_out[T - 1] if M is None else g_out[T - 1] * M[T - 1].t()
    torch.add(g_hn[0], last, out=S[:H].t())
    if L.S > H:
        S[H:L.S] = g_cn[0].t()
    S[L.S] = g_up
    S[L.S + 1] = g_cum
    S[L.S + 2] = 1
    bw.Sn[L.S + 2] = 1


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


def _backward_chunks(cell, bw, g_out, M):
    """The reverse loop: per step dũ and dz (the gate), the cell's dgates and state gradient,
    the gradient of ``[cum, Δũ]``; per chunk the cell's weight and input gradients. Returns the
    final running gradient (that of the initial state)."""
    T, C, B, H, L, KK = bw.T, bw.C, bw.B, bw.H, bw.L, bw.KK
    cell_step, cell_chunk, param_grads = cell.backward_ops(bw)
    views = [(s, s[L.S:L.S + 1], s[L.S:L.S + 2]) for s in (bw.S, bw.Sn)]
    dext_ = KK[:, :L.S + 3].unbind(0)
    kz_, c2_, pu_, m_ = (KK[:, k:k + w].unbind(0) for k, w in (
        (L.KZ, 1), (L.C2, 2), (L.PU, 1), (L.M, 1)))
    dut, dz_ = bw.new(1, B), bw.dz_
    dut_flat = dut.view(B)
    masked = M is not None
    cur = 0
    for t0 in reversed(range(0, T, C)):
        n = min(C, T - t0)
        _output_grads(bw, g_out, M, t0, n)
        for j in range(n - 1, -1, -1):
            t = t0 + j
            s, dup, ssc = views[cur]
            torch.linalg.vecdot(dext_[t], s, dim=0, out=dut_flat)
            if masked:
                dut.mul_(m_[t])
            torch.mul(dup, kz_[t], out=dz_[t])
            cell_step(j, t, cur)
            snsc = views[1 - cur][2]
            torch.mul(ssc, c2_[t], out=snsc)
            snsc.addcmul_(dut, pu_[t])
            cur = 1 - cur
        # the chunk's share of the weight / input gradients, while dgates are hot
        dgp = bw.DGP[:, :n * B]
        dgp.view(4 * H, n, B).copy_(bw.WDG[:n].transpose(0, 1))
        cell_chunk(dgp, t0, n)
    return views[cur][0], param_grads


class _SkipRNNCPU(torch.autograd.Function):
    """One layer of either cell (``cell`` a :class:`CpuCell`; ``c0`` None without a cell half);
    feature-major inside. Returns ``(output, h_n, c_n | None, Δũ_n, cum_n, updates, ũ)``."""

    @staticmethod
    def forward(ctx, cell, x, h0, c0, up0, cum0, w_ih, w_hh, b_ih, b_hh, gw, gb, mask, threshold,
                train, floor):
        T, B, _ = x.shape
        lease = _Lease(x)
        fw = _forward_work(cell, x, h0, c0, up0, cum0, mask, lease, train)
        fw.Wi, fw.Wh, fw.bias, fw.b_extra = cell.projection(w_ih, w_hh, b_ih, b_hh)
        M = mask.to(x.dtype).view(T, 1, B) if mask is not None else None
        _forward_chunks(cell, fw, x, gw, gb, M, _thresholds(threshold, mask, T, B, x), floor)
        res = _forward_results(fw, M, cell.has_c)
        if train:
            ctx.save_for_backward(x, fw.Wi, fw.Wh, gw, fw.Hh, h0[0])
            ctx.bufs = (fw.KK, fw.CC, M, fw.extra)
            ctx.lease, ctx.cell = lease, cell
            ctx.has_bias = (b_ih is not None, b_hh is not None)
        else:
            lease.release()
        return res

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_hn, g_cn, g_up, g_cum, g_u, g_ut):
        if ctx.bufs is None:
            raise RuntimeError(_SECOND_BACKWARD)
        x, Wi, Wh, gw, Hh, h0 = ctx.saved_tensors
        KK, CC, M, extra = ctx.bufs
        ctx.bufs = None
        cell, tmp_lease = ctx.cell, _Lease(x)
        bw = _backward_work(cell, x, Wi, Wh, gw, Hh, h0, KK, extra, tmp_lease)
        L, H = bw.L, bw.H
        torch.add(g_u, g_ut, out=KK[:, L.S + 2])
        _init_running_grad(bw, g_out, g_hn, g_cn, g_up, g_cum, M)
        S, param_grads = _backward_chunks(cell, bw, g_out, M)
        grads = (
            bw.dx,
            S[:H].t().unsqueeze(0).clone(),
            S[H:L.S].t().unsqueeze(0).clone() if cell.has_c else None,
            S[L.S].clone(),
            S[L.S + 1].clone(),
            *param_grads(ctx.has_bias),
            torch.bmm(CC, bw.DZ.transpose(1, 2)).sum(0).t(),
            bw.DZ.sum().view(1),
        )
        del Hh, h0, KK, CC, bw
        ctx.lease.release()
        tmp_lease.release()
        need = ctx.needs_input_grad
        return (None,) + tuple(g if need[k + 1] else None for k, g in enumerate(grads)) \
            + (None,) * 4


def skip_rnn_cpu(cell: CpuCell, x: Tensor, state: tuple, update_prob0: Tensor,
                 cum_prob0: Tensor, layers: Sequence[tuple], gate_weight: Tensor,
                 gate_bias: Tensor, mask: Tensor | None = None, threshold: float | Tensor = 0.5,
                 dropout: float = 0.0, training: bool = False, forced: Tensor | None = None,
                 constant_delta: float | None = None, max_skip: int | None = None) -> tuple:
    """The body of ``skip_{lstm,gru}_cpu``: checks, then the autograd function. ``state``:
    ``(h0, c0)`` or ``(h0,)``, each ``(1, B, H)``; the rest as the naive functions'. Returns
    their tuple ``(output (T, B, H), *state_n (1, B, H), update_prob (B,), cum_prob (B,),
    updates (T, B), update_probs (T, B))``."""
    name = f"skip_{cell.name}_cpu"
    if len(layers) != 1:
        raise ValueError(f"{name} supports one layer, got {len(layers)}; use the reference")
    if forced is not None:
        raise ValueError(f"{name} does not support forced gates; use the reference")
    if constant_delta is not None:
        raise ValueError(f"{name} does not support constant_delta; use the reference")
    if isinstance(threshold, Tensor) and threshold.dim() == 0:
        threshold = float(threshold)
    check_cap_holds(max_skip, threshold)
    # a given state's Δũ (autograd)
    update_prob0 = floor_update_prob(update_prob0, max_skip, threshold)
    w_ih, w_hh, b_ih, b_hh = layers[0]
    if x.dim() != 3:
        raise ValueError(f"x must be (T, B, I), got shape {tuple(x.shape)}")
    h0, c0 = state if cell.has_c else (state[0], None)
    args = (x, h0, c0, update_prob0, cum_prob0, w_ih, w_hh, b_ih, b_hh, gate_weight, gate_bias)
    # keep the per-step backward coefficients only when a graph will be built
    train = torch.is_grad_enabled() and any(a is not None and a.requires_grad for a in args)
    out, h_n, c_n, up, cum, upd, prob = _SkipRNNCPU.apply(
        cell, *args, mask, threshold, train, update_prob_floor(max_skip, threshold))
    return (out, h_n, c_n, up, cum, upd, prob) if cell.has_c else (out, h_n, up, cum, upd, prob)
