"""Skipping inference vs nn.LSTM: wall time of whole-sequence inference (a script, not a test).

CPU  (B=1, T=1000, I=64, H=512): the skipping forward at ~50 % and ~10 % updates (update-gate weight
     0, bias chosen so that n_skip = 1 or 9, away from ties) vs nn.LSTM over the whole sequence;
     the reference per-step loop for context; optionally a trained checkpoint's real pattern.
Batched CPU (B=256, T=784, I=1, H=110, the MNIST shape, and B=64, T=1000, I=64, H=512): the same
     two constant gates, plus a learned (irregular) gate: the trained MNIST Skip LSTM of
     ``--checkpoint`` (default: results/mnist_fast_skip_lstm_s0, if present) on its own test digits.
CUDA (B=256, T=784, I=1, H=110, ~50 % updates): cuDNN nn.LSTM vs the skipping forward (the
     library's default path) and variants: a CUDA graph of the dense masked step loop.
Lazy inputs: a small CNN on 28×28 frames, encoding every frame + nn.LSTM vs lazy_forward (only the
     frames that are read are fetched and encoded).

Medians of interleaved repetitions after warm-up; ratios to nn.LSTM in the same run on the same
device are the figures to quote. JSON (device, versions, git commit) goes to ``--out``.

    PYTHONPATH=src python benchmarks/bench_inference.py --device cpu --out results/inference_cpu.json
    PYTHONPATH=src python benchmarks/bench_inference.py --device cuda --out results/inference_cuda.json
    PYTHONPATH=src python benchmarks/bench_inference.py --device cpu --parts lazy  # lazy rows
    PYTHONPATH=src python benchmarks/bench_inference.py --parts skipping,batched --threads 1 2 \
        --out results/inference_cpu_threads.json   # one table, both thread counts (+ .md)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from skiprnn import SkipLSTM  # noqa: E402
from skiprnn._env import git_commit  # noqa: E402
from skiprnn.inference import lazy_forward  # noqa: E402
from skiprnn.metrics import n_skip  # noqa: E402

# Δũ giving n_skip = 1 (update every 2nd step) and n_skip = 9 (every 10th), away from ties
DELTAS = {"~50%": 0.4, "~10%": 0.052}
# (B, T, I, H) of the batched comparisons
BATCHED_SHAPES = [(256, 784, 1, 110), (64, 1000, 64, 512)]
DEFAULT_CHECKPOINT = os.path.join(os.path.dirname(__file__), "..", "results",
                                  "mnist_fast_skip_lstm_s0", "checkpoints", "best_metric.ckpt")


def logit(p):
    return math.log(p / (1 - p))


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def bench(fns: dict, dev, reps: int, warmup: int = 2, budget_s: float | None = None):
    """Median seconds per call of each function, repetitions interleaved across functions."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    sync(dev)
    times = {k: [] for k in fns}
    start = time.perf_counter()
    for _ in range(reps):
        for k, f in fns.items():
            sync(dev)
            t0 = time.perf_counter()
            f()
            sync(dev)
            times[k].append(time.perf_counter() - t0)
        if budget_s is not None and time.perf_counter() - start > budget_s:
            break
    return {k: statistics.median(v) for k, v in times.items()}


def set_constant_gate(layer, delta):
    with torch.no_grad():
        layer.update_gate.weight.zero_()
        layer.update_gate.bias.fill_(logit(delta))


def reference_forward(layer, x):
    old = layer.backend
    layer.backend = "reference"
    try:
        return layer(x)
    finally:
        layer.backend = old


