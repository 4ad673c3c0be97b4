"""Skip GRU, cooperative Triton kernels (hidden units split across programs, W_hh on chip).

Drop-in replacements for ``skip_gru.fused._launch_fwd`` / ``_launch_bwd`` with the structure of
``lstm_coop.py`` (see there and ``coop.py``): 3 gate slices of W_hh resident per program, the
Δũ pre-activation Σ h_cand·w_p and the straight-through sum Σ (h̃-h)dh exchanged as
per-column-block partials, one barrier per step among the programs of a row block.
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
    def _load3(ptr, off, m2, H, b_r, b_z, b_n):
        """The three gate slices (r, z, n) of this program's units at ``ptr + off``, plus their
        input-side biases (b_ir + b_hr, b_iz + b_hz, b_in)."""
        return (tl.load(ptr + off, mask=m2, other=0.0) + b_r[None, :],
                tl.load(ptr + off + H, mask=m2, other=0.0) + b_z[None, :],
                tl.load(ptr + off + 2 * H, mask=m2, other=0.0) + b_n[None, :])

    @triton.jit
    def _inputs3(ptr, xoff, rows64, rmask, cols, cmask, m2, H, WIH, b_r, b_z, b_n,
                 XI: tl.constexpr):
        """One step's input pre-activations (r, z, n) of this program's units, input-side biases
        included: read from ``ptr`` = XP[t] (XI = 0) or computed from ``ptr`` = x[t] (T,B,I) and
        W_ih (3H,I) by I rank-one updates (XI = I > 0; see ``lstm_coop._inputs4``)."""
        if XI > 0:
            a_r = tl.zeros(m2.shape, dtype=b_r.dtype) + b_r[None, :]
            a_z = tl.zeros(m2.shape, dtype=b_r.dtype) + b_z[None, :]
            a_n = tl.zeros(m2.shape, dtype=b_r.dtype) + b_n[None, :]
            wcol = WIH + cols.to(tl.int64) * XI
            for k in tl.static_range(XI):
                xk = tl.load(ptr + rows64 * XI + k, mask=rmask, other=0.0)[:, None]
                a_r += xk * tl.load(wcol + k, mask=cmask, other=0.0)[None, :]
                a_z += xk * tl.load(wcol + H * XI + k, mask=cmask, other=0.0)[None, :]
                a_n += xk * tl.load(wcol + 2 * H * XI + k, mask=cmask, other=0.0)[None, :]
            return a_r, a_z, a_n
        else:
            return _load3(ptr, xoff, m2, H, b_r, b_z, b_n)

    @triton.jit
    def _step_inputs3(MASK, r, m_default, ptr, xoff, rows64, rmask, cols, cmask, m2, H, WIH,
                      b_r, b_z, b_n, XI: tl.constexpr, HAS_MASK: tl.constexpr):
        """A step's mask entries (``m_default`` without a mask) and input pre-activations."""
        if HAS_MASK:
            m = tl.load(MASK + r, mask=rmask, other=0.0)
        else:
            m = m_default
        x_r, x_z, x_n = _inputs3(ptr, xoff, rows64, rmask, cols, cmask, m2, H, WIH, b_r, b_z,
                                 b_n, XI)
        return m, x_r, x_z, x_n

    @triton.jit
    def _candidate(hfull, w_r, w_z, w_n, x_r, x_z, x_n, bhn, h_own, wp, m2,
                   KC: tl.constexpr, PRECISION: tl.constexpr):
        """One step's candidate for this program's units: r, z, n, W_hn h + b_hn, h̃ and the rows'
        partial sums of w_p·h̃ over these units."""
        zt = tl.zeros(x_r.shape, dtype=x_r.dtype)
        r = _sigmoid(_kdot(hfull, w_r, zt, KC, PRECISION) + x_r)
        zg = _sigmoid(_kdot(hfull, w_z, zt, KC, PRECISION) + x_z)
        hn = _kdot(hfull, w_n, zt, KC, PRECISION) + bhn[None, :]
        n = _tanh(x_n + r * hn)
        hc = (1.0 - zg) * n + zg * h_own
        zpart = tl.sum(tl.where(m2, hc * wp[None, :], 0.0), axis=1)
        return r, zg, n, hn, hc, zpart

    @triton.jit(do_not_specialize=["T", "B"])
    def _gru_coop_fwd_kernel(
        XP, WIH, W, BIH, BHH, WP, BP, MASK, UP0, CUM0, H0,
        HS, G, OUT, UPD, PROB, STATS, UPN, CUMN, HN,
        ZP, CNT, FLAG,
        T, B, H, NCOL, threshold,
        HAS_MASK: tl.constexpr, HAS_BIH: tl.constexpr, HAS_BHH: tl.constexpr, XI: tl.constexpr,
        SAVE: tl.constexpr, BLOCK_B: tl.constexpr,
        BLOCK_N: tl.constexpr, HP: tl.constexpr, KC: tl.constexpr, NCP: tl.constexpr,
        PRECISION: tl.constexpr,
        SPIN: tl.constexpr,
    ):
        """XP (T,B,3H) = x W_ih^T (no bias), or with XI = I > 0 x itself (T,B,I) and
        WIH = W_ih (3H,I) (projected here); W = W_hh (3H,H); BIH, BHH (3H,) biases (HAS_BIH,
        HAS_BHH; b_hn sits inside the reset gate's product); H0 (B,H) initial h;
        HS (T+1,B,H) history [SAVE] (the kernel writes [0] = h0) or (2,B,H) h ping-pong;
        G (T,B,4H) r, z, n, W_hn h + b_hn and STATS (5,T,B) [SAVE];
        HN (B,H) final h; ZP (2,NCOL,B) partials; CNT (#row blocks,) zeroed counters."""
        pr = tl.program_id(0)
        pc = tl.program_id(1)
        rows = pr * BLOCK_B + tl.arange(0, BLOCK_B)
        rmask = rows < B
        rows64 = rows.to(tl.int64)
        cols = pc * BLOCK_N + tl.arange(0, BLOCK_N)
        cmask = cols < H
        ks = tl.arange(0, HP)
        kmask = ks < H
        H3 = 3 * H
        H4 = 4 * H
        # the resident slice of W_hh^T, read from W_hh transposed: (k, n) of gate g = W[g*H+n, k]
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
        w_r = tl.load(wptr, mask=wm, other=0.0)
        w_z = tl.load(wptr + H * H, mask=wm, other=0.0)
        w_n = tl.load(wptr + 2 * H * H, mask=wm, other=0.0)
        wp = tl.load(WP + cols, mask=cmask, other=0.0)
        zero_n = wp * 0.0
        b_r = zero_n
        b_z = zero_n
        b_n = zero_n
        bhn = zero_n
        if HAS_BIH:
            b_r += tl.load(BIH + cols, mask=cmask, other=0.0)
            b_z += tl.load(BIH + H + cols, mask=cmask, other=0.0)
            b_n += tl.load(BIH + 2 * H + cols, mask=cmask, other=0.0)
        if HAS_BHH:
            b_r += tl.load(BHH + cols, mask=cmask, other=0.0)
            b_z += tl.load(BHH + H + cols, mask=cmask, other=0.0)
            bhn += tl.load(BHH + 2 * H + cols, mask=cmask, other=0.0)
        if XI > 0:  # per-row width of the input stream: x (T,B,I) or XP (T,B,3H)
            IW = XI
        else:
            IW = H3
        bp = tl.load(BP)
        up = tl.load(UP0 + rows, mask=rmask, other=1.0)
        cum = tl.load(CUM0 + rows, mask=rmask, other=0.0)
        zero_b = up * 0.0
        smask = rmask & ((rows * 0 + pc) == 0)
        m2 = rmask[:, None] & cmask[None, :]
        soff = rows64[:, None] * H + cols[None, :]
        xoff = rows64[:, None] * H3 + cols[None, :]
        goff = rows64[:, None] * H4 + cols[None, :]
        pcs = tl.arange(0, NCP)
        zoff = pcs[:, None] * B + rows[None, :]
        zm = (pcs < NCOL)[:, None] & rmask[None, :]
        h_own = tl.load(H0 + soff, mask=m2, other=0.0)
        if SAVE:  # the history's step 0 (read by the backward only): each program its own units
            tl.store(HS + soff, h_own, mask=m2)
        bad = pc * 0
        xp_t = XP
        g_t = G
        o_t = OUT
        r_t = rows
        h_rd = H0
        # step 0's inputs; inside the loop the next step's are loaded before the barrier
        m, x_r, x_z, x_n = _step_inputs3(MASK, rows, zero_b + 1.0, XP, xoff, rows64, rmask, cols,
                                         cmask, m2, H, WIH, b_r, b_z, b_n, XI, HAS_MASK)
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
                r, zg, n, hn, hc, zpart = _candidate(
                    hfull, w_r, w_z, w_n, x_r, x_z, x_n, bhn, h_own, wp, m2, KC, PRECISION)
                tl.store(g_t + goff, r, mask=m2)
                tl.store(g_t + goff + H, zg, mask=m2)
                tl.store(g_t + goff + 2 * H, n, mask=m2)
                tl.store(g_t + goff + 3 * H, hn, mask=m2)
                zslot = ZP + (t % 2) * NCOL * B
                tl.store(zslot + pc * B + rows, zpart, mask=rmask)
                h_own = tl.where(upd[:, None], hc, h_own)
                tl.store(h_wr + soff, h_own, mask=m2)
                tl.store(o_t + soff, h_own * m[:, None], mask=m2)
                # prefetch step t+1's inputs (step t's again at the last step: harmless)
                nxt = tl.where(t + 1 < T, B, 0)
                m_n, x_r, x_z, x_n = _step_inputs3(
                    MASK, r_t + nxt, m, xp_t + nxt * IW, xoff, rows64, rmask, cols, cmask, m2, H,
                    WIH, b_r, b_z, b_n, XI, HAS_MASK)
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
                # inference: a step on which no row of the block updates does no work (see LSTM)
                anyu = tl.max(tl.where(rmask, u, 0.0), axis=0)
                # prefetch step t+1's inputs (step t's again at the last step: harmless)
                nxt = tl.where(t + 1 < T, B, 0)
                m_n, xn_r, xn_z, xn_n = _step_inputs3(
                    MASK, r_t + nxt, m, xp_t + nxt * IW, xoff, rows64, rmask, cols, cmask, m2, H,
                    WIH, b_r, b_z, b_n, XI, HAS_MASK)
                if anyu > 0.0:
                    h_wr = HS + ((nb + 1) % 2) * B * H
                    hfull = tl.load(h_rd + hoff, mask=hm, other=0.0, cache_modifier=".cg")
                    _, _, _, _, hc, zpart = _candidate(
                        hfull, w_r, w_z, w_n, x_r, x_z, x_n, bhn, h_own, wp, m2, KC, PRECISION)
                    zslot = ZP + (nb % 2) * NCOL * B
                    tl.store(zslot + pc * B + rows, zpart, mask=rmask)
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
                x_r = xn_r
                x_z = xn_z
                x_n = xn_n
                xp_t += B * IW
                o_t += B * H
                r_t += B
        tl.store(UPN + rows, up, mask=smask)
        tl.store(CUMN + rows, cum, mask=smask)
        tl.store(HN + soff, h_own, mask=m2)
        tl.atomic_max(FLAG, bad)

    @triton.jit
    def _bwd_loads(STATS, MASK, GUPD, GPROB, go_t, g_t, hs_t, r_t, soff, goff, rmask, m2,
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
        r = tl.load(g_t + goff, mask=m2, other=0.0)
        zg = tl.load(g_t + goff + H, mask=m2, other=0.0)
        n = tl.load(g_t + goff + 2 * H, mask=m2, other=0.0)
        hn = tl.load(g_t + goff + 3 * H, mask=m2, other=0.0)
        h_old = tl.load(hs_t + soff, mask=m2, other=0.0)
        return u, ut, delta, up_p, cum_p, m, gupd, gprob, go, r, zg, n, hn, h_old

    @triton.jit(do_not_specialize=["T", "B"])
    def _gru_coop_bwd_kernel(
        W, WP, MASK, HS, G, STATS,
        GOUT, GUPD, GPROB, GUPN, GCUMN, GHN,
        DG, GZ, DH0, DUP0, DCUM0, PART,
        ZP, CNT, FLAG,
        T, B, H, NCOL,
        HAS_MASK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
        HP: tl.constexpr, KC: tl.constexpr, NCP: tl.constexpr, PRECISION: tl.constexpr,
        SPIN: tl.constexpr,
    ):
        """W = W_hh (3H,H); GHN (B,H) grad of h_n; DH0 (B,H) out; DG (T,B,4H) gets d(r, z, n
        pre-activations) and d(W_hn h + b_hn); GZ (T,B) gradient of Δũ's pre-activation; PART
        (#row blocks, H+1) this row block's sums over its rows and all steps of gz·h̃ (→ w_p's
        gradient, H) and of gz (→ b_p's); the host sums the row blocks."""
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
        w_r = tl.load(wptr, mask=wm, other=0.0)
        w_z = tl.load(wptr + H * H, mask=wm, other=0.0)
        w_n = tl.load(wptr + 2 * H * H, mask=wm, other=0.0)
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
        bad = pc * 0
        r_t = (T - 1) * B + rows
        go_t = GOUT + (T - 1) * B * H
        hs_t = HS + (T - 1) * B * H
        g_t = G + (T - 1) * B * H4
        dg_t = DG + (T - 1) * B * H4
        u, ut, delta, up_p, cum_p, m, gupd, gprob, go, r, zg, n, hn, h_old = \
            _bwd_loads(STATS, MASK, GUPD, GPROB, go_t, g_t, hs_t, r_t, soff, goff, rmask, m2,
                       T, B, H, HAS_MASK)
        # running sums for PART (registers; masked lanes hold zeros)
        s_w = tl.zeros((BLOCK_B, BLOCK_N), dtype=GHN.dtype.element_ty)
        s_b = zero_b
        for tt in range(T):
            gz = u * gup * delta * (1.0 - delta)
            tl.store(GZ + r_t, gz, mask=smask)
            gu = gupd + m * gup * (delta - up_p) - m * gcum * ut
            ub = u[:, None]
            ght = gh + go * m[:, None]
            hc = (1.0 - zg) * n + zg * h_old
            gpart = tl.sum(tl.where(m2, (hc - h_old) * ght, 0.0), axis=1)
            zslot = ZP + (tt % 2) * NCOL * B
            tl.store(zslot + pc * B + rows, gpart, mask=rmask)
            ghc = ub * ght + gz[:, None] * wp[None, :]
            dn = ghc * (1.0 - zg) * (1.0 - n * n)
            d_r = dn * hn * r * (1.0 - r)
            d_z = ghc * (h_old - n) * zg * (1.0 - zg)
            d_h = dn * r
            tl.store(dg_t + goff, d_r, mask=m2)
            tl.store(dg_t + goff + H, d_z, mask=m2)
            tl.store(dg_t + goff + 2 * H, dn, mask=m2)
            tl.store(dg_t + goff + 3 * H, d_h, mask=m2)
            s_w += gz[:, None] * hc
            s_b += gz
            gh = (1.0 - ub) * ght + ghc * zg
            # prefetch step t-1's inputs (step 0's again at the last step: harmless)
            nxt = tl.where(tt + 1 < T, B, 0)
            u_n, ut_n, delta_n, up_n, cum_n, m_n, gupd_n, gprob_n, go, r, zg, n, hn, h_old = \
                _bwd_loads(STATS, MASK, GUPD, GPROB, go_t - nxt * H, g_t - nxt * H4,
                           hs_t - nxt * H, r_t - nxt, soff, goff, rmask, m2, T, B, H, HAS_MASK)
            bad = _grid_sync(CNT + pr, NCOL * (tt + 1), bad, SPIN)
            # dh_{t-1}[its units] += [dr, dz, dhn] (DG columns 0, H, 3H) . W_hh rows 0, H, 2H
            acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=GHN.dtype.element_ty)
            a = tl.load(dg_t + dgoff, mask=dgm, other=0.0, cache_modifier=".cg")
            acc = _kdot(a, w_r, acc, KC, PRECISION)
            a = tl.load(dg_t + dgoff + H, mask=dgm, other=0.0, cache_modifier=".cg")
            acc = _kdot(a, w_z, acc, KC, PRECISION)
            a = tl.load(dg_t + dgoff + 3 * H, mask=dgm, other=0.0, cache_modifier=".cg")
            acc = _kdot(a, w_n, acc, KC, PRECISION)
            gh = gh + acc
            gu += tl.sum(tl.load(zslot + zoff, mask=zm, other=0.0, cache_modifier=".cg"), axis=0)
            g_ut = m * (gu + (1.0 - u) * gcum + gprob)
            one_m = 1.0 - cum_p
            a_w = tl.where(up_p <= one_m, 1.0, 0.0)  # TF's min: a tie sends it all to up
            gup = m * (1.0 - u) * gup + (1.0 - m) * gup + a_w * g_ut
            gcum = (1.0 - m) * gcum + a_w * g_ut
            u, ut, delta, up_p, cum_p, m, gupd, gprob = \
                u_n, ut_n, delta_n, up_n, cum_n, m_n, gupd_n, gprob_n
            r_t -= B
            go_t -= B * H
            hs_t -= B * H
            g_t -= B * H4
            dg_t -= B * H4
        tl.store(DH0 + soff, gh, mask=m2)
        tl.store(DUP0 + rows, gup, mask=smask)
        tl.store(DCUM0 + rows, gcum, mask=smask)
        prow = PART + pr * (H + 1)
        tl.store(prow + cols, tl.sum(tl.where(m2, s_w, 0.0), axis=0), mask=cmask)
        tl.store(prow + H, tl.sum(tl.where(rmask, s_b, 0.0), axis=0), mask=pc == 0)
        tl.atomic_max(FLAG, bad)


