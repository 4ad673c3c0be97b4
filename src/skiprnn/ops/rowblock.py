"""Skip LSTM / Skip GRU, one-program-per-row-block Triton kernels (one layer, deterministic gate),
one pair of kernels for both cells (``CELL``: 'lstm' | 'gru', a ``tl.constexpr``: each cell
compiles to its own specialisation, no run-time branch).

The fallback of the cooperative kernels (``coop_kernels.py``) and the only kernels of the paper's
GRU candidate. Layout of the work:

1. The input projection of all steps is one GEMM outside the kernel, biases folded in:
   LSTM ``xp = x W_ih^T + b_ih + b_hh`` (T, B, 4H); GRU ``xp = x W_ih^T + b_ih + [b_hr, b_hz, 0]``
   (T, B, 3H), ``b_hn`` apart (``n = tanh(x W_in^T + b_in + r ⊙ (h W_hn^T + b_hn))``).
2. ``rowblock_fwd_kernel``: persistent, one program per BLOCK_B batch rows, loops over all T
   steps on-chip. Per step: ũ, u, the tiled ``h W_hh^T`` (tl.dot over BLOCK_N x BLOCK_K tiles of
   ``W_hh^T``, read from L2 every step), the gates, the candidate, gating/copy, Δũ = σ(w_p·s̃ + b_p)
   (s̃ = c̃ for the LSTM, h̃ for the GRU) as a row reduction, and the accumulator update. The gated
   state of every step goes to global history buffers (the next step reads h back from there,
   after a barrier), with the gate activations and the per-row scalars (u, ũ, Δũ, carried up,
   cum) that the backward needs.
3. ``rowblock_bwd_kernel``: walks time in reverse with the carried dh (and dc) in ping-pong global
   scratch, d(up), d(cum) in registers. Per step it writes the pre-activation gate gradients
   (T, B, 4H) and dz (Δũ pre-activation) and adds ``dgates W_hh`` to dh with tl.dot.
4. Outside the kernels, big GEMMs: dW_hh, dW_ih, dx, biases, dw_p, db_p (``triton_rnn.py``).

The GRU's ``RESET_AFTER=False`` (the paper's candidate, ``n = tanh(x W_in^T + b_in + (r ⊙ h)
W_hn^T + b_hn)``): the forward computes r, z of every column first (``r ⊙ h`` goes to the gates'
last block), then the candidate's product; the backward computes ``W_hnᵀ dn`` over every column
before dr and adds ``r ⊙ W_hnᵀ dn`` to dh; ``dW_hn`` is a GEMM with the saved ``r ⊙ h``.
"""

from __future__ import annotations

