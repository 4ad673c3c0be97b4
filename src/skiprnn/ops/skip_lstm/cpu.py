"""Skip LSTM fast path for one layer: a hand-written BPTT in a ``torch.autograd.Function``.

Same signature, maths and return tuple as :func:`skiprnn.ops.skip_lstm.naive.skip_lstm_naive`
(THE definition; see ``skiprnn.ops.naive`` for the per-step equations), tested against it on
every output and every gradient. Only what must be sequential runs in the time loop, with fixed
buffers, ``out=`` arguments and no autograd graph. What makes it fast on a CPU:

* feature-major work tensors: each step's gates, state and saved coefficients are
  ``(features, B)`` blocks, so every per-step op reads and writes contiguous memory (ops on
  strided ``(B, H)`` slices cost three to four times more at these sizes);
* forward, per step: one ``addmm`` (``W_hh h``), one sigmoid over the contiguous [o, i, f] rows
  (gate rows are reordered internally), one tanh, four ops for the cell, seven for the update
  gate (one ``lerp`` mixes ``[h; c]``, another updates ``[cum; Δũ]``, both exact for u ∈ {0, 1});
  the input projection ``W_ih x + b`` is one batched GEMM per chunk of 16 steps;
* per chunk, the coefficients the backward needs (σ', tanh', h' - h, ...) are written into one
  ``(T, W, B)`` buffer in a few large ops, so the reverse loop reads them ready-made;
* backward, per step: one ``addmm`` (``W_hhᵀ dgates``) and twelve small ops; the weight, bias
  and input gradients are three GEMMs per chunk while the chunk's dgates are still in cache;
* big work buffers come from a pool and are reused across calls (fresh multi-MB buffers are
  page-faulted on every call, which costs as much as the recurrence): up to
  ``SKIPRNN_CPU_POOL_MB`` (default 2048) stay allocated between calls, :func:`release_cpu_buffers`
  frees them; under ``torch.no_grad`` the backward bookkeeping is skipped.

Supported: one layer, the deterministic gate with a float threshold τ (a ``(T, B)`` threshold
tensor works as well), ``forced is None``, ``constant_delta is None``, and ``max_skip`` (the floor on Δũ); anything else raises
``ValueError`` (use the reference). ``dropout`` is accepted because the reference applies it only
*between* layers, so it never acts on one layer. The mask must be binary (bool or 0/1).
Gradients flow to ``x``, the LSTM weights and biases, ``gate_weight``, ``gate_bias``, ``h0``, ``c0``,
``update_prob0`` and ``cum_prob0`` from every output. The gradient of the ``min`` in
``ũ = cum + min(Δũ, 1 - cum)`` goes wholly to Δũ at exact ties, as TensorFlow's (ũ itself
is computed as ``min(cum + Δũ, 1)``, equal up to one rounding where the clamp acts).
Not supported: double backward (``once_differentiable``) and a second backward through the same
call (``retain_graph=True``): both raise. The output is saved for backward, so modifying it in
place before ``backward`` raises too.

Works on CUDA tensors as well, as a slow generic fallback (it launches many tiny kernels).
"""

from __future__ import annotations

import os
import threading
from typing import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..naive import check_cap_holds, floor_update_prob, update_prob_floor

__all__ = ["skip_lstm_cpu", "release_cpu_buffers"]

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


def _to_internal(w: Tensor) -> Tensor:
    """nn.LSTM gate rows [i, f, g, o] -> internal [o, i, f, g] (sigmoid rows first)."""
    i, f, g, o = w.chunk(4, 0)
    return torch.cat([o, i, f, g], 0)


def _to_external(w: Tensor) -> Tensor:
    """Internal gate rows [o, i, f, g] -> nn.LSTM [i, f, g, o]."""
    o, i, f, g = w.chunk(4, 0)
    return torch.cat([i, f, g, o], 0)


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


def _add_h_old_gemm(dW, dgp, Hh, h0, t0, n, B, H):
    """dW += dgates · h_oldᵀ for steps t0..t0+n-1 (h_old = h0 at step 0, else Hh[t-1])."""
    if t0 > 0:
        dW.addmm_(dgp, Hh[t0 - 1:t0 + n - 1].view(n * B, H))
        return
    dW.addmm_(dgp[:, :B], h0)
    if n > 1:
        dW.addmm_(dgp[:, B:n * B], Hh[:n - 1].view((n - 1) * B, H))