def launch_fwd(xp, w_hh, b_ih, b_hh, gate_w, gate_b, mask, h0, up0, cum0, threshold, precision,
               cfg, save=True, w_ih=None):
    """``xp`` = x W_ih^T without biases (T,B,3H), or with ``w_ih`` (3H,I) given, x itself
    (T,B,I) (projected in the kernel, see ``coop.fuse_input``); ``b_ih``, ``b_hh`` (3H,) or None.
    Returns ``((out, hs, gates, upd, prob, stats, up_n, cum_n, h_n), flag)``; with
    ``save=False`` hs/gates/stats are None."""
    T, B = xp.shape[:2]
    H = w_hh.shape[1]
    I = xp.shape[2] if w_ih is not None else 0
    HP, nr, nc, cnt, flag = coop.launch_meta(cfg, B, H, xp.device)
    new = buffers(xp)
    zp = new((2, nc, B))
    if save:
        hs = new((T + 1, B, H))
        gates = new((T, B, 4 * H))
        stats = new((5, T, B))
    else:
        hs = new((2, B, H))
        gates = stats = xp  # unused
    out = new((T, B, H))
    upd = new((T, B))
    prob = new((T, B))
    up_n = new((B,))
    cum_n = new((B,))
    h_n = new((B, H))
    _gru_coop_fwd_kernel[(nr, nc)](
        # absent tensors (HAS_* False / XI = 0) get any valid pointer: never read
        xp, w_hh if w_ih is None else w_ih, w_hh, up0 if b_ih is None else b_ih,
        up0 if b_hh is None else b_hh, gate_w, gate_b,
        mask if mask is not None else up0, up0, cum0,
        h0, hs, gates, out, upd, prob, stats, up_n, cum_n, h_n,
        zp, cnt, flag,
        T, B, H, nc, float(threshold),
        HAS_MASK=mask is not None, HAS_BIH=b_ih is not None, HAS_BHH=b_hh is not None,
        XI=I, SAVE=save, BLOCK_B=cfg["BLOCK_B"], BLOCK_N=cfg["BLOCK_N"],
        HP=HP, KC=cfg.get("KSPLIT", 1), NCP=max(2, next_pow2(nc)), PRECISION=precision,
        SPIN=coop.SPIN_LIMIT,
        num_warps=cfg["num_warps"], num_stages=1)
    if not save:
        hs = gates = stats = None
    return (out, hs, gates, upd, prob, stats, up_n, cum_n, h_n), flag


