"""Skip GRU fast path for one layer: the GRU's part of the shared CPU path
(:mod:`skiprnn.ops.cpu_rnn`, which has the time loops, the update gate and the buffer pool).

Its maths are the reference's (``skiprnn.ops.naive.skip_rnn_naive``), tested against it on
every output and every gradient. ``W_ih x`` comes per chunk from one batched GEMM with
``b_ih + b_hh`` folded into the r, z rows and ``b_hn`` preset in the n rows, so that
per step one in-place ``addmm`` yields ``[r_pre; z_pre; W_hn h + b_hn]``; then one sigmoid over
[r; z], ``addcmul`` + tanh for n and one ``lerp`` for ``h' = (1 - z) n + z h``, which the update
gate reads.

``reset_after=False`` (the paper's GRU): per step the r, z rows come first (``addmm`` with
``W_h[rz]``), then ``W_hn (r ⊙ h)``; the backward adds ``q = W_hnᵀ dn`` per step
(dr_pre = q ⊙ h r(1 - r), dh += r ⊙ q) and ``dW_hn`` is a GEMM with the saved ``r ⊙ h``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cpu_rnn import CpuCell, KKLayout, add_h_old_gemm, add_input_grads, register_cell


class _GRUCell(CpuCell):
    """The GRU's rows of ``KK`` (from ``CO``): ``[KG (4H) | z]``, with
    ``dG = dh' KG = [dr_pre, dz_pre, d(W_hn h + b_hn), d(W_in x + b_in)]`` and
    ``dh_old = u dh + ... + dh' z``. ``reset_after=False`` adds the extra rows ``[KR | R]`` =
    ``[h r (1 - r) | r]``: there dr_pre = (W_hnᵀ dn) ⊙ KR needs the product first, so KG's
    dr_pre rows are 0 and the reverse loop fills them."""

    gates, has_c = 3, False

    def __init__(self, reset_after: bool):
        self.reset_after = reset_after
        self.key = "gru" if reset_after else "gru_paper"
        self.saves_extra = not reset_after  # r ⊙ h of every step

    def layout(self, H):
        return KKLayout(H, 5 * H, 0 if self.reset_after else 2 * H)

    def feature(self, cand, H):
        return cand  # h'

    def projection(self, w_ih, w_hh, b_ih, b_hh):
        """Bias ``[b_ir + b_hr, b_iz + b_hz, b_in]``; ``b_hn`` stays inside r ⊙ (W_hn h + b_hn)."""
        H = w_hh.shape[1]
        if b_hh is None:
            return w_ih, w_hh, None if b_ih is None else b_ih.view(3 * H, 1), 0.0
        b_rz = b_hh[:2 * H] if b_ih is None else b_ih[:2 * H] + b_hh[:2 * H]
        b_in = b_hh.new_zeros(H) if b_ih is None else b_ih[2 * H:]
        return w_ih, w_hh, torch.cat([b_rz, b_in]).view(3 * H, 1), b_hh[2 * H:].view(H, 1)

    def forward_ops(self, fw):
        H, H2, A, ST, CAND, w_hh, new = fw.H, 2 * fw.H, fw.A, fw.ST, fw.CAND, fw.Wh, fw.new
        WGIN, WN = new(fw.C, H, fw.B), new(fw.C, H, fw.B)  # W_in x + b_in; n
        WRH = None if self.reset_after else new(fw.C, H, fw.B)  # r ⊙ h
        if not self.reset_after and fw.train:
            fw.extra = fw.big(fw.T, fw.B, H)  # r ⊙ h of every step (for dW_hn)
        p_, rz_, r_, z_ = A.unbind(0), A[:, :H2].unbind(0), A[:, :H].unbind(0), \
            A[:, H:H2].unbind(0)
        ghn_, gin_, n_, hs_, cand_ = A[:, H2:].unbind(0), WGIN.unbind(0), WN.unbind(0), \
            ST.unbind(0), CAND.unbind(0)

        def projected(n):
            WGIN[:n] = A[:n, H2:]
            A[:n, H2:] = fw.b_extra

        def step_nn(j):  # nn.GRU: n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
            nn_ = n_[j]
            p_[j].addmm_(w_hh, hs_[j])
            rz_[j].sigmoid_()
            torch.addcmul(gin_[j], r_[j], ghn_[j], out=nn_)
            nn_.tanh_()
            torch.lerp(nn_, hs_[j], z_[j], out=cand_[j])  # (1 - z) n + z h

        w_hrz, w_hn, rh_ = w_hh[:H2], w_hh[H2:], None if WRH is None else WRH.unbind(0)

        def step_paper(j):  # n = tanh(W_in x + b_in + W_hn (r ⊙ h) + b_hn)
            nn_ = n_[j]
            rz_[j].addmm_(w_hrz, hs_[j])
            rz_[j].sigmoid_()
            torch.mul(r_[j], hs_[j], out=rh_[j])
            ghn_[j].addmm_(w_hn, rh_[j])
            torch.add(gin_[j], ghn_[j], out=nn_)
            nn_.tanh_()
            torch.lerp(nn_, hs_[j], z_[j], out=cand_[j])  # (1 - z) n + z h

        flush = self._flush_op(fw, WN, WRH) if fw.train else None
        return projected, step_nn if self.reset_after else step_paper, flush

    def _flush_op(self, fw, WN, WRH):
        """The chunk's KG, z (and KR, R) rows; ``kk[:, :H]`` holds h' - h already."""
        H, H2, H3, A, ST, L = fw.H, 2 * fw.H, 3 * fw.H, fw.A, fw.ST, fw.L
        K, WT1 = L.CO, fw.new(fw.C, H, fw.B)
        zero, one = fw.one.new_zeros(1, 1), fw.one

        def flush(kk, t0, n):
            r, z, ghn = A[:n, :H], A[:n, H:H2], A[:n, H2:]
            d, kr, kn, t1 = kk[:, :H], kk[:, K:K + H], kk[:, K + H3:K + 4 * H], WT1[:n]
            torch.sub(one, z, out=t1)
            torch.mul(WN[:n], WN[:n], out=kn)
            torch.addcmul(t1, t1, kn, value=-1, out=kn)  # (1 - z)(1 - n²)
            if self.reset_after:
                torch.mul(kn, r, out=kk[:, K + H2:K + H3])
                torch.addcmul(r, r, r, value=-1, out=kr)
                kr.mul_(ghn).mul_(kn)  # r(1 - r) gh_n (1 - z)(1 - n²)
            else:
                kk[:, K + H2:K + H3] = kn
                kr.zero_()  # dr_pre = (W_hnᵀ dn) ⊙ h r (1 - r): filled in the reverse loop
                kr2 = kk[:, L.X:L.X + H]
                torch.addcmul(r, r, r, value=-1, out=kr2)
                kr2.mul_(ST[:n])
                kk[:, L.X + H:L.X + H2] = r
                fw.extra[t0:t0 + n] = WRH[:n].transpose(1, 2)
            torch.addcmul(zero, d, z, value=-1, out=kk[:, K + H:K + H2])  # (h-n)z(1-z)
            kk[:, K + 4 * H:K + 5 * H] = z

        return flush

    def backward_ops(self, bw, with_step=True):
        H, H2, H3, H4, KK, WDG, L = bw.H, 2 * bw.H, 3 * bw.H, 4 * bw.H, bw.KK, bw.WDG, bw.L
        paper, K = not self.reset_after, L.CO
        dhp = bw.new(H, bw.B)
        dhp4 = dhp.unsqueeze(0)
        gwT, WhT = bw.gwT, bw.Wh[:H2 if paper else H3].t().contiguous()  # (contiguous: faster)
        kg_ = KK[:, K:K + H4].unflatten(1, (4, H)).unbind(0)
        zg_ = KK[:, K + H4:K + 5 * H].unbind(0)
        dg4_ = WDG.unflatten(1, (4, H)).unbind(0)
        dgh_ = WDG[:, :H2 if paper else H3].unbind(0)  # the rows acting on h
        u_, omu_, dz_, go_ = bw.u_, bw.omu_, bw.dz_, bw.go_
        dh_ = (bw.S[:H], bw.Sn[:H])
        if paper:
            WhnT, q = bw.Wh[H2:].t().contiguous(), bw.new(H, bw.B)  # q = W_hnᵀ dn = d(r ⊙ h)
            kr_, rr_ = KK[:, L.X:L.X + H].unbind(0), KK[:, L.X + H:L.X + H2].unbind(0)
            dgr_, dgn_ = WDG[:, :H].unbind(0), WDG[:, H2:H3].unbind(0)

        def step(j, t, cur):
            dh, snh = dh_[cur], dh_[1 - cur]
            torch.mul(dh, u_[t], out=dhp)
            dhp.addcmul_(gwT, dz_[t])
            torch.mul(dhp4, kg_[t], out=dg4_[j])
            if paper:
                torch.mm(WhnT, dgn_[j], out=q)
                torch.mul(q, kr_[t], out=dgr_[j])
            torch.addmm(go_[j], WhT, dgh_[j], out=snh)
            if paper:
                snh.addcmul_(q, rr_[t])
            snh.addcmul_(dh, omu_[t])
            snh.addcmul_(dhp, zg_[t])

        return (step, *self._weight_grad_ops(bw))

    def _weight_grad_ops(self, bw):
        """``(chunk(dgp, t0, n), param_grads(has_bias))``: dgp's rows are ``[dr_pre; dz_pre;
        d gh_n; d gi_n]``; W_ih gets ``[dr; dz; d gi_n]``, W_hh ``[dr; dz; d gh_n]``."""
        H, H2, H3, B, I = bw.H, 2 * bw.H, 3 * bw.H, bw.B, bw.I
        dWh, dbh, dWib = bw.x.new_zeros(H3, H), bw.x.new_zeros(H3), bw.dWibT.t()
        rz, n_rows = slice(0, H2), slice(H2, H3)  # W_ih's rows: [r; z] and n

        def chunk(dgp, t0, n):
            if self.reset_after:
                add_h_old_gemm(dWh, dgp[:H3], bw.Hh, bw.h0, t0, n, B, H)
            else:
                add_h_old_gemm(dWh[:H2], dgp[:H2], bw.Hh, bw.h0, t0, n, B, H)
                dWh[H2:].addmm_(dgp[H2:H3], bw.extra[t0:t0 + n].view(n * B, H))
            dbh.add_(dgp[:H3].sum(1))
            add_input_grads(bw, ((dgp[:H2], rz), (dgp[H3:], n_rows)), t0, n)

        def param_grads(has_bias):
            return (dWib[:, :I].clone(memory_format=torch.contiguous_format), dWh,
                    dWib[:, I].clone() if has_bias[0] else None, dbh if has_bias[1] else None)

        return chunk, param_grads


for _ra in (True, False):
    register_cell(_GRUCell(_ra))
