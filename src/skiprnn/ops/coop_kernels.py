"""Skip LSTM / Skip GRU, cooperative Triton kernels (hidden units split across programs, W_hh on
chip), one pair of kernels for both cells (``CELL``: 'lstm' | 'gru', a ``tl.constexpr``; the
GRU has nn.GRU's candidate only).

Drop-in replacements for ``rowblock.launch_fwd`` / ``launch_bwd``: the same buffers come out
(h/c history, gate activations, per-row stats; gate gradients, dz, dh0, dc0, ...), so the
autograd function and its outer GEMMs are shared (``triton_rnn.py``). See ``coop.py`` for the
grid, the barrier and the selection.

Forward, program ``(pr, pc)``, per step t: ũ, u (per row, computed identically by every program of
the row block), the full ``h_{t-1}`` of its rows from ``HS[t]`` (L2, ``.cg``), ``h W^T`` for its
units against the resident slices (4 gates for the LSTM, 3 for the GRU), gates, candidate,
gating/copy of its units (``h`` and the LSTM's ``c`` of its units also stay in registers),
``Σ_its units s̃·w_p`` (s̃ = c̃ for the LSTM, h̃ for the GRU) to the partials buffer; barrier; every
program sums the partials to Δũ and updates up / cum.

Backward, reverse time: its units' dh (dc) stay in registers; it writes the gate gradients of its
units to ``DG[t]`` and its part of the straight-through sum ``Σ (h̃-h)dh [+ (c̃-c)dc]``; barrier;
``dh_{t-1}[its units] += DG[t] (all units) · W_hh[:, its units]`` with the resident slices, and the
partials are summed to update d(up), d(cum).

``SAVE=False`` (inference): nothing is kept for a backward (h ping-pongs in a (2, B, H) buffer).
"""

from __future__ import annotations

