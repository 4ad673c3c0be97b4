"""Backend choice for the Skip RNN recurrence.

``backend='auto' | 'reference' | 'cpu' | 'triton'`` on the layers; the environment variable
``SKIPRNN_BACKEND`` overrides the layer's choice (useful to force the reference in a debugging
session, or the Triton kernels under ``TRITON_INTERPRET=1``). Nothing is imported or compiled
until a backend is first used.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import NamedTuple

import torch

from .._env import env as _env, triton_available

BACKENDS = ("auto", "reference", "cpu", "triton", "skipping")
# backends that are torch.library custom ops (fake kernels, autograd registered): torch.compile
# and torch.export trace a call as one node; the others run outside the traced graphs
TRACEABLE = ("cpu", "triton")
ENV_VAR = "SKIPRNN_BACKEND"

# backend -> "module:function"; every function has the contract of skiprnn.ops.contract
# (one function for both cells, the cell kind its first argument)
_IMPLS = {
    "reference": "skiprnn.ops.naive:skip_rnn_naive",
    "cpu": "skiprnn.ops.cpu_rnn:skip_rnn_cpu",
    "triton": "skiprnn.ops.triton_rnn:skip_rnn_triton",
    "skipping": "skiprnn.ops.skipping:skip_rnn_skipping",  # inference only: skipped steps are free
}


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


_LOADED: dict = {}  # backend -> function | None, filled by _load


def _load(backend: str):
    """The function of ``backend`` (None where unavailable), imported on first use. A plain
    dict cache (not ``lru_cache``): ``torch.compile`` traces this lookup, and :func:`decide`
    (run untraced) has imported the chosen backend before."""
    if backend not in _LOADED:
        fn = None
        if backend in _IMPLS:
            mod, name = _IMPLS[backend].split(":")
            with contextlib.suppress(ImportError, AttributeError):
                fn = getattr(importlib.import_module(mod), name)
        _LOADED[backend] = fn
    return _LOADED[backend]


class BackendChoice(NamedTuple):
    """Which backend a call runs on (``name``) and why (``reason``, one sentence)."""

    name: str
    reason: str


def select(kind: str, backend: str, **options):
    """Return ``(name, function)`` for the requested backend (:func:`decide`, with its keyword
    options); the function is called as ``fn(kind, x, state, ...)`` (``ops.contract``)."""
    name = decide(kind, backend, **options).name
    return name, _load(name)


def reference_only_reason(gate_mode: str, sampled: bool = False, dropout: bool = False) -> str:
    """Why a call can run on the reference only ("" when a fast path can run it): the gate modes
    and training features the fast paths do not have."""
    return ("a random-skip gate" if gate_mode == "random" else
            "a periodic gate" if gate_mode == "periodic" else
            "Bernoulli gate sampling in training" if sampled else
            "dropout between layers in training" if dropout else "")


select_named = _load  # the function of backend ``name`` (one decide returned)


@torch.compiler.assume_constant_result
def decide(kind: str, backend: str, *, device_type: str, num_layers: int, fast_ok: bool,
           grad: bool = True, skip_ok: bool = False, why_not_fast: str = "",
           why_not_triton: str = "") -> BackendChoice:
    """The backend a call runs on, with the reason: the one place the rules live.

    ``fast_ok`` is False when the call needs something only the reference does (several layers,
    Bernoulli sampling, baselines' forced gates, dropout; ``why_not_fast`` says which). 'auto' then
    falls back to the reference; an explicitly requested fast backend raises. Without autograd
    (``grad=False``) and with a deterministic learned gate (``skip_ok``), 'auto' uses the skipping
    inference path, whose skipped steps cost nothing. ``why_not_triton`` (e.g. ``max_skip``,
    which the Triton kernels do not have): 'auto' on CUDA then runs the reference (the CPU path on
    CUDA tensors is a slow generic fallback), and an explicit 'triton' raises.

    Under ``torch.compile`` this runs once, untraced, when the layer is traced, and its answer
    is a constant of the graph (``torch.compiler.assume_constant_result``): a later change of
    ``SKIPRNN_BACKEND`` does not reach an already compiled model (``torch._dynamo.reset()``).
    """
    env = _env(ENV_VAR)
    asked = f"backend={backend!r}"
    if env:
        if env not in BACKENDS:
            raise ValueError(f"{ENV_VAR} must be one of {BACKENDS}, got {env!r}")
        backend, asked = env, f"{ENV_VAR}={env!r} (overrides the layer's backend={backend!r})"
    check_backend(backend)
    if backend == "reference":
        return BackendChoice("reference", f"{asked} asks for the reference")
    if backend == "skipping" and grad:
        raise ValueError("backend 'skipping' is for inference only (skipped steps keep no autograd "
                         "graph): call the layer under torch.no_grad() / torch.inference_mode(), "
                         "or use backend='auto', which picks it there by itself")
    if backend == "skipping" or (backend == "auto" and not grad and skip_ok):
        if _load("skipping") is not None:
            return BackendChoice("skipping", f"{asked}, no autograd and a deterministic learned "
                                 "gate: the skipping engine, whose skipped steps do no work"
                                 f"{_steps(kind, device_type, 'skipping', num_layers)}")
        if backend == "skipping":
            raise RuntimeError("the skipping inference backend is not available")
    slow = why_not_fast or ("" if num_layers == 1 else
                            f"num_layers={num_layers} (the fast paths run one layer)")
    if backend == "auto":
        if device_type == "cuda" and why_not_triton and fast_ok and not slow:
            return BackendChoice("reference", f"{asked} on cuda tensors and the call needs the "
                                 f"reference: {why_not_triton}")
        if not fast_ok or slow:
            return BackendChoice("reference", f"{asked} and the call needs the reference: "
                                 f"{slow or 'a gate mode only the reference runs'}")
        for name in (["triton"] if device_type == "cuda" and triton_available() else []) + ["cpu"]:
            if _load(name) is not None:
                return BackendChoice(name, f"{asked}, one layer, deterministic gate, "
                                     f"{device_type} tensors: the {name} fast path"
                                     f"{_steps(kind, device_type, name)}")
        return BackendChoice("reference", f"{asked}: no fast path is available for "
                             f"{device_type} tensors here")
    if backend == "triton" and why_not_triton:
        raise ValueError(f"backend 'triton' cannot run this call: {why_not_triton}. Use "
                         "backend='auto', 'reference' or 'cpu'.")
    if not fast_ok or num_layers != 1:
        raise ValueError(
            f"backend {backend!r} supports one layer with the deterministic gate; this call needs "
            f"the reference ({slow or 'its gate mode'}). Use backend='auto' or 'reference'.")
    if _load(backend) is None:
        raise RuntimeError(f"backend {backend!r} for Skip {kind.upper()} is not available here")
    return BackendChoice(backend, f"{asked} asks for it and the call is one that it runs")


def _steps(kind: str, device_type: str, name: str, num_layers: int = 1) -> str:
    """How backend ``name`` (the CPU path or the skipping engine) runs a one-layer Skip LSTM's
    steps on the CPU (fused C kernels or not), for the reason; "" for any other call."""
    if name not in ("cpu", "skipping") or kind != "lstm" or device_type != "cpu" or num_layers != 1:
        return ""
    from .cpu_kernels import kernel_status, why_off
    if name == "cpu":
        return f" ({kernel_status()})"
    off = why_off()
    return (" (its loop in the fused C kernels)" if off is None
            else f" (its loop in NumPy and torch ops: {off})")
