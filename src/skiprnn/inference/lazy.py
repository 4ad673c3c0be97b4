"""Lazy inputs: frames of skipped steps are never produced nor encoded (paper §6-§7, video tasks).

    res = lazy_forward(rnn, source=lambda t: video[t], encoder=cnn, length=len(video),
                       frame_flops=cnn_macs)
    res.output          # the layer's SkipOutput, equal to rnn(cnn(video))
    res.stats           # encoder calls, steps read, FLOPs saved

At batch size 1 on the CPU a read step is: fetch the frame, encode it, one matrix-vector product
per layer with ``[W_hh | W_ih | b]`` and a few in-place NumPy ops (``skiprnn.ops.skipping.
NumpyStack``); the number of steps skipped after it follows from (Δũ, ũ) alone and their outputs
are filled in at the end, so a skipped step costs nothing. Other cases step a ``SkipStream``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..metrics import flops_per_update
from ..outputs import SkipOutput
from ..ops.skipping import np_dtype, run_single
from .stream import SkipStream, _gate_config, _layer_state, _step_cell

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
        return int(length), source
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
        :class:`LazyResult` ``(output, stats)``; ``output`` equals ``layer(encoder(all frames))``,
        in the layer's layout (``(B, T, ...)`` for a ``batch_first`` layer, else ``(T, B, ...)``).
    """
    if getattr(layer, "bidirectional", False):
        raise ValueError("lazy_forward reads a sequence front to back and cannot run a "
                         "bidirectional layer (its reverse direction starts from the end); call "
                         "the layer on the encoded sequence instead")
    T, get = _length_of(source, length)
    if T < 1:
        raise ValueError("length must be at least 1")
    if batch_size == 1 and _single_ok(layer):
        return _lazy_single(layer, source, get, encoder, T, frame_flops, hx)
    B = batch_size
    I, H = layer.input_size, layer.hidden_size
    st = SkipStream(layer, B, hx)
    outs, us, ps = [], [], []
    read_steps = [[] for _ in range(B)]
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
            if B > 1:
                if not isinstance(frame, Tensor) or frame.dim() < 1 or frame.shape[0] != B:
                    raise ValueError(f"source({t}) must return a batch of {B} frames (B, ...), got "
                                     f"{_shape(frame)}")
                sel = frame[torch.as_tensor(rows, device=frame.device)] if len(rows) < B else frame
            else:
                sel = frame.unsqueeze(0) if isinstance(frame, Tensor) else frame
            feat = encoder(sel) if encoder is not None else sel
            if not isinstance(feat, Tensor) or tuple(feat.shape) != (len(rows), I):
                raise _feature_error(encoder, t, len(rows), I, feat, B)
            out, u = st.step(feat)
            outs.append(out.unsqueeze(0))
            us.append(u.unsqueeze(0))
            ps.append(st.last_update_prob.unsqueeze(0))
            for r in rows:
                read_steps[int(r)].append(t)
            t += 1
    output = _layout(layer, SkipOutput(torch.cat(outs), st.state, torch.cat(us), torch.cat(ps)))
    return LazyResult(output, _stats(layer, T, B, read_steps, encoder is not None, frame_flops))


def _stats(layer, T, B, read_steps, encoded: bool, frame_flops):
    """:class:`LazyResult`'s stats; ``read_steps``: per row the steps read (one source call a
    step that some row reads, one encoder call too when ``encoded``)."""
    I, H = layer.input_size, layer.hidden_size
    n_read = sum(len(r) for r in read_steps)
    source_calls = len(set().union(*read_steps))
    cell, L = layer.mode, layer.num_layers
    dense = T * B * (flops_per_update(cell, I, H, L, skip=False) + frame_flops)
    used = n_read * flops_per_update(cell, I, H, L, skip=True, frame_flops=frame_flops)
    return dict(steps=T, batch_size=B, steps_read=n_read, read_steps=read_steps,
                source_calls=source_calls, encoder_calls=source_calls if encoded else 0,
                frames_encoded=n_read if encoded else 0, flops_dense=dense, flops_used=used,
                flops_saved=dense - used, encoder_flops_saved=(T * B - n_read) * frame_flops)