from . import coop
from .triton_utils import HAS_TRITON, buffers, next_pow2
from .triton_utils import ptr_or as _or

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .coop import decide as _decide
    from .coop import decide_backward as _decide_backward
    from .coop import delta_from_partials as _delta
    from .coop import gate_update as _gate_update
    from .coop import grid_sync as _grid_sync
    from .coop import kdot as _kdot
    from .coop import save_step as _save_step
    from .coop import step_stats as _step_stats
    from .coop import store4 as _store4
    from .triton_utils import sigmoid as _sigmoid
    from .triton_utils import tanh as _tanh

    @triton.jit
    def _tile(B, H, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, HP: tl.constexpr):
        """Program ``(pr, pc)``'s rows (BLOCK_B of B) and units (BLOCK_N of H) with their masks
        and int64 row offsets, and the K range of W_hh (HP = next_pow2(H)) with its mask."""
        pr = tl.program_id(0)
        pc = tl.program_id(1)
        rows = pr * BLOCK_B + tl.arange(0, BLOCK_B)
        rmask = rows < B
        rows64 = rows.to(tl.int64)
        cols = pc * BLOCK_N + tl.arange(0, BLOCK_N)
        cmask = cols < H
        ks = tl.arange(0, HP)
        kmask = ks < H
        return pr, pc, rows, rmask, rows64, cols, cmask, ks, kmask

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
    def _biases(BIH, BHH, cols, cmask, zero_n, H, CELL: tl.constexpr, HAS_BIH: tl.constexpr,
                HAS_BHH: tl.constexpr):
        """The four bias vectors of this program's units: the LSTM's ``b_ih + b_hh`` of i, f, g,
        o; the GRU's ``b_ir + b_hr``, ``b_iz + b_hz``, ``b_in`` (the input side) and ``b_hn``
        (inside the reset gate's product)."""
        if CELL == "lstm":
            b0 = _bias(BIH, BHH, cols, cmask, zero_n, HAS_BIH, HAS_BHH)
            b1 = _bias(BIH, BHH, cols + H, cmask, zero_n, HAS_BIH, HAS_BHH)
            b2 = _bias(BIH, BHH, cols + 2 * H, cmask, zero_n, HAS_BIH, HAS_BHH)
            b3 = _bias(BIH, BHH, cols + 3 * H, cmask, zero_n, HAS_BIH, HAS_BHH)
        else:
            b0, b1, b2, b3 = zero_n, zero_n, zero_n, zero_n
            if HAS_BIH:
                b0 += tl.load(BIH + cols, mask=cmask, other=0.0)
                b1 += tl.load(BIH + H + cols, mask=cmask, other=0.0)
                b2 += tl.load(BIH + 2 * H + cols, mask=cmask, other=0.0)
            if HAS_BHH:
                b0 += tl.load(BHH + cols, mask=cmask, other=0.0)
                b1 += tl.load(BHH + H + cols, mask=cmask, other=0.0)
                b3 += tl.load(BHH + 2 * H + cols, mask=cmask, other=0.0)
        return b0, b1, b2, b3

    @triton.jit
    def _inputs(ptr, xoff, rows64, rmask, cols, cmask, m2, H, WIH, b0, b1, b2, b3,
                CELL: tl.constexpr, XI: tl.constexpr):
        """One step's input pre-activations of this program's units, biases included: the
        LSTM's i, f, g, o; the GRU's r, z, n and a fourth that repeats n (unused: the GRU's
        fourth gate block, W_hn h + b_hn, has no input side). With XI = 0 read from the
        projection ``ptr`` = XP[t] (T,B,gates·H); with XI = I > 0 (a few input features)
        computed here from ``ptr`` = x[t] (T,B,I) and W_ih (gates·H,I) by I rank-one updates in
        fp32 (the W_ih columns are L1 hits after the first step): no (T·B, gates·H) GEMM launch,
        no projection written and read back."""
        if XI > 0:
            a0 = tl.zeros(m2.shape, dtype=b0.dtype) + b0[None, :]
            a1 = tl.zeros(m2.shape, dtype=b0.dtype) + b1[None, :]
            a2 = tl.zeros(m2.shape, dtype=b0.dtype) + b2[None, :]
            if CELL == "lstm":
                a3 = tl.zeros(m2.shape, dtype=b0.dtype) + b3[None, :]
            wcol = WIH + cols.to(tl.int64) * XI
            for k in tl.static_range(XI):
                xk = tl.load(ptr + rows64 * XI + k, mask=rmask, other=0.0)[:, None]
                a0 += xk * tl.load(wcol + k, mask=cmask, other=0.0)[None, :]
                a1 += xk * tl.load(wcol + H * XI + k, mask=cmask, other=0.0)[None, :]
                a2 += xk * tl.load(wcol + 2 * H * XI + k, mask=cmask, other=0.0)[None, :]
                if CELL == "lstm":
                    a3 += xk * tl.load(wcol + 3 * H * XI + k, mask=cmask, other=0.0)[None, :]
        else:
            a0 = tl.load(ptr + xoff, mask=m2, other=0.0) + b0[None, :]
            a1 = tl.load(ptr + xoff + H, mask=m2, other=0.0) + b1[None, :]
            a2 = tl.load(ptr + xoff + 2 * H, mask=m2, other=0.0) + b2[None, :]
            if CELL == "lstm":
                a3 = tl.load(ptr + xoff + 3 * H, mask=m2, other=0.0) + b3[None, :]
        if CELL != "lstm":
            a3 = a2
        return a0, a1, a2, a3

    @triton.jit
    def _step_inputs(MASK, r, m_default, ptr, xoff, rows64, rmask, cols, cmask, m2, H, WIH,
                     b0, b1, b2, b3, CELL: tl.constexpr, XI: tl.constexpr,
                     HAS_MASK: tl.constexpr):
        """A step's mask entries (``m_default`` without a mask) and input pre-activations;
        ``r`` the step's (T, B) offsets, ``ptr`` its XP / x row."""
        m = tl.load(MASK + r, mask=rmask, other=0.0) if HAS_MASK else m_default
        x0, x1, x2, x3 = _inputs(ptr, xoff, rows64, rmask, cols, cmask, m2, H, WIH,
                                 b0, b1, b2, b3, CELL, XI)
        return m, x0, x1, x2, x3

    @triton.jit
    def _candidate(hfull, w0, w1, w2, w3, x0, x1, x2, x3, b3, h_own, c_own, wp, m2,
                   CELL: tl.constexpr, KC: tl.constexpr, PRECISION: tl.constexpr):
        """One step's candidate for this program's units: the four gate blocks G keeps
        (LSTM σ(i), σ(f), tanh(g), σ(o); GRU r, z, n, W_hn h + b_hn), c̃ (the GRU: h̃ again), h̃
        and the rows' partial sums of w_p·s̃ over these units (s̃ = c̃ for the LSTM, h̃ for the
        GRU). ``b3`` is the GRU's b_hn; unused arguments of a cell are any value."""
        zt = tl.zeros(x0.shape, dtype=x0.dtype)
        if CELL == "lstm":
            g0 = _sigmoid(_kdot(hfull, w0, zt, KC, PRECISION) + x0)
            g1 = _sigmoid(_kdot(hfull, w1, zt, KC, PRECISION) + x1)
            g2 = _tanh(_kdot(hfull, w2, zt, KC, PRECISION) + x2)
            g3 = _sigmoid(_kdot(hfull, w3, zt, KC, PRECISION) + x3)
            cc = g1 * c_own + g0 * g2
            hc = g3 * _tanh(cc)
            feat = cc
        else:
            g0 = _sigmoid(_kdot(hfull, w0, zt, KC, PRECISION) + x0)
            g1 = _sigmoid(_kdot(hfull, w1, zt, KC, PRECISION) + x1)
            g3 = _kdot(hfull, w2, zt, KC, PRECISION) + b3[None, :]
            g2 = _tanh(x2 + g0 * g3)
            hc = (1.0 - g1) * g2 + g1 * h_own
            cc = hc
            feat = hc
        zpart = tl.sum(tl.where(m2, feat * wp[None, :], 0.0), axis=1)
        return g0, g1, g2, g3, cc, hc, zpart

    @triton.jit(do_not_specialize=["T", "B"])
    def coop_fwd_kernel(
        XP, WIH, W, BIH, BHH, WP, BP, MASK, UP0, CUM0, H0, C0,
        HS, CS, G, OUT, UPD, PROB, STATS, UPN, CUMN, HN, CN,
        ZP, CNT, FLAG,
        T, B, H, NCOL, threshold,
        CELL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_BIH: tl.constexpr,
        HAS_BHH: tl.constexpr, XI: tl.constexpr, SAVE: tl.constexpr, BLOCK_B: tl.constexpr,
        BLOCK_N: tl.constexpr, HP: tl.constexpr, KC: tl.constexpr, NCP: tl.constexpr,
        PRECISION: tl.constexpr,
        SPIN: tl.constexpr,
    ):
        """XP (T,B,gates·H) = x W_ih^T (no bias), or with XI = I > 0 x itself (T,B,I) and
        WIH = W_ih (gates·H,I) (the projection is done here); W = W_hh (gates·H,H); BIH, BHH
        (gates·H,) biases (HAS_BIH, HAS_BHH); H0 (and the LSTM's C0) (B,H) initial state;
        HS (CS) (T+1,B,H) history [SAVE] (the kernel writes [0] = h0, c0), else HS (2,B,H)
        h ping-pong; G (T,B,4H) (see ``_candidate``), STATS (5,T,B) [SAVE];
        HN (CN) (B,H) final state; ZP (2,NCOL,B) partials; CNT (#row blocks,) zeroed
        counters. The GRU's C0, CS, CN are never touched."""
        pr, pc, rows, rmask, rows64, cols, cmask, ks, kmask = _tile(B, H, BLOCK_B, BLOCK_N, HP)
        XW = (4 if CELL == "lstm" else 3) * H  # the row width of XP
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
        w0 = tl.load(wptr, mask=wm, other=0.0)
        w1 = tl.load(wptr + H * H, mask=wm, other=0.0)
        w2 = tl.load(wptr + 2 * H * H, mask=wm, other=0.0)
        w3 = tl.load(wptr + 3 * H * H, mask=wm, other=0.0) if CELL == "lstm" else w2  # w2: unused
        wp = tl.load(WP + cols, mask=cmask, other=0.0)
        zero_n = wp * 0.0
        b0, b1, b2, b3 = _biases(BIH, BHH, cols, cmask, zero_n, H, CELL, HAS_BIH, HAS_BHH)
        IW = XI if XI > 0 else XW  # per-row width of the input stream: x (T,B,I) or XP
        bp = tl.load(BP)
        up = tl.load(UP0 + rows, mask=rmask, other=1.0)
        cum = tl.load(CUM0 + rows, mask=rmask, other=0.0)
        zero_b = up * 0.0
        smask = rmask & ((rows * 0 + pc) == 0)  # per-row outputs: column block 0 writes them
        m2 = rmask[:, None] & cmask[None, :]
        soff = rows64[:, None] * H + cols[None, :]
        xoff = rows64[:, None] * XW + cols[None, :]
        goff = rows64[:, None] * H4 + cols[None, :]
        pcs = tl.arange(0, NCP)
        zoff = pcs[:, None] * B + rows[None, :]
        zm = (pcs < NCOL)[:, None] & rmask[None, :]
        h_own = tl.load(H0 + soff, mask=m2, other=0.0)
        c_own = tl.load(C0 + soff, mask=m2, other=0.0) if CELL == "lstm" else h_own  # h: unused
        if SAVE:  # the history's step 0 (read by the backward only): each program its own units
            tl.store(HS + soff, h_own, mask=m2)
            if CELL == "lstm":
                tl.store(CS + soff, c_own, mask=m2)
        bad = pc * 0
        xp_t, g_t, o_t, r_t, h_rd = XP, G, OUT, rows, H0
        # step 0's inputs; inside the loop the next step's are loaded before the barrier
        m, x0, x1, x2, x3 = _step_inputs(MASK, rows, zero_b + 1.0, XP, xoff, rows64, rmask, cols,
                                         cmask, m2, H, WIH, b0, b1, b2, b3, CELL, XI, HAS_MASK)
        if SAVE:
            # training: every step computes the candidate (the backward needs the gates)
            for t in range(T):
                ut, upd, u = _decide(up, cum, m, threshold)
                srow = STATS + r_t
                _save_step(STATS, UPD, PROB, r_t, smask, u, ut, up, cum, m, T, B)
                h_wr = HS + (t + 1) * B * H
                hfull = tl.load(h_rd + hoff, mask=hm, other=0.0, cache_modifier=".cg")
                g0, g1, g2, g3, cc, hc, zpart = _candidate(
                    hfull, w0, w1, w2, w3, x0, x1, x2, x3, b3, h_own, c_own, wp, m2, CELL, KC,
                    PRECISION)
                _store4(g_t, goff, m2, H, g0, g1, g2, g3)
                zslot = ZP + (t % 2) * NCOL * B
                tl.store(zslot + pc * B + rows, zpart, mask=rmask)
                if CELL == "lstm":
                    c_own = tl.where(upd[:, None], cc, c_own)
                h_own = tl.where(upd[:, None], hc, h_own)
                tl.store(h_wr + soff, h_own, mask=m2)
                if CELL == "lstm":
                    tl.store(CS + (t + 1) * B * H + soff, c_own, mask=m2)
                tl.store(o_t + soff, h_own * m[:, None], mask=m2)
                # prefetch step t+1's inputs (step t's again at the last step: harmless)
                nxt = tl.where(t + 1 < T, B, 0)
                m_n, x0, x1, x2, x3 = _step_inputs(
                    MASK, r_t + nxt, m, xp_t + nxt * IW, xoff, rows64, rmask, cols, cmask, m2, H,
                    WIH, b0, b1, b2, b3, CELL, XI, HAS_MASK)
                bad = _grid_sync(CNT + pr, NCOL * (t + 1), bad, SPIN)
                delta = _delta(zslot, zoff, zm, bp)
                tl.store(srow + 2 * T * B, delta, mask=smask)
                up, cum = _gate_update(up, cum, upd, ut, m, delta)
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
                # barrier (the state and the update probability are carried)
                anyu = tl.max(tl.where(rmask, u, 0.0), axis=0)
                # prefetch step t+1's inputs (step t's again at the last step: harmless)
                nxt = tl.where(t + 1 < T, B, 0)
                m_n, xn0, xn1, xn2, xn3 = _step_inputs(
                    MASK, r_t + nxt, m, xp_t + nxt * IW, xoff, rows64, rmask, cols, cmask, m2, H,
                    WIH, b0, b1, b2, b3, CELL, XI, HAS_MASK)
                if anyu > 0.0:
                    h_wr = HS + ((nb + 1) % 2) * B * H
                    hfull = tl.load(h_rd + hoff, mask=hm, other=0.0, cache_modifier=".cg")
                    _, _, _, _, cc, hc, zpart = _candidate(
                        hfull, w0, w1, w2, w3, x0, x1, x2, x3, b3, h_own, c_own, wp, m2, CELL,
                        KC, PRECISION)
                    zslot = ZP + (nb % 2) * NCOL * B
                    tl.store(zslot + pc * B + rows, zpart, mask=rmask)
                    if CELL == "lstm":
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
                x0, x1, x2, x3 = xn0, xn1, xn2, xn3
                xp_t += B * IW
                o_t += B * H
                r_t += B
        tl.store(UPN + rows, up, mask=smask)
        tl.store(CUMN + rows, cum, mask=smask)
        tl.store(HN + soff, h_own, mask=m2)
        if CELL == "lstm":
            tl.store(CN + soff, c_own, mask=m2)
        tl.atomic_max(FLAG, bad)

    @triton.jit
    def _bwd_loads(STATS, MASK, GUPD, GPROB, go_t, g_t, cs_t, hs_t, r_t, soff, goff, rmask, m2,
                   T, B, H, CELL: tl.constexpr, HAS_MASK: tl.constexpr):
        """One step's backward inputs: per-row stats, mask, incoming grads, the four gate blocks,
        old state (the GRU's c_old: h_old again, unused)."""
        u, ut, delta, up_p, cum_p, m, gupd, gprob = _step_stats(STATS, MASK, GUPD, GPROB, r_t,
                                                                rmask, T, B, HAS_MASK)
        go = tl.load(go_t + soff, mask=m2, other=0.0)
        g0 = tl.load(g_t + goff, mask=m2, other=0.0)
        g1 = tl.load(g_t + goff + H, mask=m2, other=0.0)
        g2 = tl.load(g_t + goff + 2 * H, mask=m2, other=0.0)
        g3 = tl.load(g_t + goff + 3 * H, mask=m2, other=0.0)
        if CELL == "lstm":
            c_old = tl.load(cs_t + soff, mask=m2, other=0.0)
        h_old = tl.load(hs_t + soff, mask=m2, other=0.0)
        if CELL != "lstm":
            c_old = h_old
        return u, ut, delta, up_p, cum_p, m, gupd, gprob, go, g0, g1, g2, g3, c_old, h_old

    @triton.jit
    def _step_grads(g0, g1, g2, g3, c_old, h_old, ght, gc, ub, gz, wp, m2, CELL: tl.constexpr):
        """One step's gradients for this program's units, from the saved gate blocks and the
        incoming dh (``ght``, the output's share included) and the LSTM's dc (``gc``; any value
        for the GRU): the rows' straight-through partial sums, the four DG blocks (LSTM d(i, f,
        g, o); GRU d(r, z, n) and d(W_hn h + b_hn)), the Δũ feature s̃ and the dh (dc) carried to
        the previous step before the recurrent product."""
        if CELL == "lstm":
            cc = g1 * c_old + g0 * g2
            tc = _tanh(cc)
            hc = g3 * tc
            gpart = tl.sum(tl.where(m2, (hc - h_old) * ght + (cc - c_old) * gc, 0.0), axis=1)
            ghc = ub * ght
            gcc = ub * gc + gz[:, None] * wp[None, :] + ghc * g3 * (1.0 - tc * tc)
            d0 = gcc * g2 * g0 * (1.0 - g0)
            d1 = gcc * c_old * g1 * (1.0 - g1)
            d2 = gcc * g0 * (1.0 - g2 * g2)
            d3 = ghc * tc * g3 * (1.0 - g3)
            feat = cc
            gh = (1.0 - ub) * ght
            gc = (1.0 - ub) * gc + gcc * g1
        else:
            hc = (1.0 - g1) * g2 + g1 * h_old
            gpart = tl.sum(tl.where(m2, (hc - h_old) * ght, 0.0), axis=1)
            ghc = ub * ght + gz[:, None] * wp[None, :]
            d2 = ghc * (1.0 - g1) * (1.0 - g2 * g2)
            d0 = d2 * g3 * g0 * (1.0 - g0)
            d1 = ghc * (h_old - g2) * g1 * (1.0 - g1)
            d3 = d2 * g0
            feat = hc
            gh = (1.0 - ub) * ght + ghc * g1
        return gpart, d0, d1, d2, d3, feat, gh, gc

    @triton.jit(do_not_specialize=["T", "B"])
    def coop_bwd_kernel(
        W, WP, MASK, HS, CS, G, STATS,
        GOUT, GUPD, GPROB, GUPN, GCUMN, GHN, GCN,
        DG, GZ, DH0, DC0, DUP0, DCUM0, PART,
        ZP, CNT, FLAG,
        T, B, H, NCOL,
        CELL: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_B: tl.constexpr,
        BLOCK_N: tl.constexpr, HP: tl.constexpr, KC: tl.constexpr, NCP: tl.constexpr,
        PRECISION: tl.constexpr, SPIN: tl.constexpr,
    ):
        """W = W_hh (gates·H,H); GHN (and the LSTM's GCN) (B,H) grads of h_n (c_n); DH0 (DC0)
        (B,H) out; DG (T,B,4H) pre-activation gate gradients (see ``_step_grads``); GZ (T,B)
        gradient of Δũ's pre-activation; PART (#row blocks, H+1) this row block's sums over its
        rows and all steps of gz·s̃ (→ w_p's gradient, H) and of gz (→ b_p's): the host sums the
        row blocks, instead of recomputing s̃ from G and the history (four launches). Only these
        two are kept in registers: running sums of the gate gradients too (for the bias
        gradient) make ptxas spill at 16x16x4. The GRU's CS, GCN, DC0 are never touched."""
        pr, pc, rows, rmask, rows64, cols, cmask, ks, kmask = _tile(B, H, BLOCK_B, BLOCK_N, HP)
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
        w0 = tl.load(wptr, mask=wm, other=0.0)
        w1 = tl.load(wptr + H * H, mask=wm, other=0.0)
        w2 = tl.load(wptr + 2 * H * H, mask=wm, other=0.0)
        if CELL == "lstm":
            w3 = tl.load(wptr + 3 * H * H, mask=wm, other=0.0)
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
        gc = tl.load(GCN + soff, mask=m2, other=0.0) if CELL == "lstm" else gh  # gh: unused
        bad = pc * 0
        r_t = (T - 1) * B + rows
        go_t = GOUT + (T - 1) * B * H
        hs_t = HS + (T - 1) * B * H
        cs_t = CS + (T - 1) * B * H
        g_t = G + (T - 1) * B * H4
        dg_t = DG + (T - 1) * B * H4
        u, ut, delta, up_p, cum_p, m, gupd, gprob, go, g0, g1, g2, g3, c_old, h_old = \
            _bwd_loads(STATS, MASK, GUPD, GPROB, go_t, g_t, cs_t, hs_t, r_t, soff, goff, rmask,
                       m2, T, B, H, CELL, HAS_MASK)
        # running sums for PART (registers; masked lanes hold zeros)
        s_w = tl.zeros((BLOCK_B, BLOCK_N), dtype=GHN.dtype.element_ty)
        s_b = zero_b
        for tt in range(T):
            gz = u * gup * delta * (1.0 - delta)
            tl.store(GZ + r_t, gz, mask=smask)
            gu = gupd + m * gup * (delta - up_p) - m * gcum * ut
            ub = u[:, None]
            ght = gh + go * m[:, None]
            gpart, d0, d1, d2, d3, feat, gh, gc_n = _step_grads(
                g0, g1, g2, g3, c_old, h_old, ght, gc, ub, gz, wp, m2, CELL)
            if CELL == "lstm":
                gc = gc_n
            zslot = ZP + (tt % 2) * NCOL * B
            tl.store(zslot + pc * B + rows, gpart, mask=rmask)
            _store4(dg_t, goff, m2, H, d0, d1, d2, d3)
            s_w += gz[:, None] * feat
            s_b += gz
            # prefetch step t-1's inputs (step 0's again at the last step: harmless)
            nxt = tl.where(tt + 1 < T, B, 0)
            u_n, ut_n, delta_n, up_n, cum_n, m_n, gupd_n, gprob_n, go, g0, g1, g2, g3, c_old, \
                h_old = _bwd_loads(STATS, MASK, GUPD, GPROB, go_t - nxt * H, g_t - nxt * H4,
                                   cs_t - nxt * H, hs_t - nxt * H, r_t - nxt, soff, goff, rmask,
                                   m2, T, B, H, CELL, HAS_MASK)
            bad = _grid_sync(CNT + pr, NCOL * (tt + 1), bad, SPIN)
            # dh_{t-1}[its units] += DG[t] (all units) . W_hh[:, its units]: the LSTM's four
            # blocks; the GRU's [dr, dz, dhn] (DG columns 0, H, 3H) with W_hh rows 0, H, 2H
            acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=GHN.dtype.element_ty)
            a = tl.load(dg_t + dgoff, mask=dgm, other=0.0, cache_modifier=".cg")
            acc = _kdot(a, w0, acc, KC, PRECISION)
            a = tl.load(dg_t + dgoff + H, mask=dgm, other=0.0, cache_modifier=".cg")
            acc = _kdot(a, w1, acc, KC, PRECISION)
            if CELL == "lstm":
                a = tl.load(dg_t + dgoff + 2 * H, mask=dgm, other=0.0, cache_modifier=".cg")
                acc = _kdot(a, w2, acc, KC, PRECISION)
                a = tl.load(dg_t + dgoff + 3 * H, mask=dgm, other=0.0, cache_modifier=".cg")
                acc = _kdot(a, w3, acc, KC, PRECISION)
            else:
                a = tl.load(dg_t + dgoff + 3 * H, mask=dgm, other=0.0, cache_modifier=".cg")
                acc = _kdot(a, w2, acc, KC, PRECISION)
            gh = gh + acc
            gu += tl.sum(tl.load(zslot + zoff, mask=zm, other=0.0, cache_modifier=".cg"), axis=0)
            gup, gcum = _decide_backward(m, u, gu, gup, gcum, gprob, up_p, cum_p)
            u, ut, delta, up_p, cum_p, m, gupd, gprob = \
                u_n, ut_n, delta_n, up_n, cum_n, m_n, gupd_n, gprob_n
            r_t -= B
            go_t -= B * H
            hs_t -= B * H
            cs_t -= B * H
            g_t -= B * H4
            dg_t -= B * H4
        tl.store(DH0 + soff, gh, mask=m2)
        if CELL == "lstm":
            tl.store(DC0 + soff, gc, mask=m2)
        tl.store(DUP0 + rows, gup, mask=smask)
        tl.store(DCUM0 + rows, gcum, mask=smask)
        prow = PART + pr * (H + 1)
        tl.store(prow + cols, tl.sum(tl.where(m2, s_w, 0.0), axis=0), mask=cmask)
        tl.store(prow + H, tl.sum(tl.where(rmask, s_b, 0.0), axis=0), mask=pc == 0)
        tl.atomic_max(FLAG, bad)


