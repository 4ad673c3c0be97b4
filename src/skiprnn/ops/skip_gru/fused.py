"""Skip GRU, fused Triton kernels for training (one layer, deterministic gate).

Same maths, signature and return tuple as ``skip_gru_naive`` (the definition, see
``skiprnn/ops/skip_gru/naive.py``); tested against it on outputs, final state and every gradient.
The structure is the Skip LSTM one (``skiprnn/ops/skip_lstm/fused.py``):

1. One GEMM outside the kernel: ``xp = x W_ih^T + b_ih + [b_hr, b_hz, 0]`` (T, B, 3H); ``b_hn``
   stays apart because ``n = tanh(x W_in^T + b_in + r ⊙ (h W_hn^T + b_hn))``.
2. ``_skip_gru_fwd_kernel``: persistent, one program per BLOCK_B rows, all T steps on-chip: ũ, u,
   the tiled ``h W_hh^T`` (tl.dot), r, z, n, the candidate ``h' = (1 - z) n + z h``, gating/copy,
   Δũ = σ(w_p·h_cand + b_p), the accumulator. Saves h history, [r, z, n, W_hn h + b_hn] and the
   per-row scalars for the backward.
3. ``_skip_gru_bwd_kernel``: reverse time; writes [dr, dz, dn, d(W_hn h + b_hn)] pre-activation
   gradients (T, B, 4H) and dz of Δũ, and adds ``[dr, dz, dhn] W_hh`` to the carried dh.
4. Outside: dW_hh, dW_ih, dx, biases, dw_p, db_p as GEMMs / reductions.

``reset_after=False`` (the paper's GRU, ``n = tanh(x W_in^T + b_in + (r ⊙ h) W_hn^T + b_hn)``):
the same two kernels with ``RESET_AFTER`` off. The forward computes r, z of every column first
(``r ⊙ h`` goes to the gates' last block), then the candidate's product; the backward computes
``W_hnᵀ dn`` over every column before dr and adds ``r ⊙ W_hnᵀ dn`` to dh; ``dW_hn`` is a GEMM with
the saved ``r ⊙ h``. The cooperative kernels (``gru_coop``) have nn.GRU's candidate only.

Precision and dtypes as the Skip LSTM kernels ('ieee' | 'tf32'; bf16/fp16 computed in fp32).
Nothing is compiled at import time; the module imports without Triton.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..triton_utils import (HAS_TRITON, check_device, compute_dtype, gate_sums,
                            grads_or_zeros, new_buffer, require_triton, resolve_precision,
                            tile_config)
from ..triton_utils import contiguous_as as _c
from .. import coop, gru_coop

if HAS_TRITON:
    import triton
    import triton.language as tl

    from ..triton_utils import mma as _mma
    from ..triton_utils import sigmoid as _sigmoid
    from ..triton_utils import tanh as _tanh

    # ------------------------------------------------------------------------------------------
    # kernels
    # ------------------------------------------------------------------------------------------

    @triton.jit
    def _rows_dot(acc, A, a_stride, rows64, rmask, Wm, w_stride, cols, cmask, offs_k, K,
                  BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
        """``acc + A[rows, :K] @ Wm[:K, cols]`` (row strides ``a_stride``, ``w_stride``), in
        BLOCK_K tiles of K (the reset-before GRU's products, one operand at a time)."""
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + offs_k
            kmask = ks < K
            a = tl.load(A + rows64[:, None] * a_stride + ks[None, :],
                        mask=rmask[:, None] & kmask[None, :], other=0.0)
            w = tl.load(Wm + ks[:, None].to(tl.int64) * w_stride + cols[None, :],
                        mask=kmask[:, None] & cmask[None, :], other=0.0)
            acc = _mma(a, w, acc, PRECISION)
        return acc

    @triton.jit(do_not_specialize=["T", "B"])
    def _skip_gru_fwd_kernel(
        XP, WT, BHN, WP, BP, MASK, UP0, CUM0,
        HS, G, OUT, UPD, PROB, STATS, UPN, CUMN,
        T, B, H, threshold,
        HAS_MASK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, RESET_AFTER: tl.constexpr,
    ):
        """XP (T,B,3H) input projection incl. b_ih and b_hr, b_hz; WT = W_hh^T (H,3H); BHN (H,);
        HS (T+1,B,H) with [0] = h0; G (T,B,4H) gets r, z, n, W_hn h + b_hn (``RESET_AFTER``
        False, the paper's candidate ``n = tanh(xp_n + W_hn (r ⊙ h) + b_hn)``: r, z, n, r ⊙ h);
        STATS (5,T,B) gets u, ũ, Δũ, up_{t-1}, cum_{t-1}."""
        pid = tl.program_id(0)
        rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
        rmask = rows < B
        rows64 = rows.to(tl.int64)
        offs_n = tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        H3 = 3 * H
        H4 = 4 * H
        up = tl.load(UP0 + rows, mask=rmask, other=1.0)
        cum = tl.load(CUM0 + rows, mask=rmask, other=0.0)
        bp = tl.load(BP)
        zero_b = up * 0.0
        h_cur = HS
        xp_t = XP
        g_t = G
        o_t = OUT
        r_t = rows  # offset of (t, rows) in the (T, B) arrays
        for t in range(T):
            ut = cum + tl.minimum(up, 1.0 - cum)
            if HAS_MASK:
                m = tl.load(MASK + r_t, mask=rmask, other=0.0)
            else:
                m = zero_b + 1.0
            upd = (ut > threshold) & (m != 0)
            u = tl.where(upd, zero_b + 1.0, zero_b)
            # per-row scalars are stored before the tiles use them (Triton 3.6 layout pass)
            srow = STATS + r_t
            tl.store(srow, u, mask=rmask)
            tl.store(srow + T * B, ut, mask=rmask)
            tl.store(srow + 3 * T * B, up, mask=rmask)
            tl.store(srow + 4 * T * B, cum, mask=rmask)
            tl.store(UPD + r_t, u, mask=rmask)
            tl.store(PROB + r_t, ut * m, mask=rmask)
            h_nxt = h_cur + B * H
            z = zero_b
            if not RESET_AFTER:
                # phase 1: r, z of every column (W_hn acts on r ⊙ h, which needs all of r)
                for n0 in range(0, H, BLOCK_N):
                    cols = n0 + offs_n
                    cmask = cols < H
                    zero_t = tl.zeros((BLOCK_B, BLOCK_N), dtype=XP.dtype.element_ty)
                    acc_r = _rows_dot(zero_t, h_cur, H, rows64, rmask, WT, H3, cols, cmask,
                                      offs_k, H, BLOCK_K, PRECISION)
                    acc_z = _rows_dot(zero_t, h_cur, H, rows64, rmask, WT + H, H3, cols, cmask,
                                      offs_k, H, BLOCK_K, PRECISION)
                    m2 = rmask[:, None] & cmask[None, :]
                    xoff = rows64[:, None] * H3 + cols[None, :]
                    goff = rows64[:, None] * H4 + cols[None, :]
                    r = _sigmoid(acc_r + tl.load(xp_t + xoff, mask=m2, other=0.0))
                    zg = _sigmoid(acc_z + tl.load(xp_t + xoff + H, mask=m2, other=0.0))
                    h_old = tl.load(h_cur + rows64[:, None] * H + cols[None, :], mask=m2,
                                    other=0.0)
                    tl.store(g_t + goff, r, mask=m2)
                    tl.store(g_t + goff + H, zg, mask=m2)
                    tl.store(g_t + goff + 3 * H, r * h_old, mask=m2)
                tl.debug_barrier()  # r ⊙ h of every column is in G
            for n0 in range(0, H, BLOCK_N):
                cols = n0 + offs_n
                cmask = cols < H
                if not RESET_AFTER:
                    acc_n = _rows_dot(tl.zeros((BLOCK_B, BLOCK_N), dtype=XP.dtype.element_ty),
                                      g_t + 3 * H, H4, rows64, rmask, WT + 2 * H, H3, cols, cmask,
                                      offs_k, H, BLOCK_K, PRECISION)  # (r ⊙ h) W_hn^T
                    m2 = rmask[:, None] & cmask[None, :]
                    xoff = rows64[:, None] * H3 + cols[None, :]
                    goff = rows64[:, None] * H4 + cols[None, :]
                    zg = tl.load(g_t + goff + H, mask=m2, other=0.0)
                    hn = acc_n + tl.load(BHN + cols, mask=cmask, other=0.0)[None, :]
                    n = _tanh(tl.load(xp_t + xoff + 2 * H, mask=m2, other=0.0) + hn)
                    tl.store(g_t + goff + 2 * H, n, mask=m2)
                else:
                    acc_r = tl.zeros((BLOCK_B, BLOCK_N), dtype=XP.dtype.element_ty)
                    acc_z = tl.zeros((BLOCK_B, BLOCK_N), dtype=XP.dtype.element_ty)
                    acc_n = tl.zeros((BLOCK_B, BLOCK_N), dtype=XP.dtype.element_ty)
                    for k0 in range(0, H, BLOCK_K):
                        ks = k0 + offs_k
                        kmask = ks < H
                        hk = tl.load(h_cur + rows64[:, None] * H + ks[None, :],
                                     mask=rmask[:, None] & kmask[None, :], other=0.0)
                        wptr = WT + ks[:, None].to(tl.int64) * H3 + cols[None, :]
                        wmask = kmask[:, None] & cmask[None, :]
                        acc_r = _mma(hk, tl.load(wptr, mask=wmask, other=0.0), acc_r, PRECISION)
                        acc_z = _mma(hk, tl.load(wptr + H, mask=wmask, other=0.0), acc_z,
                                     PRECISION)
                        acc_n = _mma(hk, tl.load(wptr + 2 * H, mask=wmask, other=0.0), acc_n,
                                     PRECISION)
                    m2 = rmask[:, None] & cmask[None, :]
                    xoff = rows64[:, None] * H3 + cols[None, :]
                    goff = rows64[:, None] * H4 + cols[None, :]
                    r = _sigmoid(acc_r + tl.load(xp_t + xoff, mask=m2, other=0.0))
                    zg = _sigmoid(acc_z + tl.load(xp_t + xoff + H, mask=m2, other=0.0))
                    hn = acc_n + tl.load(BHN + cols, mask=cmask, other=0.0)[None, :]
                    n = _tanh(tl.load(xp_t + xoff + 2 * H, mask=m2, other=0.0) + r * hn)
                    tl.store(g_t + goff, r, mask=m2)
                    tl.store(g_t + goff + H, zg, mask=m2)
                    tl.store(g_t + goff + 2 * H, n, mask=m2)
                    tl.store(g_t + goff + 3 * H, hn, mask=m2)
                soff = rows64[:, None] * H + cols[None, :]
                h_old = tl.load(h_cur + soff, mask=m2, other=0.0)
                hc = (1.0 - zg) * n + zg * h_old
                wp = tl.load(WP + cols, mask=cmask, other=0.0)
                z += tl.sum(tl.where(m2, hc * wp[None, :], 0.0), axis=1)
                h_new = tl.where(upd[:, None], hc, h_old)
                tl.store(h_nxt + soff, h_new, mask=m2)
                tl.store(o_t + soff, h_new * m[:, None], mask=m2)
            delta = _sigmoid(z + bp)
            tl.store(srow + 2 * T * B, delta, mask=rmask)
            up = tl.where(upd, delta, up)
            cum = tl.where(m != 0, tl.where(upd, 0.0, ut), cum)
            h_cur = h_nxt
            xp_t += B * H3
            g_t += B * H4
            o_t += B * H
            r_t += B
            # h of this step was written to HS[t+1]; make it visible to every thread
            tl.debug_barrier()
        tl.store(UPN + rows, up, mask=rmask)
        tl.store(CUMN + rows, cum, mask=rmask)

    @triton.jit(do_not_specialize=["T", "B"])
    def _skip_gru_bwd_kernel(
        W, WP, MASK, HS, G, STATS,
        GOUT, GUPD, GPROB, GUPN, GCUMN,
        DG, GZ, GHBUF, DUP0, DCUM0,
        T, B, H,
        HAS_MASK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, RESET_AFTER: tl.constexpr,
        N_HGATES: tl.constexpr,
    ):
        """W = W_hh (3H,H); GHBUF (2,B,H) ping-pong carried dh, [0] = grad of h_n; after the loop
        [T % 2] holds dh0. DG (T,B,4H) gets d(r, z, n pre-activations) and d(W_hn h + b_hn)
        (``RESET_AFTER`` False: d(W_hn (r ⊙ h) + b_hn) = dn, and dr once ``W_hnᵀ dn`` is known);
        GZ (T,B) the gradient of Δũ's pre-activation. ``N_HGATES``: the DG blocks multiplied by
        W_hh's rows at the end of a step (3: [dr, dz, dhn]; 2 without RESET_AFTER: [dr, dz])."""
        pid = tl.program_id(0)
        rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
        rmask = rows < B
        rows64 = rows.to(tl.int64)
        offs_n = tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        H4 = 4 * H
        gup = tl.load(GUPN + rows, mask=rmask, other=0.0)
        gcum = tl.load(GCUMN + rows, mask=rmask, other=0.0)
        zero_b = gup * 0.0
        # pointers to step t = T-1, walked backwards
        r_t = (T - 1) * B + rows
        go_t = GOUT + (T - 1) * B * H
        hs_t = HS + (T - 1) * B * H
        g_t = G + (T - 1) * B * H4
        dg_t = DG + (T - 1) * B * H4
        for tt in range(T):
            cur = tt % 2
            gh_cur = GHBUF + cur * B * H
            gh_nxt = GHBUF + (1 - cur) * B * H
            srow = STATS + r_t
            u = tl.load(srow, mask=rmask, other=0.0)
            ut = tl.load(srow + T * B, mask=rmask, other=0.0)
            delta = tl.load(srow + 2 * T * B, mask=rmask, other=0.0)
            up_p = tl.load(srow + 3 * T * B, mask=rmask, other=0.0)
            cum_p = tl.load(srow + 4 * T * B, mask=rmask, other=0.0)
            if HAS_MASK:
                m = tl.load(MASK + r_t, mask=rmask, other=0.0)
            else:
                m = zero_b + 1.0
            gupd = tl.load(GUPD + r_t, mask=rmask, other=0.0)
            gprob = tl.load(GPROB + r_t, mask=rmask, other=0.0)
            gz = u * gup * delta * (1.0 - delta)
            tl.store(GZ + r_t, gz, mask=rmask)
            gu = gupd + m * gup * (delta - up_p) - m * gcum * ut
            ub = u[:, None]
            for n0 in range(0, H, BLOCK_N):
                cols = n0 + offs_n
                cmask = cols < H
                m2 = rmask[:, None] & cmask[None, :]
                soff = rows64[:, None] * H + cols[None, :]
                goff = rows64[:, None] * H4 + cols[None, :]
                gh = tl.load(gh_cur + soff, mask=m2, other=0.0) \
                    + tl.load(go_t + soff, mask=m2, other=0.0) * m[:, None]
                r = tl.load(g_t + goff, mask=m2, other=0.0)
                zg = tl.load(g_t + goff + H, mask=m2, other=0.0)
                n = tl.load(g_t + goff + 2 * H, mask=m2, other=0.0)
                h_old = tl.load(hs_t + soff, mask=m2, other=0.0)
                hc = (1.0 - zg) * n + zg * h_old
                gu += tl.sum(tl.where(m2, (hc - h_old) * gh, 0.0), axis=1)
                wp = tl.load(WP + cols, mask=cmask, other=0.0)
                ghc = ub * gh + gz[:, None] * wp[None, :]
                dn = ghc * (1.0 - zg) * (1.0 - n * n)
                if RESET_AFTER:
                    hn = tl.load(g_t + goff + 3 * H, mask=m2, other=0.0)
                    tl.store(dg_t + goff, dn * hn * r * (1.0 - r), mask=m2)
                    tl.store(dg_t + goff + 3 * H, dn * r, mask=m2)
                else:  # dr needs W_hnᵀ dn over all columns: written after the barrier below
                    tl.store(dg_t + goff + 3 * H, dn, mask=m2)
                tl.store(dg_t + goff + H, ghc * (h_old - n) * zg * (1.0 - zg), mask=m2)
                tl.store(dg_t + goff + 2 * H, dn, mask=m2)
                tl.store(gh_nxt + soff, (1.0 - ub) * gh + ghc * zg, mask=m2)
            # ũ = cum + min(up, 1 - cum): d/dup = d/dcum = a = 1[up <= 1 - cum] (TF's min at a tie)
            g_ut = m * (gu + (1.0 - u) * gcum + gprob)
            one_m = 1.0 - cum_p
            a = tl.where(up_p <= one_m, 1.0, 0.0)
            gup = m * (1.0 - u) * gup + (1.0 - m) * gup + a * g_ut
            gcum = (1.0 - m) * gcum + a * g_ut
            tl.debug_barrier()  # DG[t] and the partial dh are complete
            if not RESET_AFTER:
                # q = dn W_hn = d(r ⊙ h): dr = q ⊙ h r (1 - r), dh += q ⊙ r
                for n0 in range(0, H, BLOCK_N):
                    cols = n0 + offs_n
                    cmask = cols < H
                    acc = _rows_dot(tl.zeros((BLOCK_B, BLOCK_N), dtype=GHBUF.dtype.element_ty),
                                    dg_t + 2 * H, H4, rows64, rmask, W + 2 * H * H, H, cols, cmask,
                                    offs_k, H, BLOCK_K, PRECISION)
                    m2 = rmask[:, None] & cmask[None, :]
                    soff = rows64[:, None] * H + cols[None, :]
                    goff = rows64[:, None] * H4 + cols[None, :]
                    r = tl.load(g_t + goff, mask=m2, other=0.0)
                    h_old = tl.load(hs_t + soff, mask=m2, other=0.0)
                    tl.store(dg_t + goff, acc * h_old * r * (1.0 - r), mask=m2)
                    ptr = gh_nxt + soff
                    tl.store(ptr, tl.load(ptr, mask=m2, other=0.0) + acc * r, mask=m2)
                tl.debug_barrier()  # dr of every column is in DG[t]
            for n0 in range(0, H, BLOCK_N):
                cols = n0 + offs_n
                cmask = cols < H
                acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=GHBUF.dtype.element_ty)
                for g in tl.static_range(N_HGATES):
                    # dh_prev += [dr, dz, dhn] W_hh: DG columns 0, H, 3H; W_hh rows 0, H, 2H
                    dcol = (g + g // 2) * H
                    for k0 in range(0, H, BLOCK_K):
                        ks = k0 + offs_k
                        kmask = ks < H
                        dgk = tl.load(dg_t + rows64[:, None] * H4 + dcol + ks[None, :],
                                      mask=rmask[:, None] & kmask[None, :], other=0.0)
                        w = tl.load(W + (g * H + ks[:, None]).to(tl.int64) * H + cols[None, :],
                                    mask=kmask[:, None] & cmask[None, :], other=0.0)
                        acc = _mma(dgk, w, acc, PRECISION)
                m2 = rmask[:, None] & cmask[None, :]
                ptr = gh_nxt + rows64[:, None] * H + cols[None, :]
                tl.store(ptr, tl.load(ptr, mask=m2, other=0.0) + acc, mask=m2)
            tl.debug_barrier()  # dh for step t-1 is complete
            r_t -= B
            go_t -= B * H
            hs_t -= B * H
            g_t -= B * H4
            dg_t -= B * H4
        tl.store(DUP0 + rows, gup, mask=rmask)
        tl.store(DCUM0 + rows, gcum, mask=rmask)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------

def _launch_fwd(xp, w_hh, b_hn, gate_w, gate_b, mask, h0, up0, cum0, threshold, precision, cfg,
                reset_after=True):
    T, B, H3 = xp.shape
    H = H3 // 3
    hs = new_buffer((T + 1, B, H), xp)
    hs[0].copy_(h0)
    gates = new_buffer((T, B, 4 * H), xp)
    out = new_buffer((T, B, H), xp)
    upd = new_buffer((T, B), xp)
    prob = new_buffer((T, B), xp)
    stats = new_buffer((5, T, B), xp)
    up_n = new_buffer((B,), xp)
    cum_n = new_buffer((B,), xp)
    wt = w_hh.t().contiguous()
    grid = (triton.cdiv(B, cfg["BLOCK_B"]),)
    _skip_gru_fwd_kernel[grid](
        xp, wt, b_hn, gate_w, gate_b, mask if mask is not None else up0, up0, cum0,
        hs, gates, out, upd, prob, stats, up_n, cum_n,
        T, B, H, float(threshold),
        HAS_MASK=mask is not None, BLOCK_B=cfg["BLOCK_B"], BLOCK_N=cfg["BLOCK_N"],
        BLOCK_K=cfg["BLOCK_K"], PRECISION=precision, RESET_AFTER=bool(reset_after),
        num_warps=cfg["num_warps"])
    return out, hs, gates, upd, prob, stats, up_n, cum_n


def _launch_bwd(w_hh, gate_w, mask, hs, gates, stats, g_out, g_hn, g_upn, g_cumn, g_upd,
                g_prob, precision, cfg, reset_after=True):
    T, B, H4 = gates.shape
    H = H4 // 4
    dg = new_buffer((T, B, 4 * H), gates)
    gz = new_buffer((T, B), gates)
    ghbuf = new_buffer((2, B, H), gates)
    ghbuf[0].copy_(g_hn)
    dup0 = new_buffer((B,), gates)
    dcum0 = new_buffer((B,), gates)
    grid = (triton.cdiv(B, cfg["BLOCK_B"]),)
    _skip_gru_bwd_kernel[grid](
        w_hh, gate_w, mask if mask is not None else dup0, hs, gates, stats,
        g_out, g_upd, g_prob, g_upn, g_cumn,
        dg, gz, ghbuf, dup0, dcum0,
        T, B, H,
        HAS_MASK=mask is not None, BLOCK_B=cfg["BLOCK_B"], BLOCK_N=cfg["BLOCK_N"],
        BLOCK_K=cfg["BLOCK_K"], PRECISION=precision, RESET_AFTER=bool(reset_after),
        N_HGATES=3 if reset_after else 2, num_warps=cfg["num_warps"])
    return dg, gz, ghbuf[T % 2], dup0, dcum0


# ----------------------------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------------------------

def _old_bias(xp: Tensor, b_ih, b_hh) -> tuple[Tensor, Tensor]:
    """For the old kernels: ``xp + b_ih + [b_hr, b_hz, 0]`` and ``b_hn`` (H,) (it sits inside
    the reset gate's product)."""
    H = xp.shape[-1] // 3
    if b_ih is not None:
        xp = xp + b_ih
    if b_hh is None:
        return xp, xp.new_zeros(H)
    xp = torch.cat([xp[..., :2 * H] + b_hh[:2 * H], xp[..., 2 * H:]], dim=-1)
    return xp, b_hh[2 * H:].contiguous()


def _sums_old(gz: Tensor, gates: Tensor, hs: Tensor) -> Tensor:
    """``part`` of ``gru_coop.launch_bwd`` for the old kernels (h̃ recomputed from the gates)."""
    H = hs.shape[-1]
    z = gates[..., H:2 * H]
    return gate_sums(gz, (1 - z) * gates[..., 2 * H:3 * H] + z * hs[:-1])


class _SkipGRUTriton(torch.autograd.Function):

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)  # no autocast inside
    def forward(ctx, x, h0, up0, cum0, w_ih, w_hh, b_ih, b_hh, gate_w, gate_b, mask,
                threshold, precision, reset_after=True):
        cdt = compute_dtype(x.dtype)
        T, B, I = x.shape
        H = w_hh.shape[1]
        xc, w_ihc, w_hhc = _c(x, cdt), _c(w_ih, cdt), _c(w_hh, cdt)
        bih, bhh = _c(b_ih, cdt), _c(b_hh, cdt)
        proj = coop.InputProjection(xc, w_ihc)
        gwc, gbc = _c(gate_w.reshape(-1), cdt), _c(gate_b.reshape(-1), cdt)
        maskc = _c(mask, cdt)
        rest = (gwc, gbc, maskc, _c(h0, cdt), _c(up0, cdt), _c(cum0, cdt), threshold, precision)
        key = ("gru-fwd", B, H, precision, maskc is not None, str(cdt), str(x.device),
               proj.fusable)

        def run_coop(c):
            xin, wih = proj.coop_args(c)
            return gru_coop.launch_fwd(xin, w_hhc, bih, bhh, *rest, c, w_ih=wih)

        def run_old():
            xpb, b_hn = _old_bias(proj.xp(), bih, bhh)
            res = _launch_fwd(xpb, w_hhc, b_hn, *rest, tile_config(H, B), reset_after)
            return (*res, res[1][T].clone())

        # the cooperative kernels have nn.GRU's candidate only
        cands = coop.candidates(H, B, x.device, 3, precision, proj.fusable) if reset_after else []
        out, hs, gates, upd, prob, stats, up_n, cum_n, h_n = coop.run(key, cands, run_coop,
                                                                      run_old)
        ctx.save_for_backward(xc, w_ihc, w_hhc, gwc, maskc, hs, gates, stats)
        ctx.set_materialize_grads(False)  # missing output grads: one zero buffer in backward
        ctx.precision = precision
        ctx.reset_after = reset_after
        ctx.dtypes = [None if t is None else t.dtype for t in
                      (x, h0, up0, cum0, w_ih, w_hh, b_ih, b_hh, gate_w, gate_b)]
        ctx.gate_shapes = (gate_w.shape, gate_b.shape)
        dt = x.dtype
        if dt == cdt:
            return out, h_n, up_n, cum_n, upd, prob
        return (out.to(dt), h_n.to(dt), up_n.to(dt), cum_n.to(dt), upd.to(dt), prob.to(dt))

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, g_out, g_hn, g_upn, g_cumn, g_upd, g_prob):
        xc, w_ihc, w_hhc, gwc, maskc, hs, gates, stats = ctx.saved_tensors
        cdt = gates.dtype
        T, B, I = xc.shape
        H = w_hhc.shape[1]
        cands = coop.candidates(H, B, xc.device, 3, ctx.precision) if ctx.reset_after else []
        g, spare = grads_or_zeros((g_out, g_hn, g_upn, g_cumn, g_upd, g_prob),
                                  ((T, B, H), (B, H), (B,), (B,), (T, B), (T, B)), cdt, xc.device,
                                  scratch=coop.counter_scratch(cands, B))
        spare = coop.once(spare)
        bargs = (w_hhc, gwc, maskc, hs, gates, stats, *g, ctx.precision)
        key = ("gru-bwd", B, H, ctx.precision, maskc is not None, str(cdt), str(xc.device))

        def run_old():
            dg, gz, dh0, dup0, dcum0 = _launch_bwd(*bargs, tile_config(H, B), ctx.reset_after)
            part = _sums_old(gz, gates, hs) if any(ctx.needs_input_grad[8:10]) else None
            return dg, gz, dh0, dup0, dcum0, part

        dg, gz, dh0, dup0, dcum0, part = coop.run(
            key, cands, lambda c: gru_coop.launch_bwd(*bargs, c, zeros=spare()), run_old)
        dg2 = dg.view(T * B, 4 * H)
        dxp = dg2[:, :3 * H]                                            # d(x W_ih^T + b_ih)
        need = ctx.needs_input_grad
        dx = (dxp @ w_ihc).view(T, B, I) if need[0] else None
        dw_ih = dxp.t() @ xc.reshape(T * B, I) if need[4] else None
        dw_hh = None
        if need[5]:
            if ctx.reset_after:
                dgh = torch.cat([dg2[:, :2 * H], dg2[:, 3 * H:]], dim=1)  # d(h W_hh^T + b_hh)
                dw_hh = dgh.t() @ hs[:-1].reshape(T * B, H)
            else:  # the n rows act on r ⊙ h (kept in the gates' last block)
                dw_hh = torch.cat([dg2[:, :2 * H].t() @ hs[:-1].reshape(T * B, H),
                                   dg2[:, 3 * H:].t() @ gates[..., 3 * H:].reshape(T * B, H)])
        db_ih = db_hh = dgw = dgb = None
        if need[6] or need[7]:
            s = dg2.sum(0)  # [r, z, n (input side), W_hn h + b_hn]
            db_ih = s[:3 * H]
            db_hh = torch.cat([s[:2 * H], s[3 * H:]]) if need[7] else None
        if need[8] or need[9]:
            sums = part.sum(0)  # row blocks' sums of gz·h̃ and gz
            dgw = sums[:H].view(ctx.gate_shapes[0])
            dgb = sums[H:].view(ctx.gate_shapes[1])
        grads = [dx, dh0, dup0, dcum0, dw_ih, dw_hh, db_ih, db_hh, dgw, dgb]
        grads = [None if (g is None or not n) else (g if g.dtype == d else g.to(d))
                 for g, n, d in zip(grads, need, ctx.dtypes)]
        return (*grads, None, None, None, None)


