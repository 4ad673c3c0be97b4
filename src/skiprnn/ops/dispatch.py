"""Backend choice for the Skip RNN recurrence.

``backend='auto' | 'reference' | 'cpu' | 'triton'`` on the layers; the environment variable
``SKIPRNN_BACKEND`` overrides the layer's choice (useful to force the reference in a debugging
session, or the Triton kernels under ``TRITON_INTERPRET=1``). Nothing is imported or compiled
until a backend is first used.
"""

from __future__ import annotations

import importlib
from functools import lru_cache

from .._env import env as _env, triton_available

BACKENDS = ("auto", "reference", "cpu", "triton", "skipping")
ENV_VAR = "SKIPRNN_BACKEND"

# (cell kind, backend) -> "module:function"; every function has the naive signature.
_IMPLS = {
    ("lstm", "reference"): "skiprnn.ops.skip_lstm.naive:skip_lstm_naive",
    ("gru", "reference"): "skiprnn.ops.skip_gru.naive:skip_gru_naive",
    ("lstm", "cpu"): "skiprnn.ops.skip_lstm.cpu:skip_lstm_cpu",
    ("gru", "cpu"): "skiprnn.ops.skip_gru.cpu:skip_gru_cpu",
    ("lstm", "triton"): "skiprnn.ops.skip_lstm.fused:skip_lstm_triton",
    ("gru", "triton"): "skiprnn.ops.skip_gru.fused:skip_gru_triton",
    # inference only (no autograd): skipped steps do no work
    ("lstm", "skipping"): "skiprnn.inference.skipping:skip_lstm_skipping",
    ("gru", "skipping"): "skiprnn.inference.skipping:skip_gru_skipping",
}


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


@lru_cache(maxsize=None)
def _load(kind: str, backend: str):
    target = _IMPLS.get((kind, backend))
    if target is None:
        return None
    mod, fn = target.split(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError):
        return None


def select(kind: str, backend: str, *, device_type: str, num_layers: int, fast_ok: bool,
           grad: bool = True, skip_ok: bool = False):
    """Return ``(name, function)`` for the requested backend.

    ``fast_ok`` is False when the call needs something only the reference does (several layers,
    Bernoulli sampling, baselines' forced gates, dropout). 'auto' then falls back to the reference;
    an explicitly requested fast backend raises. Without autograd (``grad=False``) and with a
    deterministic learned gate (``skip_ok``), 'auto' uses the skipping inference path, whose
    skipped steps cost nothing.
    """
    env = _env(ENV_VAR)
    if env:
        if env not in BACKENDS:
            raise ValueError(f"{ENV_VAR} must be one of {BACKENDS}, got {env!r}")
        backend = env
    check_backend(backend)
    if backend == "reference":
        return "reference", _load(kind, "reference")
    if backend == "skipping" and grad:
        raise ValueError("backend 'skipping' is for inference only (skipped steps keep no autograd "
                         "graph): call the layer under torch.no_grad() / torch.inference_mode(), "
                         "or use backend='auto', which picks it there by itself")
    if backend == "skipping" or (backend == "auto" and not grad and skip_ok):
        fn = _load(kind, "skipping")
        if fn is not None:
            return "skipping", fn
        if backend == "skipping":
            raise RuntimeError("the skipping inference backend is not available")
    if backend == "auto":
        if not fast_ok or num_layers != 1:
            return "reference", _load(kind, "reference")
        order = ["triton", "cpu"] if device_type == "cuda" else ["cpu"]
        for name in order:
            if name == "triton" and not triton_available():
                continue
            fn = _load(kind, name)
            if fn is not None:
                return name, fn
        return "reference", _load(kind, "reference")
    if not fast_ok or num_layers != 1:
        raise ValueError(
            f"backend {backend!r} supports one layer with the deterministic gate; this call needs "
            f"the reference (num_layers={num_layers}). Use backend='auto' or 'reference'.")
    fn = _load(kind, backend)
    if fn is None:
        raise RuntimeError(f"backend {backend!r} for Skip {kind.upper()} is not available here")
    return backend, fn