# ------------------------------------------------------------------------------------------------
def constant_gate_rows(part, B, T, I, H, reps):
    """``(rows, lstm, layer, x)``: the skipping engine against nn.LSTM at each constant gate of
    DELTAS, for one shape (a seeded nn.LSTM and the Skip LSTM holding its weights)."""
    dev = torch.device("cpu")
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(I, H).eval()
    layer = SkipLSTM.from_lstm(lstm).eval()
    x = torch.randn(T, B, I)
    rows = []
    with torch.no_grad():
        for name, d in DELTAS.items():
            set_constant_gate(layer, d)
            t = bench({"nn.LSTM": lambda: lstm(x), "skipping": lambda: layer(x)}, dev, reps)
            out = layer(x)
            assert layer.last_backend == "skipping"
            rows.append(dict(part=part, case=f"constant gate {name} (n_skip={n_skip(d)})",
                             B=B, T=T, I=I, H=H, updates=float(out.updates.mean()),
                             nn_lstm_ms=t["nn.LSTM"] * 1e3, skipping_ms=t["skipping"] * 1e3,
                             ratio=t["skipping"] / t["nn.LSTM"]))
    return rows, lstm, layer, x


def cpu_part(args, rows):
    dev = torch.device("cpu")
    B, T, I, H = 1, args.cpu_T, 64, 512
    new, lstm, layer, x = constant_gate_rows("cpu", B, T, I, H, args.reps)
    rows += new
    with torch.no_grad():
        # the reference per-step loop, for context (one gate setting, fewer reps)
        set_constant_gate(layer, DELTAS["~50%"])
        t = bench({"nn.LSTM": lambda: lstm(x), "reference": lambda: reference_forward(layer, x)},
                  dev, max(3, args.reps // 3), warmup=1)
        rows.append(dict(part="cpu", case="reference per-step loop (~50%)", B=B, T=T, I=I, H=H,
                         updates=0.5, nn_lstm_ms=t["nn.LSTM"] * 1e3,
                         skipping_ms=t["reference"] * 1e3, ratio=t["reference"] / t["nn.LSTM"]))
    if args.checkpoint:
        rows.append(checkpoint_case(args, dev))


def checkpoint_case(args, dev, B=1, T=None, part="cpu"):
    """A trained SkipLSTM's real skip pattern (state_dict with weight_ih_l0 …, update_gate.*,
    and the learned initial state ``init_state`` when there is one). The input is the run's own
    data where that is at hand — an MNIST run's first B test digits, scaled as its config says,
    read from the local copy (never downloaded) — else random."""
    sd = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    sd = sd.get("state_dict", sd)
    prefix = next(k for k in sd if k.endswith("weight_ih_l0"))[: -len("weight_ih_l0")]
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    G, I = sd["weight_ih_l0"].shape
    H = G // 4
    L = sum(1 for k in sd if k.startswith("weight_ih_l"))
    layer = SkipLSTM(I, H, num_layers=L).eval()
    layer.load_state_dict(sd, strict=False)
    lstm = torch.nn.LSTM(I, H, num_layers=L).eval()
    lstm.load_state_dict({k: v for k, v in sd.items() if not k.startswith("update_gate")},
                         strict=False)
    T = args.cpu_T if T is None else T
    x, source = _run_inputs(args.checkpoint, B, T)
    if x is None:
        x, source = torch.randn(T, B, I), "random input"
    hx = None
    if "init_state" in sd:   # (2, L, 1, H): the learned h0, c0 of the training module
        h0, c0 = (s.expand(L, B, H).contiguous() for s in sd["init_state"])
        hx = (h0, c0)
    with torch.no_grad():
        t = bench({"nn.LSTM": lambda: lstm(x, hx), "skipping": lambda: layer(x, hx)}, dev,
                  args.reps)
        rate = float(layer(x, hx).updates.mean())
    name = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(args.checkpoint))))
    return dict(part=part, case=f"learned gate: {name} ({source})",
                B=B, T=T, I=I, H=H, updates=rate, nn_lstm_ms=t["nn.LSTM"] * 1e3,
                skipping_ms=t["skipping"] * 1e3, ratio=t["skipping"] / t["nn.LSTM"])


