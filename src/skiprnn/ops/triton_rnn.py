"""Skip LSTM and Skip GRU on fused Triton kernels (one layer, deterministic gate): one pair of
``torch.library`` custom ops (``skiprnn::triton_rnn_forward`` / ``triton_rnn_backward``, fake
kernels, autograd and CUDA autocast registered, so torch.compile / torch.export hold a call as
one node) and one host wrapper for both cells, the cell a parameter (``'lstm'`` | ``'gru'``).

Same contract (:mod:`skiprnn.ops.contract`) and maths as ``skip_rnn_naive`` (the definition,
``skiprnn/ops/naive.py``); tested against it on outputs, final state and every gradient
(``tests/ops/test_triton.py``).

Kernels: the cooperative ones (``coop_kernels.py``, chosen and timed by ``coop.py``; W_hh on
chip, biases added in-kernel, inputs of at most 4 features projected in-kernel) and the
one-program-per-row-block ones (``rowblock.py``: the fallback, and the only kernels of the GRU's
paper candidate ``reset_after=False``). Both write the same buffers, so the outer GEMMs of the
backward are shared: dW_hh, dW_ih, dx, the biases, dw_p, db_p.

Gradient of the gate (straight-through, du/dũ = 1): ``du = Σ (h̃ - h_old) dh' [+ Σ (c̃ - c_old)
dc'] + d(up')(Δũ - up) - d(cum')ũ + d(updates)``; ``ũ = cum + min(up, 1 - cum)`` sends its
whole gradient to ``up`` at an exact tie, as TensorFlow's ``tf.minimum`` (this happens at the
first step).

Precision: ``precision='ieee'`` (exact fp32 products, used by the tests) or ``'tf32'`` (tensor
cores, as cuDNN uses for RNNs under PyTorch's defaults). Default: 'tf32' on CUDA, 'ieee' in the
interpreter, always 'ieee' for float64. bf16/fp16 inputs are computed in fp32 and returned in
their dtype. Nothing is compiled at import time; the module imports without Triton.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch import Tensor

from . import coop, coop_kernels, rowblock
from .cells import cell_spec
from .contract import OP_LAYER_ARGS, OP_OUTPUTS, GateOptions, RecurrenceResult, check_cell
from .triton_utils import (check_device, compute_dtype, grads_or_zeros, require_triton,
                           resolve_precision, tile_config)
from .triton_utils import contiguous_as as _c



def _old_bias(cell: str, xp: Tensor, b_ih, b_hh) -> tuple[Tensor, Tensor | None]:
    """For the row-block kernels: the biases folded into the projection ``xp`` (LSTM: both; GRU:
    ``b_ih + [b_hr, b_hz, 0]``), and the GRU's ``b_hn`` (H,) (it sits inside the reset gate's
    product; None for the LSTM)."""
    if b_ih is not None:
        xp = xp + b_ih
    if cell == "lstm":
        return (xp if b_hh is None else xp + b_hh), None
    H = xp.shape[-1] // 3
    if b_hh is None:
        return xp, xp.new_zeros(H)
    xp = torch.cat([xp[..., :2 * H] + b_hh[:2 * H], xp[..., 2 * H:]], dim=-1)
    return xp, b_hh[2 * H:].contiguous()


def _sums_old(cell: str, gz: Tensor, gates: Tensor, hs: Tensor, cs: Tensor | None) -> Tensor:
    """``part`` of ``coop_kernels.launch_bwd`` for the row-block kernels, in its one-row form
    ``(1, H+1)``: Σ over all rows and steps of gz·s̃ and of gz (w_p's and b_p's gradients), the
    Δũ feature s̃ (c̃ for the LSTM, h̃ for the GRU) recomputed from the gates."""
    H = hs.shape[-1]
    g = [gates[..., k * H:(k + 1) * H] for k in range(3)]
    if cell == "lstm":  # c̃ = f c + i g
        feat = g[1] * cs[:-1] + g[0] * g[2]
    else:  # h̃ = (1 - z) n + z h
        feat = (1 - g[1]) * g[2] + g[1] * hs[:-1]
    dgw = gz.reshape(1, -1) @ feat.reshape(-1, H)
    return torch.cat([dgw.reshape(-1), gz.sum().reshape(1)]).unsqueeze(0)


def _outputs(ts, like):
    """The op's output tuple: None -> an empty ``(0,)`` tensor like ``like``; every output
    contiguous from the start of its own storage (as the fake kernels' ``new_empty``); no two
    outputs share storage (views of one buffer, e.g. the GRU's two bias gradients, are
    copied)."""
    ts = [like.new_empty(0) if t is None else t for t in ts]
    seen, out = set(), []
    for t in ts:
        if t.numel() and (t.untyped_storage().data_ptr() in seen or t.storage_offset()
                          or not t.is_contiguous()):
            t = t.clone(memory_format=torch.contiguous_format)
        if t.numel():
            seen.add(t.untyped_storage().data_ptr())
        out.append(t)
    return tuple(out)


def _fwd_paths(kind, cell, x, h0, c0, up0, cum0, w_ih, w_hh, b_ih, b_hh, gate_w, gate_b, mask,
               threshold, precision, reset_after=True):
    """``coop.run``'s key, candidates, ``launch_coop(cfg)`` and ``launch_rowblock()`` for a
    forward (``kind`` 'fwd', or 'infer': nothing kept for a backward). Both launchers return
    ``(out, hs, cs, gates, upd, prob, stats, up_n, cum_n, h_n, c_n)`` in the compute dtype."""
    cdt = compute_dtype(x.dtype)
    T, B, I = x.shape
    H = w_hh.shape[1]
    xc, w_ihc, w_hhc, bih, bhh = (_c(t, cdt) for t in (x, w_ih, w_hh, b_ih, b_hh))
    rest = (_c(gate_w.reshape(-1), cdt), _c(gate_b.reshape(-1), cdt), _c(mask, cdt),
            _c(h0, cdt), _c(c0, cdt), _c(up0, cdt), _c(cum0, cdt), threshold, precision)
    # x W_ih^T (no bias): one GEMM, made once and only if a path reads it (a cooperative
    # configuration with FUSE projects small inputs itself, see coop.fuse_input)
    xp = functools.cache(lambda: torch.mm(xc.reshape(T * B, I), w_ihc.t()).view(T, B, -1))
    fusable = coop.fuse_input(I)

    def run_coop(c):
        fused = c.get("FUSE") and fusable
        return coop_kernels.launch_fwd(cell, xc if fused else xp(), w_hhc, bih, bhh, *rest, c,
                                       save=kind == "fwd", w_ih=w_ihc if fused else None)

    def run_old():
        xpb, b_hn = _old_bias(cell, xp(), bih, bhh)
        res = rowblock.launch_fwd(cell, xpb, w_hhc, b_hn, *rest, tile_config(H, B), reset_after)
        hs, cs = res[1], res[2]
        return (*res, hs[T].clone(), None if cs is None else cs[T].clone())

    key = (f"{cell}-{kind}", B, H, precision, mask is not None, str(cdt), str(x.device), fusable)
    # the cooperative kernels have nn.GRU's candidate only
    cands = (coop.candidates(H, B, x.device, precision=precision, fusable=fusable)
             if reset_after else [])
    return key, cands, run_coop, run_old


@torch.autocast("cuda", enabled=False)  # no autocast inside (inputs cast by register_autocast)
def _forward(cell, x, h0, c0, up0, cum0, w_ih, w_hh, b_ih, b_hh, gate_w, gate_b, mask,
             threshold, precision, reset_after):
    """The forward kernels. Returns ``(out (T, B, H), h_n (B, H), c_n (B, H) | None, Δũ_n (B,),
    cum_n (B,), updates (T, B), ũ (T, B))`` in ``x``'s dtype and what the backward reads,
    ``(hs (T+1, B, H), cs (T+1, B, H) | None, gates (T, B, 4H), stats (5, T, B))`` in the
    compute dtype."""
    out, hs, cs, gates, upd, prob, stats, up_n, cum_n, h_n, c_n = coop.run(*_fwd_paths(
        "fwd", cell, x, h0, c0, up0, cum0, w_ih, w_hh, b_ih, b_hh, gate_w, gate_b, mask,
        threshold, precision, reset_after))
    res = (out, h_n, c_n, up_n, cum_n, upd, prob)
    if x.dtype != gates.dtype:
        res = tuple(None if t is None else t.to(x.dtype) for t in res)
    return res, (hs, cs, gates, stats)


@torch.autocast("cuda", enabled=False)
def _backward(cell, x, w_ih, w_hh, gate_w, mask, hs, cs, gates, stats, grads, precision,
              reset_after, need):
    """The backward kernels and the outer GEMMs. ``grads``: the gradients of the forward's 7
    results (None where absent); ``need``: which of ``(x, h0, c0, up0, cum0, w_ih, w_hh, b_ih,
    b_hh, gate_w, gate_b)`` need a gradient. Returns those gradients in the compute dtype (None
    where not needed or absent; ``h0`` / ``c0``'s ``(B, H)``)."""
    lstm = cell == "lstm"
    cdt = gates.dtype
    xc, w_ihc, w_hhc = _c(x, cdt), _c(w_ih, cdt), _c(w_hh, cdt)
    gwc, maskc = _c(gate_w.reshape(-1), cdt), _c(mask, cdt)
    T, B, I = xc.shape
    H = w_hhc.shape[1]
    cands = coop.candidates(H, B, xc.device, precision=precision) if reset_after else []
    gin = tuple(grads)
    shapes = ((T, B, H), (B, H), (B, H), (B,), (B,), (T, B), (T, B))
    if not lstm:  # no c: leave its (absent) gradient out
        gin, shapes = gin[:2] + gin[3:], shapes[:2] + shapes[3:]
    g, spare = grads_or_zeros(gin, shapes, cdt, xc.device,
                              scratch=coop.counter_scratch(cands, B))
    if not lstm:
        g = g[:2] + [None] + g[2:]
    spare = coop.once(spare)
    bargs = (w_hhc, gwc, maskc, hs, cs, gates, stats, *g, precision)
    key = (f"{cell}-bwd", B, H, precision, maskc is not None, str(cdt), str(xc.device))

    def run_old():
        res = rowblock.launch_bwd(cell, *bargs, tile_config(H, B), reset_after)
        part = _sums_old(cell, res[1], gates, hs, cs) if any(need[9:]) else None
        return (*res, part)

    dg, gz, dh0, dc0, dup0, dcum0, part = coop.run(
        key, cands, lambda c: coop_kernels.launch_bwd(cell, *bargs, c, zeros=spare()),
        run_old)
    dg2 = dg.view(T * B, 4 * H)
    dxp = dg2 if lstm else dg2[:, :3 * H]                          # d(x W_ih^T + b_ih)
    dx = (dxp @ w_ihc).view(T, B, I) if need[0] else None
    dw_ih = dxp.t() @ xc.reshape(T * B, I) if need[5] else None
    dw_hh = None
    if need[6]:
        if lstm:
            dw_hh = dg2.t() @ hs[:-1].reshape(T * B, H)
        elif reset_after:
            dgh = torch.cat([dg2[:, :2 * H], dg2[:, 3 * H:]], dim=1)  # d(h W_hh^T + b_hh)
            dw_hh = dgh.t() @ hs[:-1].reshape(T * B, H)
        else:  # the n rows act on r ⊙ h (kept in the gates' last block)
            dw_hh = torch.cat([dg2[:, :2 * H].t() @ hs[:-1].reshape(T * B, H),
                               dg2[:, 3 * H:].t() @ gates[..., 3 * H:].reshape(T * B, H)])
    db_ih = db_hh = dgw = dgb = None
    if need[7] or need[8]:
        s = dg2.sum(0)  # LSTM: both biases'; GRU: [r, z, n (input side), W_hn h + b_hn]
        db_ih = db_hh = s
        if not lstm:
            db_ih = s[:3 * H]
            db_hh = torch.cat([s[:2 * H], s[3 * H:]]) if need[8] else None
    if need[9] or need[10]:
        sums = part.sum(0)  # row blocks' sums of gz·(Δũ feature) and gz
        dgw = sums[:H].view(gate_w.shape)
        dgb = sums[H:].view(-1)
    grads = [dx, dh0, dc0, dup0, dcum0, dw_ih, dw_hh, db_ih, db_hh, dgw, dgb]
    return [g if n else None for g, n in zip(grads, need)]


# ------------------------------------------------------------------ torch.library custom ops
#
# ``skiprnn::triton_rnn_forward`` / ``skiprnn::triton_rnn_backward``: fake kernels give the
# output shapes, ``register_autograd`` ties them, ``register_autocast`` runs the forward in fp32
# under CUDA autocast. Both return 11 tensors (an absent one is an empty ``(0,)`` tensor); the
# kernels' outputs are fresh buffers, and outputs that would share storage are cloned
# (:func:`_outputs`), so no output aliases an input or another output; neither op writes its
# inputs.


@torch.library.custom_op(
    "skiprnn::triton_rnn_forward", mutates_args=(),
    schema=f"({OP_LAYER_ARGS}, str precision, bool reset_after) -> " + OP_OUTPUTS)
def triton_rnn_forward(cell, x, h0, c0, update_prob0, cum_prob0, w_ih, w_hh, b_ih, b_hh,
                       gate_weight, gate_bias, mask, threshold, precision, reset_after):
    """One Skip RNN layer on the Triton kernels (the op; :func:`skip_rnn_triton` is the user
    function). ``cell`` 'lstm' | 'gru'; ``x`` ``(T, B, I)``; ``h0``, ``c0`` ``(B, H)`` (``c0``
    None for the GRU); ``update_prob0``, ``cum_prob0`` ``(B,)``; ``mask`` ``(T, B)`` or None;
    ``precision`` 'ieee' | 'tf32'; ``reset_after`` False: the GRU's paper candidate.

    Returns ``(out (T, B, H), h_n (B, H), c_n (B, H) | (0,), Δũ_n (B,), cum_n (B,),
    updates (T, B), ũ (T, B))`` in ``x``'s dtype, then what the backward reads, in the compute
    dtype (fp32, fp64 for fp64): ``hs (T+1, B, H), cs (T+1, B, H) | (0,), gates (T, B, 4H),
    stats (5, T, B)``."""
    res, saved = _forward(cell, x, h0, c0, update_prob0, cum_prob0, w_ih, w_hh, b_ih, b_hh,
                          gate_weight, gate_bias, mask, threshold, precision, reset_after)
    return _outputs((*res, *saved), x)


@triton_rnn_forward.register_fake
def _triton_rnn_forward_fake(cell, x, h0, c0, update_prob0, cum_prob0, w_ih, w_hh, b_ih, b_hh,
                             gate_weight, gate_bias, mask, threshold, precision, reset_after):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    lstm, cdt = cell == "lstm", compute_dtype(x.dtype)

    def new(*shape, when=True, dtype=None):
        return x.new_empty(shape if when else (0,), dtype=dtype)

    return (new(T, B, H), new(B, H), new(B, H, when=lstm), new(B), new(B), new(T, B), new(T, B),
            new(T + 1, B, H, dtype=cdt), new(T + 1, B, H, when=lstm, dtype=cdt),
            new(T, B, 4 * H, dtype=cdt), new(5, T, B, dtype=cdt))


@torch.library.custom_op(
    "skiprnn::triton_rnn_backward", mutates_args=(),
    schema="(str cell, Tensor x, Tensor w_ih, Tensor w_hh, Tensor gate_weight, Tensor? mask, "
           "Tensor hs, Tensor? cs, Tensor gates, Tensor stats, Tensor? g_output, Tensor? g_h_n, "
           "Tensor? g_c_n, Tensor? g_update_prob, Tensor? g_cum_prob, Tensor? g_updates, "
           "Tensor? g_update_probs, str precision, bool reset_after, bool[] need) -> " + OP_OUTPUTS)
def triton_rnn_backward(cell, x, w_ih, w_hh, gate_weight, mask, hs, cs, gates, stats, g_output,
                        g_h_n, g_c_n, g_update_prob, g_cum_prob, g_updates, g_update_probs,
                        precision, reset_after, need):
    """The backward of :func:`triton_rnn_forward` (``hs``, ``cs``, ``gates``, ``stats``: what it
    returned for it; ``g_*``: the gradients of its 7 results, None where absent; ``need``: 11
    flags, which of ``(x, h0, c0, update_prob0, cum_prob0, w_ih, w_hh, b_ih, b_hh, gate_weight,
    gate_bias)`` need a gradient). Returns those gradients in the compute dtype, ``(0,)`` where
    not needed (``h0`` / ``c0``'s: ``(B, H)``; ``gate_bias``'s: ``(1,)``)."""
    grads = (g_output, g_h_n, g_c_n, g_update_prob, g_cum_prob, g_updates, g_update_probs)
    res = _backward(cell, x, w_ih, w_hh, gate_weight, mask, hs, None if cs.numel() == 0 else cs,
                    gates, stats, grads, precision, reset_after, tuple(need))
    return _outputs(res, gates)


@triton_rnn_backward.register_fake
def _triton_rnn_backward_fake(cell, x, w_ih, w_hh, gate_weight, mask, hs, cs, gates, stats,
                              g_output, g_h_n, g_c_n, g_update_prob, g_cum_prob, g_updates,
                              g_update_probs, precision, reset_after, need):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    shapes = (tuple(x.shape), (B, H), (B, H), (B,), (B,), tuple(w_ih.shape), tuple(w_hh.shape),
              (w_hh.shape[0],), (w_hh.shape[0],), tuple(gate_weight.shape), (1,))
    present = (True, True, cell == "lstm") + (True,) * 8
    return tuple(gates.new_empty(s if n and p else (0,))
                 for s, n, p in zip(shapes, need, present))


def _setup_context(ctx, inputs, output):
    (cell, x, h0, c0, up0, cum0, w_ih, w_hh, b_ih, b_hh, gate_w, gate_b, mask, _, precision,
     reset_after) = inputs
    hs, cs, gates, stats = output[7:]
    ctx.mark_non_differentiable(hs, cs, gates, stats)
    ctx.set_materialize_grads(False)  # missing output grads: one zero buffer in backward
    ctx.save_for_backward(x, w_ih, w_hh, gate_w, mask, hs, cs, gates, stats)
    ctx.cell, ctx.precision, ctx.reset_after = cell, precision, reset_after
    ctx.inputs = [None if t is None else (t.dtype, t.shape) for t in
                  (x, h0, c0, up0, cum0, w_ih, w_hh, b_ih, b_hh, gate_w, gate_b)]


def _triton_rnn_autograd(ctx, *grads):
    x, w_ih, w_hh, gate_w, mask, hs, cs, gates, stats = ctx.saved_tensors
    need = [bool(n) and meta is not None for n, meta in zip(ctx.needs_input_grad[1:12],
                                                             ctx.inputs)]
    g = list(grads[:7])
    if ctx.cell != "lstm":
        g[2] = None  # the GRU's (empty) c_n
    res = triton_rnn_backward(ctx.cell, x, w_ih, w_hh, gate_w, mask, hs, cs, gates, stats, *g,
                              ctx.precision, ctx.reset_after, need)
    # each gradient in its input's dtype and shape
    out = [grad.to(m[0]).view(m[1]) if n else None for grad, n, m in zip(res, need, ctx.inputs)]
    return (None, *out, None, None, None, None)


triton_rnn_forward.register_autograd(_triton_rnn_autograd, setup_context=_setup_context)
torch.library.register_autocast("skiprnn::triton_rnn_forward", "cuda", torch.float32)


def _checked(cell: str, x: Tensor, state: tuple, layers, opts: GateOptions) -> tuple[float, str]:
    """The float threshold and the precision of a call the Triton path runs; ValueError for what
    it does not run (RuntimeError without Triton or off CUDA)."""
    check_cell(cell, state, opts)
    require_triton()
    name = f"skip_rnn_triton({cell!r})"
    if len(layers) != 1:
        raise ValueError(f"{name} supports one layer, got {len(layers)}")
    if opts.forced is not None or opts.constant_delta is not None:
        raise ValueError(f"{name} does not support forced gates or constant_delta; "
                         "use the reference")
    if opts.max_skip is not None:
        raise ValueError(f"{name} does not support max_skip (no floor on Δũ in the kernels); "
                         "use the reference or the CPU path")
    threshold = opts.threshold
    if isinstance(threshold, Tensor) and threshold.dim() != 0:
        raise ValueError(f"{name} needs a float threshold (no per-step thresholds)")
    if x.dim() != 3:
        raise ValueError(f"x must be (T, B, I), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x must have at least one time step")
    check_device(x)
    w_ih, w_hh, b_ih, b_hh = layers[0]
    T, B, I = x.shape
    H = w_hh.shape[1]
    G = cell_spec(cell).gates
    if w_ih.shape != (G * H, I) or w_hh.shape != (G * H, H):
        raise ValueError(f"weights must be ({G}H, I) and ({G}H, H); got {tuple(w_ih.shape)}, "
                         f"{tuple(w_hh.shape)}")
    names = ("h0", "c0")[:len(state)]
    if any(s.shape != (1, B, H) for s in state):
        raise ValueError(f"{' and '.join(names)} must be (1, B, H) = (1, {B}, {H}); got "
                         + ", ".join(str(tuple(s.shape)) for s in state))
    if opts.mask is not None and opts.mask.shape != (T, B):
        raise ValueError(f"mask must be (T, B) = ({T}, {B}), got {tuple(opts.mask.shape)}")
    return float(threshold), resolve_precision(opts.precision, x.dtype)


def skip_rnn_triton(cell: str, x: Tensor, state: tuple, update_prob0: Tensor, cum_prob0: Tensor,
                    layers: Sequence[tuple], gate_weight: Tensor, gate_bias: Tensor,
                    opts: GateOptions = GateOptions()) -> RecurrenceResult:
    """The Triton backend: one layer over fused kernels, forward and backward. Arguments and
    result: :mod:`skiprnn.ops.contract` (``state`` tensors ``(1, B, H)``).

    Supported: one layer, a float threshold, no ``forced`` / ``constant_delta`` / ``max_skip``
    (ValueError otherwise; use the reference). ``dropout`` only acts between layers, so it is
    ignored here. ``opts.precision``: 'ieee' (exact fp32 products) or 'tf32' (tensor cores);
    default 'tf32' on CUDA ('ieee' for float64 and under ``TRITON_INTERPRET=1``); env
    ``SKIPRNN_TRITON_PRECISION``. ``reset_after=False`` (the GRU's paper candidate) runs on the
    row-block kernels (the cooperative ones have nn.GRU's candidate only).
    """
    threshold, prec = _checked(cell, x, state, layers, opts)
    lstm = cell == "lstm"
    out, h_n, c_n, up, cum, upd, prob = triton_rnn_forward(
        cell, x, state[0][0], state[1][0] if lstm else None, update_prob0, cum_prob0,
        *layers[0], gate_weight, gate_bias, opts.mask, threshold, prec,
        bool(opts.reset_after))[:7]
    state_n = (h_n.unsqueeze(0), c_n.unsqueeze(0)) if lstm else (h_n.unsqueeze(0),)
    return RecurrenceResult(out, state_n, up, cum, upd, prob)


@torch.no_grad()
@torch.autocast("cuda", enabled=False)  # the projection GEMM stays in fp32 under autocast
def skip_rnn_triton_infer(cell: str, x: Tensor, state: tuple, update_prob0: Tensor,
                          cum_prob0: Tensor, layers: Sequence[tuple], gate_weight: Tensor,
                          gate_bias: Tensor, opts: GateOptions = GateOptions()
                          ) -> RecurrenceResult:
    """Forward only (no autograd, nothing saved for a backward), the contract of
    :func:`skip_rnn_triton`: the cooperative kernel (h ping-pong, no history) where it applies,
    else the row-block forward."""
    threshold, prec = _checked(cell, x, state, layers, opts)
    key, cands, run_coop, run_old = _fwd_paths(
        "infer", cell, x, state[0][0], state[1][0] if cell == "lstm" else None, update_prob0,
        cum_prob0, *layers[0], gate_weight, gate_bias, opts.mask, threshold, prec,
        opts.reset_after)
    out, _, _, _, upd, prob, _, up_n, cum_n, h_n, c_n = coop.run(
        key, cands, run_coop, run_old, hint=(f"{cell}-fwd",) + key[1:])
    dt = x.dtype
    state_n = (h_n, c_n) if cell == "lstm" else (h_n,)
    return RecurrenceResult(out.to(dt), tuple(s.to(dt).unsqueeze(0) for s in state_n),
                            up_n.to(dt), cum_n.to(dt), upd.to(dt), prob.to(dt))