class _KK_LSTM:
    """Row layout of the per-step block the reverse loop reads (``KK[t]``, ``(W, B)``):
    ``[h'-h | c'-c | Δũ'-Δũ, 1-u-ũ, g_u+g_ũ | K3 (3H) | KO | KH | f | kz | u | 1-u | 1-m | pu | m]``.
    The first ``2H + 3`` rows dotted with ``S = [dh | dc | dup | dcum | 1]`` give dũ;
    ``dgates = [dh' KO, dc' K3]``; ``dc' = u dc + dh' KH + dz W_pᵀ``."""

    def __init__(self, H):
        self.S = 2 * H
        self.K3 = 2 * H + 3
        self.KO = 5 * H + 3
        self.KH = 6 * H + 3
        self.F = 7 * H + 3
        self.KZ = 8 * H + 3
        self.U = 8 * H + 4
        self.C2 = 8 * H + 5  # [1 - u, 1 - m]
        self.PU = 8 * H + 7
        self.M = 8 * H + 8
        self.W = 8 * H + 9


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


class _SkipLSTMFunction(torch.autograd.Function):
    """Feature-major inside: every per-step tensor is ``(features, B)``, so gate blocks, state
    halves and the rows the backward reads are all contiguous."""

    @staticmethod
    def forward(ctx, x, h0, c0, up0, cum0, w_ih, w_hh, b_ih, b_hh, gw, gb, mask, threshold,
                train, floor):
        T, B, I = x.shape
        H = w_hh.shape[1]
        H2, H3, H4 = 2 * H, 3 * H, 4 * H
        C = min(CHUNK, T)
        Wi, Wh = _to_internal(w_ih), _to_internal(w_hh)
        bias = None
        if b_ih is not None:
            bias = b_ih
        if b_hh is not None:
            bias = b_hh if bias is None else bias + b_hh
        bias = _to_internal(bias).view(H4, 1) if bias is not None else None
        lease = _Lease(x)
        big, new = lease.new, x.new_empty
        L = _KK_LSTM(H)

        WA = new(C, H4, B)  # gates: pre-activations, then [σo, σi, σf, tanh g]
        WHC = new(C + 1, H2, B)  # mixed state [h; c] before / after each step of the chunk
        WCAND = new(C, H2, B)  # candidate [h'; c']
        WTC = new(C, H, B)  # tanh(c')
        WSC = new(C + 1, 6, B)  # per step rows [cum_in, ũ, Δũ_in, 0, Δũ_cand, u] (see _SC)
        WHC[0, :H] = h0[0].t()
        WHC[0, H:] = c0[0].t()
        WSC[:, 3] = 0
        WSC[0, 2] = up0
        WSC[0, 0] = cum0
        # h after every step: the output itself without a mask (saved, so an in-place change of
        # it is caught), else a work buffer; with h0 it is the operand of the dW_hh GEMM
        Hh = x.new_empty(T, B, H) if mask is None else big(T, B, H)
        SC = new(T, 6, B)
        if train:
            KK = big(T, L.W, B)  # everything the reverse loop reads, one block per step
            CC = big(T, H, B)  # c' (for the update-gate weight gradient)
            WSD = new(C, H2, B)  # σ' of [i; f]
        one = x.new_ones(1, 1)
        thr = _thresholds(threshold, mask, T, B, x)
        thr_ = thr.unbind(0) if thr.dim() == 3 else [thr] * T
        M = mask.to(x.dtype).view(T, 1, B) if mask is not None else None
        m_ = M.unbind(0) if M is not None else None
        Wib = Wi.expand(C, H4, I)

        a_, s_, g_ = WA.unbind(0), WA[:, :H3].unbind(0), WA[:, H3:].unbind(0)
        o_, i_, f_ = WA[:, :H].unbind(0), WA[:, H:H2].unbind(0), WA[:, H2:H3].unbind(0)
        hc_, hh_, cc_ = WHC.unbind(0), WHC[:, :H].unbind(0), WHC[:, H:].unbind(0)
        cand_, candh_, candc_ = WCAND.unbind(0), WCAND[:, :H].unbind(0), WCAND[:, H:].unbind(0)
        tc_ = WTC.unbind(0)
        cum_, ut_, up_, dl_, u_ = (WSC[:, k:k + 1].unbind(0) for k in (0, 1, 2, 4, 5))
        st_, en_, nx_ = WSC[:, 1:3].unbind(0), WSC[:, 3:5].unbind(0), WSC[:, 0:3:2].unbind(0)

        for t0 in range(0, T, C):
            n = min(C, T - t0)
            xT = x[t0:t0 + n].transpose(1, 2)
            if bias is None:
                torch.bmm(Wib[:n], xT, out=WA[:n])
            else:
                torch.baddbmm(bias, Wib[:n], xT, out=WA[:n])
            for j in range(n):
                t = t0 + j
                g, cn, tc, ut, u, dl = g_[j], candc_[j], tc_[j], ut_[j], u_[j], dl_[j]
                a_[j].addmm_(Wh, hh_[j])
                s_[j].sigmoid_()
                g.tanh_()
                torch.mul(f_[j], cc_[j], out=cn)
                cn.addcmul_(i_[j], g)
                torch.tanh(cn, out=tc)
                torch.mul(o_[j], tc, out=candh_[j])
                # ũ = cum + min(Δũ, 1 - cum) = min(cum + Δũ, 1)
                torch.add(cum_[j], up_[j], out=ut)
                ut.clamp_max_(1)
                if m_ is not None:  # padded steps: ũ row carries cum, so cum' = cum
                    torch.lerp(cum_[j], ut, m_[t], out=ut)
                torch.gt(ut, thr_[t], out=u)
                torch.lerp(hc_[j], cand_[j], u, out=hc_[j + 1])  # exact: u is 0 or 1
                torch.addmm(gb, gw, cn, out=dl)
                dl.sigmoid_()
                if floor is not None:  # max_skip: the value of ops.naive.floor_update_prob
                    dl.clamp_min_(floor)
                # [cum'; Δũ'] = [ũ; Δũ] + u ([0; Δũ_cand] - [ũ; Δũ]) in one op, exact for u in {0, 1}
                torch.lerp(st_[j], en_[j], u, out=nx_[j + 1])
            # ---- flush the chunk ----
            Hh[t0:t0 + n] = WHC[1:n + 1, :H].transpose(1, 2)
            SC[t0:t0 + n] = WSC[:n]
            if train:
                kk = KK[t0:t0 + n]
                A, hco, cand = WA[:n], WHC[:n], WCAND[:n]
                o, i, f, g = A[:, :H], A[:, H:H2], A[:, H2:H3], A[:, H3:]
                sd = WSD[:n]
                torch.sub(cand, hco, out=kk[:, :H2])
                torch.addcmul(A[:, H:H3], A[:, H:H3], A[:, H:H3], value=-1, out=sd)
                torch.mul(g, sd[:, :H], out=kk[:, L.K3:L.K3 + H])
                torch.mul(hco[:, H:], sd[:, H:], out=kk[:, L.K3 + H:L.K3 + H2])
                k3g = kk[:, L.K3 + H2:L.K3 + H3]
                torch.mul(g, g, out=k3g)
                torch.addcmul(i, i, k3g, value=-1, out=k3g)  # i (1 - g²)
                hp = cand[:, :H]
                torch.addcmul(hp, hp, o, value=-1, out=kk[:, L.KO:L.KO + H])  # tanh(c') σ'(o)
                torch.addcmul(o, hp, WTC[:n], value=-1, out=kk[:, L.KH:L.KH + H])  # o tanh'(c')
                kk[:, L.F:L.F + H] = f
                CC[t0:t0 + n] = cand[:, H:]
                _gate_flush(kk, WSC[:n], L, None if M is None else M[t0:t0 + n], one, floor)
            WHC[0] = WHC[n]
            WSC[0, 0:3:2] = WSC[n, 0:3:2]

        if M is None:
            output = Hh
            probs = SC[:, 1].clone()
        else:
            output = Hh * M.view(T, B, 1)
            probs = SC[:, 1] * M[:, 0]
        h_n = WHC[0, :H].t().unsqueeze(0).clone()
        c_n = WHC[0, H:].t().unsqueeze(0).clone()
        up_n = WSC[0, 2].clone()
        cum_n = WSC[0, 0].clone()
        updates = SC[:, 5].clone()
        if train:
            ctx.save_for_backward(x, Wi, Wh, gw, Hh, h0[0])
            ctx.bufs = (KK, CC, M)
            ctx.lease = lease
            ctx.has_bias = (b_ih is not None, b_hh is not None)
        else:
            lease.release()
        return output, h_n, c_n, up_n, cum_n, updates, probs

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_hn, g_cn, g_up, g_cum, g_u, g_ut):
        saved = ctx.saved_tensors
        x, Wi, Wh, gw = saved[:4]
        if ctx.bufs is None:
            raise RuntimeError(_SECOND_BACKWARD)
        KK, CC, M = ctx.bufs
        Hh, h0 = saved[-2:]
        ctx.bufs = None
        T, B, I = x.shape
        H = Wh.shape[1]
        H2, H3, H4 = 2 * H, 3 * H, 4 * H
        C = min(CHUNK, T)
        L = _KK_LSTM(H)
        W = H2 + 3  # running gradient S = [dh; dc; dup; dcum; 1], (W, B)
        new = x.new_empty
        tmp_lease = _Lease(x)

        torch.add(g_u, g_ut, out=KK[:, L.S + 2])
        S, Sn = new(W, B), new(W, B)
        last = g_out[T - 1] if M is None else g_out[T - 1] * M[T - 1].t()
        torch.add(g_hn[0], last, out=S[:H].t())
        S[H:H2] = g_cn[0].t()
        S[H2] = g_up
        S[H2 + 1] = g_cum
        S[H2 + 2] = 1
        Sn[H2 + 2] = 1
        views = [(s, s[:H2], s[:H], s[H:H2], s[H2:H2 + 1], s[H2:H2 + 2]) for s in (S, Sn)]
        WDG = new(C, H4, B)  # dgates of the chunk, (4H, B) per step
        DGP = new(H4, C * B)  # the same, permuted for the chunk's weight-gradient GEMMs
        WGO = new(C + 1, H, B)  # output gradients of steps t0-1 .. t0+n-1
        DZ = tmp_lease.new(T, 1, B)
        xa = tmp_lease.new(T * B, I + 1)  # [x | 1]: one GEMM gives dW_ih and the bias gradient
        xa[:, :I] = x.reshape(T * B, I)
        xa[:, I] = 1
        dWh = x.new_zeros(H4, H)
        dWib = x.new_zeros(H4, I + 1)
        dx = new(T, B, I)
        dhc, dut = new(H2, B), new(1, B)
        dhp, dcp = dhc[:H], dhc[H:]
        dcp3 = dcp.unsqueeze(0)
        dut_flat = dut.view(B)
        gwT, WhT = gw.t(), Wh.t().contiguous()  # (contiguous: a faster GEMM)
        dext_ = KK[:, :W].unbind(0)
        k3_ = KK[:, L.K3:L.K3 + H3].unflatten(1, (3, H)).unbind(0)
        ko_, kh_, f_ = (KK[:, k:k + H].unbind(0) for k in (L.KO, L.KH, L.F))
        kz_, u_, omu_, c2_, pu_, m_ = (KK[:, k:k + w].unbind(0) for k, w in (
            (L.KZ, 1), (L.U, 1), (L.C2, 1), (L.C2, 2), (L.PU, 1), (L.M, 1)))
        dg_, dgo_ = WDG.unbind(0), WDG[:, :H].unbind(0)
        dg3_ = WDG[:, H:].unflatten(1, (3, H)).unbind(0)
        dz_, go_ = DZ.unbind(0), WGO.unbind(0)
        masked = M is not None
        cur = 0
        for t0 in reversed(range(0, T, C)):
            n = min(C, T - t0)
            lo = max(t0 - 1, 0)
            src = g_out[lo:t0 + n].transpose(1, 2)
            dst = WGO[1 if t0 == 0 else 0:n + 1]
            if masked:
                torch.mul(src, M[lo:t0 + n], out=dst)
            else:
                dst.copy_(src)
            for j in range(n - 1, -1, -1):
                s, s2, dh, dc, dup, ssc = views[cur]
                _, _, snh, snc, _, snsc = views[1 - cur]
                t = t0 + j
                dz, omu = dz_[t], omu_[t]
                torch.linalg.vecdot(dext_[t], s, dim=0, out=dut_flat)
                if masked:
                    dut.mul_(m_[t])
                torch.mul(dup, kz_[t], out=dz)
                torch.mul(s2, u_[t], out=dhc)
                dcp.addcmul_(dhp, kh_[t])
                dcp.addcmul_(gwT, dz)
                torch.mul(dhp, ko_[t], out=dgo_[j])
                torch.mul(dcp3, k3_[t], out=dg3_[j])
                if t > 0:
                    torch.addmm(go_[j], WhT, dg_[j], out=snh)
                else:
                    torch.mm(WhT, dg_[j], out=snh)
                snh.addcmul_(dh, omu)
                torch.mul(dc, omu, out=snc)
                snc.addcmul_(dcp, f_[t])
                torch.mul(ssc, c2_[t], out=snsc)
                snsc.addcmul_(dut, pu_[t])
                cur = 1 - cur
            # the chunk's share of the weight / input gradients, while dgates are hot
            dgp = DGP[:, :n * B]
            dgp.view(H4, n, B).copy_(WDG[:n].transpose(0, 1))
            _add_h_old_gemm(dWh, dgp, Hh, h0, t0, n, B, H)
            dWib.addmm_(dgp, xa[t0 * B:(t0 + n) * B])
            torch.mm(dgp.t(), Wi, out=dx[t0:t0 + n].view(n * B, I))
        S = views[cur][0]

        need = ctx.needs_input_grad
        db = _to_external(dWib[:, I])
        dgw = torch.bmm(CC, DZ.transpose(1, 2)).sum(0).t()
        grads = (
            dx,
            S[:H].t().unsqueeze(0).clone(),
            S[H:H2].t().unsqueeze(0).clone(),
            S[H2].clone(),
            S[H2 + 1].clone(),
            _to_external(dWib[:, :I]),
            _to_external(dWh),
            db if ctx.has_bias[0] else None,
            db.clone() if ctx.has_bias[1] else None,
            dgw,
            DZ.sum().view(1),
        )
        del Hh, h0, saved, KK, CC, DZ, xa
        ctx.lease.release()
        tmp_lease.release()
        return tuple(g if need[k] else None for k, g in enumerate(grads)) + (None,) * 4


