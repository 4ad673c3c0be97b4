"""Host-side cost of one Triton fast-path call, measured on the CPU (no GPU needed).

At short sequences (the adding task: B=256, T=50, H=110) a training step of the fused Skip LSTM /
Skip GRU is bound by the host, not by the GPU (see ``profile_gpu.py``): the Python of the autograd
function, the allocations and the PyTorch ops around the two Triton kernels. This script measures
that part without a GPU: it runs the functional fast path under ``TRITON_INTERPRET=1`` with the
Triton kernels replaced by no-op launchers, on tiny CPU tensors (so the arithmetic of the PyTorch
ops is negligible), and reports per call

* ``us``: wall time per call (best of ``--repeats`` loops of ``--iters`` calls),
* ``ops``: PyTorch ops that would each be one kernel launch on a GPU (views excluded),
* ``allocs``: fresh allocations (``empty``-like ops),
* ``triton``: Triton kernel launches,

for forward and forward+backward of the functional fast path (``triton``) and of the
``SkipLSTM`` / ``SkipGRU`` layer on that backend (``layer``: fresh state, gate, output tuple),
next to ``nn.LSTM`` / ``nn.GRU`` (``torch``) on the same CPU. CPU PyTorch
RNNs are not cuDNN (different op structure), so their column is context, not the GPU baseline;
GPU ratios come from ``bench_gpu_train.py`` only.

    python benchmarks/bench_host.py --out results/bench_host_cpu.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import time

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))
from skiprnn._env import git_commit  # noqa: E402

VIEW_OPS = {"view", "t", "select", "slice", "reshape", "_unsafe_view", "as_strided", "unsqueeze",
            "transpose", "expand", "detach", "alias", "squeeze", "permute", "_reshape_alias",
            "split", "split_with_sizes", "unbind", "view_as", "narrow", "chunk"}
ALLOC_OPS = {"empty", "empty_strided", "empty_like", "new_empty"}


class _Stub:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](...)`` counts and returns."""

    calls = 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            _Stub.calls += 1
        return launch


def _stub_kernels() -> None:
    from skiprnn.ops import coop_kernels, rowblock
    for mod in (coop_kernels, rowblock):
        for name in list(vars(mod)):
            if name.endswith("_kernel"):
                setattr(mod, name, _Stub())


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _case(cell: str, B: int, T: int, I: int, H: int):
    torch.manual_seed(0)
    mod = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(I, H)
    x = torch.randn(T, B, I, requires_grad=True)
    layer = (mod.weight_ih_l0, mod.weight_hh_l0, mod.bias_ih_l0, mod.bias_hh_l0)
    gw = (torch.randn(1, H) / H ** 0.5).requires_grad_(True)
    gb = torch.zeros(1, requires_grad=True)
    state = (torch.zeros(1, B, H),) * (2 if cell == "lstm" else 1)
    up0, cum0 = torch.ones(B), torch.zeros(B)
    g_out = torch.randn(T, B, H)
    from skiprnn.ops.contract import GateOptions
    from skiprnn.ops.triton_rnn import skip_rnn_triton as fast
    from skiprnn import SkipGRU, SkipLSTM
    skip = (SkipLSTM if cell == "lstm" else SkipGRU)(I, H, backend="triton")
    runs = {
        "torch": ((lambda: mod(x)[0]), [x, *mod.parameters()]),
        "triton": ((lambda: fast(cell, x, state, up0, cum0, [layer], gw, gb,
                                 GateOptions(precision="ieee")).output),
                   [x, *layer, gw, gb]),
        # the layer as a training loop calls it (fresh state, gate, output tuple)
        "layer": ((lambda: skip(x).output), [x, *skip.parameters()]),
    }
    return runs, g_out


def _time_all(fns: list, iters: int, repeats: int) -> list[float]:
    """Best time per call (us) of each function; the repeats are interleaved across the
    functions, so that a noisy spell of the machine hits all of them alike."""
    for fn in fns:
        for _ in range(max(3, iters // 10)):
            fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            best[i] = min(best[i], (time.perf_counter() - t0) / iters)
    return [b * 1e6 for b in best]


def _count(fn) -> dict:
    _Stub.calls = 0
    with _OpLog() as log:
        fn()
    ops = {k: v for k, v in log.ops.items() if k not in VIEW_OPS}
    allocs = sum(v for k, v in ops.items() if k in ALLOC_OPS)
    return dict(ops=sum(ops.values()) - allocs, allocs=allocs, triton=_Stub.calls,
                op_names=dict(sorted(ops.items())))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="2,2,2,4", help="B,T,I,H (tiny: arithmetic negligible)")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="JSON file to write")
    args = ap.parse_args(argv)
    try:
        B, T, I, H = (int(v) for v in args.shape.split(","))
    except ValueError:
        ap.error(f"--shape must be four integers B,T,I,H, got {args.shape!r}")
    torch.set_num_threads(args.threads)
    _stub_kernels()
    res = dict(shape=dict(B=B, T=T, I=I, H=H), torch=torch.__version__,
               python=platform.python_version(), cpu=platform.processor() or platform.machine(),
               threads=args.threads, git_commit=git_commit(), rows=[])
    print(f"{'cell':5} {'path':7} {'mode':8} {'us/call':>9} {'ops':>4} {'allocs':>6} "
          f"{'triton':>6}")
    cases = []
    for cell in ("lstm", "gru"):
        runs, g_out = _case(cell, B, T, I, H)
        for path, (fwd, params) in runs.items():
            def fwd_bwd(fwd=fwd, params=params, g_out=g_out):
                torch.autograd.grad(fwd(), params, g_out)
            cases += [(cell, path, "fwd", fwd), (cell, path, "fwd+bwd", fwd_bwd)]
    times = _time_all([c[3] for c in cases], args.iters, args.repeats)
    for (cell, path, mode, fn), us in zip(cases, times):
        row = dict(cell=cell, path=path, mode=mode, us=round(us, 1), **_count(fn))
        res["rows"].append(row)
        print(f"{cell:5} {path:7} {mode:8} {us:9.1f} {row['ops']:4d} {row['allocs']:6d} "
              f"{row['triton']:6d}", flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
        print("wrote", args.out)
    return res


if __name__ == "__main__":
    main()
