"""Skip GRU fast path for one layer: a hand-written BPTT in a ``torch.autograd.Function``.

Same signature, maths and return tuple as :func:`skiprnn.ops.skip_gru.naive.skip_gru_naive`
(THE definition; see ``skiprnn.ops.naive`` for the per-step equations). Built like
:mod:`skiprnn.ops.skip_lstm.cpu`:

* forward: ``x W_ihᵀ`` for all steps is one GEMM, with ``b_ih + b_hh`` folded into the r, z rows
  and ``b_hn`` preset in the n rows, so that one in-place ``addmm`` per step yields
  ``[r_pre, z_pre, h W_hnᵀ + b_hn]``; then one sigmoid over [r, z], one ``addcmul`` + tanh for n,
  one ``lerp`` for ``h' = (1 - z) n + z h``, the update gate and one ``where`` for the state.
* backward: per-step coefficients for all steps at once, then a reverse loop of one ``addmm``
  and about nine small in-place ops per step; weight / bias / input gradients are big GEMMs after
  the loop.

Supported: one layer, the deterministic gate with a float threshold τ (a ``(T, B)`` threshold
tensor works as well), ``forced is None``, ``constant_delta is None``; anything else raises
``ValueError`` (use the reference). ``dropout`` is accepted because the reference applies it only
between layers. The mask must be binary. Gradients reach every input from every output; the
``min`` in ``ũ`` splits its gradient 50/50 at exact ties like ``torch.minimum``. Double backward is
not supported (``once_differentiable``). Works on CUDA tensors too, as a slow generic fallback.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..skip_lstm.cpu import _SECOND_BACKWARD, CHUNK, _Lease, _thresholds

__all__ = ["skip_gru_cpu"]


class _KK_GRU:
    """Column layout of the per-step row the reverse loop reads (``KK[t]``, width ``W``):
    ``[h'-h | Δũ'-Δũ, 1-u-ũ, g_u+g_ũ | KG (4H) | z | kz | u | 1-u, 1-m | pu | m]``; the first
    ``H + 3`` entries dotted with ``S = [dh | dup | dcum | 1]`` give dũ, and
    ``dG = dh' * KG = [dr_pre, dz_pre, d(h W_hnᵀ + b_hn), d(x W_inᵀ + b_in)]``."""

    def __init__(self, H):
        self.S = H
        self.KG = H + 3
        self.Z = 5 * H + 3
        self.KZ = 6 * H + 3
        self.U = 6 * H + 4
        self.C2 = 6 * H + 5
        self.PU = 6 * H + 7
        self.M = 6 * H + 8
        self.W = 6 * H + 9


