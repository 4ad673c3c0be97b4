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

from ..skip_lstm.cpu import _thresholds

__all__ = ["skip_gru_cpu"]


class _SkipGRUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, up0, cum0, w_ih, w_hh, b_ih, b_hh, gw, gb, mask, threshold):
        T, B, I = x.shape
        H = w_hh.shape[1]
        H2, H3 = 2 * H, 3 * H
        # PRE[t] = [x W_irᵀ + b_ir + b_hr, x W_izᵀ + b_iz + b_hz, b_hn]; the per-step addmm adds
        # h W_hhᵀ, giving [r_pre, z_pre, gh_n]; r, z are then activated in place.
        PRE = torch.mm(x.reshape(T * B, I), w_ih.t()).view(T, B, H3)
        GIN = PRE[..., H2:].clone()  # x W_inᵀ + b_in
        if b_ih is not None:
            PRE[..., :H2] += b_ih[:H2]
            GIN += b_ih[H2:]
        if b_hh is not None:
            PRE[..., :H2] += b_hh[:H2]
            PRE[..., H2:] = b_hh[H2:]
        else:
            PRE[..., H2:] = 0
        WhT = w_hh.t()
        gwT = gw.t()
        HS = x.new_empty(T + 1, B, H)
        HS[0] = h0[0]
        NN = x.new_empty(T, B, H)  # n
        CAND = x.new_empty(T, B, H)  # h'
        UT = x.new_empty(T, B, 1)
        UB = torch.empty(T, B, 1, dtype=torch.bool, device=x.device)
        DL = x.new_empty(T, B, 1)
        UP = x.new_empty(T + 1, B, 1)
        CUM = x.new_empty(T + 1, B, 1)
        UP[0, :, 0] = up0
        CUM[0, :, 0] = cum0
        tmp = x.new_empty(B, 1)
        zero = x.new_zeros(1, 1)
        one = x.new_ones(1, 1)
        thr = _thresholds(threshold, mask, T, B, x)
        per_step_thr = isinstance(thr, Tensor)
        mb = mask.view(T, B, 1).bool() if mask is not None else None

        for t in range(T):
            p = PRE[t]
            h = HS[t]
            n = NN[t]
            cand = CAND[t]
            up = UP[t]
            cum = CUM[t]
            ut = UT[t]
            ub = UB[t]
            dl = DL[t]
            p.addmm_(h, WhT)
            p[:, :H2].sigmoid_()
            torch.addcmul(GIN[t], p[:, :H], p[:, H2:], out=n)
            n.tanh_()
            torch.lerp(n, h, p[:, H:H2], out=cand)
            torch.sub(one, cum, out=tmp)
            torch.minimum(up, tmp, out=tmp)
            torch.add(cum, tmp, out=ut)
            torch.gt(ut, thr[t] if per_step_thr else thr, out=ub)
            torch.where(ub, cand, h, out=HS[t + 1])
            torch.addmm(gb, cand, gwT, out=dl)
            dl.sigmoid_()
            torch.where(ub, dl, up, out=UP[t + 1])
            if mb is not None:
                torch.where(mb[t], ut, cum, out=tmp)
                torch.where(ub, zero, tmp, out=CUM[t + 1])
            else:
                torch.where(ub, zero, ut, out=CUM[t + 1])

        U = UB.to(x.dtype)
        M = mask.to(x.dtype).view(T, B, 1) if mask is not None else None
        if M is None:
            output = HS[1:].clone()
            probs = UT.view(T, B).clone()
        else:
            output = HS[1:] * M
            probs = (UT * M).view(T, B)
        h_n = HS[T].unsqueeze(0).clone()
        up_n = UP[T, :, 0].clone()
        cum_n = CUM[T, :, 0].clone()
        updates = U.view(T, B).clone()

        ctx.save_for_backward(x, w_ih, w_hh, gw)
        ctx.bufs = (PRE, NN, HS, CAND, UT, U, DL, UP, CUM, M)
        ctx.has_bias = (b_ih is not None, b_hh is not None)
        return output, h_n, up_n, cum_n, updates, probs

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_hn, g_up, g_cum, g_u, g_ut):
        x, w_ih, w_hh, gw = ctx.saved_tensors
        PRE, NN, HS, CAND, UT, U, DL, UP, CUM, M = ctx.bufs
        del ctx.bufs
        T, B, I = x.shape
        H = w_hh.shape[1]
        H2, H3 = 2 * H, 3 * H
        W = H + 3  # running gradient row: [dh | dup | dcum | 1]
        kw = dict(dtype=x.dtype, device=x.device)

        # ---- coefficients of every step, computed at once --------------------------------
        r, z, ghn = PRE[..., :H], PRE[..., H:H2], PRE[..., H2:]
        h_old = HS[:-1]
        # KG: dG[t] = dh' * KG[t], dG = [dr_pre, dz_pre, d gh_n, d gi_n]
        KG = torch.empty(T, B, 4 * H, **kw)
        kn = KG[..., H3:]
        torch.mul(NN, NN, out=kn)
        kn.neg_().add_(1).mul_(1 - z)  # (1 - z)(1 - n²)
        torch.mul(kn, r, out=KG[..., H2:H3])
        kr = KG[..., :H]
        torch.mul(r, 1 - r, out=kr)
        kr.mul_(ghn).mul_(kn)  # r(1 - r) gh_n (1 - z)(1 - n²)
        kz = KG[..., H:H2]
        torch.sub(h_old, NN, out=kz)
        kz.mul_(z).mul_(1 - z)
        KZ = DL * (1 - DL) * U
        omu = 1 - U
        a = 1 - CUM[:-1]
        up_old = UP[:-1]
        Pu = (up_old < a).to(x.dtype) + 0.5 * (up_old == a).to(x.dtype)
        C2 = torch.empty(T, B, 2, **kw)
        C2[..., :1] = omu
        if M is None:
            C2[..., 1:] = 0
        else:
            C2[..., 1:] = 1 - M
        DEXT = torch.empty(T, B, W, **kw)
        torch.sub(CAND, h_old, out=DEXT[..., :H])
        torch.sub(DL, up_old, out=DEXT[..., H:H + 1])
        torch.sub(omu, UT, out=DEXT[..., H + 1:H + 2])
        torch.add(g_u, g_ut, out=DEXT[..., H + 2])
        if M is None:
            GO = g_out
        else:
            DEXT.mul_(M)
            GO = g_out * M

        # ---- the reverse time loop -------------------------------------------------------
        S = torch.empty(B, W, **kw)
        Sn = torch.empty(B, W, **kw)
        torch.add(g_hn[0], GO[T - 1], out=S[:, :H])
        S[:, H] = g_up
        S[:, H + 1] = g_cum
        S[:, H + 2] = 1
        Sn[:, H + 2] = 1
        dG = torch.empty(T, B, 4 * H, **kw)
        DZ = torch.empty(T, B, 1, **kw)
        dhp = torch.empty(B, H, **kw)
        dut = torch.empty(B, 1, **kw)
        dut_flat = dut.view(B)
        for t in range(T - 1, -1, -1):
            dh = S[:, :H]
            dgt = dG[t]
            dz = DZ[t]
            torch.linalg.vecdot(DEXT[t], S, out=dut_flat)
            torch.mul(S[:, H:H + 1], KZ[t], out=dz)
            torch.mul(dh, U[t], out=dhp)
            dhp.addcmul_(dz, gw)
            torch.mul(dhp.unsqueeze(1), KG[t].view(B, 4, H), out=dgt.view(B, 4, H))
            snh = Sn[:, :H]
            if t > 0:
                torch.addcmul(GO[t - 1], dh, omu[t], out=snh)
            else:
                torch.mul(dh, omu[t], out=snh)
            snh.addcmul_(dhp, z[t])
            snh.addmm_(dgt[:, :H3], w_hh)
            torch.mul(S[:, H:H + 2], C2[t], out=Sn[:, H:H + 2])
            Sn[:, H:H + 2].addcmul_(dut, Pu[t])
            S, Sn = Sn, S

        # ---- parameter gradients: big GEMMs ----------------------------------------------
        need = ctx.needs_input_grad
        dG2 = dG.view(T * B, 4 * H)
        dGI = torch.cat([dG2[:, :H2], dG2[:, H3:]], 1) if (need[0] or need[4] or need[6]) \
            else None
        dGH = dG2[:, :H3]
        dx = torch.mm(dGI, w_ih).view(T, B, I) if need[0] else None
        dh0 = S[:, :H].unsqueeze(0).clone() if need[1] else None
        dup0 = S[:, H].clone() if need[2] else None
        dcum0 = S[:, H + 1].clone() if need[3] else None
        dWi = dGI.t().mm(x.reshape(T * B, I)) if need[4] else None
        dWh = dGH.t().mm(h_old.reshape(T * B, H)) if need[5] else None
        db_ih = dGI.sum(0) if (need[6] and ctx.has_bias[0]) else None
        db_hh = dGH.sum(0) if (need[7] and ctx.has_bias[1]) else None
        dgw = DZ.view(1, T * B).mm(CAND.reshape(T * B, H)) if need[8] else None
        dgb = DZ.sum().view(1) if need[9] else None
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
