"""Where the time goes at a short sequence (the adding shape, B=256 T=50 I=2 H=110) on a GPU.

For cuDNN and the default Triton path of Skip LSTM / Skip GRU it records, forward and
forward+backward:

* ``event_ms``: CUDA-event time per call (what ``bench_gpu_train.py`` reports),
* ``host_ms``: host wall time per call without synchronising (if it is close to ``event_ms`` the
  call is bound by Python / launch overhead, not by the GPU),
* a ``torch.profiler`` table (self CPU time and device time per op) written next to the JSON.

Not a benchmark of record: a diagnostic for the fixed costs of a training step.

    PYTHONPATH=src python benchmarks/profile_gpu.py --out profile_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "src"))

import bench_gpu_train as bg  # noqa: E402


def host_and_event(fn, reps=50):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    host = (time.perf_counter() - t0) * 1e3 / reps
    end.record()
    torch.cuda.synchronize()
    return host, start.elapsed_time(end) / reps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="profile_gpu.json")
    ap.add_argument("--shape", default="adding")
    args = ap.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = True
    shape = next(s for s in bg.SHAPES if s[0] == args.shape)
    _, B, T, I, H = shape
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "shape": shape,
           "rows": []}
    tables = []
    from torch.profiler import ProfilerActivity, profile
    for cell in ("lstm", "gru"):
        case = bg.make_case(cell, B, T, I, H)
        for backend in ("cudnn", "triton-tf32", "infer-tf32"):
            fwd, params = bg.backend_fn(cell, backend, case)
            modes = ("fwd",) if params is None else ("fwd", "fwd+bwd")
            for mode in modes:
                if mode == "fwd":
                    fn = fwd
                else:
                    def fn(fwd=fwd, params=params):
                        out = fwd()
                        torch.autograd.grad(out, params, case["g_out"])
                host, ev = host_and_event(fn)
                row = dict(cell=cell, backend=backend, mode=mode, host_ms=host, event_ms=ev)
                res["rows"].append(row)
                print(row, flush=True)
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    for _ in range(10):
                        fn()
                    torch.cuda.synchronize()
                ka = prof.key_averages()
                tables.append(f"==== {cell} {backend} {mode} (10 calls)\n"
                              + ka.table(sort_by="self_cpu_time_total", row_limit=30)
                              + "\n" + ka.table(sort_by="self_device_time_total", row_limit=15))
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.splitext(args.out)[0] + ".txt", "w") as f:
        f.write("\n\n".join(tables))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
