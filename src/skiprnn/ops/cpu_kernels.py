"""Fused C kernels of the CPU paths (``csrc/lstm_step.c``), built at first use.

* The Skip LSTM's training time loop (``cpu_rnn``): at small shapes it was bound by the number of
  aten ops per step (~15 small pointwise ops around each GEMM, ~5–7 µs each), not by arithmetic;
  one C call per chunk of 16 steps does the same work, calling torch's own BLAS for the per-step
  GEMMs (``results/train_small_shape_profile.md``). With two or more torch threads, at least 16
  hidden units a thread and B·H ≥ 4096 (``chunk_threads``), each step is split by hidden units
  over them (their rows of the input projection and of the per-step products in a kernel of the
  file — AVX-512 for float32 —, one barrier per step) and each thread adds its rows of dW_hh;
  the input-side gradients stay torch ops.
* The batch-size-1 skipping engine (``skipping.run_single``): the W_hh · h product with its rows
  split over the torch threads (each core keeps its rows in its L2), the cell and Δũ in one pass;
  and the loop over the steps around it (ũ replayed on skipped steps, outputs indexed), one call
  per block of input projections instead of ~25 µs of Python per update.
* The batched skipping engine for a one-layer LSTM (``waves.run_waves``): the whole sequence in
  waves in one call (the GEMM through torch's BLAS, the cell, the gate replay and the outputs in
  C, the columns split over the threads).

The library is compiled with the system C compiler (``CC``, else ``cc``) on first use, for this
CPU (``-march=native``; vector ``exp`` / ``tanh`` from glibc's libmvec), into
``$SKIPRNN_CACHE_DIR`` (default ``~/.cache/skiprnn``) under a name that hashes the source, the
flags and the CPU model, then loaded with :mod:`ctypes` (≈ 1 s, once per machine). If there is
no compiler, the build fails, or ``SKIPRNN_CPU_KERNELS=python`` is set, :func:`load` returns
``None`` and the CPU path runs its per-step torch ops instead (the same maths; results equal to
rounding). ``SKIPRNN_CPU_KERNELS=c`` makes a failed build an error instead of a fallback.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
import threading
from typing import NamedTuple

import torch

from .._env import env

__all__ = ["load", "kernel_status", "why_off", "Kernels", "FwdArgs", "BwdArgs", "SingleArgs",
           "run_args", "waves_args"]

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "lstm_step.c")
# IEEE arithmetic (no -ffast-math: see lstm_step.c); no errno / traps so that the loops with
# exp and tanh vectorise (libmvec)
_COMPILE = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp", "-fPIC"]
if platform.machine() in ("x86_64", "AMD64"):
    _COMPILE.append("-mprefer-vector-width=512")  # AVX-512 where -march=native has it
# OpenMP: GNU's libgomp, the runtime torch's CPU build has loaded already (one thread pool)
_LINK = ["-shared", "-fopenmp", "-lmvec", "-lm"]
_lock = threading.Lock()
_state: dict = {}

_P, _I, _D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith(("model name", "flags")):
                return line
    return platform.processor()


def _build(cc: str) -> str:
    """Compile the library (if this source, compiler and CPU have none yet); its path."""
    with open(_SOURCE, "rb") as f:
        src = f.read()
    key = hashlib.sha256(b"\0".join([src, " ".join(_COMPILE + _LINK).encode(), cc.encode(),
                                     _cpu_model().encode()])).hexdigest()[:16]
    cache = env("SKIPRNN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "skiprnn")
    path = os.path.join(cache, f"lstm_step-{key}.so")
    if os.path.exists(path):
        return path
    os.makedirs(cache, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        objs = []
        for name, extra in (("f32", []), ("f64", ["-DSKIPRNN_DOUBLE"])):
            obj = os.path.join(tmp, f"{name}.o")
            subprocess.run([cc, *_COMPILE, *extra, "-c", _SOURCE, "-o", obj], check=True,
                           capture_output=True, text=True, timeout=120)
            objs.append(obj)
        out = os.path.join(tmp, "lib.so")
        subprocess.run([cc, *objs, "-o", out, *_LINK], check=True, capture_output=True,
                       text=True, timeout=120)
        os.replace(out, path)  # atomic: a concurrent builder sees the whole file or none
    for old in os.listdir(cache):  # builds of other sources (a process using one keeps its map)
        if old.startswith("lstm_step-") and old.endswith(".so") and old != os.path.basename(path):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(cache, old))
    return path


# the layer's floating-point type in the layouts below (c_float for float32, c_double for float64)
_REAL = "REAL"
_LAYOUTS = {  # pointers are addresses of the call's buffers
    "lstm_fwd_args": [("H", _I), ("B", _I), ("A", _P), ("ST", _P), ("CAND", _P), ("WTC", _P),
                      ("WSC", _P), ("thr", _P), ("thr_t", _I), ("thr_b", _I), ("mask", _P),
                      ("gw", _P), ("gb", _D), ("floor", _D), ("has_floor", _I),
                      ("scratch", _P), ("Hh", _P), ("SC", _P), ("KK", _P), ("CC", _P),
                      ("W", _I), ("CO", _I), ("KZ", _I), ("U", _I), ("C2", _I), ("PU", _I),
                      ("M", _I), ("Wh", _P), ("gemm", _P), ("threads", _I), ("x", _P),
                      ("Wi", _P), ("bias", _P), ("I", _I)],
    "lstm_bwd_args": [("H", _I), ("B", _I), ("C", _I), ("W", _I), ("S", _I), ("CO", _I),
                      ("KZ", _I), ("U", _I), ("C2", _I), ("PU", _I), ("M", _I), ("KK", _P),
                      ("gg", _P), ("S0", _P), ("S1", _P), ("DGP", _P), ("WGO", _P),
                      ("DZ", _P), ("gw", _P), ("scratch", _P), ("dcp", _P), ("masked", _I),
                      ("WhT", _P), ("gemm", _P), ("threads", _I), ("dW", _P), ("Hh", _P),
                      ("h0", _P)],
    # batch size 1, no autograd: the update's buffers
    "single_args": [("H", _I), ("threads", _I), ("flip", _I), ("W", _P), ("h", _P), ("c", _P),
                    ("a", _P), ("gw", _P), ("gb", _D), ("WT", _P)],
    "run_args": [("steps", _P), ("k", _I), ("n_steps", _I), ("cur", _I), ("block", _P),
                 ("b_start", _I), ("b_stride", _I), ("b_last", _I), ("row_bytes", _I),
                 ("p", _P), ("u", _P), ("idx", _P), ("hist", _P), ("reads", _P),
                 ("n_reads", _I), ("has_floor", _I), ("up", _REAL), ("cum", _REAL),
                 ("thr", _REAL), ("floor", _REAL)],
    "waves_args": [("T", _I), ("B", _I), ("I", _I), ("H", _I), ("threads", _I), ("x", _P),
                   ("Wt", _P), ("gw", _P), ("gb", _D), ("times", _P), ("n_valid", _P),
                   ("valid", _P), ("up", _P), ("cum", _P), ("h", _P), ("c", _P),
                   ("out", _P), ("probs", _P), ("upd", _P), ("hist", _P), ("src", _P),
                   ("S", _P), ("G", _P), ("live", _P), ("at", _P), ("cur", _P), ("gemm", _P),
                   ("has_floor", _I), ("thr", _REAL), ("floor", _REAL), ("waves", _I)],
}


@functools.lru_cache(maxsize=None)
def _struct(name: str, dtype: torch.dtype) -> type:
    """The ctypes structure ``name`` of ``lstm_step.c`` (``_LAYOUTS``) for ``dtype``."""
    real = ctypes.c_float if dtype == torch.float32 else ctypes.c_double
    fields = [(f, real if t is _REAL else t) for f, t in _LAYOUTS[name]]
    return type(name, (ctypes.Structure,), {"_fields_": fields})


#: ``run_args`` / ``waves_args`` of ``lstm_step.c`` for a dtype (their ũ fields of its type)
run_args = functools.partial(_struct, "run_args")
waves_args = functools.partial(_struct, "waves_args")
#: the structures without a field of the layer's type
FwdArgs, BwdArgs, SingleArgs = (_struct(name, torch.float64)
                                for name in ("lstm_fwd_args", "lstm_bwd_args", "single_args"))


def _gemms() -> dict:
    """Addresses of the BLAS ``sgemm_`` / ``dgemm_`` torch itself uses (its MKL exports them
    from ``libtorch_cpu``); empty where this torch build has none (the chunk loops then stay in
    Python around torch's ``addmm``)."""
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        return {torch.float32: ctypes.cast(lib.sgemm_, _P).value,
                torch.float64: ctypes.cast(lib.dgemm_, _P).value}
    except (OSError, AttributeError):
        return {}


#: Kernels field -> (C function, without its ``_f32`` / ``_f64`` suffix; argtypes; restype)
_SIGNATURES = {
    "fwd_step": ("lstm_fwd_step", [_P, _I, _I], None),
    "bwd_step": ("lstm_bwd_step", [_P, _I, _I, _I, _I], None),
    "fwd_chunk": ("lstm_fwd_chunk", [_P, _I, _I], None),
    "bwd_chunk": ("lstm_bwd_chunk", [_P, _I, _I, _I], _I),
    "single_run": ("lstm_single_run", [_P, _P], _I),
    "waves": ("lstm_waves", [_P], _I),
    "chunk_threads": ("chunk_threads", [_I, _I, _I], _I),
    "single_wt_rows": ("single_wt_rows", [_I], _I),
}


def _open(path: str) -> dict:
    lib, gemms, fns = ctypes.CDLL(path), _gemms(), {}
    for dtype, suf in ((torch.float32, "f32"), (torch.float64, "f64")):
        named = {}
        for field, (cname, argtypes, restype) in _SIGNATURES.items():
            fn = named[field] = getattr(lib, f"{cname}_{suf}")
            fn.argtypes, fn.restype = argtypes, restype
        fns[dtype] = Kernels(gemm=gemms.get(dtype), **named)
    return fns


class Kernels(NamedTuple):
    """One dtype's C functions (ctypes). ``fwd_chunk`` / ``bwd_chunk`` run a chunk's steps
    with their GEMMs in C and need ``gemm`` (a BLAS address; None: call the steps from Python)."""
    fwd_step: object
    bwd_step: object
    fwd_chunk: object
    bwd_chunk: object
    gemm: int | None
    single_run: object     # batch-size-1 steps up to the end of a projection block (run_single)
    waves: object          # a one-layer batch's whole sequence (waves.run_waves; needs gemm)
    chunk_threads: object  # (threads, H, B) -> the threads a chunk call splits its steps over
    single_wt_rows: object  # H -> the row length of the transposed W_hh single_run reads


def load():
    """``{dtype: Kernels}``, or ``None`` when the C kernels are off or could not be built (see
    the module docstring)."""
    mode = env("SKIPRNN_CPU_KERNELS", "auto")
    if mode == "python":
        return None
    if mode not in ("auto", "c"):
        raise ValueError(f"SKIPRNN_CPU_KERNELS must be 'auto', 'c' or 'python', not {mode!r}")
    with _lock:
        if "fns" not in _state:
            try:
                _state["fns"], _state["error"] = _open(_build(env("CC") or "cc")), None
            except (OSError, subprocess.SubprocessError, AttributeError) as e:
                detail = getattr(e, "stderr", "") or ""
                _state["fns"], _state["error"] = None, f"{type(e).__name__}: {e} {detail}".strip()
    if _state["fns"] is None and mode == "c":
        raise RuntimeError(f"SKIPRNN_CPU_KERNELS=c but the C kernels could not be built: "
                           f"{_state['error']}")
    return _state["fns"]


def why_off() -> str | None:
    """Why the C kernels are not in use (None: they are)."""
    if env("SKIPRNN_CPU_KERNELS", "auto") == "python":
        return "SKIPRNN_CPU_KERNELS=python"
    return None if load() is not None else f"the C kernels did not build: {_state['error']}"


def kernel_status() -> str:
    """One line: whether the training loop's fused C kernels are in use, and why not."""
    off = why_off()
    return "fused C kernels" if off is None else f"per-step torch ops ({off})"
