"""Skip LSTM fast path for one layer: the LSTM's part of the shared CPU path
(:mod:`skiprnn.ops.cpu_rnn`, which has the time loops, the update gate and the buffer pool).

Its maths are the reference's (``skiprnn.ops.naive.skip_rnn_naive``), tested against it on every output and every gradient. Gate rows are reordered internally from
nn.LSTM's [i, f, g, o] to [o, i, f, g], so one sigmoid covers the contiguous [o, i, f] rows;
per step the candidate is one ``addmm`` (``W_hh h``), that sigmoid, one tanh and four ops for the
cell; the state rows are ``[h; c]`` and the update gate reads c'.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from .. import cpu_kernels
from ..cpu_rnn import (CpuCell, KKLayout, add_h_old_gemm, add_input_grads, carry,
                       input_projection, register_cell)


_EXTERNAL = (1, 2, 3, 0)  # the _reorder back: internal [o, i, f, g] -> nn.LSTM [i, f, g, o]


def _reorder(w: Tensor, order=(3, 0, 1, 2)) -> Tensor:
    """nn.LSTM gate rows [i, f, g, o] -> internal [o, i, f, g] (sigmoid rows first)."""
    blocks = w.chunk(4, 0)
    return torch.cat([blocks[k] for k in order], 0)


class _LSTMCell(CpuCell):
    """The LSTM's rows of ``KK`` (from ``CO``): ``[K3 (3H) | KO | KH | f]``, with
    ``dgates = [dh' KO, dc' K3]`` and ``dc' = u dc + dh' KH + dz W_pᵀ``; K3 = ``[g σ'(i),
    c σ'(f), i (1 - g²)]``, KO = ``tanh(c') σ'(o)``, KH = ``o tanh'(c')``."""

    key, gates, has_c = "lstm", 4, True

    def layout(self, H):
        return KKLayout(2 * H, 6 * H)

    def feature(self, cand, H):
        return cand[:, H:]  # c'

    def projection(self, w_ih, w_hh, b_ih, b_hh):
        bias = b_ih if b_hh is None else b_hh if b_ih is None else b_ih + b_hh
        bias = None if bias is None else _reorder(bias).view(-1, 1)
        return _reorder(w_ih), _reorder(w_hh), bias, None

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

    def backward_ops(self, bw, with_step=True):
        H, B, I = bw.H, bw.B, bw.I
        step = self._backward_step(bw) if with_step else None
        in_c = getattr(bw, "dWh", None) is not None  # fused_backward's C chunks add dW_hh
        dWh = bw.dWh if in_c else bw.x.new_zeros(4 * H, H)
        dWib, every_row = bw.dWibT.t(), slice(None)

        def chunk(dgp, t0, n):
            if not in_c:
                add_h_old_gemm(dWh, dgp, bw.Hh, bw.h0, t0, n, B, H)
            add_input_grads(bw, ((dgp, every_row),), t0, n)

        def param_grads(has_bias):
            db = _reorder(dWib[:, I], _EXTERNAL)
            return (_reorder(dWib[:, :I], _EXTERNAL), _reorder(dWh, _EXTERNAL),
                    db if has_bias[0] else None, db.clone() if has_bias[1] else None)

        return step, chunk, param_grads

    @staticmethod
    def _backward_step(bw):
        H, H2, H3, B, KK, WDG = bw.H, 2 * bw.H, 3 * bw.H, bw.B, bw.KK, bw.WDG
        K = bw.L.CO
        dhc = bw.new(H2, B)  # [dh'; dc']
        dhp, dcp = dhc[:H], dhc[H:]
        dcp3 = dcp.unsqueeze(0)
        gwT = bw.gwT
        WhT = bw.Wh.t().contiguous()  # (contiguous: a faster GEMM)
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

        return step

    def fused_forward(self, fw, x, gw, gb, M, thr, floor):
        """The chunk t0 .. t0 + n - 1 in C (:mod:`~skiprnn.ops.cpu_kernels`): the input
        projection (torch's, or each thread's rows in C where the chunk splits its steps over
        threads), per step ``A[j] += W_hh h`` and the candidate, the update gate and the step's
        rows of ``Hh``, ``SC`` (and with ``fw.train`` of ``KK``, ``CC``), then the carry to the
        next chunk: what ``cpu_rnn.input_projection``, the Python step, the gate ops of
        ``cpu_rnn._forward_chunks``, ``flush`` above and ``cpu_rnn.carry`` do. None where it does
        not apply."""
        fns = _kernels(fw.A)
        if fns is None:
            return None
        H, B, L, ptr = fw.H, fw.B, fw.L, _ptr
        fw.WTC = fw.new(fw.C, H, B)  # tanh(c'), as forward_ops' (the forward runs one or other)
        threads = torch.get_num_threads()  # the C loop splits its steps over these (by units)
        # split over threads, the chunk projects the input itself (each thread its rows)
        own_projection = _split_by_units(fns, threads, H, B)
        xc = x.contiguous() if own_projection else None
        bias = None if fw.bias is None else fw.bias.reshape(-1).contiguous()
        gwv, scratch = gw.detach().reshape(-1).contiguous(), fw.new(threads * (14 + fw.I) * B)
        Mc = None if M is None else M.reshape(fw.T, B).contiguous()
        per_step = thr.dim() == 3
        args = cpu_kernels.FwdArgs(
            H=H, B=B, A=ptr(fw.A), ST=ptr(fw.ST), CAND=ptr(fw.CAND), WTC=ptr(fw.WTC),
            WSC=ptr(fw.WSC), thr=ptr(thr), thr_t=B if per_step else 0, thr_b=1 if per_step else 0,
            mask=None if Mc is None else ptr(Mc), gw=ptr(gwv), gb=float(gb.reshape(-1)[0]),
            floor=0.0 if floor is None else float(floor), has_floor=floor is not None,
            scratch=ptr(scratch), Hh=ptr(fw.Hh), SC=ptr(fw.SC), KK=ptr(fw.KK) if fw.train else None,
            CC=ptr(fw.CC) if fw.train else None, W=L.W, CO=L.CO, KZ=L.KZ, U=L.U, C2=L.C2,
            PU=L.PU, M=L.M, Wh=ptr(fw.Wh), gemm=fns.gemm, threads=threads,
            x=None if xc is None else ptr(xc), Wi=ptr(fw.Wi),
            bias=None if bias is None else ptr(bias), I=fw.I)
        ref, Wh, A, ST = ctypes.byref(args), fw.Wh, fw.A, fw.ST

        def chunk(t0, n):
            if not own_projection:
                input_projection(fw, x, t0, n)
            if fns.gemm is not None:
                fns.fwd_chunk(ref, t0, n)  # (it carries)
                return
            for j in range(n):
                A[j].addmm_(Wh, ST[j, :H])
                fns.fwd_step(ref, j, t0 + j)
            carry(fw, n)

        chunk.keep = (args, gwv, scratch, Mc, thr, xc, bias)  # the buffers the kernel's pointers name
        return chunk

    def fused_backward(self, bw, g_gate, M):
        """The reverse loop over a chunk's steps in C, each one ``lstm_bwd_step`` and, where a
        column updates, ``sn_h += W_hhᵀ dgates``: what ``cpu_rnn._backward_chunks`` does per step
        with this cell's ``step`` or ``_held_step``; where the chunk splits its steps over
        threads, each also adds its rows of dW_hh (``bw.dWh``; :meth:`backward_ops` then leaves
        it out). None where it does not apply."""
        fns = _kernels(bw.KK)
        if fns is None:
            return None
        H, B, L, ptr = bw.H, bw.B, bw.L, _ptr
        gg = g_gate.reshape(bw.T, B).contiguous()
        gwv = bw.gwT.reshape(-1).contiguous()
        WhT = bw.Wh.t().contiguous()
        threads = torch.get_num_threads()
        scratch, dcp = bw.new(6 * threads * B + 8 * H * B), bw.new(H, B)
        h0 = bw.h0.contiguous()
        if _split_by_units(fns, threads, H, B):
            # the threads' chunks add their rows of dW_hh (backward_ops leaves it to them)
            bw.dWh = bw.x.new_zeros(4 * H, H)
        dW = getattr(bw, "dWh", None)
        args = cpu_kernels.BwdArgs(
            H=H, B=B, C=bw.C, W=L.W, S=L.S, CO=L.CO, KZ=L.KZ, U=L.U, C2=L.C2, PU=L.PU, M=L.M,
            KK=ptr(bw.KK), gg=ptr(gg), S0=ptr(bw.S), S1=ptr(bw.Sn), DGP=ptr(bw.DGP),
            WGO=ptr(bw.WGO), DZ=ptr(bw.DZ), gw=ptr(gwv), scratch=ptr(scratch), dcp=ptr(dcp),
            masked=M is not None, WhT=ptr(WhT), gemm=fns.gemm, threads=threads,
            dW=None if dW is None else ptr(dW), Hh=ptr(bw.Hh), h0=ptr(h0))
        ref, WDG = ctypes.byref(args), bw.WDG
        snh_ = (bw.Sn[:H], bw.S[:H])  # the state-gradient rows written when cur is 0 / 1

        def chunk(t0, n, cur):
            if fns.gemm is not None:
                return fns.bwd_chunk(ref, t0, n, cur)
            updated = bw.KK[t0:t0 + n, L.U].any(1).tolist()
            for j in range(n - 1, -1, -1):
                fns.bwd_step(ref, j, t0 + j, cur, updated[j])
                if updated[j]:
                    snh_[cur].addmm_(WhT, WDG[j])
                cur = 1 - cur
            return cur

        chunk.keep = (args, gg, gwv, scratch, dcp, WhT, h0)
        return chunk


def _split_by_units(fns, threads: int, H: int, B: int) -> bool:
    """Whether the C chunks (with BLAS found) split their steps over threads by hidden units
    (``chunk_threads`` of ``lstm_step.c``): they then project the input and add dW_hh too."""
    return fns.gemm is not None and fns.chunk_threads(threads, H, B) > 1


def _ptr(t: Tensor) -> int:
    if not t.is_contiguous():
        raise ValueError("the fused CPU kernels need contiguous buffers")
    return t.data_ptr()


def _kernels(like: Tensor):
    """The fused C step functions for ``like``'s dtype, or None (not on the CPU, another dtype,
    or the kernels are off or unavailable: see :mod:`skiprnn.ops.cpu_kernels`)."""
    if like.device.type != "cpu" or like.dtype not in (torch.float32, torch.float64):
        return None
    fns = cpu_kernels.load()
    return None if fns is None else fns[like.dtype]


register_cell(_LSTMCell())
