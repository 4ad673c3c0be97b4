"""Skip GRU fast path for one layer: a hand-written BPTT in a ``torch.autograd.Function``.

Same signature, maths and return tuple as :func:`skiprnn.ops.skip_gru.naive.skip_gru_naive`
(THE definition; see ``skiprnn.ops.naive`` for the per-step equations). Built like
:mod:`skiprnn.ops.skip_lstm.cpu` (feature-major ``(features, B)`` work tensors, chunks of 16 steps,
per-chunk coefficient and weight-gradient work, pooled buffers):

* forward, per step: ``W_ih x`` comes per chunk from one batched GEMM with ``b_ih + b_hh`` folded
  into the r, z rows and ``b_hn`` preset in the n rows, so that one in-place ``addmm`` yields
  ``[r_pre; z_pre; W_hn h + b_hn]``; then one sigmoid over [r; z], ``addcmul`` + tanh for n, one
  ``lerp`` for ``h' = (1 - z) n + z h`` and the update gate as in the LSTM path;
* backward, per step: one ``addmm`` and nine small ops.

``reset_after=False`` (the paper's GRU): per step the r, z rows come first (``addmm`` with
``W_h[rz]``), then ``W_hn (r ⊙ h)``; the backward adds ``q = W_hnᵀ dn`` per step
(dr_pre = q ⊙ h r(1 - r), dh += r ⊙ q) and ``dW_hn`` is a GEMM with the saved ``r ⊙ h``.

Supported and unsupported cases, gradients and errors: as in :mod:`skiprnn.ops.skip_lstm.cpu`
(one layer, float or ``(T, B)`` threshold, no ``forced`` / ``constant_delta``; no double backward,
no second backward through the same call).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..naive import check_cap_holds, floor_update_prob, update_prob_floor
from ..skip_lstm.cpu import (_SECOND_BACKWARD, CHUNK, _add_h_old_gemm, _gate_flush, _Lease,
                             _thresholds)

__all__ = ["skip_gru_cpu"]


class _KK_GRU:
    """Row layout of the per-step block the reverse loop reads (``KK[t]``, ``(W, B)``):
    ``[h'-h | Δũ'-Δũ, 1-u-ũ, g_u+g_ũ | KG (4H) | z | kz | u | 1-u | 1-m | pu | m]``. The first
    ``H + 3`` rows dotted with ``S = [dh | dup | dcum | 1]`` give dũ, and
    ``dG = dh' * KG = [dr_pre, dz_pre, d(W_hn h + b_hn), d(W_in x + b_in)]``.

    ``reset_after=False`` (``n = tanh(W_in x + b_in + W_hn (r ⊙ h) + b_hn)``) appends
    ``[KR | R]`` = ``[h r (1 - r) | r]``: there dr_pre = (W_hnᵀ dn) ⊙ KR needs the product first,
    so KG's dr_pre rows are 0 and the reverse loop fills them."""

    def __init__(self, H, reset_after=True):
        self.S = H
        self.KG = H + 3
        self.Z = 5 * H + 3
        self.KZ = 6 * H + 3
        self.U = 6 * H + 4
        self.C2 = 6 * H + 5
        self.PU = 6 * H + 7
        self.M = 6 * H + 8
        self.W = 6 * H + 9
        if not reset_after:
            self.KR = self.W
            self.R = self.W + H
            self.W += 2 * H


