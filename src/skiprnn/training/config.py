"""Run configuration: one flat, JSON-serialisable record of everything a run depends on.

``RunConfig`` is what ``skiprnn train`` builds from its arguments, what ``fit()`` consumes and what
is written to ``RUN/config.json`` (so ``--resume`` and ``evaluate`` rebuild the same run).
``validate()`` turns impossible values into a :class:`ConfigError` with a clear message.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

__all__ = ["RunConfig", "ConfigError", "TASK_DEFAULTS", "RECIPES", "RECIPE_CONTROLS",
           "resolve_defaults", "recipe_settings"]


class ConfigError(ValueError):
    """An impossible or unknown configuration value (reported without a traceback by the CLI)."""


#: Paper defaults are the task's own (hidden 110, batch 256, clip 1); the learning rate and the
#: gate's controls come from the recipe (RECIPES). On top of them, per-task defaults for a run's
#: length and model, chosen so ``skiprnn train TASK`` does something useful on a laptop: Skip
#: models on the synthetic tasks train on after solving while the solved validations lower the
#: updates (patience 10 validations, frequency 30; the measured checkpoint is the solved one with
#: the fewest updates, so a longer patience can only lower it).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "adding": {"model": "skip_lstm", "cost_per_sample": 1e-5, "max_steps": 1200,
               "val_every": 100, "stop_when_solved": True, "solved_patience": 10},
    "frequency": {"model": "skip_lstm", "cost_per_sample": 1e-4, "max_steps": 4000,
                  "val_every": 100, "stop_when_solved": True, "solved_patience": 30},
    "mnist": {"model": "skip_lstm", "cost_per_sample": 1e-4, "max_epochs": 600},
}

#: ``warmup_until_metric``'s word for the task's own solved level (``task.solved_threshold``)
SOLVED_LEVEL = "solved"


def _paper_task_options(task: str) -> dict:
    from .paper import paper_task_options   # imported when asked: it needs torch, this module not
    return paper_task_options(task)


#: Named training recipes: the settings each one gives to the RunConfig fields the user did not
#: set (a value, a dict per task, or a function of the task); README, "Training recipes". Each
#: entry's "doc" (what it is, and why) is printed by ``skiprnn train --help``.
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {
        "task_options": _paper_task_options,
        "doc": "the paper's code: TF1's Adam at lr 1e-4, constant λ from the first step, one bias "
               "per gate, the GRU's reset before the product, TF's initialisation, MNIST's first "
               "5,000 images for validation and whole test batches",
        "lr": 1e-4, "budget_warmup": 0, "budget_ramp": 0, "gate_warmup": 0, "gate_lr_mult": 1.0,
        "layer": "paper",
    },
    "fast": {
        "doc": "practical learning rates without a collapsing gate: the gate held open (its W_p, "
               "b_p frozen) and λ = 0 while the task is learned, then λ ramped in and the learning "
               "rate decayed (cosine, to 5 %); adding: the gate held open until the validation MSE "
               "is 0.01, W_p, b_p at 3x the rate with at most 4 skipped steps in a row; "
               "frequency: the gate held open until the task is solved, W_p, b_p at 0.3x the "
               "rate, chrono forget biases and the target-rate loss towards 12 % (weight 4); "
               "MNIST: chrono forget biases and standardized pixels",
        "lr": {"adding": 3e-3, "frequency": 1e-3, "mnist": 1e-3},
        "gate_warmup": {"adding": 300, "frequency": 500, "mnist": 2000},
        "budget_warmup": {"adding": 300, "frequency": 500, "mnist": 2000},
        "budget_ramp": {"adding": 300, "frequency": 500, "mnist": 1000},
        "gate_lr_mult": {"adding": 3.0, "frequency": 0.3, "mnist": 1.0},
        "warmup_until_metric": {"adding": 0.01, "frequency": SOLVED_LEVEL},
        "max_skip": {"adding": 4},
        "target_rate": {"frequency": 0.12},
        "target_weight": {"frequency": 4.0},
        "lr_decay": 0.05,
        "init": {"frequency": "chrono", "mnist": "chrono"},
        "layer": "nn",
        "task_options": {"mnist": {"standardize": True}},
    },
}

#: task fields that the run's own settings replace (training/module.py build_task): giving them as
#: --task-option would be silently overridden, so they are refused with the flag to use instead
TASK_OPTION_FLAGS = {
    "hidden_size": "--hidden-size", "num_layers": "--num-layers", "lr": "--lr",
    "batch_size": "--batch-size", "grad_clip": "--grad-clip", "data_dir": "--data-dir",
    "train_batches_per_epoch": "--val-every", "max_epochs": "--max-epochs",
    "cost_per_sample": "--cost-per-sample", "p_skip": "--p-skip",
}

_TIME_RE = re.compile(r"^\d+:\d{1,2}:\d{1,2}:\d{1,2}$")


#: the cell variants a run can train: nn (nn.LSTM / nn.GRU's cell: two biases per gate, the GRU's
#: reset after the product) and paper (the official code's: one bias per gate, the GRU's reset
#: before the product, TF's joint Glorot initialisation; modules.registry.paper_layer_kwargs)
LAYERS = ("nn", "paper")


#: the checkpoints results.json may be measured on (fit.choose_checkpoint says which file each is)
TEST_CHECKPOINTS = ("best", "last", "best_metric")


@dataclass
class RunConfig:
    """Everything one training run depends on (see ``skiprnn train --help``)."""

    task: str = "adding"
    model: str = "skip_lstm"
    cost_per_sample: float = 0.0          # λ of the budget loss (paper Eq. 8)
    recipe: str = "fast"                  # named bundle of the settings below (RECIPES)
    budget_warmup: Optional[int] = None   # optimizer steps with λ = 0 (None: the recipe's)
    budget_ramp: Optional[int] = None     # then steps of a linear ramp to λ
    gate_warmup: Optional[int] = None     # optimizer steps with the gate held open (every step updates)
    gate_lr_mult: Optional[float] = None  # the update gate's W_p, b_p learn at lr × this
    warmup_until_metric: Optional[Union[float, str]] = None  # the warm-ups also last until the
    # validation metric passes this level ('solved': the task's solved level)
    target_rate: Optional[float] = None   # target-rate loss towards this fraction of updates
    max_skip: Optional[int] = None        # at most this many consecutive skipped steps (None: no cap)
    init_from: Optional[str] = None       # a checkpoint whose weights the run starts from (fine-tuning)
    target_weight: float = 1.0            # its weight
    lr_decay: Optional[float] = None      # cosine decay to lr × this after the budget's ramp
    lr_decay_start: Optional[int] = None  # the step the decay starts (None: the end of the ramp)
    init: Optional[str] = None            # gate-bias initialisation: paper | chrono (None: the recipe's)
    layer: Optional[str] = None           # the cell variant: nn | paper (None: the recipe's; LAYERS)
    p_skip: float = 0.5                   # random-skip baselines only
    period: int = 2                       # periodic-skip baselines only
    seed: int = 0
    hidden_size: Optional[int] = None     # None: the task's (110)
    num_layers: Optional[int] = None
    lr: Optional[float] = None            # None: the task's (paper: 1e-4)
    batch_size: Optional[int] = None      # None: the task's (256)
    grad_clip: Optional[float] = None     # None: the task's (1.0, global norm)
    eval_batch_size: int = 1024
    max_steps: Optional[int] = None
    max_epochs: Optional[int] = None
    max_time: Optional[str] = None        # "DD:HH:MM:SS"
    val_every: Optional[int] = None       # synthetic tasks: train batches per "epoch" (validation period)
    stop_when_solved: bool = False
    solved_patience: int = 0              # validations with no update-count progress before stopping
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_workers: int = 0
    threads: Optional[int] = None         # torch.set_num_threads
    data_dir: Optional[str] = None
    task_options: dict = field(default_factory=dict)   # extra get_task overrides
    quick: bool = False
    backend: str = "auto"
    test_ckpt: str = "best"               # which weights results.json is measured on (TEST_CHECKPOINTS)
    progress_bar: bool = True
    out: Optional[str] = None             # the run directory

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path) -> "RunConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    # ------------------------------------------------------------------ checks
    def validate(self, explicit: Optional[set] = None) -> "RunConfig":
        """Raise :class:`ConfigError` for impossible values or options the run would ignore.

        ``explicit``: names of the fields the user gave (``skiprnn train``); with it, a ``p_skip``
        given for a model other than random_skip_*, a ``period`` given for a model other than
        periodic_skip_* and a ``cost_per_sample`` > 0 given for a model without a learned gate are
        errors too (only what the user gave: defaults and saved configs are not refused; the
        module ignores λ for such models).
        """
        from ..modules.registry import MODELS, has_learned_gate
        from ..tasks import TASKS

        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}; valid tasks: {', '.join(sorted(TASKS))}")
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; valid models: {', '.join(MODELS)}")

        def num(name, v, lo=None, lo_open=False, hi=None, hi_open=False, integer=False, allow_none=True):
            if v is None:
                if allow_none:
                    return
                raise ConfigError(f"{name} is required")
            ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                  and (not integer or float(v).is_integer())
                  and (lo is None or (v > lo if lo_open else v >= lo))
                  and (hi is None or (v < hi if hi_open else v <= hi)))
            if not ok:
                rng = ""
                if lo is not None:
                    rng += f"{'>' if lo_open else '>='} {lo}"
                if hi is not None:
                    rng += (" and " if rng else "") + f"{'<' if hi_open else '<='} {hi}"
                kind = "an integer" if integer else "a number"
                raise ConfigError(f"{name} must be {kind} {rng}, got {v!r}")

        def ints(**lower):   # integer fields and their lower bounds, checked in this order
            for k, lo in lower.items():
                num("--" + k.replace("_", "-"), getattr(self, k), lo=lo, integer=True)

        num("--cost-per-sample (λ)", self.cost_per_sample, lo=0)
        num("--p-skip", self.p_skip, lo=0, hi=1, hi_open=True)
        ints(period=1, seed=0, hidden_size=1, num_layers=1)
        num("--lr", self.lr, lo=0, lo_open=True)
        ints(batch_size=1)
        num("--grad-clip", self.grad_clip, lo=0)
        ints(eval_batch_size=1, max_steps=1, max_epochs=1, val_every=1, solved_patience=0,
             num_nodes=1, num_workers=0, threads=1, budget_warmup=0, budget_ramp=0, gate_warmup=0)
        num("--gate-lr-mult", self.gate_lr_mult, lo=0)
        level = self.warmup_until_metric   # SOLVED_LEVEL: the task's own level, not checked here
        num("--warmup-until-metric (a number or 'solved')", None if level == SOLVED_LEVEL
            else level)
        ints(max_skip=1)
        num("--target-rate", self.target_rate, lo=0, hi=1)
        num("--target-weight", self.target_weight, lo=0, allow_none=False)
        num("--lr-decay", self.lr_decay, lo=0, hi=1)
        ints(lr_decay_start=0)
        if self.lr_decay_start is not None and self.lr_decay is None:
            raise ConfigError("--lr-decay-start sets where the cosine decay starts; this run has no "
                              "decay (give --lr-decay FACTOR too)")
        if self.init not in (None, "paper", "chrono"):
            raise ConfigError(f"--init must be 'paper' or 'chrono', got {self.init!r}")
        if self.layer not in (None, *LAYERS):
            raise ConfigError(f"--layer must be one of {', '.join(LAYERS)}, got {self.layer!r}")
        if self.recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {self.recipe!r}; valid recipes: {', '.join(RECIPES)}")
        if self.max_time is not None and not _TIME_RE.match(str(self.max_time)):
            raise ConfigError(f"--max-time must be DD:HH:MM:SS (e.g. 00:00:05:00), got {self.max_time!r}")
        if self.accelerator not in ("cpu", "gpu", "cuda", "mps", "auto"):
            raise ConfigError(f"unknown accelerator {self.accelerator!r}; valid: cpu, gpu, cuda, mps, auto")
        if not (self.devices == "auto" or (isinstance(self.devices, int) and self.devices >= 1)
                or (isinstance(self.devices, str) and re.fullmatch(r"-1|\d+(,\d+)*,?", self.devices))):
            raise ConfigError(f"--devices must be a positive integer, 'auto', -1 or a list like '0,1'; "
                              f"got {self.devices!r}")
        if self.init_from is not None and not Path(self.init_from).is_file():
            raise ConfigError(f"--init-from expects a checkpoint file (e.g. RUN/checkpoints/best.ckpt), "
                              f"got {self.init_from!r}, which is not a file")
        if self.test_ckpt not in TEST_CHECKPOINTS:
            raise ConfigError(f"test checkpoint must be one of {', '.join(TEST_CHECKPOINTS)}, "
                              f"got {self.test_ckpt!r}")
        from ..ops.dispatch import BACKENDS
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; valid: {', '.join(BACKENDS)}")
        if self.max_steps is None and self.max_epochs is None and self.max_time is None:
            raise ConfigError("no stop rule: give --max-steps, --max-epochs or --max-time")
        if self.lr_decay is not None and self.max_steps is None and self.max_epochs is None:
            raise ConfigError("--lr-decay decays to the run's last step, so it needs --max-steps or "
                              "--max-epochs (this run has only --max-time)")
        self._check_model_options(explicit or set(), has_learned_gate(self.model))
        self._check_backend()
        self._check_task_options()
        return self

    def _check_model_options(self, explicit: set, learned_gate: bool) -> None:
        if "cost_per_sample" in explicit and self.cost_per_sample > 0 and not learned_gate:
            raise ConfigError(
                f"--cost-per-sample (λ) {self.cost_per_sample:g} has no effect on {self.model!r}: the "
                "budget loss needs a learned update gate (skip_lstm, skip_gru); drop it or pick one of "
                "those models")
        if "p_skip" in explicit and not self.model.startswith("random_skip_"):
            raise ConfigError(f"--p-skip only applies to random_skip_lstm / random_skip_gru, not "
                              f"{self.model!r}")
        gate_only = [k for k in _GATE_FIELDS if k in explicit and getattr(self, k) is not None
                     and not learned_gate]
        if gate_only:
            raise ConfigError(
                f"{', '.join('--' + k.replace('_', '-') for k in gate_only)} act(s) on a learned update "
                f"gate; {self.model!r} has none (use skip_lstm or skip_gru)")
        if "period" in explicit and not self.model.startswith("periodic_skip_"):
            raise ConfigError(f"--period only applies to periodic_skip_lstm / periodic_skip_gru, not "
                              f"{self.model!r}")

    def _check_backend(self) -> None:
        if self.model in ("lstm", "gru"):
            return  # plain cuDNN/torch layers: the Skip RNN backend is not used
        if self.backend == "skipping":
            raise ConfigError("--backend skipping is inference-only (skipped steps keep no autograd "
                              "graph) and cannot train; use auto, reference, cpu or triton. Inference "
                              "(evaluate, plot) already uses it by itself under 'auto'")
        if self.backend in ("cpu", "triton"):   # dispatch's rules say whether it runs this model
            from ..ops import dispatch
            gate = ("random" if self.model.startswith("random_") else
                    "periodic" if self.model.startswith("periodic_") else "learned")
            why = dispatch.reference_only_reason(gate)
            layers = self.num_layers or 1
            if why or layers > 1:
                raise ConfigError(
                    f"--backend {self.backend} runs one layer with the deterministic learned gate; "
                    f"{self.model!r} with --num-layers {layers} needs the reference "
                    f"({why or f'{layers} layers'}): use --backend auto or reference")
        if self.backend == "triton" and self.max_skip is not None:
            raise ConfigError(f"--backend triton has no floor on Δũ, so it cannot run max_skip="
                              f"{self.max_skip} (--max-skip, or recipe {self.recipe!r} for "
                              f"{self.task}): pass --max-skip none, or use --backend auto (CUDA: "
                              "the reference), reference or cpu")
        if self.backend == "triton":
            from ..ops.dispatch import triton_available
            from ..ops.triton_utils import interpreting
            if not triton_available():
                raise ConfigError("--backend triton needs the `triton` package (pip install triton); "
                                  "use --backend auto")
            if interpreting():
                return  # TRITON_INTERPRET=1: the kernels run on CPU tensors (slowly)
            import torch
            if self.accelerator in ("cpu", "mps") or not torch.cuda.is_available():
                raise ConfigError(
                    "--backend triton trains on CUDA only"
                    + ("" if torch.cuda.is_available() else " and no CUDA device is available here")
                    + f" (--accelerator {self.accelerator}); use --backend auto / cpu, or set "
                    "TRITON_INTERPRET=1 to run the Triton kernels in the (slow) interpreter on CPU")

    def _check_task_options(self) -> None:
        from ..tasks import TASKS
        opts = dict(self.task_options or {})
        cls = TASKS[self.task]
        valid = [k for k in cls.field_names() if k not in TASK_OPTION_FLAGS]
        shadowed = {k: TASK_OPTION_FLAGS[k] for k in opts if k in TASK_OPTION_FLAGS}
        if shadowed:
            raise ConfigError(
                "; ".join(f"--task-option {k}=... is a training setting: use {flag}"
                          for k, flag in shadowed.items())
                + f" (task options of {self.task!r}: {', '.join(valid)})")
        bad = sorted(set(opts) - set(valid))
        if bad:
            raise ConfigError(f"task {self.task!r} has no option(s) {', '.join(map(repr, bad))}; "
                              f"valid options: {', '.join(valid)}")
        try:
            cls(**task_overrides(self.to_dict()))   # the task's own checks; builds no data
        except (TypeError, ValueError) as e:
            raise ConfigError(f"--task-option: {e}") from None

    # ------------------------------------------------------------------ derived
    def run_name(self) -> str:
        parts = [self.task, self.model]
        if self.model.startswith("skip_"):
            parts.append(f"lam{self.cost_per_sample:g}")
        if self.model.startswith("random_"):
            parts.append(f"p{self.p_skip:g}")
        if self.model.startswith("periodic_"):
            parts.append(f"per{self.period}")
        parts.append(f"s{self.seed}")
        return "-".join(parts)


def task_overrides(cfg: dict) -> dict:
    """The ``get_task`` overrides of a run config (a dict, as saved in ``config.json``): its task
    options, and the run's own settings of the task's fields (``val_every``: the synthetic tasks'
    ``train_batches_per_epoch``)."""
    from ..tasks import TASKS
    fields_ = TASKS[cfg["task"]].field_names()
    over = dict(cfg.get("task_options") or {})
    for k in ("hidden_size", "num_layers", "lr", "batch_size", "grad_clip", "data_dir",
              "val_every"):
        name = "train_batches_per_epoch" if k == "val_every" else k
        if cfg.get(k) is not None and name in fields_:
            over[name] = cfg[k]
    return over


def recipe_settings(recipe: str, task: str) -> dict[str, Any]:
    """The RunConfig values recipe ``recipe`` gives for ``task`` (its "doc" left out)."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; valid recipes: {', '.join(RECIPES)}")
    return {k: (v.get(task) if isinstance(v, dict) else v(task) if callable(v) else v)
            for k, v in RECIPES[recipe].items() if k != "doc"}