def launch_bwd(w_hh, gate_w, mask, hs, gates, stats, g_out, g_hn, g_upn, g_cumn, g_upd,
               g_prob, precision, cfg, zeros=None):
    """Returns ``((dg, gz, dh0, dup0, dcum0, part), flag)``; ``part`` (#row blocks, H+1): per
    row block, the sums of gz·h̃ (H) and of gz (1).
    ``zeros``: optional zeroed int32 scratch for the barrier counters (see ``coop.launch_meta``)."""
    T, B, H4 = gates.shape
    H = H4 // 4
    HP, nr, nc, cnt, flag = coop.launch_meta(cfg, B, H, gates.device, zeros)
    new = buffers(gates)
    zp = new((2, nc, B))
    dg = new((T, B, 4 * H))
    gz = new((T, B))
    dh0 = new((B, H))
    dup0 = new((B,))
    dcum0 = new((B,))
    part = new((nr, H + 1))
    _gru_coop_bwd_kernel[(nr, nc)](
        w_hh, gate_w, mask if mask is not None else dup0, hs, gates, stats,
        g_out, g_upd, g_prob, g_upn, g_cumn, g_hn,
        dg, gz, dh0, dup0, dcum0, part,
        zp, cnt, flag,
        T, B, H, nc,
        HAS_MASK=mask is not None, BLOCK_B=cfg["BLOCK_B"], BLOCK_N=cfg["BLOCK_N"],
        HP=HP, KC=cfg.get("KSPLIT", 1), NCP=max(2, next_pow2(nc)), PRECISION=precision,
        SPIN=coop.SPIN_LIMIT,
        num_warps=cfg["num_warps"], num_stages=1)
    return (dg, gz, dh0, dup0, dcum0, part), flag
