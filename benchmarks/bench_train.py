"""Training-speed benchmark of the Skip RNN recurrence: nn.LSTM / nn.GRU vs the naive reference,
the CPU fast path and (on CUDA) the Triton backend, in one run on one device.

For every shape (B, T, I, H) and cell it times, after warm-up, the median of ``--reps``
repetitions of

* ``fwd``: a forward pass under ``torch.no_grad()`` (inference), and
* ``fwd+bwd``: a forward pass and ``backward()`` of ``output.sum()`` (plus ``updates.sum()`` for
  the Skip RNN, so the gate's path is differentiated too): one training step without optimiser.

Repetitions are interleaved across implementations (rep 1 of every implementation, then rep 2,
...) so that load from other processes hits them alike. Ratios to nn.LSTM / nn.GRU are the
figures to quote; absolute times move from machine to machine. Writes JSON (device, CPU model,
threads, library versions, git commit, load average, every timing) to ``--out``.

    python benchmarks/bench_train.py                      # CPU, all shapes
    python benchmarks/bench_train.py --device cuda        # adds (256, 784, 1, 110) and Triton
    python benchmarks/bench_train.py --quick              # smoke run (T capped, 2 reps)
    python benchmarks/bench_train.py --threads 1 2        # one table, a row per thread count
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from skiprnn._env import git_commit  # noqa: E402
from skiprnn.ops.cpu_rnn import skip_rnn_cpu  # noqa: E402
from skiprnn.ops.naive import skip_rnn_naive  # noqa: E402

SHAPES = [(64, 100, 3, 64), (256, 50, 2, 110), (64, 784, 1, 110), (64, 1000, 64, 512)]
CUDA_SHAPES = [(256, 784, 1, 110)]


def triton_fn():
    """The Triton backend (both cells), if importable here, else None."""
    try:
        from skiprnn.ops.triton_rnn import skip_rnn_triton
    except Exception as exc:  # noqa: BLE001 - report and go on without it
        print(f"[bench] triton: not available ({type(exc).__name__}: {exc})")
        return None
    return skip_rnn_triton


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_case(cell, B, T, I, H, device, dtype, seed=0, gate_bias=1.0):
    """An nn.LSTM/nn.GRU, its parameters as a Skip RNN layer, an input and initial states."""
    g = torch.Generator().manual_seed(seed)
    rnn = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(I, H).to(device, dtype)
    gate_w = torch.nn.Parameter((torch.randn(1, H, generator=g) / H ** 0.5).to(device, dtype))
    gate_b = torch.nn.Parameter(  # paper init: 1.0
        torch.full((1,), gate_bias, device=device, dtype=dtype))
    x = torch.randn(T, B, I, generator=g).to(device, dtype).requires_grad_()
    state = dict(h0=torch.zeros(1, B, H, device=device, dtype=dtype),
                 c0=torch.zeros(1, B, H, device=device, dtype=dtype),
                 up0=torch.ones(B, device=device, dtype=dtype),
                 cum0=torch.zeros(B, device=device, dtype=dtype))
    layers = [(rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)]
    return rnn, layers, gate_w, gate_b, x, state


def runners(cell, case, impls):
    """name -> (forward fn returning the tensors to sum for the loss)."""
    rnn, layers, gw, gb, x, s = case
    out = {}

    def baseline():
        y, _ = rnn(x)
        return (y,)

    out["nn." + cell.upper()] = baseline
    state = (s["h0"], s["c0"]) if cell == "lstm" else (s["h0"],)
    for name, fn in impls.items():
        def run(fn=fn):
            r = fn(cell, x, state, s["up0"], s["cum0"], layers, gw, gb)
            return (r.output, r.updates)
        out[name] = run
    return out


def update_pattern(cell, case):
    """``update_rate`` (mean u) and ``held_steps`` (share of steps where no sequence of the
    batch updates, whose backward work the CPU path skips) of the case, from the reference."""
    rnn, layers, gw, gb, x, s = case
    state = (s["h0"], s["c0"]) if cell == "lstm" else (s["h0"],)
    with torch.no_grad():
        u = skip_rnn_naive(cell, x, state, s["up0"], s["cum0"], layers, gw, gb).updates
    return dict(update_rate=round(u.mean().item(), 3),
                held_steps=round((u.sum(1) == 0).float().mean().item(), 3))


def timed(fn, mode, sync):
    if mode == "fwd":
        with torch.no_grad():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            return time.perf_counter() - t0
    sync()  # (gradients accumulate in .grad across repetitions: harmless for timing)
    t0 = time.perf_counter()
    outs = fn()
    loss = sum(o.sum() for o in outs)
    loss.backward()
    sync()
    return time.perf_counter() - t0


def bench_shape(cell, shape, impls, args, device, dtype, sync):
    B, T, I, H = shape
    case = make_case(cell, B, T, I, H, device, dtype, gate_bias=args.gate_bias)
    run = runners(cell, case, impls)
    size = B * T * H
    names = list(run)
    if args.skip_reference_above is not None and size > args.skip_reference_above:
        names = [n for n in names if n != "reference"]
    times = {n: {"fwd": [], "fwd+bwd": []} for n in names}
    for mode in ("fwd", "fwd+bwd"):
        for n in names:  # warm-up
            for _ in range(args.warmup):
                timed(run[n], mode, sync)
        for rep in range(args.reps):
            order = names[rep % len(names):] + names[:rep % len(names)]
            for n in order:
                times[n][mode].append(timed(run[n], mode, sync) * 1e3)
        gc.collect()
    rows = []
    base = "nn." + cell.upper()
    pattern = update_pattern(cell, case)
    for n in names:
        row = dict(cell=cell, B=B, T=T, I=I, H=H, impl=n, threads=torch.get_num_threads(),
                   **pattern)
        for mode in ("fwd", "fwd+bwd"):
            row[f"{mode}_ms"] = statistics.median(times[n][mode])
            row[f"{mode}_all_ms"] = [round(v, 3) for v in times[n][mode]]
        rows.append(row)
    for row in rows:
        ref = next(r for r in rows if r["impl"] == base)
        for mode in ("fwd", "fwd+bwd"):
            row[f"{mode}_ratio"] = row[f"{mode}_ms"] / ref[f"{mode}_ms"]
    return rows


def table(rows):
    """Markdown table: medians and their ratio to nn.LSTM / nn.GRU, plus the ratio of the best
    (minimum) repetitions, which is less sensitive to other processes on a shared machine."""
    lines = ["| cell | B | T | I | H | threads | impl | fwd ms | fwd / nn | fwd+bwd ms "
             "| fwd+bwd / nn | fwd+bwd / nn (min) | updates (held steps) |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    key = ("cell", "B", "T", "I", "H", "threads")
    for r in rows:
        base = next(q for q in rows if q["impl"].startswith("nn.")
                    and all(q.get(k) == r.get(k) for k in key))
        best = min(r["fwd+bwd_all_ms"]) / min(base["fwd+bwd_all_ms"])
        lines.append(f"| {r['cell']} | {r['B']} | {r['T']} | {r['I']} | {r['H']} | "
                     f"{r.get('threads', '')} | {r['impl']} | "
                     f"{r['fwd_ms']:.1f} | {r['fwd_ratio']:.2f}x | {r['fwd+bwd_ms']:.1f} | "
                     f"{r['fwd+bwd_ratio']:.2f}x | {best:.2f}x | {_pattern(r)} |")
    return "\n".join(lines)


def _pattern(row):
    """The case's update rate and share of held steps (rows of older runs have neither)."""
    if "update_rate" not in row or row["impl"].startswith("nn."):
        return ""
    return f"{row['update_rate']:.2f} ({row['held_steps']:.2f})"


