"""torch.compile (inductor) of a model holding a Skip layer: compile time and step time vs eager.

The model is the adding task's by default (Skip LSTM / Skip GRU, B=256, T=50, I=2, H=110, a
linear head and the budget loss). On the CPU the Skip recurrence is the custom op
``skiprnn::cpu_rnn_forward`` (its backward ``skiprnn::cpu_rnn_backward``), one node of the
compiled graph; other backends run eagerly between compiled graphs. The figures to read are:
the first compiled training step (compilation included; it depends on inductor's on-disk cache,
``TORCHINDUCTOR_CACHE_DIR=$(mktemp -d)`` for a cold one), then the median compiled and eager
step after warm-up, interleaved.

    python benchmarks/compile_time.py --threads 1
    python benchmarks/compile_time.py --threads 1 --shape 256 784 1 110     # the MNIST shape
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import skiprnn


class _Model(torch.nn.Module):
    def __init__(self, cls, inp, hidden):
        super().__init__()
        self.rnn = cls(inp, hidden)
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x, y):
        res = self.rnn(x)
        pred = self.head(res.output[-1]).squeeze(-1)
        return ((pred - y) ** 2).mean() + skiprnn.budget_loss(res.updates, 1e-5)


def _step(fn, x, y, params):
    loss = fn(x, y)
    loss.backward()
    for p in params:
        p.grad = None
    return loss


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--shape", type=int, nargs=4, default=[256, 50, 2, 110], metavar=("B", "T", "I", "H"))
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    B, T, I, H = args.shape
    rows = []
    for cls in (skiprnn.SkipLSTM, skiprnn.SkipGRU):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = _Model(cls, I, H)
        params = list(model.parameters())
        x, y = torch.randn(T, B, I), torch.randn(B)
        compiled = torch.compile(model)
        t0 = time.perf_counter()
        _step(compiled, x, y, params)
        first = time.perf_counter() - t0
        for fn in (model, compiled):               # warm-up
            _step(fn, x, y, params)
        times = {"eager": [], "compiled": []}
        for _ in range(args.reps):                 # interleaved repetitions
            for name, fn in (("eager", model), ("compiled", compiled)):
                t0 = time.perf_counter()
                _step(fn, x, y, params)
                times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"model": cls.__name__, "first_compiled_step_s": first,
                     "eager_step_s": med["eager"], "compiled_step_s": med["compiled"]})
        print(f"{cls.__name__} (B={B}, T={T}, I={I}, H={H}, threads {torch.get_num_threads()}): "
              f"first compiled step {first:.1f} s (compilation included); step eager "
              f"{med['eager'] * 1e3:.1f} ms, compiled {med['compiled'] * 1e3:.1f} ms", flush=True)
    if args.out:
        info = {"threads": torch.get_num_threads(), "shape": args.shape, "torch": torch.__version__,
                "load_avg": os.getloadavg(), "rows": rows}
        with open(args.out, "w") as f:
            json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()
