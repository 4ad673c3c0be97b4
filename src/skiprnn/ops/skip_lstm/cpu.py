"""Skip LSTM fast path for one layer: a hand-written BPTT in a ``torch.autograd.Function``.

Same signature, maths and return tuple as :func:`skiprnn.ops.skip_lstm.naive.skip_lstm_naive`
(THE definition; see ``skiprnn.ops.naive`` for the per-step equations). It runs only what must be
sequential inside the time loop, with preallocated buffers, ``out=`` arguments and no autograd
graph:

* forward: the input projection ``x W_ihᵀ + b_ih + b_hh`` for all steps is one GEMM; per step one
  ``addmm`` for ``h W_hhᵀ``, one sigmoid over the contiguous [o, i, f] rows (the gate rows are
  reordered internally), one tanh, the cell update, the update gate and one ``where`` that mixes
  ``[h | c]`` together. Activations are kept in ``(T, B, ·)`` buffers for the backward pass.
* backward: every per-step coefficient that does not depend on the incoming gradient is computed
  for all steps at once; the reverse time loop then costs one ``addmm`` (``dgates W_hh``) and about
  ten small in-place ops per step; ``dW_hh``, ``dW_ih``, ``dx``, the biases and the update-gate
  parameters are single big GEMMs / reductions after the loop.

Supported: one layer, the deterministic gate with a float threshold τ (a ``(T, B)`` threshold
tensor works as well), ``forced is None``, ``constant_delta is None``; anything else raises
``ValueError`` (use the reference). ``dropout`` is accepted because the reference applies it only
*between* layers, so it never acts on one layer. The mask must be binary (bool or 0/1).
Gradients flow to ``x``, the LSTM weights and biases, ``gate_weight``, ``gate_bias``, ``h0``, ``c0``,
``update_prob0`` and ``cum_prob0`` from every output. The gradient of the ``min`` in
``ũ = cum + min(Δũ, 1 - cum)`` is split 50/50 at exact ties, as ``torch.minimum`` does.
Double backward is not supported (the backward is ``once_differentiable``).

Works on any device (CUDA tensors too, as a slow generic fallback: it launches many tiny kernels).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["skip_lstm_cpu"]


def _to_internal(w: Tensor) -> Tensor:
    """nn.LSTM gate rows [i, f, g, o] -> internal [o, i, f, g] (sigmoid rows first)."""
    i, f, g, o = w.chunk(4, 0)
    return torch.cat([o, i, f, g], 0)


def _to_external(w: Tensor) -> Tensor:
    """Internal gate rows [o, i, f, g] -> nn.LSTM [i, f, g, o]."""
    o, i, f, g = w.chunk(4, 0)
    return torch.cat([i, f, g, o], 0)


def _thresholds(threshold, mask, T, B, like):
    """Per-step threshold column (T, B, 1), +inf on padded steps (never an update), or a float."""
    if isinstance(threshold, Tensor) and threshold.dim() > 0:
        thr = threshold.detach().to(like).expand(T, B).reshape(T, B, 1).clone()
    elif mask is None:
        return float(threshold)
    else:
        thr = like.new_full((T, B, 1), float(threshold))
    if mask is not None:
        thr.masked_fill_(~mask.view(T, B, 1).bool(), float("inf"))
    return thr


class _SkipLSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, c0, up0, cum0, w_ih, w_hh, b_ih, b_hh, gw, gb, mask, threshold):
        T, B, I = x.shape
        H = w_hh.shape[1]
        Wi = _to_internal(w_ih)
        Wh = _to_internal(w_hh)
        bias = None
        if b_ih is not None:
            bias = b_ih
        if b_hh is not None:
            bias = b_hh if bias is None else bias + b_hh
        # A: pre-activations, then (in place) activations [σo, σi, σf, tanh g], (T, B, 4H)
        if bias is None:
            A = torch.mm(x.reshape(T * B, I), Wi.t())
        else:
            A = torch.addmm(_to_internal(bias), x.reshape(T * B, I), Wi.t())
        A = A.view(T, B, 4 * H)
        WhT = Wh.t()
        gwT = gw.t()  # (H, 1)
        HC = x.new_empty(T + 1, B, 2 * H)  # mixed state [h | c]
        HC[0, :, :H] = h0[0]
        HC[0, :, H:] = c0[0]
        CAND = x.new_empty(T, B, 2 * H)  # candidate [h' | c']
        TC = x.new_empty(T, B, H)  # tanh(c')
        UT = x.new_empty(T, B, 1)  # ũ
        UB = torch.empty(T, B, 1, dtype=torch.bool, device=x.device)  # u as bool
        DL = x.new_empty(T, B, 1)  # Δũ of the candidate
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
        H3 = 3 * H

        for t in range(T):
            a = A[t]
            hc = HC[t]
            cand = CAND[t]
            hn = cand[:, :H]
            cn = cand[:, H:]
            tc = TC[t]
            up = UP[t]
            cum = CUM[t]
            ut = UT[t]
            ub = UB[t]
            dl = DL[t]
            a.addmm_(hc[:, :H], WhT)
            a[:, :H3].sigmoid_()
            a[:, H3:].tanh_()
            torch.mul(a[:, 2 * H:H3], hc[:, H:], out=cn)
            cn.addcmul_(a[:, H:2 * H], a[:, H3:])
            torch.tanh(cn, out=tc)
            torch.mul(a[:, :H], tc, out=hn)
            # the update gate
            torch.sub(one, cum, out=tmp)
            torch.minimum(up, tmp, out=tmp)
            torch.add(cum, tmp, out=ut)
            torch.gt(ut, thr[t] if per_step_thr else thr, out=ub)
            torch.where(ub, cand, hc, out=HC[t + 1])
            torch.addmm(gb, cn, gwT, out=dl)
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
            output = HC[1:, :, :H].clone()
            probs = UT.view(T, B).clone()
        else:
            output = HC[1:, :, :H] * M
            probs = (UT * M).view(T, B)
        h_n = HC[T, :, :H].unsqueeze(0).clone()
        c_n = HC[T, :, H:].unsqueeze(0).clone()
        up_n = UP[T, :, 0].clone()
        cum_n = CUM[T, :, 0].clone()
        updates = U.view(T, B).clone()

        ctx.save_for_backward(x, Wi, Wh, gw)
        ctx.bufs = (A, HC, CAND, TC, UT, U, DL, UP, CUM, M)
        ctx.has_bias = (b_ih is not None, b_hh is not None)
        return output, h_n, c_n, up_n, cum_n, updates, probs

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_hn, g_cn, g_up, g_cum, g_u, g_ut):
        x, Wi, Wh, gw = ctx.saved_tensors
        A, HC, CAND, TC, UT, U, DL, UP, CUM, M = ctx.bufs
        del ctx.bufs
        T, B, I = x.shape
        H = Wh.shape[1]
        H2, H3 = 2 * H, 3 * H
        W = H2 + 3  # running gradient row: [dh | dc | dup | dcum | 1]

        # ---- coefficients of every step, computed at once --------------------------------
        o, i, f, g = A[..., :H], A[..., H:H2], A[..., H2:H3], A[..., H3:]
        SD = A[..., :H3] * (1 - A[..., :H3])  # σ' for [o, i, f]
        K3 = torch.empty(T, B, H3, dtype=x.dtype, device=x.device)  # dgates[i,f,g] = dc' * K3
        torch.mul(g, SD[..., H:H2], out=K3[..., :H])
        torch.mul(HC[:-1, :, H:], SD[..., H2:], out=K3[..., H:H2])
        torch.mul(g, g, out=K3[..., H2:])
        K3[..., H2:].neg_().add_(1).mul_(i)
        TC2 = torch.mul(TC, TC).neg_().add_(1)
        KH = TC2.mul_(o).mul_(U)  # dc' += dh_next * KH  (u σo (1 - tanh² c'))
        KO = SD[..., :H].mul_(TC).mul_(U)  # dgates[o] = dh_next * KO
        KZ = DL * (1 - DL) * U  # dz = dup_next * KZ
        omu = 1 - U
        a = 1 - CUM[:-1]
        up_old = UP[:-1]
        Pu = (up_old < a).to(x.dtype) + 0.5 * (up_old == a).to(x.dtype)  # ∂ũ/∂up = ∂ũ/∂cum
        C2 = torch.empty(T, B, 2, dtype=x.dtype, device=x.device)
        C2[..., :1] = omu
        if M is None:
            C2[..., 1:] = 0
        else:
            C2[..., 1:] = 1 - M
        DEXT = torch.empty(T, B, W, dtype=x.dtype, device=x.device)  # dũ = DEXT[t] · S
        torch.sub(CAND, HC[:-1], out=DEXT[..., :H2])
        torch.sub(DL, up_old, out=DEXT[..., H2:H2 + 1])
        torch.sub(omu, UT, out=DEXT[..., H2 + 1:H2 + 2])
        torch.add(g_u, g_ut, out=DEXT[..., H2 + 2])
        GO = torch.zeros(T, B, H2, dtype=x.dtype, device=x.device)
        if M is None:
            GO[..., :H] = g_out
        else:
            DEXT.mul_(M)
            torch.mul(g_out, M, out=GO[..., :H])

        # ---- the reverse time loop -------------------------------------------------------
        S = torch.empty(B, W, dtype=x.dtype, device=x.device)
        Sn = torch.empty(B, W, dtype=x.dtype, device=x.device)
        torch.add(g_hn[0], GO[T - 1, :, :H], out=S[:, :H])
        S[:, H:H2] = g_cn[0]
        S[:, H2] = g_up
        S[:, H2 + 1] = g_cum
        S[:, H2 + 2] = 1
        Sn[:, H2 + 2] = 1
        dG = torch.empty(T, B, 4 * H, dtype=x.dtype, device=x.device)
        DZ = torch.empty(T, B, 1, dtype=x.dtype, device=x.device)
        dcp = torch.empty(B, H, dtype=x.dtype, device=x.device)
        dut = torch.empty(B, 1, dtype=x.dtype, device=x.device)
        dut_flat = dut.view(B)
        for t in range(T - 1, -1, -1):
            dh = S[:, :H]
            dc = S[:, H:H2]
            dgt = dG[t]
            dz = DZ[t]
            torch.linalg.vecdot(DEXT[t], S, out=dut_flat)
            torch.mul(S[:, H2:H2 + 1], KZ[t], out=dz)
            torch.mul(dc, U[t], out=dcp)
            dcp.addcmul_(dh, KH[t])
            dcp.addcmul_(dz, gw)
            torch.mul(dh, KO[t], out=dgt[:, :H])
            torch.mul(dcp.unsqueeze(1), K3[t].view(B, 3, H), out=dgt[:, H:].view(B, 3, H))
            if t > 0:
                torch.addcmul(GO[t - 1], S[:, :H2], omu[t], out=Sn[:, :H2])
            else:
                torch.mul(S[:, :H2], omu[t], out=Sn[:, :H2])
            Sn[:, :H].addmm_(dgt, Wh)
            Sn[:, H:H2].addcmul_(dcp, f[t])
            torch.mul(S[:, H2:H2 + 2], C2[t], out=Sn[:, H2:H2 + 2])
            Sn[:, H2:H2 + 2].addcmul_(dut, Pu[t])
            S, Sn = Sn, S

        # ---- parameter gradients: big GEMMs ----------------------------------------------
        need = ctx.needs_input_grad
        dG2 = dG.view(T * B, 4 * H)
        dx = torch.mm(dG2, Wi).view(T, B, I) if need[0] else None
        dh0 = S[:, :H].unsqueeze(0).clone() if need[1] else None
        dc0 = S[:, H:H2].unsqueeze(0).clone() if need[2] else None
        dup0 = S[:, H2].clone() if need[3] else None
        dcum0 = S[:, H2 + 1].clone() if need[4] else None
        dWi = _to_external(dG2.t().mm(x.reshape(T * B, I))) if need[5] else None
        dWh = _to_external(dG2.t().mm(HC[:-1, :, :H].reshape(T * B, H))) if need[6] else None
        db = _to_external(dG2.sum(0)) if (need[7] or need[8]) else None
        dgw = DZ.view(1, T * B).mm(CAND[..., H:].reshape(T * B, H)) if need[9] else None
        dgb = DZ.sum().view(1) if need[10] else None
        db_ih = db if (need[7] and ctx.has_bias[0]) else None
        db_hh = db.clone() if (need[8] and ctx.has_bias[1]) else None
        return (dx, dh0, dc0, dup0, dcum0, dWi, dWh, db_ih, db_hh, dgw, dgb, None, None)


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
):
    """One-layer Skip LSTM fast path; arguments and returns exactly as ``skip_lstm_naive``.

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
    w_ih, w_hh, b_ih, b_hh = layers[0]
    if x.dim() != 3:
        raise ValueError(f"x must be (T, B, I), got shape {tuple(x.shape)}")
    if isinstance(threshold, Tensor) and threshold.dim() == 0:
        threshold = float(threshold)
    return _SkipLSTMFunction.apply(x, h0, c0, update_prob0, cum_prob0, w_ih, w_hh, b_ih, b_hh,
                                   gate_weight, gate_bias, mask, threshold)