def skip_lstm_cpu(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    update_prob0: Tensor,
    cum_prob0: Tensor,
    layers: Sequence[tuple],
    gate_weight: Tensor,
    gate_bias: Tensor,
    mask: Tensor | None = None,
    threshold: float | Tensor = 0.5,
    dropout: float = 0.0,
    training: bool = False,
    forced: Tensor | None = None,
    constant_delta: float | None = None,
    max_skip: int | None = None,
):
    """One-layer Skip LSTM fast path; arguments and returns exactly as ``skip_lstm_naive``
    (``max_skip``: its floor on Δũ, forward and backward).

    Returns ``(output (T, B, H), h_n (1, B, H), c_n (1, B, H), update_prob (B,), cum_prob (B,),
    updates (T, B), update_probs (T, B))``. Raises ``ValueError`` for several layers, ``forced``
    gates or ``constant_delta`` (the reference handles those). Double backward is not supported.
    """
    if len(layers) != 1:
        raise ValueError(f"skip_lstm_cpu supports one layer, got {len(layers)}; use the reference")
    if forced is not None:
        raise ValueError("skip_lstm_cpu does not support forced gates; use the reference")
    if constant_delta is not None:
        raise ValueError("skip_lstm_cpu does not support constant_delta; use the reference")
    check_cap_holds(max_skip, threshold)
    update_prob0 = floor_update_prob(update_prob0, max_skip)  # a given state's Δũ (autograd)
    w_ih, w_hh, b_ih, b_hh = layers[0]
    if x.dim() != 3:
        raise ValueError(f"x must be (T, B, I), got shape {tuple(x.shape)}")
    if isinstance(threshold, Tensor) and threshold.dim() == 0:
        threshold = float(threshold)
    args = (x, h0, c0, update_prob0, cum_prob0, w_ih, w_hh, b_ih, b_hh, gate_weight, gate_bias)
    # keep the per-step backward coefficients only when a graph will be built
    train = torch.is_grad_enabled() and any(a is not None and a.requires_grad for a in args)
    return _SkipLSTMFunction.apply(*args, mask, threshold, train, update_prob_floor(max_skip))
