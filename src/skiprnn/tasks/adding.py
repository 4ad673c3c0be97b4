"""The adding task (paper §4.1, digest §3.1; Neil et al. 2016 marker placement).

Each item is a sequence of ``T`` pairs ``(value, marker)`` (so ``input_size = 2``):

* ``value ~ U(-0.5, 0.5)`` at every step;
* ``marker`` is 1 at exactly two steps and 0 elsewhere. The first marked step is uniform over the
  first 10% of positions (indices ``0 .. ceil(T/10) - 1``; 0..4 for T = 50), the second uniform over
  the last 50% (indices ``T//2 .. T-1``; 25..49 for T = 50);
* target ``y = value[first] + value[second]`` (float32, 0-d), computed from the float32 values.

Var(y) = 2 · 1/12 = 1/6, so the paper's "solved" rule (held-out MSE two orders of magnitude below
the target variance) is ``MSE <= 1/600 ≈ 1.67e-3``.

Loss scaling: :meth:`AddingTask.loss` is **½·MSE**, exactly the paper code's
``tf.nn.l2_loss(err) / batch_size``. This matters because the budget loss λ·Σu_t is added to it: the
paper's λ values (1e-5) are calibrated against ½·MSE. :meth:`AddingTask.metric` is the plain MSE
(what "solved" is judged on).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch

from .base import SyntheticTask, check_positive_int, mse

__all__ = ["AddingTask"]

TARGET_VARIANCE = 1.0 / 6.0


@dataclass
class AddingTask(SyntheticTask):
    """Adding task. Overridable: ``seq_len`` (default 50) and every :class:`SyntheticTask` field.

    Items: ``x (T, 2)`` float32 with ``x[:, 0]`` the values and ``x[:, 1]`` the 0/1 markers;
    ``y`` float32 0-d. Paper grids: λ ∈ {0, 1e-5}; p_skip LSTM {0.2, 0.5}, GRU {0.02, 0.5}.
    """

    name: ClassVar[str] = "adding"
    problem: ClassVar[str] = "regression"
    metric_name: ClassVar[str] = "mse"
    higher_is_better: ClassVar[bool] = False
    input_size: ClassVar[int] = 2
    output_size: ClassVar[int] = 1
    #: held-out MSE at or below which the task counts as solved: Var(target)/100 = 1/600
    solved_threshold: ClassVar[float] = 1.0 / 600.0

    seq_len: int = 50
    cost_per_sample: tuple = (0.0, 1e-5)
    p_skip: dict = field(default_factory=lambda: {"lstm": (0.2, 0.5), "gru": (0.02, 0.5)})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("seq_len", self.seq_len, minimum=2)

    # ----- definition ---------------------------------------------------------------------------
    @property
    def first_marker_range(self) -> range:
        """Indices where the first marker may be: the first 10% (at least one position)."""
        return range(0, -(-self.seq_len // 10))

    @property
    def second_marker_range(self) -> range:
        """Indices where the second marker may be: the last 50% (``T//2 .. T-1``)."""
        return range(self.seq_len // 2, self.seq_len)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> tuple:
        """``n`` items: ``x (n, T, 2)`` float32, ``y (n,)`` float32. Deterministic given ``generator``."""
        T = self.seq_len
        values = (torch.rand(n, T, generator=generator, dtype=torch.float64) - 0.5).float()
        r1, r2 = self.first_marker_range, self.second_marker_range
        first = torch.randint(r1.start, r1.stop, (n,), generator=generator)
        second = torch.randint(r2.start, r2.stop, (n,), generator=generator)
        markers = torch.zeros(n, T)
        rows = torch.arange(n)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        y = values[rows, first] + values[rows, second]
        return torch.stack([values, markers], dim=-1), y

    # ----- loss / metric ------------------------------------------------------------------------
    def loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """½·MSE (the paper code's ``l2_loss / batch``); pred (B,)|(B, 1), y (B,)."""
        return 0.5 * mse(pred, y)

    def metric(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Plain MSE over the batch (0-d tensor)."""
        return mse(pred, y).detach()

    def solved(self, metric_value: float) -> bool:
        """True when held-out MSE <= Var(target)/100 = 1/600."""
        return float(metric_value) <= self.solved_threshold
