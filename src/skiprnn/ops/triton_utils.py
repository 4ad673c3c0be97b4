"""Shared pieces of the Triton fast paths (Skip LSTM / Skip GRU): device math, tile heuristics,
precision names and debug poisoning.

Importing this module never compiles anything, and it imports without Triton installed
(``HAS_TRITON`` is then False and the kernels are not defined). The kernels only use long-standing
``tl`` APIs so that they compile under Triton 3.0 ... 3.9.

Environment knobs (read at call time):

* ``SKIPRNN_TRITON_POISON=1``: fresh kernel outputs and scratch buffers are filled with NaN
  instead of left uninitialised, so an element a kernel forgets to write fails a test at once.
* ``SKIPRNN_TRITON_PRECISION=ieee|tf32``: overrides the default ``precision``.
* ``SKIPRNN_TRITON_TILES=BLOCK_B,BLOCK_N,BLOCK_K[,num_warps]``: overrides the tile heuristic
  (tests use it to exercise the tiled loops at small H; also handy for tuning on a GPU).
"""

from __future__ import annotations

import math

import torch

from .._env import env as _env

try:  # pragma: no cover - exercised implicitly
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover
    HAS_TRITON = False

PRECISIONS = ("ieee", "tf32")
POISON_ENV = "SKIPRNN_TRITON_POISON"
PRECISION_ENV = "SKIPRNN_TRITON_PRECISION"
TILES_ENV = "SKIPRNN_TRITON_TILES"


def require_triton() -> None:
    if not HAS_TRITON:
        raise RuntimeError("the Triton backend needs the `triton` package (pip install triton)")


def interpreting() -> bool:
    return _env("TRITON_INTERPRET", "0") not in ("", "0")


def check_device(t: torch.Tensor) -> None:
    if t.device.type != "cuda" and not interpreting():
        raise RuntimeError(
            f"the Triton backend runs on CUDA tensors (got {t.device}); on CPU it needs "
            "TRITON_INTERPRET=1 set before triton is imported")


def resolve_precision(precision: str | None, dtype: torch.dtype) -> str:
    """The ``tl.dot`` input precision.

    'ieee' is exact fp32 (FMA path); 'tf32' uses tensor cores with 10-bit mantissas (as cuDNN does
    for RNNs under PyTorch's default ``torch.backends.cudnn.allow_tf32 = True``). The default is
    'tf32' on CUDA for fp32/bf16/fp16 inputs, 'ieee' otherwise (float64, the interpreter).
    Float64 inputs always use 'ieee'.
    """
    if precision is None:
        precision = _env(PRECISION_ENV) or None
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if dtype == torch.float64 or (precision is None and interpreting()):
        return "ieee"
    return precision or "tf32"


def buffers(like: torch.Tensor):
    """``new(shape)``: a ``torch.empty`` like ``like`` (device, dtype), or NaN-filled when
    ``SKIPRNN_TRITON_POISON=1`` (debugging, tests); a launcher that makes a dozen buffers reads
    the poison switch once."""
    dtype, device = like.dtype, like.device
    if _env(POISON_ENV, "0") not in ("", "0"):
        return lambda shape: torch.full(shape, float("nan"), dtype=dtype, device=device)
    return lambda shape: torch.empty(shape, dtype=dtype, device=device)


def ptr_or(t: torch.Tensor | None, alt: torch.Tensor) -> torch.Tensor:
    """``t``, or ``alt`` where ``t`` is None: an absent tensor argument of a kernel (its switch
    off) gets any valid pointer, never read or written."""
    return alt if t is None else t


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Kernels run in fp32 (fp64 for fp64 inputs); bf16/fp16 are upcast outside the kernel."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def tile_config(H: int, B: int) -> dict:
    """Heuristic tiles for the recurrent kernels.

    BLOCK_B rows per program (>= 16, the tl.dot minimum); the per-step ``h · W_hh^T`` is tiled
    over BLOCK_N output units and BLOCK_K input units so that H up to 512 (and beyond) fits.
    """
    env = _env(TILES_ENV)
    if env:
        bb, bn, bk, *nw = (int(v) for v in env.split(","))
        cfg = dict(BLOCK_B=bb, BLOCK_N=bn, BLOCK_K=bk, num_warps=nw[0] if nw else 4)
        for k in ("BLOCK_B", "BLOCK_N", "BLOCK_K"):
            if cfg[k] < 16 or cfg[k] & (cfg[k] - 1):
                raise ValueError(f"{TILES_ENV}: {k} must be a power of two >= 16, got {cfg[k]}")
        return cfg
    HP = max(16, next_pow2(H))
    return dict(BLOCK_B=16, BLOCK_N=min(HP, 64), BLOCK_K=min(HP, 32), num_warps=4)


if HAS_TRITON:

    @triton.jit
    def mma(a, b, acc, PRECISION: tl.constexpr):
        """acc + a @ b in acc's dtype (fp32 or fp64); PRECISION 'ieee' | 'tf32'."""
        return tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc.dtype)

    @triton.jit
    def sigmoid(x):
        """Overflow-free logistic function (works for fp32 and fp64)."""
        e = tl.exp(-tl.abs(x))
        return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))

    @triton.jit
    def tanh(x):
        """Overflow-free tanh, accurate to a few ulps of 1 in absolute terms."""
        e = tl.exp(-2.0 * tl.abs(x))
        t = (1.0 - e) / (1.0 + e)
        return tl.where(x >= 0, t, -t)


def contiguous_as(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``t`` in ``dtype`` and contiguous (``None`` stays ``None``); the common case, already both,
    returns ``t`` itself without a dispatch."""
    if t is None or (t.dtype == dtype and t.is_contiguous()):
        return t
    return t.to(dtype).contiguous()


def grads_or_zeros(grads, shapes, dtype: torch.dtype, device, scratch: int = 0):
    """Incoming gradients for a backward kernel (autograd with ``set_materialize_grads(False)``):
    each ``None`` becomes a view of ONE zeroed buffer (one launch instead of a zero tensor per
    output), the others are cast to ``dtype`` and made contiguous. ``shapes``: one per gradient.

    Returns ``(grads, spare)``: with ``scratch > 0`` and some gradient missing, ``spare`` is a
    zeroed int32 view of at least ``scratch`` elements carved from the same buffer (the barrier
    counters of a cooperative kernel, so that they cost no launch of their own), else None."""
    sizes = [math.prod(s) for s in shapes]
    missing = [n for g, n in zip(grads, sizes) if g is None]
    zero = spare = None
    if missing:
        off = -(-scratch // 32) * 32  # the gradients' views stay 128-byte aligned
        zero = torch.zeros(off + max(missing), dtype=dtype, device=device)
        if scratch:
            spare = zero[:off].view(torch.int32)
            zero = zero[off:]
    out = [zero[:n].view(s) if g is None else g.to(dtype).contiguous()
           for g, n, s in zip(grads, sizes, shapes)]
    return out, spare
