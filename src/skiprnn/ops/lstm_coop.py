"""Skip LSTM, cooperative Triton kernels (hidden units split across programs, W_hh on chip).

Drop-in replacements for ``skip_lstm.fused._launch_fwd`` / ``_launch_bwd``: same buffers in, same
buffers out (h/c history, gate activations, per-row stats; gate gradients, dz, dh0, dc0, ...), so
the autograd function and its outer GEMMs are shared with the old kernels. See ``coop.py`` for the
grid, the barrier and the selection.

Forward, program ``(pr, pc)``, per step t: ũ, u (per row, computed identically by every program of
the row block), the full ``h_{t-1}`` of its rows from ``HS[t]`` (L2, ``.cg``), ``h W^T`` for its
units against the resident slice, gates, candidate, gating/copy of its units (``h``, ``c`` of its
units also stay in registers), ``Σ_its units c_cand·w_p`` to the partials buffer; barrier; every
program sums the partials to Δũ and updates up / cum.

Backward, reverse time: its units' dh, dc stay in registers; it writes the gate gradients of its
units to ``DG[t]`` and its part of the straight-through sum ``Σ (h̃-h)dh + (c̃-c)dc``; barrier;
``dh_{t-1}[its units] += DG[t] (all units) · W_hh[:, its units]`` with the resident slice, and the
partials are summed to update d(up), d(cum).

``SAVE=False`` (inference): nothing is kept for a backward (h ping-pongs in a (2, B, H) buffer).
"""

from __future__ import annotations