from .triton_utils import HAS_TRITON, buffers
from .triton_utils import ptr_or as _or

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .coop import decide as _decide
    from .coop import decide_backward as _decide_backward
    from .coop import gate_update as _gate_update
    from .coop import save_step as _save_step
    from .coop import store4 as _store4
    from .coop import step_stats as _step_stats
    from .triton_utils import mma as _mma
    from .triton_utils import sigmoid as _sigmoid
    from .triton_utils import tanh as _tanh

    @triton.jit
    def _row_tile(B, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """This program's BLOCK_B rows of B (mask, int64 offsets) and the column / K offsets of a
        tile."""
        rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        rmask = rows < B
        return rows, rmask, rows.to(tl.int64), tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_K)

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

    @triton.jit
    def _hidden_products(h_cur, WT, rows64, rmask, cols, cmask, offs_k, H, CELL: tl.constexpr,
                         BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         PRECISION: tl.constexpr):
        """``h W_hh^T`` for the columns ``cols`` of each gate block, tiled over BLOCK_K: the
        LSTM's four (i, f, g, o); the GRU's three (r, z, n) and its third again as the fourth.
        ``WT`` = W_hh^T (H, gates·H)."""
        GW = (4 if CELL == "lstm" else 3) * H  # the row width of WT
        acc0 = tl.zeros((BLOCK_B, BLOCK_N), dtype=h_cur.dtype.element_ty)
        acc1 = tl.zeros((BLOCK_B, BLOCK_N), dtype=h_cur.dtype.element_ty)
        acc2 = tl.zeros((BLOCK_B, BLOCK_N), dtype=h_cur.dtype.element_ty)
        if CELL == "lstm":
            acc3 = tl.zeros((BLOCK_B, BLOCK_N), dtype=h_cur.dtype.element_ty)
        for k0 in range(0, H, BLOCK_K):
            ks = k0 + offs_k
            kmask = ks < H
            hk = tl.load(h_cur + rows64[:, None] * H + ks[None, :],
                         mask=rmask[:, None] & kmask[None, :], other=0.0)
            wptr = WT + ks[:, None].to(tl.int64) * GW + cols[None, :]
            wmask = kmask[:, None] & cmask[None, :]
            acc0 = _mma(hk, tl.load(wptr, mask=wmask, other=0.0), acc0, PRECISION)
            acc1 = _mma(hk, tl.load(wptr + H, mask=wmask, other=0.0), acc1, PRECISION)
            acc2 = _mma(hk, tl.load(wptr + 2 * H, mask=wmask, other=0.0), acc2, PRECISION)
            if CELL == "lstm":
                acc3 = _mma(hk, tl.load(wptr + 3 * H, mask=wmask, other=0.0), acc3, PRECISION)
        if CELL != "lstm":
            acc3 = acc2
        return acc0, acc1, acc2, acc3

    @triton.jit
    def _lstm_columns_fwd(h_cur, c_cur, c_nxt, xp_t, g_t, WT, rows64, rmask, cols, cmask, offs_k,
                          H, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, upd):
        """One step of the LSTM for the columns ``cols``: gates to G, the gated c to
        ``c_nxt``; returns ``(c̃, h̃, h_old)`` (c̃ feeds Δũ)."""
        H4 = 4 * H
        acc_i, acc_f, acc_g, acc_o = _hidden_products(h_cur, WT, rows64, rmask, cols, cmask,
                                                      offs_k, H, "lstm", BLOCK_B, BLOCK_N,
                                                      BLOCK_K, PRECISION)
        m2 = rmask[:, None] & cmask[None, :]
        goff = rows64[:, None] * H4 + cols[None, :]
        si = _sigmoid(acc_i + tl.load(xp_t + goff, mask=m2, other=0.0))
        sf = _sigmoid(acc_f + tl.load(xp_t + goff + H, mask=m2, other=0.0))
        tg = _tanh(acc_g + tl.load(xp_t + goff + 2 * H, mask=m2, other=0.0))
        so = _sigmoid(acc_o + tl.load(xp_t + goff + 3 * H, mask=m2, other=0.0))
        _store4(g_t, goff, m2, H, si, sf, tg, so)
        soff = rows64[:, None] * H + cols[None, :]
        c_old = tl.load(c_cur + soff, mask=m2, other=0.0)
        h_old = tl.load(h_cur + soff, mask=m2, other=0.0)
        cc = sf * c_old + si * tg
        hc = so * _tanh(cc)
        tl.store(c_nxt + soff, tl.where(upd[:, None], cc, c_old), mask=m2)
        return cc, hc, h_old

    @triton.jit
    def _gru_rz_fwd(h_cur, xp_t, g_t, WT, rows64, rmask, cols, cmask, offs_k, H,
                    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    PRECISION: tl.constexpr):
        """The paper GRU's first phase for the columns ``cols``: r, z and r ⊙ h to G."""
        H3 = 3 * H
        H4 = 4 * H
        zero_t = tl.zeros((BLOCK_B, BLOCK_N), dtype=xp_t.dtype.element_ty)
        acc_r = _rows_dot(zero_t, h_cur, H, rows64, rmask, WT, H3, cols, cmask,
                          offs_k, H, BLOCK_K, PRECISION)
        acc_z = _rows_dot(zero_t, h_cur, H, rows64, rmask, WT + H, H3, cols, cmask,
                          offs_k, H, BLOCK_K, PRECISION)
        m2 = rmask[:, None] & cmask[None, :]
        xoff = rows64[:, None] * H3 + cols[None, :]
        goff = rows64[:, None] * H4 + cols[None, :]
        r = _sigmoid(acc_r + tl.load(xp_t + xoff, mask=m2, other=0.0))
        zg = _sigmoid(acc_z + tl.load(xp_t + xoff + H, mask=m2, other=0.0))
        h_old = tl.load(h_cur + rows64[:, None] * H + cols[None, :], mask=m2, other=0.0)
        tl.store(g_t + goff, r, mask=m2)
        tl.store(g_t + goff + H, zg, mask=m2)
        tl.store(g_t + goff + 3 * H, r * h_old, mask=m2)

    @triton.jit
    def _gru_columns_fwd(h_cur, xp_t, g_t, WT, BHN, rows64, rmask, cols, cmask, offs_k, H,
                         BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         PRECISION: tl.constexpr, RESET_AFTER: tl.constexpr):
        """One step of the GRU for the columns ``cols``: gates to G; returns
        ``(h̃, h̃, h_old)`` (h̃ feeds Δũ)."""
        H3 = 3 * H
        H4 = 4 * H
        if not RESET_AFTER:
            acc_n = _rows_dot(tl.zeros((BLOCK_B, BLOCK_N), dtype=xp_t.dtype.element_ty),
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
            acc_r, acc_z, acc_n, _ = _hidden_products(h_cur, WT, rows64, rmask, cols, cmask,
                                                      offs_k, H, "gru", BLOCK_B, BLOCK_N,
                                                      BLOCK_K, PRECISION)
            m2 = rmask[:, None] & cmask[None, :]
            xoff = rows64[:, None] * H3 + cols[None, :]
            goff = rows64[:, None] * H4 + cols[None, :]
            r = _sigmoid(acc_r + tl.load(xp_t + xoff, mask=m2, other=0.0))
            zg = _sigmoid(acc_z + tl.load(xp_t + xoff + H, mask=m2, other=0.0))
            hn = acc_n + tl.load(BHN + cols, mask=cmask, other=0.0)[None, :]
            n = _tanh(tl.load(xp_t + xoff + 2 * H, mask=m2, other=0.0) + r * hn)
            _store4(g_t, goff, m2, H, r, zg, n, hn)
        soff = rows64[:, None] * H + cols[None, :]
        h_old = tl.load(h_cur + soff, mask=m2, other=0.0)
        hc = (1.0 - zg) * n + zg * h_old
        return hc, hc, h_old

    @triton.jit(do_not_specialize=["T", "B"])
    def rowblock_fwd_kernel(
        XP, WT, BHN, WP, BP, MASK, UP0, CUM0,
        HS, CS, G, OUT, UPD, PROB, STATS, UPN, CUMN,
        T, B, H, threshold,
        CELL: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_B: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
        RESET_AFTER: tl.constexpr,
    ):
        """XP (T,B,gates·H) input projection incl. the biases it can hold (module docstring);
        WT = W_hh^T (H,gates·H); BHN (H,) the GRU's b_hn; WP (H,), BP (1,);
        HS (and the LSTM's CS) (T+1,B,H) with [0] = h0 (c0) filled in; G (T,B,4H) gets
        σ(i),σ(f),tanh(g),σ(o) (LSTM) or r, z, n, W_hn h + b_hn (GRU; ``RESET_AFTER`` False,
        the paper's candidate: r, z, n, r ⊙ h); STATS (5,T,B) gets u, ũ, Δũ, up_{t-1},
        cum_{t-1}. The LSTM takes ``RESET_AFTER=True`` (it has no reset gate)."""
        rows, rmask, rows64, offs_n, offs_k = _row_tile(B, BLOCK_B, BLOCK_N, BLOCK_K)
        XW = (4 if CELL == "lstm" else 3) * H  # the row width of XP
        H4 = 4 * H
        up = tl.load(UP0 + rows, mask=rmask, other=1.0)
        cum = tl.load(CUM0 + rows, mask=rmask, other=0.0)
        bp = tl.load(BP)
        zero_b = up * 0.0
        h_cur, c_cur, xp_t, g_t, o_t = HS, CS, XP, G, OUT
        r_t = rows  # offset of (t, rows) in the (T, B) arrays
        for t in range(T):
            m = tl.load(MASK + r_t, mask=rmask, other=0.0) if HAS_MASK else zero_b + 1.0
            ut, upd, u = _decide(up, cum, m, threshold)
            # per-row scalars are stored before the tiles use them (Triton 3.6 layout pass)
            srow = STATS + r_t
            _save_step(STATS, UPD, PROB, r_t, rmask, u, ut, up, cum, m, T, B)
            h_nxt = h_cur + B * H
            c_nxt = c_cur + B * H
            z = zero_b
            if not RESET_AFTER:
                # phase 1: r, z of every column (W_hn acts on r ⊙ h, which needs all of r)
                for n0 in range(0, H, BLOCK_N):
                    cols = n0 + offs_n
                    _gru_rz_fwd(h_cur, xp_t, g_t, WT, rows64, rmask, cols, cols < H, offs_k, H,
                                BLOCK_B, BLOCK_N, BLOCK_K, PRECISION)
                tl.debug_barrier()  # r ⊙ h of every column is in G
            for n0 in range(0, H, BLOCK_N):
                cols = n0 + offs_n
                cmask = cols < H
                if CELL == "lstm":
                    feat, hc, h_old = _lstm_columns_fwd(
                        h_cur, c_cur, c_nxt, xp_t, g_t, WT, rows64, rmask, cols, cmask, offs_k,
                        H, BLOCK_B, BLOCK_N, BLOCK_K, PRECISION, upd)
                else:
                    feat, hc, h_old = _gru_columns_fwd(
                        h_cur, xp_t, g_t, WT, BHN, rows64, rmask, cols, cmask, offs_k, H,
                        BLOCK_B, BLOCK_N, BLOCK_K, PRECISION, RESET_AFTER)
                m2 = rmask[:, None] & cmask[None, :]
                soff = rows64[:, None] * H + cols[None, :]
                wp = tl.load(WP + cols, mask=cmask, other=0.0)
                z += tl.sum(tl.where(m2, feat * wp[None, :], 0.0), axis=1)
                h_new = tl.where(upd[:, None], hc, h_old)
                tl.store(h_nxt + soff, h_new, mask=m2)
                tl.store(o_t + soff, h_new * m[:, None], mask=m2)
            delta = _sigmoid(z + bp)
            tl.store(srow + 2 * T * B, delta, mask=rmask)
            up, cum = _gate_update(up, cum, upd, ut, m, delta)
            h_cur = h_nxt
            c_cur = c_nxt
            xp_t += B * XW
            g_t += B * H4
            o_t += B * H
            r_t += B
            # the state of this step was written to HS (CS)[t+1]; make it visible to every thread
            tl.debug_barrier()
        tl.store(UPN + rows, up, mask=rmask)
        tl.store(CUMN + rows, cum, mask=rmask)

    # The backward's column helpers are written out in full (the incoming dh in each, the LSTM's
    # four DG stores one by one, gu accumulated where the partial sum is made): the kernel sits at
    # 255 registers and ptxas's spill choice follows the code's shape (even the labels of inlined
    # calls); in this form no variant spills more than the pre-merge kernels did
    # (results/ptxas_triton_dedup.md, "After the spill fix").
    @triton.jit
    def _lstm_columns_bwd(gu, gh_cur, gc_cur, gh_nxt, gc_nxt, go_t, g_t, cs_t, hs_t, dg_t, WP, m,
                          ub, gz, rows64, rmask, cols, cmask, H):
        """The LSTM's gate gradients for the columns ``cols`` of one step (to DG), the carried
        dh, dc without the recurrent product; returns ``gu`` plus the rows' straight-through
        partial sums Σ (h̃ - h) dh + (c̃ - c) dc. gh: the dh reaching h_t (carried from step t+1
        plus the output's, masked)."""
        m2 = rmask[:, None] & cmask[None, :]
        soff = rows64[:, None] * H + cols[None, :]
        goff = rows64[:, None] * (4 * H) + cols[None, :]
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
        return gu

    @triton.jit
    def _gru_columns_bwd(gu, gh_cur, gh_nxt, go_t, g_t, hs_t, dg_t, WP, m, ub, gz, rows64, rmask,
                         cols, cmask, H, RESET_AFTER: tl.constexpr):
        """The GRU's gate gradients for the columns ``cols`` of one step (to DG; without
        RESET_AFTER dr comes after the barrier), the carried dh without the recurrent product;
        returns ``gu`` plus the rows' straight-through partial sums Σ (h̃ - h) dh."""
        m2 = rmask[:, None] & cmask[None, :]
        soff = rows64[:, None] * H + cols[None, :]
        goff = rows64[:, None] * (4 * H) + cols[None, :]
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
        else:  # dr needs W_hnᵀ dn over all columns: written after the barrier
            tl.store(dg_t + goff + 3 * H, dn, mask=m2)
        tl.store(dg_t + goff + H, ghc * (h_old - n) * zg * (1.0 - zg), mask=m2)
        tl.store(dg_t + goff + 2 * H, dn, mask=m2)
        tl.store(gh_nxt + soff, (1.0 - ub) * gh + ghc * zg, mask=m2)
        return gu

    @triton.jit
    def _gru_reset_bwd(gh_nxt, g_t, hs_t, dg_t, W, rows64, rmask, cols, cmask, offs_k, H,
                       BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       PRECISION: tl.constexpr):
        """The paper GRU's q = dn W_hn = d(r ⊙ h) for the columns ``cols``:
        dr = q ⊙ h r (1 - r) to DG, dh += q ⊙ r."""
        H4 = 4 * H
        acc = _rows_dot(tl.zeros((BLOCK_B, BLOCK_N), dtype=gh_nxt.dtype.element_ty),
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

    @triton.jit(do_not_specialize=["T", "B"])
    def rowblock_bwd_kernel(
        W, WP, MASK, HS, CS, G, STATS,
        GOUT, GUPD, GPROB, GUPN, GCUMN,
        DG, GZ, GHBUF, GCBUF, DUP0, DCUM0,
        T, B, H,
        CELL: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_B: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
        RESET_AFTER: tl.constexpr, N_HGATES: tl.constexpr,
    ):
        """W = W_hh (gates·H,H); GHBUF (and the LSTM's GCBUF) (2,B,H) ping-pong carried dh (dc),
        [0] = grads of h_n (c_n); after the loop [T % 2] holds dh0 (dc0). DG (T,B,4H) gets the
        pre-activation gate gradients (GRU: d(r, z, n) and d(W_hn h + b_hn); ``RESET_AFTER``
        False: d(W_hn (r ⊙ h) + b_hn) = dn, and dr once ``W_hnᵀ dn`` is known); GZ (T,B) the
        gradient of Δũ's pre-activation. ``N_HGATES``: the DG blocks multiplied by W_hh's rows
        at the end of a step (LSTM 4; GRU 3: [dr, dz, dhn], 2 without RESET_AFTER: [dr, dz])."""
        rows, rmask, rows64, offs_n, offs_k = _row_tile(B, BLOCK_B, BLOCK_N, BLOCK_K)
        H4 = 4 * H
        gup = tl.load(GUPN + rows, mask=rmask, other=0.0)
        gcum = tl.load(GCUMN + rows, mask=rmask, other=0.0)
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
            u, ut, delta, up_p, cum_p, m, gupd, gprob = _step_stats(STATS, MASK, GUPD, GPROB, r_t,
                                                                    rmask, T, B, HAS_MASK)
            gz = u * gup * delta * (1.0 - delta)
            tl.store(GZ + r_t, gz, mask=rmask)
            gu = gupd + m * gup * (delta - up_p) - m * gcum * ut
            ub = u[:, None]
            for n0 in range(0, H, BLOCK_N):
                cols = n0 + offs_n
                cmask = cols < H
                if CELL == "lstm":
                    gu = _lstm_columns_bwd(gu, gh_cur, gc_cur, gh_nxt, gc_nxt, go_t, g_t, cs_t,
                                           hs_t, dg_t, WP, m, ub, gz, rows64, rmask, cols, cmask,
                                           H)
                else:
                    gu = _gru_columns_bwd(gu, gh_cur, gh_nxt, go_t, g_t, hs_t, dg_t, WP, m, ub, gz,
                                          rows64, rmask, cols, cmask, H, RESET_AFTER)
            gup, gcum = _decide_backward(m, u, gu, gup, gcum, gprob, up_p, cum_p)
            tl.debug_barrier()  # DG[t] and the partial dh are complete
            if not RESET_AFTER:
                for n0 in range(0, H, BLOCK_N):
                    cols = n0 + offs_n
                    _gru_reset_bwd(gh_nxt, g_t, hs_t, dg_t, W, rows64, rmask, cols, cols < H,
                                   offs_k, H, BLOCK_B, BLOCK_N, BLOCK_K, PRECISION)
                tl.debug_barrier()  # dr of every column is in DG[t]
            for n0 in range(0, H, BLOCK_N):
                cols = n0 + offs_n
                cmask = cols < H
                acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=GHBUF.dtype.element_ty)
                for g in tl.static_range(N_HGATES):
                    # dh_prev += DG blocks · W_hh rows: LSTM all four in order; GRU
                    # [dr, dz, dhn] (DG columns 0, H, 3H) · W_hh rows 0, H, 2H
                    dcol = (g if CELL == "lstm" else g + g // 2) * H
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
            cs_t -= B * H
            g_t -= B * H4
            dg_t -= B * H4
        tl.store(DUP0 + rows, gup, mask=rmask)
        tl.store(DCUM0 + rows, gcum, mask=rmask)


def launch_fwd(cell: str, xp, w_hh, b_hn, gate_w, gate_b, mask, h0, c0, up0, cum0, threshold,
               precision, cfg, reset_after=True):
    """``xp`` (T,B,gates·H) with the biases folded in (module docstring); ``b_hn`` (H,) for the
    GRU, ``c0`` (B,H) for the LSTM (else None). Returns ``(out, hs, cs, gates, upd, prob, stats,
    up_n, cum_n)``: hs (cs) the (T+1,B,H) history; ``cs`` is None for the GRU."""
    T, B = xp.shape[:2]
    H = w_hh.shape[1]
    lstm = cell == "lstm"
    new = buffers(xp)
    hs, gates, out, upd, prob, stats, up_n, cum_n = (new(s) for s in (
        (T + 1, B, H), (T, B, 4 * H), (T, B, H), (T, B), (T, B), (5, T, B), (B,), (B,)))
    hs[0].copy_(h0)
    cs = new((T + 1, B, H)) if lstm else None
    if lstm:
        cs[0].copy_(c0)
    rowblock_fwd_kernel[(triton.cdiv(B, cfg["BLOCK_B"]),)](
        # absent tensors (the LSTM's b_hn, the GRU's c history) get any valid pointer: never read
        xp, w_hh.t().contiguous(), _or(b_hn, up0), gate_w, gate_b, _or(mask, up0), up0, cum0,
        hs, _or(cs, hs), gates, out, upd, prob, stats, up_n, cum_n, T, B, H, float(threshold),
        **_consts(cell, mask, precision, cfg, reset_after))
    return out, hs, cs, gates, upd, prob, stats, up_n, cum_n


def launch_bwd(cell: str, w_hh, gate_w, mask, hs, cs, gates, stats, g_out, g_hn, g_cn, g_upn,
               g_cumn, g_upd, g_prob, precision, cfg, reset_after=True):
    """The backward of :func:`launch_fwd`'s run (``cs``, ``g_cn`` None for the GRU). Returns
    ``(dg, gz, dh0, dc0, dup0, dcum0)``; ``dc0`` is None for the GRU."""
    T, B, H4 = gates.shape
    H = H4 // 4
    lstm = cell == "lstm"
    new = buffers(gates)
    dg, gz, ghbuf, dup0, dcum0 = (new(s) for s in ((T, B, 4 * H), (T, B), (2, B, H), (B,), (B,)))
    ghbuf[0].copy_(g_hn)
    gcbuf = new((2, B, H)) if lstm else None
    if lstm:
        gcbuf[0].copy_(g_cn)
    rowblock_bwd_kernel[(triton.cdiv(B, cfg["BLOCK_B"]),)](
        w_hh, gate_w, _or(mask, dup0), hs, _or(cs, hs), gates, stats, g_out, g_upd, g_prob,
        g_upn, g_cumn, dg, gz, ghbuf, _or(gcbuf, ghbuf), dup0, dcum0, T, B, H,
        N_HGATES=4 if lstm else 3 if reset_after else 2,
        **_consts(cell, mask, precision, cfg, reset_after))
    return dg, gz, ghbuf[T % 2], None if gcbuf is None else gcbuf[T % 2], dup0, dcum0


def _consts(cell, mask, precision, cfg, reset_after):
    """The launch's keyword arguments shared by both kernels."""
    return dict(CELL=cell, HAS_MASK=mask is not None, BLOCK_B=cfg["BLOCK_B"],
                BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], PRECISION=precision,
                RESET_AFTER=cell == "lstm" or bool(reset_after), num_warps=cfg["num_warps"])