class _SkipGRUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, up0, cum0, w_ih, w_hh, b_ih, b_hh, gw, gb, mask, threshold):
        T, B, I = x.shape
        H = w_hh.shape[1]
        H2, H3 = 2 * H, 3 * H
        C = min(CHUNK, T)
        train = any(ctx.needs_input_grad)
        # x-projection bias: [b_ir + b_hr, b_iz + b_hz, b_in]; b_hn is added inside r ⊙ (·)
        bias = None
        if b_ih is not None:
            bias = b_ih.clone()
        if b_hh is not None:
            bias = torch.cat([b_hh[:H2], b_hh.new_zeros(H)]) if bias is None else bias
            if b_ih is not None:
                bias[:H2] += b_hh[:H2]
        WiT, WhT, gwT = w_ih.t(), w_hh.t(), gw.t()
        lease = _Lease(x)
        big, new = lease.new, x.new_empty
        L = _KK_GRU(H)

        WP = new(C, B, H3)  # [r_pre, z_pre, h W_hnᵀ + b_hn], then r, z activated in place
        WGIN = new(C, B, H)  # x W_inᵀ + b_in
        WN = new(C, B, H)  # n
        WHS = new(C + 1, B, H)  # state before / after each step of the chunk
        WCAND = new(C, B, H)  # h'
        WSC = new(C + 1, B, 5)  # per step [Δũ_in, cum_in, ũ, u, Δũ_cand]
        WHS[0] = h0[0]
        WSC[0, :, 0] = up0
        WSC[0, :, 1] = cum0
        Hh = big(T + 1, B, H)
        Hh[0] = h0[0]
        SC = new(T, B, 5)
        if train:
            KK = big(T, B, L.W)
            CC = big(T, B, H)  # h' (for the update-gate weight gradient)
            WT1 = new(C, B, H)
        zero, one = x.new_zeros(1, 1), x.new_ones(1, 1)
        thr = _thresholds(threshold, mask, T, B, x)
        thr_ = thr.unbind(0) if thr.shape[0] == T else [thr] * T
        M = mask.to(x.dtype).view(T, B, 1) if mask is not None else None
        m_ = M.unbind(0) if M is not None else None
        tmp = new(B, 1)

        p_, rz_, r_, z_, ghn_ = WP.unbind(0), WP[..., :H2].unbind(0), WP[..., :H].unbind(0), \
            WP[..., H:H2].unbind(0), WP[..., H2:].unbind(0)
        gin_, n_, hs_, cand_ = WGIN.unbind(0), WN.unbind(0), WHS.unbind(0), WCAND.unbind(0)
        up_, cum_, ut_, u_, dl_ = (WSC[..., k:k + 1].unbind(0) for k in range(5))

        for t0 in range(0, T, C):
            n = min(C, T - t0)
            xp = WP[:n].view(n * B, H3)
            if bias is None:
                torch.mm(x[t0:t0 + n].reshape(n * B, I), WiT, out=xp)
            else:
                torch.addmm(bias, x[t0:t0 + n].reshape(n * B, I), WiT, out=xp)
            WGIN[:n] = WP[:n, :, H2:]
            if b_hh is None:
                WP[:n, :, H2:] = 0
            else:
                WP[:n, :, H2:] = b_hh[H2:]
            for j in range(n):
                t = t0 + j
                nn_, cand, ut, u, dl = n_[j], cand_[j], ut_[j], u_[j], dl_[j]
                p_[j].addmm_(hs_[j], WhT)
                rz_[j].sigmoid_()
                torch.addcmul(gin_[j], r_[j], ghn_[j], out=nn_)
                nn_.tanh_()
                torch.lerp(nn_, hs_[j], z_[j], out=cand)  # (1 - z) n + z h
                torch.add(cum_[j], up_[j], out=ut)
                ut.clamp_max_(1)
                torch.gt(ut, thr_[t], out=u)
                torch.lerp(hs_[j], cand, u, out=hs_[j + 1])
                torch.addmm(gb, cand, gwT, out=dl)
                dl.sigmoid_()
                torch.lerp(up_[j], dl, u, out=up_[j + 1])
                if m_ is not None:
                    torch.lerp(cum_[j], ut, m_[t], out=tmp)
                    torch.lerp(tmp, zero, u, out=cum_[j + 1])
                else:
                    torch.lerp(ut, zero, u, out=cum_[j + 1])
            # ---- flush the chunk ----
            Hh[t0 + 1:t0 + n + 1] = WHS[1:n + 1]
            SC[t0:t0 + n] = WSC[:n]
            if train:
                kk = KK[t0:t0 + n]
                r, z, ghn = WP[:n, :, :H], WP[:n, :, H:H2], WP[:n, :, H2:]
                nn_, cand, hso, t1 = WN[:n], WCAND[:n], WHS[:n], WT1[:n]
                d = kk[..., :H]
                torch.sub(cand, hso, out=d)
                kn = kk[..., L.KG + H3:L.KG + 4 * H]
                torch.sub(one, z, out=t1)
                torch.mul(nn_, nn_, out=kn)
                torch.addcmul(t1, t1, kn, value=-1, out=kn)  # (1 - z)(1 - n²)
                torch.mul(kn, r, out=kk[..., L.KG + H2:L.KG + H3])
                kr = kk[..., L.KG:L.KG + H]
                torch.addcmul(r, r, r, value=-1, out=kr)
                kr.mul_(ghn).mul_(kn)  # r(1 - r) gh_n (1 - z)(1 - n²)
                torch.addcmul(zero, d, z, value=-1, out=kk[..., L.KG + H:L.KG + H2])  # (h-n)z(1-z)
                kk[..., L.Z:L.Z + H] = z
                CC[t0:t0 + n] = cand
                sc = WSC[:n]
                up_o, cum_o, ut, u, dl = (sc[..., k:k + 1] for k in range(5))
                torch.sub(dl, up_o, out=kk[..., L.S:L.S + 1])
                torch.sub(one, u, out=kk[..., L.C2:L.C2 + 1])
                torch.sub(kk[..., L.C2:L.C2 + 1], ut, out=kk[..., L.S + 1:L.S + 2])
                torch.addcmul(dl, dl, dl, value=-1, out=kk[..., L.KZ:L.KZ + 1])
                kk[..., L.KZ:L.KZ + 1].mul_(u)
                kk[..., L.U:L.U + 1] = u
                a = torch.sub(one, cum_o)
                torch.lt(up_o, a, out=kk[..., L.PU:L.PU + 1])
                kk[..., L.PU:L.PU + 1].add_((up_o == a).to(x.dtype), alpha=0.5)
                if M is None:
                    kk[..., L.C2 + 1] = 0
                    kk[..., L.M] = 1
                else:
                    torch.sub(one, M[t0:t0 + n], out=kk[..., L.C2 + 1:L.C2 + 2])
                    kk[..., L.M:L.M + 1] = M[t0:t0 + n]
            WHS[0] = WHS[n]
            WSC[0, :, :2] = WSC[n, :, :2]

        if M is None:
            output = Hh[1:].clone()
            probs = SC[..., 2].clone()
        else:
            output = Hh[1:] * M
            probs = SC[..., 2] * M[..., 0]
        h_n = WHS[0].unsqueeze(0).clone()
        up_n = WSC[0, :, 0].clone()
        cum_n = WSC[0, :, 1].clone()
        updates = SC[..., 3].clone()
        if train:
            ctx.save_for_backward(x, w_ih, w_hh, gw)
            ctx.bufs = (Hh, KK, CC)
            ctx.lease = lease
            ctx.masked = M is not None
            ctx.has_bias = (b_ih is not None, b_hh is not None)
        else:
            lease.release()
        return output, h_n, up_n, cum_n, updates, probs

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_hn, g_up, g_cum, g_u, g_ut):
        x, w_ih, w_hh, gw = ctx.saved_tensors
        if ctx.bufs is None:
            raise RuntimeError(_SECOND_BACKWARD)
        Hh, KK, CC = ctx.bufs
        ctx.bufs = None
        T, B, I = x.shape
        H = w_hh.shape[1]
        H2, H3, H4 = 2 * H, 3 * H, 4 * H
        C = min(CHUNK, T)
        L = _KK_GRU(H)
        W = H + 3  # running gradient row S = [dh | dup | dcum | 1]
        new = x.new_empty
        tmp_lease = _Lease(x)

        torch.add(g_u, g_ut, out=KK[..., L.S + 2])
        GO = g_out
        masked = ctx.masked
        if masked:
            GO = torch.mul(g_out, KK[..., L.M:L.M + 1], out=tmp_lease.new(T, B, H))
        go_ = GO.unbind(0)

        S, Sn = new(B, W), new(B, W)
        torch.add(g_hn[0], GO[T - 1], out=S[:, :H])
        S[:, H] = g_up
        S[:, H + 1] = g_cum
        S[:, H + 2] = 1
        Sn[:, H + 2] = 1
        views = [(s, s[:, :H], s[:, H:H + 1], s[:, H:H + 2]) for s in (S, Sn)]
        dG = tmp_lease.new(T, B, H4 + 1)  # [dr_pre, dz_pre, d gh_n, d gi_n | dz]
        WK = new(C, B, L.W)
        WDG = new(C, B, H4 + 1)
        dhp, dut = new(B, H), new(B, 1)
        dhp4 = dhp.unsqueeze(1)
        dut_flat = dut.view(B)
        dext_ = WK[..., :W].unbind(0)
        kg_ = WK[..., L.KG:L.KG + H4].unflatten(2, (4, H)).unbind(0)
        zg_ = WK[..., L.Z:L.Z + H].unbind(0)
        kz_, u_, omu_, c2_, pu_, m_ = (WK[..., k:k + w].unbind(0) for k, w in (
            (L.KZ, 1), (L.U, 1), (L.C2, 1), (L.C2, 2), (L.PU, 1), (L.M, 1)))
        dg4_ = WDG[..., :H4].unflatten(2, (4, H)).unbind(0)
        dgh_ = WDG[..., :H3].unbind(0)
        dz_ = WDG[..., H4:].unbind(0)
        cur = 0
        for t0 in reversed(range(0, T, C)):
            n = min(C, T - t0)
            WK[:n] = KK[t0:t0 + n]
            for j in range(n - 1, -1, -1):
                t = t0 + j
                s, dh, dup, ssc = views[cur]
                _, snh, _, snsc = views[1 - cur]
                dz, omu = dz_[j], omu_[j]
                torch.linalg.vecdot(dext_[j], s, out=dut_flat)
                if masked:
                    dut.mul_(m_[j])
                torch.mul(dup, kz_[j], out=dz)
                torch.mul(dh, u_[j], out=dhp)
                dhp.addcmul_(dz, gw)
                torch.mul(dhp4, kg_[j], out=dg4_[j])
                if t > 0:
                    torch.addmm(go_[t - 1], dgh_[j], w_hh, out=snh)
                else:
                    torch.mm(dgh_[j], w_hh, out=snh)
                snh.addcmul_(dh, omu)
                snh.addcmul_(dhp, zg_[j])
                torch.mul(ssc, c2_[j], out=snsc)
                snsc.addcmul_(dut, pu_[j])
                cur = 1 - cur
            dG[t0:t0 + n] = WDG[:n]
        S = views[cur][0]

        # ---- parameter gradients: big GEMMs ----------------------------------------------
        need = ctx.needs_input_grad
        dG2 = dG.view(T * B, H4 + 1)
        d_rz, d_hn, d_in, dz = dG2[:, :H2], dG2[:, H2:H3], dG2[:, H3:H4], dG2[:, H4:]
        x2 = x.reshape(T * B, I)
        dx = None
        if need[0]:
            dx = torch.mm(d_rz, w_ih[:H2])
            dx.addmm_(d_in, w_ih[H2:])
            dx = dx.view(T, B, I)
        dh0 = S[:, :H].unsqueeze(0).clone() if need[1] else None
        dup0 = S[:, H].clone() if need[2] else None
        dcum0 = S[:, H + 1].clone() if need[3] else None
        dWi = torch.cat([d_rz.t().mm(x2), d_in.t().mm(x2)]) if need[4] else None
        dWh = dG2[:, :H3].t().mm(Hh[:-1].view(T * B, H)) if need[5] else None
        db_ih = torch.cat([d_rz.sum(0), d_in.sum(0)]) if (need[6] and ctx.has_bias[0]) \
            else None
        db_hh = dG2[:, :H3].sum(0) if (need[7] and ctx.has_bias[1]) else None
        dgw = dz.t().mm(CC.view(T * B, H)) if need[8] else None
        dgb = dz.sum().view(1) if need[9] else None
        del Hh, KK, CC, dG, dG2, d_rz, d_hn, d_in, dz, GO, go_
        ctx.lease.release()
        tmp_lease.release()
        return (dx, dh0, dup0, dcum0, dWi, dWh, db_ih, db_hh, dgw, dgb, None, None)


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
):
    """One-layer Skip GRU fast path; arguments and returns exactly as ``skip_gru_naive``.

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
    w_ih, w_hh, b_ih, b_hh = layers[0]
    if x.dim() != 3:
        raise ValueError(f"x must be (T, B, I), got shape {tuple(x.shape)}")
    if isinstance(threshold, Tensor) and threshold.dim() == 0:
        threshold = float(threshold)
    return _SkipGRUFunction.apply(x, h0, update_prob0, cum_prob0, w_ih, w_hh, b_ih, b_hh,
                                  gate_weight, gate_bias, mask, threshold)