def _run_inputs(checkpoint, B, T):
    """``(x (T, B, 1), description)`` of an MNIST run's first B test digits, or ``(None, why)``."""
    run = os.path.dirname(os.path.dirname(os.path.abspath(checkpoint)))
    cfg_path = os.path.join(run, "config.json")
    if T != 784 or not os.path.exists(cfg_path):
        return None, "no run config"
    with open(cfg_path) as f:
        cfg = json.load(f)
    if cfg.get("task") != "mnist":
        return None, "not an MNIST run"
    from skiprnn.tasks.mnist import MNISTDataset, load_mnist
    try:
        arrays = load_mnist()
    except Exception as exc:  # noqa: BLE001 - the row falls back to random input
        print(f"[bench] MNIST not at hand ({type(exc).__name__}): random input")
        return None, "MNIST not at hand"
    standardize = bool((cfg.get("task_options") or {}).get("standardize", False))
    ds = MNISTDataset(arrays.test_images[:B], arrays.test_labels[:B], standardize=standardize)
    x, _ = ds.batch(list(range(B)))
    return x.transpose(0, 1).contiguous(), f"first {B} MNIST test digits"


def batched_part(args, rows):
    """Batches on the CPU: constant gates at ~50 % / ~10 % and a learned gate's pattern."""
    dev = torch.device("cpu")
    for B, T, I, H in BATCHED_SHAPES:
        rows += constant_gate_rows("batched", B, T, I, H, args.reps)[0]
    if args.checkpoint and os.path.exists(args.checkpoint):
        rows.append(checkpoint_case(args, dev, B=256, T=784, part="batched"))
    else:
        print(f"[batched] no checkpoint at {args.checkpoint}: learned-gate row left out")


# ------------------------------------------------------------------------------------------------
def dense_graph_forward(layer, x, threshold=0.5):
    """Variant: the dense masked step loop (every row computes every step, torch.where mixes),
    captured once as a CUDA graph; returns a replay function and the output buffers."""
    (w_ih, w_hh, b_ih, b_hh), = [tuple(p.detach() for p in lay) for lay in layer.layer_weights()]
    gw, gb = layer.update_gate.weight.detach(), layer.update_gate.bias.detach()
    T, B, _ = x.shape
    H = layer.hidden_size
    st = layer.initial_state(B, x)
    xg = torch.addmm(b_ih + b_hh, x.reshape(T * B, -1), w_ih.t()).view(T, B, 4 * H)
    whh_t = w_hh.t().contiguous()
    h = st.h[0].clone()
    c = st.c[0].clone()
    up, cum = st.update_prob.clone(), st.cum_update_prob.clone()
    out = torch.empty(T, B, H, device=x.device)
    U = torch.empty(T, B, device=x.device)
    P = torch.empty(T, B, device=x.device)
    h0, c0, up0, cum0 = h.clone(), c.clone(), up.clone(), cum.clone()

    def body():
        h.copy_(h0), c.copy_(c0), up.copy_(up0), cum.copy_(cum0)
        for t in range(T):
            ut = cum + torch.minimum(up, 1 - cum)
            u = ut > threshold
            gates = torch.addmm(xg[t], h, whh_t)
            i, f, g, o = gates.sigmoid().chunk(4, 1)
            cn = f * c + i * gates[:, 2 * H:3 * H].tanh()
            hn = o * cn.tanh()
            d = torch.sigmoid(F.linear(cn, gw, gb)).squeeze(-1)
            ub = u.unsqueeze(1)
            h.copy_(torch.where(ub, hn, h))
            c.copy_(torch.where(ub, cn, c))
            up.copy_(torch.where(u, d, up))
            cum.copy_(torch.where(u, torch.zeros_like(ut), ut))
            out[t] = h
            U[t] = u
            P[t] = ut

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        body()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    return graph.replay, (out, U, P)