def render(paths):
    """Print the tables of earlier runs (``--render results/bench_train_cpu.json ...``)."""
    for path in paths:
        data = json.loads(Path(path).read_text())
        m = data["meta"]
        print(f"### {path}\n\n`{m['command']}`  \n{m['device_name']}, {m['threads']} thread(s), "
              f"torch {m['torch']}, commit {m['git_commit']}{' (dirty)' if m['git_dirty'] else ''}, "
              f"{m['reps']} reps, load average {m['loadavg_before']} -> {m['loadavg_after']}\n")
        print(table(data["results"]) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per implementation/mode")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 reps, T capped at 64 (not for quoting)")
    p.add_argument("--cells", default="lstm,gru")
    p.add_argument("--shapes", default=None,
                   help="override shapes: 'B,T,I,H;B,T,I,H' (default: the paper's set)")
    p.add_argument("--impls", default=None,
                   help="comma list among reference,cpu,triton (default: all available)")
    p.add_argument("--skip-reference-above", type=float, default=None,
                   help="skip the naive reference when B*T*H exceeds this")
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="torch.set_num_threads; several (e.g. 1 2): every shape at each count, "
                        "one table")
    p.add_argument("--gate-bias", type=float, default=1.0,
                   help="initial update-gate bias (default 1.0, the paper's: almost every step "
                        "updates); e.g. -2 gives about 20%% updates")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--out", default=None,
                   help="JSON output (default results/bench_train_<device>.json)")
    p.add_argument("--render", nargs="+", default=None, metavar="JSON",
                   help="only print the tables of earlier runs' JSON files")
    args = p.parse_args(argv)
    if args.render:
        render(args.render)
        return None

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    thread_counts = args.threads or [torch.get_num_threads()]
    if any(n < 1 for n in thread_counts):
        p.error(f"--threads must be positive, got {thread_counts}")
    if args.quick:
        args.reps, args.warmup = 2, 1
    if device.type == "cuda":
        def sync():
            torch.cuda.synchronize(device)
    else:
        def sync():
            pass
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")]
    else:
        shapes = SHAPES + (CUDA_SHAPES if device.type == "cuda" else [])
    if args.quick:
        shapes = [(B, min(T, 64), I, H) for B, T, I, H in shapes]

    wanted = set(args.impls.split(",")) if args.impls else {"reference", "cpu", "triton"}
    tri = triton_fn() if (device.type == "cuda" and "triton" in wanted) else None
    impls = {"reference": skip_rnn_naive, "cpu": skip_rnn_cpu, "triton": tri}
    impls = {k: fn for k, fn in impls.items() if k in wanted and fn is not None}
    impls_by_cell = {cell: impls for cell in args.cells.split(",")}

    commit = git_commit()
    dirty = bool(commit and commit.endswith("-dirty"))
    meta = dict(
        device=device.type,
        device_name=(torch.cuda.get_device_name(device) if device.type == "cuda"
                     else cpu_model()),
        cpu_model=cpu_model(), cpu_count=os.cpu_count(), threads=thread_counts,
        torch=torch.__version__, python=platform.python_version(),
        triton=_version("triton"), git_commit=commit, git_dirty=dirty,
        dtype=args.dtype, gate_bias=args.gate_bias, reps=args.reps, warmup=args.warmup, quick=args.quick,
        command="python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        loadavg_before=_loadavg(),
    )
    print(f"[bench] {meta['device_name']} | threads {meta['threads']} | torch {meta['torch']} | "
          f"commit {commit} | load {meta['loadavg_before']}")
    rows = []
    for shape in shapes:
        for cell, impls in impls_by_cell.items():
            for n_threads in thread_counts:
                torch.set_num_threads(n_threads)
                t0 = time.perf_counter()
                new = bench_shape(cell, shape, impls, args, device, dtype, sync)
                rows += new
                print(table(new).split("\n", 2)[2] if rows != new else table(new),
                      f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    meta["loadavg_after"] = _loadavg()
    out = Path(args.out) if args.out else ROOT / "results" / f"bench_train_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(meta=meta, results=rows), indent=1))
    print("\n" + table(rows))
    print(f"\n[bench] load average before {meta['loadavg_before']}, after "
          f"{meta['loadavg_after']}; wrote {out}")
    return rows


def _loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _version(mod):
    try:
        return __import__(mod).__version__
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    main()