def _meta(cfg, B, H, device, precision, zeros=None):
    """``coop.launch_meta`` plus the launch's keyword arguments shared by both kernels."""
    HP, nr, nc, cnt, flag = coop.launch_meta(cfg, B, H, device, zeros)
    kw = dict(BLOCK_B=cfg["BLOCK_B"], BLOCK_N=cfg["BLOCK_N"], HP=HP, KC=cfg.get("KSPLIT", 1),
              NCP=max(2, next_pow2(nc)), PRECISION=precision, SPIN=coop.SPIN_LIMIT,
              num_warps=cfg["num_warps"], num_stages=1)
    return nr, nc, cnt, flag, kw


def launch_fwd(cell: str, xp, w_hh, b_ih, b_hh, gate_w, gate_b, mask, h0, c0, up0, cum0,
               threshold, precision, cfg, save=True, w_ih=None):
    """``cell`` 'lstm' | 'gru'; ``xp`` = x W_ih^T without biases (T,B,gates·H), or with
    ``w_ih`` (gates·H,I) given, x itself (T,B,I) (the kernel projects it; see
    ``coop.fuse_input``); ``b_ih``, ``b_hh`` (gates·H,) or None; ``c0`` (B,H) the LSTM's (None
    for the GRU). Returns ``((out, hs, cs, gates, upd, prob, stats, up_n, cum_n, h_n, c_n),
    flag)``; with ``save=False`` hs/cs/gates/stats are None; cs and c_n are None for the GRU."""
    T, B = xp.shape[:2]
    H = w_hh.shape[1]
    lstm = cell == "lstm"
    nr, nc, cnt, flag, kw = _meta(cfg, B, H, xp.device, precision)
    new = buffers(xp)
    hs = new((T + 1 if save else 2, B, H))
    cs = new((T + 1, B, H)) if save and lstm else None
    gates, stats = (new((T, B, 4 * H)), new((5, T, B))) if save else (None, None)
    out, upd, prob, up_n, cum_n, h_n, zp = (new(s) for s in (
        (T, B, H), (T, B), (T, B), (B,), (B,), (B, H), (2, nc, B)))
    c_n = new((B, H)) if lstm else None
    coop_fwd_kernel[(nr, nc)](
        # absent tensors (HAS_* False / XI = 0 / the GRU's c / inference's history) get any
        # valid pointer: never read or written
        xp, _or(w_ih, w_hh), w_hh, _or(b_ih, up0), _or(b_hh, up0), gate_w, gate_b,
        _or(mask, up0), up0, cum0, h0, _or(c0, h0), hs, _or(cs, xp), _or(gates, xp),
        out, upd, prob, _or(stats, xp), up_n, cum_n, h_n, _or(c_n, h_n),
        zp, cnt, flag, T, B, H, nc, float(threshold),
        CELL=cell, HAS_MASK=mask is not None, HAS_BIH=b_ih is not None,
        HAS_BHH=b_hh is not None, XI=xp.shape[2] if w_ih is not None else 0, SAVE=save, **kw)
    return (out, hs if save else None, cs, gates, upd, prob, stats, up_n, cum_n, h_n, c_n), flag


