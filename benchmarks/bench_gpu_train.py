"""Training-speed benchmark on a CUDA GPU: Skip LSTM / Skip GRU fused Triton kernels vs cuDNN.

For the paper's shapes (adding task B=256 T=50 I=2 H=110; sequential MNIST B=256 T=784 I=1
H=110) and a large one (B=64 T=1000 I=64 H=512) it times, in one run on one device:

* ``fwd``     a forward pass with autograd recording (what a training step runs),
* ``fwd+bwd`` forward plus ``torch.autograd.grad`` of the output w.r.t. input and all weights,

for ``nn.LSTM`` / ``nn.GRU`` (cuDNN; PyTorch's default ``cudnn.allow_tf32`` is recorded),
the Triton Skip kernels with ``precision='tf32'`` (``triton-tf32``: the default path, cooperative
kernels auto-selected per shape, see ``skiprnn/ops/coop.py``; ``old-tf32``: the one-program-per-row-
block kernels, ``SKIPRNN_COOP=0``; ``infer-tf32``: the forward-only ``*_triton_infer``), with
``--ieee`` also ``triton-ieee``, and the naive reference (fwd+bwd only, the two smaller shapes, very
few repetitions: it is ~2 orders of magnitude slower). The configurations the auto-selection timed
and picked are printed and stored (``coop_selection``); it times at most ``SKIPRNN_COOP_MAXCAND``
(default here 2) cooperative candidates per shape and direction, plus the old kernels.
Medians over ``--reps`` (>= 20) timed repetitions after warm-up, CUDA events. Prints a table with
ratios to nn.LSTM / nn.GRU (the figures to quote) and writes JSON (device, versions, git commit,
every timing or the error a backend raised) to ``--out``. A failing backend is recorded and the
run goes on.

    PYTHONPATH=src python benchmarks/bench_gpu_train.py --out bench_gpu_train.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))
from skiprnn._env import git_commit  # noqa: E402

SHAPES = [  # (name, B, T, I, H)
    ("mnist", 256, 784, 1, 110),
    ("adding", 256, 50, 2, 110),
    ("large", 64, 1000, 64, 512),
]
REFERENCE_REPS = {"adding": 3, "mnist": 1}  # reference fwd+bwd only here
BACKEND_COLS = ("cudnn", "old-tf32", "triton-tf32", "infer-tf32", "triton-ieee", "reference")
DEVICE = "cuda"  # "cpu" only for --cpu-smoke (checks this script's logic without a GPU)


def time_cuda(fn, reps: int, warmup: int) -> list[float]:
    """Milliseconds of each of ``reps`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    if DEVICE == "cpu":
        out = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
        return out
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        out.append(start.elapsed_time(end))
    return out


def make_case(cell: str, B: int, T: int, I: int, H: int, seed: int = 0):
    """cuDNN module + the same weights as plain tensors for the Skip functions."""
    torch.manual_seed(seed)
    mod = (nn.LSTM if cell == "lstm" else nn.GRU)(I, H).to(DEVICE)
    x = torch.randn(T, B, I, device=DEVICE, requires_grad=True)
    layer = (mod.weight_ih_l0, mod.weight_hh_l0, mod.bias_ih_l0, mod.bias_hh_l0)
    gate_w = (torch.randn(1, H, device=DEVICE) / math.sqrt(H)).requires_grad_(True)
    gate_b = torch.zeros(1, device=DEVICE, requires_grad=True)
    h0 = torch.zeros(1, B, H, device=DEVICE)
    c0 = torch.zeros(1, B, H, device=DEVICE)
    up0 = torch.ones(B, device=DEVICE)
    cum0 = torch.zeros(B, device=DEVICE)
    g_out = torch.randn(T, B, H, device=DEVICE)
    return dict(mod=mod, x=x, layer=layer, gate_w=gate_w, gate_b=gate_b, h0=h0, c0=c0, up0=up0,
                cum0=cum0, g_out=g_out)


def backend_fn(cell: str, backend: str, case: dict):
    """Returns ``forward() -> output`` and the tensors to differentiate."""
    x, layer, gw, gb = case["x"], case["layer"], case["gate_w"], case["gate_b"]
    if backend == "cudnn":
        mod = case["mod"]
        return (lambda: mod(x)[0]), [x, *mod.parameters()]
    from skiprnn.ops.contract import GateOptions
    from skiprnn.ops.naive import skip_rnn_naive as ref
    from skiprnn.ops.triton_rnn import skip_rnn_triton as fast
    from skiprnn.ops.triton_rnn import skip_rnn_triton_infer as inf
    state = (case["h0"], case["c0"]) if cell == "lstm" else (case["h0"],)
    params = [x, *layer, gw, gb]
    if backend == "reference":
        return (lambda: ref(cell, x, state, case["up0"], case["cum0"], [layer], gw, gb).output,
                params)
    kind, precision = backend.split("-")
    opts = GateOptions(precision=precision)
    if kind == "infer":
        return (lambda: inf(cell, x, state, case["up0"], case["cum0"], [layer], gw, gb,
                            opts).output), None

    def fwd():
        prev = os.environ.get("SKIPRNN_COOP")
        if kind == "old":
            os.environ["SKIPRNN_COOP"] = "0"
        try:
            return fast(cell, x, state, case["up0"], case["cum0"], [layer], gw, gb,
                        opts).output
        finally:
            if kind == "old":
                if prev is None:
                    os.environ.pop("SKIPRNN_COOP", None)
                else:
                    os.environ["SKIPRNN_COOP"] = prev
    return fwd, params


def check_vs_old(cell: str, case: dict) -> dict:
    """The default (cooperative, auto-selected) tf32 path against the old kernels, same inputs:
    differing skip decisions, relative error of the outputs where no decision differs, and of the
    gradients (all compiled already by the timings, so this costs only a few launches)."""
    from skiprnn.ops.contract import GateOptions
    from skiprnn.ops.triton_rnn import skip_rnn_triton as fast
    state = (case["h0"], case["c0"]) if cell == "lstm" else (case["h0"],)
    x, layer, gw, gb = case["x"], case["layer"], case["gate_w"], case["gate_b"]
    params = [x, *layer, gw, gb]
    outs, grads = {}, {}
    for name, env in (("old", "0"), ("new", None)):
        prev = os.environ.get("SKIPRNN_COOP")
        if env is not None:
            os.environ["SKIPRNN_COOP"] = env
        try:
            o = fast(cell, x, state, case["up0"], case["cum0"], [layer], gw, gb,
                     GateOptions(precision="tf32"))
            grads[name] = torch.autograd.grad(o.output, params, case["g_out"])
            outs[name] = {"output": o.output.detach(), "updates": o.updates.detach()}
        finally:
            if env is not None:
                if prev is None:
                    os.environ.pop("SKIPRNN_COOP", None)
                else:
                    os.environ["SKIPRNN_COOP"] = prev

    def rel(a, b):
        return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()

    flips = int((outs["new"]["updates"] != outs["old"]["updates"]).sum().item())
    return {"decisions": int(outs["old"]["updates"].numel()), "flips": flips,
            "rel_output": rel(outs["new"]["output"], outs["old"]["output"]),
            "rel_grads": [rel(a, b) for a, b in zip(grads["new"], grads["old"])]}


def run_one(cell, backend, case, mode, reps, warmup):
    fwd, params = backend_fn(cell, backend, case)
    if params is None and mode != "fwd":
        return {"skipped": "forward only"}
    if mode == "fwd":
        fn = fwd
    else:
        def fn():
            out = fwd()
            torch.autograd.grad(out, params, case["g_out"])
    ms = time_cuda(fn, reps, warmup)
    return {"median_ms": statistics.median(ms), "reps": reps, "all_ms": ms}


def main(argv=None):
    global DEVICE, SHAPES
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_gpu_train.json")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cells", default="lstm,gru")
    ap.add_argument("--shapes", default=",".join(s[0] for s in SHAPES))
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--ieee", action="store_true", help="also time precision='ieee'")
    ap.add_argument("--max-cand", type=int, default=2,
                    help="cooperative candidates timed per shape (SKIPRNN_COOP_MAXCAND)")
    ap.add_argument("--budget", type=float, default=85.0,
                    help="seconds; past it the remaining reference timings are skipped")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="tiny shapes on the CPU under TRITON_INTERPRET=1 (tests this script)")
    args = ap.parse_args(argv)
    t_start = time.time()
    os.environ.setdefault("SKIPRNN_COOP_MAXCAND", str(args.max_cand))
    if args.cpu_smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        DEVICE = "cpu"
        SHAPES = [("mnist", 4, 6, 1, 5), ("adding", 4, 5, 2, 5), ("large", 3, 4, 3, 17)]
        args.reps, args.warmup = 2, 1

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "git_commit": git_commit(),
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "reps": args.reps, "warmup": args.warmup}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if DEVICE == "cpu":
        info["device"] = "cpu (smoke test, Triton interpreter)"
    elif not torch.cuda.is_available():
        info["error"] = "no CUDA device"
        with open(args.out, "w") as f:
            json.dump({"info": info, "results": {}}, f, indent=2)
        print("bench_gpu_train: no CUDA device; nothing timed", file=sys.stderr)
        return 1
    else:
        info["device"] = torch.cuda.get_device_name()

    results: dict = {}
    shapes = [s for s in SHAPES if s[0] in args.shapes.split(",")]
    for cell in args.cells.split(","):
        for name, B, T, I, H in shapes:
            key = f"{name} B={B} T={T} I={I} H={H}"
            res = results.setdefault(cell, {}).setdefault(key, {})
            try:
                case = make_case(cell, B, T, I, H)
            except Exception as e:  # pragma: no cover
                res["error"] = repr(e)
                continue
            backends = ["cudnn", "old-tf32", "triton-tf32", "infer-tf32"]
            if args.ieee:
                backends.append("triton-ieee")
            for backend in backends:
                for mode in ("fwd", "fwd+bwd"):
                    if backend.startswith("infer") and mode != "fwd":
                        continue
                    res.setdefault(backend, {})
                    try:
                        res[backend][mode] = run_one(cell, backend, case, mode, args.reps,
                                                     args.warmup)
                    except Exception as e:
                        res[backend][mode] = {"error": f"{type(e).__name__}: {e}"[:2000],
                                              "traceback": traceback.format_exc()[-4000:]}
                    _print_line(cell, key, backend, mode, res)
            if DEVICE == "cuda":
                try:
                    res["check_vs_old"] = check_vs_old(cell, case)
                except Exception as e:
                    res["check_vs_old"] = {"error": f"{type(e).__name__}: {e}"[:2000]}
                print(f"[{cell}] {key:34s} check new vs old (tf32): {res['check_vs_old']}",
                      flush=True)
            if not args.no_reference and name in REFERENCE_REPS:
                if time.time() - t_start > args.budget:
                    res["reference"] = {"fwd+bwd": {"skipped": "time budget"}}
                else:
                    try:
                        res["reference"] = {"fwd+bwd": run_one(cell, "reference", case,
                                                               "fwd+bwd", REFERENCE_REPS[name], 0)}
                    except Exception as e:
                        res["reference"] = {"fwd+bwd": {"error": f"{type(e).__name__}: {e}"}}
                    _print_line(cell, key, "reference", "fwd+bwd", res)
            del case
            if DEVICE == "cuda":
                torch.cuda.empty_cache()

    info["total_s"] = time.time() - t_start
    try:
        from skiprnn.ops import coop
        info["coop_selection"] = [
            {"key": str(k), "choice": coop.cfg_name(c), "timings_ms": t}
            for k, c, t in coop.selection_log()]
        info["coop_choices"] = coop.choices()
    except Exception as e:  # pragma: no cover
        info["coop_selection"] = repr(e)
    print("\ncooperative-kernel selection (BLOCK_B,BLOCK_N,num_warps or old; ms per candidate):")
    for item in info.get("coop_selection", []) if isinstance(info.get("coop_selection"), list) \
            else []:
        print(f"  {item['key']}: {item['choice']}  {item['timings_ms']}")
    _table(results)
    with open(args.out, "w") as f:
        json.dump({"info": info, "results": results}, f, indent=2)
    print(f"\nwrote {args.out} ({info['device']}, torch {info['torch']}, triton {info['triton']}, "
          f"{info['total_s']:.0f} s)")
    return 0


def _ms(res, backend, mode):
    r = res.get(backend, {}).get(mode, {})
    return r.get("median_ms")


def _print_line(cell, key, backend, mode, res):
    r = res[backend][mode]
    val = f"{r['median_ms']:.3f} ms" if "median_ms" in r else r.get("error", r.get("skipped"))
    if backend == "triton-tf32" and "median_ms" in r:
        val += "  " + _picked(cell, key)
    print(f"[{cell}] {key:34s} {backend:12s} {mode:8s} {val}", flush=True)


def _picked(cell, key):
    """The auto-selected kernels for this cell and shape, e.g. ``[fwd=16,16,4 bwd=old]``."""
    try:
        from skiprnn.ops import coop
        dims = dict(kv.split("=") for kv in key.split()[1:])
        sub = f", {dims['B']}, {dims['H']}, 'tf32',"
        got = [f"{k.split(',')[0].strip(chr(40)).strip(chr(39)).split('-')[1]}={v}"
               for k, v in coop.choices().items() if sub in k and f"'{cell}-" in k]
        return "[" + " ".join(got) + "]"
    except Exception as e:  # pragma: no cover
        return f"[{e!r}]"


def _table(results):
    print("\nmedian ms (ratio to cuDNN in brackets)")
    for cell, per_shape in results.items():
        base_name = "nn.LSTM" if cell == "lstm" else "nn.GRU"
        print(f"\n{cell.upper()}  (base: {base_name} cuDNN)")
        hdr = f"{'shape':34s} {'mode':8s} " + " ".join(
            f"{b:>20s}" for b in BACKEND_COLS)
        print(hdr)
        for key, res in per_shape.items():
            for mode in ("fwd", "fwd+bwd"):
                base = _ms(res, "cudnn", mode)
                cells = []
                for b in BACKEND_COLS:
                    v = _ms(res, b, mode)
                    if v is None:
                        cells.append(f"{'-':>20s}")
                    elif base:
                        cells.append(f"{v:10.3f} ({v / base:6.2f}x)")
                    else:
                        cells.append(f"{v:20.3f}")
                print(f"{key:34s} {mode:8s} " + " ".join(cells))


if __name__ == "__main__":
    sys.exit(main())
