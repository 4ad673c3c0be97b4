"""Skip LSTM, fused Triton kernels for training (one layer, deterministic gate).

Same maths, signature and return tuple as ``skip_lstm_naive`` (the definition, see
``skiprnn/ops/skip_lstm/naive.py``); tested against it on outputs, final state and every gradient.

Layout of the work (this module's own kernels, "old"; the default cooperative kernels in
``lstm_coop.py`` share the autograd function and differ as noted there: biases added in-kernel,
and for inputs of at most 4 features a configuration may project them in-kernel too):

1. The input projection of all steps is one GEMM outside the kernel:
   ``xp = x W_ih^T + b_ih + b_hh`` (T, B, 4H).
2. ``_skip_lstm_fwd_kernel``: persistent, one program per BLOCK_B batch rows, loops over all T
   steps on-chip. Per step: ũ, u, the tiled ``h W_hh^T`` (tl.dot over BLOCK_N x BLOCK_K tiles of
   ``W_hh^T``, read from L2 every step), gate nonlinearities, the candidate (h, c), gating/copy,
   Δũ = σ(w_p·c_cand + b_p) as a row reduction, and the accumulator update. The gated h/c of every
   step are written to global history buffers (the next step reads h back from there, after a
   barrier), with the gate activations and the per-row scalars (u, ũ, Δũ, carried up, cum) that
   the backward needs.
3. ``_skip_lstm_bwd_kernel``: walks time in reverse with the carried dh, dc (ping-pong global
   scratch), d(up), d(cum) (registers). Per step it writes the pre-activation gate gradients
   (T, B, 4H) and dz (Δũ pre-activation) and adds ``dgates W_hh`` to dh with tl.dot.
4. Outside the kernel, big GEMMs: dW_hh, dW_ih, dx, biases, dw_p, db_p.

Gradient of the gate (straight-through, du/dũ = 1): ``du = Σ (h_cand - h_old) dh' + Σ (c_cand -
c_old) dc' + d(up')(Δũ - up) - d(cum')ũ + d(updates)``; ``ũ = cum + min(up, 1 - cum)`` sends its
whole gradient to ``up`` at an exact tie, as TensorFlow's ``tf.minimum`` (this happens at the
first step).

Precision: ``precision='ieee'`` (exact fp32 products, used by the tests) or ``'tf32'`` (tensor
cores, as cuDNN uses for RNNs under PyTorch's defaults). Default: 'tf32' on CUDA, 'ieee' in the
interpreter, always 'ieee' for float64. bf16/fp16 inputs are computed in fp32 and returned in
their dtype. Nothing is compiled at import time; the module imports without Triton.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..triton_utils import (HAS_TRITON, check_device, compute_dtype, gate_sums,
                            grads_or_zeros, new_buffer, require_triton, resolve_precision,
                            tile_config)
from ..triton_utils import contiguous_as as _c
from .. import coop, lstm_coop

if HAS_TRITON:
    import triton
    import triton.language as tl

    from ..triton_utils import mma as _mma
    from ..triton_utils import sigmoid as _sigmoid
    from ..triton_utils import tanh as _tanh

    # ------------------------------------------------------------------------------------------
    # kernels
    # ------------------------------------------------------------------------------------------

    @triton.jit(do_not_specialize=["T", "B"])
    def _skip_lstm_fwd_kernel(
        XP, WT, WP, BP, MASK, UP0, CUM0,
        HS, CS, G, OUT, UPD, PROB, STATS, UPN, CUMN,
        T, B, H, threshold,
        HAS_MASK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
    ):
        """XP (T,B,4H) input projection incl. biases; WT = W_hh^T (H,4H); WP (H,), BP (1,);
        HS/CS (T+1,B,H) with [0] = h0/c0 filled in; G (T,B,4H) gets σ(i),σ(f),tanh(g),σ(o);
        STATS (5,T,B) gets u, ũ, Δũ, up_{t-1}, cum_{t-1}."""
        pid = tl.program_id(0)
        rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
        rmask = rows < B
        rows64 = rows.to(tl.int64)
        offs_n = tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        H4 = 4 * H
        up = tl.load(UP0 + rows, mask=rmask, other=1.0)
        cum = tl.load(CUM0 + rows, mask=rmask, other=0.0)
        bp = tl.load(BP)
        zero_b = up * 0.0
        h_cur = HS
        c_cur = CS
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
            c_nxt = c_cur + B * H
            z = zero_b
            for n0 in range(0, H, BLOCK_N):
                cols = n0 + offs_n
                cmask = cols < H
                acc_i = tl.zeros((BLOCK_B, BLOCK_N), dtype=XP.dtype.element_ty)
                acc_f = tl.zeros((BLOCK_B, BLOCK_N), dtype=XP.dtype.element_ty)
                acc_g = tl.zeros((BLOCK_B, BLOCK_N), dtype=XP.dtype.element_ty)
                acc_o = tl.zeros((BLOCK_B, BLOCK_N), dtype=XP.dtype.element_ty)
                for k0 in range(0, H, BLOCK_K):
                    ks = k0 + offs_k
                    kmask = ks < H
                    hk = tl.load(h_cur + rows64[:, None] * H + ks[None, :],
                                 mask=rmask[:, None] & kmask[None, :], other=0.0)
                    wptr = WT + ks[:, None].to(tl.int64) * H4 + cols[None, :]
                    wmask = kmask[:, None] & cmask[None, :]
                    acc_i = _mma(hk, tl.load(wptr, mask=wmask, other=0.0), acc_i, PRECISION)
                    acc_f = _mma(hk, tl.load(wptr + H, mask=wmask, other=0.0), acc_f, PRECISION)
                    acc_g = _mma(hk, tl.load(wptr + 2 * H, mask=wmask, other=0.0), acc_g, PRECISION)
                    acc_o = _mma(hk, tl.load(wptr + 3 * H, mask=wmask, other=0.0), acc_o, PRECISION)
                m2 = rmask[:, None] & cmask[None, :]
                goff = rows64[:, None] * H4 + cols[None, :]
                si = _sigmoid(acc_i + tl.load(xp_t + goff, mask=m2, other=0.0))
                sf = _sigmoid(acc_f + tl.load(xp_t + goff + H, mask=m2, other=0.0))
                tg = _tanh(acc_g + tl.load(xp_t + goff + 2 * H, mask=m2, other=0.0))
                so = _sigmoid(acc_o + tl.load(xp_t + goff + 3 * H, mask=m2, other=0.0))
                tl.store(g_t + goff, si, mask=m2)
                tl.store(g_t + goff + H, sf, mask=m2)
                tl.store(g_t + goff + 2 * H, tg, mask=m2)
                tl.store(g_t + goff + 3 * H, so, mask=m2)
                soff = rows64[:, None] * H + cols[None, :]
                c_old = tl.load(c_cur + soff, mask=m2, other=0.0)
                h_old = tl.load(h_cur + soff, mask=m2, other=0.0)
                cc = sf * c_old + si * tg
                hc = so * _tanh(cc)
                wp = tl.load(WP + cols, mask=cmask, other=0.0)
                z += tl.sum(tl.where(m2, cc * wp[None, :], 0.0), axis=1)
                c_new = tl.where(upd[:, None], cc, c_old)
                h_new = tl.where(upd[:, None], hc, h_old)
                tl.store(c_nxt + soff, c_new, mask=m2)
                tl.store(h_nxt + soff, h_new, mask=m2)
                tl.store(o_t + soff, h_new * m[:, None], mask=m2)
            delta = _sigmoid(z + bp)
            tl.store(srow + 2 * T * B, delta, mask=rmask)
            up = tl.where(upd, delta, up)
            cum = tl.where(m != 0, tl.where(upd, 0.0, ut), cum)
            h_cur = h_nxt
            c_cur = c_nxt
            xp_t += B * H4
            g_t += B * H4
            o_t += B * H
            r_t += B
            # h/c of this step were written to HS/CS[t+1]; make them visible to every thread
            tl.debug_barrier()
        tl.store(UPN + rows, up, mask=rmask)
        tl.store(CUMN + rows, cum, mask=rmask)

    @triton.jit(do_not_specialize=["T", "B"])
    def _skip_lstm_bwd_kernel(
        W, WP, MASK, HS, CS, G, STATS,
        GOUT, GUPD, GPROB, GUPN, GCUMN,
        DG, GZ, GHBUF, GCBUF, DUP0, DCUM0,
        T, B, H,
        HAS_MASK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
    ):
        """W = W_hh (4H,H); GHBUF/GCBUF (2,B,H) ping-pong carried dh/dc, [0] = grads of h_n/c_n;
        after the loop [T % 2] holds dh0/dc0. DG (T,B,4H) gets the pre-activation gate
        gradients, GZ (T,B) the gradient of Δũ's pre-activation."""
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
        cs_t = CS + (T - 1) * B * H
        g_t = G + (T - 1) * B * H4
        dg_t = DG + (T - 1) * B * H4
        for tt in range(T):
            cur = tt % 2
            gh_cur = GHBUF + cur * B * H
            gc_cur = GCBUF + cur * B * H
            gh_nxt = GHBUF + (1 - cur) * B * H
            gc_nxt = GCBUF + (1 - cur) * B * H
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
                gc = tl.load(gc_cur + soff, mask=m2, other=0.0)
                si = tl.load(g_t + goff, mask=m2, other=0.0)
                sf = tl.load(g_t + goff + H, mask=m2, other=0.0)
                tg = tl.load(g_t + goff + 2 * H, mask=m2, other=0.0)
                so = tl.load(g_t + goff + 3 * H, mask=m2, other=0.0)
                c_old = tl.load(cs_t + soff, mask=m2, other=0.0)
                h_old = tl.load(hs_t + soff, mask=m2, other=0.0)
                cc = sf * c_old + si * tg
                tc = _tanh(cc)
                hc = so * tc
                gu += tl.sum(tl.where(m2, (hc - h_old) * gh + (cc - c_old) * gc, 0.0), axis=1)
                wp = tl.load(WP + cols, mask=cmask, other=0.0)
                ghc = ub * gh
                gcc = ub * gc + gz[:, None] * wp[None, :] + ghc * so * (1.0 - tc * tc)
                tl.store(dg_t + goff, gcc * tg * si * (1.0 - si), mask=m2)
                tl.store(dg_t + goff + H, gcc * c_old * sf * (1.0 - sf), mask=m2)
                tl.store(dg_t + goff + 2 * H, gcc * si * (1.0 - tg * tg), mask=m2)
                tl.store(dg_t + goff + 3 * H, ghc * tc * so * (1.0 - so), mask=m2)
                tl.store(gc_nxt + soff, (1.0 - ub) * gc + gcc * sf, mask=m2)
                tl.store(gh_nxt + soff, (1.0 - ub) * gh, mask=m2)
            # ũ = cum + min(up, 1 - cum): d/dup = d/dcum = a = 1[up <= 1 - cum] (TF's min at a tie)
            g_ut = m * (gu + (1.0 - u) * gcum + gprob)
            one_m = 1.0 - cum_p
            a = tl.where(up_p <= one_m, 1.0, 0.0)
            gup = m * (1.0 - u) * gup + (1.0 - m) * gup + a * g_ut
            gcum = (1.0 - m) * gcum + a * g_ut
            tl.debug_barrier()  # DG[t] and the partial dh are complete
            for n0 in range(0, H, BLOCK_N):
                cols = n0 + offs_n
                cmask = cols < H
                acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=GHBUF.dtype.element_ty)
                for g in tl.static_range(4):
                    for k0 in range(0, H, BLOCK_K):
                        ks = k0 + offs_k
                        kmask = ks < H
                        dgk = tl.load(dg_t + rows64[:, None] * H4 + g * H + ks[None, :],
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
            cs_t -= B * H
            g_t -= B * H4
            dg_t -= B * H4
        tl.store(DUP0 + rows, gup, mask=rmask)
        tl.store(DCUM0 + rows, gcum, mask=rmask)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------

def _launch_fwd(xp, w_hh, gate_w, gate_b, mask, h0, c0, up0, cum0, threshold, precision, cfg):
    T, B, H4 = xp.shape
    H = H4 // 4
    hs = new_buffer((T + 1, B, H), xp)
    cs = new_buffer((T + 1, B, H), xp)
    hs[0].copy_(h0)
    cs[0].copy_(c0)
    gates = new_buffer((T, B, 4 * H), xp)
    out = new_buffer((T, B, H), xp)
    upd = new_buffer((T, B), xp)
    prob = new_buffer((T, B), xp)
    stats = new_buffer((5, T, B), xp)
    up_n = new_buffer((B,), xp)
    cum_n = new_buffer((B,), xp)
    wt = w_hh.t().contiguous()
    grid = (triton.cdiv(B, cfg["BLOCK_B"]),)
    _skip_lstm_fwd_kernel[grid](
        xp, wt, gate_w, gate_b, mask if mask is not None else up0, up0, cum0,
        hs, cs, gates, out, upd, prob, stats, up_n, cum_n,
        T, B, H, float(threshold),
        HAS_MASK=mask is not None, BLOCK_B=cfg["BLOCK_B"], BLOCK_N=cfg["BLOCK_N"],
        BLOCK_K=cfg["BLOCK_K"], PRECISION=precision, num_warps=cfg["num_warps"])
    return out, hs, cs, gates, upd, prob, stats, up_n, cum_n


def _launch_bwd(w_hh, gate_w, mask, hs, cs, gates, stats, g_out, g_hn, g_cn, g_upn, g_cumn,
                g_upd, g_prob, precision, cfg):
    T, B, H4 = gates.shape
    H = H4 // 4
    dg = new_buffer((T, B, 4 * H), gates)
    gz = new_buffer((T, B), gates)
    ghbuf = new_buffer((2, B, H), gates)
    gcbuf = new_buffer((2, B, H), gates)
    ghbuf[0].copy_(g_hn)
    gcbuf[0].copy_(g_cn)
    dup0 = new_buffer((B,), gates)
    dcum0 = new_buffer((B,), gates)
    grid = (triton.cdiv(B, cfg["BLOCK_B"]),)
    _skip_lstm_bwd_kernel[grid](
        w_hh, gate_w, mask if mask is not None else dup0, hs, cs, gates, stats,
        g_out, g_upd, g_prob, g_upn, g_cumn,
        dg, gz, ghbuf, gcbuf, dup0, dcum0,
        T, B, H,
        HAS_MASK=mask is not None, BLOCK_B=cfg["BLOCK_B"], BLOCK_N=cfg["BLOCK_N"],
        BLOCK_K=cfg["BLOCK_K"], PRECISION=precision, num_warps=cfg["num_warps"])
    return dg, gz, ghbuf[T % 2], gcbuf[T % 2], dup0, dcum0


# ----------------------------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------------------------

def _with_bias(xp: Tensor, b_ih, b_hh) -> Tensor:
    if b_ih is not None:
        xp = xp + b_ih
    if b_hh is not None:
        xp = xp + b_hh
    return xp


def _sums_old(gz: Tensor, gates: Tensor, cs: Tensor) -> Tensor:
    """``part`` of ``lstm_coop.launch_bwd`` for the old kernels (c̃ recomputed from the gates)."""
    H = cs.shape[-1]
    return gate_sums(gz, gates[..., H:2 * H] * cs[:-1] + gates[..., :H] * gates[..., 2 * H:3 * H])


class _SkipLSTMTriton(torch.autograd.Function):

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)  # no autocast inside
    def forward(ctx, x, h0, c0, up0, cum0, w_ih, w_hh, b_ih, b_hh, gate_w, gate_b, mask,
                threshold, precision):
        cdt = compute_dtype(x.dtype)
        T, B, I = x.shape
        H = w_hh.shape[1]
        xc, w_ihc, w_hhc = _c(x, cdt), _c(w_ih, cdt), _c(w_hh, cdt)
        bih, bhh = _c(b_ih, cdt), _c(b_hh, cdt)
        gwc, gbc = _c(gate_w.reshape(-1), cdt), _c(gate_b.reshape(-1), cdt)
        maskc = _c(mask, cdt)
        state = (_c(h0, cdt), _c(c0, cdt), _c(up0, cdt), _c(cum0, cdt))
        proj = coop.InputProjection(xc, w_ihc)
        key = ("lstm-fwd", B, H, precision, maskc is not None, str(cdt), str(x.device),
               proj.fusable)

        def run_coop(c):
            xin, wih = proj.coop_args(c)
            return lstm_coop.launch_fwd(xin, w_hhc, bih, bhh, gwc, gbc, maskc, *state, threshold,
                                        precision, c, w_ih=wih)

        def run_old():
            res = _launch_fwd(_with_bias(proj.xp(), bih, bhh), w_hhc, gwc, gbc, maskc, *state,
                              threshold, precision, tile_config(H, B))
            return (*res, res[1][T].clone(), res[2][T].clone())

        out, hs, cs, gates, upd, prob, stats, up_n, cum_n, h_n, c_n = coop.run(
            key, coop.candidates(H, B, x.device, 4, precision, proj.fusable), run_coop,
            run_old)
        ctx.save_for_backward(xc, w_ihc, w_hhc, gwc, maskc, hs, cs, gates, stats)
        ctx.set_materialize_grads(False)  # missing output grads: one zero buffer in backward
        ctx.precision = precision
        ctx.has_bias = (b_ih is not None, b_hh is not None)
        ctx.dtypes = [None if t is None else t.dtype for t in
                      (x, h0, c0, up0, cum0, w_ih, w_hh, b_ih, b_hh, gate_w, gate_b)]
        ctx.gate_shapes = (gate_w.shape, gate_b.shape)
        dt = x.dtype
        if dt == cdt:
            return out, h_n, c_n, up_n, cum_n, upd, prob
        return (out.to(dt), h_n.to(dt), c_n.to(dt), up_n.to(dt), cum_n.to(dt), upd.to(dt),
                prob.to(dt))

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, g_out, g_hn, g_cn, g_upn, g_cumn, g_upd, g_prob):
        xc, w_ihc, w_hhc, gwc, maskc, hs, cs, gates, stats = ctx.saved_tensors
        cdt = gates.dtype
        T, B, I = xc.shape
        H = w_hhc.shape[1]
        cands = coop.candidates(H, B, xc.device, 4, ctx.precision)
        g, spare = grads_or_zeros(
            (g_out, g_hn, g_cn, g_upn, g_cumn, g_upd, g_prob),
            ((T, B, H), (B, H), (B, H), (B,), (B,), (T, B), (T, B)), cdt, xc.device,
            scratch=coop.counter_scratch(cands, B))
        spare = coop.once(spare)
        bargs = (w_hhc, gwc, maskc, hs, cs, gates, stats, *g, ctx.precision)
        key = ("lstm-bwd", B, H, ctx.precision, maskc is not None, str(cdt), str(xc.device))

        def run_old():
            dg, gz, dh0, dc0, dup0, dcum0 = _launch_bwd(*bargs, tile_config(H, B))
            part = _sums_old(gz, gates, cs) if any(ctx.needs_input_grad[9:11]) else None
            return dg, gz, dh0, dc0, dup0, dcum0, part

        dg, gz, dh0, dc0, dup0, dcum0, part = coop.run(
            key, cands, lambda c: lstm_coop.launch_bwd(*bargs, c, zeros=spare()), run_old)
        dg2 = dg.view(T * B, 4 * H)
        need = ctx.needs_input_grad
        dx = (dg2 @ w_ihc).view(T, B, I) if need[0] else None
        dw_ih = dg2.t() @ xc.reshape(T * B, I) if need[5] else None
        dw_hh = dg2.t() @ hs[:-1].reshape(T * B, H) if need[6] else None
        db = dg2.sum(0) if (need[7] or need[8]) else None
        dgw = dgb = None
        if need[9] or need[10]:
            sums = part.sum(0)  # row blocks' sums of gz·c̃ and gz
            dgw = sums[:H].view(ctx.gate_shapes[0])
            dgb = sums[H:].view(ctx.gate_shapes[1])
        grads = [dx, dh0, dc0, dup0, dcum0, dw_ih, dw_hh,
                 db if ctx.has_bias[0] else None, db if ctx.has_bias[1] else None, dgw, dgb]
        grads = [None if (g is None or not n) else (g if g.dtype == d else g.to(d))
                 for g, n, d in zip(grads, need, ctx.dtypes)]
        return (*grads, None, None, None)


