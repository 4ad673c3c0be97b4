"""Where a training call of the CPU fast path spends its time: per-call fixed cost vs per-step
cost of each part, beside nn.LSTM / nn.GRU, one thread.

Every figure is the thread's CPU time (``time.thread_time``), the minimum over ``--reps``
repetitions, so that time spent waiting for the core on a shared machine does not count (cache
and memory contention still do: compare rows of one run, not runs). Each part is measured at
two sequence lengths ``T1 < T2``; the table gives the per-step cost ``(t(T2) - t(T1)) /
(T2 - T1)`` and the fixed cost ``t(T1) - T1 · per step``.

Parts ("-" rows are knock-outs: the same call with one piece replaced by a no-op, for timing
only, their results are wrong):

* ``nn fwd+bwd``: nn.LSTM / nn.GRU forward and ``backward()`` of ``output.sum()``;
* ``layer fwd+bwd``: SkipLSTM / SkipGRU, ``output.sum() + updates.sum()`` (bench_train.py's loss);
* ``op fwd+bwd``: ``skip_rnn_cpu`` with autograd (the custom ops and their autograd glue);
* ``forward (no grad)``, ``forward (train)``, ``backward``: the Python bodies of the ops;
* ``fwd cell steps``, ``fwd cell flush``, ``fwd gate flush``, ``bwd cell steps``,
  ``bwd chunk GEMMs``: what removing that piece saves; the gate's per-step ops and the loops'
  Python are what remains of ``forward (no grad)`` / ``backward``.

    python benchmarks/profile_cpu_train.py                       # small shape, both cells
    taskset -c 1 python benchmarks/profile_cpu_train.py --shape 256,2,110 --t 10 50
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from skiprnn import SkipGRU, SkipLSTM  # noqa: E402
from skiprnn.ops import cpu_rnn  # noqa: E402


def cpu_ms(fn, reps):
    """Minimum thread CPU time of ``fn()`` over ``reps`` runs (after one warm-up), in ms."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return best * 1e3


@contextmanager
def knocked_out(cell, piece):
    """Replace one piece of the CPU path by a no-op (timing only)."""
    fwd_ops, bwd_ops, gate_flush = cell.forward_ops, cell.backward_ops, cpu_rnn._gate_flush

    def fwd(fw):
        projected, step, flush = fwd_ops(fw)
        if piece == "fwd cell steps":
            step = lambda j: None  # noqa: E731
        if piece == "fwd cell flush" and flush is not None:
            flush = lambda kk, t0, n: None  # noqa: E731
        return projected, step, flush

    def bwd(bw, **kw):
        step, chunk, grads = bwd_ops(bw, **kw)
        if piece == "bwd cell steps":
            step = lambda j, t, cur: None  # noqa: E731
        if piece == "bwd chunk GEMMs":
            chunk = lambda dgp, t0, n: None  # noqa: E731
        return step, chunk, grads

    cell.forward_ops, cell.backward_ops = fwd, bwd
    if piece == "fwd gate flush":
        cpu_rnn._gate_flush = lambda *a: None
    try:
        yield
    finally:
        cell.forward_ops, cell.backward_ops, cpu_rnn._gate_flush = fwd_ops, bwd_ops, gate_flush


def measure(kind, T, B, I, H, reps):
    """``{part: ms}`` at one sequence length."""
    torch.manual_seed(0)
    rnn = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(I, H)
    layer = (SkipLSTM if kind == "lstm" else SkipGRU)(I, H)
    layer.load_state_dict(rnn.state_dict(), strict=False)
    gw = torch.nn.Parameter(torch.randn(1, H) / H ** 0.5)
    gb = torch.nn.Parameter(torch.ones(1))
    x = torch.randn(T, B, I, requires_grad=True)
    z = torch.zeros(1, B, H)
    c0 = z if kind == "lstm" else None
    up, cum = torch.ones(B), torch.zeros(B)
    weights = [rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0]
    plain = [w.detach() for w in weights]
    cell = cpu_rnn._cell(kind)

    def nn_step():
        rnn(x)[0].sum().backward()

    def layer_step():
        out = layer(x)
        (out.output.sum() + out.updates.sum()).backward()

    def op_step():
        out = cpu_rnn.skip_rnn_cpu(kind, x, (z, z) if c0 is not None else (z,), up, cum,
                                   [weights], gw, gb)
        (out.output.sum() + out.updates.sum()).backward()

    def forward(train):
        return cpu_rnn._forward(cell, x.detach(), z, c0, up, cum, *plain, gw.detach(),
                                gb.detach(), None, 0.5, train, None)

    res, (_, kk, cc, extra) = forward(True)
    grads_in = [torch.ones(T, B, H), torch.zeros(1, B, H),
                torch.zeros(1, B, H) if c0 is not None else None, torch.zeros(B),
                torch.zeros(B), torch.ones(T, B)]

    def backward():
        cpu_rnn._backward(cell, x.detach(), z, plain[0], plain[1], (True, True), gw.detach(),
                          None, res[0], kk, cc, extra, *grads_in)

    r = {"nn fwd+bwd": cpu_ms(nn_step, reps), "layer fwd+bwd": cpu_ms(layer_step, reps),
         "op fwd+bwd": cpu_ms(op_step, reps),
         "forward (no grad)": cpu_ms(lambda: forward(False), reps),
         "forward (train)": cpu_ms(lambda: forward(True), reps),
         "backward": cpu_ms(backward, reps)}
    for piece, base in (("fwd cell steps", False), ("fwd cell flush", True),
                        ("fwd gate flush", True), ("bwd cell steps", None),
                        ("bwd chunk GEMMs", None)):
        with knocked_out(cell, piece):
            fn = backward if base is None else (lambda b=base: forward(b))
            ref = r["backward" if base is None else "forward (train)" if base
                    else "forward (no grad)"]
            r["- " + piece] = ref - cpu_ms(fn, reps)
    return r


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="64,3,64", help="B,I,H (default: 64,3,64)")
    p.add_argument("--t", type=int, nargs=2, default=(16, 112), metavar=("T1", "T2"))
    p.add_argument("--cells", default="lstm,gru")
    p.add_argument("--reps", type=int, default=15)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    B, I, H = (int(v) for v in args.shape.split(","))
    T1, T2 = args.t
    print(f"B={B} I={I} H={H}, T {T1} -> {T2}, 1 thread, thread CPU time (min of {args.reps}); "
          f"load {os.getloadavg()}")
    for kind in args.cells.split(","):
        a, b = measure(kind, T1, B, I, H, args.reps), measure(kind, T2, B, I, H, args.reps)
        nn_step = (b["nn fwd+bwd"] - a["nn fwd+bwd"]) / (T2 - T1) * 1e3
        print(f"\n| {kind} | fixed (ms) | per step (µs) | per step / nn's |\n|---|---:|---:|---:|")
        for k in a:
            step = (b[k] - a[k]) / (T2 - T1) * 1e3
            print(f"| {k} | {a[k] - T1 * step / 1e3:.2f} | {step:.1f} | {step / nn_step:.2f} |")
    print(f"\nload {os.getloadavg()}")


if __name__ == "__main__":
    main()