class _SkipGRUFunction(torch.autograd.Function):
    """Feature-major inside, like the Skip LSTM fast path: per-step tensors are ``(features, B)``."""

    @staticmethod
    def forward(ctx, x, h0, up0, cum0, w_ih, w_hh, b_ih, b_hh, gw, gb, mask, threshold, train,
                reset_after, floor):
        T, B, I = x.shape
        H = w_hh.shape[1]
        H2, H3 = 2 * H, 3 * H
        C = min(CHUNK, T)
        # x-projection bias [b_ir + b_hr, b_iz + b_hz, b_in]; b_hn stays inside r ⊙ (W_hn h + b_hn)
        bias = None
        if b_ih is not None:
            bias = b_ih.clone()
            if b_hh is not None:
                bias[:H2] += b_hh[:H2]
        elif b_hh is not None:
            bias = torch.cat([b_hh[:H2], b_hh.new_zeros(H)])
        bias = bias.view(H3, 1) if bias is not None else None
        b_hn = b_hh[H2:].view(H, 1) if b_hh is not None else 0.0
        lease = _Lease(x)
        big, new = lease.new, x.new_empty
        L = _KK_GRU(H, reset_after)
        w_hrz, w_hn = w_hh[:H2], w_hh[H2:]

        WP = new(C, H3, B)  # [r_pre; z_pre; W_hn h + b_hn], then r, z activated in place
        WGIN = new(C, H, B)  # W_in x + b_in
        WN = new(C, H, B)  # n
        WHS = new(C + 1, H, B)  # state before / after each step of the chunk
        WCAND = new(C, H, B)  # h'
        if not reset_after:
            WRH = new(C, H, B)  # r ⊙ h
            RH = big(T, B, H) if train else None  # r ⊙ h of every step (for dW_hn)
        WSC = new(C + 1, 6, B)  # per step rows [cum_in, ũ, Δũ_in, 0, Δũ_cand, u] (see _SC)
        WHS[0] = h0[0].t()
        WSC[:, 3] = 0
        WSC[0, 2] = up0
        WSC[0, 0] = cum0
        Hh = x.new_empty(T, B, H) if mask is None else big(T, B, H)  # h after every step
        SC = new(T, 6, B)
        if train:
            KK = big(T, L.W, B)
            CC = big(T, H, B)  # h' (for the update-gate weight gradient)
            WT1 = new(C, H, B)
        zero, one = x.new_zeros(1, 1), x.new_ones(1, 1)
        thr = _thresholds(threshold, mask, T, B, x)
        thr_ = thr.unbind(0) if thr.dim() == 3 else [thr] * T
        M = mask.to(x.dtype).view(T, 1, B) if mask is not None else None
        m_ = M.unbind(0) if M is not None else None
        Wib = w_ih.expand(C, H3, I)

        p_, rz_, r_, z_, ghn_ = WP.unbind(0), WP[:, :H2].unbind(0), WP[:, :H].unbind(0), \
            WP[:, H:H2].unbind(0), WP[:, H2:].unbind(0)
        gin_, n_, hs_, cand_ = WGIN.unbind(0), WN.unbind(0), WHS.unbind(0), WCAND.unbind(0)
        rh_ = WRH.unbind(0) if not reset_after else None
        cum_, ut_, up_, dl_, u_ = (WSC[:, k:k + 1].unbind(0) for k in (0, 1, 2, 4, 5))
        st_, en_, nx_ = WSC[:, 1:3].unbind(0), WSC[:, 3:5].unbind(0), WSC[:, 0:3:2].unbind(0)

        for t0 in range(0, T, C):
            n = min(C, T - t0)
            xT = x[t0:t0 + n].transpose(1, 2)
            if bias is None:
                torch.bmm(Wib[:n], xT, out=WP[:n])
            else:
                torch.baddbmm(bias, Wib[:n], xT, out=WP[:n])
            WGIN[:n] = WP[:n, H2:]
            WP[:n, H2:] = b_hn
            for j in range(n):
                t = t0 + j
                nn_, cand, ut, u, dl = n_[j], cand_[j], ut_[j], u_[j], dl_[j]
                if reset_after:
                    p_[j].addmm_(w_hh, hs_[j])
                    rz_[j].sigmoid_()
                    torch.addcmul(gin_[j], r_[j], ghn_[j], out=nn_)
                else:  # n = tanh(W_in x + b_in + W_hn (r ⊙ h) + b_hn)
                    rz_[j].addmm_(w_hrz, hs_[j])
                    rz_[j].sigmoid_()
                    torch.mul(r_[j], hs_[j], out=rh_[j])
                    ghn_[j].addmm_(w_hn, rh_[j])
                    torch.add(gin_[j], ghn_[j], out=nn_)
                nn_.tanh_()
                torch.lerp(nn_, hs_[j], z_[j], out=cand)  # (1 - z) n + z h
                torch.add(cum_[j], up_[j], out=ut)  # ũ = min(cum + Δũ, 1)
                ut.clamp_max_(1)
                if m_ is not None:  # padded steps: ũ row carries cum, so cum' = cum
                    torch.lerp(cum_[j], ut, m_[t], out=ut)
                torch.gt(ut, thr_[t], out=u)
                torch.lerp(hs_[j], cand, u, out=hs_[j + 1])  # exact: u is 0 or 1
                torch.addmm(gb, gw, cand, out=dl)
                dl.sigmoid_()
                if floor is not None:  # max_skip: the value of ops.naive.floor_update_prob
                    dl.clamp_min_(floor)
                # [cum'; Δũ'] = [ũ; Δũ] + u ([0; Δũ_cand] - [ũ; Δũ]) in one op, exact for u in {0, 1}
                torch.lerp(st_[j], en_[j], u, out=nx_[j + 1])
            # ---- flush the chunk ----
            Hh[t0:t0 + n] = WHS[1:n + 1].transpose(1, 2)
            SC[t0:t0 + n] = WSC[:n]
            if train:
                kk = KK[t0:t0 + n]
                r, z, ghn = WP[:n, :H], WP[:n, H:H2], WP[:n, H2:]
                nn_, cand, hso, t1 = WN[:n], WCAND[:n], WHS[:n], WT1[:n]
                d = kk[:, :H]
                torch.sub(cand, hso, out=d)
                kn = kk[:, L.KG + H3:L.KG + 4 * H]
                torch.sub(one, z, out=t1)
                torch.mul(nn_, nn_, out=kn)
                torch.addcmul(t1, t1, kn, value=-1, out=kn)  # (1 - z)(1 - n²)
                kr = kk[:, L.KG:L.KG + H]
                if reset_after:
                    torch.mul(kn, r, out=kk[:, L.KG + H2:L.KG + H3])
                    torch.addcmul(r, r, r, value=-1, out=kr)
                    kr.mul_(ghn).mul_(kn)  # r(1 - r) gh_n (1 - z)(1 - n²)
                else:
                    kk[:, L.KG + H2:L.KG + H3] = kn
                    kr.zero_()  # dr_pre = (W_hnᵀ dn) ⊙ h r (1 - r): filled in the reverse loop
                    kr2 = kk[:, L.KR:L.KR + H]
                    torch.addcmul(r, r, r, value=-1, out=kr2)
                    kr2.mul_(hso)
                    kk[:, L.R:L.R + H] = r
                    RH[t0:t0 + n] = WRH[:n].transpose(1, 2)
                torch.addcmul(zero, d, z, value=-1, out=kk[:, L.KG + H:L.KG + H2])  # (h-n)z(1-z)
                kk[:, L.Z:L.Z + H] = z
                CC[t0:t0 + n] = cand
                _gate_flush(kk, WSC[:n], L, None if M is None else M[t0:t0 + n], one, floor)
            WHS[0] = WHS[n]
            WSC[0, 0:3:2] = WSC[n, 0:3:2]

        if M is None:
            output = Hh
            probs = SC[:, 1].clone()
        else:
            output = Hh * M.view(T, B, 1)
            probs = SC[:, 1] * M[:, 0]
        h_n = WHS[0].t().unsqueeze(0).clone()
        up_n = WSC[0, 2].clone()
        cum_n = WSC[0, 0].clone()
        updates = SC[:, 5].clone()
        if train:
            ctx.save_for_backward(x, w_ih, w_hh, gw, Hh, h0[0])
            ctx.bufs = (KK, CC, M, RH if not reset_after else None)
            ctx.lease = lease
            ctx.has_bias = (b_ih is not None, b_hh is not None)
        else:
            lease.release()
        return output, h_n, up_n, cum_n, updates, probs

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_hn, g_up, g_cum, g_u, g_ut):
        saved = ctx.saved_tensors
        x, w_ih, w_hh, gw = saved[:4]
        if ctx.bufs is None:
            raise RuntimeError(_SECOND_BACKWARD)
        KK, CC, M, RH = ctx.bufs
        reset_after = RH is None
        Hh, h0 = saved[-2:]
        ctx.bufs = None
        T, B, I = x.shape
        H = w_hh.shape[1]
        H2, H3, H4 = 2 * H, 3 * H, 4 * H
        C = min(CHUNK, T)
        L = _KK_GRU(H, reset_after)
        W = H + 3  # running gradient S = [dh; dup; dcum; 1], (W, B)
        new = x.new_empty
        tmp_lease = _Lease(x)

        torch.add(g_u, g_ut, out=KK[:, L.S + 2])
        S, Sn = new(W, B), new(W, B)
        last = g_out[T - 1] if M is None else g_out[T - 1] * M[T - 1].t()
        torch.add(g_hn[0], last, out=S[:H].t())
        S[H] = g_up
        S[H + 1] = g_cum
        S[H + 2] = 1
        Sn[H + 2] = 1
        views = [(s, s[:H], s[H:H + 1], s[H:H + 2]) for s in (S, Sn)]
        WDG = new(C, H4, B)  # [dr_pre; dz_pre; d gh_n; d gi_n] of the chunk
        DGP = new(H4, C * B)
        WGO = new(C + 1, H, B)
        DZ = tmp_lease.new(T, 1, B)
        xa = tmp_lease.new(T * B, I + 1)  # [x | 1]
        xa[:, :I] = x.reshape(T * B, I)
        xa[:, I] = 1
        dWh = x.new_zeros(H3, H)
        dbh = x.new_zeros(H3)
        dWib = x.new_zeros(H3, I + 1)
        dx = new(T, B, I)
        dhp, dut = new(H, B), new(1, B)
        dhp4 = dhp.unsqueeze(0)
        dut_flat = dut.view(B)
        gwT, WhT = gw.t(), w_hh.t().contiguous()  # (contiguous: a faster GEMM)
        if not reset_after:
            WhT = w_hh[:H2].t().contiguous()  # (H, 2H): the r, z rows act on h
            WhnT = w_hh[H2:].t().contiguous()  # (H, H): the n rows act on r ⊙ h
            q = new(H, B)  # W_hnᵀ dn = d(r ⊙ h)
            kr_ = KK[:, L.KR:L.KR + H].unbind(0)
            rr_ = KK[:, L.R:L.R + H].unbind(0)
            dgr_ = WDG[:, :H].unbind(0)
            dgn_ = WDG[:, H2:H3].unbind(0)
        dext_ = KK[:, :W].unbind(0)
        kg_ = KK[:, L.KG:L.KG + H4].unflatten(1, (4, H)).unbind(0)
        zg_ = KK[:, L.Z:L.Z + H].unbind(0)
        kz_, u_, omu_, c2_, pu_, m_ = (KK[:, k:k + w].unbind(0) for k, w in (
            (L.KZ, 1), (L.U, 1), (L.C2, 1), (L.C2, 2), (L.PU, 1), (L.M, 1)))
        dg4_ = WDG.unflatten(1, (4, H)).unbind(0)
        dgh_ = (WDG[:, :H3] if reset_after else WDG[:, :H2]).unbind(0)
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
                s, dh, dup, ssc = views[cur]
                _, snh, _, snsc = views[1 - cur]
                t = t0 + j
                dz, omu = dz_[t], omu_[t]
                torch.linalg.vecdot(dext_[t], s, dim=0, out=dut_flat)
                if masked:
                    dut.mul_(m_[t])
                torch.mul(dup, kz_[t], out=dz)
                torch.mul(dh, u_[t], out=dhp)
                dhp.addcmul_(gwT, dz)
                torch.mul(dhp4, kg_[t], out=dg4_[j])
                if not reset_after:
                    torch.mm(WhnT, dgn_[j], out=q)
                    torch.mul(q, kr_[t], out=dgr_[j])
                if t > 0:
                    torch.addmm(go_[j], WhT, dgh_[j], out=snh)
                else:
                    torch.mm(WhT, dgh_[j], out=snh)
                if not reset_after:
                    snh.addcmul_(q, rr_[t])
                snh.addcmul_(dh, omu)
                snh.addcmul_(dhp, zg_[t])
                torch.mul(ssc, c2_[t], out=snsc)
                snsc.addcmul_(dut, pu_[t])
                cur = 1 - cur
            dgp = DGP[:, :n * B]
            dgp.view(H4, n, B).copy_(WDG[:n].transpose(0, 1))
            if reset_after:
                _add_h_old_gemm(dWh, dgp[:H3], Hh, h0, t0, n, B, H)
            else:
                _add_h_old_gemm(dWh[:H2], dgp[:H2], Hh, h0, t0, n, B, H)
                dWh[H2:].addmm_(dgp[H2:H3], RH[t0:t0 + n].view(n * B, H))
            dbh += dgp[:H3].sum(1)
            xc = xa[t0 * B:(t0 + n) * B]
            dWib[:H2].addmm_(dgp[:H2], xc)
            dWib[H2:].addmm_(dgp[H3:], xc)
            dxc = dx[t0:t0 + n].view(n * B, I)
            torch.mm(dgp[:H2].t(), w_ih[:H2], out=dxc)
            dxc.addmm_(dgp[H3:].t(), w_ih[H2:])
        S = views[cur][0]

        need = ctx.needs_input_grad
        dgw = torch.bmm(CC, DZ.transpose(1, 2)).sum(0).t()
        grads = (
            dx,
            S[:H].t().unsqueeze(0).clone(),
            S[H].clone(),
            S[H + 1].clone(),
            dWib[:, :I].clone(),
            dWh,
            dWib[:, I].clone() if ctx.has_bias[0] else None,
            dbh if ctx.has_bias[1] else None,
            dgw,
            DZ.sum().view(1),
        )
        del Hh, h0, saved, KK, CC, DZ, xa, RH
        ctx.lease.release()
        tmp_lease.release()
        return tuple(g if need[k] else None for k, g in enumerate(grads)) + (None,) * 5


