"""Lazy inputs: frames of skipped steps are never produced nor encoded (paper §6-§7, video tasks).

    res = lazy_forward(rnn, source=lambda t: video[t], encoder=cnn, length=len(video),
                       frame_flops=cnn_macs)
    res.output          # the layer's SkipOutput, equal to rnn(cnn(video))
    res.stats           # encoder calls, steps read, FLOPs saved
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..metrics import flops_per_update
from .skipping import StepCell, _NumpyStack, _SkipRuns, np_dtype
from .stream import SkipStream, _gate_config

__all__ = ["lazy_forward", "LazyResult"]


class LazyResult(NamedTuple):
    """``output``: the layer's SkipOutput (time-major ``(T, B, H)``); ``stats``: a dict with
    ``steps``, ``steps_read`` (Σ updates over rows), ``read_steps`` (per row: the steps read),
    ``source_calls``, ``encoder_calls``, ``frames_encoded``, ``flops_dense`` (every step of every
    row updated and encoded), ``flops_used``, ``flops_saved``, ``encoder_flops_saved``."""

    output: Any
    stats: dict


def _length_of(source, length):
    if callable(source) and not hasattr(source, "__getitem__"):
        if length is None:
            raise ValueError("a callable source needs length=T")
        return int(length), (lambda t: source(t))
    if not hasattr(source, "__getitem__") or not hasattr(source, "__len__"):
        raise TypeError(f"source must be a callable source(t) -> frame or an indexable sequence of "
                        f"frames, got {type(source).__name__}")
    n = len(source)
    T = n if length is None else int(length)
    if n < T:
        raise ValueError(f"source holds {n} frames, expected at least length={T}")
    return T, (lambda t: source[t])


def lazy_forward(layer, source, encoder: Callable | None = None, length: int | None = None, *,
                 batch_size: int = 1, frame_flops: float = 0.0, hx=None) -> LazyResult:
    """Run ``layer`` over a sequence whose frames are produced / encoded only when read.

    Args:
        layer: a SkipLSTM / SkipGRU.
        source: ``source(t) -> frame`` or an indexable of frames (list, tensor). With
            ``batch_size`` B > 1 each frame is a batch ``(B, ...)`` of B streams' frames.
        encoder: maps a batch of frames ``(n, ...)`` to features ``(n, input_size)``; None: the
            frames are the features (shape ``(input_size,)``, or ``(B, input_size)``).
            Only the rows that read a step are encoded (n ≤ B).
        length: T (required for a callable source; default ``len(source)``).
        frame_flops: the encoder's cost per frame (multiply-accumulates), for the FLOP stats.
        hx: optional state to continue from.

    Returns:
        :class:`LazyResult` ``(output, stats)``; ``output`` equals ``layer(encoder(all frames))``.
    """
    from ..modules.rnn import SkipOutput

    T, get = _length_of(source, length)
    if T < 1:
        raise ValueError("length must be at least 1")
    if batch_size == 1 and _single_ok(layer):
        return _lazy_single(layer, get, encoder, T, frame_flops, hx)
    B = batch_size
    I, H = layer.input_size, layer.hidden_size
    st = SkipStream(layer, B, hx)
    outs, us, ps = [], [], []
    read_steps = [[] for _ in range(B)]
    source_calls = encoder_calls = frames_encoded = 0
    t = 0
    with torch.no_grad():
        while t < T:
            k = st.skips_ahead
            if k > 0:
                k = int(min(k, T - t))
                h = st.skip(k)
                outs.append(h.unsqueeze(0).expand(k, B, H))
                us.append(h.new_zeros(k, B))
                ps.append(st.last_skip_probs)
                t += k
                continue
            rows = st.reading_rows()
            frame = get(t)
            source_calls += 1
            if B > 1:
                if not isinstance(frame, Tensor) or frame.dim() < 1 or frame.shape[0] != B:
                    raise ValueError(f"source({t}) must return a batch of {B} frames (B, ...), got "
                                     f"{_shape(frame)}")
                sel = frame[torch.as_tensor(rows, device=frame.device)] if len(rows) < B else frame
            else:
                sel = frame.unsqueeze(0) if isinstance(frame, Tensor) else frame
            if encoder is not None:
                feat = encoder(sel)
                encoder_calls += 1
                frames_encoded += len(rows)
            else:
                feat = sel
            if not isinstance(feat, Tensor) or feat.dim() != 2 or tuple(feat.shape) != (len(rows), I):
                what = "encoder output" if encoder is not None else "frame"
                raise ValueError(f"{what} at step {t} must have shape ({len(rows)}, {I}) "
                                 f"(rows read, input_size), got {_shape(feat)}")
            out, u = st.step(feat)
            outs.append(out.unsqueeze(0))
            us.append(u.unsqueeze(0))
            ps.append(st.last_update_prob.unsqueeze(0))
            for r in rows:
                read_steps[int(r)].append(t)
            t += 1
    output = SkipOutput(torch.cat(outs), st.state, torch.cat(us), torch.cat(ps))
    return LazyResult(output, _stats(layer, T, B, read_steps, source_calls, encoder_calls,
                                     frames_encoded, frame_flops))


def _stats(layer, T, B, read_steps, source_calls, encoder_calls, frames_encoded, frame_flops):
    I, H = layer.input_size, layer.hidden_size
    n_read = sum(len(r) for r in read_steps)
    cell, L = layer.mode, layer.num_layers
    dense = T * B * (flops_per_update(cell, I, H, L, skip=False) + frame_flops)
    used = n_read * flops_per_update(cell, I, H, L, skip=True, frame_flops=frame_flops)
    stats = dict(steps=T, batch_size=B, steps_read=n_read, read_steps=read_steps,
                 source_calls=source_calls, encoder_calls=encoder_calls,
                 frames_encoded=frames_encoded, flops_dense=dense, flops_used=used,
                 flops_saved=dense - used, encoder_flops_saved=(T * B - n_read) * frame_flops)
    return stats


def _shape(v):
    return tuple(v.shape) if hasattr(v, "shape") else type(v).__name__


# ---------------------------------------------------------------------------------------------
# batch size 1 on the CPU: the machinery of the skipping forward's B = 1 path, one read at a time
# ---------------------------------------------------------------------------------------------
def _single_ok(layer) -> bool:
    """The B = 1 CPU path applies: CPU float32/float64 parameters, a deterministic gate."""
    p = next(layer.parameters())
    if p.device.type != "cpu" or np_dtype(p.dtype) is None:
        return False
    try:
        _gate_config(layer)
    except ValueError:
        return False  # the generic path raises the stream's error
    return True


def _lazy_single(layer, get, encoder, T: int, frame_flops: float, hx) -> LazyResult:
    """One stream, CPU: per read step fetch → encode → one projection GEMV → the NumPy cell update
    (``_NumpyStack``, as in the whole-sequence B = 1 path); runs of skipped steps are known in
    closed form from (Δũ, ũ) after each update (``_SkipRuns``, memoised) and written in bulk, so a
    skipped step costs nothing per step. Same arithmetic as ``skipping._run_single``."""
    from ..modules.rnn import SkipOutput

    I, H = layer.input_size, layer.hidden_size
    p0 = next(layer.parameters())
    dt = p0.dtype
    npdt = np_dtype(dt)
    threshold, const = _gate_config(layer)
    if hx is None:
        state = layer.initial_state(1)
    else:
        state = layer._parse_hx(hx, 1, torch.empty(1, 1, 1, dtype=dt), unbatched=False)
    lay = layer
    gw = lay.update_gate.weight if lay.update_gate is not None else None
    gb = lay.update_gate.bias if lay.update_gate is not None else None
    one, zero = npdt(1), npdt(0)
    with torch.no_grad(), np.errstate(over="ignore"):
        cell = StepCell(layer.mode, layer._layers(), gw, gb, const)
        stack = _NumpyStack(cell, npdt)
        runs = _SkipRuns(threshold, npdt)
        hs = [h[0].detach().numpy().copy() for h in state[0].unbind(0)]
        cs = ([c[0].detach().numpy().copy() for c in state[1].unbind(0)]
              if layer.mode == "lstm" else None)
        up, cum = npdt(state.update_prob.item()), npdt(state.cum_update_prob.item())
        # first layer's input projection x W_ihᵀ + b (b = b_ih + b_hh for the LSTM), one row
        w_ih, b_first = stack.first_ih
        wt = w_ih.t()
        xp = torch.empty(1, w_ih.shape[0], dtype=dt)
        xp_np = xp.numpy()[0]
        # output rows: 0 the top h before step 0, j the j-th update's h
        hist = np.empty((T + 1, H), npdt)
        hist[0] = hs[-1]
        hs[-1] = hist[0]
        idx = np.zeros(T, np.int64)
        u_np = np.zeros(T, npdt)
        p_np = np.zeros(T, npdt)
        read = []
        cur = 0
        k = 0
        while k < T:
            n, probs, stuck = runs(up, cum, T - k)
            if stuck:  # the gate never opens again: ũ stays at its last value
                n = T - k
                if n > len(probs):
                    probs = np.concatenate([probs, np.full(n - len(probs), probs[-1], npdt)])
            if n:
                p_np[k:k + n] = probs[:n]
                idx[k:k + n] = cur
                cum = probs[n - 1]
                k += n
                if k >= T:
                    break
            # a read step: ũ crosses τ
            frame = get(k)
            sel = frame.unsqueeze(0) if isinstance(frame, Tensor) else frame
            feat = encoder(sel) if encoder is not None else sel
            if not isinstance(feat, Tensor) or feat.dim() != 2 or tuple(feat.shape) != (1, I):
                what = "encoder output" if encoder is not None else "frame"
                raise ValueError(f"{what} at step {k} must have shape (1, {I}) "
                                 f"(rows read, input_size), got {_shape(feat)}")
            if feat.dtype != dt or feat.device.type != "cpu":
                feat = feat.to("cpu", dt)
            if b_first is not None:
                torch.addmm(b_first, feat, wt, out=xp)
            else:
                torch.mm(feat, wt, out=xp)
            p_np[k] = cum + min(up, one - cum)
            u_np[k] = 1
            cur += 1
            hs, cs, up = stack(xp_np, hs, cs, h_out=hist[cur])
            cum = zero
            idx[k] = cur
            read.append(k)
            k += 1
    out = torch.from_numpy(hist[idx]).view(T, 1, H)
    u = torch.from_numpy(u_np).view(T, 1)
    p = torch.from_numpy(p_np).view(T, 1)
    hn = torch.stack([torch.from_numpy(h.copy()) for h in hs]).unsqueeze(1)
    hc = [hn]
    if cs is not None:
        hc.append(torch.stack([torch.from_numpy(c) for c in cs]).unsqueeze(1))
    new_state = layer.state_type(*hc, torch.tensor([up], dtype=dt), torch.tensor([cum], dtype=dt))
    n = len(read)
    stats = _stats(layer, T, 1, [read], n, n if encoder is not None else 0,
                   n if encoder is not None else 0, frame_flops)
    return LazyResult(SkipOutput(out, new_state, u, p), stats)