from . import coop
from .triton_utils import HAS_TRITON, buffers, next_pow2

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .coop import decide as _decide
    from .coop import delta_from_partials as _delta
    from .coop import grid_sync as _grid_sync
    from .coop import kdot as _kdot
    from .triton_utils import sigmoid as _sigmoid
    from .triton_utils import tanh as _tanh

    @triton.jit
    def _bias(BIH, BHH, idx, cmask, zero_n, HAS_BIH: tl.constexpr, HAS_BHH: tl.constexpr):
        """``b_ih[idx] + b_hh[idx]`` (either may be absent) for this program's units."""
        b = zero_n
        if HAS_BIH:
            b += tl.load(BIH + idx, mask=cmask, other=0.0)
        if HAS_BHH:
            b += tl.load(BHH + idx, mask=cmask, other=0.0)
        return b

    @triton.jit
    def _load4(ptr, off, m2, H, b_i, b_f, b_g, b_o):
        """The four gate slices (i, f, g, o) of this program's units at ``ptr + off``, plus the
        biases of those units (the input projection is a plain GEMM, the biases join here)."""
        return (tl.load(ptr + off, mask=m2, other=0.0) + b_i[None, :],
                tl.load(ptr + off + H, mask=m2, other=0.0) + b_f[None, :],
                tl.load(ptr + off + 2 * H, mask=m2, other=0.0) + b_g[None, :],
                tl.load(ptr + off + 3 * H, mask=m2, other=0.0) + b_o[None, :])

    @triton.jit
    def _inputs4(ptr, goff, rows64, rmask, cols, cmask, m2, H, WIH, b_i, b_f, b_g, b_o,
                 XI: tl.constexpr):
        """One step's input pre-activations of this program's units (i, f, g, o), biases included:
        with XI = 0 read from the projection ``ptr`` = XP[t] (T,B,4H); with XI = I > 0 (a few
        input features) computed here from ``ptr`` = x[t] (T,B,I) and W_ih (4H,I) by I
        rank-one updates in fp32 (the W_ih columns are L1 hits after the first step): no
        (T·B, 4H) GEMM launch, no projection written and read back."""
        if XI > 0:
            a_i = tl.zeros(m2.shape, dtype=b_i.dtype) + b_i[None, :]
            a_f = tl.zeros(m2.shape, dtype=b_i.dtype) + b_f[None, :]
            a_g = tl.zeros(m2.shape, dtype=b_i.dtype) + b_g[None, :]
            a_o = tl.zeros(m2.shape, dtype=b_i.dtype) + b_o[None, :]
            wcol = WIH + cols.to(tl.int64) * XI
            for k in tl.static_range(XI):
                xk = tl.load(ptr + rows64 * XI + k, mask=rmask, other=0.0)[:, None]
                a_i += xk * tl.load(wcol + k, mask=cmask, other=0.0)[None, :]
                a_f += xk * tl.load(wcol + H * XI + k, mask=cmask, other=0.0)[None, :]
                a_g += xk * tl.load(wcol + 2 * H * XI + k, mask=cmask, other=0.0)[None, :]
                a_o += xk * tl.load(wcol + 3 * H * XI + k, mask=cmask, other=0.0)[None, :]
            return a_i, a_f, a_g, a_o
        else:
            return _load4(ptr, goff, m2, H, b_i, b_f, b_g, b_o)

    @triton.jit
    def _step_inputs4(MASK, r, m_default, ptr, goff, rows64, rmask, cols, cmask, m2, H, WIH,
                      b_i, b_f, b_g, b_o, XI: tl.constexpr, HAS_MASK: tl.constexpr):
        """A step's mask entries (``m_default`` without a mask) and input pre-activations; ``r``
        the step's (T, B) offsets, ``ptr`` its XP / x row."""
        if HAS_MASK:
            m = tl.load(MASK + r, mask=rmask, other=0.0)
        else:
            m = m_default
        x_i, x_f, x_g, x_o = _inputs4(ptr, goff, rows64, rmask, cols, cmask, m2, H, WIH,
                                      b_i, b_f, b_g, b_o, XI)
        return m, x_i, x_f, x_g, x_o

    @triton.jit
    def _candidate(hfull, w_i, w_f, w_g, w_o, x_i, x_f, x_g, x_o, c_own, wp, m2,
                   KC: tl.constexpr, PRECISION: tl.constexpr):
        """One step's candidate for this program's units: gates, c̃, h̃ and the rows' partial
        sums of w_p·c̃ over these units."""
        zt = tl.zeros(x_i.shape, dtype=x_i.dtype)
        si = _sigmoid(_kdot(hfull, w_i, zt, KC, PRECISION) + x_i)
        sf = _sigmoid(_kdot(hfull, w_f, zt, KC, PRECISION) + x_f)
        tg = _tanh(_kdot(hfull, w_g, zt, KC, PRECISION) + x_g)
        so = _sigmoid(_kdot(hfull, w_o, zt, KC, PRECISION) + x_o)
        cc = sf * c_own + si * tg
        hc = so * _tanh(cc)
        zpart = tl.sum(tl.where(m2, cc * wp[None, :], 0.0), axis=1)
        return si, sf, tg, so, cc, hc, zpart

    @triton.jit(do_not_specialize=["T", "B"])
    def _lstm_coop_fwd_kernel(
        XP, WIH, W, BIH, BHH, WP, BP, MASK, UP0, CUM0, H0, C0,
        HS, CS, G, OUT, UPD, PROB, STATS, UPN, CUMN, HN, CN,
        ZP, CNT, FLAG,
        T, B, H, NCOL, threshold,
        HAS_MASK: tl.constexpr, HAS_BIH: tl.constexpr, HAS_BHH: tl.constexpr, XI: tl.constexpr,
        SAVE: tl.constexpr, BLOCK_B: tl.constexpr,
        BLOCK_N: tl.constexpr, HP: tl.constexpr, KC: tl.constexpr, NCP: tl.constexpr,
        PRECISION: tl.constexpr,
        SPIN: tl.constexpr,
    ):
        """XP (T,B,4H) = x W_ih^T (no bias), or with XI = I > 0 x itself (T,B,I) and
        WIH = W_ih (4H,I) (the projection is done here); W = W_hh (4H,H); BIH, BHH (4H,) biases
        (HAS_BIH, HAS_BHH); H0, C0 (B,H) initial state; HS, CS (T+1,B,H)
        history [SAVE] (the kernel writes [0] = h0, c0), else HS (2,B,H) h ping-pong;
        G (T,B,4H), STATS (5,T,B) [SAVE];
        HN, CN (B,H) final state; ZP (2,NCOL,B) partials; CNT (#row blocks,) zeroed counters."""
        pr = tl.program_id(0)
        pc = tl.program_id(1)
        rows = pr * BLOCK_B + tl.arange(0, BLOCK_B)
        rmask = rows < B
        rows64 = rows.to(tl.int64)
        cols = pc * BLOCK_N + tl.arange(0, BLOCK_N)
        cmask = cols < H
        ks = tl.arange(0, HP)
        kmask = ks < H
        H4 = 4 * H
        # the resident slice of W_hh^T: HP x BLOCK_N per gate, loaded once (read from W_hh
        # transposed: element (k, n) of gate g is W[g*H + n, k])
        if KC == 1:
            wptr = W + cols[None, :].to(tl.int64) * H + ks[:, None]
            wm = kmask[:, None] & cmask[None, :]
            hoff = rows64[:, None] * H + ks[None, :]
            hm = rmask[:, None] & kmask[None, :]
        else:  # K split in KC chunks: (KC, HP/KC, BLOCK_N) slices, batched dots, sum over KC
            k3 = tl.arange(0, KC)[:, None, None] * (HP // KC) \
                + tl.arange(0, HP // KC)[None, :, None]
            wptr = W + cols[None, None, :].to(tl.int64) * H + k3
            wm = (k3 < H) & cmask[None, None, :]
            ka = tl.arange(0, KC)[:, None, None] * (HP // KC) \
                + tl.arange(0, HP // KC)[None, None, :]
            hoff = rows64[None, :, None] * H + ka
            hm = rmask[None, :, None] & (ka < H)
        w_i = tl.load(wptr, mask=wm, other=0.0)
        w_f = tl.load(wptr + H * H, mask=wm, other=0.0)
        w_g = tl.load(wptr + 2 * H * H, mask=wm, other=0.0)
        w_o = tl.load(wptr + 3 * H * H, mask=wm, other=0.0)
        wp = tl.load(WP + cols, mask=cmask, other=0.0)
        zero_n = wp * 0.0
        b_i = _bias(BIH, BHH, cols, cmask, zero_n, HAS_BIH, HAS_BHH)
        b_f = _bias(BIH, BHH, cols + H, cmask, zero_n, HAS_BIH, HAS_BHH)
        b_g = _bias(BIH, BHH, cols + 2 * H, cmask, zero_n, HAS_BIH, HAS_BHH)
        b_o = _bias(BIH, BHH, cols + 3 * H, cmask, zero_n, HAS_BIH, HAS_BHH)
        if XI > 0:  # per-row width of the input stream: x (T,B,I) or XP (T,B,4H)
            IW = XI
        else:
            IW = H4
        bp = tl.load(BP)
        up = tl.load(UP0 + rows, mask=rmask, other=1.0)
        cum = tl.load(CUM0 + rows, mask=rmask, other=0.0)
        zero_b = up * 0.0
        smask = rmask & ((rows * 0 + pc) == 0)  # per-row outputs: column block 0 writes them
        m2 = rmask[:, None] & cmask[None, :]
        soff = rows64[:, None] * H + cols[None, :]
        goff = rows64[:, None] * H4 + cols[None, :]
        pcs = tl.arange(0, NCP)
        zoff = pcs[:, None] * B + rows[None, :]
        zm = (pcs < NCOL)[:, None] & rmask[None, :]
        h_own = tl.load(H0 + soff, mask=m2, other=0.0)
        c_own = tl.load(C0 + soff, mask=m2, other=0.0)
        if SAVE:  # the history's step 0 (read by the backward only): each program its own units
            tl.store(HS + soff, h_own, mask=m2)
            tl.store(CS + soff, c_own, mask=m2)
        bad = pc * 0
        xp_t = XP
        g_t = G
        o_t = OUT
        r_t = rows
        h_rd = H0
        # step 0's inputs; inside the loop the next step's are loaded before the barrier
        m, x_i, x_f, x_g, x_o = _step_inputs4(MASK, rows, zero_b + 1.0, XP, goff, rows64, rmask,
                                              cols, cmask, m2, H, WIH, b_i, b_f, b_g, b_o, XI,
                                              HAS_MASK)
        if SAVE:
            # training: every step computes the candidate (the backward needs the gates)
            for t in range(T):
                ut, upd, u = _decide(up, cum, m, threshold)
                srow = STATS + r_t
                tl.store(srow, u, mask=smask)
                tl.store(srow + T * B, ut, mask=smask)
                tl.store(srow + 3 * T * B, up, mask=smask)
                tl.store(srow + 4 * T * B, cum, mask=smask)
                tl.store(UPD + r_t, u, mask=smask)
                tl.store(PROB + r_t, ut * m, mask=smask)
                h_wr = HS + (t + 1) * B * H
                hfull = tl.load(h_rd + hoff, mask=hm, other=0.0, cache_modifier=".cg")
                si, sf, tg, so, cc, hc, zpart = _candidate(
                    hfull, w_i, w_f, w_g, w_o, x_i, x_f, x_g, x_o, c_own, wp, m2, KC, PRECISION)
                tl.store(g_t + goff, si, mask=m2)
                tl.store(g_t + goff + H, sf, mask=m2)
                tl.store(g_t + goff + 2 * H, tg, mask=m2)
                tl.store(g_t + goff + 3 * H, so, mask=m2)
                zslot = ZP + (t % 2) * NCOL * B
                tl.store(zslot + pc * B + rows, zpart, mask=rmask)
                c_own = tl.where(upd[:, None], cc, c_own)
                h_own = tl.where(upd[:, None], hc, h_own)
                tl.store(h_wr + soff, h_own, mask=m2)
                tl.store(CS + (t + 1) * B * H + soff, c_own, mask=m2)
                tl.store(o_t + soff, h_own * m[:, None], mask=m2)
                # prefetch step t+1's inputs (step t's again at the last step: harmless)
                nxt = tl.where(t + 1 < T, B, 0)
                m_n, x_i, x_f, x_g, x_o = _step_inputs4(
                    MASK, r_t + nxt, m, xp_t + nxt * IW, goff, rows64, rmask, cols, cmask, m2, H,
                    WIH, b_i, b_f, b_g, b_o, XI, HAS_MASK)
                bad = _grid_sync(CNT + pr, NCOL * (t + 1), bad, SPIN)
                delta = _delta(zslot, zoff, zm, bp)
                tl.store(srow + 2 * T * B, delta, mask=smask)
                up = tl.where(upd, delta, up)
                cum = tl.where(m != 0, tl.where(upd, 0.0, ut), cum)
                m = m_n
                h_rd = h_wr
                xp_t += B * IW
                g_t += B * H4
                o_t += B * H
                r_t += B
        else:
            nb = pc * 0  # barriers so far (steps on which some row of this block updated)
            for t in range(T):
                ut, upd, u = _decide(up, cum, m, threshold)
                tl.store(UPD + r_t, u, mask=smask)
                tl.store(PROB + r_t, ut * m, mask=smask)
                # inference: every program of the row block reaches the same decision, so a step
                # on which no row of the block updates does no matrix product, no exchange and no
                # barrier (h, c and the update probability are carried)
                anyu = tl.max(tl.where(rmask, u, 0.0), axis=0)
                # prefetch step t+1's inputs (step t's again at the last step: harmless)
                nxt = tl.where(t + 1 < T, B, 0)
                m_n, xn_i, xn_f, xn_g, xn_o = _step_inputs4(
                    MASK, r_t + nxt, m, xp_t + nxt * IW, goff, rows64, rmask, cols, cmask, m2, H,
                    WIH, b_i, b_f, b_g, b_o, XI, HAS_MASK)
                if anyu > 0.0:
                    h_wr = HS + ((nb + 1) % 2) * B * H
                    hfull = tl.load(h_rd + hoff, mask=hm, other=0.0, cache_modifier=".cg")
                    _, _, _, _, cc, hc, zpart = _candidate(
                        hfull, w_i, w_f, w_g, w_o, x_i, x_f, x_g, x_o, c_own, wp, m2, KC, PRECISION)
                    zslot = ZP + (nb % 2) * NCOL * B
                    tl.store(zslot + pc * B + rows, zpart, mask=rmask)
                    c_own = tl.where(upd[:, None], cc, c_own)
                    h_own = tl.where(upd[:, None], hc, h_own)
                    tl.store(h_wr + soff, h_own, mask=m2)
                    bad = _grid_sync(CNT + pr, NCOL * (nb + 1), bad, SPIN)
                    delta = _delta(zslot, zoff, zm, bp)
                    up = tl.where(upd, delta, up)
                    h_rd = h_wr
                    nb += 1
                tl.store(o_t + soff, h_own * m[:, None], mask=m2)
                cum = tl.where(m != 0, tl.where(upd, 0.0, ut), cum)
                m = m_n
                x_i = xn_i
                x_f = xn_f
                x_g = xn_g
                x_o = xn_o
                xp_t += B * IW
                o_t += B * H
                r_t += B
        tl.store(UPN + rows, up, mask=smask)
        tl.store(CUMN + rows, cum, mask=smask)
        tl.store(HN + soff, h_own, mask=m2)
        tl.store(CN + soff, c_own, mask=m2)
        tl.atomic_max(FLAG, bad)

    @triton.jit
    def _bwd_loads(STATS, MASK, GUPD, GPROB, go_t, g_t, cs_t, hs_t, r_t, soff, goff, rmask, m2,
                   T, B, H, HAS_MASK: tl.constexpr):
        """One step's backward inputs: per-row stats, mask, incoming grads, gates, old state."""
        srow = STATS + r_t
        u = tl.load(srow, mask=rmask, other=0.0)
        ut = tl.load(srow + T * B, mask=rmask, other=0.0)
        delta = tl.load(srow + 2 * T * B, mask=rmask, other=0.0)
        up_p = tl.load(srow + 3 * T * B, mask=rmask, other=0.0)
        cum_p = tl.load(srow + 4 * T * B, mask=rmask, other=0.0)
        if HAS_MASK:
            m = tl.load(MASK + r_t, mask=rmask, other=0.0)
        else:
            m = u * 0.0 + 1.0
        gupd = tl.load(GUPD + r_t, mask=rmask, other=0.0)
        gprob = tl.load(GPROB + r_t, mask=rmask, other=0.0)
        go = tl.load(go_t + soff, mask=m2, other=0.0)
        si = tl.load(g_t + goff, mask=m2, other=0.0)
        sf = tl.load(g_t + goff + H, mask=m2, other=0.0)
        tg = tl.load(g_t + goff + 2 * H, mask=m2, other=0.0)
        so = tl.load(g_t + goff + 3 * H, mask=m2, other=0.0)
        c_old = tl.load(cs_t + soff, mask=m2, other=0.0)
        h_old = tl.load(hs_t + soff, mask=m2, other=0.0)
        return u, ut, delta, up_p, cum_p, m, gupd, gprob, go, si, sf, tg, so, c_old, h_old

    @triton.jit(do_not_specialize=["T", "B"])
    def _lstm_coop_bwd_kernel(
        W, WP, MASK, HS, CS, G, STATS,
        GOUT, GUPD, GPROB, GUPN, GCUMN, GHN, GCN,
        DG, GZ, DH0, DC0, DUP0, DCUM0, PART,
        ZP, CNT, FLAG,
        T, B, H, NCOL,
        HAS_MASK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
        HP: tl.constexpr, KC: tl.constexpr, NCP: tl.constexpr, PRECISION: tl.constexpr,
        SPIN: tl.constexpr,
    ):
        """W = W_hh (4H,H); GHN/GCN (B,H) grads of h_n/c_n; DH0/DC0 (B,H) out; DG (T,B,4H)
        pre-activation gate gradients; GZ (T,B) gradient of Δũ's pre-activation; PART
        (#row blocks, H+1) this row block's sums over its rows and all steps of gz·c̃ (→ w_p's
        gradient, H) and of gz (→ b_p's): the host sums the row blocks, instead of recomputing
        c̃ from G and CS (four launches). Only these two are kept in registers: running sums of
        the gate gradients too (for the bias gradient) make ptxas spill at 16x16x4."""
        pr = tl.program_id(0)
        pc = tl.program_id(1)
        rows = pr * BLOCK_B + tl.arange(0, BLOCK_B)
        rmask = rows < B
        rows64 = rows.to(tl.int64)
        cols = pc * BLOCK_N + tl.arange(0, BLOCK_N)
        cmask = cols < H
        ks = tl.arange(0, HP)
        kmask = ks < H
        H4 = 4 * H
        # resident slice of W_hh: rows g*H + k (all k), columns = this program's units
        if KC == 1:
            wptr = W + ks[:, None].to(tl.int64) * H + cols[None, :]
            wm = kmask[:, None] & cmask[None, :]
            dgoff = rows64[:, None] * H4 + ks[None, :]
            dgm = rmask[:, None] & kmask[None, :]
        else:
            k3 = tl.arange(0, KC)[:, None, None] * (HP // KC) \
                + tl.arange(0, HP // KC)[None, :, None]
            wptr = W + k3.to(tl.int64) * H + cols[None, None, :]
            wm = (k3 < H) & cmask[None, None, :]
            ka = tl.arange(0, KC)[:, None, None] * (HP // KC) \
                + tl.arange(0, HP // KC)[None, None, :]
            dgoff = rows64[None, :, None] * H4 + ka
            dgm = rmask[None, :, None] & (ka < H)
        w_i = tl.load(wptr, mask=wm, other=0.0)
        w_f = tl.load(wptr + H * H, mask=wm, other=0.0)
        w_g = tl.load(wptr + 2 * H * H, mask=wm, other=0.0)
        w_o = tl.load(wptr + 3 * H * H, mask=wm, other=0.0)
        wp = tl.load(WP + cols, mask=cmask, other=0.0)
        gup = tl.load(GUPN + rows, mask=rmask, other=0.0)
        gcum = tl.load(GCUMN + rows, mask=rmask, other=0.0)
        zero_b = gup * 0.0
        smask = rmask & ((rows * 0 + pc) == 0)
        m2 = rmask[:, None] & cmask[None, :]
        soff = rows64[:, None] * H + cols[None, :]
        goff = rows64[:, None] * H4 + cols[None, :]
        pcs = tl.arange(0, NCP)
        zoff = pcs[:, None] * B + rows[None, :]
        zm = (pcs < NCOL)[:, None] & rmask[None, :]
        gh = tl.load(GHN + soff, mask=m2, other=0.0)
        gc = tl.load(GCN + soff, mask=m2, other=0.0)
        bad = pc * 0
        r_t = (T - 1) * B + rows
        go_t = GOUT + (T - 1) * B * H
        hs_t = HS + (T - 1) * B * H
        cs_t = CS + (T - 1) * B * H
        g_t = G + (T - 1) * B * H4
        dg_t = DG + (T - 1) * B * H4
        u, ut, delta, up_p, cum_p, m, gupd, gprob, go, si, sf, tg, so, c_old, h_old = \
            _bwd_loads(STATS, MASK, GUPD, GPROB, go_t, g_t, cs_t, hs_t, r_t, soff, goff, rmask,
                       m2, T, B, H, HAS_MASK)
        # running sums for PART (registers; masked lanes hold zeros)
        s_w = tl.zeros((BLOCK_B, BLOCK_N), dtype=GHN.dtype.element_ty)
        s_b = zero_b
        for tt in range(T):
            gz = u * gup * delta * (1.0 - delta)
            tl.store(GZ + r_t, gz, mask=smask)
            gu = gupd + m * gup * (delta - up_p) - m * gcum * ut
            ub = u[:, None]
            ght = gh + go * m[:, None]
            cc = sf * c_old + si * tg
            tc = _tanh(cc)
            hc = so * tc
            gpart = tl.sum(tl.where(m2, (hc - h_old) * ght + (cc - c_old) * gc, 0.0), axis=1)
            zslot = ZP + (tt % 2) * NCOL * B
            tl.store(zslot + pc * B + rows, gpart, mask=rmask)
            ghc = ub * ght
            gcc = ub * gc + gz[:, None] * wp[None, :] + ghc * so * (1.0 - tc * tc)
            d_i = gcc * tg * si * (1.0 - si)
            d_f = gcc * c_old * sf * (1.0 - sf)
            d_g = gcc * si * (1.0 - tg * tg)
            d_o = ghc * tc * so * (1.0 - so)
            tl.store(dg_t + goff, d_i, mask=m2)
            tl.store(dg_t + goff + H, d_f, mask=m2)
            tl.store(dg_t + goff + 2 * H, d_g, mask=m2)
            tl.store(dg_t + goff + 3 * H, d_o, mask=m2)
            s_w += gz[:, None] * cc
            s_b += gz
            gc = (1.0 - ub) * gc + gcc * sf
            gh = (1.0 - ub) * ght
            # prefetch step t-1's inputs (step 0's again at the last step: harmless)
            nxt = tl.where(tt + 1 < T, B, 0)
            u_n, ut_n, delta_n, up_n, cum_n, m_n, gupd_n, gprob_n, go, si, sf, tg, so, c_old, \
                h_old = _bwd_loads(STATS, MASK, GUPD, GPROB, go_t - nxt * H, g_t - nxt * H4,
                                   cs_t - nxt * H, hs_t - nxt * H, r_t - nxt, soff, goff, rmask,
                                   m2, T, B, H, HAS_MASK)
            bad = _grid_sync(CNT + pr, NCOL * (tt + 1), bad, SPIN)
            # dh_{t-1}[its units] += DG[t] (all units, 4 gates) . W_hh[:, its units]
            acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=GHN.dtype.element_ty)
            a = tl.load(dg_t + dgoff, mask=dgm, other=0.0, cache_modifier=".cg")
            acc = _kdot(a, w_i, acc, KC, PRECISION)
            a = tl.load(dg_t + dgoff + H, mask=dgm, other=0.0, cache_modifier=".cg")
            acc = _kdot(a, w_f, acc, KC, PRECISION)
            a = tl.load(dg_t + dgoff + 2 * H, mask=dgm, other=0.0, cache_modifier=".cg")
            acc = _kdot(a, w_g, acc, KC, PRECISION)
            a = tl.load(dg_t + dgoff + 3 * H, mask=dgm, other=0.0, cache_modifier=".cg")
            acc = _kdot(a, w_o, acc, KC, PRECISION)
            gh = gh + acc
            gu += tl.sum(tl.load(zslot + zoff, mask=zm, other=0.0, cache_modifier=".cg"), axis=0)
            # ũ = cum + min(up, 1 - cum): d/dup = d/dcum = a = 1[up <= 1 - cum] (TF's min at a tie)
            g_ut = m * (gu + (1.0 - u) * gcum + gprob)
            one_m = 1.0 - cum_p
            a_w = tl.where(up_p <= one_m, 1.0, 0.0)
            gup = m * (1.0 - u) * gup + (1.0 - m) * gup + a_w * g_ut
            gcum = (1.0 - m) * gcum + a_w * g_ut
            u, ut, delta, up_p, cum_p, m, gupd, gprob = \
                u_n, ut_n, delta_n, up_n, cum_n, m_n, gupd_n, gprob_n
            r_t -= B
            go_t -= B * H
            hs_t -= B * H
            cs_t -= B * H
            g_t -= B * H4
            dg_t -= B * H4
        tl.store(DH0 + soff, gh, mask=m2)
        tl.store(DC0 + soff, gc, mask=m2)
        tl.store(DUP0 + rows, gup, mask=smask)
        tl.store(DCUM0 + rows, gcum, mask=smask)
        prow = PART + pr * (H + 1)
        tl.store(prow + cols, tl.sum(tl.where(m2, s_w, 0.0), axis=0), mask=cmask)
        tl.store(prow + H, tl.sum(tl.where(rmask, s_b, 0.0), axis=0), mask=pc == 0)
        tl.atomic_max(FLAG, bad)


def launch_fwd(xp, w_hh, b_ih, b_hh, gate_w, gate_b, mask, h0, c0, up0, cum0, threshold,
               precision, cfg, save=True, w_ih=None):
    """``xp`` = x W_ih^T without biases (T,B,4H), or with ``w_ih`` (4H,I) given, x itself
    (T,B,I) (the kernel projects it; see ``fuse_input``); ``b_ih``, ``b_hh`` (4H,) or None.
    Returns ``((out, hs, cs, gates, upd, prob, stats, up_n, cum_n, h_n, c_n), flag)``; with
    ``save=False`` hs/cs/gates/stats are None."""
    T, B = xp.shape[:2]
    H = w_hh.shape[1]
    I = xp.shape[2] if w_ih is not None else 0
    HP, nr, nc, cnt, flag = coop.launch_meta(cfg, B, H, xp.device)
    new = buffers(xp)
    zp = new((2, nc, B))
    if save:
        hs = new((T + 1, B, H))
        cs = new((T + 1, B, H))
        gates = new((T, B, 4 * H))
        stats = new((5, T, B))
    else:
        hs = new((2, B, H))
        cs = gates = stats = xp  # unused
    out = new((T, B, H))
    upd = new((T, B))
    prob = new((T, B))
    up_n = new((B,))
    cum_n = new((B,))
    h_n = new((B, H))
    c_n = new((B, H))
    _lstm_coop_fwd_kernel[(nr, nc)](
        # absent tensors (HAS_* False / XI = 0) get any valid pointer: never read
        xp, w_hh if w_ih is None else w_ih, w_hh, up0 if b_ih is None else b_ih,
        up0 if b_hh is None else b_hh, gate_w, gate_b,
        mask if mask is not None else up0, up0, cum0,
        h0, c0, hs, cs, gates, out, upd, prob, stats, up_n, cum_n,
        h_n, c_n,
        zp, cnt, flag,
        T, B, H, nc, float(threshold),
        HAS_MASK=mask is not None, HAS_BIH=b_ih is not None, HAS_BHH=b_hh is not None,
        XI=I, SAVE=save, BLOCK_B=cfg["BLOCK_B"], BLOCK_N=cfg["BLOCK_N"],
        HP=HP, KC=cfg.get("KSPLIT", 1), NCP=max(2, next_pow2(nc)), PRECISION=precision,
        SPIN=coop.SPIN_LIMIT,
        num_warps=cfg["num_warps"], num_stages=1)
    if not save:
        hs = cs = gates = stats = None
    return (out, hs, cs, gates, upd, prob, stats, up_n, cum_n, h_n, c_n), flag


def launch_bwd(w_hh, gate_w, mask, hs, cs, gates, stats, g_out, g_hn, g_cn, g_upn, g_cumn,
               g_upd, g_prob, precision, cfg, zeros=None):
    """Returns ``((dg, gz, dh0, dc0, dup0, dcum0, part), flag)``; ``part`` (#row blocks, H+1):
    per row block, the sums of gz·c̃ (H) and of gz (1).
    ``zeros``: optional zeroed int32 scratch for the barrier counters (see ``coop.launch_meta``)."""
    T, B, H4 = gates.shape
    H = H4 // 4
    HP, nr, nc, cnt, flag = coop.launch_meta(cfg, B, H, gates.device, zeros)
    new = buffers(gates)
    zp = new((2, nc, B))
    dg = new((T, B, 4 * H))
    gz = new((T, B))
    dh0 = new((B, H))
    dc0 = new((B, H))
    dup0 = new((B,))
    dcum0 = new((B,))
    part = new((nr, H + 1))
    _lstm_coop_bwd_kernel[(nr, nc)](
        w_hh, gate_w, mask if mask is not None else dup0, hs, cs, gates, stats,
        g_out, g_upd, g_prob, g_upn, g_cumn, g_hn, g_cn,
        dg, gz, dh0, dc0, dup0, dcum0, part,
        zp, cnt, flag,
        T, B, H, nc,
        HAS_MASK=mask is not None, BLOCK_B=cfg["BLOCK_B"], BLOCK_N=cfg["BLOCK_N"],
        HP=HP, KC=cfg.get("KSPLIT", 1), NCP=max(2, next_pow2(nc)), PRECISION=precision,
        SPIN=coop.SPIN_LIMIT,
        num_warps=cfg["num_warps"], num_stages=1)
    return (dg, gz, dh0, dc0, dup0, dcum0, part), flag