# ----------------------------------------------------------------------------------------------
# public function
# ----------------------------------------------------------------------------------------------

def skip_lstm_triton(
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
    precision: str | None = None,
):
    """Skip LSTM over a whole sequence with fused Triton kernels (forward and backward).

    Arguments and returns are exactly ``skip_lstm_naive``'s (one layer only):
    ``(output (T, B, H), h_n (1, B, H), c_n (1, B, H), update_prob (B,), cum_prob (B,),
    updates (T, B), update_probs (T, B))``.

    Supported: one layer, a float threshold, ``forced=None``, ``constant_delta=None`` (ValueError
    otherwise; use the reference). ``dropout`` only acts between layers, so it is ignored here.
    ``precision``: 'ieee' (exact fp32 products) or 'tf32' (tensor cores); default 'tf32' on CUDA
    ('ieee' for float64 and under ``TRITON_INTERPRET=1``); env ``SKIPRNN_TRITON_PRECISION``.
    """
    require_triton()
    if len(layers) != 1:
        raise ValueError(f"skip_lstm_triton supports one layer, got {len(layers)}")
    if forced is not None or constant_delta is not None:
        raise ValueError("skip_lstm_triton does not support forced gates or constant_delta; "
                         "use the reference")
    if isinstance(threshold, Tensor):
        if threshold.dim() != 0:
            raise ValueError("skip_lstm_triton needs a float threshold (no per-step thresholds)")
        threshold = float(threshold)
    if x.dim() != 3:
        raise ValueError(f"x must be (T, B, I), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x must have at least one time step")
    check_device(x)
    w_ih, w_hh, b_ih, b_hh = layers[0]
    T, B, I = x.shape
    H = w_hh.shape[1]
    if w_ih.shape != (4 * H, I) or w_hh.shape != (4 * H, H):
        raise ValueError(f"weights must be (4H, I) and (4H, H); got {tuple(w_ih.shape)}, "
                         f"{tuple(w_hh.shape)}")
    if h0.shape != (1, B, H) or c0.shape != (1, B, H):
        raise ValueError(f"h0 and c0 must be (1, B, H) = (1, {B}, {H}); got {tuple(h0.shape)}, "
                         f"{tuple(c0.shape)}")
    if mask is not None and mask.shape != (T, B):
        raise ValueError(f"mask must be (T, B) = ({T}, {B}), got {tuple(mask.shape)}")
    prec = resolve_precision(precision, x.dtype)
    out, h_n, c_n, up, cum, upd, prob = _SkipLSTMTriton.apply(
        x, h0[0], c0[0], update_prob0, cum_prob0, w_ih, w_hh, b_ih, b_hh, gate_weight,
        gate_bias, mask, float(threshold), prec)
    return out, h_n.unsqueeze(0), c_n.unsqueeze(0), up, cum, upd, prob