# ----------------------------------------------------------------------------------------------
# public function
# ----------------------------------------------------------------------------------------------


def skip_gru_triton(
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
    precision: str | None = None,
    reset_after: bool = True,
):
    """Skip GRU over a whole sequence with fused Triton kernels (forward and backward).

    Arguments and returns are exactly ``skip_gru_naive``'s (one layer only):
    ``(output (T, B, H), h_n (1, B, H), update_prob (B,), cum_prob (B,), updates (T, B),
    update_probs (T, B))``.

    Supported: one layer, a float threshold, ``forced=None``, ``constant_delta=None`` (ValueError
    otherwise; use the reference). ``dropout`` only acts between layers, so it is ignored here.
    ``reset_after=False`` (the paper's candidate) runs on the per-row-block kernels (the
    cooperative ones have nn.GRU's candidate only).
    ``precision``: 'ieee' (exact fp32 products) or 'tf32' (tensor cores); default 'tf32' on CUDA
    ('ieee' for float64 and under ``TRITON_INTERPRET=1``); env ``SKIPRNN_TRITON_PRECISION``.
    """
    require_triton()
    if len(layers) != 1:
        raise ValueError(f"skip_gru_triton supports one layer, got {len(layers)}")
    if forced is not None or constant_delta is not None:
        raise ValueError("skip_gru_triton does not support forced gates or constant_delta; "
                         "use the reference")
    if isinstance(threshold, Tensor):
        if threshold.dim() != 0:
            raise ValueError("skip_gru_triton needs a float threshold (no per-step thresholds)")
        threshold = float(threshold)
    if x.dim() != 3:
        raise ValueError(f"x must be (T, B, I), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x must have at least one time step")
    check_device(x)
    w_ih, w_hh, b_ih, b_hh = layers[0]
    T, B, I = x.shape
    H = w_hh.shape[1]
    if w_ih.shape != (3 * H, I) or w_hh.shape != (3 * H, H):
        raise ValueError(f"weights must be (3H, I) and (3H, H); got {tuple(w_ih.shape)}, "
                         f"{tuple(w_hh.shape)}")
    if h0.shape != (1, B, H):
        raise ValueError(f"h0 must be (1, B, H) = (1, {B}, {H}); got {tuple(h0.shape)}")
    if mask is not None and mask.shape != (T, B):
        raise ValueError(f"mask must be (T, B) = ({T}, {B}), got {tuple(mask.shape)}")
    prec = resolve_precision(precision, x.dtype)
    out, h_n, up, cum, upd, prob = _SkipGRUTriton.apply(
        x, h0[0], update_prob0, cum_prob0, w_ih, w_hh, b_ih, b_hh, gate_weight, gate_bias, mask,
        float(threshold), prec, bool(reset_after))
    return out, h_n.unsqueeze(0), up, cum, upd, prob