def skip_gru_cpu(
    x: Tensor,
    h0: Tensor,
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
    reset_after: bool = True,
    max_skip: int | None = None,
):
    """One-layer Skip GRU fast path; arguments and returns exactly as ``skip_gru_naive``
    (``reset_after=False``: the paper's candidate, forward and backward; ``max_skip``: the floor
    on Δũ, forward and backward).

    Returns ``(output (T, B, H), h_n (1, B, H), update_prob (B,), cum_prob (B,), updates (T, B),
    update_probs (T, B))``. Raises ``ValueError`` for several layers, ``forced`` gates or
    ``constant_delta`` (the reference handles those). Double backward is not supported.
    """
    if len(layers) != 1:
        raise ValueError(f"skip_gru_cpu supports one layer, got {len(layers)}; use the reference")
    if forced is not None:
        raise ValueError("skip_gru_cpu does not support forced gates; use the reference")
    if constant_delta is not None:
        raise ValueError("skip_gru_cpu does not support constant_delta; use the reference")
    check_cap_holds(max_skip, threshold)
    update_prob0 = floor_update_prob(update_prob0, max_skip)  # a given state's Δũ (autograd)
    w_ih, w_hh, b_ih, b_hh = layers[0]
    if x.dim() != 3:
        raise ValueError(f"x must be (T, B, I), got shape {tuple(x.shape)}")
    if isinstance(threshold, Tensor) and threshold.dim() == 0:
        threshold = float(threshold)
    args = (x, h0, update_prob0, cum_prob0, w_ih, w_hh, b_ih, b_hh, gate_weight, gate_bias)
    train = torch.is_grad_enabled() and any(a is not None and a.requires_grad for a in args)
    return _SkipGRUFunction.apply(*args, mask, threshold, train, bool(reset_after),
                                  update_prob_floor(max_skip))
