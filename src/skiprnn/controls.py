"""Training controls that keep the update gate from closing before the task is learned.

The budget loss λ·Σ_t u_t (paper Eq. 8) reaches the gate through the straight-through estimator
with the same sign at every step of every sequence, from the first iteration. Adam divides each
parameter's step by the running size of its own gradient, so however small λ is, the gate's few
parameters (``update_gate.weight``, ``update_gate.bias``) move by about the learning rate per step
in the direction that removes updates — while the task gradient that would keep them open is still
noise. Two controls, usable with any training loop:

* :class:`BudgetSchedule` — λ is 0 for a warm-up, then ramps linearly to its value;
* :class:`MetricWarmup` — the warm-up lasts until the task metric passes a level on validation
  (at least its step count), for a model whose gate must not decide before the task is learned;
* :func:`gate_param_groups` — the gate's parameters get their own learning rate (a multiplier of
  the others');
* :class:`CosineDecay` — a learning-rate decay after the budget's ramp, so the model settles at
  the updates the budget buys.

Example (plain PyTorch)::

    sched = BudgetSchedule(cost_per_sample=1e-4, warmup_steps=1000, ramp_steps=1000)
    opt = torch.optim.Adam(gate_param_groups(model, lr=1e-3, gate_lr_mult=0.1))
    for step, (x, y) in enumerate(loader):
        out = model.rnn(x)
        loss = task_loss(out, y) + budget_loss(out.updates, sched(step))

A warm-up that ends on the validation metric (here: MSE at or below 1/600)::

    warm = MetricWarmup(level=1 / 600)
    sched = BudgetSchedule(cost_per_sample=1e-5, warmup_steps=300, ramp_steps=300, until=warm)
    ...
    if step % 100 == 0:
        warm.observe(step, validation_mse)   # λ stays 0 until this has passed, then ramps
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from torch import nn

__all__ = ["BudgetSchedule", "CosineDecay", "MetricWarmup", "gate_param_groups", "is_gate_parameter"]


def _check_number(name: str, v, lo: float = 0.0, integer: bool = False) -> None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= lo
    if integer:
        ok = ok and float(v).is_integer()
    if not ok:
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{name} must be {kind} >= {lo:g}, got {v!r}")


class MetricWarmup:
    """A warm-up that ends when the task metric passes ``level`` on a validation.

    ``observe(step, metric)`` after each validation; the first time the metric is at or below
    ``level`` (at or above with ``higher_is_better``) the warm-up is released at that step.
    ``end(steps)`` is then the step the warm-up ends: the later of ``steps`` (a warm-up given in
    steps still lasts at least that long) and the release; ``math.inf`` until released. A
    metric that later falls back does not restart the warm-up. ``state_dict`` /
    ``load_state_dict`` carry the release across a resume.
    """

    def __init__(self, level: float, higher_is_better: bool = False):
        if not isinstance(level, (int, float)) or isinstance(level, bool) or not math.isfinite(level):
            raise ValueError(f"level must be a finite number, got {level!r}")
        self.level = float(level)
        self.higher_is_better = bool(higher_is_better)
        #: the optimizer step of the first validation that passed (None: not yet)
        self.passed_at: Optional[int] = None

    def passes(self, metric: float) -> bool:
        """Whether ``metric`` is at the level or better."""
        return metric >= self.level if self.higher_is_better else metric <= self.level

    def observe(self, step: int, metric: float) -> bool:
        """Record a validation's metric at optimizer step ``step``; returns whether the warm-up
        has been released (now or before)."""
        _check_number("step", step, integer=True)
        if self.passed_at is None and math.isfinite(metric) and self.passes(float(metric)):
            self.passed_at = int(step)
        return self.passed_at is not None

    def end(self, steps: int = 0) -> float:
        """The step the warm-up ends: ``max(steps, passed_at)``, ``math.inf`` while not passed."""
        return math.inf if self.passed_at is None else max(int(steps), self.passed_at)

    def state_dict(self) -> dict:
        return {"level": self.level, "passed_at": self.passed_at}

    def load_state_dict(self, state: dict) -> None:
        self.passed_at = state.get("passed_at")

    def __repr__(self) -> str:
        op = "≥" if self.higher_is_better else "≤"
        return f"MetricWarmup(metric {op} {self.level:g}, passed_at={self.passed_at})"


@dataclass(frozen=True)
class BudgetSchedule:
    """λ as a function of the optimizer step: 0 for ``warmup_steps``, then a linear ramp over
    ``ramp_steps`` to ``cost_per_sample``, then constant. With ``until`` (a
    :class:`MetricWarmup`), the warm-up also lasts until that metric has passed its level: the
    ramp starts at ``until.end(warmup_steps)``.

    ``BudgetSchedule(λ)`` (no warm-up, no ramp) is the paper's constant λ. Call it with the
    number of optimizer steps already taken: ``sched(step) -> float``.
    """

    cost_per_sample: float
    warmup_steps: int = 0
    ramp_steps: int = 0
    until: Optional[MetricWarmup] = None

    def __post_init__(self):
        _check_number("cost_per_sample", self.cost_per_sample)
        _check_number("warmup_steps", self.warmup_steps, integer=True)
        _check_number("ramp_steps", self.ramp_steps, integer=True)
        if self.until is not None and not isinstance(self.until, MetricWarmup):
            raise ValueError(f"until must be a MetricWarmup or None, got {type(self.until).__name__}")

    def __call__(self, step: int) -> float:
        return self.cost_per_sample * self.fraction(step)

    def warmup_end(self) -> float:
        """The first step with a non-zero budget (``math.inf`` while a metric warm-up holds)."""
        return self.warmup_steps if self.until is None else self.until.end(self.warmup_steps)

    def fraction(self, step: int) -> float:
        """The schedule's share of the full budget at ``step``, in [0, 1] (λ(step) / λ); the
        target-rate loss of a run follows it too."""
        start = self.warmup_end()
        if step < start:
            return 0.0
        if self.ramp_steps and step < start + self.ramp_steps:
            # step = start: the first step with a non-zero budget (1/ramp of λ)
            return (step - start + 1) / self.ramp_steps
        return 1.0


@dataclass(frozen=True)
class CosineDecay:
    """A learning-rate factor per optimizer step: 1 until ``start``, then a half cosine down to
    ``floor`` at ``total`` (and ``floor`` after it). For ``torch.optim.lr_scheduler.LambdaLR``.

    Used after the budget's ramp: the model then settles at the number of updates the budget
    buys instead of being shaken around it by a large learning rate.
    """

    start: int
    total: int
    floor: float = 0.05

    def __post_init__(self):
        _check_number("start", self.start, integer=True)
        _check_number("total", self.total, integer=True)
        _check_number("floor", self.floor)
        if self.floor > 1:
            raise ValueError(f"floor must be a factor in [0, 1], got {self.floor!r}")

    def __call__(self, step: int) -> float:
        if step <= self.start or self.total <= self.start:
            return 1.0
        x = min(1.0, (step - self.start) / (self.total - self.start))
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * x))


def is_gate_parameter(name: str) -> bool:
    """Whether the parameter called ``name`` (as in ``named_parameters()``) is an update gate's
    W_p / b_p (``update_gate.weight`` / ``update_gate.bias`` of a Skip layer, at any depth; a
    bidirectional layer's ``update_gate_reverse`` too)."""
    return any(part in ("update_gate", "update_gate_reverse") for part in name.split("."))


def gate_param_groups(model: nn.Module, lr: float, gate_lr_mult: float = 1.0) -> list[dict]:
    """Optimizer parameter groups: every parameter of ``model`` at ``lr``, except the update
    gates' W_p and b_p at ``lr * gate_lr_mult``.

    Returns ``[{"params": [...], "lr": lr, "name": "main"}, {"params": [...], "lr": lr *
    gate_lr_mult, "name": "update_gate"}]`` (the second only when the model has a gate), for any
    ``torch.optim`` optimizer. Frozen parameters (``requires_grad=False``) are left out.
    """
    _check_number("lr", lr)
    _check_number("gate_lr_mult", gate_lr_mult)
    main, gate = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (gate if is_gate_parameter(name) else main).append(p)
    groups = [{"params": main, "lr": lr, "name": "main"}]
    if gate:
        groups.append({"params": gate, "lr": lr * gate_lr_mult, "name": "update_gate"})
    return groups
