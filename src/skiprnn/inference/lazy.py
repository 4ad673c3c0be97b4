"""Lazy inputs: frames of skipped steps are never produced nor encoded (paper §6-§7, video tasks).

    res = lazy_forward(rnn, source=lambda t: video[t], encoder=cnn, length=len(video),
                       frame_flops=cnn_macs)
    res.output          # the layer's SkipOutput, equal to rnn(cnn(video))
    res.stats           # encoder calls, steps read, FLOPs saved
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor

from ..metrics import flops_per_update
from .stream import SkipStream

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
    n_read = sum(len(r) for r in read_steps)
    cell, L = layer.mode, layer.num_layers
    dense = T * B * (flops_per_update(cell, I, H, L, skip=False) + frame_flops)
    used = n_read * flops_per_update(cell, I, H, L, skip=True, frame_flops=frame_flops)
    stats = dict(steps=T, batch_size=B, steps_read=n_read, read_steps=read_steps,
                 source_calls=source_calls, encoder_calls=encoder_calls,
                 frames_encoded=frames_encoded, flops_dense=dense, flops_used=used,
                 flops_saved=dense - used, encoder_flops_saved=(T * B - n_read) * frame_flops)
    return LazyResult(output, stats)


def _shape(v):
    return tuple(v.shape) if hasattr(v, "shape") else type(v).__name__