# ---------------------------------------------------------------------------------------------
# batch size 1 on the CPU (see the module's docstring)
# ---------------------------------------------------------------------------------------------
def _single_ok(layer) -> bool:
    """The B = 1 CPU path applies: CPU float32/float64 parameters, a deterministic gate, and
    nn.GRU's candidate (its NumPy maths; ``reset_after=False`` takes the generic path)."""
    p = next(layer.parameters())
    if p.device.type != "cpu" or np_dtype(p.dtype) is None or not layer.reset_after:
        return False
    try:
        _gate_config(layer)
    except ValueError:
        return False  # the generic path raises the stream's error
    return True


def _lazy_single(layer, source, get, encoder, T: int, frame_flops: float, hx) -> LazyResult:
    """One stream, CPU: the batch-size-1 skipping loop in NumPy (``skiprnn.ops.skipping.
    run_single``), each read step's frame fetched and encoded when the step is read."""
    I = layer.input_size
    dt = next(layer.parameters()).dtype
    threshold, const = _gate_config(layer)
    state = _layer_state(layer, hx, 1)
    shape1, sliced = (1, I), isinstance(source, Tensor)

    def fetch(k):  # the frame as a batch of one (a tensor source: one slice), encoded, checked
        sel = source[k:k + 1] if sliced else get(k)
        if not sliced and isinstance(sel, Tensor):
            sel = sel.unsqueeze(0)
        feat = encoder(sel) if encoder is not None else sel
        if not isinstance(feat, Tensor) or feat.shape != shape1:
            raise _feature_error(encoder, k, 1, I, feat, 1)
        return feat

    with torch.no_grad(), np.errstate(over="ignore"):
        res = run_single(_step_cell(layer, threshold, const), torch.empty(T, 1, 0, dtype=dt),
                         list(state[0].unbind(0)),
                         list(state[1].unbind(0)) if layer.mode == "lstm" else None,
                         state.update_prob, state.cum_update_prob, None, np_dtype(dt), fetch)
    read = torch.nonzero(res.updates[:, 0]).flatten().tolist()
    new_state = layer.state_type(*res.state, res.update_prob, res.cum_prob)
    return LazyResult(_layout(layer, SkipOutput(res.output, new_state, res.updates,
                                                res.update_probs)),
                      _stats(layer, T, 1, [read], encoder is not None, frame_flops))


def _layout(layer, out):
    """Time-major results in ``layer``'s layout: batch-first layers get (B, T, ...)."""
    if not getattr(layer, "batch_first", False):
        return out
    return type(out)(out.output.transpose(0, 1), out.state, out.updates.transpose(0, 1),
                     out.update_probs.transpose(0, 1))


def _shape(v):
    return tuple(v.shape) if hasattr(v, "shape") else type(v).__name__


def _feature_error(encoder, t: int, n: int, input_size: int, feat, batch_size: int) -> ValueError:
    """The error for features of the wrong shape at step ``t`` (``n`` rows read)."""
    if encoder is not None:
        msg = (f"encoder output at step {t} must have shape ({n}, {input_size}) (rows read, "
               f"input_size): the encoder maps a batch of n frames (n, ...) to (n, input_size); "
               f"got {_shape(feat)}")
    else:
        one = f"({input_size},)" if batch_size == 1 else f"({batch_size}, {input_size})"
        msg = (f"frame at step {t} must have shape {one} (no encoder: the frames are the layer's "
               f"inputs); got {_shape(feat)[1:] if batch_size == 1 and isinstance(feat, Tensor) else _shape(feat)}")
    if batch_size == 1 and isinstance(feat, Tensor) and feat.dim() == 3 and feat.shape[1] == 1:
        msg += (f". A (T, 1, ...) source holds one stream with a batch dimension: pass source[:, 0] "
                f"(batch_size=1 reads frames without one), or batch_size=B for (T, B, ...) frames")
    return ValueError(msg)