def cuda_part(args, rows):
    dev = torch.device("cuda")
    B, T, I, H = 256, 784, 1, 110
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(I, H).to(dev).eval()
    layer = SkipLSTM.from_lstm(lstm).to(dev).eval()
    x = torch.randn(T, B, I, device=dev)
    t_start = time.perf_counter()
    with torch.no_grad():
        set_constant_gate(layer, DELTAS["~50%"])
        ref = reference_forward(layer, x)
        out = layer(x)
        backend = layer.last_backend
        assert torch.equal(out.updates, ref.updates), "skipping gates differ from the reference"
        err = float((out.output - ref.output).abs().max())
        fns = {"cuDNN nn.LSTM": lambda: lstm(x), "skipping (library default)": lambda: layer(x)}
        try:
            replay, (g_out, g_u, _) = dense_graph_forward(layer, x)
            replay()
            torch.cuda.synchronize()
            assert torch.equal(g_u, ref.updates)
            fns["dense masked loop, CUDA graph"] = replay
        except Exception as e:  # noqa: BLE001
            print(f"[cuda] CUDA-graph variant failed: {e!r}")
        t = bench(fns, dev, args.reps, budget_s=args.gpu_budget_s)
        t_ref = bench({"reference": lambda: reference_forward(layer, x)}, dev, 2, warmup=1)
        base = t["cuDNN nn.LSTM"]
        for k, v in list(t.items()) + [("reference per-step loop", t_ref["reference"])]:
            rows.append(dict(part="cuda", case=k, B=B, T=T, I=I, H=H,
                             updates=float(ref.updates.mean()), nn_lstm_ms=base * 1e3,
                             skipping_ms=v * 1e3, ratio=v / base,
                             note=f"backend={backend}, max|out-ref|={err:.2e}"
                             if k.startswith("skipping") else ""))
    print(f"[cuda] part took {time.perf_counter() - t_start:.1f} s")


# ------------------------------------------------------------------------------------------------
class SmallCNN(torch.nn.Module):
    """~0.6 M MAC per 28×28 frame: conv(1→16, 3×3) → pool → conv(16→32, 3×3) → pool → linear."""

    def __init__(self, out=64):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(32 * 7 * 7, out))

    def forward(self, x):
        return self.net(x.unsqueeze(1) if x.dim() == 3 else x)

    @staticmethod
    def macs(out=64):
        return 28 * 28 * 16 * 9 + 14 * 14 * 32 * 16 * 9 + 32 * 7 * 7 * out


def lazy_part(args, rows, dev):
    T, I, H = args.lazy_T, 64, 128
    torch.manual_seed(0)
    cnn = SmallCNN(I).to(dev).eval()
    lstm = torch.nn.LSTM(I, H).to(dev).eval()
    layer = SkipLSTM.from_lstm(lstm).to(dev).eval()
    frames = torch.randn(T, 28, 28, device=dev)
    with torch.no_grad():
        def dense():  # encode every frame (one batched call) + nn.LSTM
            return lstm(cnn(frames).unsqueeze(1))

        def dense_per_frame():  # a live stream: each frame encoded when it arrives
            feats = [cnn(frames[t:t + 1]) for t in range(T)]
            return lstm(torch.stack(feats))

        for name, d in DELTAS.items():
            set_constant_gate(layer, d)
            res = lazy_forward(layer, frames, cnn, frame_flops=SmallCNN.macs(I))
            t = bench({"dense batched": dense, "dense per frame": dense_per_frame,
                       "lazy": lambda: lazy_forward(layer, frames, cnn)}, dev, args.reps)
            st = res.stats
            rows.append(dict(part=f"lazy-{dev.type}", case=f"CNN 28x28 + LSTM {name}", B=1, T=T,
                             I=I, H=H, updates=st["steps_read"] / T,
                             nn_lstm_ms=t["dense per frame"] * 1e3, skipping_ms=t["lazy"] * 1e3,
                             ratio=t["lazy"] / t["dense per frame"],
                             note=(f"encoder calls {st['encoder_calls']}/{T}; dense batched "
                                   f"{t['dense batched'] * 1e3:.1f} ms; FLOPs saved "
                                   f"{st['flops_saved'] / st['flops_dense']:.0%}")))