def resolve_defaults(cfg: RunConfig, explicit: set) -> RunConfig:
    """Fill the recipe's and the per-task defaults for the fields the user did not give (names
    in ``explicit``). The learned-gate controls are left unset for models without a gate."""
    from ..modules.registry import MODELS, has_learned_gate
    gated = cfg.model in MODELS and has_learned_gate(cfg.model)
    for k, v in recipe_settings(cfg.recipe, cfg.task).items():
        if k == "task_options":         # the recipe's task options, under the user's own
            for kk, vv in (v or {}).items():
                cfg.task_options.setdefault(kk, vv)
            continue
        if k in explicit or v is None:
            continue
        if k in _GATE_FIELDS and not gated:
            continue
        setattr(cfg, k, v)

    td = TASK_DEFAULTS.get(cfg.task, {})
    for k, v in td.items():
        if k not in explicit and hasattr(cfg, k):
            if k in ("cost_per_sample", "solved_patience") and not cfg.model.startswith("skip_"):
                continue  # the budget only acts on a learned gate (and only then do updates fall)
            if k in ("max_steps", "max_epochs") and ({"max_steps", "max_epochs", "max_time"} & explicit):
                continue
            setattr(cfg, k, v)
    if "lr_decay" not in explicit and cfg.max_steps is None and cfg.max_epochs is None:
        cfg.lr_decay = None   # the recipe's decay needs a known last step; a --max-time run has none
    return cfg


#: RunConfig fields that act on a learned update gate only (refused for models without one)
_GATE_FIELDS = ("budget_warmup", "budget_ramp", "gate_warmup", "gate_lr_mult", "target_rate",
                "target_weight", "max_skip", "warmup_until_metric")
#: every field a recipe sets beside the learning rate (recorded in results.json as "controls")
RECIPE_CONTROLS = _GATE_FIELDS + ("lr_decay", "lr_decay_start", "init")


#: ``--quick``: tiny runs for smoke tests (fields of RunConfig; task_options go to get_task).
QUICK: dict[str, dict[str, Any]] = {
    "adding": {"max_steps": 20, "val_every": 10, "batch_size": 64, "stop_when_solved": False,
               "task_options": {"val_size": 256, "test_size": 512}},
    "frequency": {"max_steps": 20, "val_every": 10, "batch_size": 64, "stop_when_solved": False,
                  "task_options": {"val_size": 256, "test_size": 512}},
    "mnist": {"max_steps": 6, "max_epochs": None, "batch_size": 32, "eval_batch_size": 128,
              "task_options": {"limit_train": 192, "limit_val": 64, "limit_test": 128}},
}