@torch.no_grad()
@torch.autocast("cuda", enabled=False)  # the projection GEMM stays in fp32 under autocast
def skip_gru_triton_infer(
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
    precision: str | None = None,
    reset_after: bool = True,
):
    """Forward-only Skip GRU (no autograd, nothing saved for a backward): ``skip_gru_naive``'s
    signature and returns. Uses the cooperative kernel (h ping-pong, no history) where it applies,
    else the training forward under ``no_grad``."""
    require_triton()
    if len(layers) != 1 or forced is not None or constant_delta is not None \
            or (isinstance(threshold, Tensor) and threshold.dim() != 0) or x.dim() != 3 \
            or x.shape[0] == 0 or not reset_after:
        return skip_gru_triton(x, h0, update_prob0, cum_prob0, layers, gate_weight, gate_bias,
                               mask, threshold, dropout, training, forced, constant_delta,
                               precision, reset_after)  # raises the usual errors
    check_device(x)
    threshold = float(threshold)
    w_ih, w_hh, b_ih, b_hh = layers[0]
    T, B, I = x.shape
    H = w_hh.shape[1]
    cdt = compute_dtype(x.dtype)
    prec = resolve_precision(precision, x.dtype)
    proj = coop.InputProjection(_c(x, cdt), _c(w_ih, cdt))
    cands = coop.candidates(H, B, x.device, 3, prec, proj.fusable)
    if not cands or not coop.enabled() or h0.shape != (1, B, H) \
            or w_hh.shape != (3 * H, H) or w_ih.shape != (3 * H, I):
        return skip_gru_triton(x, h0, update_prob0, cum_prob0, layers, gate_weight, gate_bias,
                               mask, threshold, precision=precision)
    bih, bhh, w_hhc = _c(b_ih, cdt), _c(b_hh, cdt), _c(w_hh, cdt)
    rest = (_c(gate_weight.reshape(-1), cdt), _c(gate_bias.reshape(-1), cdt), _c(mask, cdt),
            _c(h0[0], cdt), _c(update_prob0, cdt), _c(cum_prob0, cdt), threshold, prec)

    def run_coop(c):
        xin, wih = proj.coop_args(c)
        return gru_coop.launch_fwd(xin, w_hhc, bih, bhh, *rest, c, save=False, w_ih=wih)

    def run_old():
        xpb, b_hn = _old_bias(proj.xp(), bih, bhh)
        out, hs, _, upd, prob, _, up_n, cum_n = _launch_fwd(xpb, w_hhc, b_hn, *rest,
                                                            tile_config(H, B))
        return out, None, None, upd, prob, None, up_n, cum_n, hs[T]

    key = ("gru-infer", B, H, prec, mask is not None, str(cdt), str(x.device), proj.fusable)
    out, _, _, upd, prob, _, up_n, cum_n, h_n = coop.run(
        key, cands, run_coop, run_old, hint=("gru-fwd",) + key[1:])
    dt = x.dtype
    return (out.to(dt), h_n.to(dt).unsqueeze(0), up_n.to(dt), cum_n.to(dt), upd.to(dt),
            prob.to(dt))