@torch.no_grad()
@torch.autocast("cuda", enabled=False)  # the projection GEMM stays in fp32 under autocast
def skip_lstm_triton_infer(
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
    precision: str | None = None,
):
    """Forward-only Skip LSTM (no autograd, nothing saved for a backward): ``skip_lstm_naive``'s
    signature and returns. Uses the cooperative kernel (h ping-pong, no history) where it applies,
    else the training forward under ``no_grad``."""
    require_triton()
    if len(layers) != 1 or forced is not None or constant_delta is not None \
            or (isinstance(threshold, Tensor) and threshold.dim() != 0) or x.dim() != 3 \
            or x.shape[0] == 0:
        return skip_lstm_triton(x, h0, c0, update_prob0, cum_prob0, layers, gate_weight,
                                gate_bias, mask, threshold, dropout, training, forced,
                                constant_delta, precision)  # raises the usual errors
    check_device(x)
    threshold = float(threshold)
    w_ih, w_hh, b_ih, b_hh = layers[0]
    T, B, I = x.shape
    H = w_hh.shape[1]
    cdt = compute_dtype(x.dtype)
    prec = resolve_precision(precision, x.dtype)
    proj = coop.InputProjection(_c(x, cdt), _c(w_ih, cdt))
    cands = coop.candidates(H, B, x.device, 4, prec, proj.fusable)
    if not cands or not coop.enabled() or h0.shape != (1, B, H) or c0.shape != (1, B, H) \
            or w_hh.shape != (4 * H, H) or w_ih.shape != (4 * H, I):
        return skip_lstm_triton(x, h0, c0, update_prob0, cum_prob0, layers, gate_weight,
                                gate_bias, mask, threshold, precision=precision)
    bih, bhh = _c(b_ih, cdt), _c(b_hh, cdt)
    rest = (_c(gate_weight.reshape(-1), cdt), _c(gate_bias.reshape(-1), cdt), _c(mask, cdt),
            _c(h0[0], cdt), _c(c0[0], cdt), _c(update_prob0, cdt), _c(cum_prob0, cdt), threshold,
            prec)

    def run_coop(c):
        xin, wih = proj.coop_args(c)
        return lstm_coop.launch_fwd(xin, _c(w_hh, cdt), bih, bhh, *rest, c, save=False, w_ih=wih)

    def run_old():
        out, hs, cs, _, upd, prob, _, up_n, cum_n = _launch_fwd(
            _with_bias(proj.xp(), bih, bhh), _c(w_hh, cdt), *rest, tile_config(H, B))
        return out, None, None, None, upd, prob, None, up_n, cum_n, hs[T], cs[T]

    key = ("lstm-infer", B, H, prec, mask is not None, str(cdt), str(x.device), proj.fusable)
    out, _, _, _, upd, prob, _, up_n, cum_n, h_n, c_n = coop.run(
        key, cands, run_coop, run_old, hint=("lstm-fwd",) + key[1:])
    dt = x.dtype
    return (out.to(dt), h_n.to(dt).unsqueeze(0), c_n.to(dt).unsqueeze(0), up_n.to(dt),
            cum_n.to(dt), upd.to(dt), prob.to(dt))