# ------------------------------------------------------------------------------------------------
def table(rows):
    hdr = ("| threads | part | case | B×T×I×H | updates | baseline ms | ours ms | ratio | note |\n"
           "|---|---|---|---|---|---|---|---|---|")
    lines = [hdr]
    for r in rows:
        lines.append(f"| {r.get('threads', '')} | {r['part']} | {r['case']} | "
                     f"{r['B']}×{r['T']}×{r['I']}×{r['H']} | "
                     f"{r['updates']:.3f} | {r['nn_lstm_ms']:.1f} | {r['skipping_ms']:.1f} | "
                     f"{r['ratio']:.3f} | {r.get('note', '')} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "all"])
    ap.add_argument("--out", default=None, help="JSON output path")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--threads", type=int, nargs="+", default=[1],
                    help="torch CPU thread counts, each a pass over the parts (1 keeps timings "
                         "stable on a shared machine); one table with all of them")
    ap.add_argument("--cpu-T", type=int, default=1000)
    ap.add_argument("--lazy-T", type=int, default=200)
    ap.add_argument("--checkpoint", default=None,
                    help="trained SkipLSTM state_dict (Lightning checkpoints too): a B=1 row in "
                         "'skipping'; the 'batched' part uses it, default the MNIST one in results/")
    ap.add_argument("--gpu-budget-s", type=float, default=40.0)
    ap.add_argument("--no-lazy", action="store_true")
    ap.add_argument("--parts", default="all",
                    help="comma-separated parts to run: skipping (the nn.LSTM comparisons at B=1), "
                         "batched (B=256 and B=64), lazy, cuda; default all (as selected by "
                         "--device / --no-lazy)")
    args = ap.parse_args(argv)
    known = {"skipping", "batched", "lazy", "cuda"}
    parts = known if args.parts == "all" else set(args.parts.split(","))
    bad = parts - known
    if bad:
        ap.error(f"unknown --parts {sorted(bad)}")
    if any(n < 1 for n in args.threads):
        ap.error(f"--threads must be positive, got {args.threads}")
    if "batched" in parts and args.checkpoint is None:
        args.checkpoint = DEFAULT_CHECKPOINT if os.path.exists(DEFAULT_CHECKPOINT) else None
    load_before = os.getloadavg()
    rows = []
    for n_threads in args.threads:
        torch.set_num_threads(n_threads)
        first = len(rows)
        if args.device in ("cpu", "all"):
            if "skipping" in parts:
                cpu_part(args, rows)
            if "batched" in parts:
                batched_part(args, rows)
            if "lazy" in parts and not args.no_lazy:
                lazy_part(args, rows, torch.device("cpu"))
        if args.device in ("cuda", "all") and "cuda" in parts:
            if not torch.cuda.is_available():
                print("CUDA not available: skipping the GPU part")
            else:
                cuda_part(args, rows)
        for r in rows[first:]:
            r["threads"] = n_threads
        print(table(rows[first:]), flush=True)
    print()
    print(table(rows))
    info = dict(
        device=(torch.cuda.get_device_name(0) if args.device != "cpu" and torch.cuda.is_available()
                else platform.processor() or platform.machine()),
        torch=torch.__version__, python=platform.python_version(), threads=args.threads,
        cpu_count=os.cpu_count(), load_before=load_before, load_after=os.getloadavg(),
        cuda=torch.version.cuda, git_commit=git_commit(), command=" ".join(sys.argv), rows=rows)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(info, fh, indent=1)
        md = os.path.splitext(args.out)[0] + ".md"
        with open(md, "w") as fh:
            fh.write(f"`{info['command']}`  \n{info['device']}, {os.cpu_count()} CPUs, torch "
                     f"{info['torch']}, commit {info['git_commit']}, load average before "
                     f"{load_before[0]:.2f} / after {info['load_after'][0]:.2f}; ratio = ours / "
                     f"baseline in the same process at the same thread count.\n\n{table(rows)}\n")
        print(f"wrote {args.out} and {md}")
    return rows


if __name__ == "__main__":
    main()
