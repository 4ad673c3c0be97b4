"""Skip LSTM fast path for one layer: the LSTM's part of the shared CPU path
(:mod:`skiprnn.ops.cpu_rnn`, which has the time loops, the update gate and the buffer pool).

Its maths are the reference's (``skiprnn.ops.naive.skip_rnn_naive``), tested against it on every output and every gradient. Gate rows are reordered internally from
nn.LSTM's [i, f, g, o] to [o, i, f, g], so one sigmoid covers the contiguous [o, i, f] rows;
per step the candidate is one ``addmm`` (``W_hh h``), that sigmoid, one tanh and four ops for the
cell; the state rows are ``[h; c]`` and the update gate reads c'.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cpu_rnn import CpuCell, KKLayout, add_h_old_gemm, add_input_grads, register_cell


def _to_internal(w: Tensor) -> Tensor:
    """nn.LSTM gate rows [i, f, g, o] -> internal [o, i, f, g] (sigmoid rows first)."""
    i, f, g, o = w.chunk(4, 0)
    return torch.cat([o, i, f, g], 0)


def _to_external(w: Tensor) -> Tensor:
    """Internal gate rows [o, i, f, g] -> nn.LSTM [i, f, g, o]."""
    o, i, f, g = w.chunk(4, 0)
    return torch.cat([i, f, g, o], 0)


class _LSTMCell(CpuCell):
    """The LSTM's rows of ``KK`` (from ``CO``): ``[K3 (3H) | KO | KH | f]``, with
    ``dgates = [dh' KO, dc' K3]`` and ``dc' = u dc + dh' KH + dz W_pᵀ``; K3 = ``[g σ'(i),
    c σ'(f), i (1 - g²)]``, KO = ``tanh(c') σ'(o)``, KH = ``o tanh'(c')``."""

    name, key, gates, has_c = "lstm", "lstm", 4, True

    def layout(self, H):
        return KKLayout(2 * H, 6 * H)

    def feature(self, cand, H):
        return cand[:, H:]  # c'

    def projection(self, w_ih, w_hh, b_ih, b_hh):
        bias = b_ih if b_hh is None else b_hh if b_ih is None else b_ih + b_hh
        bias = None if bias is None else _to_internal(bias).view(-1, 1)
        return _to_internal(w_ih), _to_internal(w_hh), bias, None

    def forward_ops(self, fw):
        H, H2, H3, A, ST, CAND, Wh = fw.H, 2 * fw.H, 3 * fw.H, fw.A, fw.ST, fw.CAND, fw.Wh
        WTC = fw.new(fw.C, H, fw.B)  # tanh(c')
        WSD = fw.new(fw.C, H2, fw.B) if fw.train else None  # σ' of [i; f]
        a_, s_, g_ = A.unbind(0), A[:, :H3].unbind(0), A[:, H3:].unbind(0)
        o_, i_, f_ = A[:, :H].unbind(0), A[:, H:H2].unbind(0), A[:, H2:H3].unbind(0)
        hh_, cc_, tc_ = ST[:, :H].unbind(0), ST[:, H:].unbind(0), WTC.unbind(0)
        candh_, candc_ = CAND[:, :H].unbind(0), CAND[:, H:].unbind(0)

        def step(j):
            g, cn, tc = g_[j], candc_[j], tc_[j]
            a_[j].addmm_(Wh, hh_[j])
            s_[j].sigmoid_()
            g.tanh_()
            torch.mul(f_[j], cc_[j], out=cn)
            cn.addcmul_(i_[j], g)
            torch.tanh(cn, out=tc)
            torch.mul(o_[j], tc, out=candh_[j])

        def flush(kk, t0, n):
            K = fw.L.CO
            a, hco, cand, sd = A[:n], ST[:n], CAND[:n], WSD[:n]
            o, i, f, g = a[:, :H], a[:, H:H2], a[:, H2:H3], a[:, H3:]
            torch.addcmul(a[:, H:H3], a[:, H:H3], a[:, H:H3], value=-1, out=sd)
            torch.mul(g, sd[:, :H], out=kk[:, K:K + H])
            torch.mul(hco[:, H:], sd[:, H:], out=kk[:, K + H:K + H2])
            k3g = kk[:, K + H2:K + H3]
            torch.mul(g, g, out=k3g)
            torch.addcmul(i, i, k3g, value=-1, out=k3g)  # i (1 - g²)
            hp = cand[:, :H]
            torch.addcmul(hp, hp, o, value=-1, out=kk[:, K + H3:K + 4 * H])  # tanh(c') σ'(o)
            torch.addcmul(o, hp, WTC[:n], value=-1, out=kk[:, K + 4 * H:K + 5 * H])  # o tanh'(c')
            kk[:, K + 5 * H:K + 6 * H] = f

        return None, step, flush

    def backward_ops(self, bw):
        H, H2, H3, B, I, KK, WDG = bw.H, 2 * bw.H, 3 * bw.H, bw.B, bw.I, bw.KK, bw.WDG
        K = bw.L.CO
        dhc = bw.new(H2, B)  # [dh'; dc']
        dhp, dcp = dhc[:H], dhc[H:]
        dcp3 = dcp.unsqueeze(0)
        gwT, WhT = bw.gwT, bw.Wh.t().contiguous()  # (contiguous: a faster GEMM)
        k3_ = KK[:, K:K + H3].unflatten(1, (3, H)).unbind(0)
        ko_, kh_, f_ = (KK[:, k:k + H].unbind(0) for k in (K + H3, K + 4 * H, K + 5 * H))
        dg_, dgo_ = WDG.unbind(0), WDG[:, :H].unbind(0)
        dg3_ = WDG[:, H:].unflatten(1, (3, H)).unbind(0)
        u_, omu_, dz_, go_ = bw.u_, bw.omu_, bw.dz_, bw.go_
        views = [(s[:H2], s[:H], s[H:H2]) for s in (bw.S, bw.Sn)]

        def step(j, t, cur):
            s2, dh, dc = views[cur]
            _, snh, snc = views[1 - cur]
            omu = omu_[t]
            torch.mul(s2, u_[t], out=dhc)
            dcp.addcmul_(dhp, kh_[t])
            dcp.addcmul_(gwT, dz_[t])
            torch.mul(dhp, ko_[t], out=dgo_[j])
            torch.mul(dcp3, k3_[t], out=dg3_[j])
            torch.addmm(go_[j], WhT, dg_[j], out=snh)
            snh.addcmul_(dh, omu)
            torch.mul(dc, omu, out=snc)
            snc.addcmul_(dcp, f_[t])

        dWh, dWib = bw.x.new_zeros(4 * H, H), bw.dWibT.t()
        every_row = slice(None)

        def chunk(dgp, t0, n):
            add_h_old_gemm(dWh, dgp, bw.Hh, bw.h0, t0, n, B, H)
            add_input_grads(bw, ((dgp, every_row),), t0, n)

        def param_grads(has_bias):
            db = _to_external(dWib[:, I])
            return (_to_external(dWib[:, :I]), _to_external(dWh),
                    db if has_bias[0] else None, db.clone() if has_bias[1] else None)

        return step, chunk, param_grads


register_cell(_LSTMCell())