def launch_bwd(cell: str, w_hh, gate_w, mask, hs, cs, gates, stats, g_out, g_hn, g_cn, g_upn,
               g_cumn, g_upd, g_prob, precision, cfg, zeros=None):
    """The backward of :func:`launch_fwd`'s run (``cs``, ``g_cn`` None for the GRU). Returns
    ``((dg, gz, dh0, dc0, dup0, dcum0, part), flag)``; ``dc0`` is None for the GRU; ``part``
    (#row blocks, H+1): per row block, the sums of gz·s̃ (H) and of gz (1).
    ``zeros``: optional zeroed int32 scratch for the barrier counters (see ``coop.launch_meta``)."""
    T, B, H4 = gates.shape
    H = H4 // 4
    nr, nc, cnt, flag, kw = _meta(cfg, B, H, gates.device, precision, zeros)
    new = buffers(gates)
    zp, dg, gz, dh0, dup0, dcum0, part = (new(s) for s in (
        (2, nc, B), (T, B, 4 * H), (T, B), (B, H), (B,), (B,), (nr, H + 1)))
    dc0 = new((B, H)) if cell == "lstm" else None
    coop_bwd_kernel[(nr, nc)](
        w_hh, gate_w, _or(mask, dup0), hs, _or(cs, hs), gates, stats, g_out, g_upd, g_prob, g_upn,
        g_cumn, g_hn, _or(g_cn, g_hn), dg, gz, dh0, _or(dc0, dh0), dup0, dcum0, part,
        zp, cnt, flag, T, B, H, nc, CELL=cell, HAS_MASK=mask is not None, **kw)
    return (dg, gz, dh0, dc0, dup0, dcum0, part), flag
